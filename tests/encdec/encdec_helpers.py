"""Helpers shared by the encdec tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig


def tiny_causal_config(**overrides) -> Gemma3TextConfig:
    """Odd sizes (as tests/conftest.py's tiny encoder), causal, a left window shorter than the inputs."""
    base = dict(
        vocab_size=99,
        hidden_size=48,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=5,
        layer_types=(SLIDING_ATTENTION, SLIDING_ATTENTION, FULL_ATTENTION),
        max_position_embeddings=128,
        use_bidirectional_attention=False,
    )
    return Gemma3TextConfig(**(base | overrides))


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere, norms included (zero norms would hide a mis-mapped gain)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if "norm" in name else 0.15))
