"""Training examples on disk, prompting, text ids and batches (embeddinggemma.train.data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embeddinggemma.train.data import (
    DataFormatError,
    DatasetSpec,
    PromptedExample,
    TrainingExample,
    collate,
    load_dataset,
    prompt_example,
    read_examples,
    text_id,
    text_ids,
    write_dataset,
)


def _write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


PINNED_ID, PINNED_EMPTY_ID = 6765399348377758515, 3797230976420062948
GOOD = {"query": "q", "positive": "p", "negatives": ["n1"], "title": None}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"positive": "p"}, "missing field 'query'"),
        ({"query": "q", "positive": 3}, "field 'positive' must be a string, got int"),
        ({"query": "q", "positive": "  "}, "field 'positive' is empty"),
        ({"query": "q", "positive": "p", "negatives": "n"}, "'negatives' must be a list of strings"),
        ({"query": "q", "positive": "p", "negatives": ["n", 7]}, "negatives[1] must be a non-empty string, got int"),
        ({"query": "q", "positive": "p", "title": ["t"]}, "'title' must be a string or null"),
        ({"query": "q", "positive": "p", "negatives": ["a", "b"], "negative_titles": ["t"]}, "one entry"),
        ({"query": "q", "positive": "p", "postive": "typo"}, "unknown field(s) ['postive']"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_validation_errors_name_file_and_line(tmp_path: Path, bad: object, message: str) -> None:
    path = _write_lines(tmp_path / "x.jsonl", [GOOD, "", bad])
    with pytest.raises(DataFormatError) as err:
        read_examples(path)
    assert str(err.value).startswith(f"{path}:3: ")  # the blank line 2 counts as a line
    assert message in str(err.value)


def test_example_roundtrip_and_optional_fields(tmp_path: Path) -> None:
    examples = [
        TrainingExample("q1", "p1", ("n1", "n2"), "T", ("A", None), id="7", meta={"source_ids": ["x:1"]}),
        TrainingExample("q2", "p2"),
    ]
    spec = write_dataset(tmp_path / "d", examples, name="d", task="query", source="unit test")
    assert spec.num_examples == 2 and len(spec.sha256) == 64
    loaded = load_dataset(tmp_path / "d")
    assert loaded.path == spec.path and loaded.task == "query" and loaded.source == "unit test"
    assert read_examples(loaded.path) == examples
    second = json.loads(spec.path.read_text().splitlines()[1])
    assert second == {"query": "q2", "positive": "p2", "negatives": [], "title": None}  # no empty optionals
    with pytest.raises(TypeError, match="negatives must be a sequence of strings"):
        TrainingExample("q", "p", "a string is not a list of negatives")  # type: ignore[arg-type]


def test_descriptor_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no dataset descriptor"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        DatasetSpec(name="x", task="nope", path=tmp_path / "x.jsonl", num_examples=1)
    spec = write_dataset(tmp_path / "d", [TrainingExample("q", "p")], name="d", task="query")
    spec.path.unlink()
    with pytest.raises(FileNotFoundError, match="examples file"):
        load_dataset(tmp_path / "d")


def test_prompts_per_task() -> None:
    ex = TrainingExample("find it", "the doc", ("neg a", "neg b"), "Doc Title", ("Neg Title", None))
    p = prompt_example(ex, "query")
    assert p.query == "task: search result | query: find it"
    assert p.positive == "title: Doc Title | text: the doc"
    assert p.negatives == ("title: Neg Title | text: neg a", "title: none | text: neg b")
    code = prompt_example(TrainingExample("sort a list", "def f(): ..."), "code_retrieval")
    assert code.query == "task: code retrieval | query: sort a list"
    assert code.positive == "title: none | text: def f(): ..."
    qa = prompt_example(ex, "question_answering")
    assert qa.query.startswith("task: question answering | query: ") and qa.positive.startswith("title: Doc Title")
    # Symmetric tasks: both sides get the task prompt, titles do not apply.
    sts = prompt_example(ex, "sts")
    assert sts.positive == "task: sentence similarity | query: the doc"
    assert sts.negatives[1] == "task: sentence similarity | query: neg b"
    bitext = prompt_example(TrainingExample("hallo welt", "hello world"), "bitext")
    assert bitext.query == "task: search result | query: hallo welt"
    assert bitext.positive == "task: search result | query: hello world"
    # The descriptor can override symmetry.
    assert prompt_example(ex, "query", symmetric=True).positive == "task: search result | query: the doc"


def test_text_ids_stable_equal_and_distinct() -> None:
    texts = ["title: none | text: a", "title: none | text: a", "title: none | text: b", "task: x | query: a"]
    ids = text_ids(texts)
    assert ids.dtype == torch.long and ids[0] == ids[1]
    assert len(set(ids.tolist())) == 3 and all(0 < i < 2**63 for i in ids.tolist())
    # Stable across processes and machines (blake2b, no PYTHONHASHSEED dependence): pinned values.
    assert text_id("title: none | text: a") == PINNED_ID
    assert text_id("") == PINNED_EMPTY_ID


def test_collate_pads_hard_negatives_and_slices() -> None:
    rows = [
        PromptedExample("q0", "p0", ("n0a", "n0b")),
        PromptedExample("q1", "p1", ()),
        PromptedExample("q2", "p0", ("n2a",)),
    ]
    batch = collate(rows, dataset="d", task="query", num_hard_negatives=2)
    assert batch.hard_negative_mask.tolist() == [[True, True], [False, False], [True, False]]
    assert batch.hard_negative_ids[1].tolist() == [0, 0] and batch.hard_negative_ids[2, 1] == 0
    assert batch.hard_negative_ids[0, 0] == text_id("n0a")
    assert batch.positive_ids[0] == batch.positive_ids[2] != batch.positive_ids[1]  # same text, same id
    assert batch.num_hard_negatives == 2 and len(batch) == 3
    batch.teacher = {
        "queries": torch.arange(6.0).view(3, 2),
        "positives": torch.zeros(3, 2),
        "hard_negatives": torch.zeros(3, 2, 2),
    }
    part = batch.slice(1, 3)
    assert part.query_texts == ["q1", "q2"] and part.hard_negative_texts == [[], ["n2a"]]
    assert part.hard_negative_mask.shape == (2, 2) and part.teacher["queries"].tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert part.dataset == "d" and part.task == "query"
    with pytest.raises(ValueError, match="outside the batch"):
        batch.slice(2, 4)
    with pytest.raises(ValueError, match="more than H=1"):
        collate(rows, dataset="d", task="query", num_hard_negatives=1)
    in_batch_only = collate([PromptedExample("q", "p", ())], dataset="d", task="query", num_hard_negatives=0)
    assert in_batch_only.hard_negative_ids.shape == (1, 0) and in_batch_only.hard_negative_mask.shape == (1, 0)
