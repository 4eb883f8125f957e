"""Python's documentation sources (reStructuredText, as shipped in ``python3.11-doc``) to plain sections.

The training data's documentation datasets pair a heading (an FAQ question, or a section heading of a
HOWTO, tutorial or library page) with the text under it. docutils parses the reStructuredText; Sphinx's
own directives and roles (which docutils does not know) get small handlers here: object descriptions
keep their signature as a line of text, code directives their code, index entries, tables of contents
and other non-prose blocks are dropped, and a role becomes its text (``:func:`~os.path.join``` ->
``os.path.join``, ``:ref:`text <label>``` -> ``text``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from docutils import nodes, utils
from docutils.core import publish_doctree
from docutils.parsers.rst import Directive, directives, roles
from docutils.statemachine import StringList

__all__ = ["RstPage", "parse_rst"]

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
_MODULE = {"module", "currentmodule"}
_SETTINGS = {
    "report_level": 5,  # Sphinx markup docutils does not know is expected: no warnings on stderr
    "halt_level": 5,
    "doctitle_xform": False,  # the page title stays the first section, as in the source
    "file_insertion_enabled": False,  # never read other files (include, raw :file:)
    "raw_enabled": False,
}


@dataclass(frozen=True)
class RstPage:
    """A page: its title, ``(heading, text)`` sections in order (text: one paragraph per line), and the
    modules it documents (``.. module::`` / ``.. currentmodule::``)."""

    title: str
    sections: tuple[tuple[str, str], ...]
    modules: tuple[str, ...]


class _Module(nodes.Element):
    """Where ``.. module::`` / ``.. currentmodule::`` stood (no text)."""


class _AnyOption(dict):
    """Every option name is accepted (Sphinx's directives have many); its value is not used."""

    def __missing__(self, name: str) -> Any:
        return directives.unchanged

    def __bool__(self) -> bool:  # docutils looks for options only when a directive declares some
        return True


class _Directive(Directive):
    """Sphinx's directives as docutils sees them: any options, one argument (a signature, a language, a
    module name) up to the first blank line, then a body."""

    optional_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar[Any] = _AnyOption()
    has_content = True

    def body(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


class _Prose(_Directive):
    """Any other directive (note, versionadded, seealso, ...): text on the directive's own line (a version,
    a title) is dropped; the lines under it are ordinary text."""

    optional_arguments = 0  # so docutils hands over every line as the body

    def run(self) -> list[nodes.Node]:
        inline = self.block_text.split("\n", 1)[0].partition("::")[2].strip()
        lines = list(self.content)
        return self.body(lines[1:] if inline and lines else lines)


class _Drop(_Directive):
    def run(self) -> list[nodes.Node]:
        return []


class _Code(_Directive):
    def run(self) -> list[nodes.Node]:
        return [nodes.literal_block(text="\n".join(self.content))] if self.content else []


class _Signature(_Directive):
    """An object description: each signature line is a line of text, the body is prose."""

    def run(self) -> list[nodes.Node]:
        signatures = re.sub(r"\\\n", " ", self.arguments[0]) if self.arguments else ""  # "\" continues a line
        lines = [" ".join(line.split()) for line in signatures.split("\n")]
        return [nodes.literal_block(text=line) for line in lines if line] + self.body(list(self.content))


class _ModuleDirective(_Directive):
    def run(self) -> list[nodes.Node]:
        return [_Module(name=self.arguments[0].strip())] if self.arguments else []


def _role_text(name, rawtext, text, lineno, inliner, options=None, content=None):
    """Any role: its text, or its label when written ``label <target>``, without Sphinx's ``~``/``!``."""
    text = utils.unescape(text)
    label = re.match(r"^(.*?)\s*<[^<>]*>$", text, re.DOTALL)
    if label and label.group(1):
        text = label.group(1)
    return [nodes.Text(text.lstrip("~!"))], []


def _register(source: str) -> None:
    """docutils looks directives and roles up by lower-cased name in a process-wide registry. Every name this
    page uses (found anywhere in it, table cells included) gets the handler its name implies, replacing
    docutils' own: the result depends on the page alone, not on which pages were parsed before."""
    for name in {n.lower() for n in re.findall(r"\.\.\s+([\w:-]+)::", source)}:
        handler = (
            _Drop if name in _DROP else _Code if name in _CODE else _Signature if name in _SIGNATURE
            else _ModuleDirective if name in _MODULE else _Prose
        )  # fmt: skip
        directives.register_directive(name, handler)
    for name in {n.lower() for n in re.findall(r":([\w:+-]+):`", source)}:
        roles.register_local_role(name, _role_text)


def _flat(text: str) -> str:
    return " ".join(text.split())


class _Collector:
    """Walks a doctree into flat ``(heading, paragraphs)`` sections, in document order."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, list[str]]] = []
        self.modules: list[str] = []

    def add(self, text: str) -> None:
        if text and self.sections:
            self.sections[-1][1].append(text)

    def walk(self, node: nodes.Node) -> None:
        for child in node.children:
            self.visit(child)

    def walk_prefixed(self, prefix: str, node: nodes.Node, *, alone: bool) -> None:
        """Walk ``node`` with ``prefix`` (a list marker, a defined term) before its first paragraph; with
        ``alone``, the prefix is a paragraph of its own when ``node`` has none."""
        paragraphs = self.sections[-1][1] if self.sections else []
        first = len(paragraphs)
        self.walk(node)
        if len(paragraphs) > first:
            paragraphs[first] = f"{prefix} {paragraphs[first]}"
        elif alone:
            self.add(prefix)

    def visit(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.section):
            self.sections.append((_flat(node[0].astext()), []))
            for child in node.children[1:]:
                self.visit(child)
        elif isinstance(node, _Module):
            self.modules.append(node["name"])
        elif isinstance(node, nodes.literal_block | nodes.doctest_block):
            self.add(node.astext().strip("\n"))
        elif isinstance(node, nodes.definition_list_item):  # "term definition" on one line
            term = " ".join(child.astext() for child in node.children if not isinstance(child, nodes.definition))
            self.walk_prefixed(_flat(term), node.children[-1], alone=True)
        elif isinstance(node, nodes.row):  # a table row: its cells on one line
            self.add(" | ".join(_flat(entry.astext()) for entry in node.children))
        elif isinstance(node, nodes.paragraph | nodes.line_block):
            self.add(_flat(node.astext()))
        elif isinstance(node, nodes.attribution):  # "-- author" under a quotation
            self.add(f"-- {_flat(node.astext())}")
        elif isinstance(node, nodes.bullet_list):
            for item in node.children:
                self.walk_prefixed(node["bullet"], item, alone=False)
        elif isinstance(node, nodes.enumerated_list):
            for number, item in enumerate(node.children, start=node.get("start", 1)):
                self.walk_prefixed(f"{node['prefix']}{number}{node['suffix']}", item, alone=False)
        elif isinstance(node, nodes.Invisible | nodes.title | nodes.system_message | nodes.footnote | nodes.citation):
            return
        elif isinstance(node, nodes.Element):
            self.walk(node)


def parse_rst(source: str) -> RstPage:
    """Split a reST page into sections of plain text (directives, comments and index entries dropped,
    signatures of documented objects kept)."""
    _register(source)
    document = publish_doctree(source.replace("\t", "    "), settings_overrides=_SETTINGS)
    # Not the section's prose: footnote marks ("[#]_") and docutils' own messages about markup it doubts
    for kind in (nodes.footnote_reference, nodes.citation_reference, nodes.system_message):
        for node in list(document.findall(kind)):
            before = node.previous_sibling()
            if isinstance(before, nodes.Text) and kind is not nodes.system_message:  # "methods [#]_," -> "methods,"
                node.parent.replace(before, nodes.Text(before.rstrip()))
            node.parent.remove(node)
    collector = _Collector()
    collector.walk(document)
    sections = collector.sections
    title = sections[0][0] if sections else ""
    return RstPage(title, tuple((h, "\n".join(p)) for h, p in sections), tuple(dict.fromkeys(collector.modules)))
