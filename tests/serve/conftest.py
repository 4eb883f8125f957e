"""Live servers on 127.0.0.1 (uvicorn in a background thread, a random free port) around the tiny model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from embeddinggemma import Embedder

pytest.importorskip("fastapi", reason="the serve extra is not installed")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


@contextmanager
def _live_server(embedder: Embedder, *, extra_routers=(), searcher=None, **settings) -> Iterator[str]:
    """The real app under uvicorn on a loopback port; yields its base URL and drains it on exit."""
    import uvicorn

    from embeddinggemma.serve import ServeSettings, create_app
    from embeddinggemma.serve.cli import bind_socket

    settings.setdefault("model_name", "tiny")
    app = create_app(embedder, ServeSettings(**settings), extra_routers=extra_routers, searcher=searcher)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture(scope="session")
def live_server():
    """`with live_server(embedder, **settings) as url:` a server of its own for one test."""
    return _live_server


@pytest.fixture(scope="module")
def server(tiny_embedder) -> Iterator[str]:
    with _live_server(tiny_embedder) as url:
        yield url
