"""Tokenisation (doc section 4): Gemma 3 SentencePiece, BOS (2) + text + EOS (1), right padding.

Two backends give identical ids (tested on 10k real passages):
- `TextTokenizer`: the `tokenizers` library on `tokenizer.json` (what transformers uses; multi-threaded,
  fast). Parsing the 33 MB JSON costs ~370 MB of peak memory.
- `SentencePieceTokenizer`: the `sentencepiece` library on `tokenizer.model` (~50 MB), for on-device
  use, splitting out the checkpoint's added tokens the way `tokenizers` does.

Texts over the length limit are cut to [BOS] + first tokens + [EOS] (as transformers does) and the
caller is told: a `TruncationWarning` with the count, or a `TruncationError` with `on_truncation="error"`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import itertools
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from embeddinggemma.config import Gemma3TextConfig

logger = logging.getLogger(__name__)

OnTruncation = Literal["warn", "error"]


class _TruncationReport:
    """What was too long: `count` of `total` inputs over `limit` tokens, the `longest`, the `first` (row index)."""

    def __init__(
        self, message: str, *, count: int = 0, total: int = 0, limit: int = 0, longest: int = 0, first: int = 0
    ) -> None:
        super().__init__(message)
        self.count, self.total, self.limit, self.longest, self.first = count, total, limit, longest, first


class TruncationWarning(_TruncationReport, UserWarning):
    """Some inputs were longer than the model's limit and were cut."""


class TruncationError(_TruncationReport, ValueError):
    """Raised instead of truncating when `on_truncation="error"`."""


class BaseTokenizer:
    """Shared truncation accounting, vocabulary check and padding; backends implement `_encode_raw`."""

    def __init__(self, *, max_length: int, bos_id: int, eos_id: int, pad_id: int, vocab_size: int) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS and EOS), got {max_length}")
        self.max_length = max_length
        self.bos_id, self.eos_id, self.pad_id, self.vocab_size = bos_id, eos_id, pad_id, vocab_size

    def _encode_raw(self, texts: list[str]) -> list[list[int]]:
        """Token ids with BOS/EOS, untruncated."""
        raise NotImplementedError

    def _token_name(self, token_id: int) -> str:
        return str(token_id)

    def _check_special_tokens(self, source: str) -> None:
        probe = self._encode_raw([""])[0]
        if probe[:1] != [self.bos_id] or probe[-1:] != [self.eos_id]:
            raise ValueError(
                f"{source} does not add BOS ({self.bos_id}) and EOS ({self.eos_id}) around the text (got {probe} "
                "for ''); EmbeddingGemma was trained with both. Use the tokenizer shipped with the checkpoint"
            )

    def encode(
        self, texts: Sequence[str], on_truncation: OnTruncation = "warn", *, first_index: int = 0
    ) -> list[list[int]]:
        """Token ids with BOS/EOS, each at most `max_length` long (EOS kept last when cut).

        `first_index` is the row of `texts[0]` in the caller's whole input (a stream's chunk offset), so
        truncation reports name the caller's row.
        """
        if on_truncation not in ("warn", "error"):
            raise ValueError(f"on_truncation must be 'warn' or 'error', got {on_truncation!r}")
        ids_list, lengths = self.encode_counted(texts, first_index=first_index)
        self._report_truncation(lengths, first_index, on_truncation)
        return ids_list

    def _report_truncation(self, lengths: Sequence[int], first_index: int, on_truncation: OnTruncation) -> None:
        """Warn (or raise, with "error") when texts of these raw `lengths` were over the limit."""
        too_long = np.flatnonzero(np.asarray(lengths, dtype=np.int64) > self.max_length)
        if not len(too_long):
            return
        total = len(lengths)
        report = dict(
            count=len(too_long),
            total=total,
            limit=self.max_length,
            longest=int(max(lengths[i] for i in too_long)),
            first=first_index + int(too_long[0]),
        )
        rows = f" (rows {first_index}-{first_index + total - 1})" if first_index else ""
        message = (
            f"{report['count']} of {report['total']} inputs{rows} exceed the {self.max_length}-token limit "
            f"(longest: {report['longest']} tokens, first at index {report['first']})"
        )
        if on_truncation == "error":
            advice = "; shorten or chunk them, or pass on_truncation='warn' to cut them"
            raise TruncationError(message + advice, **report)
        warnings.warn(TruncationWarning(message + "; they were truncated", **report), stacklevel=4)

    def _out_of_vocabulary(self, ids: Sequence[int], row: int) -> ValueError:
        bad = sorted({self._token_name(int(t)) for t in ids if t >= self.vocab_size})
        return ValueError(
            f"input {row} contains token(s) {bad} that the tokenizer knows but the model's "
            f"{self.vocab_size}-entry embedding table does not; remove them from the text"
        )

    def finish_arrays(
        self, flat: np.ndarray, lengths: np.ndarray, on_truncation: OnTruncation = "warn", *, first_index: int = 0
    ) -> list[np.ndarray]:
        """`encode`'s cut, vocabulary check and report on raw ids given as one int32 array and the
        texts' lengths, in numpy: one array (a view where nothing was cut) per text."""
        if on_truncation not in ("warn", "error"):
            raise ValueError(f"on_truncation must be 'warn' or 'error', got {on_truncation!r}")
        ends = np.cumsum(lengths)
        starts = ends - lengths
        bad = np.flatnonzero(flat >= self.vocab_size)
        if len(bad):
            rows = np.searchsorted(ends, bad, side="right")
            kept = (bad - starts[rows] < self.max_length - 1) | (lengths[rows] <= self.max_length)  # not cut away
            if kept.any():
                row = int(rows[kept][0])
                raise self._out_of_vocabulary(self._cut(flat[starts[row] : ends[row]]), first_index + row)
        out = [flat[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        for i in np.flatnonzero(lengths > self.max_length).tolist():
            out[i] = self._cut(out[i])
        self._report_truncation(lengths, first_index, on_truncation)
        return out

    def _cut(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) <= self.max_length:
            return ids
        return np.concatenate([ids[: self.max_length - 1], np.asarray([self.eos_id], dtype=ids.dtype)])

    def encode_counted(self, texts: Sequence[str], *, first_index: int = 0) -> tuple[list[list[int]], list[int]]:
        """(token ids cut to `max_length` with EOS kept last, each text's token count before the cut).

        For callers that report truncation themselves (the HTTP server answers 413, or says in a header
        how many inputs were cut); `encode` warns or raises instead. `first_index` as in `encode`.
        """
        ids_list = self._encode_raw(list(texts))
        lengths = [len(ids) for ids in ids_list]
        for i, length in enumerate(lengths):
            if length > self.max_length:
                ids_list[i] = [*ids_list[i][: self.max_length - 1], self.eos_id]
        for i, ids in enumerate(ids_list):
            if max(ids) >= self.vocab_size:
                raise self._out_of_vocabulary(ids, first_index + i)
        return ids_list, lengths

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts with BOS/EOS, before truncation."""
        return [len(ids) for ids in self._encode_raw(list(texts))]


class TextTokenizer(BaseTokenizer):
    """The `tokenizers` backend (tokenizer.json): the reference, multi-threaded."""

    def __init__(self, tokenizer, *, source_file: str | Path | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.source_file = source_file  # what worker processes load (`TokenizerProcesses`)
        tokenizer.no_truncation()  # we truncate ourselves so we can count and report it
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._check_special_tokens("tokenizer.json")

    @classmethod
    def from_file(cls, path: str | Path, **limits: int) -> TextTokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable or invalid files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path} cannot be loaded ({reason}); the file is corrupt: download it again") from exc
        return cls(tokenizer, source_file=path, **limits)

    def _encode_raw(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._encode_batch(texts)]

    def _token_name(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(token_id) or str(token_id)

    def vocabulary(self) -> dict[str, int]:
        """Token -> id, added tokens included (UL2 takes its sentinels from the `<unusedN>` tokens)."""
        return self._tokenizer.get_vocab(with_added_tokens=True)


class SentencePieceTokenizer(BaseTokenizer):
    """The `sentencepiece` backend (tokenizer.model), for low memory.

    Like `tokenizers`, added tokens written in the text (`<pad>`, `<unused0>`, `<image_soft_token>`...)
    are matched first, longest first, and map to their ids; the text between them goes through the
    SentencePiece model.
    """

    def __init__(self, model_file: str | Path, added_tokens: dict[str, int], **limits: int) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise ImportError(
                "the low-memory tokenizer needs sentencepiece: pip install 'embeddinggemma[cpu]'"
            ) from None
        super().__init__(**limits)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self._added = dict(added_tokens)
        self._names = {i: t for t, i in self._added.items()}
        ordered = sorted(self._added, key=len, reverse=True)
        self._pattern = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None
        self._first_chars = {token[0] for token in ordered}
        self._check_special_tokens(str(model_file))

    @classmethod
    def from_checkpoint(cls, directory: str | Path, **limits: int) -> SentencePieceTokenizer:
        """Added tokens from tokenizer_config.json (and added_tokens.json), not the 33 MB tokenizer.json."""
        directory = Path(directory)
        added: dict[str, int] = {}
        config = directory / "tokenizer_config.json"
        if config.exists():
            decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
            added.update({entry["content"]: int(token_id) for token_id, entry in decoder.items()})
        extra = directory / "added_tokens.json"
        if extra.exists():
            added.update({k: int(v) for k, v in json.loads(extra.read_text(encoding="utf-8")).items()})
        return cls(directory / "tokenizer.model", added, **limits)

    def _encode_one(self, text: str) -> list[int]:
        if self._pattern is None or not any(c in text for c in self._first_chars):
            return self._sp.encode(text)
        ids: list[int] = []
        for i, piece in enumerate(self._pattern.split(text)):
            if i % 2:
                ids.append(self._added[piece])
            elif piece:
                ids.extend(self._sp.encode(piece))
        return ids

    def _encode_raw(self, texts: list[str]) -> list[list[int]]:
        return [[self.bos_id, *self._encode_one(text), self.eos_id] for text in texts]

    def _token_name(self, token_id: int) -> str:
        return self._names.get(token_id) or self._sp.id_to_piece(token_id)


# -- worker processes --------------------------------------------------------------------------------

_worker_tokenizer = None  # the `tokenizers.Tokenizer` of a worker process


def _start_worker(tokenizer_file: str) -> None:
    global _worker_tokenizer
    # Ctrl-C reaches the whole process group: the parent handles it (and stops the pool), workers must
    # not each print a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one of several worker processes: one thread each
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    _worker_tokenizer = tokenizer


def _worker_ready() -> bool:
    return _worker_tokenizer is not None


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids of `texts` as (one int32 array, each text's length): the per-token Python objects that
    `tokenizers` returns are built and flattened here, not in the parent."""
    encode = getattr(_worker_tokenizer, "encode_batch_fast", _worker_tokenizer.encode_batch)
    ids = [encoding.ids for encoding in encode(texts)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


@contextlib.contextmanager
def _parallelism_configured():
    """TOKENIZERS_PARALLELISM set to its default ("true") while the workers fork, then restored:
    `tokenizers` otherwise prints a warning in every forked child once the parent has used threads.
    Each worker then turns its own parallelism off."""
    name = "TOKENIZERS_PARALLELISM"
    before = os.environ.get(name)
    if before is None:
        os.environ[name] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


class TokenizerProcesses:
    """A `TextTokenizer` run in worker processes, for big inputs on a GPU.

    `tokenizers` encodes without the GIL, but turning its output into Python lists (an object per token)
    and flattening them for the device holds it: in one process that delays the thread that launches the
    GPU's kernels. Here workers (spawned, one thread each) return each piece of input as one int32 array
    and the parent only slices it. The workers start in the background; `ready` says when they can take
    work (callers tokenise in-process until then). Ids, cuts and reports equal `tokenizer.encode`'s.
    """

    def __init__(self, tokenizer: TextTokenizer, workers: int) -> None:
        if tokenizer.source_file is None:
            raise ValueError("worker processes load the tokenizer from its file; this tokenizer has none")
        if workers < 1:
            raise ValueError(f"workers must be positive, got {workers}")
        self.tokenizer, self.workers = tokenizer, workers
        # fork on Linux (as PyTorch's DataLoader does): "spawn" would re-run the caller's main script in
        # every worker. The children touch neither CUDA nor the parent's tokenizer object; each loads the
        # file afresh and runs single-threaded. Elsewhere (macOS: fork is unsafe there) "spawn".
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_start_worker,
            initargs=(str(tokenizer.source_file),),
        )
        with _parallelism_configured():
            self._started = [self._pool.submit(_worker_ready) for _ in range(workers)]  # forks them all now
        self._broken: str | None = None
        # stopped when this object goes or at exit, before the interpreter tears the executor's module down
        weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        """Whether every worker has loaded the tokenizer (False for good once one failed to start)."""
        if self._broken is not None or not all(f.done() for f in self._started):
            return False
        errors = [f.exception() for f in self._started if f.exception() is not None]
        if errors:
            self._fail(f"{type(errors[0]).__name__}: {errors[0]}")
            return False
        return True

    def _fail(self, reason: str) -> None:
        self._broken = reason
        logger.warning("tokenizer worker processes unavailable (%s); tokenising in this process", reason)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def encode(
        self, texts: Sequence[str], on_truncation: OnTruncation = "warn", *, first_index: int = 0
    ) -> list[np.ndarray]:
        """`tokenizer.encode(texts, ...)` with int32 arrays for lists: split over the workers (in-process
        when they are not ready or have died)."""
        if on_truncation not in ("warn", "error"):
            raise ValueError(f"on_truncation must be 'warn' or 'error', got {on_truncation!r}")
        texts = list(texts)
        if not texts:
            return []
        if self.ready:
            step = -(-len(texts) // self.workers)
            futures = [self._pool.submit(_encode_in_worker, texts[i : i + step]) for i in range(0, len(texts), step)]
            try:
                pieces = [future.result() for future in futures]
            except concurrent.futures.process.BrokenProcessPool as exc:
                self._fail(f"a worker died: {exc}")
            else:
                flat = np.concatenate([piece[0] for piece in pieces])
                lengths = np.concatenate([piece[1] for piece in pieces])
                return self.tokenizer.finish_arrays(flat, lengths, on_truncation, first_index=first_index)
        ids = self.tokenizer.encode(texts, on_truncation, first_index=first_index)
        return [np.asarray(row, dtype=np.int32) for row in ids]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


TokenizerBackend = Literal["auto", "tokenizers", "sentencepiece"]


def load_tokenizer(
    directory: str | Path,
    config: Gemma3TextConfig,
    *,
    max_length: int,
    backend: TokenizerBackend = "tokenizers",
) -> BaseTokenizer:
    """The tokenizer shipped in a checkpoint directory, with the model's special ids and length limit.

    `backend`: "tokenizers" (tokenizer.json, the reference), "sentencepiece" (tokenizer.model, same ids,
    ~300 MB less peak memory) or "auto" (sentencepiece when tokenizer.model and the library are there).
    """
    directory = Path(directory)
    limits = dict(
        max_length=max_length,
        bos_id=config.bos_token_id,
        eos_id=config.eos_token_id,
        pad_id=config.pad_token_id,
        vocab_size=config.vocab_size,
    )
    if backend == "auto":
        has_model = (directory / "tokenizer.model").exists() and importlib.util.find_spec("sentencepiece") is not None
        backend = "sentencepiece" if has_model else "tokenizers"
    if backend == "sentencepiece":
        if not (directory / "tokenizer.model").exists():
            raise FileNotFoundError(f"{directory / 'tokenizer.model'} is missing; use tokenizer='tokenizers'")
        return SentencePieceTokenizer.from_checkpoint(directory, **limits)
    if backend == "tokenizers":
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.exists():
            raise FileNotFoundError(f"{tokenizer_file} is missing; the checkpoint needs its fast tokenizer file")
        return TextTokenizer.from_file(tokenizer_file, **limits)
    raise ValueError(f"tokenizer must be 'auto', 'tokenizers' or 'sentencepiece', got {backend!r}")
