"""Streaming: corpus-scale embedding with bounded memory and tokenisation overlapped with model work.

Texts are read in chunks; a worker thread prepares chunk k+1 (prompting and tokenising, which
`tokenizers` runs on several threads without the GIL) while the model embeds chunk k. At most
`prefetch + 1` chunks are alive at any time, whatever the size of the input.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last may be shorter), pulled lazily."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def prefetch_map(fn: Callable[[T], U], items: Iterable[T], prefetch: int = 1) -> Iterator[U]:
    """`map(fn, items)` with `fn` running in a worker thread up to `prefetch` items ahead.

    `items` is read in the consumer's thread, only when the consumer asks for more, so an input that
    blocks (stdin) never leaves a thread behind and closing the consumer early stops the reading.
    Order is preserved; an exception in `fn` or in `items` is re-raised in the consumer at the point
    where its result would have been (KeyboardInterrupt and other BaseExceptions at once).
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be positive, got {prefetch}")
    iterator = iter(items)
    pending: deque[Future] = deque()
    exhausted = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddinggemma-prefetch") as pool:
        try:
            while True:
                while not exhausted and len(pending) <= prefetch:
                    try:
                        item = next(iterator)
                    except StopIteration:
                        exhausted = True
                    except Exception as exc:  # raised when the consumer reaches this position
                        pending.append(_failed(exc))
                        exhausted = True
                    else:
                        pending.append(pool.submit(fn, item))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
