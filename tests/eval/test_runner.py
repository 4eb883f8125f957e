"""The runner end to end with a hashing bag-of-words embedder on tiny hand-made tasks."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma.eval.data import TaskSpec, write_jsonl
from embeddinggemma.eval.report import compare_results, results_markdown
from embeddinggemma.eval.runner import (
    EmbeddingCache,
    evaluate_suite,
    evaluate_task,
    load_results,
)

WIDTH = 64


class HashingEmbedder:
    """Deterministic bag of words: each word adds +1 to a hashed coordinate; rows L2-normalised.
    Records every call so tests can check prompts, titles and how often texts are encoded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, list[str], list[str | None] | None]] = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), WIDTH), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % WIDTH] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def encode_query(self, texts, *, task="query", dim=None, batch_size=32, show_progress=False, output="numpy"):
        self.calls.append(("query", task, list(texts), None))
        return self._embed(texts)

    def encode_document(self, texts, *, titles=None, dim=None, batch_size=32, show_progress=False, output="numpy"):
        self.calls.append(("document", None, list(texts), titles))
        return self._embed([f"{t or ''} {x}" for t, x in zip(titles or [None] * len(texts), texts, strict=True)])

    def encode(self, texts, *, task=None, dim=None, batch_size=32, show_progress=False, output="numpy"):
        self.calls.append(("symmetric", task, list(texts), None))
        return self._embed(texts)


DOCS = [
    {"_id": "mars", "title": "Mars", "text": "the red planet has two small moons phobos deimos"},
    {"_id": "venus", "text": "venus is the hottest planet with thick clouds"},
    {"_id": "jupiter", "text": "jupiter is a gas giant with a great red spot storm"},
    {"_id": "saturn", "text": "saturn has bright rings of ice"},
]
QUERIES = [
    {"_id": "q1", "text": "moons phobos deimos", "subset": "en"},
    {"_id": "q2", "text": "hottest thick clouds", "subset": "en"},
    {"_id": "q3", "text": "rings of ice", "subset": "xx"},
    {"_id": "q4", "text": "unjudged query"},
]
QRELS = [
    {"query-id": "q1", "corpus-id": "mars", "score": 1},
    {"query-id": "q2", "corpus-id": "venus", "score": 2},
    {"query-id": "q3", "corpus-id": "saturn", "score": 1},
]


def _retrieval_task(root: Path, name: str, query_task: str = "code_retrieval") -> TaskSpec:
    write_jsonl(root / "corpus.jsonl", DOCS)
    write_jsonl(root / "queries.jsonl", QUERIES)
    write_jsonl(root / "qrels.jsonl", QRELS)
    spec = TaskSpec(
        name=name, kind="retrieval", root=root, query_task=query_task,
        files={"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"},
    )  # fmt: skip
    spec.save()
    return spec


def _suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite"
    _retrieval_task(suite / "a-retrieval", "a-retrieval")
    _retrieval_task(suite / "b-retrieval", "b-retrieval")  # same corpus: must be encoded once
    write_jsonl(
        suite / "sts" / "pairs.jsonl",
        [
            {"sentence1": "red planet moons", "sentence2": "red planet moons", "score": 5.0},
            {"sentence1": "gas giant storm", "sentence2": "giant storm of gas clouds", "score": 3.0},
            {"sentence1": "rings of ice", "sentence2": "hottest thick clouds", "score": 0.0},
        ],
    )
    TaskSpec(name="sts", kind="sts", root=suite / "sts", files={"pairs": "pairs.jsonl"}).save()
    write_jsonl(
        suite / "bitext" / "pairs.jsonl",
        [
            {"source": "rote planet monde", "target": "red planet moons", "subset": "de-en"},
            {"source": "ringe aus eis ice", "target": "rings of ice", "subset": "de-en"},
            {"source": "lune rouge moons", "target": "red planet moons", "subset": "fr-en"},
            {"source": "anneaux ice", "target": "rings of ice", "subset": "fr-en"},
        ],
    )
    TaskSpec(name="bitext", kind="bitext", root=suite / "bitext", files={"pairs": "pairs.jsonl"}).save()
    return suite


def test_retrieval_task_scores_prompts_and_subsets(tmp_path: Path) -> None:
    emb = HashingEmbedder()
    spec = _retrieval_task(tmp_path / "t", "t")
    res = evaluate_task(emb, spec, dims=[WIDTH, 16])
    full = res["dims"]["64"]["scores"]
    # Each judged query shares its rare words with exactly its document: perfect at full width.
    assert full["ndcg_at_10"] == 1.0
    assert full["main_score"] == 1.0
    assert full["num_queries"] == 3.0
    assert res["num_queries"] == 3
    assert res["num_documents"] == 4
    assert set(res["dims"]) == {"64", "16"}
    assert set(res["dims"]["64"]["subsets"]) == {"en", "xx"}
    # One encoding pass per side, at full width, whatever the number of dims.
    kinds = [(c[0], c[1]) for c in emb.calls]
    assert kinds == [("document", None), ("query", "code_retrieval")]
    assert emb.calls[1][2] == ["moons phobos deimos", "hottest thick clouds", "rings of ice"]  # q4 unjudged
    assert emb.calls[0][3] == ["Mars", None, None, None]  # titles passed through


def test_suite_shares_encodings_and_writes_json(tmp_path: Path) -> None:
    emb = HashingEmbedder()
    out = tmp_path / "results" / "run.json"
    res = evaluate_suite(emb, _suite(tmp_path), dims=[64, 32], out=out, model_name="hash-bow", show_progress=False)
    assert set(res["tasks"]) == {"a-retrieval", "b-retrieval", "sts", "bitext"}
    assert res["dims"] == [64, 32]
    # a- and b-retrieval share their corpus: it is encoded once for the suite.
    documents_encoded = sum(len(c[2]) for c in emb.calls if c[0] == "document")
    assert documents_encoded == len(DOCS)
    assert res["encoding"]["cache_hits"] > 0
    sts = res["tasks"]["sts"]["dims"]["64"]["scores"]
    assert sts["cosine_spearman"] == pytest.approx(1.0)  # cosines 1 > partial overlap > 0, as the gold
    bitext = res["tasks"]["bitext"]["dims"]["64"]
    assert set(bitext["subsets"]) == {"de-en", "fr-en"}
    assert bitext["scores"]["f1"] == 1.0
    assert [c[1] for c in emb.calls if c[0] == "symmetric"] == [
        "bitext",
        "bitext",
        "sts",
        "sts",
    ]  # task order
    on_disk = load_results(out)
    assert on_disk["model"] == "hash-bow"
    assert on_disk["tasks"]["sts"]["kind"] == "sts"
    assert on_disk["mean_main_score"]["64"] == pytest.approx(
        np.mean([t["dims"]["64"]["scores"]["main_score"] for t in on_disk["tasks"].values()])
    )
    table = results_markdown(on_disk)
    assert "### hash-bow @ dim 64" in table
    assert "| a-retrieval / en |" in table


def test_suite_task_filter_and_bad_dims(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        evaluate_suite(HashingEmbedder(), suite, tasks=["nope"], show_progress=False)
    with pytest.raises(ValueError, match=r"not in 1\.\.64"):
        evaluate_suite(HashingEmbedder(), suite, tasks=["sts"], dims=[128], show_progress=False)
    res = evaluate_suite(HashingEmbedder(), suite, tasks=["sts"], show_progress=False)
    assert list(res["tasks"]) == ["sts"]
    assert res["dims"] == [64]


def test_qrels_are_validated_before_encoding(tmp_path: Path) -> None:
    spec = _retrieval_task(tmp_path / "t", "t")
    write_jsonl(spec.path("qrels"), [*QRELS, {"query-id": "q1", "corpus-id": "pluto", "score": 1}])
    emb = HashingEmbedder()
    with pytest.raises(ValueError, match="'pluto'"):
        evaluate_task(emb, spec)
    assert emb.calls == []


def test_cache_rejects_wrong_row_count() -> None:
    class Broken(HashingEmbedder):
        def encode(self, texts, **kwargs):
            return np.zeros((len(texts) + 1, 4), np.float32)

    with pytest.raises(ValueError, match="returned 3 rows for 2 texts"):
        EmbeddingCache(Broken()).symmetric(["a", "b"], "sts")


def test_compare_results_side_by_side(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    a = evaluate_suite(
        HashingEmbedder(), suite, dims=[64, 32], out=tmp_path / "a.json", model_name="A", show_progress=False
    )
    b = evaluate_suite(
        HashingEmbedder(), suite, dims=[64], tasks=["sts", "bitext"], out=tmp_path / "b.json", model_name="B",
        show_progress=False,
    )  # fmt: skip
    table = compare_results([tmp_path / "a.json", tmp_path / "b.json"])
    lines = table.splitlines()
    assert lines[0] == "| task / metric @ dim | A | B |"
    sts_row = next(ln for ln in lines if ln.startswith("| sts / cosine_spearman @ 64 |"))
    assert sts_row.count("100.00") == 2
    a_only = next(ln for ln in lines if ln.startswith("| a-retrieval / ndcg_at_10 @ 32 |"))
    assert a_only.endswith("| – |")  # B has no such task/dim
    # Means over the tasks both runs have (sts, bitext), per dim.
    mean64 = next(ln for ln in lines if "mean main score (2 tasks) @ 64" in ln)
    expected = np.mean([a["tasks"][t]["dims"]["64"]["scores"]["main_score"] for t in ("sts", "bitext")]) * 100
    assert f"{expected:.2f}" in mean64
    assert b["dims"] == [64]
    full = compare_results([a, b], labels=["x", "y"], all_metrics=True, dims=[64])
    assert "| a-retrieval / recall_at_100 @ 64 |" in full
    assert "@ 32" not in full
    # Same model name twice: the file names disambiguate the columns; subsets get their own rows.
    evaluate_suite(HashingEmbedder(), suite, dims=[64], tasks=["bitext"], out=tmp_path / "c.json", model_name="A",
                   show_progress=False)  # fmt: skip
    by_lang = compare_results([tmp_path / "a.json", tmp_path / "c.json"], subsets=True).splitlines()
    assert by_lang[0] == "| task / metric @ dim | A (a) | A (c) |"
    assert any(ln.startswith("| bitext / fr-en / f1 @ 64 | 100.00 | 100.00 |") for ln in by_lang)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not an embeddinggemma results file"):
        compare_results([bad])


def test_quantized_embedding_variants(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    emb = HashingEmbedder()
    res = evaluate_suite(
        emb, suite, dims=[64, 32], precisions=["float32", "int8", "binary"], out=tmp_path / "q.json",
        model_name="hash-bow", show_progress=False,
    )  # fmt: skip
    keys = ["64", "64/int8", "64/binary", "32", "32/int8", "32/binary"]
    assert res["dims"] == [64, 32] and res["embedding_precisions"] == ["float32", "int8", "binary"]
    for task in res["tasks"].values():
        assert list(task["dims"]) == keys
    assert list(res["mean_main_score"]) == keys
    # Still one encoding pass: quantization happens on the cached float embeddings.
    assert sum(len(c[2]) for c in emb.calls if c[0] == "document") == len(DOCS)
    # Bag-of-words vectors are non-negative: binary keeps the word sets, int8 the weights; both still
    # put every judged query's own document first.
    for key in ("64/int8", "64/binary"):
        assert res["tasks"]["a-retrieval"]["dims"][key]["scores"]["ndcg_at_10"] == 1.0
    float_only = evaluate_suite(emb, suite, dims=[64], show_progress=False)
    assert float_only["tasks"]["sts"]["dims"]["64"] == res["tasks"]["sts"]["dims"]["64"]
    table = compare_results([tmp_path / "q.json"], all_metrics=False, dims=[64])
    assert "| a-retrieval / ndcg_at_10 @ 64/binary |" in table
    assert "@ 32" not in table
    assert "### hash-bow @ dim 64/int8" in results_markdown(load_results(tmp_path / "q.json"))
    with pytest.raises(ValueError, match=r"\['int4'\] are not in"):
        evaluate_task(emb, _retrieval_task(tmp_path / "t", "t"), precisions=["int4"])
