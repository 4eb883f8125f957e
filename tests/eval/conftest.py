"""Shared pieces of the evaluation tests (markers are registered in pyproject.toml).

``tiny_suite`` writes a small suite in our on-disk format with every task kind the runner knows
(retrieval with titles and language subsets, STS, bitext with two language pairs), using only words
of the tiny model's vocabulary so that its embeddings are not all ``<unk>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from embeddinggemma.eval.data import TaskSpec, write_jsonl

_TOPICS = [
    ("mars", "Mars", "mars is the red planet known as a small fast planet"),
    ("venus", None, "venus is a big slow planet with a thick first line"),
    ("python", "Python", "python code with a function that returns a sorted list"),
    ("files", None, "open a file and read the first line then close the file"),
    ("write", "Write", "write a string to a file and close it fast"),
    ("keys", None, "sort the key and value of a list with a function"),
    ("errors", "Error", "an error in the last line of the python code"),
    ("numbers", None, "a number is big or small and the first number is last"),
    ("words", None, "a word in a sentence is a string of text"),
    ("search", "Search", "search result for a query on the planet mars"),
]
_QUERIES = [
    ("q-mars", "which planet is known as the red planet", "mars", "en"),
    ("q-venus", "big slow planet", "venus", "en"),
    ("q-python", "function returns sorted list", "python", "xx"),
    ("q-files", "read the first line of a file", "files", "xx"),
    ("q-write", "write string to file", "write", "en"),
    ("q-keys", "sort key value", "keys", "xx"),
    ("q-errors", "python error line", "errors", "en"),
    ("q-words", "word of a sentence", "words", "xx"),
]
_STS = [
    ("the red planet", "mars is the red planet", 4.5),
    ("a big file", "a small file", 2.0),
    ("read a line", "write a line", 1.5),
    ("sort a list", "sort the list", 5.0),
    ("python code", "venus planet", 0.0),
    ("first word", "last word", 2.5),
]
_BITEXT = [
    ("mars red planet", "the red planet mars"),
    ("open file read", "open and read a file"),
    ("python list sort", "sort a python list"),
    ("error last line", "an error on the last line"),
    ("big number", "a big number"),
]


def write_tiny_suite(root: Path) -> list[TaskSpec]:
    """Write three task directories under ``root`` (no manifest: the runner finds ``task.json`` files)."""
    ret = root / "tiny-retrieval"
    write_jsonl(ret / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in _TOPICS])
    write_jsonl(ret / "queries.jsonl", [{"_id": q, "text": x, "subset": s} for q, x, _, s in _QUERIES])
    write_jsonl(ret / "qrels.jsonl", [{"query-id": q, "corpus-id": d, "score": 1} for q, _, d, _ in _QUERIES])
    sts = root / "tiny-sts"
    write_jsonl(sts / "pairs.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in _STS])
    bitext = root / "tiny-bitext"
    rows = [{"source": s, "target": t, "subset": "de-en"} for s, t in _BITEXT]
    # Reversed word order: different texts (no tied embeddings), still in the tiny vocabulary.
    rows += [{"source": " ".join(reversed(s.split())), "target": t, "subset": "fr-en"} for s, t in _BITEXT]
    write_jsonl(bitext / "pairs.jsonl", rows)
    files = {"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"}
    specs = [
        TaskSpec(name="tiny-retrieval", kind="retrieval", root=ret, files=files, query_task="code_retrieval"),
        TaskSpec(name="tiny-sts", kind="sts", root=sts, files={"pairs": "pairs.jsonl"}),
        TaskSpec(name="tiny-bitext", kind="bitext", root=bitext, files={"pairs": "pairs.jsonl"}),
    ]
    for spec in specs:
        spec.save()
    return specs


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    root = tmp_path / "suite"
    write_tiny_suite(root)
    return root


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest):
    """Tiny-model tests run single-threaded: their matrices are a few dozen wide, so two OpenMP threads
    only add synchronisation, which on a shared, loaded 2-core machine costs ~15 ms per op (a 40x slower
    test). Real-weight tests keep the default."""
    import torch

    if request.node.get_closest_marker("real_weights") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_st_dir: Path):
    """Our Embedder on the tiny random checkpoint (fp32, CPU)."""
    from embeddinggemma import Embedder

    return Embedder.from_pretrained(tiny_st_dir, device="cpu", dtype="float32")
