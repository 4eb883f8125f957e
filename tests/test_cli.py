"""The command line end to end on temporary files (tiny model)."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from embeddinggemma import Embedder
from embeddinggemma.cli import main


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


def test_embed_lines_to_npy(tiny_st_dir, tiny, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("red planet\nmars is red\n\ncode\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    code = main(["embed", str(source), "-o", str(out), "--model", str(tiny_st_dir), "--task", "query", "--dim", "16"])
    assert code == 0
    got = np.load(out)
    expected = tiny.encode_query(["red planet", "mars is red", "", "code"], dim=16)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    err = capsys.readouterr().err
    assert "1 empty input line" in err and "embedded 4 texts" in err


def test_embed_jsonl_with_titles_to_jsonl(tiny_st_dir, tiny, tmp_path):
    source = tmp_path / "docs.jsonl"
    rows = [{"id": "a", "text": "red planet", "title": "mars"}, {"id": 7, "text": "sort the list"}]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["embed", str(source), "-o", str(out), "--model", str(tiny_st_dir), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", 7] and [line["index"] for line in lines] == [0, 1]
    expected = tiny.encode_document(["red planet", "sort the list"], titles=["mars", None])
    np.testing.assert_allclose(np.array([line["embedding"] for line in lines]), expected, atol=1e-6)


def test_embed_from_stdin_to_stdout(tiny_st_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("red\nplanet\n"))
    assert main(["embed", "--model", str(tiny_st_dir), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and len(json.loads(lines[0])["embedding"]) == 40


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"text": "a"}\n{bad\n', [], "line 2: not valid JSON"),
        ('{"body": "a"}\n', [], "line 1: expected an object with a string field 'text'"),
        ('{"text": "a", "title": "t"}\n', ["--task", "query"], "titles are only used with --task document"),
        ("", [], "no input texts"),
    ],
)
def test_embed_bad_input_is_one_line(tiny_st_dir, tmp_path, capsys, content, args, message):
    source = tmp_path / "in.jsonl"
    source.write_text(content, encoding="utf-8")
    code = main(["embed", str(source), "-o", str(tmp_path / "o.npy"), "--model", str(tiny_st_dir), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_errors_are_one_line(tiny_st_dir, tmp_path, capsys):
    cases = [
        ["embed", str(tmp_path / "missing.txt"), "--model", str(tiny_st_dir)],
        ["info", "--model", str(tmp_path / "nowhere")],
        ["info", "--model", str(tiny_st_dir), "--dtype", "float16"],
        ["similarity", "q", "d", "--model", str(tiny_st_dir), "--dim", "0"],
        ["similarity", "q", "d", "--model", str(tiny_st_dir), "--task", "nope"],
        ["embed", "-o", "out.txt", "--model", str(tiny_st_dir)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("embeddinggemma ") and "error:" in err and len(err.splitlines()) == 1, err


def test_similarity_ranks(tiny_st_dir, tiny, capsys):
    docs = ["sort the list", "red planet mars", "open file"]
    assert main(["similarity", "red planet", *docs, "--model", str(tiny_st_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    scores = tiny.similarity(tiny.encode_query("red planet"), tiny.encode_document(docs))[0]
    best = docs[int(np.argmax(scores))]
    assert out[0] == "query: red planet" and out[1].startswith("  1. ") and out[1].endswith(best)
    assert len(out) == 4


def test_info(tiny_st_dir, capsys):
    assert main(["info", "--model", str(tiny_st_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["embedding_dim"] == 40 and info["layers"] == 3 and info["full_attention_layers"] == [2]
    assert info["prompts"]["query"] == "task: search result | query: "
    assert main(["info", "--model", str(tiny_st_dir)]) == 0
    assert "parameters:" in capsys.readouterr().out
