"""Helpers of the quantization tests: a tiny model whose rows split into blocks of 32."""

from __future__ import annotations

import torch

from embeddinggemma.config import EmbeddingGemmaConfig, Gemma3TextConfig, HeadConfig
from embeddinggemma.model import EmbeddingGemma


def block_config() -> EmbeddingGemmaConfig:
    """Odd where blocks allow: 4 heads x 32 over 2 KV heads, window 3, 3 layers, scalar != head_dim."""
    backbone = Gemma3TextConfig(
        vocab_size=99,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=24,
        sliding_window=6,
        layer_types=("sliding_attention", "sliding_attention", "full_attention"),
        max_position_embeddings=128,
    )
    return EmbeddingGemmaConfig(backbone=backbone, head=HeadConfig(dense_features=(160, 96)), max_seq_length=128)


def block_model(seed: int = 0, config: EmbeddingGemmaConfig | None = None) -> EmbeddingGemma:
    model = EmbeddingGemma(config or block_config()).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random everywhere, norms included (zeros would hide bugs)
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if "norm" in name else 0.15))
    return model
