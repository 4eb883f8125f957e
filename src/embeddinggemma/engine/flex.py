"""FlexAttention for packed batches: block-sparse masks built from the texts' offsets.

`torch.nn.attention.flex_attention` skips fully-masked 128x128 tiles, so a batch of many short texts
costs what its texts cost, not N^2. `create_block_mask` finds the tiles by evaluating the mask on all
N^2 token pairs (8 ms for a 65,536-token batch on an H100); a packed batch's structure is known from
its offsets alone, so `packed_block_masks` computes it directly in O(tiles): for each query tile, the
keys it can see form one interval (its first segment's start, or q - radius, up to its last segment's
end, or q + radius), and the tiles where every pair is visible form a sub-interval of that.
`reference_block_masks` (the N^2 way) stays for tests.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig
from embeddinggemma.engine.batching import PackedBatch
from embeddinggemma.model import AttentionFn

BLOCK_SIZE = 128


def _mask_mods(batch: PackedBatch, radius: int):
    segments = batch.segment_ids
    positions = batch.position_ids[0]

    def same_text(b, h, q, k):
        return segments[q] == segments[k]

    def same_text_in_band(b, h, q, k):
        return (segments[q] == segments[k]) & ((positions[q] - positions[k]).abs() <= radius)

    return {FULL_ATTENTION: same_text, SLIDING_ATTENTION: same_text_in_band}


def _ordered(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nq, nk) bool -> (count per row, column indices with the selected ones first, ascending): the
    layout BlockMask stores, with leading batch and head dims of 1."""
    counts = selected.sum(1, dtype=torch.int32)
    indices = torch.argsort((~selected).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return counts[None, None], indices[None, None]


def block_structure(
    cu_seqlens: torch.Tensor, length: int, radius: int | None, block: int = BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(partial counts, partial indices, full counts, full indices) of the tiles a packed batch visits.

    Segments are contiguous and positions restart at 0 in each, so inside a segment |pos_q - pos_k| =
    |q - k|. `radius=None` is whole-text attention. `length` must be a multiple of `block`.
    """
    if length % block:
        raise ValueError(f"a packed batch for FlexAttention must be a multiple of {block} tokens, got {length}")
    device = cu_seqlens.device
    cu = cu_seqlens.to(torch.int64)
    starts, ends = cu[:-1], cu[1:]
    reach = length if radius is None else radius
    tiles = length // block
    q_lo = torch.arange(tiles, device=device) * block
    q_hi = q_lo + block - 1
    first = torch.searchsorted(ends, q_lo, right=True)  # segment of the tile's first token
    last = torch.searchsorted(ends, q_hi, right=True)
    # every key some query of the tile sees: one interval (see the module docstring)
    seen_lo = torch.maximum(starts[first], q_lo - reach) // block
    seen_hi = torch.minimum(ends[last] - 1, q_hi + reach) // block
    # tiles where every pair is visible: the query tile inside one segment, the key tile too, and the
    # farthest pair within the band
    full_lo = torch.maximum(starts[first], q_hi - reach)
    full_hi = torch.minimum(ends[first] - 1, q_lo + reach)
    full_lo = -(-full_lo // block)
    full_hi = (full_hi + 1) // block - 1
    k = torch.arange(tiles, device=device)[None, :]
    seen = (k >= seen_lo[:, None]) & (k <= seen_hi[:, None])
    full = (first == last)[:, None] & (k >= full_lo[:, None]) & (k <= full_hi[:, None])
    return (*_ordered(seen & ~full), *_ordered(full))


def packed_block_masks(
    batch: PackedBatch, config: Gemma3TextConfig, *, for_backward: bool = False
) -> dict[str, BlockMask]:
    """Block masks for one packed batch, built from its offsets; `for_backward` also builds the
    transposed (query-tile) indices the backward kernel needs."""
    length = batch.input_ids.shape[1]
    mask_mods = _mask_mods(batch, config.window_radius)
    masks = {}
    for kind, radius in ((FULL_ATTENTION, None), (SLIDING_ATTENTION, config.window_radius)):
        partial_counts, partial_indices, full_counts, full_indices = block_structure(batch.cu_seqlens, length, radius)
        masks[kind] = BlockMask.from_kv_blocks(
            partial_counts,
            partial_indices,
            full_counts,
            full_indices,
            BLOCK_SIZE=BLOCK_SIZE,
            mask_mod=mask_mods[kind],
            seq_lengths=(length, length),
            compute_q_blocks=for_backward,
        )
    return masks


def reference_block_masks(batch: PackedBatch, config: Gemma3TextConfig) -> dict[str, BlockMask]:
    """`create_block_mask` evaluated on every token pair: the N^2 reference for `packed_block_masks`."""
    length = batch.input_ids.shape[1]
    build = functools.partial(
        create_block_mask, B=None, H=None, Q_LEN=length, KV_LEN=length, device=batch.segment_ids.device
    )
    return {kind: build(mod, BLOCK_SIZE=BLOCK_SIZE) for kind, mod in _mask_mods(batch, config.window_radius).items()}


@functools.cache
def compiled_flex_attention():
    """flex_attention compiled on its own (seconds, not the whole model): the fused kernel instead of the
    eager fallback that materialises the scores."""
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, block_mask: BlockMask, compiled: bool
) -> torch.Tensor:
    """(1, H, N, D) queries against (1, Hkv, N, D) keys/values under a block mask."""
    attention = compiled_flex_attention() if compiled else flex_attention
    gqa = k.shape[1] != q.shape[1]
    if compiled:
        return attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    with warnings.catch_warnings():
        # eager flex warns that it is unfused: expected, it is the correctness path off CUDA
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def flex_attention_fns(masks: Mapping[str, BlockMask], *, compiled: bool) -> dict[str, AttentionFn]:
    return {kind: functools.partial(flex_attend, block_mask=mask, compiled=compiled) for kind, mask in masks.items()}
