"""`embeddinggemma serve` as a real process: it binds loopback by default, answers, and on SIGTERM finishes the
requests in flight and exits 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from embeddinggemma.cli import build_parser, main
from embeddinggemma.serve.cli import API_KEY_ENV, settings_from_args

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _start(model_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "embeddinggemma.cli", "serve", "--model", str(model_dir), "--port", "0", *extra],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            return process, found.group(1)
    raise AssertionError("the server did not start:\n" + "".join(lines))


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_st_dir):
    process, url = _start(tiny_st_dir, "--max-batch-tokens", "32")
    try:
        texts = [f"{'sort the list by key ' * 6}{i}" for i in range(256)]
        result: dict = {}

        def send() -> None:
            result["response"] = httpx.post(url + "/embed", json={"inputs": texts}, timeout=300)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while "embeddinggemma_queue_texts 0.0" in httpx.get(url + "/metrics").text:  # not queued yet
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        sender.join(300)
        assert result["response"].status_code == 200 and len(result["response"].json()) == 256
        assert process.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_defaults_bind_loopback_and_read_keys_from_the_environment(monkeypatch):
    args = build_parser().parse_args(["serve", "--api-key", "flag-key"])
    assert args.host == "127.0.0.1" and args.port == 8080
    monkeypatch.setenv(API_KEY_ENV, "env-1, env-2")
    settings = settings_from_args(args, "cpu")
    assert settings.api_keys == ("flag-key", "env-1", "env-2") and settings.max_batch_tokens == 2048
    assert (
        settings_from_args(build_parser().parse_args(["serve", "--default-task", "none"]), "cuda").default_task is None
    )


def test_taken_port_and_bad_limits_fail_in_one_line_before_loading(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "/nonexistent", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--model", "/nonexistent", "--max-batch-tokens", "0"]) == 2
    assert "max_batch_tokens (--max-batch-tokens) must be a positive integer" in capsys.readouterr().err


def test_quantize_serves_the_quantized_runtime_and_refuses_a_scheme_the_model_cannot_hold(
    tiny_st_dir, tmp_path, monkeypatch
):
    from embeddinggemma import Embedder

    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))  # the conversion cache; _start passes it on
    # int8-channel holds any shape; the tiny model's rows of 48 are not blocks of 32, so int8 (Q8_0) cannot
    process, url = _start(tiny_st_dir, "--quantize", "int8-channel")
    try:
        got = httpx.post(url + "/v1/embeddings", json={"input": ["red planet", "mars"]}, timeout=60)
        assert got.status_code == 200
        assert httpx.get(url + "/info").json()["engine"] == "OnnxRunner"
    finally:
        process.terminate()
        assert process.wait(60) == 0
    expected = Embedder.from_pretrained(tiny_st_dir, quantize="int8-channel").encode_query(["red planet", "mars"])
    np.testing.assert_allclose([d["embedding"] for d in got.json()["data"]], expected, atol=1e-5)

    command = [sys.executable, "-m", "embeddinggemma.cli", "serve", "--model", str(tiny_st_dir), "--port", "0"]
    refused = subprocess.run(
        [*command, "--quantize", "int8"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")},
        check=False,
    )
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and lines[-1].startswith("embeddinggemma serve: error:"), refused.stderr
    assert "int8-channel" in lines[-1]  # says what to use instead
