"""Dense search over an index's vectors: exact, or a fast first pass rescored in full precision.

* ``exact``: every float32 vector scored (one matrix-vector product). Vectors are checked and
  normalised once when written, so a query does not revalidate the whole matrix the way the batched
  :func:`embeddinggemma.vectors.exact.search` does on every call (~15x slower for one query at 100k chunks).
* ``binary``: sign bits (32x smaller), Hamming distance over all chunks, then the best
  ``k * rescore`` candidates rescored with their float32 vectors read from the database.
* ``int8``: int8 codes with per-dimension ranges calibrated on the indexed vectors (4x smaller),
  then the same float32 rescoring.
* ``hnsw``: a usearch HNSW graph over the float32 vectors (approximate), rescored the same way.

Codes and the graph are derived data (see :mod:`embeddinggemma.index.store`): built at the end of an
indexing run by :func:`build_derived`, stamped with the store's generation, and ignored when stale.
"""

from __future__ import annotations

import io
import logging
from typing import Literal

import numpy as np

from embeddinggemma.index.store import IndexStore
from embeddinggemma.vectors.codes import int8_ranges, quantize_embeddings

logger = logging.getLogger(__name__)

__all__ = ["DENSE_METHODS", "DenseIndex", "StaleIndexError", "build_derived"]

DenseMethod = Literal["exact", "binary", "int8", "hnsw"]
DENSE_METHODS: tuple[str, ...] = ("exact", "binary", "int8", "hnsw")
DEFAULT_RESCORE = 10  # candidates per wanted result fetched from the first pass for float32 rescoring
HNSW_CONNECTIVITY = 16
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 64


class StaleIndexError(ValueError):
    """A derived structure is missing or older than the vectors."""


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def build_derived(store: IndexStore, dim: int, methods: list[str]) -> dict[str, float]:
    """(Re)build the codes/graphs in ``methods`` from the current vectors; drops the others.
    Returns seconds per structure."""
    import time

    generation = store.generation
    wanted = set(methods) - {"exact"}
    seconds: dict[str, float] = {}
    for name in ("binary", "int8", "hnsw"):
        if name not in wanted:
            if store.get_derived(name) is not None:
                store.drop_derived(name)
            continue
        current = store.get_derived(name)
        if current is not None and current[0] == generation:
            continue
        t0 = time.perf_counter()
        ids, vectors = store.all_vectors(dim)
        if len(ids) == 0:
            continue
        if name == "binary":
            data = _pack({"ids": ids, "codes": quantize_embeddings(vectors, "binary")})
        elif name == "int8":
            ranges = int8_ranges(vectors) if len(ids) > 1 else np.stack([vectors[0] - 1, vectors[0] + 1])
            data = _pack({"ids": ids, "codes": quantize_embeddings(vectors, "int8", ranges=ranges), "ranges": ranges})
        else:
            from usearch.index import Index

            graph = Index(
                ndim=dim, metric="ip", dtype="f32", connectivity=HNSW_CONNECTIVITY,
                expansion_add=HNSW_EXPANSION_ADD, expansion_search=HNSW_EXPANSION_SEARCH,
            )  # fmt: skip
            graph.add(ids, vectors)
            data = bytes(graph.save())
        store.put_derived(name, generation, {"rows": len(ids), "dim": dim}, data)
        seconds[name] = time.perf_counter() - t0
        logger.info("built %s over %d vectors in %.1fs", name, len(ids), seconds[name])
    return seconds


class DenseIndex:
    """Nearest chunks of a query vector. Loads what ``method`` needs once, then answers many queries."""

    def __init__(self, store: IndexStore, dim: int, method: DenseMethod = "exact", rescore: int = DEFAULT_RESCORE):
        if method not in DENSE_METHODS:
            raise ValueError(f"unknown dense search method {method!r}; choose one of {list(DENSE_METHODS)}")
        if rescore < 1:
            raise ValueError(f"rescore must be >= 1, got {rescore}")
        self.store, self.dim, self.method, self.rescore = store, dim, method, rescore
        self.generation = store.generation
        if method == "exact":
            self.ids, self.vectors = store.all_vectors(dim)
            return
        derived = store.get_derived(method)
        if derived is None or derived[0] != self.generation:
            raise StaleIndexError(
                f"the index has no up-to-date {method} structure; run `embeddinggemma index` with --dense {method} "
                "to build it, or search with --dense exact"
            )
        if method == "hnsw":
            from usearch.index import Index

            self.graph = Index.restore(derived[2])
            return
        arrays = _unpack(derived[2])
        self.ids, self.codes = arrays["ids"], arrays["codes"]
        if method == "binary" and self.codes.shape[1] % 8 == 0:
            self.codes = self.codes.view(np.uint64)  # popcount 64 bits at a time
        self.ranges = arrays.get("ranges")

    def __len__(self) -> int:
        return len(self.graph) if self.method == "hnsw" else len(self.ids)

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine score) of the best ``k`` chunks, best first."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dims, the index {self.dim}")
        if len(self) == 0:
            return []
        if self.method == "exact":
            scores = self.vectors @ query
            return [(int(self.ids[r]), float(scores[r])) for r in _top(scores, k)]
        wanted = min(len(self), k * self.rescore)
        if wanted == len(self):  # every chunk gets rescored: the exact answer, whatever a graph search would miss
            candidates = np.asarray(self.graph.keys, dtype=np.int64) if self.method == "hnsw" else self.ids
        else:
            candidates = self._first_pass(query, wanted)
        candidates = np.sort(candidates)  # id order, so that ties go to the lower id as in exact search
        exact = self.store.vectors(candidates, self.dim) @ query
        return [(int(candidates[i]), float(exact[i])) for i in _top(exact, k)]

    def _first_pass(self, query: np.ndarray, wanted: int) -> np.ndarray:
        if self.method == "hnsw":
            return np.asarray(self.graph.search(query, wanted).keys, dtype=np.int64)
        if self.method == "binary":
            packed = quantize_embeddings(query[None], "binary")
            packed = packed.view(np.uint64) if self.codes.dtype == np.uint64 else packed
            scores = -np.bitwise_count(self.codes ^ packed).sum(axis=1, dtype=np.int32)
        else:  # float query against the dequantized codes: d = lo + (code + 128) * step
            lo, hi = self.ranges
            step = np.maximum((hi - lo) / 255, np.float32(1e-12))
            weights, offset = (query * step).astype(np.float32), float(query @ (lo + 128 * step))
            scores = np.empty(len(self.ids), dtype=np.float32)
            for start in range(0, len(self.ids), 65536):  # a block at a time: memory stays near the codes' size
                scores[start : start + 65536] = self.codes[start : start + 65536].astype(np.float32) @ weights + offset
        return self.ids[_top(scores, wanted)]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first; equal scores in position order."""
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    part = np.sort(part)
    return part[np.argsort(-scores[part], kind="stable")]
