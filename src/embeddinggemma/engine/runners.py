"""Batch schedulers that turn token id lists into embeddings: padded (CPU) and packed (GPU).

Both return un-normalised full-width fp32 embeddings on the CPU, in input order, so the Embedder can
apply Matryoshka truncation and normalisation the same way whichever runner ran.

- `PaddedRunner`: length-sorted, right-padded batches under a token budget (rows x longest). On CPU
  the attention is a small share of the work and SDPA's fused kernel handles padding masks well.
- `PackedRunner`: texts back to back in token-budget batches with no padding. On CUDA the default is
  the fused path (`engine.fused`: Triton kernels, FlashAttention over the texts' offsets) with no
  compilation; a host thread packs the next batches into pinned memory while the GPU works, copies
  are asynchronous, and the only waits are for results two batches old.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from embeddinggemma.engine import fused, varlen
from embeddinggemma.engine.batching import PackedBatch, pack, pad_batch, token_budget_batches
from embeddinggemma.engine.forward import ATTENTIONS, PATHS, packed_forward, padded_forward
from embeddinggemma.model import EmbeddingGemma

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]

# Until the fused kernels are compiled (seconds, once per machine: Triton caches them on disk), batches
# up to this many tokens run the model's eager modules, so a first query never waits.
EAGER_WHILE_WARMING_TOKENS = 8192
# Batches whose results may still be computing on the GPU; older ones are waited for (bounds memory
# and keeps progress honest).
IN_FLIGHT_BATCHES = 2


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
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = 32, progress: Progress | None = None
    ) -> torch.Tensor:
        lengths = [len(ids) for ids in token_ids]
        out = torch.empty(len(token_ids), self.model.config.embedding_dim, dtype=torch.float32)
        device = self.model.device
        for rows in token_budget_batches(lengths, self.max_batch_tokens, max_texts or 32, pad_to_longest=True):
            input_ids, attention_mask = pad_batch([token_ids[i] for i in rows], self.pad_id)
            embeddings = padded_forward(self.model, input_ids.to(device), attention_mask.to(device), normalize=False)
            out[rows] = embeddings.float().cpu()
            if progress:
                progress(len(rows))
        return out


def default_attention(model: EmbeddingGemma) -> str:
    """varlen FlashAttention where it runs (CUDA, bf16, PyTorch >= 2.10), FlexAttention elsewhere on
    CUDA, dense masks on CPU (FlexAttention's CPU kernel is slower there)."""
    if model.device.type != "cuda":
        return "dense"
    reason = varlen.unsupported_reason(model.device, model.dtype, model.encoder.config.head_dim)
    return "varlen" if reason is None else "flex"


@dataclass
class PackedRunner:
    """Token-budget packed batches without padding.

    - `attention`: "varlen", "flex", "dense" or "auto" (`default_attention`).
    - `path`: "fused" (Triton kernels, CUDA), "modules" (the model's own layers) or "auto" (fused where it
      runs). `compile=True` compiles the model's layers instead (path "modules"). Compiled kernels
      (`compile`, and FlexAttention on CUDA) see batches padded to power-of-two token counts, so a
      handful of shapes serve the whole run; varlen FlashAttention needs no padding at all.
    - `max_batch_tokens` bounds memory; the number of texts per batch is not capped.
    """

    model: EmbeddingGemma
    pad_id: int = 0
    max_batch_tokens: int = 65536
    attention: str = "auto"
    path: str = "auto"
    compile: bool = False
    _warm: concurrent.futures.Future | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive, got {self.max_batch_tokens}")
        if self.attention == "auto":
            self.attention = default_attention(self.model)
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be 'auto' or one of {ATTENTIONS}, got {self.attention!r}")
        if self.path == "auto":
            self.path = "modules" if self.compile or fused.unsupported_reason(self.model) else "fused"
        if self.path not in PATHS:
            raise ValueError(f"path must be 'auto' or one of {PATHS}, got {self.path!r}")
        if self.compile and self.path != "modules":
            raise ValueError("compile=True compiles the model's layers: use path='modules' (or 'auto')")
        if self.path == "fused" and self.model.device.type == "cuda":
            self._warm = _warm_up_in_background(self.model, self.attention)

    @property
    def pipelined(self) -> bool:
        """Whether the host work overlaps the device's (callers may then feed texts in chunks)."""
        return self.model.device.type == "cuda"

    def _multiple_of(self, tokens: int) -> int:
        if self.compile or (self.attention == "flex" and self.model.device.type == "cuda"):
            return max(1024, 1 << (tokens - 1).bit_length())  # a few static shapes for the compiled kernels
        return 1 if self.attention == "varlen" else 128

    def _prepare(self, token_ids: Sequence[Sequence[int]], rows: list[int]) -> PackedBatch:
        texts = [token_ids[i] for i in rows]
        batch = pack(texts, pad_id=self.pad_id, multiple_of=self._multiple_of(sum(map(len, texts))))
        return batch.pin_memory() if self.pipelined else batch

    def _path_for(self, batch: PackedBatch) -> str:
        if self._warm is None:
            return self.path
        if not self._warm.done():
            if batch.num_tokens <= EAGER_WHILE_WARMING_TOKENS:
                return "modules"
            logger.info("waiting for the GPU kernels to compile (first use on this machine; cached afterwards)")
        error = self._warm.exception()
        self._warm = None
        if error is not None:
            logger.warning("the fused GPU path failed its self-check (%s); using the model's modules instead", error)
            self.path = "modules"
        return self.path

    @torch.inference_mode()
    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = None, progress: Progress | None = None
    ) -> torch.Tensor:
        """`max_texts` is accepted for the Runner protocol and ignored: packed batches are bounded by tokens."""
        lengths = [len(ids) for ids in token_ids]
        budget = max(self.max_batch_tokens, max(lengths, default=0))  # an over-long text still fits alone
        plan = token_budget_batches(lengths, budget)
        device = self.model.device
        results: list[torch.Tensor] = []
        in_flight: collections.deque = collections.deque()
        for rows, batch in zip(plan, _prefetched(self._prepare, token_ids, plan), strict=True):
            batch = batch.to(device, non_blocking=self.pipelined)
            embeddings = packed_forward(
                self.model, batch, attention=self.attention, path=self._path_for(batch), compile=self.compile
            )
            results.append(embeddings.float())
            if self.pipelined:
                event = torch.cuda.Event()
                event.record()
                in_flight.append((event, len(rows)))
                while len(in_flight) > IN_FLIGHT_BATCHES:
                    done, count = in_flight.popleft()
                    done.synchronize()
                    if progress:
                        progress(count)
            elif progress:
                progress(len(rows))
        out = torch.empty(len(token_ids), self.model.config.embedding_dim, dtype=torch.float32)
        if results:
            order = torch.tensor([i for rows in plan for i in rows])
            out[order] = torch.cat(results).cpu()
        for _, count in in_flight:
            if progress:
                progress(count)
        return out


def _prefetched(prepare, token_ids, plan: list[list[int]], depth: int = 2) -> Iterator[PackedBatch]:
    """prepare(token_ids, rows) for each batch of the plan, `depth` batches ahead on a host thread."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embeddinggemma-pack") as pool:
        pending: collections.deque = collections.deque()
        for rows in plan:
            pending.append(pool.submit(prepare, token_ids, rows))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_WARM_LOCK = threading.Lock()


def _warm_up_in_background(model: EmbeddingGemma, attention: str) -> concurrent.futures.Future:
    """Compile the fused path's kernels on tiny batches in a background thread (both of Triton's
    specialisations of a row count: divisible by 16 and not), and check them against the model's modules:
    a kernel that disagrees (an unexpected GPU or Triton version) fails the warm-up, and the runner falls
    back to the modules rather than return wrong embeddings."""

    def warm() -> None:
        vocab = model.config.backbone.vocab_size
        with _WARM_LOCK, torch.inference_mode():
            for n in (16, 17):
                ids = [[(7919 * i) % vocab for i in range(1, n + 1)], [(104729 * i) % vocab for i in range(1, 4)]]
                batch = pack(ids, multiple_of=1 if attention == "varlen" else 128).to(model.device)
                fast = packed_forward(model, batch, attention=attention, path="fused").float()
                reference = packed_forward(model, batch, attention=attention, path="modules").float()
                agreement = torch.nn.functional.cosine_similarity(fast, reference).min().item()
                if not agreement >= 0.99:
                    raise RuntimeError(f"fused output disagrees with the model's modules (cosine {agreement:.4f})")
        logger.info("GPU kernels ready")

    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embeddinggemma-warmup")
    future = executor.submit(warm)
    executor.shutdown(wait=False)
    return future
