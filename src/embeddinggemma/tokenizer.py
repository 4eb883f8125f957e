"""Tokenisation with the `tokenizers` library from the checkpoint's `tokenizer.json` (doc section 4).

Gemma 3 SentencePiece; BOS (2) and EOS (1) are added by the file's post-processor; right padding.
Texts over the length limit are cut to [BOS] + first tokens + [EOS] (as transformers does) and the
caller is told: a `TruncationWarning` with the count, or a `TruncationError` with `on_truncation="error"`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer

OnTruncation = Literal["warn", "error"]


class TruncationWarning(UserWarning):
    """Some inputs were longer than the model's limit and were cut."""


class TruncationError(ValueError):
    """Raised instead of truncating when `on_truncation="error"`."""


class TextTokenizer:
    """Token ids for texts, with explicit truncation accounting."""

    def __init__(
        self, tokenizer: Tokenizer, *, max_length: int, bos_id: int, eos_id: int, pad_id: int, vocab_size: int
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS and EOS), got {max_length}")
        tokenizer.no_truncation()  # we truncate ourselves so we can count and report it
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.bos_id, self.eos_id, self.pad_id, self.vocab_size = bos_id, eos_id, pad_id, vocab_size
        probe = tokenizer.encode("").ids
        if probe[:1] != [bos_id] or probe[-1:] != [eos_id]:
            raise ValueError(
                f"tokenizer.json does not add BOS ({bos_id}) and EOS ({eos_id}) around the text (got {probe} for "
                "''); EmbeddingGemma was trained with both. Use the tokenizer.json shipped with the checkpoint"
            )
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    @classmethod
    def from_file(
        cls, path: str | Path, *, max_length: int, bos_id: int, eos_id: int, pad_id: int, vocab_size: int
    ) -> TextTokenizer:
        return cls(
            Tokenizer.from_file(str(path)),
            max_length=max_length,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            vocab_size=vocab_size,
        )

    def encode(self, texts: Sequence[str], on_truncation: OnTruncation = "warn") -> list[list[int]]:
        """Token ids with BOS/EOS, each at most `max_length` long (EOS kept last when cut)."""
        if on_truncation not in ("warn", "error"):
            raise ValueError(f"on_truncation must be 'warn' or 'error', got {on_truncation!r}")
        encodings = self._encode_batch(list(texts))
        ids_list = [enc.ids for enc in encodings]
        too_long = [i for i, ids in enumerate(ids_list) if len(ids) > self.max_length]
        if too_long:
            longest = max(len(ids_list[i]) for i in too_long)
            message = (
                f"{len(too_long)} of {len(ids_list)} inputs exceed the {self.max_length}-token limit (longest: "
                f"{longest} tokens, first at index {too_long[0]})"
            )
            if on_truncation == "error":
                raise TruncationError(message + "; shorten or chunk them, or pass on_truncation='warn' to cut them")
            warnings.warn(message + "; they were truncated", TruncationWarning, stacklevel=3)
            for i in too_long:
                ids_list[i] = [*ids_list[i][: self.max_length - 1], self.eos_id]
        for i, ids in enumerate(ids_list):
            if max(ids) >= self.vocab_size:
                bad = [self._tokenizer.id_to_token(t) for t in ids if t >= self.vocab_size]
                raise ValueError(
                    f"input {i} contains token(s) {sorted(set(bad))} that the tokenizer knows but the model's "
                    f"{self.vocab_size}-entry embedding table does not; remove them from the text"
                )
        return ids_list

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts with BOS/EOS, before truncation."""
        return [len(enc.ids) for enc in self._encode_batch(list(texts))]

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest: (input_ids, attention_mask), both (B, T) int64."""
        length = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask
