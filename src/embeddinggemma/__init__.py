"""EmbeddingGemma in PyTorch: the exact model, its training recipe, quantization, evaluation and engine.

The names below load on first use (PEP 562), so `embeddinggemma.quant.ondevice.OnnxEmbedder` (or
`embeddinggemma.OnnxEmbedder`) runs a converted model without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MATRYOSHKA_DIMS": "embeddinggemma.config",
    "CheckpointError": "embeddinggemma.checkpoint_info",
    "Embedder": "embeddinggemma.embedder",
    "EmbeddingGemma": "embeddinggemma.model",
    "EmbeddingGemmaConfig": "embeddinggemma.config",
    "Gemma3Encoder": "embeddinggemma.model",
    "Gemma3TextConfig": "embeddinggemma.config",
    "HeadConfig": "embeddinggemma.config",
    "OnnxEmbedder": "embeddinggemma.quant.ondevice",
    "TruncationError": "embeddinggemma.tokenizer",
    "TruncationWarning": "embeddinggemma.tokenizer",
    "load_checkpoint": "embeddinggemma.checkpoint",
    "load_encoder": "embeddinggemma.checkpoint",
    "save_checkpoint": "embeddinggemma.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embeddinggemma' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
