"""Batch layouts: packed token streams (no padding) and right-padded rows, and token-budget planning.

A packed batch is one row of N tokens: texts back to back, each with its own positions (restarting at
0) and a segment id per token (doc section 2, "never materialise padding"). Attention is block-diagonal
(a token sees only its own text) and, on sliding layers, also inside the +-radius band of its own
positions. When a kernel wants N rounded up (a 128-token block, a fixed compiled budget), the filler
tokens form segments of at most `PAD_SEGMENT` tokens, so they cost attention work O(padding x 128)
instead of O(padding^2).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embeddinggemma.engine.budget import token_budget_batches  # noqa: F401 (re-exported)

# Filler tokens are split into segments no longer than one attention block.
PAD_SEGMENT = 128


@dataclass(frozen=True)
class PackedBatch:
    """Texts concatenated into one row; filler tokens at the end form their own short segments."""

    input_ids: torch.Tensor  # (1, N) int64
    position_ids: torch.Tensor  # (1, N) int64, 0.. per segment
    segment_ids: torch.Tensor  # (N,) int64: text index; num_texts.. for filler segments
    cu_seqlens: torch.Tensor  # (num_segments + 1,) int32: segment offsets, texts first, then filler
    lengths: tuple[int, ...]  # tokens per text (host copy: planning never waits for the device)

    @property
    def num_texts(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        """Real tokens (without filler)."""
        return sum(self.lengths)

    @property
    def num_segments(self) -> int:
        """Texts plus filler segments."""
        return self.cu_seqlens.numel() - 1

    @property
    def max_segment_length(self) -> int:
        return max(max(self.lengths), min(PAD_SEGMENT, self.input_ids.shape[1] - self.num_tokens))

    def token_counts(self) -> torch.Tensor:
        """(num_texts,) tokens per text, computed where the batch lives (no host round trip)."""
        return (self.cu_seqlens[1 : self.num_texts + 1] - self.cu_seqlens[: self.num_texts]).to(torch.int64)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PackedBatch(
            move(self.input_ids), move(self.position_ids), move(self.segment_ids), move(self.cu_seqlens), self.lengths
        )

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(
            self.input_ids.pin_memory(),
            self.position_ids.pin_memory(),
            self.segment_ids.pin_memory(),
            self.cu_seqlens.pin_memory(),
            self.lengths,
        )


def filler_segments(num_tokens: int, padded: int) -> list[int]:
    """Lengths of the filler segments between `num_tokens` and `padded`, cut at PAD_SEGMENT boundaries."""
    cuts = [num_tokens, *range(-(-num_tokens // PAD_SEGMENT) * PAD_SEGMENT, padded, PAD_SEGMENT), padded]
    return [b - a for a, b in itertools.pairwise(cuts) if b > a]


def pack(token_ids: Sequence[Sequence[int]], *, pad_id: int = 0, multiple_of: int = 1) -> PackedBatch:
    """Concatenate token id lists; pad the stream to a multiple of `multiple_of` (e.g. a kernel block)."""
    if not token_ids:
        raise ValueError("cannot pack an empty list of texts")
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    if lengths.min() == 0:
        raise ValueError("cannot pack a text with no tokens (every text has at least BOS and EOS)")
    total = int(lengths.sum())
    padded = -(-total // multiple_of) * multiple_of
    segment_lengths = np.concatenate([lengths, np.asarray(filler_segments(total, padded), dtype=np.int64)])
    starts = np.cumsum(segment_lengths) - segment_lengths
    input_ids = np.full(padded, pad_id, dtype=np.int64)
    if isinstance(token_ids[0], np.ndarray):  # rows of one buffer (`TokenizerProcesses`): no per-token work
        np.concatenate(token_ids, out=input_ids[:total])
    else:
        input_ids[:total] = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=total)
    segment_ids = np.repeat(np.arange(len(segment_lengths)), segment_lengths)
    positions = np.arange(padded) - np.repeat(starts, segment_lengths)
    cu_seqlens = np.concatenate([[0], np.cumsum(segment_lengths)]).astype(np.int32)
    return PackedBatch(
        torch.from_numpy(input_ids)[None],
        torch.from_numpy(positions)[None],
        torch.from_numpy(segment_ids),
        torch.from_numpy(cu_seqlens),
        tuple(lengths.tolist()),
    )


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: (input_ids, attention_mask), both (B, T) int64."""
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
