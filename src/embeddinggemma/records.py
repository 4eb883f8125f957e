"""Texts for the command line: plain lines or JSONL, from a file or stdin, read one way.

One definition of a line, whichever way the input arrives: a line ends at "\\n" (a "\\r\\n" ending
loses its "\\r"); every other character, a stray "\\r" included, belongs to the text. Bytes are read
and decoded as UTF-8 here (not by a text-mode file, whose newline handling differs between files
and stdin), so a file and the same bytes on stdin give the same records, and record i is line i + 1.
A UTF-8 byte order mark at the start is dropped.

The format is told from the name (`.jsonl`/`.ndjson`) or else from the content (the first non-blank
line is a JSON object); when the two disagree or the content cannot tell, `--format` must say.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from embeddinggemma.embedder import lone_surrogate

FORMATS = ("auto", "lines", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text")
_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """Unreadable or ambiguous input: one line that names the input (and the line) and what to do."""


@dataclass
class Record:
    text: str
    title: str | None
    id: Any
    line: int  # 1-based line number in the input


class TextSource:
    """An opened input: `name` for messages, its `format` ("lines" or "jsonl"), its lines as bytes."""

    def __init__(self, path: str, requested_format: str = "auto") -> None:
        if requested_format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {requested_format!r}")
        self.path = path
        self.name = "stdin" if path == "-" else path
        self.stream = _open_binary(path)
        self._owned = path != "-"
        self._peeked: deque[bytes] = deque()  # lines read to tell the format, replayed first
        try:
            self.format = requested_format if requested_format != "auto" else self._detect_format()
        except BaseException:
            self.close()
            raise
        self.notice = self._notice(requested_format)

    # -- format --------------------------------------------------------------------------------

    def _detect_format(self) -> str:
        suffix = "" if self.path == "-" else Path(self.path).suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        first = self._first_content_line()
        if first is None:
            return "lines"
        number, text = first
        if not text.lstrip().startswith("{"):
            return "lines"
        try:
            is_object = isinstance(json.loads(text), dict)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{self.name} line {number} starts with '{{' but is not valid JSON ({exc.msg}): cannot tell JSONL "
                "from plain text; pass --format jsonl (and fix the line) or --format lines"
            ) from None
        if is_object and suffix in TEXT_SUFFIXES:
            raise InputError(
                f"{self.name} line {number} is a JSON object but the name says plain text; pass --format jsonl to "
                "read JSONL or --format lines to embed the raw lines"
            )
        return "jsonl" if is_object else "lines"

    def _first_content_line(self) -> tuple[int, str] | None:
        """(line number, text) of the first non-blank line, buffering the lines read on the way."""
        for raw in self.stream:
            self._peeked.append(raw)
            number = len(self._peeked)
            text = _decode(raw, number, self.name)
            if text.strip():
                return number, text
        return None

    def _notice(self, requested_format: str) -> str | None:
        """A line for stderr when the content (not the name or --format) decided JSONL."""
        by_name = self.path != "-" and Path(self.path).suffix.lower() in JSONL_SUFFIXES
        if requested_format == "auto" and self.format == "jsonl" and not by_name:
            return f"reading {self.name} as JSONL (its first line is a JSON object); --format lines embeds raw lines"
        return None

    # -- reading -------------------------------------------------------------------------------

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text without its line ending) for every line of the input."""
        number = 0
        for raw in self._replay():
            number += 1
            if number == 1 and raw == _BOM:  # a byte order mark alone is an empty input, not an empty line
                continue
            yield number, _decode(raw, number, self.name)

    def _replay(self) -> Iterator[bytes]:
        while self._peeked:
            yield self._peeked.popleft()
        yield from self.stream

    def is_empty(self) -> bool:
        """No line at all (a byte order mark alone counts as none); reads at most one line ahead."""
        if not self._peeked:
            first = self.stream.readline()
            if first:
                self._peeked.append(first)
        return not self._peeked or (len(self._peeked) == 1 and self._peeked[0] == _BOM)

    def records(self, text_field: str = "text", title_field: str = "title", id_field: str = "id") -> Iterator[Record]:
        """One `Record` per line. Plain lines keep empty lines (the output stays aligned with the input)."""
        for number, line in self.lines():
            if self.format == "lines":
                yield Record(line, None, None, number)
                continue
            yield _parse_jsonl(line, number, self.name, text_field, title_field, id_field)

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        if self._owned:
            self.stream.close()


def _open_binary(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    if os.path.isdir(path):
        raise InputError(f"input {path} is a directory; pass a text or JSONL file (or - for stdin)")
    try:
        return open(path, "rb")  # closed by TextSource.close
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror}") from None


def _decode(raw: bytes, number: int, name: str) -> str:
    if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name} line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            "line); convert the input to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _parse_jsonl(line: str, number: int, name: str, text_field: str, title_field: str, id_field: str) -> Record:
    where = f"{name} line {number}"
    if not line.strip():
        raise InputError(f"{where}: empty line in JSONL input; remove it or use --format lines")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg}); use --format lines for plain text") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise InputError(f"{where}: expected an object with a string field {text_field!r}")
    title = record.get(title_field)
    if title is not None and not isinstance(title, str):
        raise InputError(f"{where}: field {title_field!r} must be a string or null")
    for field, value in ((text_field, record[text_field]), (title_field, title)):
        if value is not None and (bad := lone_surrogate(value)) is not None:
            raise InputError(
                f"{where}: field {field!r} holds a lone surrogate {bad.group()!a}, which is not valid Unicode; "
                "fix its \\u escape"
            )
    return Record(record[text_field], title, record.get(id_field), number)
