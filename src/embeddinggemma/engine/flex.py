"""FlexAttention for packed batches: block-diagonal masks with the sliding band, no padding waste.

`torch.nn.attention.flex_attention` skips fully-masked 128x128 blocks, so a batch of many short texts
costs what its texts cost, not N^2. The mask functions read the batch's segment and position tensors;
`create_block_mask` turns them into the sparse block structure once per batch, shared by all layers of
a type. On CPU the same code runs (slowly, eagerly) so tests pin its numerics to the dense reference.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig
from embeddinggemma.masks import AttentionFn
from embeddinggemma.model import EmbeddingGemma
from embeddinggemma.packing import PackedBatch

BLOCK_SIZE = 128


def flex_block_masks(batch: PackedBatch, config: Gemma3TextConfig) -> dict[str, BlockMask]:
    """Block masks for one packed batch: same text (full layers); same text and |i - j| <= radius (sliding)."""
    segments = batch.segment_ids
    positions = batch.position_ids[0]
    radius = config.window_radius
    length = segments.numel()

    def same_text(b, h, q, k):
        return segments[q] == segments[k]

    def same_text_in_band(b, h, q, k):
        return (segments[q] == segments[k]) & ((positions[q] - positions[k]).abs() <= radius)

    build = functools.partial(
        create_block_mask, B=None, H=None, Q_LEN=length, KV_LEN=length, device=segments.device, BLOCK_SIZE=BLOCK_SIZE
    )
    # create_block_mask is compiled on CUDA (fast for 64k-token batches); eager elsewhere.
    compile_masks = segments.is_cuda
    return {
        FULL_ATTENTION: build(same_text, _compile=compile_masks),
        SLIDING_ATTENTION: build(same_text_in_band, _compile=compile_masks),
    }


def encode_packed_flex(
    model: EmbeddingGemma, input_ids: torch.Tensor, position_ids: torch.Tensor, masks: Mapping[str, BlockMask]
) -> torch.Tensor:
    """Hidden states (N, C) of a packed batch. The attention closures are built inside, so torch.compile
    traces this whole function with the block masks as graph inputs."""

    def attend_with(mask: BlockMask) -> AttentionFn:
        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            return flex_attention(q, k, v, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])

        return attend

    attend = {kind: attend_with(mask) for kind, mask in masks.items()}
    if input_ids.is_cuda:
        return model.encoder(input_ids, position_ids, attend)[0]
    with warnings.catch_warnings():
        # eager flex on CPU warns that it is unfused: expected, it is the correctness path off CUDA
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return model.encoder(input_ids, position_ids, attend)[0]


@functools.cache
def compiled_encode_packed_flex():
    """One compiled graph per (model, token count); batches padded to a fixed budget reuse it."""
    return torch.compile(encode_packed_flex, dynamic=False)
