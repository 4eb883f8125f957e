"""A property of `embeddinggemma embed`: for any mix of lines, one output row per input record, row i the
embedding of record i, whichever way the input arrives (path or stdin, text or JSONL) and whichever
output is written (.npy or .jsonl).

Lines mix empty and whitespace-only texts, stray carriage returns, other Unicode line and page breaks,
non-ASCII text and texts over the token limit (truncated, with a warning), with or without a byte
order mark, CRLF endings or a final newline. Runs in the test process (`main`) so that many examples
fit in a few seconds; tests/test_cli.py runs the installed entry point.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from embeddinggemma import Embedder
from embeddinggemma.cli import main
from embeddinggemma.records import TextSource

WORDS = [
    "red",
    "planet",
    "mars",
    "is",
    "known",
    "as",
    "the",
    "code",
    "python",
    "function",
    "returns",
    "list",
    "sort",
    "key",
    "value",
    "error",
    "line",
]
ODD = ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "é", "日本語", "🙂", "\t", '"', "{", "\\"]

texts = st.one_of(
    st.just(""),
    st.text(alphabet=" \t\x0c\u3000", min_size=1, max_size=3),  # whitespace only
    st.lists(st.sampled_from(WORDS + ODD), max_size=8).map(" ".join),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=12),
    st.integers(min_value=60, max_value=120).map(lambda n: " ".join(["red planet"] * n)),  # over 128 tokens
)
records = st.lists(
    st.tuples(
        texts,
        st.one_of(st.none(), st.sampled_from(["mars", "", "日本"])),
        st.one_of(st.none(), st.integers(0, 9), st.text(max_size=3)),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


def _text_bytes(items: list[str], bom: bool, crlf: bool, final_newline: bool) -> bytes:
    ending = "\r\n" if crlf else "\n"
    body = ending.join(items) + (ending if final_newline else "")
    return (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8")


def _jsonl_bytes(rows: list[tuple[str, str | None, object]], bom: bool, crlf: bool, ascii_only: bool) -> bytes:
    lines = []
    for text, title, text_id in rows:
        record: dict[str, object] = {"text": text}
        if title is not None:
            record["title"] = title
        if text_id is not None:
            record["id"] = text_id
        lines.append(json.dumps(record, ensure_ascii=ascii_only))
    return _text_bytes(lines, bom, crlf, final_newline=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=records,
    source=st.sampled_from(["path", "stdin"]),
    fmt=st.sampled_from(["txt", "jsonl"]),
    output=st.sampled_from(["npy", "jsonl"]),
    bom=st.booleans(),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    ascii_only=st.booleans(),
)
def test_one_row_per_record_in_order(
    tiny, tiny_st_dir, rows, source, fmt, output, bom, crlf, final_newline, ascii_only
):
    if fmt == "txt":
        items = [text for text, _, _ in rows]
        # a line is what lies between "\n"s: a text cannot end in "\r" (it would read as a CRLF ending),
        # and an empty last text needs its newline to exist at all
        assume(not any(text.endswith("\r") for text in items))
        assume(final_newline or items[-1] != "")
        # plain text whose first line looks like JSON must be told apart with --format (tested elsewhere)
        assume(not next((t for t in items if t.strip()), "").lstrip().startswith("{"))
        data = _text_bytes(items, bom, crlf, final_newline)
        expected_titles, expected_ids = [None] * len(items), [None] * len(items)
    else:
        items = [text for text, _, _ in rows]
        data = _jsonl_bytes(rows, bom, crlf, ascii_only)
        expected_titles, expected_ids = [title for _, title, _ in rows], [text_id for _, _, text_id in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of the long texts, reported by the CLI too
        expected = tiny.encode_document(items, titles=expected_titles)

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        directory = Path(tmp)
        out = directory / f"out.{output}"
        if source == "path":
            (directory / f"in.{fmt}").write_bytes(data)
            argument = str(directory / f"in.{fmt}")
        else:
            patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
            argument = "-"
        code = main(["embed", argument, "-o", str(out), "--model", str(tiny_st_dir), "--no-progress"])
        assert code == 0
        if output == "npy":
            got = np.load(out)
            ids = [None] * len(got)
        else:
            lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
            assert [line["index"] for line in lines] == list(range(len(lines)))
            got = np.array([line["embedding"] for line in lines], dtype=np.float32).reshape(len(lines), -1)
            ids = [line.get("id") for line in lines]
        leftovers = sorted(p.name for p in directory.iterdir())

    assert got.shape == (len(items), 40)  # one row per record
    np.testing.assert_allclose(got, expected, atol=1e-6)  # row i is record i
    if output == "jsonl":
        assert ids == expected_ids
    assert leftovers == sorted({out.name, f"in.{fmt}"} if source == "path" else {out.name})


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(texts, min_size=1, max_size=12),
    bom=st.booleans(),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_a_file_and_stdin_give_the_same_records(items, bom, crlf, final_newline):
    """The texts themselves, exactly (the tiny model's whitespace tokenizer cannot tell "a\\x0cb" from "a b")."""
    assume(not any(text.endswith("\r") for text in items))
    assume(final_newline or items[-1] != "")
    data = _text_bytes(items, bom, crlf, final_newline)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        path = Path(tmp) / "in.txt"
        path.write_bytes(data)
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        read = []
        for name in (str(path), "-"):
            source = TextSource(name, "lines")
            read.append([(record.text, record.line) for record in source.records()])
            source.close()
    assert read[0] == read[1] == [(text, line) for line, text in enumerate(items, start=1)]
