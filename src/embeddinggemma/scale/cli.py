"""`embeddinggemma embed-dataset INPUT OUTPUT`: Parquet/JSONL files -> Parquet embeddings on a Ray cluster.

    embeddinggemma embed-dataset corpus/ out/ --dims 768 128                   local Ray, all CPUs or GPUs
    embeddinggemma embed-dataset s3://bucket/corpus/ s3://bucket/emb/ --address auto    an existing cluster
    ray job submit -- embeddinggemma embed-dataset ...                           as a Ray job

Run it again with the same arguments after a crash: finished blocks are skipped. Only argparse is
imported here; Ray loads inside the handler, so `embeddinggemma --help` works without it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

__all__ = ["add_embed_dataset_parser", "cmd_embed_dataset"]


class JobError(ValueError):
    """A worker failed; reported as one line (the worker's own error), not Ray's traceback."""


def add_embed_dataset_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "embed-dataset",
        help="embed Parquet/JSONL files into Parquet on a Ray cluster (resumable)",
        description="Embed Parquet or JSONL files (a file or directory, local or any filesystem Ray reads: s3://, "
        "gs://, ...) into OUTPUT/part-*.parquet with a pool of Ray actors, one model each. Rerun with the same "
        "arguments to resume. Rows that cannot be embedded are listed in OUTPUT/_bad_rows.jsonl.",
    )
    parser.add_argument("input", help="a .parquet/.jsonl file or a directory of them")
    parser.add_argument("output", help="output directory (created; reused to resume)")
    parser.add_argument("--model", default=None, help="hub id or checkpoint directory (default: the released model)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--title-column", default=None, help="optional titles (document task only)")
    parser.add_argument("--id-column", default="id", help="copied to the output; integers or strings")
    parser.add_argument("--task", default="document", help="prompt: document (default), query, sts, ...")
    parser.add_argument(
        "--dims", type=int, nargs="+", default=None, help="Matryoshka sizes, e.g. 768 128 (default: all)"
    )
    parser.add_argument(
        "--precision",
        choices=["float32", "int8", "binary"],
        default="float32",
        help="embedding columns as float32, int8 codes (ranges calibrated on the input) or packed sign bits",
    )
    parser.add_argument("--calibration-rows", type=int, default=10_000, help="rows that calibrate int8 ranges")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: fp32 CPU, bf16 GPU")
    parser.add_argument("--quantize", default=None, choices=["int8"], help="the int8 CPU model")
    parser.add_argument("--max-seq-length", type=int, default=None, help="token limit (default: the model's 2048)")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="embed the first tokens of over-long texts (listed in _bad_rows.jsonl) instead of skipping them",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--rows-per-block", type=int, default=10_000, help="rows per output part (resume grain)")
    parser.add_argument("--format", choices=["auto", "parquet", "jsonl"], default="auto", help="input format")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 if the cluster has GPUs")
    parser.add_argument("--cpus-per-worker", type=float, default=1, help="CPU workers run this many threads")
    parser.add_argument("--workers", type=int, default=None, help="actors (default: one per GPU, or per CPU)")
    parser.add_argument(
        "--address", default=None, help="Ray cluster: auto, ray://host:10001, local (default: RAY_ADDRESS or local)"
    )
    parser.add_argument("--object-store-mb", type=int, default=None, help="object store of a local Ray (MB)")
    parser.set_defaults(func=cmd_embed_dataset, on_interrupt="finished blocks are kept: rerun the command to resume")
    return parser


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def worker_error(exc: BaseException) -> str:
    """The worker's own error inside Ray's wrappers (RayTaskError, ActorDiedError, Ray Data's exceptions): the
    innermost exception that is not Ray's, else the last `SomethingError: message` line of Ray's report."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    for candidate in reversed(chain):
        if not type(candidate).__module__.startswith("ray") and str(candidate).strip():
            return f"{type(candidate).__name__}: {str(candidate).strip().splitlines()[-1]}"
    for candidate in chain:
        lines = [m for line in str(candidate).splitlines() if (m := _ERROR_LINE.match(line))]
        ours = [m for m in lines if not m.group(0).strip().startswith("ray.")]
        if ours or lines:
            found = (ours or lines)[-1]
            return f"{found.group(1)}: {found.group(2).strip()}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else 'no message'}"


def cmd_embed_dataset(args: argparse.Namespace) -> int:
    from embeddinggemma.checkpoint import DEFAULT_MODEL

    try:
        import ray
        import ray.data  # the extra (pyarrow comes with it)

        from embeddinggemma.scale.job import embed_files
    except ImportError:
        raise JobError("embed-dataset needs Ray Data: pip install 'embeddinggemma[ray]'") from None
    scale_logger = logging.getLogger("embeddinggemma.scale")
    if scale_logger.getEffectiveLevel() > logging.INFO:
        scale_logger.setLevel(logging.INFO)  # block progress is the command's progress report (stderr)
    init: dict[str, Any] = {"address": args.address}
    if args.object_store_mb is not None:
        init["object_store_memory"] = args.object_store_mb * 2**20
    try:
        summary = embed_files(
            args.input,
            args.output,
            model=args.model or DEFAULT_MODEL,
            text_column=args.text_column,
            title_column=args.title_column,
            id_column=args.id_column,
            task=args.task,
            dims=args.dims,
            dtype=args.dtype,
            quantize=args.quantize,
            precision=args.precision,
            calibration_rows=args.calibration_rows,
            max_seq_length=args.max_seq_length,
            overlong="truncate" if args.truncate else "skip",
            batch_size=args.batch_size,
            rows_per_block=args.rows_per_block,
            input_format=args.format,
            num_gpus_per_worker=args.gpus_per_worker,
            num_cpus_per_worker=args.cpus_per_worker,
            concurrency=args.workers,
            ray_init=init,  # Ray starts only once the input, the model and the settings are checked
        )
    except ray.exceptions.RayError as exc:
        raise JobError(f"a Ray worker failed ({worker_error(exc)}); finished blocks are kept, rerun to resume") from exc
    finally:
        if ray.is_initialized():
            ray.shutdown()
    print(
        f"embedded {summary.embedded:,} of {summary.rows:,} rows ({summary.bad_rows:,} not embedded, "
        f"{summary.truncated:,} truncated: {args.output}/_bad_rows.jsonl) -> {args.output} in {summary.seconds:.1f} s "
        f"({summary.rows_per_second:,.0f} rows/s, {summary.tokens_per_second:,.0f} tokens/s this run; "
        f"{summary.blocks_done_before} of {summary.blocks} blocks were done before)",
        file=sys.stderr,
    )
    return 0
