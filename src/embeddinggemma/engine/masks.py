"""Dense attention masks for padded and packed batches, and the SDPA kernel that applies them (doc section 2).

These are the reference masks: exact, simple, O(T^2) memory. The fast kernels (`engine.flex`,
`engine.varlen`) are tested against them.

Bidirectional Gemma 3 has two masks:
- full layers: every query sees every non-padding key;
- sliding layers: query i sees key j iff |i - j| <= sliding_window // 2 (a symmetric 513-token band for
  the released model; the first HF release was lopsided, fixed in transformers PR #40700).
Padding masks keys only. A padded query whose whole band is padding would get an all-masked softmax
row, i.e. NaN, which leaks into real tokens through 0 * NaN (transformers #45491); we let every query
see itself, which changes nothing for real tokens (their diagonal is already visible).

The causal Gemma 3 language model (the decoder of `embeddinggemma.encdec`) is the same stack with
`causal=True`: query i sees key j iff j <= i, and on sliding layers also i - j < sliding_window (a left
window of `sliding_window` tokens, the query included: transformers' `sliding_window_overlay`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig
from embeddinggemma.engine.batching import PackedBatch
from embeddinggemma.model import AttentionFn


def band_mask(length: int, radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool: True where |i - j| <= radius."""
    idx = torch.arange(length, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= radius


def causal_band(positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """(T, T) bool from positions (T,): True where key j is at or before query i, and within the left
    window (i - j < window) unless `window` is None."""
    offset = positions[:, None] - positions[None, :]
    allowed = offset >= 0
    return allowed if window is None else allowed & (offset < window)


def padded_masks(
    attention_mask: torch.Tensor, config: Gemma3TextConfig, *, causal: bool = False
) -> dict[str, torch.Tensor]:
    """Boolean masks (True = attend) for a right-padded batch, per layer type.

    attention_mask: (B, T), 1 for real tokens. Full layers get a (B, 1, 1, T) key mask (broadcast over
    queries); sliding layers need (B, 1, T, T) only when the batch is longer than the band. `causal`:
    the decoder's masks, (B, 1, T, T) on every layer.
    """
    valid = attention_mask.bool()
    length = valid.shape[1]
    keys = valid[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        positions = torch.arange(length, device=valid.device)
        diagonal = torch.eye(length, dtype=torch.bool, device=valid.device)
        return {
            FULL_ATTENTION: (causal_band(positions, None) & keys) | diagonal,
            SLIDING_ATTENTION: (causal_band(positions, config.sliding_window) & keys) | diagonal,
        }
    masks = {FULL_ATTENTION: keys}
    if length - 1 <= config.window_radius:
        masks[SLIDING_ATTENTION] = keys  # the band covers the whole batch
    else:
        band = band_mask(length, config.window_radius, valid.device)
        diagonal = torch.eye(length, dtype=torch.bool, device=valid.device)
        masks[SLIDING_ATTENTION] = (band & keys) | diagonal  # (B, 1, T, T)
    return masks


def sdpa_attention(mask: torch.Tensor | None) -> AttentionFn:
    """PyTorch SDPA with a boolean mask; K/V heads are shared across query heads (MQA/GQA)."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])

    return attend


def padded_attention(
    attention_mask: torch.Tensor, config: Gemma3TextConfig, *, causal: bool = False
) -> dict[str, AttentionFn]:
    masks = padded_masks(attention_mask, config, causal=causal)
    return {kind: sdpa_attention(mask) for kind, mask in masks.items()}


def packed_masks(batch: PackedBatch, config: Gemma3TextConfig, *, causal: bool = False) -> dict[str, torch.Tensor]:
    """Dense (1, 1, N, N) boolean masks: same segment, and within the band on sliding layers (`causal`:
    at or before the query, within the left window on sliding layers).

    The reference for the fast kernels, and the CPU training path for moderate N. Filler tokens form
    their own segments, so no row is empty.
    """
    segments = batch.segment_ids
    positions = batch.position_ids[0]
    same_text = segments[:, None] == segments[None, :]
    if causal:
        return {
            FULL_ATTENTION: (same_text & causal_band(positions, None))[None, None],
            SLIDING_ATTENTION: (same_text & causal_band(positions, config.sliding_window))[None, None],
        }
    band = (positions[:, None] - positions[None, :]).abs() <= config.window_radius
    return {FULL_ATTENTION: same_text[None, None], SLIDING_ATTENTION: (same_text & band)[None, None]}


def packed_dense_attention(
    batch: PackedBatch, config: Gemma3TextConfig, *, causal: bool = False
) -> dict[str, AttentionFn]:
    return {kind: sdpa_attention(mask) for kind, mask in packed_masks(batch, config, causal=causal).items()}
