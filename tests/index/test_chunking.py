"""Chunking: every chunk fits the model, maps back to its exact lines, and carries the right title."""

from __future__ import annotations

import itertools

import pytest

from embeddinggemma.index.chunking import Chunker, find_headings
from embeddinggemma.prompts import document_prompt

from .conftest import MARKDOWN, PYTHON, RST, WORDS


def _chunker(tiny_embedder, **kwargs) -> Chunker:
    kwargs.setdefault("chunk_tokens", 48)
    kwargs.setdefault("overlap_tokens", 8)
    return Chunker(tiny_embedder.tokenizer.count_tokens, **kwargs)


def _check_chunks(chunker, chunks, text):
    lines = text.splitlines()
    for chunk in chunks:
        count = chunker.count_tokens([document_prompt(chunk.title) + chunk.text])[0]
        assert count == chunk.tokens <= chunker.chunk_tokens
        span = "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        assert chunk.text.strip() in span or span.strip() in chunk.text, (chunk, span)
        assert chunk.text.splitlines()[0].strip() in lines[chunk.start_line - 1]


def test_headings():
    assert find_headings(MARKDOWN, "markdown", "p.md") == [
        (0, ("Planets",)),
        (4, ("Planets", "Venus")),
        (8, ("Planets", "Search")),
    ]
    assert find_headings(RST, "rst", "f.rst") == [(0, ("Files",)), (5, ("Files", "Write"))]
    assert find_headings(PYTHON, "code", "c.py") == [
        (3, ("sort_list",)),
        (8, ("Reader",)),
        (11, ("Reader", "read_line")),
    ]
    # fenced code is not a heading; an overlined rst title is one section
    assert find_headings("```\n# not a heading\n```\n# Real\n", "markdown", "x.md") == [(3, ("Real",))]
    assert find_headings("=====\nTitle\n=====\n\ntext\n", "rst", "x.rst") == [(0, ("Title",))]
    # a Go function is found by the keyword pattern where Pygments marks nothing
    assert find_headings("package main\n\n// Add adds.\nfunc Add(a int) int {\n\treturn a\n}\n", "code", "x.go") == [
        (2, ("Add",))
    ]


def test_titles_are_file_and_heading(tiny_embedder):
    chunker = _chunker(tiny_embedder, chunk_tokens=40, overlap_tokens=0, min_tokens=0)
    chunks = chunker.chunk(MARKDOWN, "markdown", "docs/planets.md")
    assert [c.title for c in chunks] == [
        "planets.md: Planets",
        "planets.md: Planets > Venus",
        "planets.md: Planets > Search",
    ]
    assert [c.start_line for c in chunks] == [1, 5, 9]
    _check_chunks(chunker, chunks, MARKDOWN)
    untitled = _chunker(tiny_embedder, chunk_tokens=40, overlap_tokens=0, titles=False).chunk(
        MARKDOWN, "markdown", "p.md"
    )
    assert {c.title for c in untitled} == {None}


def test_small_sections_share_a_chunk(tiny_embedder):
    chunks = _chunker(tiny_embedder, chunk_tokens=128).chunk(MARKDOWN, "markdown", "planets.md")
    assert len(chunks) == 1 and chunks[0].title == "planets.md: Planets" and chunks[0].end_line == 11


def test_long_text_splits_with_overlap_and_exact_lines(tiny_embedder):
    text = "".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(7)) + "\n" for i in range(60))
    chunker = _chunker(tiny_embedder)
    chunks = chunker.chunk(text, "text", "long.txt")
    assert len(chunks) > 3
    _check_chunks(chunker, chunks, text)
    for before, after in itertools.pairwise(chunks):
        assert after.start_line <= before.end_line  # overlapping lines are repeated
        assert after.start_line > before.start_line  # and the text moves on
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.start_line, chunk.end_line + 1))
    assert covered == set(range(1, 61))


def test_a_line_longer_than_a_chunk_is_cut_not_truncated(tiny_embedder):
    line = " ".join(WORDS * 20)  # one line, ~320 tokens
    text = f"first\n{line}\nlast\n"
    chunker = _chunker(tiny_embedder, overlap_tokens=0)
    chunks = chunker.chunk(text, "text", "wide.txt")
    _check_chunks(chunker, chunks, text)
    assert " ".join(c.text for c in chunks).split() == text.split()
    assert {c.start_line for c in chunks[1:-1]} == {2}
    unbroken = "x" * 3000  # a "word" the word splitter cannot split
    pieces = chunker.chunk(unbroken, "text", "blob.txt")
    assert "".join(c.text for c in pieces) == unbroken and all(c.tokens <= 48 for c in pieces)


def test_empty_and_invalid(tiny_embedder):
    assert _chunker(tiny_embedder).chunk("", "text", "e.txt") == []
    assert _chunker(tiny_embedder).chunk("\n\n  \n", "text", "blank.txt") == []
    with pytest.raises(ValueError, match="overlap must be between"):
        _chunker(tiny_embedder, overlap_tokens=40)
