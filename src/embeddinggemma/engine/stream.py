"""Streaming: corpus-scale embedding with bounded memory and tokenisation overlapped with model work.

Texts are read in chunks; a background thread prepares chunk k+1 (prompting and tokenising, which
`tokenizers` runs on several threads without the GIL) while the model embeds chunk k. At most
`prefetch + 1` chunks are alive at any time, whatever the size of the input.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last may be shorter), pulled lazily."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def prefetch_map(fn: Callable[[T], U], items: Iterable[T], prefetch: int = 1) -> Iterator[U]:
    """`map(fn, items)` with `fn` running in a background thread up to `prefetch` items ahead.

    Order is preserved; an exception in `fn` or in `items` is re-raised in the consumer at the point
    where its result would have been. Closing the consumer early stops the producer.
    """
    results: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                value = fn(item)
                while not stop.is_set():
                    try:
                        results.put((value, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            results.put((_DONE, None))
        except BaseException as exc:  # re-raised in the consumer
            results.put((None, exc))

    worker = threading.Thread(target=produce, name="embeddinggemma-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value, error = results.get()
            if error is not None:
                raise error
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        for _ in range(100):  # unblock a producer waiting on a full queue; it is a daemon if still reading input
            with contextlib.suppress(queue.Empty):
                results.get_nowait()
            worker.join(timeout=0.05)
            if not worker.is_alive():
                break
