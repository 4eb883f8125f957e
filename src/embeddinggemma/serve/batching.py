"""Dynamic batching: one model worker; the inputs of concurrent requests are merged into token-budget batches.

Requests wait in a round-robin ring. Each batch takes one input from each waiting request in turn, round
after round, until `max_batch_tokens` (or `max_batch_texts`) is reached; an input that does not fit the
budget left is passed over in favour of smaller ones behind it, and its request starts the next batch.
So a request of a thousand passages shares every batch with the short queries that arrive behind it
instead of making them wait for all of it, and no request waits longer than one batch per request
ahead of it. A batch is one engine call; the engine sorts it by length, so mixing lengths costs little
padding. Results are written back to each request's rows, in its input order.

Backpressure: `submit` refuses work (`QueueFullError`, with a retry estimate from the measured throughput)
once `max_queue_tokens` tokens are waiting, so memory stays bounded under any burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from embeddinggemma.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list[Sequence[int]]], torch.Tensor]


class QueueFullError(Exception):
    """The queue holds `max_queue_tokens`; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InferenceError(RuntimeError):
    """The engine raised while embedding a batch holding this request's inputs."""


@dataclass(eq=False)
class Job:
    """One request's inputs on their way through the queue."""

    token_ids: Sequence[Sequence[int]]
    future: asyncio.Future[torch.Tensor]
    submitted_at: float = field(default_factory=time.perf_counter)
    next_input: int = 0  # the next input to put in a batch
    remaining: int = 0  # inputs not embedded yet
    started_at: float | None = None  # when the first batch holding one of its inputs began
    inference_seconds: float = 0.0  # engine time of the batches it was part of
    cancelled: bool = False
    embeddings: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.remaining = len(self.token_ids)

    @property
    def queue_seconds(self) -> float:
        return (self.started_at or self.submitted_at) - self.submitted_at


class Batcher:
    """The queue and its single model worker (a thread, so the event loop keeps serving HTTP meanwhile)."""

    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch_tokens: int,
        max_batch_texts: int,
        max_queue_tokens: int,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_queue_tokens = max_queue_tokens
        self.metrics = metrics
        self._ring: deque[Job] = deque()
        self.queued_tokens = 0
        self.queued_texts = 0
        self._tokens_per_second: float | None = None  # moving average over batches
        self._wakeup = asyncio.Event()  # binds to the running loop on first use
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle (inside the server's event loop) ------------------------------------------------

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddinggemma-model")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="embeddinggemma-batcher")

    async def stop(self) -> None:
        """Stop the worker (the server has drained its requests by now) and wait for a running batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for job in self._ring:
            if not job.future.done():
                job.future.set_exception(InferenceError("the server stopped before this request was embedded"))
        self._ring.clear()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- queue -------------------------------------------------------------------------------------

    @property
    def queued_requests(self) -> int:
        return sum(not job.cancelled for job in self._ring)

    def retry_after(self) -> int:
        """Seconds the model needs for what is queued now, at the measured throughput (1..60)."""
        rate = self._tokens_per_second
        if not rate:
            return 1
        return max(1, min(60, math.ceil(self.queued_tokens / rate)))

    def submit(self, token_ids: Sequence[Sequence[int]]) -> Job:
        """Queue a request's inputs; `QueueFullError` when they do not fit (the caller answers 429)."""
        if not token_ids:
            raise ValueError("a job needs at least one input")
        tokens = sum(len(ids) for ids in token_ids)
        if self.queued_tokens + tokens > self.max_queue_tokens:
            raise QueueFullError(
                f"the queue is full ({self.queued_tokens:,} of {self.max_queue_tokens:,} tokens waiting); retry later",
                self.retry_after(),
            )
        job = Job(token_ids, asyncio.get_running_loop().create_future())
        self._ring.append(job)
        self.queued_tokens += tokens
        self.queued_texts += len(token_ids)
        self._update_queue_gauges()
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a request whose client went away: its waiting inputs leave the queue now."""
        if job.cancelled or job.future.done():
            return
        self._drop(job)
        job.future.cancel()
        if self.metrics:
            self.metrics.cancelled_requests.inc()

    def _drop(self, job: Job) -> None:
        job.cancelled = True  # the ring skips it from now on
        waiting = job.token_ids[job.next_input :]
        self.queued_tokens -= sum(len(ids) for ids in waiting)
        self.queued_texts -= len(waiting)
        job.next_input = len(job.token_ids)
        self._update_queue_gauges()

    def take_batch(self) -> list[tuple[Job, int]]:
        """The next batch as (job, input index) pairs, round-robin over the ring (see the module docstring)."""
        batch: list[tuple[Job, int]] = []
        tokens = 0
        passed_over: list[Job] = []
        while self._ring and len(batch) < self.max_batch_texts:
            job = self._ring.popleft()
            if job.cancelled:
                continue
            length = len(job.token_ids[job.next_input])
            if batch and tokens + length > self.max_batch_tokens:
                passed_over.append(job)
                continue
            batch.append((job, job.next_input))
            tokens += length
            job.next_input += 1
            if job.next_input < len(job.token_ids):
                self._ring.append(job)
        self._ring.extendleft(reversed(passed_over))
        self.queued_tokens -= tokens
        self.queued_texts -= len(batch)
        self._update_queue_gauges()
        return batch

    def _update_queue_gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_tokens.set(self.queued_tokens)
            self.metrics.queue_texts.set(self.queued_texts)
            self.metrics.queue_requests.set(self.queued_requests)

    # -- worker ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = self.take_batch()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._process(batch)
            except Exception as exc:  # the worker must outlive any batch: fail its requests, keep serving
                logger.exception("embedding a batch of %d inputs failed", len(batch))
                for job in {job for job, _ in batch}:
                    if not job.future.done():
                        self._drop(job)
                        job.future.set_exception(InferenceError(f"embedding failed: {type(exc).__name__}: {exc}"))

    async def _process(self, batch: list[tuple[Job, int]]) -> None:
        token_ids = [job.token_ids[i] for job, i in batch]
        started = time.perf_counter()
        for job, _ in batch:
            if job.started_at is None:
                job.started_at = started
                if self.metrics:
                    self.metrics.queue_seconds.observe(job.queue_seconds)
        embeddings = await asyncio.get_running_loop().run_in_executor(self._executor, self._embed, token_ids)
        seconds = time.perf_counter() - started
        self._record(batch, token_ids, seconds)
        self._scatter(batch, embeddings, seconds)

    def _record(self, batch: list[tuple[Job, int]], token_ids: list[Sequence[int]], seconds: float) -> None:
        tokens = sum(len(ids) for ids in token_ids)
        rate = tokens / max(seconds, 1e-9)
        self._tokens_per_second = (
            rate if self._tokens_per_second is None else 0.7 * self._tokens_per_second + 0.3 * rate
        )
        if self.metrics:
            m = self.metrics
            m.inference_seconds.observe(seconds)
            m.batch_texts.observe(len(batch))
            m.batch_tokens.observe(tokens)
            m.batch_requests.observe(len({id(job) for job, _ in batch}))
            m.embedded_tokens.inc(tokens)
            m.embedded_texts.inc(len(batch))
            m.tokens_per_second.set(rate)

    @staticmethod
    def _scatter(batch: list[tuple[Job, int]], embeddings: torch.Tensor, seconds: float) -> None:
        rows_by_job: dict[Job, tuple[list[int], list[int]]] = {}
        for row, (job, index) in enumerate(batch):
            rows, indices = rows_by_job.setdefault(job, ([], []))
            rows.append(row)
            indices.append(index)
        for job, (rows, indices) in rows_by_job.items():
            job.inference_seconds += seconds
            if job.cancelled or job.future.done():
                continue
            if job.embeddings is None:
                job.embeddings = torch.empty(len(job.token_ids), embeddings.shape[1], dtype=embeddings.dtype)
            job.embeddings[indices] = embeddings[rows]
            job.remaining -= len(rows)
            if job.remaining == 0:
                job.future.set_result(job.embeddings)
