"""Python's documentation sources (reStructuredText, as shipped in ``python3.11-doc``) to plain sections.

The training data's documentation datasets pair a heading (an FAQ question, or a section heading of a
HOWTO, tutorial or library page) with the text under it. Not a docutils implementation: enough of reST
and Sphinx's markup (section underlines, directives, roles, links, literals) to turn CPython's own
documentation into readable paragraphs, with no dependency beyond the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RstPage", "parse_rst", "rst_inline"]

_ADORNMENT = re.compile(r"^([=\-~^\"*+#'`:.])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::\s*(.*)$")
# Directives whose block is not prose: dropped with everything indented under them.
_DROP = {
    "index", "toctree", "highlight", "sectionauthor", "moduleauthor", "include", "literalinclude", "image",
    "figure", "raw", "contents", "testsetup", "testcleanup", "productionlist", "tabularcolumns", "list-table",
    "audit-event", "only", "csv-table", "table", "rubric", "program", "availability", "testoutput",
}  # fmt: skip
# Object descriptions: their signature is kept as a line of text, their body as prose.
_SIGNATURE = {
    "function", "method", "class", "data", "attribute", "exception", "decorator", "decoratormethod", "classmethod",
    "staticmethod", "coroutinefunction", "coroutinemethod", "abstractmethod", "describe", "object", "opcode",
    "cmdoption", "option", "envvar", "pdbcommand", "c:function", "c:macro", "c:type", "c:member", "c:var",
}  # fmt: skip
# Directives whose body is code: kept verbatim.
_CODE = {"code-block", "sourcecode", "code", "doctest", "testcode", "parsed-literal"}
_ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
_REF = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``(.+?)``")
_EMPHASIS = re.compile(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])")


@dataclass(frozen=True)
class RstPage:
    """A page: its title, ``(heading, text)`` sections in order (text: one paragraph per line), and the
    modules it documents (``.. module::`` / ``.. currentmodule::``)."""

    title: str
    sections: tuple[tuple[str, str], ...]
    modules: tuple[str, ...]


def rst_inline(text: str) -> str:
    """Resolve inline markup: roles (``:func:`~os.path.join``` -> ``os.path.join``, ``:ref:`text <label>``` ->
    ``text``), hyperlinks, ````literals````, ``*emphasis*``."""

    def role(m: re.Match[str]) -> str:
        inner = m.group(1)
        label = re.match(r"^(.*?)\s*<[^<>]*>$", inner)
        if label and label.group(1):
            inner = label.group(1)
        return inner.lstrip("~!")

    text = _ROLE.sub(role, text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _REF.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _EMPHASIS.sub(lambda m: m.group(1), text)
    return text.replace("\\", "")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_heading(lines: list[str], i: int) -> bool:
    """``lines[i]`` is a title underlined by ``lines[i + 1]`` (as long as the title, or longer)."""
    title = lines[i]
    if not title.strip() or title.startswith(" ") or i + 1 >= len(lines) or _DIRECTIVE.match(title):
        return False
    under = lines[i + 1]
    return bool(_ADORNMENT.match(under)) and len(under.rstrip()) >= len(title.rstrip())


def parse_rst(source: str) -> RstPage:
    """Split a reST page into sections of plain text (directives, comments and index entries dropped,
    signatures of documented objects kept)."""
    lines = source.replace("\t", "    ").split("\n")
    sections: list[tuple[str, list[str]]] = []
    modules: list[str] = []
    current: list[str] = []
    paragraphs: list[str] = []
    skip_indent: int | None = None  # dropping a block indented deeper than this
    literal_indent: int | None = None  # copying a literal block (after "::" or a code directive) verbatim
    literal: list[str] = []
    paragraph_indent = 0

    def flush() -> bool:
        """End the paragraph; True when it announced a literal block (ends with "::")."""
        announces = False
        if current:
            joined = re.sub(r"\s+", " ", " ".join(current)).strip()
            announces = joined.endswith("::")
            if announces:
                joined = joined[:-1].rstrip(" :") + (":" if joined[:-2].strip() else "")
            joined = rst_inline(joined)
            if joined and joined != ":":
                paragraphs.append(joined)
            current.clear()
        return announces

    def end_literal() -> None:
        nonlocal literal_indent
        if literal:
            base = min(_indent(x) for x in literal if x.strip())
            paragraphs.append("\n".join(x[base:] for x in literal).strip("\n"))
            literal.clear()
        literal_indent = None

    def start(heading: str) -> None:
        flush()
        end_literal()
        if sections:
            sections[-1][1].extend(paragraphs)
        paragraphs.clear()
        sections.append((rst_inline(heading.strip()), []))

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if literal_indent is not None:
            if not line.strip() or _indent(line) > literal_indent:
                literal.append(line)
                i += 1
                continue
            end_literal()
        if skip_indent is not None:
            if not line.strip() or _indent(line) > skip_indent:
                i += 1
                continue
            skip_indent = None
        if _ADORNMENT.match(line):
            if i + 2 < len(lines) and _is_heading(lines, i + 1):
                i += 1  # overline: the title follows
                continue
            if not current:  # a transition line ("----"): no text
                i += 1
                continue
        if _is_heading(lines, i):
            start(line)
            i += 2
            continue
        directive = _DIRECTIVE.match(line.strip())
        if directive:
            flush()
            name, arg = directive.group(1), directive.group(2).strip()
            if name in ("module", "currentmodule") and arg:
                modules.append(arg)
            if name in _DROP or name in ("module", "currentmodule"):
                skip_indent = _indent(line)
            elif name in _CODE:
                literal_indent = _indent(line)
            elif name in _SIGNATURE and arg:
                paragraphs.append(rst_inline(arg))
            i += 1
            while i < len(lines) and re.match(r"^\s+:[\w-]+:", lines[i]):  # directive options
                i += 1
            continue
        if line.strip().startswith(".. "):  # a comment or a link target: drop it and its block
            flush()
            skip_indent = _indent(line)
            i += 1
            continue
        if not line.strip() or line.strip().startswith(("* ", "- ", "#. ")) or re.match(r"^\s*\d+\.\s", line):
            base = paragraph_indent
            if flush():
                literal_indent = base
        if line.strip() and sections:
            if not current:
                paragraph_indent = _indent(line)
            current.append(line.strip())
        i += 1
    start("")
    sections.pop()
    title = sections[0][0] if sections else ""
    return RstPage(title, tuple((h, "\n".join(p)) for h, p in sections), tuple(dict.fromkeys(modules)))
