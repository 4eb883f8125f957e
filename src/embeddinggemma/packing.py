"""Packing: texts back to back in one token stream, no padding (doc section 2, "never materialise padding").

A packed batch is one row of N tokens with per-text positions (restarting at 0) and a segment id per
token. Attention is block-diagonal (a token sees only its own text) and, on sliding layers, also
inside the +-radius band of its own positions. This module holds the data structure, token-budget
batch planning and the reference (dense-mask) attention; fast kernels live in `embeddinggemma.engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig
from embeddinggemma.masks import AttentionFn, sdpa_attention


@dataclass(frozen=True)
class PackedBatch:
    """Texts concatenated into one row. Padding tokens (to a kernel-friendly N) form a dummy last segment."""

    input_ids: torch.Tensor  # (1, N) int64
    position_ids: torch.Tensor  # (1, N) int64, 0.. per text
    segment_ids: torch.Tensor  # (N,) int64: text index; `num_texts` for padding tokens
    lengths: tuple[int, ...]  # tokens per text

    @property
    def num_texts(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        """Real tokens (without padding)."""
        return sum(self.lengths)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.position_ids.to(device, non_blocking=non_blocking),
            self.segment_ids.to(device, non_blocking=non_blocking),
            self.lengths,
        )

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(
            self.input_ids.pin_memory(), self.position_ids.pin_memory(), self.segment_ids.pin_memory(), self.lengths
        )


def pack(token_ids: Sequence[Sequence[int]], *, pad_id: int = 0, multiple_of: int = 1) -> PackedBatch:
    """Concatenate token id lists; pad the stream to a multiple of `multiple_of` (e.g. a kernel block)."""
    if not token_ids:
        raise ValueError("cannot pack an empty list of texts")
    lengths = tuple(len(ids) for ids in token_ids)
    if min(lengths) == 0:
        raise ValueError("cannot pack a text with no tokens (every text has at least BOS and EOS)")
    total = sum(lengths)
    padded = -(-total // multiple_of) * multiple_of
    flat = [token for ids in token_ids for token in ids]
    input_ids = torch.full((1, padded), pad_id, dtype=torch.long)
    input_ids[0, :total] = torch.as_tensor(flat, dtype=torch.long)
    lengths_t = torch.as_tensor(lengths)
    segment_ids = torch.full((padded,), len(lengths), dtype=torch.long)
    segment_ids[:total] = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
    starts = torch.cumsum(lengths_t, 0) - lengths_t
    positions = torch.zeros(padded, dtype=torch.long)
    positions[:total] = torch.arange(total) - torch.repeat_interleave(starts, lengths_t)
    if padded > total:
        positions[total:] = torch.arange(padded - total)  # the padding segment is its own "text"
    return PackedBatch(input_ids, positions[None], segment_ids, lengths)


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: (input_ids, attention_mask), both (B, T) int64."""
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_texts: int | None = None, *, pad_to_longest: bool = False
) -> list[list[int]]:
    """Group text indices into batches of at most `max_tokens` tokens, longest texts first.

    `pad_to_longest=True` counts a batch as rows x longest (padded batches); otherwise the sum of
    lengths (packed batches). A text longer than the budget gets a batch of its own. Sorting longest
    first keeps lengths in a batch alike and surfaces out-of-memory errors at the first batch.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        cost = (len(current) + 1) * lengths[current[0]] if pad_to_longest and current else used + n
        if current and (cost > max_tokens or (max_texts is not None and len(current) >= max_texts)):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches


def packed_masks(batch: PackedBatch, config: Gemma3TextConfig) -> dict[str, torch.Tensor]:
    """Dense (1, 1, N, N) boolean masks: same text, and within the band on sliding layers.

    The reference for the fast kernels, and the CPU training path for moderate N. Padding tokens form
    their own segment, so no row is empty.
    """
    segments = batch.segment_ids
    positions = batch.position_ids[0]
    same_text = segments[:, None] == segments[None, :]
    band = (positions[:, None] - positions[None, :]).abs() <= config.window_radius
    return {FULL_ATTENTION: same_text[None, None], SLIDING_ATTENTION: (same_text & band)[None, None]}


def packed_dense_attention(batch: PackedBatch, config: Gemma3TextConfig) -> dict[str, AttentionFn]:
    return {kind: sdpa_attention(mask) for kind, mask in packed_masks(batch, config).items()}
