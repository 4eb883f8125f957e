"""Checks on what callers pass as texts and titles, shared by `Embedder` and the torch-free
`OnnxEmbedder`: ordered sequences of valid Unicode strings, one title per text, a usable Matryoshka dim.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet

import numpy as np

from embeddinggemma.prompts import PromptTable

Texts = str | Iterable[str]

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> re.Match | None:
    """Where `text` holds a lone surrogate (not valid Unicode: no tokenizer can encode it), if anywhere."""
    # isascii() reads a flag CPython keeps on every str: ASCII texts skip the scan (27 ms -> 1 ms on 10k
    # passages, time the GPU would otherwise wait before the first batch)
    return None if text.isascii() else _SURROGATE.search(text)


def check_ordered(texts: object, name: str = "texts") -> None:
    """Refuse what is not a sequence (or an iterator) of strings: a set's order is arbitrary, a dict gives its
    keys (arrays and tensors are neither sequences nor iterators)."""
    if isinstance(texts, bytes | bytearray | np.ndarray | AbstractSet | Mapping) or not isinstance(
        texts, Sequence | Iterator
    ):
        raise TypeError(
            f"{name} must be a string or a list of strings (a sequence), got {type(texts).__name__}"
            + ("; its order is arbitrary, pass a list" if isinstance(texts, AbstractSet) else "")
        )


def check_text(text: object, index: int, name: str = "texts") -> None:
    """A str that is valid Unicode (no lone surrogates, which no tokenizer can encode)."""
    if not isinstance(text, str):
        raise TypeError(f"{name}[{index}] is {type(text).__name__}, expected str")
    if (bad := lone_surrogate(text)) is not None:
        raise ValueError(
            f"{name}[{index}] contains a lone surrogate {bad.group()!a} at character {bad.start()}, which is not "
            "valid Unicode; fix the text (a broken JSON escape or a bad decode, e.g. errors='surrogateescape')"
        )


def as_text_list(texts: Texts, name: str = "texts") -> tuple[list[str], bool]:
    """(list of texts, whether a single string was given). Anything else is a TypeError naming the index."""
    if isinstance(texts, str):
        check_text(texts, 0, name)
        return [texts], True
    check_ordered(texts, name)
    items = list(texts)
    for i, item in enumerate(items):
        check_text(item, i, name)
    return items, False


def as_title_list(titles: object, count: int, single: bool) -> list[str | None]:
    """One title (str or None) per text; None for no titles at all. A bare string only for a single text."""
    if titles is None:
        return [None] * count
    if isinstance(titles, str):
        if not single:
            raise TypeError("titles must be a list with one title (or None) per text, got a single string")
        return [titles]
    check_ordered(titles, "titles")
    title_list = list(titles)
    if len(title_list) != count:
        raise ValueError(f"got {len(title_list)} titles for {count} texts; pass one per text or None")
    for i, title in enumerate(title_list):
        if title is not None:
            check_text(title, i, "titles")
    return title_list


def check_max_seq_length(value: int | None, limit: int) -> int:
    """The token limit to use: `value` (between 2 and the model's `limit`), or `limit` for None."""
    if value is None:
        return limit
    if not 2 <= value <= limit:
        raise ValueError(f"max_seq_length must be between 2 and {limit}, got {value}")
    return value


def check_dim(dim: object, width: int, trained: tuple[int, ...], warned: set[int], *, stacklevel: int = 4) -> int:
    """`dim` (None: the full `width`) checked against 1..width; an untrained size warns once (`warned`)."""
    if dim is None:
        return width
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
        raise TypeError(f"dim must be an integer, got {type(dim).__name__}")
    dim = int(dim)
    if not 1 <= dim <= width:
        raise ValueError(
            f"dim must be between 1 and {width}, got {dim}; the model was trained for {'/'.join(map(str, trained))}"
        )
    if dim not in trained and dim not in warned:
        warned.add(dim)
        warnings.warn(
            f"dim={dim} is not one of the trained Matryoshka sizes {trained}; the prefix is "
            "usable but its quality was not trained for",
            UserWarning,
            stacklevel=stacklevel,
        )
    return dim


def choose_prompt(prompts: PromptTable, task: str | None, prompt: str | None) -> str:
    """The prompt of `task` or the explicit `prompt` (not both); "" for neither."""
    if task is not None and prompt is not None:
        raise ValueError("pass either task= or prompt=, not both")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    return prompts[task] if task is not None else (prompt or "")
