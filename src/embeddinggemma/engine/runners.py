"""Batch schedulers that turn token id lists into embeddings: padded (CPU) and packed (GPU).

Both return un-normalised full-width fp32 embeddings on the CPU, in input order, so the Embedder can
apply Matryoshka truncation and normalisation the same way whichever runner ran.

- `PaddedRunner`: length-sorted, right-padded batches under a token budget (rows x longest). On CPU
  the attention is a small share of the work and SDPA's fused kernel handles padding masks well.
- `PackedRunner`: texts back to back in token-budget batches with no padding (FlexAttention block
  masks on CUDA); host-side packing of the next batch overlaps the GPU's work on the current one,
  inputs go through pinned memory with asynchronous copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from embeddinggemma.engine.flex import compiled_encode_packed_flex, encode_packed_flex, flex_block_masks
from embeddinggemma.model import EmbeddingGemma, segment_mean_pool
from embeddinggemma.packing import PackedBatch, pack, packed_dense_attention, pad_batch, token_budget_batches

Progress = Callable[[int], None]


class Runner(Protocol):
    """Token ids -> un-normalised full-width fp32 embeddings on the CPU, in input order."""

    model: EmbeddingGemma

    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = ..., progress: Progress | None = None
    ) -> torch.Tensor: ...


@dataclass
class PaddedRunner:
    """Sorted, right-padded batches; the exact reference path and the CPU default."""

    model: EmbeddingGemma
    pad_id: int = 0
    max_batch_tokens: int = 16384  # rows x longest text

    @torch.inference_mode()
    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int = 32, progress: Progress | None = None
    ) -> torch.Tensor:
        lengths = [len(ids) for ids in token_ids]
        out = torch.empty(len(token_ids), self.model.config.embedding_dim, dtype=torch.float32)
        device = self.model.device
        for rows in token_budget_batches(lengths, self.max_batch_tokens, max_texts, pad_to_longest=True):
            input_ids, attention_mask = pad_batch([token_ids[i] for i in rows], self.pad_id)
            embeddings = self.model(input_ids.to(device), attention_mask.to(device), normalize=False)
            out[rows] = embeddings.float().cpu()
            if progress:
                progress(len(rows))
        return out


@dataclass
class PackedRunner:
    """Token-budget packed batches without padding; FlexAttention on CUDA, dense reference masks elsewhere.

    `attention="flex"` uses block-sparse FlexAttention (compiled on CUDA); `"dense"` builds explicit
    (N, N) masks (reference; fine on CPU for small batches). `compile=True` compiles the encoder with
    a static token count per batch (every batch is padded to `max_batch_tokens`), so one graph serves
    the whole run.
    """

    model: EmbeddingGemma
    pad_id: int = 0
    max_batch_tokens: int = 65536
    attention: str = "flex"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("flex", "dense"):
            raise ValueError(f"attention must be 'flex' or 'dense', got {self.attention!r}")
        if self.compile and self.attention != "flex":
            raise ValueError("compile=True needs attention='flex' (dense masks are rebuilt per batch shape)")

    @torch.inference_mode()
    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = None, progress: Progress | None = None
    ) -> torch.Tensor:
        lengths = [len(ids) for ids in token_ids]
        longest = max(lengths, default=0)
        budget = max(self.max_batch_tokens, longest)  # a text longer than the budget still fits alone
        device = self.model.device
        use_cuda = device.type == "cuda"
        multiple = budget if self.compile else 128  # static N for the compiled graph
        results: list[tuple[list[int], torch.Tensor]] = []
        for rows in token_budget_batches(lengths, budget, max_texts):
            batch = pack([token_ids[i] for i in rows], pad_id=self.pad_id, multiple_of=multiple)
            if use_cuda:
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=use_cuda)
            embeddings = self._forward(batch)
            # keep results on the device: copying now would make the CPU wait for the GPU every batch
            results.append((rows, embeddings))
            if progress:
                progress(len(rows))
        out = torch.empty(len(token_ids), self.model.config.embedding_dim, dtype=torch.float32)
        for rows, embeddings in results:
            out[rows] = embeddings.float().cpu()
        return out

    def _forward(self, batch: PackedBatch) -> torch.Tensor:
        return packed_forward(self.model, batch, attention=self.attention, compile=self.compile)


def packed_forward(
    model: EmbeddingGemma, batch: PackedBatch, *, attention: str = "flex", compile: bool = False
) -> torch.Tensor:
    """Un-normalised embeddings (S, E) of a packed batch, in the caller's grad mode (the trainer back-propagates
    through it). `attention`: "flex" (block-sparse; compiled on CUDA with `compile`) or "dense" (explicit masks)."""
    config = model.encoder.config
    if attention == "dense":
        return model.forward_packed(batch, packed_dense_attention(batch, config), normalize=False)
    if attention != "flex":
        raise ValueError(f"attention must be 'flex' or 'dense', got {attention!r}")
    masks = flex_block_masks(batch, config)
    encode = compiled_encode_packed_flex() if compile else encode_packed_flex
    hidden = encode(model, batch.input_ids, batch.position_ids, masks)
    pooled = segment_mean_pool(hidden, batch.segment_ids, batch.num_texts + 1)[: batch.num_texts]
    return model.project(pooled, normalize=False)
