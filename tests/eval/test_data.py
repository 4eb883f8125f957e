"""Loaders accept the BEIR formats and reject broken files with file:line messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embeddinggemma.eval.data import (
    DataFormatError,
    Document,
    Query,
    TaskSpec,
    load_bitext,
    load_corpus,
    load_qrels,
    load_queries,
    load_sts,
    load_task,
    write_jsonl,
)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corpus_queries_and_qrels_round_trip(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "Mars", "text": "red"}, {"_id": 7, "text": "x"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "which planet", "subset": "en"}])
    write_jsonl(tmp_path / "qrels.jsonl", [{"query-id": "q1", "corpus-id": "d1", "score": 2}])
    assert load_corpus(tmp_path / "corpus.jsonl") == [Document("d1", "red", "Mars"), Document("7", "x", None)]
    assert load_queries(tmp_path / "queries.jsonl") == [Query("q1", "which planet", "en")]
    assert load_qrels(tmp_path / "qrels.jsonl") == {"q1": {"d1": 2}}


def test_beir_tsv_qrels(tmp_path: Path) -> None:
    path = _write(tmp_path / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t0", "q2\td1\t2"])
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}
    bad = _write(tmp_path / "bad.tsv", ["qid\tdid\tscore", "q1\td1\t1"])
    with pytest.raises(DataFormatError, match=r"bad.tsv:1: expected the header"):
        load_qrels(bad)
    short = _write(tmp_path / "short.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2 d1 1"])
    with pytest.raises(DataFormatError, match=r"short.tsv:3: expected 3 tab-separated"):
        load_qrels(short)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            ['{"_id": "d1", "text": "a"}', '{"_id": "d1", "text": "b"}'],
            r"corpus.jsonl:2: duplicate _id 'd1' \(first on line 1\)",
        ),
        (['{"_id": "d1"}'], r"corpus.jsonl:1: missing field 'text'"),
        (['{"_id": "d1", "text": 5}'], r"corpus.jsonl:1: field 'text' must be a string, got int"),
        (['{"_id": "d1", "text": "  "}'], r"corpus.jsonl:1: field 'text' is empty"),
        (['{"_id": "d1", "text": "a", "title": ["x"]}'], r"corpus.jsonl:1: field 'title' must be a string"),
        (['{"_id": "d1", "text": "a"}', "{not json"], r"corpus.jsonl:2: invalid JSON"),
        (["[1, 2]"], r"corpus.jsonl:1: expected a JSON object"),
        ([""], r"corpus.jsonl: the corpus is empty"),
    ],
)
def test_corpus_errors_point_at_the_line(tmp_path: Path, lines: list[str], match: str) -> None:
    with pytest.raises(DataFormatError, match=match):
        load_corpus(_write(tmp_path / "corpus.jsonl", lines))


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ('{"query-id": "q1", "corpus-id": "d1", "score": 0.5}', "not an integer grade"),
        ('{"query-id": "q1", "corpus-id": "d1", "score": "high"}', "not a number"),
        ('{"query-id": "q1", "corpus-id": "d1"}', "missing field 'score'"),
        ('{"query-id": "q1", "score": 1}', "missing field 'corpus-id'"),
    ],
)
def test_qrels_errors(tmp_path: Path, row: str, match: str) -> None:
    with pytest.raises(DataFormatError, match=rf"qrels.jsonl:1: .*{match}"):
        load_qrels(_write(tmp_path / "qrels.jsonl", [row]))


def test_duplicate_judgement_is_an_error(tmp_path: Path) -> None:
    row = '{"query-id": "q1", "corpus-id": "d1", "score": 1}'
    with pytest.raises(DataFormatError, match=r"qrels.jsonl:2: duplicate judgement"):
        load_qrels(_write(tmp_path / "qrels.jsonl", [row, row]))


def test_sts_and_bitext(tmp_path: Path) -> None:
    sts = _write(
        tmp_path / "sts.jsonl",
        [
            '{"sentence1": "a", "sentence2": "b", "score": 4}',
            '{"sentence1": "c", "sentence2": "d", "score": 0.5}',
        ],
    )
    assert [p.score for p in load_sts(sts)] == [4.0, 0.5]
    with pytest.raises(DataFormatError, match=r"sts.jsonl:1: 'score' must be a finite number"):
        load_sts(_write(tmp_path / "sts.jsonl", ['{"sentence1": "a", "sentence2": "b", "score": "x"}'] * 2))
    bitext = _write(
        tmp_path / "bitext.jsonl",
        [
            '{"source": "Hallo", "target": "hello", "subset": "de-en"}',
            '{"source": "Bonjour", "target": "hello", "subset": "fr-en"}',  # same target, other subset: fine
        ],
    )
    assert [p.subset for p in load_bitext(bitext)] == ["de-en", "fr-en"]
    dup = _write(tmp_path / "dup.jsonl", ['{"source": "a", "target": "t"}', '{"source": "b", "target": "t"}'])
    with pytest.raises(DataFormatError, match=r"dup.jsonl:2: target repeated"):
        load_bitext(dup)


def test_task_spec_round_trip_and_validation(tmp_path: Path) -> None:
    files = {"corpus": "c.jsonl", "queries": "q.jsonl", "qrels": "r.tsv"}
    spec = TaskSpec(name="t", kind="retrieval", root=tmp_path, files=files, license="MIT", stats={"queries": 3})
    assert spec.query_task == "query"
    assert spec.main_metric == "ndcg_at_10"
    spec.save()
    loaded = load_task(tmp_path)
    assert loaded == spec
    assert json.loads((tmp_path / "task.json").read_text())["files"]["qrels"] == "r.tsv"
    assert TaskSpec(name="b", kind="bitext", root=tmp_path, files={"pairs": "p"}).query_task == "bitext"
    with pytest.raises(ValueError, match=r"needs files \['qrels'\]"):
        TaskSpec(name="x", kind="retrieval", root=tmp_path, files={"corpus": "c", "queries": "q"})
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskSpec(name="x", kind="clustering", root=tmp_path, files={})  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="not a task directory"):
        load_task(tmp_path / "nope")
