"""Which files of a folder get indexed: a walk that honours `.gitignore` and sorts files into kinds.

Every file the walk sees is either returned as a :class:`SourceFile` or counted under a skip reason
(ignored files are not counted: git does not list them either), so nothing is dropped without the
summary saying so.

Kinds: ``markdown`` and ``rst`` (headings become chunk titles), ``code`` (any language Pygments knows
by file name; functions and classes become chunk titles), ``text`` (``.txt`` and extension-less text
files such as ``README``), ``pdf`` (text extracted with pypdf, one section per page).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pathspec

__all__ = ["SkipCounts", "SourceFile", "classify", "decode_text", "walk_folder"]

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdown", ".mkd"})
RST_SUFFIXES = frozenset({".rst", ".rest"})
TEXT_SUFFIXES = frozenset({".txt", ".text"})
# Machine-written files that Pygments would happily lex but nobody searches by meaning.
GENERATED_NAMES = frozenset(
    {"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock", "uv.lock", "Pipfile.lock"}
)
ALWAYS_SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class SourceFile:
    """One file to index: ``path`` is relative to the indexed folder, with ``/`` separators."""

    path: str
    absolute: Path
    kind: str
    size: int
    mtime_ns: int


@dataclass
class SkipCounts:
    """Files seen but not indexed, by reason (``"binary"``, ``"not UTF-8"``, ``"over 2 MB"`` ...)."""

    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, path: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, path)

    def summary(self) -> str:
        return ", ".join(f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in self.reasons.most_common())


@lru_cache(maxsize=4096)
def _code_lexer_name(file_name: str) -> str | None:
    from pygments.lexers import get_lexer_for_filename
    from pygments.util import ClassNotFound

    try:
        return get_lexer_for_filename(file_name).name
    except ClassNotFound:
        return None


def classify(file_name: str) -> str | None:
    """The kind of a file from its name, or None when its type is not indexed."""
    suffix = os.path.splitext(file_name)[1].lower()
    if file_name in GENERATED_NAMES:
        return None
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in RST_SUFFIXES or file_name.endswith(".rst.txt"):  # .rst.txt: Sphinx's copies of its sources
        return "rst"
    if suffix in TEXT_SUFFIXES or not suffix:
        return "text"
    if suffix == ".pdf":
        return "pdf"
    return "code" if _code_lexer_name(file_name) is not None else None


def decode_text(data: bytes) -> str | None:
    """UTF-8 text (BOM dropped, CRLF kept as in the file), or None for binary or other encodings."""
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _IgnoreRules:
    """`.gitignore` files found on the way down; a deeper file's matching pattern wins, as in git."""

    def __init__(self) -> None:
        self._specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []  # (directory prefix, spec), shallow first

    def push(self, rel_dir: str, directory: Path) -> int:
        """Load ``directory/.gitignore`` if present; returns how many specs to pop when leaving it."""
        gitignore = directory / ".gitignore"
        if not gitignore.is_file():
            return 0
        lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
        self._specs.append((rel_dir + "/" if rel_dir else "", pathspec.GitIgnoreSpec.from_lines(lines)))
        return 1

    def pop(self, count: int) -> None:
        del self._specs[len(self._specs) - count :]

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        for prefix, spec in reversed(self._specs):
            if not rel_path.startswith(prefix):
                continue
            result = spec.check_file(rel_path[len(prefix) :] + ("/" if is_dir else ""))
            if result.include is not None:
                return bool(result.include)
        return False


def walk_folder(
    root: str | Path, *, max_file_bytes: int, skipped: SkipCounts, exclude: set[Path] | frozenset[Path] = frozenset()
) -> Iterator[SourceFile]:
    """Files under ``root`` in sorted order, minus ignored ones; ``exclude`` holds absolute paths to
    leave out (the index database itself when it lives inside the folder)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the folder to index")
    rules = _IgnoreRules()
    excluded = {p.resolve() for p in exclude}

    def visit(directory: Path, rel_dir: str) -> Iterator[SourceFile]:
        pushed = rules.push(rel_dir, directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except PermissionError:
            skipped.add("unreadable folder", rel_dir or ".")
            rules.pop(pushed)
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                continue  # links may leave the folder or loop; git stores them as links, not content
            if entry.is_dir():
                if entry.name not in ALWAYS_SKIPPED_DIRS and not rules.ignored(rel, is_dir=True):
                    yield from visit(Path(entry.path), rel)
                continue
            if not entry.is_file() or rules.ignored(rel, is_dir=False) or entry.name == ".gitignore":
                continue
            absolute = Path(entry.path)
            if absolute.resolve() in excluded:
                continue
            kind = classify(entry.name)
            if kind is None:
                skipped.add(f"unsupported type ({os.path.splitext(entry.name)[1] or entry.name})", rel)
                continue
            stat = entry.stat()
            if stat.st_size > max_file_bytes:
                skipped.add(f"over {max_file_bytes / 1e6:g} MB (--max-file-mb)", rel)
                continue
            yield SourceFile(rel, absolute, kind, stat.st_size, stat.st_mtime_ns)
        rules.pop(pushed)

    yield from visit(root, "")
