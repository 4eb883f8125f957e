"""Translated message pairs from gettext catalogues (``.mo`` binaries and ``.po`` text).

Program messages translated by volunteer teams are real parallel text in dozens of
languages. Most messages are too short or mostly format directives to test a sentence
embedder, so :func:`mineable_text` keeps only those with enough words once ``%s``-style
directives and command-line option names are removed.
"""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass

__all__ = ["Message", "mineable_text", "parse_mo", "parse_po"]


@dataclass(frozen=True)
class Message:
    """One catalogue entry; plural entries keep their singular forms only."""

    msgid: str
    msgstr: str
    context: str | None = None
    fuzzy: bool = False
    plural: bool = False


def _charset(header: str) -> str:
    m = re.search(r"charset=([-\w]+)", header)
    return m.group(1) if m else "utf-8"


def parse_mo(data: bytes) -> list[Message]:
    """Entries of a compiled ``.mo`` file (either byte order), header entry excluded."""
    if len(data) < 28:
        raise ValueError("too short to be a .mo file")
    magic = struct.unpack("<I", data[:4])[0]
    if magic == 0x950412DE:
        order = "<"
    elif magic == 0xDE120495:
        order = ">"
    else:
        raise ValueError(f"bad .mo magic number {magic:#x}")
    _, count, orig_off, trans_off = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length]

    raw = [(string(orig_off, i), string(trans_off, i)) for i in range(count)]
    header = next((t for o, t in raw if o == b""), b"").decode("ascii", "replace")
    enc = _charset(header)
    out: list[Message] = []
    for orig, trans in raw:
        if orig == b"":
            continue
        o = orig.decode(enc, "replace")
        t = trans.decode(enc, "replace")
        context = None
        if "\x04" in o:
            context, o = o.split("\x04", 1)
        plural = "\x00" in o
        out.append(Message(o.split("\x00")[0], t.split("\x00")[0], context, False, plural))
    return out


def _po_string(s: str) -> str:
    # PO strings use C escapes, which Python's string literal syntax covers for what appears.
    return ast.literal_eval(s) if s.startswith('"') else ""


def parse_po(text: str) -> list[Message]:
    """Entries of a ``.po`` file (header and obsolete ``#~`` entries excluded). Only what
    the suite needs: ``msgctxt``, ``msgid``, ``msgid_plural``, ``msgstr``/``msgstr[0]``,
    multi-line strings and the ``fuzzy`` flag."""
    out: list[Message] = []
    entry: dict[str, str] = {}
    flags: set[str] = set()
    key: str | None = None

    def finish() -> None:
        nonlocal entry, flags, key
        if "msgid" in entry and entry["msgid"] != "":
            out.append(
                Message(
                    entry["msgid"], entry.get("msgstr", ""), entry.get("msgctxt"), "fuzzy" in flags,
                    "msgid_plural" in entry,
                )
            )  # fmt: skip
        entry, flags, key = {}, set(), None

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            finish()
            continue
        if line.startswith("#,"):
            if "msgid" in entry:
                finish()
            flags.update(f.strip() for f in line[2:].split(","))
            continue
        if line.startswith("#"):
            continue
        m = re.match(r"(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*\")$", line)
        if m:
            name = m.group(1)
            if (name == "msgctxt" or (name == "msgid" and "msgid" in entry)) and "msgid" in entry:
                finish()
            if name.startswith("msgstr["):
                name = "msgstr" if m.group(2) == "0" else f"_{name}"
            key = name
            entry[key] = _po_string(m.group(3))
        elif line.startswith('"') and key is not None:
            entry[key] += _po_string(line)
    finish()
    return out


_FORMAT = re.compile(r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspnm%]")
_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*(?:=\S+)?")
_WORD = re.compile(r"[^\W\d_]{2,}")


def mineable_text(text: str, *, min_words: int = 4, max_words: int = 40) -> str | None:
    """The message as one line if it is worth mining, else ``None``.

    Kept: at least ``min_words`` words of two or more letters *after* removing printf
    directives and option names (so ``"%s: %s: %s"`` or ``"-a, --all"`` do not count), and
    at most ``max_words`` words overall (long ``--help`` blocks are lists, not sentences).
    Whitespace is collapsed; directives stay in the returned text, as in the program.
    """
    flat = " ".join(text.split())
    if not flat:
        return None
    stripped = _OPTION.sub(" ", _FORMAT.sub(" ", flat))
    words = _WORD.findall(stripped)
    if len(words) < min_words or len(flat.split()) > max_words:
        return None
    return flat
