"""Input blocks (deterministic, every row in exactly one block) and the output directory, without Ray."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import corpus_rows, write_jsonl, write_parquet_files

from embeddinggemma.scale.blocks import OutputDir, Plan, make_plan, read_block


def _all_rows(plan: Plan) -> list[tuple]:
    rows = []
    for block in plan.blocks:
        found = read_block(plan, block)
        rows += [(block.name, found.raw_ids[i], found.texts[i], found.bad.get(i)) for i in range(len(found.texts))]
    return rows


@pytest.mark.parametrize("rows_per_block", [1, 2, 3, 7, 1000])
def test_jsonl_byte_ranges_cover_every_line_once(tmp_path, rows_per_block):
    # lines of very different lengths, CRLF endings, a last line without a newline, non-ASCII text
    records = [{"id": i, "text": "é" * (i % 5) + "x" * (i * 37 % 101), "title": None} for i in range(40)]
    body = "".join(json.dumps(r, ensure_ascii=False) + ("\r\n" if i % 3 == 0 else "\n") for i, r in enumerate(records))
    path = tmp_path / "in.jsonl"
    path.write_bytes(body.rstrip("\n").encode())
    plan = make_plan(str(path), rows_per_block=rows_per_block)
    rows = _all_rows(plan)
    assert [r[1] for r in rows] == list(range(40))
    assert [r[2] for r in rows] == [r["text"] for r in records]
    assert all(r[3] is None for r in rows)
    assert len(plan.blocks) >= min(40 // rows_per_block, 10)
    # the plan is a pure function of the input: the same blocks again, and through JSON
    assert make_plan(str(path), rows_per_block=rows_per_block).to_json() == plan.to_json()
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).blocks == plan.blocks


def test_jsonl_bad_lines_are_reported_with_reasons(tmp_path):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": 1, "text": "the red planet"},
            "{not json",
            "[1, 2]",
            "",
            {"text": "no id"},
            {"id": "7", "text": "a string id in an integer-id file"},
            {"id": True, "text": "a boolean id"},
            {"id": 8},
            {"id": None, "text": "null id"},
            {"id": 9, "text": 5},
        ],
    )
    plan = make_plan(str(path))
    assert plan.id_type == "int64"
    (block,) = plan.blocks
    found = read_block(plan, block)
    assert found.bad == {
        1: "not valid JSON (Expecting property name enclosed in double quotes)",
        2: "a JSON list, not an object",
        3: "blank line, not a JSON object",
        4: "no 'id' field",
        5: "id '7' is str, not a 64-bit integer",
        6: "id True is bool, not a 64-bit integer",
        7: "no 'text' field",
        8: "id is null",
    }
    assert found.texts[0] == "the red planet" and found.texts[9] == 5  # a non-string text is the embedder's to report
    assert found.ids.to_pylist() == [1, None, None, None, None, None, None, 8, None, 9]
    offsets = [0]
    for line in path.read_bytes().split(b"\n")[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    assert found.locations == offsets[:-1]  # byte offsets locate bad rows in the file


def test_gzipped_jsonl_is_one_block(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(
        gzip.compress(b"".join(json.dumps({"id": f"d{i}", "text": f"t {i}"}).encode() + b"\n" for i in range(9)))
    )
    plan = make_plan(str(path), rows_per_block=2)
    assert len(plan.blocks) == 1 and plan.id_type == "string"
    assert [r[1] for r in _all_rows(plan)] == [f"d{i}" for i in range(9)]


def test_parquet_blocks_are_whole_row_groups(tmp_path):
    rows = corpus_rows(50)
    write_parquet_files(tmp_path / "in", rows, files=2, row_group_size=4)  # 25 rows a file: groups of 4,4,...,1
    plan = make_plan(str(tmp_path / "in"), title_column="title", rows_per_block=10)
    assert [(b.name, b.start, b.stop, b.first_row) for b in plan.blocks] == [
        ("part-000000-000000", 0, 2, 0),
        ("part-000000-000001", 2, 4, 8),
        ("part-000000-000002", 4, 7, 16),
        ("part-000001-000000", 0, 2, 0),
        ("part-000001-000001", 2, 4, 8),
        ("part-000001-000002", 4, 7, 16),
    ]
    found = _all_rows(plan)
    assert [r[1] for r in found] == [r["id"] for r in rows]
    assert [r[2] for r in found] == [r["text"] for r in rows]
    third = read_block(plan, plan.blocks[2])
    assert third.locations == list(range(16, 25)) and third.titles == [r["title"] for r in rows[16:25]]


def test_parquet_schema_errors_are_one_line(tmp_path):
    table = pa.table({"doc": [1, 2], "text": [3, 4]})
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(
        ValueError, match=r"has no column 'id' \(columns: \['doc', 'text'\]\); name it with --id-column"
    ):
        make_plan(str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match="text column 'text' is int64, not strings"):
        make_plan(str(tmp_path / "bad.parquet"), id_column="doc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_plan(str(tmp_path / "missing.parquet"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown input format"):
        make_plan(str(tmp_path / "notes.txt"))


def test_parquet_null_ids_are_bad_rows(tmp_path):
    pq.write_table(pa.table({"id": ["a", None, "c"], "text": ["x", "y", "z"]}), tmp_path / "in.parquet")
    plan = make_plan(str(tmp_path / "in.parquet"))
    found = read_block(plan, plan.blocks[0])
    assert plan.id_type == "string" and found.bad == {1: "id is null"}


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    out.prepare()

    def fail(temporary: str) -> None:
        with open(temporary, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        out.write_atomic(out.part("part-000000-000000"), fail)
    assert out.finished_parts() == set()
    assert list((tmp_path / "out" / "_tmp").iterdir()) == []
    out.write_json(out.report("part-000000-000000"), {"rows": 1})
    out.write_parquet(out.part("part-000000-000000"), pa.table({"x": [1]}))
    assert out.finished_parts() == {"part-000000-000000"}
    assert out.read_json(out.report("part-000000-000000")) == {"rows": 1}
