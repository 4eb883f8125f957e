"""`embeddinggemma embed-dataset` errors: one line, and found before Ray starts (no Ray fixture here)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from scale_helpers import write_jsonl

from embeddinggemma.cli import main

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")


def test_without_ray_the_command_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(["embed-dataset", str(tmp_path / "in.jsonl"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "embeddinggemma embed-dataset: error: embed-dataset needs Ray Data: pip install 'embeddinggemma[ray]'"
    ]


@needs_ray
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "sentiment"], "unknown task 'sentiment'"),
        (["--dims", "64"], "dim 64 is outside 1..40"),
        (["--id-column", "doc"], "the first record has no 'doc' field; name the id field with --id-column"),
        (["--task", "query", "--title-column", "title"], "titles select the document prompt"),
    ],
)
def test_bad_settings_are_one_line_before_ray_starts(tiny_st_dir, tmp_path, capsys, extra, message):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "the red planet"}])
    assert main(["embed-dataset", str(source), str(tmp_path / "out"), f"--model={tiny_st_dir}", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embeddinggemma embed-dataset: error: ") and message in err[0]
    assert not sys.modules["ray"].is_initialized() and not (tmp_path / "out").exists()


@needs_ray
def test_missing_input_and_model(tiny_st_dir, tmp_path, capsys):
    assert main(["embed-dataset", str(tmp_path / "none.parquet"), str(tmp_path / "out"), f"--model={tiny_st_dir}"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"input {tmp_path / 'none.parquet'} does not exist")
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "x"}])
    assert main(["embed-dataset", str(source), str(tmp_path / "out"), f"--model={tmp_path / 'no-model'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not sys.modules["ray"].is_initialized()
