"""`index_folder`: bring an index up to date with a folder.

A run walks the folder, hashes every file and compares with the index: new and changed files are
chunked and embedded, files gone from the folder (or now ignored, binary, too big) are removed, the
rest are left alone. Embedded files are committed in batches, one transaction each, so Ctrl-C loses at
most the batch in flight and the next run continues from the last commit. Derived structures (codes,
the HNSW graph) are rebuilt at the end from the stored vectors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embeddinggemma.index.chunking import Chunk, Chunker
from embeddinggemma.index.dense import build_derived
from embeddinggemma.index.files import SkipCounts, SourceFile, content_hash, decode_text, walk_folder
from embeddinggemma.index.settings import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_OVERLAP_TOKENS,
    IndexSettings,
    model_fingerprint,
    prompt_version,
)
from embeddinggemma.index.store import IndexStore

logger = logging.getLogger(__name__)

__all__ = ["IndexOptions", "IndexReport", "index_folder", "resolve_settings"]

COMMIT_EVERY_CHUNKS = 64  # chunks embedded per transaction: bounds the work Ctrl-C can lose
COMMIT_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class IndexOptions:
    """None means: the existing index's value, else the default."""

    dim: int | None = None
    chunk_tokens: int | None = None
    overlap_tokens: int | None = None
    titles: bool | None = None
    dense: tuple[str, ...] | None = None
    max_file_bytes: int = 2_000_000
    batch_size: int = 16


@dataclass
class IndexReport:
    files: int = 0  # indexable files in the folder
    embedded_files: int = 0
    unchanged_files: int = 0
    deleted_files: int = 0
    chunks: int = 0  # chunks embedded by this run
    tokens: int = 0  # prompted tokens embedded by this run
    embed_seconds: float = 0.0
    seconds: float = 0.0
    skipped: SkipCounts = field(default_factory=SkipCounts)
    totals: dict[str, int] = field(default_factory=dict)
    derived_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.embed_seconds if self.embed_seconds else 0.0


def resolve_settings(embedder: Any, model: str, options: IndexOptions, built: IndexSettings | None) -> IndexSettings:
    """This run's settings: explicit options, else the index's own, else the defaults."""

    def pick(name: str, value: Any, default: Any) -> Any:
        if value is not None:
            return value
        return getattr(built, name) if built is not None else default

    titles = pick("titles", options.titles, True)
    dim = pick("dim", options.dim, embedder.embedding_dim)
    if not 1 <= dim <= embedder.embedding_dim:
        raise ValueError(
            f"--dim {dim}: this model has {embedder.embedding_dim} dims (trained: {embedder.matryoshka_dims})"
        )
    chunk_tokens = pick("chunk_tokens", options.chunk_tokens, DEFAULT_CHUNK_TOKENS)
    if chunk_tokens > embedder.max_seq_length:
        if options.chunk_tokens is not None:
            raise ValueError(f"--chunk-tokens {chunk_tokens} exceeds the model's {embedder.max_seq_length}-token limit")
        chunk_tokens = embedder.max_seq_length
    return IndexSettings(
        model=model,
        fingerprint=model_fingerprint(embedder),
        dim=int(dim),
        prompt_version=prompt_version(titles),
        chunk_tokens=int(chunk_tokens),
        overlap_tokens=int(
            pick("overlap_tokens", options.overlap_tokens, min(DEFAULT_OVERLAP_TOKENS, chunk_tokens // 8))
        ),
        titles=bool(titles),
        dense=tuple(pick("dense", options.dense, ())),
    )


def _read_chunks(source: SourceFile, data: bytes, chunker: Chunker, skipped: SkipCounts) -> list[Chunk] | None:
    """A file's chunks, or None (counted as skipped) when it cannot be read as text."""
    if source.kind == "pdf":
        from embeddinggemma.index.pdf import pdf_pages

        pages = pdf_pages(data, source.path, skipped)
        if pages is None:
            return None
        return [c for n, text in enumerate(pages, start=1) for c in chunker.chunk(text, "text", source.path, page=n)]
    text = decode_text(data)
    if text is None:
        skipped.add("binary or not UTF-8", source.path)
        return None
    return chunker.chunk(text, source.kind, source.path)


def index_folder(
    root: str | Path,
    db: str | Path,
    embedder: Any,
    *,
    model: str,
    options: IndexOptions = IndexOptions(),
    rebuild: bool = False,
    show_progress: bool = True,
) -> IndexReport:
    """Index ``root`` into the SQLite file ``db`` (created if missing). See the module docstring."""
    t_start = time.perf_counter()
    root, db = Path(root).resolve(), Path(db).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the folder to index")
    if rebuild and db.exists():
        db.unlink()
    store = IndexStore(db, create=not db.exists())
    try:
        meta = store.meta()
        built = IndexSettings.from_meta(meta) if "model" in meta else None
        settings = resolve_settings(embedder, model, options, built)
        if built is not None:
            settings.check_compatible(built, str(db))
            if meta.get("root") != str(root):
                logger.warning("%s indexed %s before; now indexing %s into it", db, meta.get("root"), root)
        store.set_meta(settings.to_meta() | {"root": str(root)})
        report = IndexReport()
        _update(store, root, db, embedder, settings, options, report, show_progress)
        report.derived_seconds = build_derived(store, settings.dim, list(settings.dense))
        report.totals = store.counts()
    finally:
        store.close()
    report.seconds = time.perf_counter() - t_start
    return report


def _update(
    store: IndexStore,
    root: Path,
    db: Path,
    embedder: Any,
    settings: IndexSettings,
    options: IndexOptions,
    report: IndexReport,
    show_progress: bool,
) -> None:
    exclude = {db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")}
    sources = list(walk_folder(root, max_file_bytes=options.max_file_bytes, skipped=report.skipped, exclude=exclude))
    report.files = len(sources)
    indexed = store.file_hashes()
    todo: list[tuple[SourceFile, bytes, str]] = []
    unreadable: list[str] = []  # were they indexed before, their old chunks go
    for source in sources:
        try:
            data = source.absolute.read_bytes()
        except OSError as exc:
            report.skipped.add(f"unreadable ({exc.strerror})", source.path)
            unreadable.append(source.path)
            continue
        digest = content_hash(data)
        if indexed.get(source.path) == digest:
            report.unchanged_files += 1
        else:
            todo.append((source, data, digest))
    seen = {s.path for s in sources} - set(unreadable)
    report.deleted_files = store.delete_files(sorted(p for p in indexed if p not in seen))
    chunker = Chunker(
        embedder.tokenizer.count_tokens,
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.overlap_tokens,
        titles=settings.titles,
    )
    with tqdm(total=len(todo), disable=not show_progress, unit="file", desc="indexing", delay=0.5) as bar:
        for batch in _batches(todo, chunker, report, unreadable, on_skip=lambda: bar.update(1)):
            t0 = time.perf_counter()
            texts = [c.text for _, _, chunks in batch for c in chunks]
            titles = [c.title for _, _, chunks in batch for c in chunks]
            vectors = (
                embedder.encode_document(texts, titles=titles, dim=settings.dim, batch_size=options.batch_size)
                if texts
                else np.zeros((0, settings.dim), np.float32)
            )
            report.embed_seconds += time.perf_counter() - t0
            if not np.isfinite(vectors).all():  # never store what exact search would choke on
                paths = ", ".join(source.path for source, _, _ in batch)
                raise ValueError(f"the model returned NaN or inf embeddings for one of: {paths}")
            rows, start = [], 0
            for source, digest, chunks in batch:
                rows.append((source, digest, chunks, vectors[start : start + len(chunks)]))
                start += len(chunks)
            store.replace_files(rows)
            report.embedded_files += len(batch)
            report.chunks += len(texts)
            report.tokens += sum(c.tokens for _, _, chunks in batch for c in chunks)
            bar.update(len(batch))
            bar.set_postfix(chunks=report.chunks, tok_s=f"{report.tokens_per_second:.0f}")
    report.deleted_files += store.delete_files([p for p in unreadable if p in indexed])


def _batches(
    todo: list[tuple[SourceFile, bytes, str]],
    chunker: Chunker,
    report: IndexReport,
    unreadable: list[str],
    on_skip: Callable[[], object],
) -> Iterator[list[tuple[SourceFile, str, list[Chunk]]]]:
    """Whole files grouped until a batch holds COMMIT_EVERY_CHUNKS chunks (a big file is a batch alone)."""
    batch: list[tuple[SourceFile, str, list[Chunk]]] = []
    size, started = 0, time.perf_counter()
    for source, data, digest in todo:
        chunks = _read_chunks(source, data, chunker, report.skipped)
        if chunks is None:
            unreadable.append(source.path)
            on_skip()
            continue
        batch.append((source, digest, chunks))
        size += len(chunks)
        if size >= COMMIT_EVERY_CHUNKS or time.perf_counter() - started > COMMIT_EVERY_SECONDS:
            yield batch
            batch, size, started = [], 0, time.perf_counter()
    if batch:
        yield batch
