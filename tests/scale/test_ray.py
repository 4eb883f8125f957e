"""Embedding on a real local Ray cluster (in-process `ray.init`, 2 CPUs) with the tiny model.

One cluster for the module; every job starts its own pool of 2 actors, so the tests are few and each
checks much: bit-exact values, ids, bad-row reports, resume, and a worker killed mid-job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import MAX_TOKENS, corpus_rows, make_texts, write_jsonl, write_parquet_files

from embeddinggemma import Embedder
from embeddinggemma.vectors.codes import quantize_embeddings

pytest.importorskip("ray")
pytestmark = [
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.filterwarnings("ignore:dim=16 is not one of the trained"),
]


@pytest.fixture(scope="module")
def reference(tiny_st_dir):
    return Embedder.from_pretrained(tiny_st_dir, device="cpu", max_seq_length=MAX_TOKENS)


def _vectors(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size list column as (rows, width); null rows are zeros."""
    column = table.column(name).combine_chunks()
    width, dtype = column.type.list_size, column.type.value_type.to_pandas_dtype()
    return np.asarray([np.zeros(width) if v is None else v for v in column.to_pylist()], dtype=dtype)


def _read_parts(output) -> pa.Table:
    parts = sorted(output.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def _common(tiny_st_dir) -> dict:
    return dict(model=str(tiny_st_dir), max_seq_length=MAX_TOKENS, batch_size=8, num_cpus_per_worker=1, concurrency=2)


def test_embed_dataset_bit_exact_with_error_column(tiny_st_dir, reference):
    import ray.data

    from embeddinggemma.scale import embed_dataset

    texts: list = make_texts(40, seed=11, longest=12)
    texts[3], texts[17] = "", None
    ds = ray.data.from_items([{"key": f"k{i:02d}", "text": t} for i, t in enumerate(texts)], override_num_blocks=1)
    options = {**_common(tiny_st_dir), "concurrency": 1}  # one input block: one actor gets all of it
    out = embed_dataset(ds, id_column="key", task="query", dims=(40, 16), rows_per_batch=10, **options)
    table = pa.concat_tables(out.iter_batches(batch_format="pyarrow", batch_size=None)).sort_by("key")
    assert table.column("key").to_pylist() == [f"k{i:02d}" for i in range(40)]  # every row once, found by id
    errors = table.column("error").to_pylist()
    assert errors[3] == "text is empty" and errors[17] == "text is null, not a string"
    assert [i for i, e in enumerate(errors) if e] == [3, 17]
    # one Ray block, so the actor saw batches of 10 consecutive rows; Embedder.encode on each batch's good rows
    for dim in (40, 16):
        got = _vectors(table, f"embedding_{dim}")
        for start in range(0, 40, 10):
            good = [i for i in range(start, start + 10) if not errors[i]]
            expected = reference.encode([texts[i] for i in good], task="query", dim=dim, batch_size=8)
            assert np.array_equal(got[good], expected)


def test_embed_files_parquet_exactly_once_bit_exact_and_resume(tiny_st_dir, reference, tmp_path, caplog):
    from embeddinggemma.scale import embed_files

    rows = corpus_rows(120, seed=2)  # null and blank texts, and over-long ones (more than 24 tokens)
    write_parquet_files(tmp_path / "in", rows, files=2, row_group_size=8)
    output = tmp_path / "out"
    caplog.set_level("INFO", logger="embeddinggemma.scale")
    summary = embed_files(
        str(tmp_path / "in"),
        str(output),
        title_column="title",
        dims=(40, 16),
        rows_per_block=20,
        progress_seconds=0.0,
        **_common(tiny_st_dir),
    )
    assert "embedded 8/8 blocks" in caplog.text  # progress, reported per block
    blocks = sorted(p.stem for p in output.glob("part-*.parquet"))
    assert blocks == [f"part-00000{f}-00000{k}" for f in range(2) for k in range(4)]
    manifest = json.loads((output / "_job.json").read_text())
    assert [b[0] for b in manifest["plan"]["blocks"]] == blocks

    def expected_reason(row: dict) -> str | None:
        if row["text"] is None:
            return "text is null, not a string"
        if not row["text"].strip():
            return "text is empty"
        tokens = reference.tokenizer.count_tokens([f"title: {row['title'] or 'none'} | text: {row['text']}"])[0]
        return f"{tokens} tokens (prompt included) exceed the {MAX_TOKENS}-token limit" if tokens > MAX_TOKENS else None

    expected_bad = {r["id"]: expected_reason(r) for r in rows if expected_reason(r)}
    assert any("exceed" in reason for reason in expected_bad.values())
    bad_rows = [json.loads(line) for line in (output / "_bad_rows.jsonl").read_text().splitlines()]
    assert {b["id"]: b["reason"] for b in bad_rows} == expected_bad
    for bad in bad_rows:  # located: file and row number in it
        assert bad["embedded"] is False and bad["file"].endswith(f"shard-0{(bad['id'] - 1000) // 60}.parquet")
        assert bad["row"] == (bad["id"] - 1000) % 60

    table = _read_parts(output)
    good = [r for r in rows if r["id"] not in expected_bad]
    assert table.column("id").to_pylist() == [r["id"] for r in good]  # every good row exactly once, in input order
    assert summary.rows == 120 and summary.embedded == len(good) and summary.bad_rows == len(expected_bad)
    assert summary.tokens == sum(table.column("num_tokens").to_pylist())
    assert json.loads((output / "_SUCCESS").read_text())["embedded"] == len(good)
    # bit-exact: each part equals Embedder.encode_document on that block's good rows
    by_id = {r["id"]: r for r in rows}
    for part in sorted(output.glob("part-*.parquet")):
        piece = pq.read_table(part)
        chosen = [by_id[i] for i in piece.column("id").to_pylist()]
        for dim in (40, 16):
            expected = reference.encode_document(
                [r["text"] for r in chosen], titles=[r["title"] for r in chosen], dim=dim, batch_size=8
            )
            assert np.array_equal(_vectors(piece, f"embedding_{dim}"), expected), part.name

    # a rerun with the same arguments finds every block done and rewrites nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    again = embed_files(
        str(tmp_path / "in"),
        str(output),
        title_column="title",
        dims=(40, 16),
        rows_per_block=20,
        **_common(tiny_st_dir),
    )
    assert again.blocks_done_before == 8 and again.rows_this_run == 0 and again.embedded == summary.embedded
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")} == mtimes
    # other settings on the same output are refused, with what differs
    with pytest.raises(ValueError, match=r"holds a job with other settings \(dims: \[40, 16\] there, \[40\] now\)"):
        embed_files(
            str(tmp_path / "in"),
            str(output),
            title_column="title",
            dims=(40,),
            rows_per_block=20,
            **_common(tiny_st_dir),
        )


def test_embed_files_jsonl_int8_calibrated(tiny_st_dir, reference, tmp_path):
    from embeddinggemma.scale import embed_files

    texts = make_texts(60, seed=9, longest=12)
    records = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    records[10] = {"id": "doc-10", "text": ["not", "a", "string"]}
    path = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    embed_files(
        str(path),
        str(output),
        dims=(16,),
        precision="int8",
        calibration_rows=30,
        rows_per_block=25,
        **_common(tiny_st_dir),
    )
    manifest = json.loads((output / "_job.json").read_text())
    ranges = np.asarray(manifest["settings"]["int8_ranges"]["16"], dtype=np.float32)
    table = _read_parts(output)
    ids = table.column("id").to_pylist()
    assert ids == [f"doc-{i}" for i in range(60) if i != 10]
    (bad,) = [json.loads(line) for line in (output / "_bad_rows.jsonl").read_text().splitlines()]
    assert bad["id"] == "doc-10" and bad["reason"] == "text is list, not a string" and bad["byte_offset"] > 0
    # the calibration saw the first 30 good rows: ranges are their per-dimension min and max
    calibration = reference.encode_document([t for i, t in enumerate(texts) if i != 10][:30], dim=16)
    np.testing.assert_allclose(ranges, np.stack([calibration.min(0), calibration.max(0)]), atol=1e-6)
    for part in sorted(output.glob("part-*.parquet")):
        piece = pq.read_table(part)
        chosen = [texts[int(i.split("-")[1])] for i in piece.column("id").to_pylist()]
        expected = quantize_embeddings(reference.encode_document(chosen, dim=16, batch_size=8), "int8", ranges=ranges)
        assert np.array_equal(_vectors(piece, "embedding_16"), expected)


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root` (this test's own Ray processes)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append((int(entry), command))
    found, stack = [], [root]
    while stack:
        for pid, command in children.get(stack.pop(), []):
            found.append((pid, command))
            stack.append(pid)
    return found


def test_worker_killed_mid_job_every_row_exactly_once(tiny_st_dir, reference, tmp_path):
    from embeddinggemma.scale import embed_files

    texts = make_texts(240, seed=21, longest=12)
    write_parquet_files(
        tmp_path / "in", [{"id": i, "text": t, "title": None} for i, t in enumerate(texts)], files=1, row_group_size=4
    )
    output = tmp_path / "out"
    killed: dict = {}

    def kill_a_worker() -> None:  # as soon as a block is done, SIGKILL one of the two embedding actors
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            done = len(list(output.glob("part-*.parquet"))) if output.exists() else 0
            workers = [p for p, command in _descendants(os.getpid()) if "_BlockWorker" in command]
            if done and workers:
                killed.update(pid=workers[0], done_at_kill=done)
                os.kill(workers[0], signal.SIGKILL)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    summary = embed_files(str(tmp_path / "in"), str(output), rows_per_block=4, dims=(16,), **_common(tiny_st_dir))
    killer.join(timeout=5)
    assert killed and killed["done_at_kill"] < 60, killed  # the kill happened mid-job
    # Ray restarted the actor and retried its block: one job, every row exactly once, values unchanged
    table = _read_parts(output)
    assert table.column("id").to_pylist() == list(range(240))
    assert summary.blocks == 60 and summary.embedded == 240 and summary.blocks_done_before == 0
    assert list((output / "_tmp").iterdir()) == [], "the killed worker's half-written part is removed at the end"
    for part in sorted(output.glob("part-*.parquet"))[::7]:
        piece = pq.read_table(part)
        chosen = [texts[i] for i in piece.column("id").to_pylist()]
        assert np.array_equal(_vectors(piece, "embedding_16"), reference.encode_document(chosen, dim=16, batch_size=8))


def test_bad_settings_fail_on_the_driver(tiny_st_dir, tmp_path):
    from embeddinggemma.scale import embed_files

    write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "the red planet"}])
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        embed_files(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), task="sentiment", **_common(tiny_st_dir))
    with pytest.raises(ValueError, match=r"dim 64 is outside 1\.\.40"):
        embed_files(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), dims=(64,), **_common(tiny_st_dir))
    assert not (tmp_path / "out").exists()  # nothing written for a job that cannot run


def test_a_model_that_fails_in_the_workers_fails_the_job_with_its_error(tiny_st_dir, tmp_path):
    import ray

    from embeddinggemma.scale import embed_files
    from embeddinggemma.scale.cli import worker_error

    broken = tmp_path / "broken"
    shutil.copytree(tiny_st_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the driver reads only configs; the workers load weights
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": "the red planet"} for i in range(8)])
    options = {**_common(tiny_st_dir), "model": str(broken), "concurrency": 1}
    with pytest.raises(ray.exceptions.RayError) as caught:  # the job ends: Ray does not retry a failing constructor
        embed_files(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), rows_per_block=4, **options)
    assert worker_error(caught.value).startswith(f"CheckpointError: cannot read {weights}")
    assert not list((tmp_path / "out").glob("part-*.parquet"))
