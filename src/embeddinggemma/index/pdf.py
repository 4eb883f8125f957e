"""PDF text through pypdf (pure Python, no system libraries): one text per page.

Optional: without pypdf installed, PDFs are counted as skipped with the install hint.
"""

from __future__ import annotations

import io
import logging

from embeddinggemma.index.files import SkipCounts

logger = logging.getLogger(__name__)

__all__ = ["pdf_pages"]


def pdf_pages(data: bytes, path: str, skipped: SkipCounts) -> list[str] | None:
    """Each page's extracted text, or None (counted in ``skipped``) when the PDF cannot be read."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        skipped.add("PDF (needs pypdf: pip install 'embeddinggemma[index]')", path)
        return None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            skipped.add("encrypted PDF", path)
            return None
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, OSError) as exc:
        logger.info("%s: unreadable PDF (%s)", path, exc)
        skipped.add("unreadable PDF", path)
        return None
    if not any(text.strip() for text in pages):
        skipped.add("PDF without a text layer (scanned?)", path)
        return None
    return pages
