"""Teacher embeddings, computed once and stored on disk, for embedding distillation (paper section 2).

EmbeddingGemma aligns the student's embeddings of the query, the positive and the hard negative with
a teacher's (Gemini Embedding in the paper; EmbedDistill-style embedding matching, docs section 5).
Running the teacher inside the training loop would double its cost at every epoch, so every distinct
prompted text of a dataset is embedded ONCE by :func:`build_teacher_cache` and training only reads
the result through :class:`TeacherCache`.

On disk (one directory per teacher, shared by any number of datasets)::

    teacher.json             teacher name, width, storage dtype, max_seq_length
    shard-00000.emb.npy      (n, D) embeddings, L2-normalised, full width (Matryoshka prefixes are cut
                             by the loss); float32, or bfloat16 stored as uint16 (storage="bfloat16")
    shard-00000.ids.npy      (n,) int64 text ids (embeddinggemma.train.data.text_id of the prompted text)

Storage choice: float32 by default: unit vectors would survive float16 (|x| <= 1), but float32 costs
3 KB per 768-d text, nothing at this scale, and leaves no rounding question; bfloat16 halves it for
large caches. float16 is not offered.

Resumable: texts are embedded in shards of ``shard_size``; each shard is written to a temporary file
and renamed (embeddings first, ids last, so a shard exists only once complete). After an interruption
the next run re-scans the datasets, skips every text already in a complete shard and continues. A lock
file stops two builders from writing one cache at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from embeddinggemma.train.data import (
    DatasetSpec,
    TrainingBatch,
    iter_examples,
    load_dataset,
    prompt_example,
    text_id,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MissingTeacherEmbeddingError",
    "TeacherCache",
    "TeacherCacheReport",
    "TextEncoder",
    "build_teacher_cache",
    "dataset_texts",
]

Storage = Literal["float32", "bfloat16"]
META_FILE = "teacher.json"
FORMAT = 1


class TextEncoder(Protocol):
    """What the teacher (and the mining model) must offer: ``Embedder`` satisfies it.

    ``encode(texts)`` with no task or prompt embeds the texts exactly as given (they are prompted here).
    """

    embedding_dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int = ..., show_progress: bool = ...) -> Any: ...


class MissingTeacherEmbeddingError(LookupError):
    """The cache holds no teacher embedding for some text the loader needs."""


def dataset_texts(spec: DatasetSpec) -> Iterator[str]:
    """Every prompted text of a dataset (queries, positives, all stored negatives), in file order,
    with repeats; streamed."""
    for _, example in iter_examples(spec.path):
        prompted = prompt_example(example, spec.task, symmetric=spec.symmetric)
        yield prompted.query
        yield prompted.positive
        yield from prompted.negatives


def _to_float32(stored: np.ndarray) -> np.ndarray:
    if stored.dtype == np.uint16:  # bfloat16 bits: the top half of a float32
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(stored, dtype=np.float32)


def _to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    tmp.replace(path)


class TeacherCache:
    """Read access to precomputed teacher embeddings, keyed by the prompted text's id.

    Args:
        directory: a cache written by :func:`build_teacher_cache`.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path}: not a teacher cache; build one with embeddinggemma.train.teacher.build_teacher_cache "
                "(or scripts/build_training_data.py --teacher)"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: cache format {self.meta.get('format')!r} is not {FORMAT}; rebuild it")
        self.reload()

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def teacher(self) -> str:
        return str(self.meta["teacher"])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def reload(self) -> None:
        """Re-read the complete shards (a builder may have added some)."""
        self._shards: list[np.ndarray] = []
        ids, loc = [], []
        k = 0
        while (self.directory / f"shard-{k:05d}.ids.npy").is_file():
            shard_ids = np.load(self.directory / f"shard-{k:05d}.ids.npy")
            emb = np.load(self.directory / f"shard-{k:05d}.emb.npy", mmap_mode="r")
            if emb.shape != (len(shard_ids), self.dim):
                raise ValueError(
                    f"{self.directory}: shard {k} holds {emb.shape} embeddings for {len(shard_ids)} ids of width "
                    f"{self.dim}; the cache is damaged: delete shard {k} and later ones and rebuild"
                )
            self._shards.append(emb)
            ids.append(shard_ids.astype(np.int64))
            loc.append((np.int64(k) << 32) | np.arange(len(shard_ids), dtype=np.int64))
            k += 1
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        all_loc = np.concatenate(loc) if loc else np.zeros(0, np.int64)
        order = np.argsort(all_ids, kind="stable")
        self._ids, self._loc = all_ids[order], all_loc[order]
        if len(self._ids) > 1 and bool(np.any(self._ids[1:] == self._ids[:-1])):
            raise ValueError(f"{self.directory}: a text id occurs in two shards; the cache is damaged, rebuild it")

    def __len__(self) -> int:
        return len(self._ids)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Index into the sorted id table for each id, -1 where missing."""
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, max(len(self._ids) - 1, 0))
        found = (self._ids[pos] == ids) if len(self._ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def contains_ids(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        return self._positions(np.asarray(ids, dtype=np.int64)) >= 0

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and bool(self.contains_ids([text_id(text)])[0])

    def lookup_ids(
        self, ids: np.ndarray | Sequence[int], texts: Sequence[str] | None = None, *, dataset: str = ""
    ) -> np.ndarray:
        """(N, D) float32 embeddings for text ids; raises :class:`MissingTeacherEmbeddingError` naming the
        first missing text (when ``texts``, aligned with ``ids``, are given) and what to run."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = self._positions(ids)
        missing = np.flatnonzero(pos < 0)
        if len(missing):
            first = repr(texts[missing[0]][:120]) if texts is not None else f"id {int(ids[missing[0]])}"
            raise MissingTeacherEmbeddingError(
                f"teacher cache {self.directory} ({self.teacher}) has no embedding for {len(missing)} of {len(ids)} "
                f"texts{f' of dataset {dataset!r}' if dataset else ''} (first: {first}); run build_teacher_cache "
                "(scripts/build_training_data.py --teacher) for this dataset, with the same prompts, before training"
            )
        loc = self._loc[pos]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        shard_of, row_of = loc >> 32, loc & 0xFFFFFFFF
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            out[sel] = _to_float32(self._shards[int(k)][row_of[sel]])
        return out

    def embeddings(self, texts: Sequence[str], *, dataset: str = "") -> np.ndarray:
        """(N, D) float32 teacher embeddings of prompted texts."""
        return self.lookup_ids([text_id(t) for t in texts], texts, dataset=dataset)

    def batch_embeddings(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """``{"queries": (B, D), "positives": (B, D), "hard_negatives": (B, H, D)}``, zeros in padded slots."""
        b, h = len(batch), batch.num_hard_negatives
        neg = torch.zeros((b, h, self.dim), dtype=torch.float32)
        mask = batch.hard_negative_mask
        if h and bool(mask.any()):
            flat_texts = [t for row in batch.hard_negative_texts for t in row]
            rows = self.lookup_ids(batch.hard_negative_ids[mask].numpy(), flat_texts, dataset=batch.dataset)
            neg[mask] = torch.from_numpy(rows)
        return {
            "queries": torch.from_numpy(
                self.lookup_ids(batch.query_ids.numpy(), batch.query_texts, dataset=batch.dataset)
            ),
            "positives": torch.from_numpy(
                self.lookup_ids(batch.positive_ids.numpy(), batch.positive_texts, dataset=batch.dataset)
            ),
            "hard_negatives": neg,
        }

    def missing(self, spec: DatasetSpec) -> tuple[int, int, str | None]:
        """(missing distinct texts, distinct texts, first missing text) of a dataset."""
        seen: set[int] = set()
        n_missing, first = 0, None
        for text in dataset_texts(spec):
            tid = text_id(text)
            if tid in seen:
                continue
            seen.add(tid)
            if not self.contains_ids([tid])[0]:
                n_missing += 1
                first = first or text
        return n_missing, len(seen), first

    def check_dataset(self, spec: DatasetSpec) -> None:
        """Raise :class:`MissingTeacherEmbeddingError` unless every text of ``spec`` is cached."""
        n_missing, total, first = self.missing(spec)
        if n_missing:
            raise MissingTeacherEmbeddingError(
                f"teacher cache {self.directory} ({self.teacher}) lacks {n_missing} of the {total} distinct texts of "
                f"dataset {spec.name!r} ({spec.path}; first: {first[:120]!r}); run build_teacher_cache "
                "(scripts/build_training_data.py --teacher) for it before training"
            )


# ------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class TeacherCacheReport:
    """What one :func:`build_teacher_cache` run did."""

    directory: Path
    distinct_texts: int
    already_cached: int
    embedded: int
    shards_written: int
    tokens: int | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "distinct_texts": self.distinct_texts,
            "already_cached": self.already_cached,
            "embedded": self.embedded,
            "shards_written": self.shards_written,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.tokens and self.seconds else None,
        }


def _open_meta(directory: Path, teacher: str, dim: int, storage: Storage, max_seq_length: int | None) -> None:
    meta = {"format": FORMAT, "teacher": teacher, "dim": dim, "storage": storage, "normalized": True,
            "max_seq_length": max_seq_length}  # fmt: skip
    path = directory / META_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{directory} holds a cache of a different teacher or format ({diff}, as (cached, requested)); "
                "use another directory, or delete this one to rebuild"
            )
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def build_teacher_cache(
    embedder: TextEncoder,
    datasets: Sequence[DatasetSpec | str | Path],
    directory: str | Path,
    *,
    teacher: str,
    batch_size: int = 32,
    shard_size: int = 1024,
    storage: Storage = "float32",
    show_progress: bool = False,
) -> TeacherCacheReport:
    """Embed every distinct prompted text of ``datasets`` not yet in the cache at ``directory``.

    Args:
        embedder: the teacher; ``encode(texts)`` must add no prompt of its own (``Embedder.encode`` without
            ``task``/``prompt`` does not). Its outputs are L2-normalised and stored at full width.
        datasets: descriptors or their directories; texts are prompted exactly as the loader prompts them.
        directory: the cache; created if needed, extended (or resumed) if it exists.
        teacher: a name for the teacher (e.g. the checkpoint id and precision); a cache never mixes two.
        shard_size: texts per shard: the work lost to an interruption is at most one shard.
        storage: "float32" (default) or "bfloat16".

    Returns:
        a :class:`TeacherCacheReport` (counts, tokens when the embedder has a tokenizer, seconds).
    """
    if storage not in ("float32", "bfloat16"):
        raise ValueError(f"storage must be 'float32' or 'bfloat16' (float16 is not offered), got {storage!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    directory = Path(directory)
    specs = [d if isinstance(d, DatasetSpec) else load_dataset(d) for d in datasets]
    dim = int(embedder.embedding_dim)
    _open_meta(directory, teacher, dim, storage, getattr(embedder, "max_seq_length", None))
    for stale in directory.glob("*.tmp"):
        stale.unlink()
    t0 = time.perf_counter()
    with (directory / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is building the teacher cache in {directory}; wait for it") from None
        cache = TeacherCache(directory)
        seen: set[int] = set()
        pending: list[tuple[int, str]] = []
        counts = {"cached": 0, "embedded": 0, "shards": 0, "tokens": 0}
        tokenizer = getattr(embedder, "tokenizer", None)

        def flush() -> None:
            texts = [t for _, t in pending]
            emb = np.asarray(embedder.encode(texts, batch_size=batch_size, show_progress=show_progress), np.float32)
            if emb.shape != (len(texts), dim) or not np.isfinite(emb).all():
                raise ValueError(f"the teacher returned {emb.shape} (finite: {np.isfinite(emb).all()}), "
                                 f"expected ({len(texts)}, {dim}) finite values")  # fmt: skip
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            k = cache.num_shards + counts["shards"]  # texts embedded in this run are in `seen`, not re-read
            _save_atomic(directory / f"shard-{k:05d}.emb.npy", _to_bfloat16_bits(emb) if storage == "bfloat16" else emb)
            _save_atomic(directory / f"shard-{k:05d}.ids.npy", np.array([i for i, _ in pending], dtype=np.int64))
            if tokenizer is not None and hasattr(tokenizer, "count_tokens"):
                counts["tokens"] += sum(min(n, tokenizer.max_length) for n in tokenizer.count_tokens(texts))
            counts["embedded"] += len(texts)
            counts["shards"] += 1
            logger.info("teacher cache %s: shard %d (%d texts, %d so far, %.0fs)", directory, k, len(texts),
                        counts["embedded"], time.perf_counter() - t0)  # fmt: skip
            pending.clear()

        for spec in specs:
            for text in dataset_texts(spec):
                tid = text_id(text)
                if tid in seen:
                    continue
                seen.add(tid)
                if cache.contains_ids([tid])[0]:
                    counts["cached"] += 1
                    continue
                pending.append((tid, text))
                if len(pending) == shard_size:
                    flush()
        if pending:
            flush()
    return TeacherCacheReport(
        directory=directory,
        distinct_texts=len(seen),
        already_cached=counts["cached"],
        embedded=counts["embedded"],
        shards_written=counts["shards"],
        tokens=counts["tokens"] if tokenizer is not None else None,
        seconds=time.perf_counter() - t0,
    )
