"""``embeddinggemma index DIR`` and ``embeddinggemma search "query"``: the command-line side of the index.

Registered on the main parser by :func:`add_index_parsers`; errors are ValueErrors that the main entry
point prints as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from embeddinggemma.checkpoint import DEFAULT_MODEL
from embeddinggemma.cli_options import LOAD_OPTIONS, load_options, positive_int

__all__ = ["DEFAULT_DB", "add_index_parser", "add_search_parser"]

DEFAULT_DB = Path("embeddinggemma-index.db")


def _require_index_extra() -> None:
    import importlib.util

    missing = [m for m in ("pathspec", "markdown_it", "pygments") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"indexing needs {', '.join(missing)}: pip install 'embeddinggemma[index]'")


def _model_reference(name: str) -> str:
    """What to record so that `search` can load the same model from anywhere: local paths made absolute."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _load_embedder(args: argparse.Namespace, model: str) -> Any:
    from embeddinggemma.embedder import Embedder

    return Embedder.from_pretrained(model, **load_options(args))


def _add_model_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    """--model (default: the index's own, so not `add_model_options`) and the shared load flags."""
    parser.add_argument("--model", default=None, help=model_help)
    for option in LOAD_OPTIONS:
        option.add_to(parser)


def _dense_methods(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    return tuple(v for v in dict.fromkeys(values) if v != "exact")


def cmd_index(args: argparse.Namespace) -> int:
    _require_index_extra()  # before the imports that need it
    from embeddinggemma.index.indexer import IndexOptions, index_folder
    from embeddinggemma.index.store import IndexStore

    if args.max_file_mb <= 0:
        raise ValueError(f"--max-file-mb must be positive, got {args.max_file_mb}")
    model = args.model
    if model is None:
        model = DEFAULT_MODEL
        if args.db.is_file() and not args.rebuild:  # keep the index's model unless told otherwise
            store = IndexStore(args.db)
            model = store.meta().get("model", DEFAULT_MODEL)
            store.close()
    embedder = _load_embedder(args, model)
    options = IndexOptions(
        dim=args.dim,
        chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens,
        titles=None if args.titles is None else args.titles == "file-and-heading",
        dense=_dense_methods(args.dense),
        max_file_bytes=int(args.max_file_mb * 1e6),
        batch_size=args.batch_size,
    )
    report = index_folder(
        args.folder, args.db, embedder, model=_model_reference(model), options=options, rebuild=args.rebuild,
        show_progress=not args.no_progress,
    )  # fmt: skip
    totals = report.totals
    print(
        f"indexed {args.folder} -> {args.db}: {report.embedded_files} files embedded ({report.chunks} chunks, "
        f"{report.tokens} tokens, {report.tokens_per_second:.0f} tokens/s), {report.unchanged_files} unchanged, "
        f"{report.deleted_files} removed; the index holds {totals['files']} files, {totals['chunks']} chunks "
        f"({args.db.stat().st_size / 1e6:.1f} MB) [{report.seconds:.1f}s]",
        file=sys.stderr,
    )
    if report.skipped.reasons:
        print(f"skipped: {report.skipped.summary()}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from embeddinggemma.index.searcher import Searcher
    from embeddinggemma.index.store import IndexStore

    mode = "hybrid" if args.hybrid else args.mode
    embedder = None
    if mode != "bm25":
        model = args.model
        if model is None:
            store = IndexStore(args.db)
            model = store.meta().get("model", DEFAULT_MODEL)
            store.close()
        embedder = _load_embedder(args, model)
    with Searcher(args.db, embedder, dense=args.dense, rescore=args.rescore) as searcher:
        results = searcher.search(args.query, k=args.k, mode=mode, task=args.task)
    if args.json:
        json.dump({"results": [r.to_json() for r in results]}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if not results:
        print("no results", file=sys.stderr)
    for rank, result in enumerate(results, start=1):
        page = "" if result.page is None else f"#page={result.page}"
        where = f"{result.path}{page}:{result.line}"
        print(f"{rank:>3}. {result.score:.4f}  {where}  {result.title or ''}")
        print(f"     {result.snippet}")
    return 0


def add_index_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``index`` on the main parser's subcommands."""
    index = subparsers.add_parser(
        "index",
        help="index a folder for search (SQLite: BM25 + vectors; incremental)",
        description="Walk a folder (respecting .gitignore), chunk text, Markdown, reStructuredText, source code "
        "and PDF files, embed the chunks and store them in one SQLite file. Run it again to update: only changed "
        "files are embedded, deleted ones are removed. Ctrl-C keeps what is done; the next run resumes.",
    )
    index.add_argument("folder", type=Path, help="the folder to index")
    index.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"index file (default: {DEFAULT_DB})")
    index.add_argument("--dim", type=positive_int, default=None, help="Matryoshka size: 768, 512, 256 or 128 (768)")
    index.add_argument(
        "--chunk-tokens", type=positive_int, default=None, help="tokens per chunk, prompt included (512)"
    )
    index.add_argument("--overlap-tokens", type=int, default=None, help="tokens repeated between split chunks (64)")
    index.add_argument(
        "--titles",
        choices=["file-and-heading", "none"],
        default=None,
        help="document prompt title: 'file.md: Heading > Subheading' (default) or none",
    )
    index.add_argument(
        "--dense",
        nargs="+",
        choices=["exact", "binary", "int8", "hnsw"],
        default=None,
        help="fast dense-search structures to keep besides exact float32 search: binary or int8 codes, an HNSW "
        "graph (each rescored in float32); 'exact' alone keeps none",
    )
    index.add_argument("--max-file-mb", type=float, default=2.0, help="skip larger files (default 2)")
    index.add_argument("--batch-size", type=positive_int, default=16)
    index.add_argument("--rebuild", action="store_true", help="delete the index and build it from scratch")
    index.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_model_options(index, f"hub id or checkpoint directory (default: the index's, else {DEFAULT_MODEL})")
    index.set_defaults(
        func=cmd_index, on_interrupt="the index keeps every file finished so far; run the same command to resume"
    )
    return index


def add_search_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``search`` on the main parser's subcommands."""
    search = subparsers.add_parser(
        "search",
        help="search an index: dense, BM25 or hybrid",
        description="Search an index built by `embeddinggemma index`: dense (the model), bm25 (keywords) or hybrid "
        "(both, fused by reciprocal rank). Prints path:line, title, snippet and score.",
    )
    search.add_argument("query")
    search.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"index file (default: {DEFAULT_DB})")
    search.add_argument("-k", type=positive_int, default=10, help="number of results (default 10)")
    search.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="dense", help="default: dense")
    search.add_argument("--hybrid", action="store_true", help="same as --mode hybrid")
    search.add_argument("--task", default="query", help="query prompt: query (default), code_retrieval ...")
    search.add_argument(
        "--dense",
        choices=["auto", "exact", "binary", "int8", "hnsw"],
        default="auto",
        help="dense search method (auto: the fastest structure the index keeps, else exact)",
    )
    search.add_argument(
        "--rescore", type=positive_int, default=10, help="first-pass candidates per result for binary/int8/hnsw"
    )
    search.add_argument("--json", action="store_true", help='print {"results": [...]} as JSON')
    _add_model_options(search, "hub id or checkpoint directory (default: the model the index was built with)")
    search.set_defaults(func=cmd_search, on_interrupt="nothing was written")
    return search
