"""Fixtures for the index tests: the tiny random model and a small folder of real-looking files."""

from __future__ import annotations

from pathlib import Path

import pytest

from embeddinggemma import Embedder

# Words from the tiny model's vocabulary (tests/conftest.py), so the tiny model sees real tokens.
# Words of the tiny test tokenizer (tests/conftest.py), for texts of known tokens.
WORDS = [
    "the",
    "red",
    "planet",
    "mars",
    "venus",
    "is",
    "known",
    "as",
    "which",
    "of",
    "and",
    "to",
    "in",
    "for",
    "on",
    "with",
]

MARKDOWN = """# Planets

The red planet is mars.

## Venus

Venus is known as the big planet of the sun and the first to sort.

## Search

A query for the search result with the title and the text.
"""

RST = """Files
=====

Open the file and read the line.

Write
-----

Write the first word to the file and close the file.
"""

PYTHON = '''import os


def sort_list(value):
    """Sort the list of number values."""
    return sorted(value)


class Reader:
    """Read a file."""

    def read_line(self, file):
        return file.readline()
'''


@pytest.fixture(scope="session")
def tiny_embedder(tiny_st_dir: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


@pytest.fixture
def sample_folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "planets.md").write_text(MARKDOWN, encoding="utf-8")
    (root / "files.rst").write_text(RST, encoding="utf-8")
    (root / "sub" / "code.py").write_text(PYTHON, encoding="utf-8")
    (root / "notes.txt").write_text("the small fast error\nthe slow big error\n", encoding="utf-8")
    (root / "image.bin").write_bytes(bytes(range(256)) * 4)
    (root / "README").write_bytes(b"\x00\x01binary without an extension")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("ignored build output", encoding="utf-8")
    (root / "debug.log").write_text("ignored log", encoding="utf-8")
    (root / ".gitignore").write_text("build/\n*.log\n", encoding="utf-8")
    return root
