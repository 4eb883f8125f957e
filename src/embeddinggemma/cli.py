"""The `embeddinggemma` command: embed, similarity, info, and the eval/train/soup/student subcommands.

Errors are one line on stderr (exit 2), never a traceback, and what can be checked before the model
loads is checked first. Status (the loading line, the progress bar) goes to stderr when it is a
terminal; warnings and the closing summary always do; stdout carries only results. Ctrl-C and SIGTERM
remove the unfinished output and say what was written; a closed stdout (`| head`) ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from embeddinggemma.checkpoint import CheckpointError
from embeddinggemma.cli_options import add_model_options, load_options, positive_int
from embeddinggemma.embedder import Embedder, resolve_device
from embeddinggemma.eval.cli import add_eval_parser
from embeddinggemma.export import add_export_parser
from embeddinggemma.index.cli import add_index_parser, add_search_parser
from embeddinggemma.records import FORMATS, TextSource
from embeddinggemma.scale.cli import add_embed_dataset_parser
from embeddinggemma.serve.cli import add_serve_parser
from embeddinggemma.tokenizer import TruncationError, TruncationWarning
from embeddinggemma.train.cli import add_adapt_parser, add_soup_parser, add_student_parser, add_train_parser
from embeddinggemma.writers import OUTPUT_SUFFIXES, JsonlWriter, NpyWriter, check_output_path, open_writer

logger = logging.getLogger("embeddinggemma")


class UsageError(ValueError):
    """Bad command-line input: reported as one line."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the same clean-up as for Ctrl-C runs."""


class InterruptedRunError(Exception):
    """Ctrl-C or SIGTERM after clean-up, with what was (not) written."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- shared --------------------------------------------------------------------------------------


def _interactive(args: argparse.Namespace) -> bool:
    """Status lines and progress bars: only on a terminal (a piped stderr gets warnings and results)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _status(args: argparse.Namespace, message: str) -> None:
    if _interactive(args):
        print(message, file=sys.stderr, flush=True)


def check_model_options(args: argparse.Namespace) -> None:
    """What can be refused before the (slow) model load."""
    if args.device is not None:
        resolve_device(args.device)


def load_embedder(args: argparse.Namespace) -> Embedder:
    _status(args, f"loading model {args.model} ...")
    return Embedder.from_pretrained(args.model, max_seq_length=args.max_seq_length, **load_options(args))


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


@contextlib.contextmanager
def _collect_truncations(into: list[TruncationWarning]) -> Iterator[None]:
    """Gather TruncationWarnings (from any thread) for one summary line; other warnings show as usual."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncationWarning)
        show = warnings.showwarning

        def collect(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, TruncationWarning):
                into.append(message)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = collect
        yield


# -- embed ---------------------------------------------------------------------------------------


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _refuse_overwriting_input(source: TextSource, output: str, allowed: bool) -> None:
    """An output that is the input file (by name, link or redirect) would replace the corpus by its embeddings."""
    try:
        source_stat = os.fstat(source.fileno())
    except (OSError, ValueError):  # not a real file (a test's in-memory stdin)
        return
    source_name = "the input (stdin)" if source.path == "-" else f"the input file {source.name}"
    try:
        output_stat = os.fstat(sys.stdout.fileno()) if output == "-" else os.stat(output)
    except (OSError, ValueError):  # no such output yet, or a test's in-memory stdout
        return
    if not _same_file(source_stat, output_stat):
        return
    if output == "-":  # appending to the input while reading it would never end; `>` has emptied it already
        raise UsageError(f"stdout is {source_name}; write the embeddings to another file with -o")
    if not allowed:
        raise UsageError(
            f"output {output} is {source_name}: it would be replaced by its embeddings; choose another output "
            "name (or pass --replace-input if that is what you want)"
        )


def _truncation_error(error: TruncationError, source: str) -> str:
    return (
        f"{source} line {error.first + 1} is longer than the {error.limit}-token limit; shorten or split it, or "
        "pass --on-truncation warn to cut over-long texts"
    )


def _truncation_summary(reports: list[TruncationWarning], total: int, source: str) -> str:
    count = sum(report.count for report in reports)
    longest = max(report.longest for report in reports)
    return (
        f"warning: {count:,} of {_plural(total, 'text')} exceeded the {reports[0].limit}-token limit and were "
        f"truncated (longest: {longest:,} tokens; first: {source} line {reports[0].first + 1}); "
        "--on-truncation error stops instead"
    )


def _write_block(writer: NpyWriter | JsonlWriter, block: Any, ids: list[Any]) -> None:
    """Rows to stdout go out one by one, each written whole and counted before an interruption can land."""
    if writer.path != "-":
        writer.write(block, ids)  # a file output is renamed only when complete: nothing to count
        return
    for i in range(len(block)):
        with SIGNALS.deferred():
            writer.write(block[i : i + 1], ids[i : i + 1])
            writer.flush()


def _embed_into(args: argparse.Namespace, source: TextSource, writer: NpyWriter | JsonlWriter) -> list[str]:
    """Stream the input's records through the model into `writer` (memory stays bounded); the report lines."""
    is_document = args.task == "document"
    ids: deque = deque()  # filled as records are read, drained as blocks of embeddings arrive
    titles: deque = deque()
    counts = {"texts": 0, "empty": 0, "first_empty": 0}

    def texts() -> Iterator[str]:
        # every line is one record, so record i is line i + 1 (truncation reports rely on it)
        for record in source.records(args.text_field, args.title_field, args.id_field):
            if record.title is not None and not is_document:
                raise UsageError(
                    f"{source.name} line {record.line}: titles are only used with --task document "
                    f"(got --task {args.task}); drop them"
                )
            counts["texts"] += 1
            if not record.text.strip():
                counts["empty"] += 1
                counts["first_empty"] = counts["first_empty"] or record.line
            ids.append(record.id)
            titles.append(record.title)
            yield record.text

    def titles_in_step() -> Iterator[str | None]:  # zipped with texts() inside encode_stream
        while titles:
            yield titles.popleft()

    embedder = load_embedder(args)
    truncations: list[TruncationWarning] = []
    with _collect_truncations(truncations):
        blocks = embedder.encode_stream(
            texts(),
            titles=titles_in_step() if is_document else None,
            task=None if is_document else args.task,
            dim=args.dim,
            batch_size=args.batch_size,
            show_progress=_interactive(args),
            on_truncation=args.on_truncation,
        )
        try:
            for block in blocks:
                _write_block(writer, block, [ids.popleft() for _ in range(len(block))])
        except TruncationError as exc:
            raise UsageError(_truncation_error(exc, source.name)) from None
    report = [_truncation_summary(truncations, counts["texts"], source.name)] if truncations else []
    if counts["empty"]:
        report.append(
            f"warning: {_plural(counts['empty'], 'empty line')} (first: line {counts['first_empty']}) embedded as "
            "empty texts, keeping the output aligned with the input"
        )
    destination = "stdout" if args.output == "-" else args.output
    report.append(
        f"embedded {_plural(counts['texts'], 'text')} from {source.name} -> {destination} "
        f"({args.dim or embedder.embedding_dim} dims)"
    )
    return report


def cmd_embed(args: argparse.Namespace) -> int:
    output = args.output
    if output != "-":
        if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
            raise UsageError(f"output {output!r}: use a .npy or .jsonl file name, or - for JSONL on stdout")
        check_output_path(output)
    check_model_options(args)
    if args.input == "-" and sys.stdin.isatty():
        _status(args, "reading texts from the terminal, one per line; end with Ctrl-D")
    source = TextSource(args.input, args.format)
    try:
        _refuse_overwriting_input(source, output, args.replace_input)
        if source.notice:
            print(source.notice, file=sys.stderr)
        if source.is_empty():
            raise UsageError(f"{source.name} is empty: there are no texts to embed")
        existed = output != "-" and os.path.exists(output)
        writer = open_writer(output)  # a temporary file beside the output until every row is written
        try:
            report = _embed_into(args, source, writer)
            writer.close()
        except BaseException as raised:
            writer.abort()
            exc = SIGNALS.interruption(raised)
            if not isinstance(exc, KeyboardInterrupt | Terminated):
                raise
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated (SIGTERM)"
            if output == "-":
                written = f"{_plural(writer.rows, 'complete row')} had been written to stdout"
            else:
                written = f"nothing was written ({output} {'is unchanged' if existed else 'was not created'})"
            raise InterruptedRunError(
                f"{what}; {written}", 130 if isinstance(exc, KeyboardInterrupt) else 143
            ) from None
    finally:
        source.close()
    for line in report:
        print(line, file=sys.stderr)
    return 0


# -- similarity ----------------------------------------------------------------------------------


def _documents(args: argparse.Namespace) -> tuple[list[str], list[str | None] | None]:
    """The documents from the command line, or from stdin (one per line, or JSONL with titles) for `-`."""
    if "-" not in args.documents:
        return list(args.documents), None
    if len(args.documents) > 1:
        raise UsageError("'-' reads the documents from stdin (one per line, or JSONL); pass it alone")
    source = TextSource("-", args.format)
    try:
        if source.notice:
            print(source.notice, file=sys.stderr)
        records = list(source.records())
    finally:
        source.close()
    if not records:
        raise UsageError("stdin is empty: there are no documents to rank")
    titles = [record.title for record in records]
    return [record.text for record in records], titles if any(t is not None for t in titles) else None


def cmd_similarity(args: argparse.Namespace) -> int:
    check_model_options(args)
    documents, titles = _documents(args)  # read before the model loads: input errors come first
    embedder = load_embedder(args)
    query = embedder.encode(args.query, task=args.task, dim=args.dim)
    embeddings = embedder.encode_document(
        documents, titles=titles, dim=args.dim, batch_size=args.batch_size, show_progress=_interactive(args)
    )
    scores = embedder.similarity(query, embeddings)[0]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[: args.top]
    print(f"query: {args.query}")
    for rank, i in enumerate(order, start=1):
        text = " ".join(documents[i].split())
        print(f"{rank:>3}. {scores[i]:.4f}  {text[:100] + ('...' if len(text) > 100 else '')}")
    return 0


# -- info ----------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    check_model_options(args)
    embedder = load_embedder(args)
    backbone = embedder.config.backbone
    info = {
        "model": str(args.model),
        "path": str(embedder.source),
        "parameters": embedder.num_parameters,
        "embedding_dim": embedder.embedding_dim,
        "matryoshka_dims": list(embedder.matryoshka_dims),
        "layers": backbone.num_hidden_layers,
        "full_attention_layers": [i for i, t in enumerate(backbone.layer_types) if t == "full_attention"],
        "heads": f"{backbone.num_attention_heads} query / {backbone.num_key_value_heads} key-value, "
        f"head_dim {backbone.head_dim}",
        "sliding_window": f"+-{backbone.window_radius} tokens",
        "max_seq_length": embedder.max_seq_length,
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "device": str(embedder.device),
        "prompts": dict(embedder.prompts),
    }
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    for key, value in info.items():
        if key == "prompts":
            print("prompts:")
            for name, prompt in value.items():
                print(f"  {name:<26} {prompt!r}")
        else:
            print(f"{key + ':':<24}{value:,}" if isinstance(value, int) else f"{key + ':':<24}{value}")
    return 0


# -- parsers -------------------------------------------------------------------------------------


def add_embed_parser(sub: Any) -> argparse.ArgumentParser:
    embed = sub.add_parser("embed", help="embed texts from a file or stdin into .npy or JSONL")
    embed.add_argument("input", nargs="?", default="-", help="text file (one text per line) or .jsonl; - = stdin")
    embed.add_argument("-o", "--output", default="-", help="output .npy or .jsonl (default: JSONL on stdout)")
    embed.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input format (auto: .jsonl/.ndjson, or a first line that is a JSON object, is JSONL; "
        "otherwise one text per line)",
    )
    embed.add_argument("--text-field", default="text", help="JSONL field holding the text")
    embed.add_argument("--title-field", default="title", help="JSONL field holding an optional title")
    embed.add_argument("--id-field", default="id", help="JSONL field copied to JSONL output")
    embed.add_argument(
        "--task",
        default="document",
        help="prompt: document (default; uses titles), query, sts, code_retrieval, ...",
    )
    embed.add_argument("--dim", type=positive_int, default=None, help="Matryoshka size: 768, 512, 256 or 128")
    embed.add_argument("--batch-size", type=positive_int, default=32, help="texts per model batch (default: 32)")
    embed.add_argument(
        "--on-truncation",
        choices=["warn", "error"],
        default="warn",
        help="inputs over the token limit: cut with a warning, or stop with an error",
    )
    embed.add_argument(
        "--replace-input", action="store_true", help="allow -o to name the input file (replaced when done)"
    )
    embed.add_argument("--no-progress", action="store_true", help="no loading line or progress bar on stderr")
    add_model_options(embed)
    embed.set_defaults(func=cmd_embed)
    return embed


def add_similarity_parser(sub: Any) -> argparse.ArgumentParser:
    similarity = sub.add_parser("similarity", help="rank documents against a query")
    similarity.add_argument("query")
    similarity.add_argument(
        "documents", nargs="+", metavar="DOC", help="documents; - alone reads them from stdin (one per line or JSONL)"
    )
    similarity.add_argument("--task", default="query", help="query prompt (default: query)")
    similarity.add_argument("--dim", type=positive_int, default=None)
    similarity.add_argument("--top", type=positive_int, default=None, help="show the best K (default: all)")
    similarity.add_argument("--format", choices=FORMATS, default="auto", help="format of documents on stdin")
    similarity.add_argument("--batch-size", type=positive_int, default=32, help="texts per model batch")
    similarity.add_argument("--no-progress", action="store_true", help="no loading line or progress bar")
    add_model_options(similarity)
    similarity.set_defaults(func=cmd_similarity, on_interrupt="nothing was written")
    return similarity


def add_info_parser(sub: Any) -> argparse.ArgumentParser:
    info = sub.add_parser("info", help="model, parameters, dims, prompts")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(info)
    info.set_defaults(func=cmd_info, on_interrupt="nothing was written")
    return info


# Every subcommand, in the order `--help` lists them; each registrar adds its parser and handler.
SUBCOMMANDS: tuple[Callable[[Any], argparse.ArgumentParser], ...] = (
    add_embed_parser,  # embed: texts in, embeddings out
    add_similarity_parser,  # similarity: rank documents against a query
    add_info_parser,  # info: the model's shape and prompts
    add_eval_parser,  # eval, eval compare: the local suite and MTEB
    add_train_parser,  # train: a recipe
    add_soup_parser,  # soup: average checkpoints
    add_student_parser,  # student: cut layers from a checkpoint
    add_adapt_parser,  # adapt: UL2 adaptation of a Gemma 3 decoder into an encoder-decoder
    add_embed_dataset_parser,  # embed-dataset: files on a Ray cluster (embeddinggemma.scale)
    add_index_parser,  # index: a folder into a SQLite search index
    add_search_parser,  # search: dense, BM25 or hybrid over an index
    add_export_parser,  # export: GGUF (llama.cpp, Ollama) or ONNX (ONNX Runtime) files
    add_serve_parser,  # serve: the HTTP embedding server (OpenAI, TEI), optionally with an index's search
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="embeddinggemma", description="EmbeddingGemma text embeddings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


# -- entry point ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (subcommand parsers inherit this class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


class _Signals:
    """SIGINT raises KeyboardInterrupt and SIGTERM raises `Terminated`, in the main thread, so clean-up runs;
    inside `deferred()` they wait until the block is done (a row on stdout is written whole and counted)."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None
        self._raised: int | None = None  # the signal last raised as an exception in this run

    def install(self) -> Callable[[], None]:
        """Install the handlers; returns the function that restores the previous ones."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        self._raised = None
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # a background job keeps ignoring Ctrl-C
                previous[signum] = signal.signal(signum, self._handle)

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore

    def _handle(self, signum: int, frame: Any) -> None:
        if self._depth:
            self._pending = self._pending or signum
        else:
            self._raise(signum)

    def _raise(self, signum: int) -> None:
        self._raised = signum
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
            raise Terminated
        raise KeyboardInterrupt

    def interruption(self, exc: BaseException) -> BaseException:
        """`exc`, or the interruption it stands for: a signal raised inside a library's C code can come
        out as another error (torch reports it as a TypeError while reading a tensor)."""
        if isinstance(exc, KeyboardInterrupt | Terminated) or self._raised is None:
            return exc
        return Terminated() if self._raised == signal.SIGTERM else KeyboardInterrupt()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                self._raise(signum)


SIGNALS = _Signals()


def _report_interruption(exc: BaseException, prefix: str, note: str) -> int:
    """Say that Ctrl-C or SIGTERM ended the run; the exit code of a process killed by that signal."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prefix} interrupted{note}", file=sys.stderr)
        return 130
    print(f"{prefix} terminated (SIGTERM){note}", file=sys.stderr)
    return 143


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.formatwarning = _one_line_warning
    handler: Callable[[argparse.Namespace], int] = args.func
    prefix = f"embeddinggemma {args.command}:"
    note = f"; {args.on_interrupt}" if getattr(args, "on_interrupt", None) else ""
    restore_signals = SIGNALS.install()
    try:
        return handler(args)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): not an error of ours
        _quiet_stdout()
        return 141
    except InterruptedRunError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        return _report_interruption(exc, prefix, note)
    except (CheckpointError, ValueError, TypeError, ImportError, OSError) as exc:
        interruption = SIGNALS.interruption(exc)
        if interruption is not exc:
            return _report_interruption(interruption, prefix, note)
        message = " ".join(str(exc).splitlines()) or type(exc).__name__
        print(f"{prefix} error: {message}", file=sys.stderr)
        return 2
    finally:
        restore_signals()


if __name__ == "__main__":
    sys.exit(main())
