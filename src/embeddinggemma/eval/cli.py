"""``embeddinggemma eval``: score a model on the local suite or on MTEB, and compare runs.

    embeddinggemma eval --suite local --dim 768 512 256 128 -o runs/fp32.json
    embeddinggemma eval --mteb "MTEB(eng, v2)" --dim 768 256 -o runs/mteb-eng.json
    embeddinggemma eval compare runs/fp32.json runs/int8.json

Every run writes one results JSON (model, variant, dtype, dims, versions, date, per-task per-dim
metrics, encode time and tokens/s) and prints a table. Errors are one line (``main`` in
``embeddinggemma.cli`` prints the ValueErrors raised here). Heavy imports (torch, mteb) happen inside
the handlers, so ``embeddinggemma --help`` stays fast.

Model-loading flags come from ``embeddinggemma.cli_options`` (shared with ``embed``, ``similarity`` and
``info``): each entry of its ``LOAD_OPTIONS`` is one ``Embedder.from_pretrained``
keyword exposed as a flag and recorded under ``variant`` in the results (``--quantize`` is such an
entry); another engine option is one more line there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embeddinggemma.cli_options import add_model_options, load_options

logger = logging.getLogger(__name__)

__all__ = ["add_eval_parser"]

DEFAULT_SUITE_DIR = Path("data/local_suite")
LOCAL_MAX_SEQ_LENGTH = 512  # the local suite's token budget and the paper's evaluation context


class EvalUsageError(ValueError):
    """Bad ``eval`` input; ``embeddinggemma.cli.main`` prints it as one line."""


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` (and ``eval compare``) on the main parser's subcommands."""
    parser = subparsers.add_parser(
        "eval",
        help="score a model on the local suite or MTEB tasks; compare runs",
        description="Score a model on the local benchmark suite (default) or on MTEB tasks/benchmarks. "
        "Real MTEB tasks download their data from the Hugging Face hub.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--suite", choices=["local"], help="the local suite built by scripts/build_local_suite.py")
    source.add_argument(
        "--mteb",
        nargs="+",
        metavar="TASK_OR_BENCHMARK",
        help='mteb task names and/or benchmark names, e.g. STS12 "MTEB(eng, v2)" "MTEB(Code, v1)"',
    )
    parser.add_argument(
        "--suite-dir", type=Path, default=DEFAULT_SUITE_DIR, help=f"suite directory (default: {DEFAULT_SUITE_DIR})"
    )
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="only these tasks of the local suite")
    parser.add_argument("--dim", nargs="+", type=int, metavar="DIM", help="Matryoshka dims, e.g. 768 512 256 128")
    parser.add_argument(
        "--embedding-precision",
        nargs="+",
        default=["float32"],
        choices=["float32", "int8", "binary"],
        help="also score each dim after quantizing the embeddings (int8: per-dimension ranges calibrated on "
        "the indexed side; binary: sign bits, Hamming ranking); local suite only (default: float32)",
    )
    add_model_options(
        parser,
        model_help="hub id or local checkpoint directory (any variant)",
        max_seq_length_help=f"token limit (default: {LOCAL_MAX_SEQ_LENGTH} for the local suite, the model's 2048 "
        "for MTEB)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-o", "--output", type=Path, help="results JSON to write")
    parser.add_argument("--name", help="run label, used as the column name by `eval compare`")
    parser.add_argument("--mteb-results", type=Path, metavar="DIR", help="also keep mteb's own result files in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(func=cmd_eval)

    sub = parser.add_subparsers(dest="eval_command", metavar="{compare}")
    compare = sub.add_parser("compare", help="side-by-side markdown table of results files")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN.json")
    compare.add_argument("--labels", nargs="+", help="column names (default: each run's name)")
    compare.add_argument("--dims", nargs="+", type=int, help="only these dims")
    compare.add_argument("--all-metrics", action="store_true", help="every metric, not only each task's main one")
    compare.add_argument("--subsets", action="store_true", help="add per-language / per-pair rows")
    compare.set_defaults(func=cmd_compare)
    return parser


# -- eval ----------------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise EvalUsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.dim is not None and any(d < 1 for d in args.dim):
        raise EvalUsageError(f"--dim values must be positive, got {args.dim}")
    if args.mteb is None:
        if args.mteb_results is not None:
            raise EvalUsageError("--mteb-results only applies to --mteb runs")
        if not (args.suite_dir / "manifest.json").is_file() and not any(args.suite_dir.glob("*/task.json")):
            raise EvalUsageError(
                f"no local suite in {args.suite_dir}; build it with `python scripts/build_local_suite.py "
                f"{args.suite_dir}` or pass --suite-dir"
            )
    elif args.tasks is not None:
        raise EvalUsageError("--tasks selects local-suite tasks; with --mteb, name the tasks after --mteb")
    elif args.embedding_precision != ["float32"]:
        raise EvalUsageError("--embedding-precision applies to the local suite; mteb scores float embeddings")


def _load_embedder(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from embeddinggemma.checkpoint import read_checkpoint_info, resolve_checkpoint
    from embeddinggemma.embedder import Embedder

    max_seq_length = args.max_seq_length
    if max_seq_length is None and args.mteb is None:
        # The suite's token budget assumes 512; a model with a shorter limit keeps its own.
        info, _ = read_checkpoint_info(resolve_checkpoint(args.model))
        max_seq_length = min(LOCAL_MAX_SEQ_LENGTH, info.config.max_seq_length)
    options = load_options(args)
    embedder = Embedder.from_pretrained(args.model, max_seq_length=max_seq_length, **options)
    return embedder, options


def _dims(args: argparse.Namespace, embedder: Any) -> list[int]:
    width = int(embedder.embedding_dim)
    dims = sorted(set(args.dim or [width]), reverse=True)
    bad = [d for d in dims if d > width]
    if bad:
        raise EvalUsageError(f"--dim {bad}: this model has {width} dimensions; use values up to {width}")
    untrained = [d for d in dims if d not in embedder.matryoshka_dims]
    if untrained:
        logger.warning("dims %s are not trained Matryoshka sizes %s", untrained, list(embedder.matryoshka_dims))
    return dims


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("embeddinggemma", "torch", "numpy", "mteb", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):  # timings on a shared machine mean little without the load beside them
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _run_header(args: argparse.Namespace, embedder: Any, options: dict[str, Any], dims: list[int]) -> dict[str, Any]:
    from embeddinggemma.eval.runner import RESULTS_FORMAT

    dtype = str(embedder.dtype).removeprefix("torch.")
    source = Path(str(embedder.source)) if getattr(embedder, "source", None) else None
    return {
        "format": RESULTS_FORMAT,
        "name": args.name or f"{Path(str(args.model)).name} {dtype}",
        "model": str(args.model),
        "model_path": str(source) if source else None,
        "revision": source.name if source is not None and source.parent.name == "snapshots" else None,
        "variant": {**options, "max_seq_length": embedder.max_seq_length},
        "dtype": dtype,
        "device": str(embedder.device),
        "max_seq_length": embedder.max_seq_length,
        "dims": dims,
        "embedding_precisions": list(dict.fromkeys(args.embedding_precision)),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": _versions(),
        "machine": _machine(),
    }


def _throughput(tokens: int | None, seconds: float, texts: int) -> dict[str, Any]:
    return {
        "texts_encoded": texts,
        "tokens": tokens,
        "encode_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if tokens and seconds > 0 else None,
    }


def _mean_main(tasks: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    out = {}
    for d in keys:
        values = [t["dims"][d]["scores"]["main_score"] for t in tasks.values() if d in t["dims"]]
        if values:
            out[d] = sum(values) / len(values)
    return out


def _run_local(args: argparse.Namespace, embedder: Any, dims: list[int]) -> dict[str, Any]:
    from embeddinggemma.eval.counting import CountingEmbedder
    from embeddinggemma.eval.runner import evaluate_suite

    counter = CountingEmbedder(embedder)
    report = evaluate_suite(
        counter,
        args.suite_dir,
        dims=dims,
        precisions=args.embedding_precision,
        tasks=args.tasks,
        batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    suite: dict[str, Any] = {"kind": "local", "dir": str(args.suite_dir)}
    manifest = args.suite_dir / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        suite |= {"suite_version": data.get("suite_version"), "build_key": data.get("build_key")}
    return {
        "suite": suite,
        "k_values": report["k_values"],
        "tasks": report["tasks"],
        "encoding": _throughput(counter.tokens, counter.seconds, counter.texts)
        | {"cache_hits": report["encoding"]["cache_hits"], "total_seconds": report["encoding"]["total_seconds"]},
    }


def _mteb_tasks(names: Sequence[str]) -> list[Any]:
    try:
        from embeddinggemma.eval import mteb_run
    except ImportError as exc:
        raise EvalUsageError(f"--mteb needs mteb ({exc.name} is missing): pip install -e '.[eval]'") from None
    return mteb_run.resolve_mteb_tasks(names)


def _run_mteb(
    args: argparse.Namespace, tasks: list[Any], embedder: Any, options: dict[str, Any], dims: list[int]
) -> dict[str, Any]:
    from embeddinggemma.eval.mteb_adapter import MTEBEmbedder
    from embeddinggemma.eval.mteb_local import local_prompts
    from embeddinggemma.eval.mteb_run import evaluate_mteb

    prompts = local_prompts(tasks, embedder.prompts)  # local-data tasks keep the prompts their specs declare
    adapter = MTEBEmbedder(args.model, embedder=embedder, load_options=options, prompts=prompts)
    run = evaluate_mteb(
        adapter,
        tasks,
        dims=dims,
        batch_size=args.batch_size,
        show_progress=not args.no_progress,
        results_dir=args.mteb_results,
    )
    for name, error in run["errors"].items():
        print(f"warning: {name}: {error}", file=sys.stderr)
    return {
        "suite": {"kind": "mteb", "requested": list(args.mteb), "mteb_model_name": adapter.mteb_model_meta.name},
        "tasks": run["tasks"],
        "errors": run["errors"],
        "encoding": _throughput(adapter.tokens, adapter.encode_seconds, adapter.counter.texts)
        | {"total_seconds": run["total_seconds"]},
    }


def cmd_eval(args: argparse.Namespace) -> int:
    """Load the model once, score every requested dim, write the results JSON, print the tables."""
    from embeddinggemma.eval.report import matryoshka_markdown, results_markdown
    from embeddinggemma.eval.runner import score_keys, write_results

    _check_args(args)
    tasks = _mteb_tasks(args.mteb) if args.mteb else None  # unknown names fail before the model loads
    t0 = time.perf_counter()
    embedder, options = _load_embedder(args)
    dims = _dims(args, embedder)
    results = _run_header(args, embedder, options, dims)
    results |= _run_local(args, embedder, dims) if tasks is None else _run_mteb(args, tasks, embedder, options, dims)
    results["mean_main_score"] = _mean_main(results["tasks"], score_keys(results))
    results["wall_seconds"] = round(time.perf_counter() - t0, 3)
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.output is not None:
        write_results(results, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    enc = results["encoding"]
    rate = f", {enc['tokens_per_second']:.0f} tokens/s" if enc.get("tokens_per_second") else ""
    print(f"## {results['name']}: {len(results['tasks'])} tasks, encode {enc['encode_seconds']:.0f} s{rate}\n")
    print(matryoshka_markdown(results))
    print()
    print(results_markdown(results))
    return 0


# -- compare -------------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    from embeddinggemma.eval.report import compare_results, matryoshka_markdown
    from embeddinggemma.eval.runner import load_results

    runs = []
    for path in args.runs:
        if not path.is_file():
            raise EvalUsageError(f"results file {path} does not exist")
        try:
            runs.append(load_results(path))
        except json.JSONDecodeError as exc:
            raise EvalUsageError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if len(runs) == 1 and not args.all_metrics and not args.subsets:
        print(matryoshka_markdown(runs[0], dims=args.dims))
        return 0
    print(compare_results(runs, labels=args.labels, dims=args.dims, all_metrics=args.all_metrics, subsets=args.subsets))
    return 0
