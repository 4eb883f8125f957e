"""Real training text from pinned Debian packages, outside the evaluation suite's half of every source.

The paper's finetuning mixture spans task diversity, language diversity and code (section 2). At toy
scale, offline and reproducibly, the same three groups come from exact ``.deb`` files (version + sha256,
:mod:`embeddinggemma.corpus.debian`) with the suite's own extractors:

* ``code``: docstring summary -> function without its docstring (CPython 3.11 stdlib), "code_retrieval";
* ``manpages``: a man page's NAME description -> its DESCRIPTION, "query";
* ``manpages-xling``: the translated NAME description (6 languages) -> the English DESCRIPTION, "query";
* ``docs-faq``: Python FAQ question -> answer, "question_answering";
* ``docs-sections``: section heading of Python's HOWTOs, tutorial and reference -> section text, "query";
* ``bitext``: translated program message -> English original (tar, grep, sed, findutils, diffutils), "bitext".

Each extractor returns :class:`Candidate` examples carrying ``meta.source_ids`` (what they are cut from)
and a ``group`` (the unit kept together in one split); ``scripts/build_training_data.py`` filters them
through :class:`~embeddinggemma.corpus.disjoint.SuiteGuard`, splits and writes them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embeddinggemma.corpus.debian import DebianPackage, iter_deb_files
from embeddinggemma.corpus.disjoint import normalize_text
from embeddinggemma.corpus.extract_code import STDLIB_PACKAGES, stdlib_functions
from embeddinggemma.corpus.extract_gettext import mineable_text, parse_mo
from embeddinggemma.corpus.extract_man import parse_man, read_man_pages, split_name_line
from embeddinggemma.corpus.local_suite import leading_sentences
from embeddinggemma.corpus.pydoc import parse_rst
from embeddinggemma.corpus.suite_sources import PACKAGES as SUITE_PACKAGES
from embeddinggemma.corpus.suite_sources import msgid_source_id
from embeddinggemma.train.data import TrainingExample

logger = logging.getLogger(__name__)

__all__ = ["DATASETS", "PACKAGES", "Candidate", "DatasetRecipe", "cut_words"]

_GPL3 = "GPL-3+ (GNU program and its Translation Project catalogues): debian/copyright"
_NEW = [
    DebianPackage("tar", "1.34+dfsg-1.2+deb12u1", "amd64",
                  "24fb92e98c2969171f81a8b589263d705f6b1670f95d121cd74c810d4605acc3", _GPL3),
    DebianPackage("grep", "3.8-5", "amd64", "3264acea728df3c48a54f20e9291b965130e306b9d00adac76647049da7196df", _GPL3),
    DebianPackage("sed", "4.9-1+deb12u1", "amd64",
                  "fd557efeee8aae4619c2cb7f68aadccb804322ad4a99ab048aaae5901d253885", _GPL3),
    DebianPackage("findutils", "4.9.0-4", "amd64",
                  "5dd86bd0af4aa73f067dfd6b8339dd868f2dd84056aa79db29d1206d4fbc5e04", _GPL3),
    DebianPackage("diffutils", "1:3.8-4", "amd64",
                  "8bdfedc14c1035e3750e9f055ac9c1ecd9b5d05d9e6dc6466c4e9237eef407dd", _GPL3),
    DebianPackage("python3.11-doc", "3.11.2-6+deb12u9", "all",
                  "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
                  "PSF-2.0 (Python documentation): debian/copyright"),
]  # fmt: skip
_XLING = ("de", "es", "fr", "ja", "pl", "ru")
# The suite's pins are reused unchanged (same bytes); the others are added here.
PACKAGES: dict[str, DebianPackage] = {**SUITE_PACKAGES, **{p.name: p for p in _NEW}}
_GETTEXT_DOMAINS = ("tar", "grep", "sed", "findutils", "diffutils")
_MAN_PACKAGES = ("manpages", "manpages-dev", "coreutils", *_GETTEXT_DOMAINS)


@dataclass(frozen=True)
class Candidate:
    """A training example before filtering; ``group`` is the unit kept in one split (module, page, message)."""

    example: TrainingExample
    group: str


def cut_words(text: str, limit: int) -> str:
    """The first lines/sentences of ``text`` up to about ``limit`` words (a hard word cut when even the
    first sentence is longer). Line breaks are kept: they carry the structure of code and lists."""
    if len(text.split()) <= limit:
        return text
    out: list[str] = []
    n = 0
    for line in text.split("\n"):
        words = len(line.split())
        if n + words <= limit:
            out.append(line)
            n += words
            continue
        kept, n, _ = leading_sentences(line, n, limit)
        if kept:
            out.append(" ".join(kept))
        break
    if n < limit // 2:
        return " ".join(text.split()[:limit])
    return "\n".join(out).strip()


def _unique(cands: list[Candidate], key: Callable[[Candidate], str]) -> list[Candidate]:
    """Drop every candidate whose key occurs more than once (an ambiguous pair teaches nothing)."""
    count = Counter(key(c) for c in cands)
    return [c for c in cands if count[key(c)] == 1]


# ------------------------------------------------------------------------------------------------ code


def code_candidates(debs: dict[str, Path], *, min_lines: int = 3, max_lines: int = 30) -> list[Candidate]:
    """Documented stdlib functions, filtered as the suite filters them (3-30 body lines, no dunders,
    summaries of 4-80 words, unique summary and body). The partition is applied by the guard."""
    cands: list[Candidate] = []
    for mod, functions in stdlib_functions(debs).items():
        for f in functions:
            last = f.qualname.rsplit(".", 1)[-1]
            if not min_lines <= f.code_lines <= max_lines or (last.startswith("__") and last.endswith("__")):
                continue
            if not 4 <= len(f.summary.split()) <= 80:
                continue
            sid = f"cpython-stdlib:{mod}"
            meta = {"source_ids": [sid], "qualname": f.qualname, "lineno": f.lineno}
            ex = TrainingExample(f.summary, f.code, id=f"py:{mod}:{f.qualname}:{f.lineno}", meta=meta)
            cands.append(Candidate(ex, sid))
    cands = _unique(cands, lambda c: c.example.positive)
    return _unique(cands, lambda c: normalize_text(c.example.query))


# ------------------------------------------------------------------------------------------- man pages


def manpage_candidates(debs: dict[str, Path], *, doc_words: int = 100, min_doc_words: int = 25) -> list[Candidate]:
    """NAME description -> the start of DESCRIPTION, for every page with both (first package wins on a
    name clash). No title: as in the suite, the page name would turn the task into name matching."""
    seen: set[str] = set()
    cands = []
    for pkg in _MAN_PACKAGES:
        for page, src in sorted(read_man_pages(debs[pkg], None).items()):
            if page in seen:
                continue
            seen.add(page)
            parsed = parse_man(src)
            nl = split_name_line(parsed.sections[0][1]) if parsed.sections else None
            desc = parsed.get("DESCRIPTION")
            if nl is None or desc is None or len(desc.split()) < min_doc_words or len(nl[1].split()) < 3:
                continue
            sid = f"man-pages:{page}"
            meta = {"source_ids": [sid], "package": pkg, "lang": "en"}
            ex = TrainingExample(nl[1], cut_words(desc, doc_words), id=f"en:{page}", meta=meta)
            cands.append(Candidate(ex, sid))
    cands = _unique(cands, lambda c: normalize_text(c.example.positive))
    return _unique(cands, lambda c: normalize_text(c.example.query))


def manpage_xling_candidates(debs: dict[str, Path], english: list[Candidate]) -> list[Candidate]:
    """Translated NAME descriptions of the English pages -> the English DESCRIPTION (a translated page
    shares its English page's identifier and group, so it always lands in the same split)."""
    by_page = {c.example.id.split(":", 1)[1]: c for c in english if c.example.id}
    cands = []
    for lang in _XLING:
        translated: list[Candidate] = []
        for suffix in ("", "-dev"):
            for page, src in sorted(read_man_pages(debs[f"manpages-{lang}{suffix}"], lang).items()):
                base = by_page.get(page)
                if base is None:
                    continue
                parsed = parse_man(src)
                nl = split_name_line(parsed.sections[0][1]) if parsed.sections else None
                if nl is None or normalize_text(nl[1]) == normalize_text(base.example.query) or len(nl[1]) < 6:
                    continue
                meta = {**dict(base.example.meta or {}), "lang": lang, "package": f"manpages-{lang}{suffix}"}
                ex = TrainingExample(nl[1], base.example.positive, id=f"{lang}:{page}", meta=meta)
                translated.append(Candidate(ex, base.group))
        cands += _unique(translated, lambda c: normalize_text(c.example.query))
    return cands


# ------------------------------------------------------------------------------------------ python docs

_DOC_ROOT = "usr/share/doc/python3.11/html/_sources/"
_SECTION_DIRS = ("howto", "tutorial", "library", "reference", "using", "extending", "c-api")


def _doc_pages(deb: Path, dirs: tuple[str, ...]) -> dict[str, str]:
    """``faq/programming`` -> reST source."""
    pattern = re.compile(re.escape(_DOC_ROOT) + r"((?:" + "|".join(dirs) + r")/[\w.-]+)\.rst\.txt$")
    return {
        pattern.match(p).group(1): c.decode("utf-8")  # type: ignore[union-attr]
        for p, c in iter_deb_files(deb, lambda p: bool(pattern.match(p)))
    }


def docs_faq_candidates(debs: dict[str, Path], *, answer_words: int = 150) -> list[Candidate]:
    """Python FAQ: each question heading -> its answer; the FAQ page title is the document title."""
    cands = []
    for page, src in sorted(_doc_pages(debs["python3.11-doc"], ("faq",)).items()):
        parsed = parse_rst(src)
        for heading, text in parsed.sections[1:]:
            if not heading.endswith("?") or len(text.split()) < 10:
                continue
            sid = f"python-doc:{page}#{heading}"
            meta = {"source_ids": [sid]}
            cands.append(
                Candidate(TrainingExample(heading, cut_words(text, answer_words), title=parsed.title, meta=meta), sid)
            )
    cands = _unique(cands, lambda c: normalize_text(c.example.positive))
    return _unique(cands, lambda c: normalize_text(c.example.query))


def docs_section_candidates(debs: dict[str, Path], *, section_words: int = 120) -> list[Candidate]:
    """Section heading (3+ words, not a question) -> section text, titled with the page title. A page
    documenting stdlib modules carries their identifiers, so the guard drops pages of suite modules."""
    cands = []
    for page, src in sorted(_doc_pages(debs["python3.11-doc"], _SECTION_DIRS).items()):
        parsed = parse_rst(src)
        module_ids = [f"cpython-stdlib:{m}" for m in parsed.modules]
        for heading, text in parsed.sections[1:]:
            if len(heading.split()) < 3 or heading.endswith("?") or len(text.split()) < 30:
                continue
            sid = f"python-doc:{page}#{heading}"
            meta = {"source_ids": [sid, *module_ids]}
            ex = TrainingExample(heading, cut_words(text, section_words), title=parsed.title, meta=meta)
            cands.append(Candidate(ex, sid))
    cands = _unique(cands, lambda c: normalize_text(c.example.positive))
    return _unique(cands, lambda c: normalize_text(c.example.query))


# ---------------------------------------------------------------------------------------------- bitext


def bitext_candidates(debs: dict[str, Path]) -> list[Candidate]:
    """Translated message -> English message, every language of five GNU programs' catalogues.

    A message carries its own identifier and the one it would have in coreutils (the suite's domain):
    gnulib messages are shared between programs, and the coreutils identifier puts such a message in
    the suite's partition no matter which program it comes from here.
    """
    cands: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for domain in _GETTEXT_DOMAINS:
        catalogues = iter_deb_files(debs[domain], lambda p, d=domain: p.endswith(f"/LC_MESSAGES/{d}.mo"))
        for path, content in catalogues:
            lang = path.split("/")[-3]
            for m in parse_mo(content):
                english = mineable_text(m.msgid)
                if english is None or m.plural or m.context is not None or not m.msgstr.strip():
                    continue
                translation = " ".join(m.msgstr.split())
                if normalize_text(translation) == normalize_text(english) or (lang, normalize_text(english)) in seen:
                    continue
                seen.add((lang, normalize_text(english)))
                ids = [msgid_source_id(domain, m.msgid), msgid_source_id("coreutils", m.msgid)]
                meta = {"source_ids": ids, "lang": lang, "domain": domain}
                cands.append(
                    Candidate(TrainingExample(translation, english, meta=meta), f"msg:{normalize_text(english)}")
                )
    # The same translation for two English messages is ambiguous within its language.
    return _unique(cands, lambda c: f"{(c.example.meta or {})['lang']}\x1f{normalize_text(c.example.query)}")


# --------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class DatasetRecipe:
    """How one dataset is made: task, packages read, extractor, size caps, documentation."""

    name: str
    task: str
    packages: tuple[str, ...]
    description: str
    max_train: int
    max_dev: int = 200


DATASETS: tuple[DatasetRecipe, ...] = (
    DatasetRecipe(
        "code", "code_retrieval", STDLIB_PACKAGES,
        "Code search: first paragraph of a function's docstring -> the function's source without the docstring "
        "(CPython 3.11 stdlib; 3-30 body lines; dunders and repeated summaries/bodies dropped). Only modules "
        "outside the suite partition; dev modules are disjoint from train modules.",
        max_train=2000,
    ),
    DatasetRecipe(
        "manpages", "query", _MAN_PACKAGES,
        "Documentation retrieval: a man page's NAME description (after the dash) -> the start of its "
        "DESCRIPTION (~100 words), no title (as in the suite). Pages outside the suite partition from the "
        "Linux man-pages project, coreutils, tar, grep, sed, findutils and diffutils.",
        max_train=2000,
    ),
    DatasetRecipe(
        "manpages-xling", "query", (*_MAN_PACKAGES, *(f"manpages-{lang}{s}" for lang in _XLING for s in ("", "-dev"))),
        "Cross-lingual documentation retrieval: the translated NAME description of a page of `manpages` "
        f"({', '.join(_XLING)}) -> its English DESCRIPTION. Same pages and same train/dev split as `manpages`.",
        max_train=2000,
    ),
    DatasetRecipe(
        "docs-faq", "question_answering", ("python3.11-doc",),
        "Question answering: a Python FAQ question -> its answer (~150 words), titled with the FAQ page title.",
        max_train=2000, max_dev=40,
    ),
    DatasetRecipe(
        "docs-sections", "query", ("python3.11-doc",),
        "Documentation retrieval: a section heading (3+ words) of Python's HOWTOs, tutorial, language and "
        "library reference, C API and extending guides -> the section's text (~120 words), titled with the "
        "page title. Library pages of modules in the suite partition are excluded.",
        max_train=2000,
    ),
    DatasetRecipe(
        "bitext", "bitext", _GETTEXT_DOMAINS,
        "Bitext: a translated program message -> its English original (tar, grep, sed, findutils, diffutils; "
        "all their languages). Messages need >= 4 words without printf directives/options and <= 40 words. "
        "Messages whose coreutils identifier is in the suite partition are excluded (gnulib messages are "
        "shared across programs); dev messages are disjoint from train messages.",
        max_train=4000,
    ),
)  # fmt: skip


def extract(name: str, debs: dict[str, Path], cache: dict[str, list[Candidate]]) -> list[Candidate]:
    """Candidates of dataset ``name`` (``cache`` shares the English man pages with ``manpages-xling``)."""
    if name not in cache:
        if name == "code":
            cache[name] = code_candidates(debs)
        elif name == "manpages":
            cache[name] = manpage_candidates(debs)
        elif name == "manpages-xling":
            cache[name] = manpage_xling_candidates(debs, extract("manpages", debs, cache))
        elif name == "docs-faq":
            cache[name] = docs_faq_candidates(debs)
        elif name == "docs-sections":
            cache[name] = docs_section_candidates(debs)
        elif name == "bitext":
            cache[name] = bitext_candidates(debs)
        else:
            raise ValueError(f"unknown dataset {name!r}; known: {[r.name for r in DATASETS]}")
    return cache[name]
