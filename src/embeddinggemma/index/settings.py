"""What an index was built with, and the check that refuses to mix anything else into it.

Vectors from different models, Matryoshka dims, prompts or chunkings are not comparable, so an index
records them all and a run with other values stops with a message saying how to rebuild. The model is
identified by what it computes, not by its name: the embedding of a fixed probe text is stored, and
another model (or a fine-tune of this one) is refused when its probe embedding differs. Loading the
same weights another way (bf16, the int8 CPU path, a local copy of the hub snapshot) still matches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from embeddinggemma.prompts import DOCUMENT_PROMPT, DOCUMENT_WITH_TITLE

__all__ = [
    "CHUNKER_VERSION",
    "IndexMismatchError",
    "IndexSettings",
    "model_fingerprint",
    "prompt_version",
    "same_model",
]

CHUNKER_VERSION = 1  # bump when chunk boundaries or titles change for the same input
PROBE_TEXT = "EmbeddingGemma index fingerprint: how do I parse command line arguments in Python?"
# Same weights in bf16 or through the int8 CPU path stay above ~0.99 cosine; other models fall far below.
SAME_MODEL_COSINE = 0.98
DEFAULT_CHUNK_TOKENS = 512
DEFAULT_OVERLAP_TOKENS = 64


class IndexMismatchError(ValueError):
    """The index was built with other settings; the message says how to rebuild it."""


def prompt_version(titles: bool) -> str:
    """A short hash of everything that shapes a chunk's model input besides its text."""
    spec = {"document": DOCUMENT_WITH_TITLE, "untitled": DOCUMENT_PROMPT, "titles": titles, "chunker": CHUNKER_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def model_fingerprint(embedder: Any) -> list[float]:
    """The full-width document embedding of a fixed probe text, rounded for storage."""
    vector = np.asarray(embedder.encode_document([PROBE_TEXT]), dtype=np.float32)[0]
    return [round(float(x), 6) for x in vector]


def same_model(a: list[float], b: list[float]) -> bool:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:
        return False
    return float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12)) >= SAME_MODEL_COSINE


@dataclass(frozen=True)
class IndexSettings:
    model: str  # how to load it again: a hub id or an absolute checkpoint path
    fingerprint: list[float]
    dim: int
    prompt_version: str
    chunk_tokens: int
    overlap_tokens: int
    titles: bool
    dense: tuple[str, ...]  # derived structures kept up to date (binary, int8, hnsw); exact always works

    def to_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        meta["dense"] = list(self.dense)
        meta["document_prompt"] = DOCUMENT_WITH_TITLE if self.titles else DOCUMENT_PROMPT
        meta["updated_utc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> IndexSettings:
        values = {f.name: meta[f.name] for f in fields(cls)}
        values["dense"] = tuple(values["dense"])
        return cls(**values)

    def check_compatible(self, built: IndexSettings, db: str) -> None:
        """Raise :class:`IndexMismatchError` if vectors made with ``self`` cannot join an index ``built``."""
        problems = []
        if not same_model(self.fingerprint, built.fingerprint):
            problems.append(f"model {built.model} (this run: {self.model}, which embeds differently)")
        for name in ("dim", "prompt_version", "chunk_tokens", "overlap_tokens", "titles"):
            if getattr(self, name) != getattr(built, name):
                problems.append(f"{name} {getattr(built, name)!r} (this run: {getattr(self, name)!r})")
        if problems:
            raise IndexMismatchError(
                f"{db} was built with {'; '.join(problems)}; its vectors cannot be mixed with this run's. "
                f"Rebuild it with `embeddinggemma index DIR --db {db} --rebuild` (add your options), or drop the "
                "conflicting options to keep the index's own"
            )
