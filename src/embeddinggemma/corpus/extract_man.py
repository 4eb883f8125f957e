"""Man pages (roff with the ``man`` macros) to plain-text sections.

Not a troff implementation: just enough of the ``man`` macro package, font escapes and
special characters to turn the Linux man-pages project's sources (and their po4a
translations) into readable paragraphs, with tables and macro definitions dropped. No
groff is needed, so the suite builds identically wherever Python runs.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from embeddinggemma.corpus.debian import iter_deb_files

__all__ = ["ManPage", "parse_man", "read_man_pages", "roff_inline", "split_name_line"]

# Named special characters that carry meaning in prose; everything else in \(xx or \[xx] is dropped.
_SPECIAL = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "\u201c",
    "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae",
    "tm": "\u2122", "rs": "\\", "ti": "~", "ha": "^", "ga": "`", "dg": "\u2020", "de": "\u00b0",
    "mu": "\u00d7", "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260",
    "->": "\u2192", "<-": "\u2190", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a",
    "ss": "\u00df", "pc": "\u00b7", "sh": "#", "Do": "$", "at": "@", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "ba": "|", "or": "|", "sl": "/", "ul": "_", "eq": "=", "pl": "+",
    "nbsp": " ",
}  # fmt: skip

_ESCAPE = re.compile(
    r"""\\(?:
        \((?P<two>..)                      # \(xx special character
      | \[(?P<long>[^\]]*)\]               # \[name] special character or \[u00E9]
      | f(?:\[[^\]]*\]|\(..|.)             # font change: dropped
      | \*(?:\[[^\]]*\]|\(..|.)            # string interpolation: dropped
      | s[+-]?(?:\d|\(\d\d|\[\d+\])        # size change: dropped
      | [NhvwlLxXbDoHSZ]'[^']*'            # escapes with a quoted argument: dropped
      | k.|n(?:\[[^\]]*\]|\(..|.)|g.       # registers: dropped
      | (?P<char>.)                        # single-character escapes
    )""",
    re.VERBOSE,
)
_SINGLE = {"-": "-", "e": "\\", "\\": "\\", "~": " ", " ": " ", "0": " ", "'": "'", "`": "`", ".": "."}

# Requests that break a paragraph; their arguments are not text.
_BREAKS = {
    "PP",
    "P",
    "LP",
    "sp",
    "br",
    "RS",
    "RE",
    "in",
    "ti",
    "HP",
    "PD",
    "ne",
    "bp",
    "nf",
    "fi",
    "EX",
    "EE",
    "TQ",
}
# Font macros: alternating ones concatenate their arguments, the others join them with spaces.
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_FONT = {"B", "I", "SM", "SB", "R", "CW"}


@dataclass(frozen=True)
class ManPage:
    """A parsed page: ``.TH`` title and section, and ``(heading, text)`` pairs in order.

    ``text`` has one paragraph per line: wrapped source lines are joined with spaces.
    """

    title: str
    section: str
    sections: tuple[tuple[str, str], ...]

    def get(self, heading: str) -> str | None:
        """Text of the first section whose heading equals ``heading`` (case-insensitive)."""
        for h, text in self.sections:
            if h.casefold() == heading.casefold():
                return text
        return None


def roff_inline(text: str) -> str:
    """Resolve inline escapes (fonts, special characters, ``\\-``, ``\\&`` ...) in one line."""
    # "\"" starts a comment that runs to the end of the line.
    text = re.split(r'(?<!\\)\\"', text, maxsplit=1)[0]

    def repl(m: re.Match[str]) -> str:
        if m.group("two") is not None:
            return _SPECIAL.get(m.group("two"), "")
        if m.group("long") is not None:
            name = m.group("long")
            if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
                return chr(int(name[1:], 16))
            return _SPECIAL.get(name, "")
        ch = m.group("char")
        if ch is None:
            return ""
        return _SINGLE.get(ch, "")  # \& \| \^ \% \: \c \} \{ and the unknown: nothing

    return _ESCAPE.sub(repl, text)


def _args(rest: str) -> list[str]:
    """Macro arguments as troff splits them: on blanks, with double quotes grouping words
    (``""`` inside quotes is a literal quote); a ``\\"`` comment ends the line."""
    rest = re.split(r'(?<!\\)\\"', rest, maxsplit=1)[0]
    args: list[str] = []
    i, n = 0, len(rest)
    while i < n:
        if rest[i] in " \t":
            i += 1
            continue
        if rest[i] == '"':
            i += 1
            buf = []
            while i < n:
                if rest[i] == '"':
                    if i + 1 < n and rest[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(rest[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and rest[j] not in " \t":
                j += 2 if rest[j] == "\\" else 1
            args.append(rest[i:j])
            i = j
    return args


def parse_man(source: str) -> ManPage:
    """Parse roff man-page source into sections of plain text.

    Handles ``.TH .SH .SS .TP .IP .B .I .BR``-style font macros, ``.nf``/``.EX`` blocks (kept
    as lines), tables (``.TS``..``.TE``, dropped), macro definitions (``.de``..``..``,
    dropped), conditionals (dropped), comments and line continuations.
    """
    title, section = "", ""
    sections: list[tuple[str, list[str]]] = []
    paragraphs: list[str] = []
    current: list[str] = []
    pending_heading: str | None = None  # ".SH" with no arguments: the heading is the next line
    nofill = False
    skip_until: str | None = None

    def flush() -> None:
        if current:
            joined = re.sub(r"[ \t]+", " ", " ".join(current)).strip()
            if joined:
                paragraphs.append(joined)
            current.clear()

    def start_section(heading: str) -> None:
        flush()
        if sections:
            sections[-1][1].extend(paragraphs)
        paragraphs.clear()
        sections.append((heading.strip(), []))

    # Join escaped newlines first: "foo \\\n bar" is one input line in troff.
    lines = re.sub(r"\\\n", "", source).split("\n")
    for raw in lines:
        if skip_until is not None:
            if raw.strip().startswith(skip_until):
                skip_until = None
            continue
        if raw.startswith(('.\\"', "'\\\"", '.\\"')) or raw.strip() in (".", "'"):
            continue
        if raw.startswith((".", "'")):
            m = re.match(r"[.']\s*([A-Za-z]+|\\\}|\.)\s*(.*)", raw)
            if not m:
                continue
            name, rest = m.group(1), m.group(2)
            if name == "TH":
                args = _args(rest)
                title = roff_inline(args[0]) if args else ""
                section = args[1] if len(args) > 1 else ""
            elif name in ("SH", "SS"):
                heading = " ".join(roff_inline(a) for a in _args(rest))
                if name == "SS":
                    flush()
                    if heading:
                        paragraphs.append(heading)
                elif heading:
                    start_section(heading)
                else:
                    pending_heading = "SH"
            elif name == "TS":
                flush()
                skip_until = ".TE"
            elif name in ("de", "de1", "am", "ig"):
                skip_until = ".."
            elif name in ("nf", "EX"):
                flush()
                nofill = True
            elif name in ("fi", "EE"):
                flush()
                nofill = False
            elif name in _BREAKS:
                flush()
            elif name in ("TP", "IP", "HP"):
                flush()
                label = _args(rest)[:1] if name == "IP" else []
                if label:
                    current.append(roff_inline(label[0]))
            elif name in _ALTERNATING:
                current.append("".join(roff_inline(a) for a in _args(rest)))
            elif name in _FONT:
                if rest.strip():
                    current.append(" ".join(roff_inline(a) for a in _args(rest)))
            elif name in ("UE", "ME") and rest.strip():
                # .UR/.MT links: the link text follows on its own lines; keep the UE/ME suffix (punctuation).
                current.append(roff_inline(rest.strip()))
            # Everything else (.ad .na .hy .ft .ds .if .ie .el .so .nr .ll .ce ...) is not text.
            if nofill:
                flush()
            continue
        text = roff_inline(raw)
        if pending_heading is not None:
            pending_heading = None
            start_section(text)
            continue
        if not sections:
            continue  # text before the first .SH is not part of any section
        if not text.strip():
            flush()
            continue
        current.append(text.strip() if not nofill else text.rstrip())
        if nofill:
            flush()
    start_section("")  # flush the last section
    sections.pop()
    return ManPage(
        title=title,
        section=section,
        sections=tuple((h, "\n".join(p)) for h, p in sections),
    )


def split_name_line(name_text: str) -> tuple[list[str], str] | None:
    """Split the NAME section ``"open, openat, creat - open and possibly create a file"``
    into ``(["open", "openat", "creat"], "open and possibly create a file")``.

    Returns ``None`` when there is no `` - `` separator (the page does not follow the
    convention, so it cannot give a clean query).
    """
    text = " ".join(name_text.split())
    m = re.match(r"^(.*?)\s+[-\u2013\u2014]\s+(.*)$", text)
    if not m:
        return None
    names = [n.strip() for n in m.group(1).split(",") if n.strip()]
    description = m.group(2).strip()
    if not names or not description:
        return None
    return names, description


def read_man_pages(deb: str | Path, lang: str | None) -> dict[str, str]:
    """``manN/page.N`` -> roff source of a package's English (``lang=None``) or translated (``usr/share/man/LANG``)
    pages, in path order. Aliases (``.so`` pages) and members that are not gzip are skipped; a page that is not
    UTF-8 is read as Latin-1."""
    prefix = "usr/share/man/" + (f"{lang}/" if lang else "")
    pattern = re.compile(re.escape(prefix) + r"(man\d\w*/[^/]+)\.gz$")
    out = {}
    for path, content in iter_deb_files(deb, lambda p: bool(pattern.match(p))):
        try:
            raw = gzip.decompress(content)
        except OSError:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        if not text.lstrip().startswith(".so "):  # an alias of another page
            out[pattern.match(path).group(1)] = text  # type: ignore[union-attr]
    return out
