"""`serve --index`: the index's POST /search and page on the embedding server, queries embedded through its queue.

Live servers on 127.0.0.1 (in-process uvicorn, and the real `embeddinggemma serve` process) over an index built
by `embeddinggemma index` on the tiny model; answers must equal the offline `Searcher`'s.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embeddinggemma.cli import main

pytest.importorskip("pathspec", reason="the index extra is not installed")

from embeddinggemma.index import Searcher

from .test_cli_serve import _start

# words from the tiny model's vocabulary (tests/conftest.py)
FILES = {
    "planets.md": "# Planets\n\nThe red planet is mars.\n\n## Venus\n\nVenus is known as the big planet.\n",
    "files.rst": "Files\n=====\n\nOpen the file and read the line.\n\nWrite\n-----\n\nWrite the first word.\n",
    "code.py": 'def sort_list(value):\n    """Sort the list of number values."""\n    return sorted(value)\n',
    "notes.txt": "the small fast error\nthe slow big error\n",
}
QUERIES = [
    ("the red planet", "dense", 3),
    ("the red planet", "hybrid", 2),
    ("write the file", "dense", 5),
    ("sort the list", "hybrid", 4),
    ("close the file", "bm25", 3),
    ("a slow error", "dense", 1),
    ("which planet is known as big", "hybrid", 5),
    ("read a line", "dense", 2),
]


@pytest.fixture(scope="module")
def index_db(tmp_path_factory, tiny_st_dir) -> Path:
    root = tmp_path_factory.mktemp("docs")
    for name, text in FILES.items():
        (root / name).write_text(text, encoding="utf-8")
    db = root.parent / "docs.db"
    assert main(["index", str(root), "--db", str(db), "--model", str(tiny_st_dir), "--no-progress"]) == 0
    return db


def _embedded_texts(url: str) -> float:
    families = text_string_to_metric_families(httpx.get(url + "/metrics").text)
    return next(s.value for f in families for s in f.samples if s.name == "embeddinggemma_embedded_texts_total")


def _same_results(got: list[dict], expected: list[dict]) -> None:
    # batched with other queries, a query's embedding may differ from the offline one in the last float bits
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == [
        {k: v for k, v in r.items() if k != "score"} for r in expected
    ]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)


def test_search_goes_through_the_queue_and_equals_the_offline_searcher(live_server, tiny_embedder, index_db):
    with Searcher(index_db, tiny_embedder) as offline:
        expected = [[r.to_json() for r in offline.search(q, k=k, mode=m)] for q, m, k in QUERIES]
    with Searcher(index_db, tiny_embedder) as searcher, live_server(tiny_embedder, searcher=searcher) as url:
        before = _embedded_texts(url)
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(len(QUERIES)) as pool:
            answers = list(
                pool.map(lambda q: client.post("/search", json={"query": q[0], "mode": q[1], "k": q[2]}), QUERIES)
            )
        assert [a.status_code for a in answers] == [200] * len(QUERIES)
        for answer, want in zip(answers, expected, strict=True):
            assert want  # the index finds something for every query
            _same_results(answer.json()["results"], want)
        # every dense and hybrid query was embedded by the server's worker; BM25 needs no model
        assert _embedded_texts(url) - before == sum(m != "bm25" for _, m, _ in QUERIES)

        page = httpx.get(url + "/")
        assert page.headers["content-type"].startswith("text/html") and 'fetch("search"' in page.text
        assert httpx.post(url + "/v1/embeddings", json={"input": "the red planet"}).status_code == 200

        unknown_task = httpx.post(url + "/search", json={"query": "mars", "task": "no-such-task"})
        blank = httpx.post(url + "/search", json={"query": "   ", "mode": "dense"})
        assert unknown_task.status_code == 400 and "no-such-task" in unknown_task.json()["error"]["message"]
        assert blank.status_code == 400 and "empty" in blank.json()["error"]["message"]
        assert _embedded_texts(url) - before == sum(m != "bm25" for _, m, _ in QUERIES) + 1  # only the /v1 input


def test_search_needs_the_key_and_a_free_slot(live_server, tiny_embedder, index_db):
    with Searcher(index_db, tiny_embedder) as searcher:
        with live_server(tiny_embedder, searcher=searcher, api_keys=("k1",)) as url:
            assert httpx.post(url + "/search", json={"query": "mars"}).status_code == 401
            ok = httpx.post(url + "/search", json={"query": "mars"}, headers={"Authorization": "Bearer k1"})
            assert ok.status_code == 200 and ok.json()["results"]
        with live_server(tiny_embedder, searcher=searcher, max_concurrent_requests=1) as url:
            with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(16) as pool:
                answers = list(
                    pool.map(
                        lambda _: client.post("/search", json={"query": "the red planet", "mode": "dense"}), range(16)
                    )
                )
            statuses = {a.status_code for a in answers}
            assert statuses <= {200, 429} and 200 in statuses
            assert all(a.headers["Retry-After"] for a in answers if a.status_code == 429)


def test_serve_command_mounts_the_index(tiny_st_dir, tiny_embedder, index_db):
    process, url = _start(tiny_st_dir, "--index", str(index_db))
    try:
        got = httpx.post(url + "/search", json={"query": "the red planet", "k": 3, "mode": "hybrid"}, timeout=60)
        with Searcher(index_db, tiny_embedder) as offline:
            expected = [r.to_json() for r in offline.search("the red planet", k=3, mode="hybrid")]
        assert got.status_code == 200
        _same_results(got.json()["results"], expected)
    finally:
        process.terminate()
        assert process.wait(60) == 0


def test_serve_refuses_a_file_that_is_not_an_index_before_loading(tmp_path, capsys):
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a database", encoding="utf-8")
    assert main(["serve", "--model", "/nonexistent", "--index", str(bogus)]) == 2
    assert "is not an embeddinggemma index" in capsys.readouterr().err
    assert main(["serve", "--model", "/nonexistent", "--index", str(tmp_path / "missing.db")]) == 2
    assert "no index at" in capsys.readouterr().err
