"""EmbeddingGemma in PyTorch: the exact model, its training recipe, quantization, evaluation and engine."""

from embeddinggemma.checkpoint import CheckpointError, load_checkpoint, load_encoder, save_checkpoint
from embeddinggemma.config import MATRYOSHKA_DIMS, EmbeddingGemmaConfig, Gemma3TextConfig, HeadConfig
from embeddinggemma.embedder import Embedder
from embeddinggemma.model import EmbeddingGemma, Gemma3Encoder
from embeddinggemma.tokenizer import TruncationError, TruncationWarning

__version__ = "0.1.0"

__all__ = [
    "MATRYOSHKA_DIMS",
    "CheckpointError",
    "Embedder",
    "EmbeddingGemma",
    "EmbeddingGemmaConfig",
    "Gemma3Encoder",
    "Gemma3TextConfig",
    "HeadConfig",
    "TruncationError",
    "TruncationWarning",
    "load_checkpoint",
    "load_encoder",
    "save_checkpoint",
]
