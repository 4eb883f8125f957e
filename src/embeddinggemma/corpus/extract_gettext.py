"""Translated message pairs from gettext catalogues (``.mo`` binaries and ``.po`` text, read by polib).

Program messages translated by volunteer teams are real parallel text in dozens of
languages. Most messages are too short or mostly format directives to test a sentence
embedder, so :func:`mineable_text` keeps only those with enough words once ``%s``-style
directives and command-line option names are removed.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import polib

__all__ = ["Message", "mineable_text", "parse_mo", "parse_po"]


@dataclass(frozen=True)
class Message:
    """One catalogue entry; plural entries keep their singular forms only."""

    msgid: str
    msgstr: str
    context: str | None = None
    fuzzy: bool = False
    plural: bool = False


def _message(entry: polib.POEntry | polib.MOEntry) -> Message:
    plural = bool(entry.msgid_plural)
    msgstr = entry.msgstr_plural.get(0, "") if plural else entry.msgstr
    return Message(entry.msgid, msgstr, entry.msgctxt, "fuzzy" in entry.flags, plural)


def parse_mo(data: bytes) -> list[Message]:
    """Entries of a compiled ``.mo`` file (either byte order; read by polib), header entry excluded."""
    try:
        catalogue = polib.mofile(data)
    except (OSError, ValueError, struct.error) as exc:  # polib reports a bad magic number as OSError
        raise ValueError(f"not a gettext .mo catalogue: {exc}") from exc
    return [_message(e) for e in catalogue if e.msgid]


def parse_po(text: str) -> list[Message]:
    """Entries of a ``.po`` file (read by polib; header and obsolete ``#~`` entries excluded)."""
    return [_message(e) for e in polib.pofile(text) if e.msgid and not e.obsolete]


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
