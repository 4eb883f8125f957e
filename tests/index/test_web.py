"""The index's HTTP side on a real uvicorn server on 127.0.0.1, talked to by a real HTTP client."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from embeddinggemma.index import IndexOptions, Searcher, index_folder  # noqa: E402
from embeddinggemma.index.web import create_app  # noqa: E402


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def index_searcher(sample_folder, tmp_path, tiny_embedder) -> Iterator[Searcher]:
    """The sample folder indexed with the tiny model, open for search."""
    db = tmp_path / "index.db"
    index_folder(sample_folder, db, tiny_embedder, model="tiny", options=IndexOptions(), show_progress=False)
    with Searcher(db, tiny_embedder) as searcher:
        yield searcher


@pytest.fixture
def index_server(index_searcher) -> Iterator[str]:
    """The index's own app, served on a free port."""
    with serving(create_app(index_searcher)) as url:
        yield url


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_search_endpoint_answers_like_the_library(index_server, tmp_path, tiny_embedder):
    status, body = _post(f"{index_server}/search", {"query": "close the file", "k": 3, "mode": "bm25"})
    assert status == 200
    first = body["results"][0]
    assert set(first) == {"path", "line", "title", "snippet", "score"}
    assert (first["path"], first["line"], first["title"]) == ("files.rst", 9, "files.rst: Files")
    for mode in ("dense", "hybrid"):
        status, body = _post(f"{index_server}/search", {"query": "the red planet", "k": 2, "mode": mode})
        with Searcher(tmp_path / "index.db", tiny_embedder) as searcher:
            expected = [r.to_json() for r in searcher.search("the red planet", k=2, mode=mode)]
        assert status == 200 and body["results"] == expected


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"query": "", "k": 3}, 422),
        ({"query": "x", "k": 0}, 422),
        ({"query": "x", "k": 3, "mode": "fuzzy"}, 422),
        ({"query": "   ", "k": 3}, 400),
        ({"query": "x", "task": "no-such-task"}, 400),
    ],
)
def test_bad_requests(index_server, body, status):
    got, answer = _post(f"{index_server}/search", body)
    assert got == status and "detail" in answer


def test_page_is_served(index_server):
    with urllib.request.urlopen(f"{index_server}/", timeout=30) as response:
        html = response.read().decode()
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="query"' in html and 'fetch("search"' in html
