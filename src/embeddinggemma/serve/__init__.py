"""HTTP serving: OpenAI `/v1/embeddings`, TEI `/embed`, `/health`, `/info`, `/metrics`, `/v1/models`, with
dynamic batching (one model worker), limits, backpressure and optional API keys.

The top layer: it imports the Embedder, tokenizer and engine; nothing in the library imports it (the
CLI's `serve` command does). Needs the `serve` extra: `pip install 'embeddinggemma[serve]'`.

    from embeddinggemma import Embedder
    from embeddinggemma.serve import ServeSettings, create_app

    app = create_app(Embedder.from_pretrained(), ServeSettings(max_batch_tokens=2048))
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from embeddinggemma.serve.settings import ServeSettings

# FastAPI is imported on first use, so `embeddinggemma --help` works without the serve extra
_LAZY = {
    "create_app": "embeddinggemma.serve.app",
    "EmbeddingService": "embeddinggemma.serve.service",
    "Inputs": "embeddinggemma.serve.schemas",
}

__all__ = ["EmbeddingService", "Inputs", "ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
