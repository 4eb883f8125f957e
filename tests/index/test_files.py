"""The folder walk: .gitignore (nested, negated, directories), kinds, skip reasons."""

from __future__ import annotations

from pathlib import Path

from embeddinggemma.index.files import SkipCounts, classify, decode_text, walk_folder


def _walk(root: Path, **kwargs) -> tuple[dict[str, str], SkipCounts]:
    skipped = SkipCounts()
    files = {
        f.path: f.kind
        for f in walk_folder(root, max_file_bytes=kwargs.pop("max_bytes", 10**6), skipped=skipped, **kwargs)
    }
    return files, skipped


def test_walk_respects_gitignore_and_sorts_kinds(sample_folder):
    files, skipped = _walk(sample_folder)
    assert files == {
        "README": "text",  # binary content is found when read (see decode_text), not by name
        "files.rst": "rst",
        "notes.txt": "text",
        "planets.md": "markdown",
        "sub/code.py": "code",
    }
    assert skipped.reasons == {"unsupported type (.bin)": 1}


def test_nested_gitignore_and_negation(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".gitignore").write_text("*.txt\n!keep.txt\n", encoding="utf-8")
    (tmp_path / "a" / ".gitignore").write_text("!a.txt\nb/\n", encoding="utf-8")
    for path in ["x.txt", "keep.txt", "a/a.txt", "a/other.txt", "a/b/deep.md", "a/c.md"]:
        (tmp_path / path).write_text("word", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.md").write_text("ref", encoding="utf-8")
    files, _ = _walk(tmp_path)
    assert sorted(files) == ["a/a.txt", "a/c.md", "keep.txt"]


def test_excluded_paths_and_size_limit(tmp_path):
    (tmp_path / "index.db").write_bytes(b"SQLite format 3\x00")
    (tmp_path / "big.md").write_text("x" * 200, encoding="utf-8")
    (tmp_path / "small.md").write_text("x", encoding="utf-8")
    files, skipped = _walk(tmp_path, max_bytes=100, exclude={tmp_path / "index.db"})
    assert sorted(files) == ["small.md"]
    assert skipped.reasons == {"over 0.0001 MB (--max-file-mb)": 1} and "big.md" in skipped.summary()


def test_classify_and_decode():
    assert classify("x.md") == "markdown" and classify("x.rst") == "rst" and classify("Makefile") == "text"
    assert classify("argparse.rst.txt") == "rst" and classify("notes.txt") == "text"
    assert classify("x.rs") == "code" and classify("x.go") == "code" and classify("x.pdf") == "pdf"
    assert classify("x.png") is None and classify("package-lock.json") is None
    assert decode_text("\ufeffhé\r\n".encode()) == "hé\r\n"
    assert decode_text(b"a\x00b") is None and decode_text("é".encode("latin-1")) is None
