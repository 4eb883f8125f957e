"""Metrics against hand-computed cases (arithmetic in the comments) and reference libraries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embeddinggemma.eval.metrics import (
    bitext_scores,
    bitext_scores_from_predictions,
    pearson,
    retrieval_per_query,
    retrieval_scores,
    spearman,
    sts_scores,
    validate_qrels,
)
from embeddinggemma.vectors.exact import search

CORPUS = ["d1", "d2", "d3", "d4", "d5"]
QUERIES = ["q1", "q2", "q3"]


def test_graded_hand_case() -> None:
    # q1 grades: d1=2, d2=1, d3=0 (judged non-relevant). Ranking: d3, d1, d4, d2.
    # gains by rank: 0, 2, 0, 1; relevant at ranks 2 and 4; R = 2 relevant documents.
    # DCG@10  = 2/log2(3) + 1/log2(5) = 1.2618595 + 0.4306766 = 1.6925361
    # IDCG@10 = 2/log2(2) + 1/log2(3) = 2 + 0.6309298 = 2.6309298  -> nDCG@10 = 0.6433224
    # nDCG@1 = 0 (d3 has grade 0); MRR@1 = 0, MRR@10 = 1/2
    # Recall@1 = 0/2, Recall@10 = 2/2; P@10 = 2/10
    # AP@10 = (1/2 + 2/4) / 2 = 0.5 ; AP@1 = 0
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}}
    per_query, skipped = retrieval_per_query(
        {"q1": ["d3", "d1", "d4", "d2"]}, qrels, query_ids=QUERIES, corpus_ids=CORPUS, k_values=(1, 10)
    )
    m = per_query["q1"]
    assert skipped == []
    assert m["ndcg_at_10"] == pytest.approx(1.6925361 / 2.6309298, abs=1e-7)
    assert m["ndcg_at_10"] == pytest.approx(0.6433224, abs=1e-6)
    assert m["ndcg_at_1"] == 0.0
    assert (m["mrr_at_1"], m["mrr_at_10"]) == (0.0, 0.5)
    assert (m["recall_at_1"], m["recall_at_10"]) == (0.0, 1.0)
    assert m["precision_at_10"] == pytest.approx(0.2)
    assert (m["map_at_1"], m["map_at_10"]) == (0.0, 0.5)


def test_ideal_ranking_comes_from_qrels_not_from_the_run() -> None:
    # Only d2 (grade 1) is retrieved; d1 (grade 3) is missed.
    # DCG@10 = 1/log2(2) = 1 ; IDCG@10 = 3/1 + 1/log2(3) = 3.6309298 -> nDCG = 0.2754114
    per_query, _ = retrieval_per_query(
        {"q1": ["d2"]}, {"q1": {"d1": 3, "d2": 1}}, query_ids=QUERIES, corpus_ids=CORPUS, k_values=(10,)
    )
    assert per_query["q1"]["ndcg_at_10"] == pytest.approx(1 / (3 + 1 / math.log2(3)))
    assert per_query["q1"]["recall_at_10"] == 0.5


def test_k_larger_than_the_ranked_list() -> None:
    # A 2-item ranking scored at k=100: missing ranks are simply non-relevant.
    # d1 at rank 1 (grade 1), d5 not retrieved: recall 1/2, P@100 = 1/100, AP@100 = (1/1)/2 = 0.5
    m, _ = retrieval_per_query(
        {"q1": ["d1", "d2"]},
        {"q1": {"d1": 1, "d5": 1}},
        query_ids=QUERIES,
        corpus_ids=CORPUS,
        k_values=(100,),
    )
    assert m["q1"]["recall_at_100"] == 0.5
    assert m["q1"]["precision_at_100"] == pytest.approx(0.01)
    assert m["q1"]["map_at_100"] == 0.5
    # nDCG: DCG = 1 ; IDCG = 1 + 1/log2(3) = 1.6309298
    assert m["q1"]["ndcg_at_100"] == pytest.approx(1 / 1.6309298, abs=1e-7)


def test_averaging_skipping_and_unranked_queries() -> None:
    # q1: perfect (d1 first) -> MRR@10 1 ; q2: no ranking at all -> 0 ; q3: only grade 0 -> skipped.
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 0}}
    out = retrieval_scores({"q1": ["d1"], "q3": ["d3"]}, qrels, query_ids=QUERIES, corpus_ids=CORPUS)
    assert out["mrr_at_10"] == 0.5  # (1 + 0) / 2
    assert out["num_queries"] == 2.0
    assert out["skipped_queries"] == 1.0
    assert {"ndcg_at_1", "ndcg_at_10", "ndcg_at_100", "recall_at_100", "map_at_100"} <= out.keys()


def test_negative_grades_count_as_non_relevant() -> None:
    # d1 = -1 ranks first but gains nothing; d2 (1) at rank 2 -> nDCG@10 = (1/log2 3) / 1
    m, _ = retrieval_per_query(
        {"q1": ["d1", "d2"]},
        {"q1": {"d1": -1, "d2": 1}},
        query_ids=QUERIES,
        corpus_ids=CORPUS,
        k_values=(10,),
    )
    assert m["q1"]["ndcg_at_10"] == pytest.approx(1 / math.log2(3))
    assert m["q1"]["mrr_at_10"] == 0.5


def test_all_queries_without_relevant_docs_is_an_error() -> None:
    with pytest.raises(ValueError, match="none of the 1 judged queries"):
        retrieval_scores({"q1": ["d1"]}, {"q1": {"d1": 0}}, query_ids=QUERIES, corpus_ids=CORPUS)


@pytest.mark.parametrize(
    ("qrels", "match"),
    [
        ({}, "qrels are empty"),
        ({"q1": {}}, "qrels are empty"),
        ({"q1": {"d1": 1}, "qX": {"d1": 1}, "qY": {"d2": 1}}, r"2 query id\(s\).*'qX', 'qY'.*remove"),
        ({"q1": {"d1": 1, "dZ": 1}}, r"1 corpus id\(s\).*'dZ'"),
    ],
)
def test_invalid_qrels_name_the_problem(qrels: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_qrels(qrels, QUERIES, CORPUS)
    with pytest.raises(ValueError, match=match):
        retrieval_scores({}, qrels, query_ids=QUERIES, corpus_ids=CORPUS)


def test_repeated_document_in_a_ranking_is_an_error() -> None:
    with pytest.raises(ValueError, match="repeats document ids"):
        retrieval_scores({"q1": ["d1", "d1"]}, {"q1": {"d1": 1}}, query_ids=QUERIES, corpus_ids=CORPUS)


def test_tied_scores_rank_the_lower_corpus_index_first() -> None:
    # d1 and d2 are the same vector, so their scores tie exactly; d2 is the relevant one.
    # search() puts index 0 (d1) first, so the relevant document is at rank 2: MRR@10 = 1/2.
    docs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    _, idx = search(np.array([[1.0, 0.2]], np.float32), docs, 3)
    ranking = [["d1", "d2", "d3"][j] for j in idx[0]]
    assert ranking == ["d1", "d2", "d3"]
    out = retrieval_scores({"q1": ranking}, {"q1": {"d2": 1}}, query_ids=QUERIES, corpus_ids=CORPUS)
    assert out["mrr_at_10"] == 0.5


def test_ndcg_matches_sklearn_on_random_graded_data() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(42)
    n_q, n_d = 30, 60
    corpus = [f"d{i}" for i in range(n_d)]
    grades = rng.choice([0, 0, 0, 0, 1, 2, 3], size=(n_q, n_d))
    grades[:, 0] = np.maximum(grades[:, 0], 1)  # every query has a relevant document
    scores = rng.normal(size=(n_q, n_d))  # continuous: no ties, so sklearn's tie averaging is moot
    qrels = {f"q{i}": {corpus[j]: int(g) for j, g in enumerate(row) if g > 0} for i, row in enumerate(grades)}
    ranked = {f"q{i}": [corpus[j] for j in np.argsort(-scores[i])] for i in range(n_q)}
    for k in (1, 5, 10, 100):
        ours = retrieval_scores(ranked, qrels, query_ids=list(qrels), corpus_ids=corpus, k_values=(k,))
        ref = sklearn_metrics.ndcg_score(grades, scores, k=k)
        assert ours[f"ndcg_at_{k}"] == pytest.approx(ref, abs=1e-12)


def test_recall_and_map_match_a_vectorised_trec_eval_formula() -> None:
    rng = np.random.default_rng(7)
    n_q, n_d, k = 25, 40, 10
    corpus = [f"d{i}" for i in range(n_d)]
    rel = rng.random((n_q, n_d)) < 0.15
    rel[:, 3] = True
    order = np.argsort(-rng.normal(size=(n_q, n_d)), axis=1)
    hits = np.take_along_axis(rel, order, 1)[:, :k]  # (Q, k) relevance by rank
    n_rel = rel.sum(1)
    recall = hits.sum(1) / n_rel
    prec_at_rank = np.cumsum(hits, 1) / np.arange(1, k + 1)
    ap = (prec_at_rank * hits).sum(1) / n_rel  # trec_eval map_cut: divide by all relevant
    qrels = {f"q{i}": {corpus[j]: 1 for j in np.flatnonzero(rel[i])} for i in range(n_q)}
    ranked = {f"q{i}": [corpus[j] for j in order[i]] for i in range(n_q)}
    ours = retrieval_scores(ranked, qrels, query_ids=list(qrels), corpus_ids=corpus, k_values=(k,))
    assert ours["recall_at_10"] == pytest.approx(recall.mean())
    assert ours["map_at_10"] == pytest.approx(ap.mean())


# ---------------------------------------------------------------------------------- STS


def test_spearman_and_pearson_by_hand() -> None:
    # Ranks x = 1 2 3 4, y = 1 3 2 4: d = 0 -1 1 0, sum d^2 = 2
    # rho = 1 - 6 * 2 / (4 * (16 - 1)) = 1 - 12/60 = 0.8
    assert spearman([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Pearson of (1,2,3) with (2,4,7): means 2 and 13/3; deviations (-1,0,1), (-7/3,-1/3,8/3)
    # cov = 7/3 + 8/3 = 5 ; var_x = 2 ; var_y = (49 + 1 + 64)/9 = 114/9 -> r = 5 / sqrt(2 * 114/9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_spearman_with_ties_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=200).astype(float)  # many ties
    y = x + rng.normal(scale=2.0, size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)


def test_sts_scores_use_cosine() -> None:
    # Pair cosines: 1, 0, -1 (unnormalised inputs); gold 5, 3, 1 -> perfectly monotone.
    a = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = np.array([[3.0, 0.0], [0.0, 4.0], [-1.0, 0.0]])
    out = sts_scores(a, b, [5.0, 3.0, 1.0])
    assert out["cosine_spearman"] == pytest.approx(1.0)
    assert out["cosine_pearson"] == pytest.approx(1.0)  # cosines 1,0,-1 vs 5,3,1 are linear
    with pytest.raises(ValueError, match="gold scores"):
        sts_scores(a, b, [1.0, 2.0])


# ------------------------------------------------------------------------ bitext mining


def test_bitext_hand_case() -> None:
    # gold 0 1 2 3 ; predictions 0 0 2 2. Per class c (support 1 each, weight 1/4):
    #   P: c0 = 1/2 (predicted twice, once right), c1 = 0 (never predicted), c2 = 1/2, c3 = 0
    #   R: c0 = 1, c1 = 0, c2 = 1, c3 = 0     F: c0 = 2*.5*1/1.5 = 2/3, c2 = 2/3, others 0
    #   precision = (1/2 + 1/2)/4 = 0.25 ; recall = 2/4 = 0.5 ; f1 = (4/3)/4 = 1/3 ; accuracy 0.5
    out = bitext_scores_from_predictions([0, 0, 2, 2], [0, 1, 2, 3])
    assert out == pytest.approx({"accuracy": 0.5, "precision": 0.25, "recall": 0.5, "f1": 1 / 3})


def test_bitext_matches_sklearn_weighted_scores() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 30, size=120)  # repeated gold classes (BUCC-like) ...
    pred = np.where(rng.random(120) < 0.6, gold, rng.integers(0, 40, size=120))  # ... and unseen ones
    ours = bitext_scores_from_predictions(pred, gold)
    kw = {"average": "weighted", "zero_division": 0}
    assert ours["precision"] == pytest.approx(sk.precision_score(gold, pred, **kw))
    assert ours["recall"] == pytest.approx(sk.recall_score(gold, pred, **kw))
    assert ours["f1"] == pytest.approx(sk.f1_score(gold, pred, **kw))
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(gold, pred))


def test_bitext_scores_mine_nearest_target() -> None:
    # Source 2 is closest to target 0, so target 0 attracts two sources (precision drops).
    src = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0]])
    tgt = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = bitext_scores(src, tgt)
    # predictions 0 1 0 vs gold 0 1 2: accuracy 2/3 ; P = (1/2 + 1 + 0)/3 = 0.5
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["precision"] == pytest.approx(0.5)
    assert bitext_scores(tgt, tgt)["f1"] == 1.0
