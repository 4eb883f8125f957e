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

import importlib.util
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from embeddinggemma.config import Gemma3TextConfig

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
        too_long = [i for i, length in enumerate(lengths) if length > self.max_length]
        if too_long:
            report = dict(
                count=len(too_long),
                total=len(ids_list),
                limit=self.max_length,
                longest=max(lengths[i] for i in too_long),
                first=first_index + too_long[0],
            )
            rows = f" (rows {first_index}-{first_index + len(ids_list) - 1})" if first_index else ""
            message = (
                f"{report['count']} of {report['total']} inputs{rows} exceed the {self.max_length}-token limit "
                f"(longest: {report['longest']} tokens, first at index {report['first']})"
            )
            if on_truncation == "error":
                raise TruncationError(
                    message + "; shorten or chunk them, or pass on_truncation='warn' to cut them", **report
                )
            warnings.warn(TruncationWarning(message + "; they were truncated", **report), stacklevel=3)
        return ids_list

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
                bad = sorted({self._token_name(t) for t in ids if t >= self.vocab_size})
                raise ValueError(
                    f"input {first_index + i} contains token(s) {bad} that the tokenizer knows but the model's "
                    f"{self.vocab_size}-entry embedding table does not; remove them from the text"
                )
        return ids_list, lengths

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts with BOS/EOS, before truncation."""
        return [len(ids) for ids in self._encode_raw(list(texts))]


class TextTokenizer(BaseTokenizer):
    """The `tokenizers` backend (tokenizer.json): the reference, multi-threaded."""

    def __init__(self, tokenizer, **limits: int) -> None:
        super().__init__(**limits)
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
        return cls(tokenizer, **limits)

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
