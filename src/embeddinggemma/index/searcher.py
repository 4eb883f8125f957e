"""Search an index: dense (the model), BM25 (FTS5), or both fused by reciprocal rank.

Results are chunks, best first, each with its path relative to the indexed folder, the line where the
best-matching part of the chunk starts (so ``path:line`` opens at the snippet), the chunk's title, a
one-paragraph snippet and the score of the mode (cosine for dense, BM25 for bm25, the fused
reciprocal-rank sum for hybrid).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embeddinggemma.index.dense import DenseIndex, StaleIndexError
from embeddinggemma.index.settings import IndexMismatchError, IndexSettings, model_fingerprint, same_model
from embeddinggemma.index.store import ChunkRow, IndexStore

logger = logging.getLogger(__name__)

__all__ = ["MODES", "RRF_K", "SearchResult", "Searcher", "reciprocal_rank_fusion"]

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")
RRF_K = 60  # the constant of Cormack et al. (2009): 1 / (60 + rank)
FUSION_DEPTH = 50  # candidates each ranker contributes to the fusion (at least k)
SNIPPET_CHARS = 240


@dataclass(frozen=True)
class SearchResult:
    path: str
    line: int
    title: str | None
    snippet: str
    score: float
    page: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.page is None:
            del out["page"]
        return out


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked id lists: each id scores sum(1 / (k + rank)) over the lists it is in (rank from 1)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _query_words(query: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", query) if len(w) > 2}


def snippet(row: ChunkRow, query: str) -> tuple[int, str]:
    """(line number, text) of the chunk's part sharing most words with the query; its start otherwise."""
    lines = row.text.split("\n")
    words = _query_words(query)
    best, best_hits = 0, 0
    for i, line in enumerate(lines):
        hits = len(words & {w.lower() for w in re.findall(r"\w+", line)}) if words else 0
        if hits > best_hits:
            best, best_hits = i, hits
    while best < len(lines) - 1 and not lines[best].strip():
        best += 1
    text = ""
    for line in lines[best:]:
        text = f"{text} {line.strip()}".strip()
        if len(text) >= SNIPPET_CHARS:
            text = text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."
            break
    return row.start_line + best, text


class Searcher:
    """An open index plus (for dense and hybrid) the embedder that queries it.

    Args:
        db: the index file.
        embedder: an ``Embedder`` (anything with ``encode_query``); None allows BM25 only.
        dense: ``"auto"`` (the fastest up-to-date structure the index keeps, else exact), or one of
            ``exact``, ``binary``, ``int8``, ``hnsw`` (see :mod:`embeddinggemma.index.dense`).
        rescore: first-pass candidates per result for the approximate methods.
    """

    def __init__(self, db: str | Path, embedder: Any = None, *, dense: str = "auto", rescore: int = 10) -> None:
        self.store = IndexStore(db)
        meta = self.store.meta()
        if "model" not in meta:
            self.store.close()
            raise ValueError(f"{db} holds no finished index yet; run `embeddinggemma index DIR --db {db}`")
        self.settings = IndexSettings.from_meta(meta)
        self.root = meta.get("root")
        self.embedder = embedder
        if embedder is not None and not same_model(model_fingerprint(embedder), self.settings.fingerprint):
            self.store.close()
            raise IndexMismatchError(
                f"{db} was built with the model {self.settings.model}, which embeds differently from the one "
                f"loaded; search with --model {self.settings.model} or rebuild the index with this model"
            )
        self.dense_method, self.rescore = dense, rescore
        self._dense: DenseIndex | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dense_index(self) -> DenseIndex:
        generation = self.store.generation
        if self._dense is None or self._dense.generation != generation:  # the index changed under a server
            self._dense = self._open_dense()
        return self._dense

    def _open_dense(self) -> DenseIndex:
        if self.dense_method != "auto":
            return DenseIndex(self.store, self.settings.dim, self.dense_method, self.rescore)  # type: ignore[arg-type]
        for method in ("hnsw", "binary", "int8"):
            if method in self.settings.dense:
                try:
                    return DenseIndex(self.store, self.settings.dim, method, self.rescore)  # type: ignore[arg-type]
                except StaleIndexError:
                    logger.warning("the %s structure is stale (run `embeddinggemma index` again); exact search", method)
        return DenseIndex(self.store, self.settings.dim, "exact")

    def dense_ids(self, query: str, limit: int, task: str = "query", vector: Any = None) -> list[tuple[int, float]]:
        if vector is None:
            if self.embedder is None:
                raise ValueError("dense and hybrid search need the model; load one or use mode 'bm25'")
            vector = self.embedder.encode_query(query, task=task, dim=self.settings.dim)
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] > self.settings.dim:  # a full-width embedding (e.g. from a server's queue): Matryoshka cut
            vector = vector[: self.settings.dim] / max(float(np.linalg.norm(vector[: self.settings.dim])), 1e-12)
        return self._dense_index().search(vector, limit)

    def ranked_ids(
        self, query: str, k: int, mode: str = "dense", task: str = "query", vector: Any = None
    ) -> list[tuple[int, float]]:
        """(chunk id, score) best first: the search without loading chunk rows. ``vector``: the query's
        embedding (with the query prompt; full width or the index dim), when the caller embedded it
        already (a batch of queries, a server's batching queue)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not query.strip():
            raise ValueError("the query is empty")
        with self._lock:
            if mode == "dense":
                return self.dense_ids(query, k, task, vector)
            if mode == "bm25":
                return self.store.bm25(query, k)
            depth = max(k, FUSION_DEPTH)
            dense = [i for i, _ in self.dense_ids(query, depth, task, vector)]
            lexical = [i for i, _ in self.store.bm25(query, depth)]
            return reciprocal_rank_fusion([dense, lexical])[:k]

    def search(
        self, query: str, k: int = 10, mode: str = "dense", task: str = "query", vector: Any = None
    ) -> list[SearchResult]:
        """The best ``k`` chunks as results (see the module docstring); ``vector`` as in :meth:`ranked_ids`."""
        ranked = self.ranked_ids(query, k, mode, task, vector)
        with self._lock:
            rows = self.store.chunks([i for i, _ in ranked])
        out = []
        for chunk_id, score in ranked:
            row = rows[chunk_id]
            line, text = snippet(row, query)
            out.append(SearchResult(row.path, line, row.title, text, round(score, 6), row.page))
        return out
