"""Score an embedder on evaluation tasks and write the results as JSON.

Encoding is the expensive part (the 300M model embeds ~1k tokens/s on two CPU cores), so:

* every text is encoded once, at full width; each Matryoshka dim is then scored from a
  truncated and re-normalised copy (the model was trained for exactly that slice);
* :func:`evaluate_suite` shares one cache across tasks, keyed by (prompt role, prompt
  task, title, text), so tasks that share a corpus (the local suite's English and
  cross-lingual man-page tasks) pay for it once;
* retrieval only encodes queries that have judgements.

The embedder is duck-typed (:class:`EmbedderLike`), so the real ``Embedder``, a
sentence-transformers wrapper or a test double all work.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from embeddinggemma.eval.data import (
    TaskSpec,
    load_bitext,
    load_corpus,
    load_qrels,
    load_queries,
    load_sts,
    load_task,
)
from embeddinggemma.eval.metrics import (
    DEFAULT_K_VALUES,
    bitext_scores,
    retrieval_per_query,
    sts_scores,
    validate_qrels,
)
from embeddinggemma.matryoshka import matryoshka_truncate
from embeddinggemma.vectors.codes import EMBEDDING_PRECISIONS, int8_ranges, scoring_vectors
from embeddinggemma.vectors.exact import search

logger = logging.getLogger(__name__)

__all__ = [
    "RESULTS_FORMAT",
    "EmbedderLike",
    "EmbeddingCache",
    "evaluate_suite",
    "evaluate_task",
    "load_results",
    "score_key",
    "score_keys",
    "suite_tasks",
    "write_results",
]

RESULTS_FORMAT = "embeddinggemma-eval-results/1"


class EmbedderLike(Protocol):
    """The part of ``embeddinggemma.Embedder``'s API the runner uses; rows are L2-normalised."""

    def encode_query(
        self, texts: list[str], *, task: str = ..., dim: int | None = ..., batch_size: int = ...,
        show_progress: bool = ..., output: str = ...,
    ) -> Any: ...  # fmt: skip

    def encode_document(
        self, texts: list[str], *, titles: list[str | None] | None = ..., dim: int | None = ...,
        batch_size: int = ..., show_progress: bool = ..., output: str = ...,
    ) -> Any: ...  # fmt: skip

    def encode(
        self, texts: list[str], *, task: str | None = ..., prompt: str | None = ..., dim: int | None = ...,
        batch_size: int = ..., show_progress: bool = ..., output: str = ...,
    ) -> Any: ...  # fmt: skip


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"the embedder returned shape {arr.shape}; expected (n_texts, dim)")
    return arr


class EmbeddingCache:
    """Encodes each distinct (role, task, title, text) once, at full width, and remembers it.

    Hits are free, so a suite can share corpora between tasks; ``encoded_texts`` and
    ``cache_hits`` say how much work that saved.
    """

    def __init__(self, embedder: EmbedderLike, *, batch_size: int = 32, show_progress: bool = False) -> None:
        self.embedder = embedder
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._store: dict[Hashable, np.ndarray] = {}
        self.encoded_texts = 0
        self.cache_hits = 0
        self.encode_seconds = 0.0

    def _get(self, keys: list[Hashable], encode_missing: Callable[[list[int]], Any]) -> np.ndarray:
        missing: dict[Hashable, int] = {}
        for i, key in enumerate(keys):
            if key not in self._store and key not in missing:
                missing[key] = i
        self.cache_hits += len(keys) - len(missing)
        if missing:
            positions = list(missing.values())
            t0 = time.perf_counter()
            emb = _to_numpy(encode_missing(positions))
            self.encode_seconds += time.perf_counter() - t0
            if emb.shape[0] != len(positions):
                raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(positions)} texts")
            for key, row in zip(missing, emb, strict=True):
                self._store[key] = row
            self.encoded_texts += len(positions)
        return np.stack([self._store[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def _kw(self) -> dict[str, Any]:
        return {
            "dim": None,
            "batch_size": self.batch_size,
            "show_progress": self.show_progress,
            "output": "numpy",
        }

    def queries(self, texts: Sequence[str], task: str) -> np.ndarray:
        keys: list[Hashable] = [("query", task, None, t) for t in texts]
        return self._get(keys, lambda pos: self.embedder.encode_query([texts[i] for i in pos], task=task, **self._kw()))

    def documents(self, texts: Sequence[str], titles: Sequence[str | None]) -> np.ndarray:
        keys: list[Hashable] = [("document", None, ti, t) for t, ti in zip(texts, titles, strict=True)]
        has_titles = any(t is not None for t in titles)
        return self._get(
            keys,
            lambda pos: self.embedder.encode_document(
                [texts[i] for i in pos], titles=[titles[i] for i in pos] if has_titles else None, **self._kw()
            ),
        )

    def symmetric(self, texts: Sequence[str], task: str) -> np.ndarray:
        keys: list[Hashable] = [("symmetric", task, None, t) for t in texts]
        return self._get(keys, lambda pos: self.embedder.encode([texts[i] for i in pos], task=task, **self._kw()))

    def prompted(self, texts: Sequence[str], prompt: str) -> np.ndarray:
        """Texts with an explicit prompt string (the MTEB adapter's queries and symmetric inputs)."""
        keys: list[Hashable] = [("prompt", prompt, None, t) for t in texts]
        return self._get(keys, lambda pos: self.embedder.encode([texts[i] for i in pos], prompt=prompt, **self._kw()))

    def clear(self) -> None:
        """Forget every cached embedding (the counters are kept)."""
        self._store.clear()

    def rows(self) -> Mapping[Hashable, np.ndarray]:
        """Read-only view of the cache: (role, task or prompt, title, text) -> full-width embedding.
        Lets a parity check compare two embedders text by text after scoring the same suite."""
        return MappingProxyType(self._store)


def _resolve_dims(dims: Sequence[int] | None, width: int) -> list[int]:
    if dims is None:
        return [width]
    out = sorted({int(d) for d in dims}, reverse=True)
    bad = [d for d in out if not 1 <= d <= width]
    if not out or bad:
        raise ValueError(f"dims {bad or list(dims)} are not in 1..{width}; the embeddings have {width} dimensions")
    return out


def _resolve_precisions(precisions: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(precisions))
    bad = [p for p in out if p not in EMBEDDING_PRECISIONS]
    if not out or bad:
        raise ValueError(f"embedding precisions {bad or out} are not in {list(EMBEDDING_PRECISIONS)}")
    return out


def score_key(dim: int, precision: str = "float32") -> str:
    """Key of one scored variant in a task's ``dims``: ``"768"`` for float32, ``"768/int8"``, ``"128/binary"``."""
    return str(dim) if precision == "float32" else f"{dim}/{precision}"


def score_keys(results: Mapping[str, Any], dims: Sequence[int] | None = None) -> list[str]:
    """A results dict's variant keys, widest dim first, each dim's precisions in the order they were run.
    ``dims`` keeps only those dims."""
    precisions = results.get("embedding_precisions") or ["float32"]
    return [score_key(int(d), p) for d in results["dims"] if dims is None or int(d) in dims for p in precisions]


def _scored_variants(
    arrays: Sequence[np.ndarray], dims: Sequence[int], precisions: Sequence[str], calibrate: Sequence[int]
) -> Iterator[tuple[str, list[np.ndarray]]]:
    """Every (dim, precision) variant of ``arrays`` as float vectors whose dot products are its scores.

    int8 ranges are measured on ``arrays[i] for i in calibrate`` (the indexed side), per dim.
    """
    for dim in dims:
        sliced = [matryoshka_truncate(a, dim) for a in arrays]
        for precision in precisions:
            ranges = int8_ranges(np.concatenate([sliced[i] for i in calibrate])) if precision == "int8" else None
            yield score_key(dim, precision), [scoring_vectors(a, precision, ranges=ranges) for a in sliced]  # type: ignore[arg-type]


def _mean_dicts(rows: list[Mapping[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


def _eval_retrieval(
    task: TaskSpec,
    cache: EmbeddingCache,
    dims: Sequence[int] | None,
    precisions: Sequence[str],
    k_values: Sequence[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    corpus = load_corpus(task.path("corpus"))
    queries = load_queries(task.path("queries"))
    qrels = load_qrels(task.path("qrels"))
    corpus_ids = [d.id for d in corpus]
    validate_qrels(qrels, [q.id for q in queries], corpus_ids)  # fail before paying for encoding
    judged = [q for q in queries if q.id in qrels]
    doc_emb = cache.documents([d.text for d in corpus], [d.title for d in corpus])
    q_emb = cache.queries([q.text for q in judged], task.query_task)
    all_dims = _resolve_dims(dims, doc_emb.shape[1])
    subsets = sorted({q.subset for q in judged if q.subset is not None})
    by_dim: dict[str, Any] = {}
    for key, (q_vec, doc_vec) in _scored_variants([q_emb, doc_emb], all_dims, precisions, calibrate=[1]):
        _, idx = search(q_vec, doc_vec, max(k_values), metric="dot")
        ranked = {q.id: [corpus_ids[j] for j in row] for q, row in zip(judged, idx.tolist(), strict=True)}
        per_query, skipped = retrieval_per_query(
            ranked, qrels, query_ids=[q.id for q in queries], corpus_ids=corpus_ids, k_values=k_values
        )
        if not per_query:
            raise ValueError(f"task {task.name!r}: no judged query has a relevant document (grade > 0)")
        scores = _mean_dicts(list(per_query.values()))
        scores.update(num_queries=float(len(per_query)), skipped_queries=float(len(skipped)))
        entry: dict[str, Any] = {"scores": scores}
        if subsets:
            entry["subsets"] = {
                s: _mean_dicts([per_query[q.id] for q in judged if q.subset == s and q.id in per_query])
                for s in subsets
            }
        by_dim[key] = entry
    info = {"num_queries": len(judged), "num_documents": len(corpus), "subsets": subsets}
    return by_dim, info


def _eval_sts(
    task: TaskSpec, cache: EmbeddingCache, dims: Sequence[int] | None, precisions: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    pairs = load_sts(task.path("pairs"))
    e1 = cache.symmetric([p.sentence1 for p in pairs], task.query_task)
    e2 = cache.symmetric([p.sentence2 for p in pairs], task.query_task)
    gold = [p.score for p in pairs]
    variants = _scored_variants([e1, e2], _resolve_dims(dims, e1.shape[1]), precisions, calibrate=[0, 1])
    by_dim = {key: {"scores": sts_scores(v1, v2, gold)} for key, (v1, v2) in variants}
    return by_dim, {"num_pairs": len(pairs)}


def _eval_bitext(
    task: TaskSpec, cache: EmbeddingCache, dims: Sequence[int] | None, precisions: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    pairs = load_bitext(task.path("pairs"))
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.subset or "default", []).append(i)
    src = cache.symmetric([p.source for p in pairs], task.query_task)
    tgt = cache.symmetric([p.target for p in pairs], task.query_task)
    by_dim: dict[str, Any] = {}
    for key, (s, t) in _scored_variants([src, tgt], _resolve_dims(dims, src.shape[1]), precisions, calibrate=[0, 1]):
        # Mining happens within a subset: sources only compete for their own language's targets.
        per_subset = {name: bitext_scores(s[rows], t[rows]) for name, rows in sorted(groups.items())}
        entry: dict[str, Any] = {"scores": _mean_dicts(list(per_subset.values()))}
        if len(per_subset) > 1:
            entry["subsets"] = per_subset
        by_dim[key] = entry
    return by_dim, {"num_pairs": len(pairs), "subsets": sorted(groups)}


def evaluate_task(
    embedder: EmbedderLike,
    task: TaskSpec | str | Path,
    *,
    dims: Sequence[int] | None = None,
    precisions: Sequence[str] = ("float32",),
    batch_size: int = 32,
    show_progress: bool = False,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    cache: EmbeddingCache | None = None,
) -> dict[str, Any]:
    """Encode one task's texts once and score them at every dim in ``dims``.

    Args:
        embedder: anything with :class:`EmbedderLike`'s methods.
        task: a :class:`TaskSpec` or a task directory containing ``task.json``.
        dims: Matryoshka dims to score (e.g. ``[768, 512, 256, 128]``); default: full width.
        precisions: embedding precisions to score each dim at (``"float32"``, ``"int8"``, ``"binary"``;
            see :mod:`embeddinggemma.vectors.codes`); the texts are still encoded once.
        batch_size, show_progress: passed to the embedder.
        k_values: retrieval cut-offs; the search returns ``max(k_values)`` documents.
        cache: share encodings with other tasks (see :class:`EmbeddingCache`).

    Returns:
        ``{"kind", "main_metric", "query_task", "dims": {"768": {"scores": {...},
        "subsets": {...}?}, "768/int8": ..., ...}, sizes, "seconds": {...}}`` (keys from
        :func:`score_key`); every ``scores`` dict has ``main_score`` too.
    """
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    precisions = _resolve_precisions(precisions)
    cache = cache or EmbeddingCache(embedder, batch_size=batch_size, show_progress=show_progress)
    t0, enc0 = time.perf_counter(), cache.encode_seconds
    if spec.kind == "retrieval":
        by_dim, info = _eval_retrieval(spec, cache, dims, precisions, k_values)
    elif spec.kind == "sts":
        by_dim, info = _eval_sts(spec, cache, dims, precisions)
    else:
        by_dim, info = _eval_bitext(spec, cache, dims, precisions)
    for entry in by_dim.values():
        entry["scores"]["main_score"] = entry["scores"][spec.main_metric]
    encode_s = cache.encode_seconds - enc0
    total_s = time.perf_counter() - t0
    first = next(iter(by_dim))
    logger.info(
        "%s: %s=%.4f at dim %s (encode %.1fs, total %.1fs)",
        spec.name, spec.main_metric, by_dim[first]["scores"]["main_score"], first, encode_s, total_s,
    )  # fmt: skip
    return {
        "kind": spec.kind,
        "main_metric": spec.main_metric,
        "query_task": spec.query_task,
        **info,
        "dims": by_dim,
        "seconds": {"encode": round(encode_s, 3), "total": round(total_s, 3)},
    }


def suite_tasks(suite: str | Path | Sequence[TaskSpec | str | Path]) -> list[TaskSpec]:
    """Resolve a suite: a directory (its ``manifest.json`` task list, else every subdirectory
    with a ``task.json``, sorted by name) or an explicit list of specs / task directories."""
    if isinstance(suite, str | Path):
        root = Path(suite)
        manifest = root / "manifest.json"
        if manifest.is_file():
            names = json.loads(manifest.read_text(encoding="utf-8")).get("tasks", {})
            return [load_task(root / name) for name in sorted(names)]
        dirs = sorted(p for p in root.iterdir() if (p / "task.json").is_file()) if root.is_dir() else []
        if not dirs:
            raise FileNotFoundError(f"{root}: no manifest.json and no task directories; build the suite first")
        return [load_task(p) for p in dirs]
    return [t if isinstance(t, TaskSpec) else load_task(t) for t in suite]


def evaluate_suite(
    embedder: EmbedderLike,
    suite: str | Path | Sequence[TaskSpec | str | Path],
    *,
    dims: Sequence[int] | None = None,
    precisions: Sequence[str] = ("float32",),
    out: str | Path | None = None,
    model_name: str | None = None,
    tasks: Sequence[str] | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> dict[str, Any]:
    """Score every task of a suite with one shared encoding cache; optionally write JSON.

    Args:
        suite: see :func:`suite_tasks`.
        dims: Matryoshka dims (default: full width only).
        precisions: embedding precisions per dim (see :func:`evaluate_task`).
        out: results JSON path (parent directories are created).
        model_name: recorded in the results, e.g. ``"google/embeddinggemma-300m (fp32)"``.
        tasks: only these task names (an unknown name is an error, not a silent skip).

    Returns:
        The results dict (``format``, ``model``, ``dims``, ``tasks``, ``mean_main_score``
        per dim over all tasks, timing and environment).
    """
    specs = suite_tasks(suite)
    if tasks is not None:
        known = {s.name for s in specs}
        unknown = sorted(set(tasks) - known)
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this suite has {sorted(known)}")
        specs = [s for s in specs if s.name in set(tasks)]
    cache = EmbeddingCache(embedder, batch_size=batch_size, show_progress=show_progress)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for spec in tqdm(specs, desc="tasks", disable=not show_progress):
        results[spec.name] = evaluate_task(
            embedder, spec, dims=dims, precisions=precisions, k_values=k_values, cache=cache
        )
    dim_keys = list(next(iter(results.values()))["dims"]) if results else []
    mean_main = {d: float(np.mean([r["dims"][d]["scores"]["main_score"] for r in results.values()])) for d in dim_keys}
    report = {
        "format": RESULTS_FORMAT,
        "model": model_name,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suite": str(suite) if isinstance(suite, str | Path) else None,
        "dims": list(dict.fromkeys(int(k.split("/")[0]) for k in dim_keys)),
        "embedding_precisions": _resolve_precisions(precisions),
        "k_values": list(k_values),
        "tasks": results,
        "mean_main_score": mean_main,
        "encoding": {
            "texts_encoded": cache.encoded_texts,
            "cache_hits": cache.cache_hits,
            "encode_seconds": round(cache.encode_seconds, 3),
            "total_seconds": round(time.perf_counter() - t0, 3),
        },
        "environment": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
    }
    if out is not None:
        write_results(report, out)
    return report


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write a results dict as indented JSON (stable key order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results JSON written by :func:`evaluate_suite`, checking its format tag."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not an embeddinggemma results file (expected format {RESULTS_FORMAT!r})")
    return data
