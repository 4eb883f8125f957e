"""The `embeddinggemma` command: embed, similarity, info.

Errors are one line on stderr (exit 2), never a traceback; progress and warnings go to stderr so stdout
carries only results.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from embeddinggemma.checkpoint import DEFAULT_MODEL, CheckpointError

logger = logging.getLogger("embeddinggemma")


class UsageError(ValueError):
    """Bad command-line input: reported as one line."""


# -- shared options ------------------------------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local checkpoint directory")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on CUDA (float16 is refused: it overflows)",
    )
    parser.add_argument("--max-seq-length", type=int, default=None, help="token limit (default: the model's 2048)")


def load_embedder(args: argparse.Namespace):
    from embeddinggemma.embedder import Embedder

    return Embedder.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_seq_length=args.max_seq_length
    )


# -- embed ---------------------------------------------------------------------------------------


def _open_input(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"input file {path} does not exist") from None


def _input_format(path: str, requested: str) -> str:
    if requested != "auto":
        return requested
    return "jsonl" if path.endswith((".jsonl", ".ndjson")) else "lines"


def read_records(
    stream: TextIO, fmt: str, text_field: str, title_field: str, id_field: str
) -> Iterator[dict[str, Any]]:
    """Yield {"text", "title", "id"} per input line. Plain lines keep empty lines (alignment matters)."""
    for number, line in enumerate(stream, start=1):
        line = line.rstrip("\n").removesuffix("\r")
        if fmt == "lines":
            yield {"text": line, "title": None, "id": None}
            continue
        if not line.strip():
            raise UsageError(f"line {number}: empty line in JSONL input; remove it or use --format lines")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not valid JSON ({exc.msg}); use --format lines for plain text") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UsageError(f"line {number}: expected an object with a string field {text_field!r}")
        title = record.get(title_field)
        if title is not None and not isinstance(title, str):
            raise UsageError(f"line {number}: field {title_field!r} must be a string or null")
        yield {"text": record[text_field], "title": title, "id": record.get(id_field)}


def cmd_embed(args: argparse.Namespace) -> int:
    """Stream texts from the input into the output: memory stays bounded whatever the corpus size."""
    from collections import deque

    from embeddinggemma.writers import open_writer

    if args.output != "-" and not args.output.endswith((".npy", ".jsonl", ".ndjson")):
        raise UsageError(f"output {args.output!r}: use a .npy or .jsonl file name, or - for JSONL on stdout")
    source = _open_input(args.input)
    fmt = _input_format(args.input, args.format)
    ids: deque = deque()  # filled by the tokenising thread, drained here as blocks arrive (thread-safe)
    titles: deque = deque()
    counts = {"texts": 0, "empty": 0}
    is_document = args.task == "document"

    def texts():
        for record in read_records(source, fmt, args.text_field, args.title_field, args.id_field):
            if record["title"] is not None and not is_document:
                raise UsageError(f"titles are only used with --task document (got --task {args.task}); drop them")
            counts["texts"] += 1
            counts["empty"] += not record["text"].strip()
            ids.append(record["id"])
            titles.append(record["title"])
            yield record["text"]

    def titles_in_step():  # zipped with texts() inside encode_stream: each next() follows one text
        while titles:
            yield titles.popleft()

    embedder = load_embedder(args)
    blocks = embedder.encode_stream(
        texts(),
        titles=titles_in_step() if is_document else None,
        task=None if is_document else args.task,
        dim=args.dim,
        batch_size=args.batch_size,
        show_progress=not args.no_progress,
        on_truncation=args.on_truncation,
    )
    writer = open_writer(args.output, args.dim or embedder.embedding_dim)
    try:
        for block in blocks:
            writer.write(block, [ids.popleft() for _ in range(len(block))])
        if counts["texts"] == 0:
            raise UsageError("no input texts (the input is empty)")
    except BaseException:
        writer.abort()
        raise
    finally:
        if source is not sys.stdin:
            source.close()
    writer.close()
    if counts["empty"]:
        print(
            f"warning: {counts['empty']} empty input line(s) were embedded as empty texts, keeping the output aligned",
            file=sys.stderr,
        )
    print(
        f"embedded {counts['texts']} texts -> {args.output} ({args.dim or embedder.embedding_dim} dims)",
        file=sys.stderr,
    )
    return 0


# -- similarity ----------------------------------------------------------------------------------


def cmd_similarity(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    query = embedder.encode(args.query, task=args.task, dim=args.dim)
    documents = embedder.encode_document(args.documents, dim=args.dim)
    scores = embedder.similarity(query, documents)[0]
    order = sorted(range(len(args.documents)), key=lambda i: -scores[i])
    print(f"query: {args.query}")
    for rank, i in enumerate(order, start=1):
        text = " ".join(args.documents[i].split())
        print(f"{rank:>3}. {scores[i]:.4f}  {text[:100] + ('...' if len(text) > 100 else '')}")
    return 0


# -- info ----------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
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


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embeddinggemma", description="EmbeddingGemma text embeddings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts from a file or stdin into .npy or JSONL")
    embed.add_argument("input", nargs="?", default="-", help="text file (one text per line) or .jsonl; - = stdin")
    embed.add_argument("-o", "--output", default="-", help="output .npy or .jsonl (default: JSONL on stdout)")
    embed.add_argument(
        "--format",
        choices=["auto", "lines", "jsonl"],
        default="auto",
        help="input format (auto: .jsonl/.ndjson is JSONL, anything else one text per line)",
    )
    embed.add_argument("--text-field", default="text", help="JSONL field holding the text")
    embed.add_argument("--title-field", default="title", help="JSONL field holding an optional title")
    embed.add_argument("--id-field", default="id", help="JSONL field copied to JSONL output")
    embed.add_argument(
        "--task",
        default="document",
        help="prompt: document (default; uses titles), query, sts, code_retrieval, ...",
    )
    embed.add_argument("--dim", type=int, default=None, help="Matryoshka size: 768, 512, 256 or 128")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument(
        "--on-truncation",
        choices=["warn", "error"],
        default="warn",
        help="inputs over the token limit: cut with a warning, or stop with an error",
    )
    embed.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_model_options(embed)
    embed.set_defaults(func=cmd_embed)

    similarity = sub.add_parser("similarity", help="rank documents against a query")
    similarity.add_argument("query")
    similarity.add_argument("documents", nargs="+", metavar="DOC")
    similarity.add_argument("--task", default="query", help="query prompt (default: query)")
    similarity.add_argument("--dim", type=int, default=None)
    add_model_options(similarity)
    similarity.set_defaults(func=cmd_similarity)

    info = sub.add_parser("info", help="model, parameters, dims, prompts")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(info)
    info.set_defaults(func=cmd_info)
    __import__("embeddinggemma.eval.cli", fromlist=["add_eval_parser"]).add_eval_parser(sub)
    __import__("embeddinggemma.train.cli", fromlist=["add_train_parser"]).add_train_parser(sub)
    __import__("embeddinggemma.train.cli", fromlist=["add_soup_parser"]).add_soup_parser(sub)
    __import__("embeddinggemma.train.cli", fromlist=["add_student_parser"]).add_student_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.formatwarning = _one_line_warning
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except (UsageError, CheckpointError, ValueError, TypeError, FileNotFoundError, PermissionError) as exc:
        print(f"embeddinggemma {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
