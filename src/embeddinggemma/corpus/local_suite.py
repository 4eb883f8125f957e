"""The local benchmark suite: small, offline, reproducible tasks built from real text.

Every task is cut from pinned Debian packages (exact version + sha256, see :data:`PACKAGES`),
so anyone can rebuild byte-identical data with ``scripts/build_local_suite.py OUTDIR`` and
nothing big is committed. The suite is sized to be scored by the real 300M model in fp32 on two
AVX2 CPU cores in under 10 minutes (~111k distinct tokens with prompts, after 512-token
truncation; see :class:`SuiteConfig`).

Tasks (what each measures is in its ``description``):

* ``stdlib-code-retrieval``: docstring summary -> Python function (CPython 3.11 stdlib).
* ``manpages-en-retrieval``: a man page's one-line NAME description -> its DESCRIPTION.
* ``manpages-xx-en-retrieval``: the same, with the NAME line translated (6 languages).
* ``coreutils-bitext``: mining translated coreutils messages, 8 languages <-> English.

Held out on purpose: every source item has an identifier (``cpython-stdlib:json.decoder``,
``man-pages:man2/open.2``, ``gettext:coreutils:<hash>``) and :func:`in_suite_partition`
splits identifiers 50/50 by a salted hash. The suite only ever draws from its half, and
the manifest lists the identifiers it actually used; training data built from the same
packages must call ``not in_suite_partition(id)`` (or exclude :func:`used_source_ids`)
to stay provably disjoint. A translated man page shares its English page's identifier,
so no language of an evaluated page leaks into training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from embeddinggemma import prompts
from embeddinggemma.corpus import debian, extract_code, extract_gettext, extract_man, suite_sources
from embeddinggemma.corpus.debian import fetch_deb, iter_deb_files, sha256_file
from embeddinggemma.corpus.extract_code import STDLIB_PACKAGES, CodeFunction, stdlib_functions
from embeddinggemma.corpus.extract_gettext import mineable_text, parse_mo
from embeddinggemma.corpus.extract_man import parse_man, read_man_pages, split_name_line
from embeddinggemma.corpus.suite_sources import (
    PACKAGES,
    PARTITION_SALT,
    SUITE_VERSION,
    in_suite_partition,
    msgid_source_id,
)
from embeddinggemma.eval import data as eval_data
from embeddinggemma.eval.data import TaskSpec, write_jsonl
from embeddinggemma.prompts import TASK_PROMPTS, document_prompt

logger = logging.getLogger(__name__)

__all__ = [
    "PACKAGES",
    "SUITE_VERSION",
    "SuiteConfig",
    "build_local_suite",
    "code_fingerprint",
    "in_suite_partition",
    "load_manifest",
    "used_source_ids",
]

MAX_TOKENS = 512  # evaluation context, as in the paper
# The modules besides this one whose source shapes the suite's files.
SUITE_CODE: tuple[ModuleType, ...] = (
    eval_data,
    debian,
    extract_code,
    extract_gettext,
    extract_man,
    suite_sources,
    prompts,
)


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes and filters. Changing any field changes the build key, so a cached build is
    never mistaken for a different configuration."""

    seed: int = 20250901
    # Sizes: the whole suite (~111k distinct tokens after 512-token truncation) must score in under
    # 10 minutes with the fp32 model on 2 AVX2 cores (~200 tokens/s); v1's 500-query tasks took ~20.
    code_queries: int = 300
    code_distractors: int = 30
    code_min_lines: int = 3  # body lines (excluding docstring): skip `pass` / one-line returns
    code_max_lines: int = 20  # longer functions are skipped (they cost the most tokens)
    man_queries: int = 300
    man_corpus_pages: int = 330  # 0: every usable page of the partition; else a seeded sample of this many
    man_doc_words: int = 64  # DESCRIPTION cut at a sentence end near this many words
    man_min_doc_words: int = 25
    xling_languages: tuple[str, ...] = ("de", "es", "fr", "ja", "pl", "ru")
    xling_queries_per_language: int = 50
    bitext_languages: tuple[str, ...] = ("de", "fr", "es", "ja", "ko", "pl", "ru", "zh_CN")
    bitext_pairs: int = 75  # the same English messages in every language


# ---------------------------------------------------------------------------- code


def _build_code_task(debs: dict[str, Path], root: Path, cfg: SuiteConfig) -> tuple[TaskSpec, list[str]]:
    modules = stdlib_functions(debs)
    used_modules = sorted(m for m in modules if in_suite_partition(f"cpython-stdlib:{m}"))
    funcs = [
        f for m in used_modules for f in modules[m]
        if cfg.code_min_lines <= f.code_lines <= cfg.code_max_lines
        and not (f.qualname.rsplit(".", 1)[-1].startswith("__") and f.qualname.endswith("__"))
    ]  # fmt: skip
    # Ambiguous pairs are no test: drop every function whose summary or code is not unique.
    summary_count = Counter(f.summary.casefold() for f in funcs)
    code_count = Counter(f.code for f in funcs)
    funcs = [f for f in funcs if code_count[f.code] == 1]
    candidates = [f for f in funcs if summary_count[f.summary.casefold()] == 1 and 4 <= len(f.summary.split()) <= 80]
    rng = random.Random(cfg.seed)
    chosen = rng.sample(candidates, min(cfg.code_queries, len(candidates)))
    chosen_keys = {(f.module, f.qualname, f.lineno) for f in chosen}
    rest = [f for f in funcs if (f.module, f.qualname, f.lineno) not in chosen_keys]
    distractors = rng.sample(rest, min(cfg.code_distractors, len(rest)))

    def doc_id(f: CodeFunction) -> str:
        return f"py:{f.module}:{f.qualname}:{f.lineno}"

    docs = sorted(chosen + distractors, key=doc_id)
    queries = sorted(chosen, key=doc_id)
    write_jsonl(root / "corpus.jsonl", [{"_id": doc_id(f), "text": f.code} for f in docs])
    write_jsonl(root / "queries.jsonl", [{"_id": "q:" + doc_id(f), "text": f.summary} for f in queries])
    write_jsonl(
        root / "qrels.jsonl",
        [{"query-id": "q:" + doc_id(f), "corpus-id": doc_id(f), "score": 1} for f in queries],
    )
    spec = TaskSpec(
        name="stdlib-code-retrieval",
        kind="retrieval",
        root=root,
        files={"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"},
        query_task="code_retrieval",
        description=(
            "Code search: the query is the first paragraph of a function's docstring, the relevant "
            "document is that function's source with the docstring removed; other documented functions "
            f"from the same modules are distractors. Functions with <{cfg.code_min_lines} or >{cfg.code_max_lines} "
            "body lines, dunder methods, "
            "and any summary or body that occurs twice are excluded. Only stdlib modules in the suite "
            "partition are used (see manifest used_sources)."
        ),
        source=" + ".join(PACKAGES[n].label for n in STDLIB_PACKAGES),
        license=PACKAGES["libpython3.11-stdlib"].license,
        stats={"queries": len(queries), "documents": len(docs), "modules": len(used_modules)},
    )
    return spec, [f"cpython-stdlib:{m}" for m in used_modules]


# ------------------------------------------------------------------------ man pages


def leading_sentences(line: str, used: int, limit: int) -> tuple[list[str], int, bool]:
    """The sentences of ``line`` that fit in ``limit`` words after ``used`` words: (kept, words used
    afterwards, whether every sentence fit). Shared with the training-data builder."""
    sentences = re.split(r"(?<=[.!?:])\s+", line)
    kept = []
    for sentence in sentences:
        w = len(sentence.split())
        if used + w > limit:
            break
        kept.append(sentence)
        used += w
    return kept, used, len(kept) == len(sentences)


def _cut_words(text: str, limit: int) -> str:
    """First paragraphs/sentences of ``text`` up to about ``limit`` words, ending at a
    sentence end when one exists past half the limit (otherwise a hard word cut)."""
    words = text.split()
    if len(words) <= limit:
        return text
    paragraphs, out, n = text.split("\n"), [], 0
    for para in paragraphs:
        kept, n, complete = leading_sentences(para, n, limit)
        if kept:
            out.append(" ".join(kept))
        if not complete:
            break
    if n < limit // 2:
        return " ".join(words[:limit])
    return "\n".join(out)


@dataclass(frozen=True)
class _Page:
    page: str
    names: tuple[str, ...]
    description: str
    document: str


def _english_pages(debs: dict[str, Path], cfg: SuiteConfig) -> dict[str, _Page]:
    pages: dict[str, _Page] = {}
    for name in ("manpages", "manpages-dev"):
        for page, src in sorted(read_man_pages(debs[name], None).items()):
            parsed = parse_man(src)
            if not parsed.sections or not in_suite_partition(f"man-pages:{page}"):
                continue
            nl = split_name_line(parsed.sections[0][1])
            desc = parsed.get("DESCRIPTION")
            if nl is None or desc is None or len(desc.split()) < cfg.man_min_doc_words:
                continue
            pages[page] = _Page(page, tuple(nl[0]), nl[1], _cut_words(desc, cfg.man_doc_words))
    # Identical documents cannot be told apart: drop all copies.
    doc_count = Counter(p.document for p in pages.values())
    return {k: p for k, p in pages.items() if doc_count[p.document] == 1}


def _build_man_tasks(debs: dict[str, Path], out: Path, cfg: SuiteConfig) -> tuple[list[TaskSpec], list[str]]:
    pages = _english_pages(debs, cfg)
    if 0 < cfg.man_corpus_pages < len(pages):
        # A smaller corpus keeps the suite inside its CPU budget; queries (English and translated)
        # are then drawn from these pages only, so every relevant document stays in the corpus.
        kept = random.Random(cfg.seed + 3).sample(sorted(pages), cfg.man_corpus_pages)
        pages = {p: pages[p] for p in sorted(kept)}
    order = sorted(pages)
    corpus = [{"_id": p, "text": pages[p].document} for p in order]
    desc_count = Counter(pages[p].description.casefold() for p in order)
    candidates = [
        p for p in order if desc_count[pages[p].description.casefold()] == 1 and len(pages[p].description.split()) >= 3
    ]
    rng = random.Random(cfg.seed + 1)
    chosen = sorted(rng.sample(candidates, min(cfg.man_queries, len(candidates))))
    en_root = out / "manpages-en-retrieval"
    write_jsonl(en_root / "corpus.jsonl", corpus)
    write_jsonl(en_root / "queries.jsonl", [{"_id": f"en:{p}", "text": pages[p].description} for p in chosen])
    write_jsonl(en_root / "qrels.jsonl", [{"query-id": f"en:{p}", "corpus-id": p, "score": 1} for p in chosen])
    common = {
        "source": " + ".join(PACKAGES[n].label for n in ("manpages", "manpages-dev")),
        "license": PACKAGES["manpages"].license,
    }
    en = TaskSpec(
        name="manpages-en-retrieval",
        kind="retrieval",
        root=en_root,
        files={"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"},
        query_task="query",
        description=(
            "Documentation retrieval: the query is the part of a man page's NAME line after the dash, "
            "without the page's names (e.g. 'open and possibly create a file'); the relevant document is the start "
            f"of that page's DESCRIPTION section (~{cfg.man_doc_words} words). Documents carry no title: "
            "the page name would turn the task into name matching. "
            + (
                f"The corpus is a seeded sample of {len(corpus)} pages of the suite partition with a DESCRIPTION"
                if cfg.man_corpus_pages
                else "Every page of the suite partition with a DESCRIPTION is in the corpus"
            )
            + "; queries whose description is shared by two pages are dropped."
        ),
        stats={"queries": len(chosen), "documents": len(corpus)},
        **common,
    )

    # Cross-lingual: translated NAME lines -> the same English corpus.
    xl_queries: list[dict[str, Any]] = []
    per_lang: dict[str, int] = {}
    sources = []
    for i, lang in enumerate(cfg.xling_languages):
        translated: dict[str, str] = {}
        for suffix in ("", "-dev"):
            pkg = PACKAGES[f"manpages-{lang}{suffix}"]
            sources.append(pkg.label)
            for page, src in read_man_pages(debs[pkg.name], lang).items():
                if page not in pages:
                    continue
                parsed = parse_man(src)
                nl = split_name_line(parsed.sections[0][1]) if parsed.sections else None
                if nl and nl[1].casefold() != pages[page].description.casefold():  # skip untranslated
                    translated[page] = nl[1]
        count = Counter(t.casefold() for t in translated.values())
        cands = sorted(p for p, t in translated.items() if count[t.casefold()] == 1)
        picked = sorted(
            random.Random(cfg.seed + 100 + i).sample(cands, min(cfg.xling_queries_per_language, len(cands)))
        )
        per_lang[lang] = len(picked)
        xl_queries += [{"_id": f"{lang}:{p}", "text": translated[p], "subset": lang} for p in picked]
    xl_root = out / "manpages-xx-en-retrieval"
    write_jsonl(xl_root / "corpus.jsonl", corpus)
    write_jsonl(xl_root / "queries.jsonl", xl_queries)
    write_jsonl(
        xl_root / "qrels.jsonl",
        [{"query-id": q["_id"], "corpus-id": q["_id"].split(":", 1)[1], "score": 1} for q in xl_queries],
    )
    xl = TaskSpec(
        name="manpages-xx-en-retrieval",
        kind="retrieval",
        root=xl_root,
        files={"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"},
        query_task="query",
        description=(
            "Cross-lingual documentation retrieval: the query is the translated NAME description of a man "
            f"page ({', '.join(cfg.xling_languages)}; untranslated and ambiguous lines dropped), the corpus "
            "is the English corpus of manpages-en-retrieval, unchanged. Scores are reported per language."
        ),
        source=common["source"] + " + " + " + ".join(sources),
        license="; ".join(
            [PACKAGES["manpages"].license, PACKAGES["manpages-fr"].license, "ja: " + PACKAGES["manpages-ja"].license]
        ),
        stats={"queries": len(xl_queries), "documents": len(corpus), "queries_per_language": per_lang},
    )
    return [en, xl], [f"man-pages:{p}" for p in order]


# --------------------------------------------------------------------------- bitext


def _build_bitext_task(debs: dict[str, Path], root: Path, cfg: SuiteConfig) -> tuple[TaskSpec, list[str]]:
    catalogs: dict[str, dict[str, str]] = {}
    for path, content in iter_deb_files(debs["coreutils"], lambda p: p.endswith("/LC_MESSAGES/coreutils.mo")):
        lang = path.split("/")[-3]
        if lang in cfg.bitext_languages:
            catalogs[lang] = {
                m.msgid: m.msgstr for m in parse_mo(content) if m.msgstr and not m.plural and m.context is None
            }
    missing = sorted(set(cfg.bitext_languages) - set(catalogs))
    if missing:
        raise RuntimeError(f"coreutils has no catalogue for {missing}; choose other bitext_languages")
    usable: dict[str, str] = {}  # cleaned English -> raw msgid
    for msgid in sorted(set.intersection(*(set(c) for c in catalogs.values()))):
        text = mineable_text(msgid)
        if text and in_suite_partition(msgid_source_id("coreutils", msgid)):
            usable.setdefault(text, msgid)
    # A message is usable only if every language translated it into a distinct, different string.
    clean = {lang: {m: " ".join(cat[m].split()) for m in usable.values()} for lang, cat in catalogs.items()}
    ok = []
    for text, msgid in sorted(usable.items()):
        if all(clean[lang][msgid] and clean[lang][msgid] != text for lang in catalogs):
            ok.append((text, msgid))
    dup = {lang: Counter(clean[lang][m] for _, m in ok) for lang in catalogs}
    ok = [(t, m) for t, m in ok if all(dup[lang][clean[lang][m]] == 1 for lang in catalogs)]
    chosen = sorted(random.Random(cfg.seed + 2).sample(ok, min(cfg.bitext_pairs, len(ok))))
    rows = [
        {"source": clean[lang][msgid], "target": text, "subset": f"{lang}-en"}
        for lang in sorted(catalogs)
        for text, msgid in chosen
    ]
    write_jsonl(root / "pairs.jsonl", rows)
    spec = TaskSpec(
        name="coreutils-bitext",
        kind="bitext",
        root=root,
        files={"pairs": "pairs.jsonl"},
        query_task="bitext",
        description=(
            "Bitext mining: for each translated coreutils message, find its English original among the "
            f"{len(chosen)} English messages of the task ({', '.join(sorted(catalogs))}). Messages need >= 4 "
            "words once printf directives and option names are removed and <= 40 words; each must be "
            "translated (differently from the English) and uniquely in every language. Main score: F1 "
            "averaged over language pairs, as in MTEB."
        ),
        source=PACKAGES["coreutils"].label,
        license=PACKAGES["coreutils"].license,
        stats={"pairs": len(rows), "pairs_per_language": len(chosen), "languages": sorted(catalogs)},
    )
    return spec, sorted(msgid_source_id("coreutils", m) for _, m in chosen)


# --------------------------------------------------------------------------- tokens


def _token_stats(tokenizer: Any, texts: list[str]) -> dict[str, int]:
    """Token counts as the model sees them: BOS/EOS added, truncated at MAX_TOKENS."""
    if not texts:
        return {"texts": 0, "tokens": 0, "truncated": 0, "max": 0}
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    return {
        "texts": len(texts),
        "tokens": sum(min(n, MAX_TOKENS) for n in lengths),
        "truncated": sum(n > MAX_TOKENS for n in lengths),
        "max": max(lengths),
    }


def _prompted_texts(spec: TaskSpec) -> dict[str, list[str]]:
    """The exact strings the model will encode for a task, per role (prompts from
    :mod:`embeddinggemma.prompts`, the table the Embedder uses)."""

    def rows(role: str) -> list[dict[str, Any]]:
        with spec.path(role).open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    qp = TASK_PROMPTS[spec.query_task]
    if spec.kind == "retrieval":
        docs = [document_prompt(d.get("title")) + d["text"] for d in rows("corpus")]
        return {"queries": [qp + q["text"] for q in rows("queries")], "documents": docs}
    pairs = rows("pairs")
    a, b = ("source", "target") if spec.kind == "bitext" else ("sentence1", "sentence2")
    return {"sources": [qp + p[a] for p in pairs], "targets": [qp + p[b] for p in pairs]}


def _count_tokens(specs: list[TaskSpec], tokenizer_path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-task token stats, and suite totals with and without the runner's text cache."""
    if tokenizer_path is None:
        logger.warning("no tokenizer given: token counts are left out of the manifest")
        return {}, {}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    per_task: dict[str, Any] = {}
    unique: set[str] = set()
    for spec in specs:
        texts = _prompted_texts(spec)
        per_task[spec.name] = {role: _token_stats(tok, t) for role, t in texts.items()}
        per_task[spec.name]["total_tokens"] = sum(s["tokens"] for s in per_task[spec.name].values())
        for t in texts.values():
            unique.update(t)
    totals = {
        "tokens_all_tasks": sum(t["total_tokens"] for t in per_task.values()),
        "tokens_unique_texts": _token_stats(tok, sorted(unique))["tokens"],
        "tokenizer_sha256": sha256_file(tokenizer_path),
        "max_tokens_per_text": MAX_TOKENS,
    }
    return per_task, totals


# -------------------------------------------------------------------------- manifest


def code_fingerprint(*modules: ModuleType) -> str:
    """sha256 over the source files of ``modules`` (those that shape a build's data), so an edited extractor
    invalidates an existing build instead of silently reusing it."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(str(module.__file__)).read_bytes())
    return h.hexdigest()


def _build_key(cfg: SuiteConfig) -> str:
    payload = {
        "version": SUITE_VERSION,
        "code": code_fingerprint(*SUITE_CODE, sys.modules[__name__]),
        "config": asdict(cfg),
        "packages": {n: asdict(p) for n, p in sorted(PACKAGES.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_manifest(suite_dir: str | Path) -> dict[str, Any]:
    """Read ``<suite_dir>/manifest.json``."""
    path = Path(suite_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; build the suite with scripts/build_local_suite.py {suite_dir}")
    return json.loads(path.read_text(encoding="utf-8"))


def used_source_ids(suite_dir: str | Path) -> frozenset[str]:
    """Every source identifier a built suite draws from (modules, man pages, messages).

    Training data must not contain these items; excluding everything for which
    :func:`in_suite_partition` is true is the stronger, build-independent guarantee.
    """
    manifest = load_manifest(suite_dir)
    return frozenset(i for ids in manifest["used_sources"].values() for i in ids)


def _verify(out: Path, manifest: dict[str, Any]) -> bool:
    return all((out / rel).is_file() and sha256_file(out / rel) == digest for rel, digest in manifest["files"].items())


def _files_of(out: Path, specs: Iterable[TaskSpec]) -> dict[str, str]:
    files = {}
    for spec in specs:
        for rel in [*spec.files.values(), "task.json"]:
            path = spec.root / rel
            files[path.relative_to(out).as_posix()] = sha256_file(path)
    return dict(sorted(files.items()))


def _data_card(specs: list[TaskSpec], totals: dict[str, Any]) -> str:
    """A human-readable README for the built suite (the manifest is the machine-readable one)."""
    lines = [
        f"# embeddinggemma local benchmark suite ({SUITE_VERSION})",
        "",
        "Built by `scripts/build_local_suite.py` from pinned Debian packages; see manifest.json for the",
        "package hashes, the sha256 of every file and the source identifiers used (training data must",
        "not use them).",
        "",
        "| task | kind | query prompt | queries / pairs | documents | tokens (with prompts, <= 512 each) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for s in specs:
        size = s.stats.get("queries", s.stats.get("pairs", ""))
        tokens = s.stats.get("tokens", {}).get("total_tokens", "n/a")
        lines.append(f"| {s.name} | {s.kind} | {s.query_task} | {size} | {s.stats.get('documents', '')} | {tokens} |")
    if totals:
        lines += [
            "",
            f"Total tokens over all tasks: {totals['tokens_all_tasks']}; distinct texts (what the runner "
            f"encodes, sharing its cache across tasks): {totals['tokens_unique_texts']}.",
        ]
    for s in specs:
        lines += ["", f"## {s.name}", "", s.description, "", f"- source: {s.source}", f"- licence: {s.license}"]
    return "\n".join(lines) + "\n"


def build_local_suite(
    outdir: str | Path,
    *,
    tokenizer_path: str | Path | None = None,
    config: SuiteConfig | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Build (or verify and reuse) the local suite in ``outdir``; return its manifest.

    Downloads the pinned packages into ``outdir/_sources`` (once), writes one directory per
    task (BEIR-style JSONL + ``task.json``) and ``manifest.json`` with the sha256 of every
    generated file, the packages, the partition rule, the source identifiers used, and
    token counts (with ``tokenizer_path``, the Gemma ``tokenizer.json``).

    If ``outdir`` already holds a build with the same build key (suite version, config,
    package pins and the extraction code's fingerprint) whose files all verify, nothing is
    rebuilt (pass ``force=True`` to rebuild anyway).
    """
    cfg = config or SuiteConfig()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    key = _build_key(cfg)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not force:
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if old.get("build_key") == key and _verify(out, old) and (tokenizer_path is None or old.get("token_totals")):
            logger.info("%s is up to date (build key %s...)", out, key[:12])
            return old
    t0 = time.perf_counter()
    debs = {name: fetch_deb(pkg, out / "_sources") for name, pkg in PACKAGES.items()}
    t_fetch = time.perf_counter() - t0
    specs: list[TaskSpec] = []
    used: dict[str, list[str]] = {}
    code, used["stdlib-code-retrieval"] = _build_code_task(debs, out / "stdlib-code-retrieval", cfg)
    man, man_used = _build_man_tasks(debs, out, cfg)
    bitext, used["coreutils-bitext"] = _build_bitext_task(debs, out / "coreutils-bitext", cfg)
    used["manpages-en-retrieval"] = used["manpages-xx-en-retrieval"] = man_used
    specs = [code, *man, bitext]
    tokens, totals = _count_tokens(specs, Path(tokenizer_path) if tokenizer_path else None)
    final = []
    for spec in specs:
        stats = dict(spec.stats)
        if spec.name in tokens:
            stats["tokens"] = tokens[spec.name]
        final.append(replace(spec, stats=stats))
        final[-1].save()
    (out / "README.md").write_text(_data_card(final, totals), encoding="utf-8")
    manifest = {
        "suite_version": SUITE_VERSION,
        "build_key": key,
        "config": asdict(cfg),
        "packages": {n: asdict(p) for n, p in sorted(PACKAGES.items())},
        "partition": {
            "rule": f"in_suite_partition(id): int(sha256({PARTITION_SALT!r} + id)[:8], 16) % 2 == 0",
            "note": "the suite only uses ids in the partition; training data must use the others",
        },
        "tasks": {s.name: {"kind": s.kind, "dir": s.root.relative_to(out).as_posix(), **s.stats} for s in final},
        "used_sources": {name: sorted(set(ids)) for name, ids in sorted(used.items())},
        "token_totals": totals,
        "files": {**_files_of(out, final), "README.md": sha256_file(out / "README.md")},
        "build_seconds": {"download": round(t_fetch, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    manifest_path.write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
    )
    logger.info("built %d tasks in %s (%.1fs)", len(final), out, time.perf_counter() - t0)
    return manifest
