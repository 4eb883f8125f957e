"""Throughput bookkeeping for evaluation: how many tokens an embedder processed, and how long it took.

A results file that says "encode 512 s" means little without the work done; tokens per second is
what compares across machines, dtypes and engines. :class:`CountingEmbedder` sits between the
evaluation code and any embedder with ``Embedder``'s API, counts the tokens of the exact prompted
strings the model sees (BOS/EOS included, capped at its ``max_seq_length``) and times the calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from embeddinggemma.prompts import document_prompt

__all__ = ["CountingEmbedder"]


class CountingEmbedder:
    """Forwards ``encode`` / ``encode_query`` / ``encode_document`` and counts their tokens and time.

    Other attributes (``prompts``, ``embedding_dim``, ``tokenizer`` ...) are the wrapped embedder's.
    ``tokens`` is None when the embedder has no ``tokenizer.count_tokens`` (e.g. a test double):
    then only time and text counts are known.
    """

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        tokenizer = getattr(embedder, "tokenizer", None)
        self._count_tokens: Callable[[Sequence[str]], list[int]] | None = getattr(tokenizer, "count_tokens", None)
        self._limit = int(getattr(embedder, "max_seq_length", 0)) or None
        self.tokens: int | None = 0 if self._count_tokens is not None else None
        self.texts = 0
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this proxy lacks; guard `embedder` itself against recursion
        # during unpickling/copying, when __init__ has not run.
        if name == "embedder":
            raise AttributeError(name)
        return getattr(self.embedder, name)

    def _count(self, prompted: Sequence[str]) -> None:
        self.texts += len(prompted)
        if self._count_tokens is not None and prompted:
            counts = self._count_tokens(list(prompted))
            self.tokens += sum(min(n, self._limit) if self._limit else n for n in counts)  # type: ignore[operator]

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def encode(self, texts: Sequence[str], *, task: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        prefix = prompt if prompt is not None else (self.embedder.prompts[task] if task is not None else "")
        self._count([prefix + t for t in texts])
        if prompt is not None:
            kwargs["prompt"] = prompt
        if task is not None:
            kwargs["task"] = task
        return self._timed(self.embedder.encode, texts, **kwargs)

    def encode_query(self, texts: Sequence[str], *, task: str = "query", **kwargs: Any) -> Any:
        prefix = kwargs["prompt"] if kwargs.get("prompt") is not None else self.embedder.prompts[task]
        self._count([prefix + t for t in texts])
        return self._timed(self.embedder.encode_query, texts, task=task, **kwargs)

    def encode_document(
        self, texts: Sequence[str], *, titles: Sequence[str | None] | None = None, **kwargs: Any
    ) -> Any:
        title_list = list(titles) if titles is not None else [None] * len(texts)
        self._count([document_prompt(title) + t for t, title in zip(texts, title_list, strict=True)])
        return self._timed(self.embedder.encode_document, texts, titles=titles, **kwargs)

    @property
    def tokens_per_second(self) -> float | None:
        if self.tokens is None or self.seconds <= 0:
            return None
        return self.tokens / self.seconds
