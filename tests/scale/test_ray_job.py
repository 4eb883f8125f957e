"""End to end as users run it on a cluster: `ray start --head`, then `ray job submit -- embeddinggemma embed-dataset`.

The first job's driver is killed (SIGKILL) mid-job; a second submission of the same command resumes: it
skips the finished blocks, and the output holds every row exactly once with the values `Embedder.encode`
gives. The cluster is this test's own (private temp dir, free ports, its own auth token) and is stopped
by process id at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import MAX_TOKENS, make_texts, write_parquet_files

from embeddinggemma import Embedder

pytest.importorskip("ray")
pytest.importorskip("aiohttp", reason="ray job submit needs the job server of ray[default]")
pytestmark = pytest.mark.filterwarnings("ignore:dim=16 is not one of the trained")

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            table[int(entry)] = (parent, command)
    return table


def _matching(*needles: str) -> list[int]:
    return [pid for pid, (_, command) in _processes().items() if all(n in command for n in needles)]


def _stop_cluster(temp_dir: str) -> None:
    """SIGTERM, then SIGKILL, this cluster's processes (their command lines name its temp dir) and their children."""
    table = _processes()
    roots = [pid for pid, (_, command) in table.items() if temp_dir in command]
    pids, stack = set(roots), list(roots)
    while stack:
        parent = stack.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in pids]
        pids.update(children)
        stack.extend(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds nothing
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="egray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = _free_ports(9)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # as a real cluster should run; this cluster's own token
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    start = [
        RAY,
        "start",
        "--head",
        f"--temp-dir={temp_dir}",
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        "--num-cpus=2",
        f"--object-store-memory={96 * 2**20}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, text=True, timeout=240)
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard}"}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job(ray_head, job_id: str, command: list[str], *, wait: bool) -> subprocess.CompletedProcess:
    submit = [RAY, "job", "submit", "--address", ray_head["address"], "--submission-id", job_id]
    return subprocess.run(
        [*submit, *([] if wait else ["--no-wait"]), "--", *command],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_job_submit_driver_killed_then_resumed(ray_head, tiny_st_dir, tmp_path):
    texts = make_texts(240, seed=31, longest=12)
    rows = [{"id": i, "text": t, "title": None} for i, t in enumerate(texts)]
    write_parquet_files(tmp_path / "in", rows, files=2, row_group_size=4)  # 60 blocks of 4 rows
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "embeddinggemma.cli",
        "embed-dataset",
        str(tmp_path / "in"),
        str(output),
        f"--model={tiny_st_dir}",
        f"--max-seq-length={MAX_TOKENS}",
        "--rows-per-block=4",
        "--dims",
        "40",
        "16",
        "--batch-size=8",
        "--workers=2",
    ]

    first = _job(ray_head, "embed-first", command, wait=False)
    assert first.returncode == 0, first.stdout + first.stderr
    _wait_for(lambda: any(output.glob("part-*.parquet")), 300, "the first job's first block")
    drivers = _matching("embed-dataset", str(output))
    assert drivers, "the driver process of the first job was not found"
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    done_at_kill = len(list(output.glob("part-*.parquet")))
    assert done_at_kill < 60  # killed mid-job

    def first_job_ended() -> bool:
        status = subprocess.run(
            [RAY, "job", "status", "--address", ray_head["address"], "embed-first"],
            env=ray_head["env"],
            capture_output=True,
            text=True,
        )
        return bool(re.search(r"Job 'embed-first' (failed|stopped|succeeded)", status.stdout + status.stderr))

    _wait_for(first_job_ended, 120, "the killed job to be marked ended")

    second = _job(ray_head, "embed-second", command, wait=True)
    logs = second.stdout + second.stderr
    assert second.returncode == 0, logs[-4000:]
    assert "MapBatches(_BlockWorker)" in logs  # Ray Data's progress report
    assert re.search(r"embedded \d+/60 blocks \(\d+ rows, \d+ rows/s, \d+ tokens/s\)", logs)  # the job's own
    skipped = int(re.search(r"(\d+) of 60 blocks were done before", logs).group(1))
    assert done_at_kill <= skipped < 60

    parts = sorted(output.glob("part-*.parquet"))
    assert len(parts) == 60
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert table.column("id").to_pylist() == list(range(240))  # every row exactly once, in input order
    assert json.loads((output / "_SUCCESS").read_text())["embedded"] == 240
    assert list((output / "_tmp").iterdir()) == []
    reference = Embedder.from_pretrained(tiny_st_dir, device="cpu", max_seq_length=MAX_TOKENS)
    for part in parts[:: len(parts) // 6]:  # blocks of both jobs, bit-exact
        piece = pq.read_table(part)
        chosen = [texts[i] for i in piece.column("id").to_pylist()]
        for dim in (40, 16):
            values = np.asarray(piece.column(f"embedding_{dim}").to_pylist(), dtype=np.float32)
            assert np.array_equal(values, reference.encode_document(chosen, dim=dim, batch_size=8)), part.name
