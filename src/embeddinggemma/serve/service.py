"""From checked request fields to embeddings: prompts, tokens, limits, the batcher, Matryoshka and normalisation.

Shared by every route (and by routers mounted on the app: `request.app.state.service`). Texts get the
same prompts as `Embedder.encode(texts, task=...)` / `encode_document(texts, titles=...)`, the same
tokenisation and the same engine, so a request's embeddings equal the offline ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from embeddinggemma.embedder import Embedder
from embeddinggemma.matryoshka import matryoshka_truncate
from embeddinggemma.prompts import UnknownTaskError, document_prompt
from embeddinggemma.serve.batching import Batcher, InferenceError, QueueFullError
from embeddinggemma.serve.errors import ClientDisconnectedError, RequestError
from embeddinggemma.serve.metrics import ServeMetrics
from embeddinggemma.serve.schemas import Inputs
from embeddinggemma.serve.settings import ServeSettings

# Short requests are tokenised on the event loop (tens of microseconds); a thread hop for each of many
# concurrent queries cost more than the tokenisation itself (measured: 40 ms per query at 64 clients).
INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class FieldNames:
    """What each endpoint calls the fields, so errors name the one the client sent."""

    inputs: str = "input"
    task: str = "task"
    titles: str = "titles"
    dimensions: str = "dimensions"


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (N, dim) float32, input order
    prompt_tokens: int  # tokens embedded (prompt, BOS and EOS included; after any cut)
    truncated: int | None  # inputs cut to the limit (None: truncation was not on)
    tokenization_seconds: float
    queue_seconds: float
    inference_seconds: float
    warning: str | None = None


class EmbeddingService:
    def __init__(self, embedder: Embedder, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = metrics
        if settings.default_task is not None:
            try:
                self.default_prompt = embedder.prompts[settings.default_task]
            except UnknownTaskError as exc:
                raise ValueError(f"default task: {exc}") from None
        else:
            self.default_prompt = ""
        self.batcher = Batcher(
            self._embed_batch,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_texts=settings.max_batch_tokens,  # every input has >= 2 tokens: the token budget binds
            max_queue_tokens=settings.max_queue_tokens,
            metrics=metrics,
        )
        self.in_progress = 0

    def _embed_batch(self, token_ids: list) -> torch.Tensor:
        # one engine call; the engine splits it further only if its own budget asks for that
        return self.embedder.embed_token_ids(token_ids, batch_size=len(token_ids))

    # -- request slots -----------------------------------------------------------------------------

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of `max_concurrent_requests` slots for the whole request (429 when none is free)."""
        if self.in_progress >= self.settings.max_concurrent_requests:
            retry = self.batcher.retry_after()
            raise RequestError(
                429,
                f"the server is at its limit of {self.settings.max_concurrent_requests} concurrent requests; "
                f"retry after {retry} s",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        self.in_progress += 1
        self.metrics.in_progress.set(self.in_progress)
        try:
            yield
        finally:
            self.in_progress -= 1
            self.metrics.in_progress.set(self.in_progress)

    # -- checks ------------------------------------------------------------------------------------

    def resolve_dimensions(self, dimensions: int | None, names: FieldNames) -> tuple[int, str | None]:
        width = self.embedder.embedding_dim
        trained = self.embedder.matryoshka_dims
        sizes = "/".join(map(str, trained))
        if dimensions is None:
            return width, None
        if not 1 <= dimensions <= width:
            raise RequestError(
                422,
                f"{names.dimensions} must be between 1 and {width} (trained: {sizes}), got {dimensions}",
                param=names.dimensions,
            )
        if dimensions in trained:
            return dimensions, None
        if not self.settings.allow_untrained_dimensions:
            raise RequestError(
                422,
                f"{names.dimensions}={dimensions} is not a trained Matryoshka size; use {sizes} (a server started "
                "with --allow-untrained-dimensions accepts any size, with a warning header)",
                param=names.dimensions,
            )
        return dimensions, f"dimensions={dimensions} is not a trained size ({sizes}); its quality was not trained for"

    def prompted_texts(self, texts: list[str], task: str | None, titles: list | None, names: FieldNames) -> list[str]:
        """Prompt + text, as `Embedder.encode(task=...)` / `encode_document(titles=...)` build them."""
        if titles is not None:
            if len(titles) != len(texts):
                raise RequestError(
                    422,
                    f"got {len(titles)} {names.titles} for {len(texts)} texts; send one per text (null for none)",
                    param=names.titles,
                )
            if task is not None and task.lower() != "document":
                raise RequestError(
                    422,
                    f"{names.titles} select the document prompt; drop {names.task}={task!r} or the titles",
                    param=names.titles,
                )
            return [document_prompt(title) + text for text, title in zip(texts, titles, strict=True)]
        if task is None:
            prompt = self.default_prompt
        else:
            try:
                prompt = self.embedder.prompts[task]
            except UnknownTaskError:
                raise RequestError(
                    422,
                    f"unknown {names.task} {task!r}; use one of {', '.join(sorted(self.embedder.prompts))}",
                    param=names.task,
                ) from None
        return [prompt + text for text in texts]

    def check_token_ids(self, token_ids: list[list[int]], names: FieldNames) -> tuple[list[list[int]], list[int]]:
        """Token-id inputs are used as they are: framed by BOS...EOS, inside the vocabulary; cut like texts."""
        tokenizer = self.embedder.tokenizer
        limit = tokenizer.max_length
        for i, ids in enumerate(token_ids):
            if ids[0] != tokenizer.bos_id or ids[-1] != tokenizer.eos_id:
                raise RequestError(
                    422,
                    f"{names.inputs}[{i}] must start with BOS ({tokenizer.bos_id}) and end with EOS "
                    f"({tokenizer.eos_id}): token ids are EmbeddingGemma ids of prompt + text, used as they are "
                    "(clients that send tiktoken ids, e.g. LangChain's OpenAIEmbeddings, need "
                    "check_embedding_ctx_length=False to send text)",
                    param=names.inputs,
                )
            bad = next((j for j, t in enumerate(ids) if not 0 <= t < tokenizer.vocab_size), None)
            if bad is not None:
                raise RequestError(
                    422,
                    f"{names.inputs}[{i}][{bad}] = {ids[bad]} is outside the vocabulary "
                    f"(0..{tokenizer.vocab_size - 1})",
                    param=names.inputs,
                )
        lengths = [len(ids) for ids in token_ids]
        cut = [ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]] for ids in token_ids]
        return cut, lengths

    def _check_lengths(self, lengths: list[int], truncate: bool, names: FieldNames) -> int:
        limit = self.embedder.max_seq_length
        over = [i for i, n in enumerate(lengths) if n > limit]
        if over and not truncate:
            listed = ", ".join(f"{names.inputs}[{i}] has {lengths[i]:,} tokens" for i in over[:5])
            more = f" and {len(over) - 5} more" if len(over) > 5 else ""
            raise RequestError(
                413,
                f"{listed}{more} (prompt, BOS and EOS included); the limit is {limit:,}. Shorten or split them, "
                "or send truncate=true to cut them to the limit",
                param=names.inputs,
                code="input_too_long",
            )
        return len(over)

    # -- the pipeline --------------------------------------------------------------------------------

    async def embed(
        self,
        inputs: Inputs,
        *,
        task: str | None = None,
        titles: list | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool | None = None,
        request: Request | None = None,
        names: FieldNames = FieldNames(),
    ) -> EmbedResult:
        """Embed checked inputs through the shared queue; RequestError for anything the client must fix.

        With `request`, a client that disconnects while waiting has its work dropped (ClientDisconnectedError).
        """
        settings = self.settings
        if len(inputs) > settings.max_client_batch_size:
            raise RequestError(
                413,
                f"{len(inputs)} inputs in one request; this server takes at most {settings.max_client_batch_size} "
                "(--max-client-batch-size): split the request",
                param=names.inputs,
                code="too_many_inputs",
            )
        dim, warning = self.resolve_dimensions(dimensions, names)
        truncate = settings.auto_truncate if truncate is None else truncate
        tokenization_seconds = 0.0
        if inputs.texts is not None:
            prompted = self.prompted_texts(inputs.texts, task, titles, names)
            started = time.perf_counter()
            encode = self.embedder.tokenizer.encode_counted
            try:
                if sum(map(len, prompted)) <= INLINE_TOKENIZE_CHARS:
                    token_ids, lengths = encode(prompted)
                else:
                    token_ids, lengths = await run_in_threadpool(encode, prompted)
            except ValueError as exc:  # a token the model's table lacks
                raise RequestError(422, str(exc), param=names.inputs) from None
            tokenization_seconds = time.perf_counter() - started
            self.metrics.tokenization_seconds.observe(tokenization_seconds)
        else:
            if task is not None or titles is not None:
                raise RequestError(
                    422,
                    f"token-id inputs are used as they are; drop {names.task}/{names.titles} (put the prompt "
                    "in the ids) or send text",
                    param=names.task if task is not None else names.titles,
                )
            token_ids, lengths = self.check_token_ids(inputs.token_ids or [], names)
        truncated = self._check_lengths(lengths, truncate, names)
        if truncated:
            self.metrics.truncated_inputs.inc(truncated)
        tokens = sum(len(ids) for ids in token_ids)
        if tokens > settings.max_queue_tokens:
            raise RequestError(
                413,
                f"the request holds {tokens:,} tokens; the queue takes at most {settings.max_queue_tokens:,} "
                "(--max-queue-tokens): split the request",
                param=names.inputs,
                code="request_too_large",
            )
        embeddings, queue_seconds, inference_seconds = await self._run(token_ids, request)
        finished = matryoshka_truncate(embeddings.numpy(), dim, normalize=normalize)  # numpy arithmetic, as encode()
        return EmbedResult(
            finished,
            prompt_tokens=tokens,
            truncated=truncated if truncate else None,
            tokenization_seconds=tokenization_seconds,
            queue_seconds=queue_seconds,
            inference_seconds=inference_seconds,
            warning=warning,
        )

    async def _run(self, token_ids: list[list[int]], request: Request | None) -> tuple[torch.Tensor, float, float]:
        try:
            job = self.batcher.submit(token_ids)
        except QueueFullError as exc:
            raise RequestError(
                429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)}
            ) from None
        watcher = asyncio.ensure_future(_disconnect(request)) if request is not None else None
        try:
            waiting = {job.future} if watcher is None else {job.future, watcher}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.batcher.cancel(job)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if not job.future.done():
            self.batcher.cancel(job)
            raise ClientDisconnectedError()
        if job.future.cancelled():
            raise ClientDisconnectedError()
        try:
            embeddings = job.future.result()
        except InferenceError as exc:
            raise RequestError(500, str(exc), code="inference_failed") from None
        return embeddings, job.queue_seconds, job.inference_seconds

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Embed one input first, so the first request does not pay the warm-up; then start the worker."""
        token_ids = self.embedder.tokenizer.encode([self.default_prompt + "warm-up"])
        await run_in_threadpool(self._embed_batch, token_ids)
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so only that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
