"""Evaluation metrics as pure functions: retrieval, STS and bitext mining.

No mteb, pytrec_eval or scipy needed; every definition below is written so a reader can
check it by hand, and each follows the reference implementation named next to it:

* Retrieval follows ``trec_eval`` as wrapped by ``pytrec_eval`` (what BEIR and MTEB use):
  a document is relevant iff its qrels grade is > 0; nDCG uses the *linear* gain
  ``grade`` (not ``2**grade - 1``) with a ``log2(rank + 1)`` discount and an ideal ranking
  built from the qrels; Recall@k and MAP@k divide by the total number of relevant
  documents of the query (trec_eval's ``recall.k`` and ``map_cut.k``); MRR@k is MTEB's own
  (reciprocal rank of the first relevant document within the top k).
  One deliberate difference: the *order* of tied documents is given by the caller's
  ranking (our :func:`embeddinggemma.vectors.exact.search` puts the lower corpus index first),
  while trec_eval re-sorts ties by document id, descending.
* STS follows MTEB's ``AbsTaskSTS``: Pearson and Spearman between gold scores and cosine.
* Bitext mining follows MTEB's ``AbsTaskBitextMining._compute_metrics``
  (mteb/abstasks/text/bitext_mining.py): the nearest target is a class prediction, and
  precision/recall/F1 are scikit-learn's ``average="weighted"`` scores over gold labels.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_K_VALUES",
    "bitext_scores",
    "bitext_scores_from_predictions",
    "pearson",
    "retrieval_per_query",
    "retrieval_scores",
    "spearman",
    "sts_scores",
    "validate_qrels",
]

DEFAULT_K_VALUES: tuple[int, ...] = (1, 10, 100)
Qrels = Mapping[str, Mapping[str, int]]


def _few(ids: Collection[str], n: int = 5) -> str:
    shown = sorted(ids)[:n]
    more = f" and {len(ids) - n} more" if len(ids) > n else ""
    return ", ".join(repr(i) for i in shown) + more


def validate_qrels(qrels: Qrels, query_ids: Collection[str], corpus_ids: Collection[str]) -> None:
    """Reject qrels that cannot be evaluated, naming the offending ids.

    Raises:
        ValueError: if ``qrels`` is empty, names query ids that are not among ``query_ids``,
            or document ids that are not among ``corpus_ids``. A mismatch almost always means
            the qrels belong to another split or corpus version, which would silently score 0.
    """
    if not qrels or all(len(docs) == 0 for docs in qrels.values()):
        raise ValueError("qrels are empty: give at least one (query-id, corpus-id, score) judgement")
    query_ids = set(query_ids)
    corpus_ids = set(corpus_ids)
    missing_q = [qid for qid in qrels if qid not in query_ids]
    if missing_q:
        raise ValueError(
            f"qrels name {len(missing_q)} query id(s) absent from the queries: {_few(missing_q)}; "
            "remove those judgements or add the queries"
        )
    missing_d = {did for docs in qrels.values() for did in docs if did not in corpus_ids}
    if missing_d:
        raise ValueError(
            f"qrels name {len(missing_d)} corpus id(s) absent from the corpus: {_few(missing_d)}; "
            "remove those judgements or add the documents"
        )


def _check_k(k_values: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(sorted(set(k_values)))
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"k_values must be non-empty integers >= 1, got {list(k_values)!r}")
    return ks


def _query_metrics(ranking: Sequence[str], grades: Mapping[str, int], ks: tuple[int, ...]) -> dict[str, float]:
    gains = [max(int(grades.get(doc, 0)), 0) for doc in ranking]
    relevant = [g > 0 for g in gains]
    n_rel = sum(1 for g in grades.values() if g > 0)
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        top = gains[:k]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(top) if g > 0)
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"ndcg_at_{k}"] = dcg / idcg
        first = next((i for i, r in enumerate(relevant[:k]) if r), None)
        out[f"mrr_at_{k}"] = 0.0 if first is None else 1.0 / (first + 1)
        hits = sum(relevant[:k])
        out[f"recall_at_{k}"] = hits / n_rel
        out[f"precision_at_{k}"] = hits / k
        seen, ap = 0, 0.0
        for i, r in enumerate(relevant[:k]):
            if r:
                seen += 1
                ap += seen / (i + 1)
        out[f"map_at_{k}"] = ap / n_rel
    return out


def retrieval_per_query(
    ranked: Mapping[str, Sequence[str]],
    qrels: Qrels,
    *,
    query_ids: Collection[str],
    corpus_ids: Collection[str],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per-query retrieval metrics.

    Args:
        ranked: query id -> document ids, best first (ties already ordered, e.g. by
            :func:`embeddinggemma.vectors.exact.search`). Lists may be shorter than ``k``: missing
            ranks count as non-relevant. A judged query without a ranking scores 0.
        qrels: query id -> {document id: integer grade}; grade > 0 means relevant.
        query_ids, corpus_ids: every id that exists, for :func:`validate_qrels`.
        k_values: cut-offs.

    Returns:
        ``(per_query, skipped)``: metrics for each judged query with at least one relevant
        document (``ndcg_at_k``, ``mrr_at_k``, ``recall_at_k``, ``precision_at_k``,
        ``map_at_k`` for every k), and the judged query ids skipped because none of their
        grades is > 0 (nDCG and recall are undefined for them; trec_eval drops them too).
    """
    ks = _check_k(k_values)
    validate_qrels(qrels, query_ids, corpus_ids)
    per_query: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    for qid in sorted(qrels):
        grades = qrels[qid]
        if not any(g > 0 for g in grades.values()):
            skipped.append(qid)
            continue
        ranking = list(ranked.get(qid, ()))
        if len(set(ranking)) != len(ranking):
            dupes = {d for d in ranking if ranking.count(d) > 1}
            raise ValueError(f"ranking of query {qid!r} repeats document ids {_few(dupes)}; rank each once")
        per_query[qid] = _query_metrics(ranking, grades, ks)
    return per_query, skipped


def retrieval_scores(
    ranked: Mapping[str, Sequence[str]],
    qrels: Qrels,
    *,
    query_ids: Collection[str],
    corpus_ids: Collection[str],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> dict[str, float]:
    """Retrieval metrics averaged over evaluable queries (see :func:`retrieval_per_query`).

    MAP is reported as ``map_at_k`` for each k, trec_eval's ``map_cut.k`` (average precision
    truncated at rank k, divided by the query's total number of relevant documents); MTEB's
    retrieval tables report ``map_at_100``, which is present with the default ``k_values``.

    Returns:
        ``{"ndcg_at_10": ..., ..., "num_queries": evaluated, "skipped_queries": n}``; the
        two counts are floats like the rest so the dict serialises uniformly.

    Raises:
        ValueError: on empty qrels, unknown ids (see :func:`validate_qrels`), or if no judged
            query has a relevant document.
    """
    per_query, skipped = retrieval_per_query(
        ranked, qrels, query_ids=query_ids, corpus_ids=corpus_ids, k_values=k_values
    )
    if not per_query:
        raise ValueError(
            f"none of the {len(skipped)} judged queries has a relevant document (grade > 0); check the qrels scores"
        )
    names = next(iter(per_query.values())).keys()
    out = {name: float(np.mean([m[name] for m in per_query.values()])) for name in names}
    out["num_queries"] = float(len(per_query))
    out["skipped_queries"] = float(len(skipped))
    return out


# --------------------------------------------------------------------------- STS


def _as_1d(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; NaN if either input is constant (as scipy.stats.pearsonr)."""
    a, b = _as_1d(x, "x"), _as_1d(y, "y")
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two equally long inputs of >= 2 values, got {a.size} and {b.size}")
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float("nan") if denom == 0.0 else float(np.clip((a @ b) / denom, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start of each run of equal values; a run's average rank is (first + last) / 2.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: Pearson over average ranks (scipy.stats.spearmanr)."""
    return pearson(_average_ranks(_as_1d(x, "x")), _average_ranks(_as_1d(y, "y")))


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"embeddings must be two (n, dim) arrays of equal shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def sts_scores(
    embeddings1: np.ndarray, embeddings2: np.ndarray, gold: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Correlation of pairwise cosine similarity with gold similarity scores.

    Returns ``cosine_spearman`` (MTEB's main STS score), ``cosine_pearson`` and the
    aliases ``spearman``/``pearson`` (MTEB names for "the model's similarity", cosine here).
    """
    cos = _row_cosine(embeddings1, embeddings2)
    g = _as_1d(gold, "gold")
    if g.size != cos.size:
        raise ValueError(f"{cos.size} sentence pairs but {g.size} gold scores")
    s, p = spearman(cos, g), pearson(cos, g)
    return {"cosine_spearman": s, "cosine_pearson": p, "spearman": s, "pearson": p}


# ------------------------------------------------------------------ bitext mining


def bitext_scores_from_predictions(
    predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """Accuracy and support-weighted precision/recall/F1 of mined target indices.

    Each gold target index is a class. For every class ``c``: ``P_c = tp_c / predicted_c``,
    ``R_c = tp_c / true_c``, ``F_c = 2 P_c R_c / (P_c + R_c)`` (0 where a denominator is 0),
    averaged with weights ``true_c / n`` - scikit-learn's ``average="weighted"``,
    ``zero_division=0``, as MTEB computes them. With one source per target, recall equals
    accuracy and precision penalises targets that attract several sources.
    """
    pred = np.asarray(predictions, dtype=np.int64)
    gold = np.asarray(labels, dtype=np.int64)
    if pred.shape != gold.shape or pred.ndim != 1 or pred.size == 0:
        raise ValueError(
            f"predictions and labels must be non-empty 1-D and equally long, got {pred.shape}, {gold.shape}"
        )
    classes, gold_idx = np.unique(gold, return_inverse=True)
    true_c = np.bincount(gold_idx, minlength=classes.size).astype(np.float64)
    # Predictions of a class nobody has as gold get weight 0, so only gold classes matter.
    pos = np.searchsorted(classes, pred)
    in_gold = (pos < classes.size) & (classes[np.minimum(pos, classes.size - 1)] == pred)
    pred_c = np.bincount(pos[in_gold], minlength=classes.size).astype(np.float64)
    correct = pred == gold
    tp_c = np.bincount(gold_idx[correct], minlength=classes.size).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_c = np.where(pred_c > 0, tp_c / pred_c, 0.0)
        r_c = tp_c / true_c
        f_c = np.where(p_c + r_c > 0, 2 * p_c * r_c / (p_c + r_c), 0.0)
    w = true_c / gold.size
    return {
        "accuracy": float(correct.mean()),
        "precision": float(w @ p_c),
        "recall": float(w @ r_c),
        "f1": float(w @ f_c),
    }


def bitext_scores(
    source_embeddings: np.ndarray,
    target_embeddings: np.ndarray,
    gold: Sequence[int] | np.ndarray | None = None,
    *,
    chunk_size: int = 16384,
) -> dict[str, float]:
    """Mine the nearest target (cosine) for each source and score it against ``gold``.

    ``gold[i]`` is the index of the correct target for source ``i`` (default: ``i``, i.e.
    row-aligned parallel sentences). Exact ties go to the lower target index
    (:func:`embeddinggemma.vectors.exact.search`); MTEB leaves that to ``torch.topk``.
    """
    from embeddinggemma.vectors.exact import search  # local import keeps metrics importable without torch

    src = np.asarray(source_embeddings)
    tgt = np.asarray(target_embeddings)
    labels = np.arange(src.shape[0]) if gold is None else np.asarray(gold)
    if labels.shape[0] != src.shape[0]:
        raise ValueError(f"{src.shape[0]} sources but {labels.shape[0]} gold labels")
    _, idx = search(src.astype(np.float32, copy=False), tgt.astype(np.float32, copy=False), 1, chunk_size=chunk_size)
    return bitext_scores_from_predictions(np.asarray(idx)[:, 0], labels)
