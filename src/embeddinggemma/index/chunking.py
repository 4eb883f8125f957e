"""Split a file into chunks that fit the model, counted in the model's own tokens, with overlap.

A file is first cut into sections at its headings (Markdown, reStructuredText) or definitions (code:
functions and classes); each chunk's title is the file name plus the heading trail of the section it
starts in (``argparse.rst: ArgumentParser objects > prog``), which goes into the document prompt
``title: {title} | text: ``. Sections are packed whole into chunks while they fit; a small section
joins the next one; a long one is split at line boundaries with ``overlap`` tokens repeated between
neighbours. Lines longer than a chunk are split at word (then character) boundaries.

Chunks never exceed ``chunk_tokens`` *including* the prompt, title, BOS and EOS: every chunk is
counted exactly once assembled, so the model never truncates one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from embeddinggemma.prompts import document_prompt

__all__ = ["Chunk", "Chunker", "find_headings"]

Trail = tuple[str, ...]
TokenCounter = Callable[[Sequence[str]], list[int]]

_RST_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")  # a line of one repeated punctuation character
_DEFINITION = re.compile(
    r"^(?P<indent>[ \t]*)(?:(?:export|default|pub(?:\([^)]*\))?|async|static|public|private|protected|abstract|"
    r"final|override|inline|extern|unsafe)\s+)*(?:def|class|function|func|fn|struct|enum|interface|trait|impl|"
    r"module|sub|type)\s+(?:\([^)]*\)\s*)?(?P<name>[A-Za-z_$][\w$.]*)"
)
_COMMENT_OR_DECORATOR = ("@", "#", "//", "/*", "*", "--", ";;")


@dataclass(frozen=True)
class Chunk:
    """A piece of a file: ``text`` spans lines ``start_line``..``end_line`` (1-based, inclusive)."""

    text: str
    start_line: int
    end_line: int
    title: str | None
    tokens: int  # the prompted input's length in tokens, BOS and EOS included
    page: int | None = None


@dataclass
class _Unit:
    line: int  # 0-based line index
    text: str
    tokens: int
    trail: Trail


# -- headings ------------------------------------------------------------------------------------


def _markdown_headings(text: str) -> list[tuple[int, int, str]]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    out = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            out.append((token.map[0], int(token.tag[1]), tokens[i + 1].content.strip()))
    return out


def _rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """Section titles: a line underlined (and optionally overlined) by one punctuation character at
    least as long as the title; levels follow the order in which adornment styles first appear."""
    styles: dict[tuple[str, bool], int] = {}
    out = []
    for i in range(len(lines) - 1):
        title = lines[i].rstrip()
        under = _RST_ADORNMENT.match(lines[i + 1])
        if not title or title[0].isspace() or not under or len(lines[i + 1].rstrip()) < len(title):
            continue
        if _RST_ADORNMENT.match(lines[i]):
            continue  # an overline or a transition, not a title
        over = i > 0 and lines[i - 1].rstrip() == lines[i + 1].rstrip()
        if not over and i > 0 and lines[i - 1].strip():
            continue  # a title starts a block: the line above is blank (or its overline)
        style = (under.group(1), over)
        level = styles.setdefault(style, len(styles) + 1)
        out.append((i - 1 if over else i, level, title.strip()))
    return out


def _code_definitions(text: str, lines: list[str], file_name: str) -> list[tuple[int, int, str]]:
    """Function and class definitions: Pygments' name tokens where its lexer marks them, plus a keyword
    pattern (def, class, function, func, fn, struct ...) for lexers that do not; nesting by indentation."""
    from bisect import bisect_right

    from pygments.lexers import get_lexer_for_filename
    from pygments.token import Name
    from pygments.util import ClassNotFound

    found: dict[int, str] = {}
    try:
        lexer = get_lexer_for_filename(file_name, stripnl=False, ensurenl=False)
        starts, offset = [], 0
        for line in lines:
            starts.append(offset)
            offset += len(line)
        for index, kind, value in lexer.get_tokens_unprocessed(text):
            if kind in Name.Function or kind in Name.Class:
                found.setdefault(bisect_right(starts, index) - 1, value)
    except ClassNotFound:
        pass
    for i, line in enumerate(lines):
        match = _DEFINITION.match(line)
        if match:
            found.setdefault(i, match.group("name"))
    out = []
    for i in sorted(found):
        indent = len(lines[i]) - len(lines[i].lstrip())
        start = i
        while start > 0 and lines[start - 1].strip().startswith(_COMMENT_OR_DECORATOR):
            start -= 1  # decorators and the comment block above a definition belong to it
        out.append((start, indent, found[i]))
    return out


def find_headings(text: str, kind: str, file_name: str) -> list[tuple[int, Trail]]:
    """(0-based line, heading trail) where each section starts, in line order."""
    lines = text.splitlines(keepends=True)
    if kind == "markdown":
        raw = _markdown_headings(text)
    elif kind == "rst":
        raw = _rst_headings(lines)
    elif kind == "code":
        raw = _code_definitions(text, lines, file_name)
    else:
        return []
    out: list[tuple[int, Trail]] = []
    stack: list[tuple[int, str]] = []  # (level or indent, name)
    for line, level, name in raw:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, name))
        trail = tuple(n for _, n in stack)
        if out and out[-1][0] == line:
            out[-1] = (line, trail)
        elif not out or line > out[-1][0]:
            out.append((line, trail))
    return out


# -- packing -------------------------------------------------------------------------------------


class Chunker:
    """Cuts texts into chunks of at most ``chunk_tokens`` prompted tokens.

    Args:
        count_tokens: the model tokenizer's counter (``BaseTokenizer.count_tokens``: BOS and EOS included).
        chunk_tokens: the most tokens one prompted chunk may have (at most the model's limit).
        overlap_tokens: tokens repeated at the start of a chunk that continues a split section.
        titles: put ``file name: heading`` in the document prompt; False gives ``title: none``.
        min_tokens: a section with fewer tokens joins the next one in a chunk (default: a quarter chunk).
    """

    def __init__(
        self,
        count_tokens: TokenCounter,
        *,
        chunk_tokens: int,
        overlap_tokens: int,
        titles: bool = True,
        min_tokens: int | None = None,
    ):
        if chunk_tokens < 32:
            raise ValueError(f"chunk size must be at least 32 tokens, got {chunk_tokens}")
        if not 0 <= overlap_tokens <= chunk_tokens // 2:
            raise ValueError(
                f"overlap must be between 0 and half the chunk size ({chunk_tokens // 2}), got {overlap_tokens}"
            )
        self.count_tokens = count_tokens
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.titles = titles
        # a section smaller than this shares a chunk with the next one
        self.min_tokens = chunk_tokens // 4 if min_tokens is None else min_tokens
        self._prompt_tokens: dict[str | None, int] = {}

    def title_for(self, file_name: str, trail: Trail) -> str | None:
        if not self.titles:
            return None
        return f"{file_name}: {' > '.join(trail)}" if trail else file_name

    def _budget(self, title: str | None) -> int:
        if title not in self._prompt_tokens:
            self._prompt_tokens[title] = self.count_tokens([document_prompt(title)])[0]
        budget = self.chunk_tokens - self._prompt_tokens[title]
        if budget < 16:
            raise ValueError(
                f"the title {title!r} leaves no room in a {self.chunk_tokens}-token chunk; raise --chunk-tokens"
            )
        return budget

    def chunk(self, text: str, kind: str, path: str, *, page: int | None = None, line_offset: int = 0) -> list[Chunk]:
        """Chunks of one text; ``path`` is the file's relative path (its last part names the title)."""
        file_name = path.rsplit("/", 1)[-1]
        lines = text.splitlines(keepends=True)
        if not lines:
            return []
        headings = find_headings(text, kind, file_name)
        trails: list[Trail] = []
        current: Trail = ()
        marks = dict(headings)
        for i in range(len(lines)):
            current = marks.get(i, current)
            trails.append(current)
        counts = [n - 2 for n in self.count_tokens(lines)]  # without BOS/EOS
        sections = [h for h, _ in headings if h > 0]
        bounds = [0, *sections, len(lines)]
        chunks: list[Chunk] = []
        units: list[_Unit] = []  # the chunk being built
        title: str | None = None
        for start, end in itertools.pairwise(bounds):
            section_title = self.title_for(file_name, trails[start])
            if units and sum(u.tokens for u in units) >= self.min_tokens:
                chunks.extend(self._emit(units, title, page, line_offset))
                units = []
            if not units:
                title = section_title
            for line in range(start, end):
                for unit in self._split_line(line, lines[line], counts[line], trails[line], self._budget(title)):
                    if units and sum(u.tokens for u in units) + unit.tokens > self._budget(title):
                        chunks.extend(self._emit(units, title, page, line_offset))
                        units = self._overlap(units, unit.tokens, self._budget(section_title))
                        title = section_title
                    units.append(unit)
        if units:
            chunks.extend(self._emit(units, title, page, line_offset))
        return chunks

    def _split_line(self, line: int, text: str, tokens: int, trail: Trail, budget: int) -> list[_Unit]:
        if tokens <= budget // 2:
            return [_Unit(line, text, tokens, trail)]
        words = re.findall(r"\S+\s*|\s+", text)
        counts = [n - 2 for n in self.count_tokens(words)]
        pieces: list[_Unit] = []
        buffer, size = "", 0
        for word, n in zip(words, counts, strict=True):
            if n > budget // 2:  # one "word" longer than half a chunk (base64, minified code): cut by characters
                step = max(1, len(word) * (budget // 2) // max(n, 1))
                for i in range(0, len(word), step):
                    part = word[i : i + step]
                    pieces.append(_Unit(line, part, self.count_tokens([part])[0] - 2, trail))
                continue
            if size + n > budget // 2 and buffer:
                pieces.append(_Unit(line, buffer, size, trail))
                buffer, size = "", 0
            buffer, size = buffer + word, size + n
        if buffer:
            pieces.append(_Unit(line, buffer, size, trail))
        return pieces

    def _overlap(self, previous: list[_Unit], next_tokens: int, budget: int) -> list[_Unit]:
        """The tail of the previous chunk to repeat: at most ``overlap_tokens``, leaving room for the next unit."""
        limit = min(self.overlap_tokens, budget - next_tokens)
        kept: list[_Unit] = []
        total = 0
        for unit in reversed(previous):
            if total + unit.tokens > limit:
                break
            kept.insert(0, unit)
            total += unit.tokens
        return kept

    def _emit(self, units: list[_Unit], title: str | None, page: int | None, line_offset: int) -> list[Chunk]:
        """Assemble units into chunks, counting each exactly; a chunk that line-wise counting
        underestimated gives back its last units to a following chunk."""
        out: list[Chunk] = []
        pending = list(units)
        while pending:
            while pending and not pending[0].text.strip():
                pending.pop(0)  # a chunk starts at its first non-blank line
            if not pending:
                break
            take = len(pending)
            while True:
                text = "".join(u.text for u in pending[:take]).rstrip()
                tokens = self.count_tokens([document_prompt(title) + text])[0]
                if tokens <= self.chunk_tokens or take == 1:
                    break
                take -= 1
            if tokens > self.chunk_tokens:  # a single unit still too long: halve it and retry
                unit = pending.pop(0)
                half = len(unit.text) // 2
                pending[:0] = [
                    _Unit(unit.line, unit.text[:half], unit.tokens // 2, unit.trail),
                    _Unit(unit.line, unit.text[half:], unit.tokens - unit.tokens // 2, unit.trail),
                ]
                continue
            last = next(u for u in reversed(pending[:take]) if u.text.strip())
            out.append(Chunk(text, pending[0].line + 1 + line_offset, last.line + 1 + line_offset, title, tokens, page))
            pending = pending[take:]
        return out
