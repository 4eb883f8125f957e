"""Rows to embedding columns: validation, prompts, token counts, Matryoshka dims and embedding precision.

The part of a worker that needs no Ray: `RowEmbedder` turns a block of rows (ids, texts, optional titles)
into Arrow columns, and says for every row it did not embed why not. A row is embedded exactly as
`Embedder.encode(texts, task=...)` (or `encode_document(texts, titles)`) would embed the same rows in
one call with the same `batch_size`, so the values are bit-identical to that call.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from embeddinggemma.embedder import Embedder
from embeddinggemma.engine.stream import chunked, prefetch_map
from embeddinggemma.matryoshka import matryoshka_truncate
from embeddinggemma.prompts import document_prompt
from embeddinggemma.tokenizer import TruncationWarning
from embeddinggemma.vectors.codes import EMBEDDING_PRECISIONS, quantize_embeddings

__all__ = ["EmbedSettings", "Embedded", "RowEmbedder", "embedding_column", "fixed_size_list"]

OVERLONG_POLICIES = ("skip", "truncate")
GPU_CHUNK_ROWS = 4096  # ~1M tokens of typical passages: a second of GPU work, tokenised meanwhile


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides the output values. A resumed job must use the same settings."""

    model: str
    task: str = "document"
    dims: tuple[int, ...] | None = None  # None: the model's full width
    precision: str = "float32"  # float32 | int8 | binary
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    quantize: str | None = None  # "int8": the int8 CPU model
    max_seq_length: int | None = None
    overlong: str = "skip"  # skip: report over-long rows; truncate: embed their first tokens and report them
    batch_size: int = 32  # texts per forward pass (the Embedder's batch_size)
    int8_ranges: Mapping[int, Any] | None = field(default=None, compare=False)  # dim -> (2, dim) lo/hi

    def __post_init__(self) -> None:
        if self.precision not in EMBEDDING_PRECISIONS:
            raise ValueError(f"precision must be one of {list(EMBEDDING_PRECISIONS)}, got {self.precision!r}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {list(OVERLONG_POLICIES)}, got {self.overlong!r}")
        if self.dims is not None and (not self.dims or any(int(d) < 1 for d in self.dims)):
            raise ValueError(f"dims must be positive Matryoshka sizes such as (768, 128), got {self.dims!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def output_dims(self, embedding_dim: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.dims) if self.dims else (embedding_dim,)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form, int8 ranges included (they are needed to score int8 codes)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "int8_ranges"}
        out["dims"] = list(self.dims) if self.dims else None
        if self.int8_ranges is not None:
            out["int8_ranges"] = {str(d): np.asarray(r, dtype=np.float32).tolist() for d, r in self.int8_ranges.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbedSettings:
        data = dict(data)
        data["dims"] = tuple(data["dims"]) if data.get("dims") else None
        ranges = data.pop("int8_ranges", None)
        if ranges is not None:
            data["int8_ranges"] = {int(d): np.asarray(r, dtype=np.float32) for d, r in ranges.items()}
        return cls(**data)


def embedding_column(dim: int) -> str:
    return f"embedding_{dim}"


def fixed_size_list(values: np.ndarray, null_rows: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """A (rows, width) array as an Arrow fixed-size list column (what vector stores and Parquet readers expect)."""
    width = values.shape[1]
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    mask = None if null_rows is None or not null_rows.any() else pa.array(null_rows)
    return pa.FixedSizeListArray.from_arrays(flat, width, mask=mask)


@contextlib.contextmanager
def _conversion_lock(quantize: str | None) -> Iterator[None]:
    """With `quantize`, one worker per machine at a time loads: the first converts the checkpoint into the
    machine's int8 cache (seconds), the others wait and then read the cache instead of converting too."""
    if quantize is None:
        yield
        return
    import fcntl

    from embeddinggemma.quant.runtime import default_cache_dir

    directory = default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


@dataclass
class Embedded:
    """One block's result. `rows` are the embedded rows' indices in the block, in order."""

    rows: np.ndarray
    vectors: dict[int, np.ndarray]  # dim -> (len(rows), width) float32 / int8 / packed-bit uint8 codes
    num_tokens: np.ndarray  # tokens embedded (prompt, BOS and EOS included), aligned with `rows`
    truncated_from: dict[int, int]  # block row -> its token count before truncation (overlong="truncate")
    bad: dict[int, str]  # block row -> why it was not embedded


class RowEmbedder:
    """One Embedder and the settings it embeds with; a Ray actor holds one of these."""

    def __init__(
        self,
        settings: EmbedSettings,
        *,
        device: str | None = None,
        num_threads: int | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        self.settings = settings
        with _conversion_lock(settings.quantize):
            self.embedder = Embedder.from_pretrained(
                settings.model,
                device=device,
                dtype=settings.dtype,
                quantize=settings.quantize,
                max_seq_length=settings.max_seq_length,
                num_threads=num_threads,
            )
        self.dims = settings.output_dims(self.embedder.embedding_dim)
        width = self.embedder.embedding_dim
        if any(not 1 <= d <= width for d in self.dims):
            raise ValueError(
                f"dims {list(self.dims)}: each must be between 1 and {width}; the model was trained for "
                f"{'/'.join(map(str, self.embedder.matryoshka_dims))}"
            )
        if settings.precision == "int8":
            missing = [d for d in self.dims if not settings.int8_ranges or d not in settings.int8_ranges]
            if missing:
                raise ValueError(f"int8 precision needs calibrated ranges for dims {missing} (int8_ranges)")
        self._prompt = None if settings.task == "document" else self.embedder.prompts[settings.task]
        if chunk_rows is None and self.embedder.device.type == "cuda":
            chunk_rows = GPU_CHUNK_ROWS
        self.chunk_rows = chunk_rows  # None: the whole block at once

    def output_schema(self, id_field: pa.Field | None) -> pa.Schema:
        """The id column (as in the input), `embedding_{dim}` per dim, `num_tokens` (and `truncated_from`)."""
        fields = [] if id_field is None else [id_field]
        value_type = {"float32": pa.float32(), "int8": pa.int8(), "binary": pa.uint8()}[self.settings.precision]
        for dim in self.dims:
            width = -(-dim // 8) if self.settings.precision == "binary" else dim
            fields.append(pa.field(embedding_column(dim), pa.list_(value_type, width)))
        fields.append(pa.field("num_tokens", pa.int32()))
        if self.settings.overlong == "truncate":
            fields.append(pa.field("truncated_from", pa.int32()))
        return pa.schema(fields)

    def _prompted(self, texts: Sequence[Any], titles: Sequence[Any] | None) -> tuple[dict[int, str], dict[int, str]]:
        """(row -> prompted text, row -> reason it is bad)."""
        bad: dict[int, str] = {}
        prompted: dict[int, str] = {}
        for i, text in enumerate(texts):
            title = None if titles is None else titles[i]
            if not isinstance(text, str):
                bad[i] = f"text is {_type_name(text)}, not a string"
            elif not text.strip():
                bad[i] = "text is empty"
            elif title is not None and not isinstance(title, str):
                bad[i] = f"title is {_type_name(title)}, not a string or null"
            elif self._prompt is not None:
                prompted[i] = self._prompt + text
            else:  # the document prompt, with the row's title when there is one (as encode_document)
                prompted[i] = document_prompt(title) + text
        return prompted, bad

    def _tokenize(self, rows: list[int], texts: list[str], bad: dict[int, str]) -> tuple[list, list, dict[int, int]]:
        """Token ids of the rows that fit (or are truncated by policy); over-long and unencodable rows go to `bad`."""
        tokenizer = self.embedder.tokenizer
        limit = tokenizer.max_length
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TruncationWarning)  # counted and reported per row below
                ids = tokenizer.encode(texts)
        except ValueError:  # a token the model's table lacks: find the rows, keep the others
            ids = []
            for row, text in zip(rows, texts, strict=True):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", TruncationWarning)
                        ids.append(tokenizer.encode([text])[0])
                except ValueError as exc:
                    bad[row] = str(exc).replace("input 0 ", "text ")
                    ids.append(None)
        # a truncated text comes back exactly `limit` long; recount only those
        candidates = [k for k, row_ids in enumerate(ids) if row_ids is not None and len(row_ids) == limit]
        truncated: dict[int, int] = {}
        if candidates:
            counts = tokenizer.count_tokens([texts[k] for k in candidates])
            for k, count in zip(candidates, counts, strict=True):
                if count > limit:
                    if self.settings.overlong == "skip":
                        bad[rows[k]] = f"{count} tokens (prompt included) exceed the {limit}-token limit"
                        ids[k] = None
                    else:
                        truncated[rows[k]] = count
        kept = [(row, row_ids) for row, row_ids in zip(rows, ids, strict=True) if row_ids is not None]
        return [r for r, _ in kept], [i for _, i in kept], truncated

    def embed(self, texts: Sequence[Any], titles: Sequence[Any] | None = None) -> Embedded:
        """Embed one block of rows (any Python values: the bad ones are reported, not raised).

        On a GPU the block goes through in chunks of `chunk_rows`, the next chunk tokenised on a host thread
        while the GPU embeds the current one; on CPU the block is one chunk (tokenising is a small share of
        the time there), so the values are those of one `Embedder.encode` call on the block.
        """
        if titles is not None and self._prompt is not None:
            raise ValueError("titles select the document prompt; drop the title column or use task 'document'")
        prompted, bad = self._prompted(texts, titles)
        rows = sorted(prompted)
        size = self.chunk_rows or max(len(rows), 1)

        def prepare(chunk: list[int]) -> tuple[list[int], list, dict[int, int], dict[int, str]]:
            chunk_bad: dict[int, str] = {}
            kept, token_ids, truncated = self._tokenize(chunk, [prompted[r] for r in chunk], chunk_bad)
            return kept, token_ids, truncated, chunk_bad

        kept_rows: list[int] = []
        counts: list[int] = []
        truncated: dict[int, int] = {}
        parts: list[torch.Tensor] = []
        for kept, token_ids, chunk_truncated, chunk_bad in prefetch_map(prepare, chunked(rows, size)):
            bad.update(chunk_bad)
            truncated.update(chunk_truncated)
            kept_rows += kept
            counts += [len(ids) for ids in token_ids]
            if token_ids:
                parts.append(self.embedder.embed_token_ids(token_ids, batch_size=self.settings.batch_size))
        vectors = {}
        for dim in self.dims:
            if parts:
                floats = matryoshka_truncate(torch.cat(parts).numpy(), dim)  # numpy arithmetic, as encode()
            else:
                floats = np.zeros((0, dim), dtype=np.float32)
            vectors[dim] = self._encode_precision(floats, dim)
        return Embedded(
            rows=np.asarray(kept_rows, dtype=np.int64),
            vectors=vectors,
            num_tokens=np.asarray(counts, dtype=np.int32),
            truncated_from=truncated,
            bad=bad,
        )

    def _encode_precision(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        precision = self.settings.precision
        if precision == "float32":
            return vectors
        if precision == "binary":
            return quantize_embeddings(vectors, "binary") if len(vectors) else np.zeros((0, -(-dim // 8)), np.uint8)
        ranges = self.settings.int8_ranges[dim]  # type: ignore[index]
        return quantize_embeddings(vectors, "int8", ranges=ranges) if len(vectors) else np.zeros((0, dim), np.int8)

    def table(self, result: Embedded, ids: pa.Array | None, id_name: str = "id") -> pa.Table:
        """The embedded rows only, in the output schema (ids taken from the block's id column)."""
        schema = self.output_schema(None if ids is None else pa.field(id_name, ids.type))
        arrays: list[pa.Array] = [] if ids is None else [ids.take(pa.array(result.rows, type=pa.int64()))]
        arrays += [fixed_size_list(result.vectors[d]) for d in self.dims]
        arrays.append(pa.array(result.num_tokens, type=pa.int32()))
        if self.settings.overlong == "truncate":
            arrays.append(pa.array([result.truncated_from.get(int(r)) for r in result.rows], type=pa.int32()))
        return pa.Table.from_arrays(arrays, schema=schema)

    def full_table(self, result: Embedded, num_rows: int, ids: pa.Array | None, id_name: str = "id") -> pa.Table:
        """Every row in input order: the embedding columns and `num_tokens` are null where `error` says why the
        row was not embedded."""
        schema = self.output_schema(None if ids is None else pa.field(id_name, ids.type))
        schema = schema.append(pa.field("error", pa.string()))
        missing = np.ones(num_rows, dtype=bool)
        missing[result.rows] = False
        arrays: list[pa.Array] = [] if ids is None else [ids]
        for dim in self.dims:
            codes = result.vectors[dim]
            values = np.zeros((num_rows, codes.shape[1]), dtype=codes.dtype)
            values[result.rows] = codes
            arrays.append(fixed_size_list(values, null_rows=missing))
        tokens = np.zeros(num_rows, dtype=np.int32)
        tokens[result.rows] = result.num_tokens
        arrays.append(pa.array(tokens, mask=missing))
        if self.settings.overlong == "truncate":
            arrays.append(pa.array([result.truncated_from.get(i) for i in range(num_rows)], type=pa.int32()))
        arrays.append(pa.array([result.bad.get(i) for i in range(num_rows)], type=pa.string()))
        return pa.Table.from_arrays(arrays, schema=schema)
