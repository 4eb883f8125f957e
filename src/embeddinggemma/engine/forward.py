"""Batches to embeddings: the padded forward and the one packed forward.

The model (`embeddinggemma.model`) knows nothing of batch layout; here each layout supplies positions,
an attention kernel per layer type and the pooling:

- `padded_forward`: right-padded rows, dense masks, SDPA, masked mean pooling (the exact reference);
- `packed_forward`: texts back to back with per-text positions and segment pooling, with one of
  `ATTENTIONS` ("dense" masks for tests and CPU training, "flex" block-sparse FlexAttention, "varlen"
  FlashAttention over offsets) and one of `PATHS`: the model's own modules ("modules", what training
  back-propagates through, optionally compiled layer by layer) or the fused inference path
  (`engine.fused`: concatenated projections and Triton kernels for the elementwise work).
"""

from __future__ import annotations

import functools

import torch

from embeddinggemma.engine import fused, varlen
from embeddinggemma.engine.batching import PackedBatch
from embeddinggemma.engine.flex import flex_attention_fns, packed_block_masks
from embeddinggemma.engine.masks import packed_dense_attention, padded_attention
from embeddinggemma.model import AttentionFn, EmbeddingGemma, mean_pool, segment_mean_pool

ATTENTIONS = ("dense", "flex", "varlen")
PATHS = ("modules", "fused")


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Right padding: every text's positions start at 0. (B, T) -> (B, T)."""
    batch, length = attention_mask.shape
    return torch.arange(length, device=attention_mask.device).expand(batch, length)


def padded_forward(
    model: EmbeddingGemma, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool | None = None
) -> torch.Tensor:
    """Right-padded batch (B, T) -> embeddings (B, E), in the caller's grad mode. The simple, exact path."""
    return model(
        input_ids,
        padded_position_ids(attention_mask),
        padded_attention(attention_mask, model.encoder.config),
        functools.partial(mean_pool, attention_mask=attention_mask),
        normalize,
    )


def packed_attention_fns(batch: PackedBatch, model: EmbeddingGemma, attention: str) -> dict[str, AttentionFn]:
    """The attention kernel per layer type for a packed batch (the model's (1, H, N, D) layout)."""
    config = model.encoder.config
    if attention == "dense":
        return packed_dense_attention(batch, config)
    if attention == "flex":
        masks = packed_block_masks(batch, config, for_backward=torch.is_grad_enabled())
        return flex_attention_fns(masks, compiled=batch.input_ids.is_cuda)
    if attention == "varlen":
        device = batch.input_ids.device
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else model.dtype
        reason = varlen.unsupported_reason(device, dtype, config.head_dim)
        if reason is not None:
            raise ValueError(f"attention='varlen' is not available: {reason}; use 'flex' or 'dense'")
        return varlen.varlen_attention_fns(batch, config, dtype)
    raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


def packed_forward(
    model: EmbeddingGemma,
    batch: PackedBatch,
    *,
    attention: str = "flex",
    path: str = "modules",
    compile: bool = False,
    dynamic_tokens: bool = False,
) -> torch.Tensor:
    """Un-normalised embeddings (S, E) of a packed batch, in the caller's grad mode (the trainer
    back-propagates through the "modules" path).

    `compile` compiles each encoder layer (regional compilation: one graph shared by the 24 layers, so
    the first call compiles one layer, not the whole model); "fused" runs without compilation.
    `dynamic_tokens` compiles them for any token count (`compiled_layers`), so batches need no padding
    to a few fixed shapes.
    """
    if path == "fused":
        pooled = fused.mean_pool(fused.encode(model, batch, attention), batch)
    elif path == "modules":
        attend = packed_attention_fns(batch, model, attention)
        encoder = compiled_layers(model, dynamic_tokens=dynamic_tokens) if compile else model.encoder
        hidden = encoder(batch.input_ids, batch.position_ids, attend)[0]  # (N, C)
        counts = batch.token_counts()
        pooled = segment_mean_pool(
            hidden[: batch.num_tokens], batch.segment_ids[: batch.num_tokens], batch.num_texts, counts
        )
    else:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return model.project(pooled, normalize=False)


def compiled_layers(model: EmbeddingGemma, *, dynamic_tokens: bool = False) -> torch.nn.Module:
    """The encoder with each layer compiled in place, once per model (asking for the other mode compiles
    the layers again: training uses dynamic_tokens=True, the compiled inference engine False).

    `dynamic_tokens=False` specialises the graphs to each batch shape (callers pad to a few shapes);
    True compiles them with symbolic sizes from the first call. Only the token count (and the number of
    texts, the longest text) stays symbolic: the hidden and head sizes meet the weights' static shapes
    and are specialised back to constants, so the kernels are those of a static graph without the
    recompilation each new token count would otherwise cost (and the padding that avoids it).
    """
    encoder = model.encoder
    if getattr(encoder, "_layers_compiled", None) != dynamic_tokens:
        for layer in encoder.layers:
            layer.compile(dynamic=True if dynamic_tokens else None)
        encoder._layers_compiled = dynamic_tokens
    return encoder
