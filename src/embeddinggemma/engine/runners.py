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
from collections.abc import Callable, Iterable, Iterator, Sequence
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
        on_cuda = self.model.device.type == "cuda"
        if self.compile or (self.attention == "flex" and on_cuda):
            return max(1024, 1 << (tokens - 1).bit_length())  # a few static shapes for the compiled kernels
        if on_cuda:
            # cuBLAS picks (and JIT-builds) a kernel per new matmul shape: multiples of 1,024 tokens make
            # the shapes repeat (full batches all become 65,536) for at most 1.5% filler
            return 1024
        return 128 if self.attention == "flex" else 1

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

    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = None, progress: Progress | None = None
    ) -> torch.Tensor:
        """`max_texts` is accepted for the Runner protocol and ignored: packed batches are bounded by tokens."""
        return next(self.embed_chunks([token_ids], progress=progress))

    @torch.inference_mode()
    def embed_chunks(
        self, chunks: Iterable[Sequence[Sequence[int]]], *, progress: Progress | None = None
    ) -> Iterator[torch.Tensor]:
        """The embeddings of each chunk of token ids in turn (fp32, CPU, input order), with the device kept
        busy across chunk boundaries: a chunk's results come back by an asynchronous copy while the next
        chunk's batches run, and the host waits only for batches `IN_FLIGHT_BATCHES` behind."""
        device = self.model.device
        width = self.model.config.embedding_dim
        in_flight: collections.deque = collections.deque()  # (event, texts) per batch, for backpressure
        finished: collections.deque = collections.deque()  # (event, order, results on host) per chunk
        for token_ids in chunks:
            lengths = [len(ids) for ids in token_ids]
            budget = max(self.max_batch_tokens, max(lengths, default=0))  # an over-long text still fits alone
            plan = token_budget_batches(lengths, budget)
            results = []
            for rows, batch in zip(plan, _prefetched(self._prepare, token_ids, plan), strict=True):
                batch = batch.to(device, non_blocking=self.pipelined)
                path, attention = self._path_for(batch), self.attention
                embeddings = packed_forward(self.model, batch, attention=attention, path=path, compile=self.compile)
                results.append(embeddings.float())
                if not self.pipelined:
                    if progress:
                        progress(len(rows))
                    continue
                in_flight.append((_recorded_event(), len(rows)))
                while len(in_flight) > IN_FLIGHT_BATCHES:
                    event, count = in_flight.popleft()
                    event.synchronize()
                    if progress:
                        progress(count)
                while finished and finished[0][0].query():
                    yield _in_input_order(*finished.popleft()[1:], width)
            order = torch.tensor([i for rows in plan for i in rows], dtype=torch.long)
            host = torch.cat(results).to("cpu", non_blocking=self.pipelined) if results else torch.empty(0, width)
            finished.append((_recorded_event() if self.pipelined else None, order, host))
            if not self.pipelined:
                yield _in_input_order(*finished.popleft()[1:], width)
        for event, count in in_flight:
            event.synchronize()
            if progress:
                progress(count)
        while finished:
            event, order, host = finished.popleft()
            event.synchronize()
            yield _in_input_order(order, host, width)


def _recorded_event() -> torch.cuda.Event:
    event = torch.cuda.Event()
    event.record()
    return event


def _in_input_order(order: torch.Tensor, embeddings: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.empty(len(order), width, dtype=torch.float32)
    out[order] = embeddings
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
