"""(docstring summary, function source without docstring) pairs from Python modules.

This is the CodeSearchNet recipe applied to the CPython standard library: the query is
the first paragraph of a function's docstring, the document is the function's code with
the docstring removed (otherwise the answer is pasted into the document). Functions with
too little code to tell apart (``pass``, a single ``return``) are skipped.
"""

from __future__ import annotations

import ast
import inspect
import logging
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embeddinggemma.corpus.debian import iter_deb_files

logger = logging.getLogger(__name__)

__all__ = [
    "STDLIB_PACKAGES",
    "CodeFunction",
    "docstring_summary",
    "extract_functions",
    "module_name",
    "stdlib_functions",
]

# The CPython 3.11 standard library as Debian ships it (pinned in suite_sources.PACKAGES).
STDLIB_PACKAGES = ("libpython3.11-minimal", "libpython3.11-stdlib")
# Not library code a user would search for: tests, codecs tables, bundled tools, generated files.
_SKIP_MODULE_PREFIXES = ("test.", "encodings.", "pydoc_data.", "__phello__", "_sysconfigdata", "idlelib.", "lib2to3.")
_SKIP_MODULES = {"test", "encodings", "pydoc_data", "this", "antigravity", "__hello__"}


@dataclass(frozen=True)
class CodeFunction:
    """One function or method: ``qualname`` like ``JSONDecoder.raw_decode``."""

    module: str
    qualname: str
    lineno: int
    summary: str
    code: str
    code_lines: int  # non-blank, non-comment lines of the body, excluding the docstring


def module_name(path: str) -> str | None:
    """``usr/lib/python3.11/json/decoder.py`` -> ``json.decoder``; ``None`` if not under a
    ``pythonX.Y`` directory. Package ``__init__`` files map to the package name."""
    m = re.search(r"(?:^|/)python3\.\d+/(.+)\.py$", path)
    if not m:
        return None
    parts = m.group(1).split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts else None


def docstring_summary(doc: str) -> str:
    """First paragraph of a docstring on one line (whitespace collapsed)."""
    first = inspect.cleandoc(doc).strip().split("\n\n", 1)[0]
    return " ".join(first.split())


def _code_without_docstring(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
    end = node.end_lineno or node.lineno
    doc = node.body[0]
    drop = set(range(doc.lineno - 1, (doc.end_lineno or doc.lineno)))
    return [line for i, line in enumerate(lines[start:end], start=start) if i not in drop]


def _significant(code_lines: list[str], skip: int) -> int:
    return sum(1 for ln in code_lines[skip:] if ln.strip() and not ln.strip().startswith("#"))


def extract_functions(source: str, module: str) -> list[CodeFunction]:
    """Every module-level function and class method (nested classes included, functions
    nested in functions excluded) that has a docstring, in source order.

    Raises:
        SyntaxError: if ``source`` does not parse (the caller decides whether to skip it).
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    out: list[CodeFunction] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if not doc or node.body[0].lineno == node.lineno:
                    continue  # no docstring, or one sharing the ``def`` line (it would leak into the code)
                code = _code_without_docstring(lines, node)
                header = node.body[0].lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out.append(
                    CodeFunction(
                        module=module,
                        qualname=prefix + node.name,
                        lineno=node.lineno,
                        summary=docstring_summary(doc),
                        code=textwrap.dedent("\n".join(code)).strip("\n"),
                        code_lines=_significant(code, header),
                    )
                )

    visit(tree.body, "")
    return out


def stdlib_functions(debs: Mapping[str, Path]) -> dict[str, list[CodeFunction]]:
    """Module -> its documented functions (:func:`extract_functions`), for every standard-library module of
    :data:`STDLIB_PACKAGES` (``debs``: package name -> ``.deb``), in package then path order."""
    out: dict[str, list[CodeFunction]] = {}
    for name in STDLIB_PACKAGES:
        for path, content in iter_deb_files(
            debs[name], lambda p: p.startswith("usr/lib/python3.11/") and p.endswith(".py")
        ):
            mod = module_name(path)
            if mod is None or "-packages" in path or mod in _SKIP_MODULES or mod.startswith(_SKIP_MODULE_PREFIXES):
                continue
            try:
                out[mod] = extract_functions(content.decode("utf-8"), mod)
            except (SyntaxError, UnicodeDecodeError) as exc:  # pragma: no cover - the stdlib parses
                logger.warning("skipping %s: %s", path, exc)
    return out
