"""Run mteb tasks or benchmarks with :class:`~embeddinggemma.eval.mteb_adapter.MTEBEmbedder` at several
Matryoshka dims and return the results in our results format (so ``embeddinggemma eval compare``
reads local-suite and MTEB runs alike).

Each task is encoded once: the adapter caches full-width embeddings, every dim scores a slice of
them, and the cache is dropped before the next task. A task whose data cannot be loaded (real MTEB
data needs the Hugging Face hub) is recorded under ``errors`` and the run goes on; if no task could
be run at all, that is an error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks import AbsTask

from embeddinggemma.eval.mteb_adapter import MTEBEmbedder

logger = logging.getLogger(__name__)

__all__ = ["evaluate_mteb", "resolve_mteb_tasks"]

HUB_HINT = "real MTEB tasks download their data from the Hugging Face hub: check network access and HF_HUB_OFFLINE"


def resolve_mteb_tasks(names: Sequence[str]) -> list[AbsTask]:
    """Task names and benchmark names (e.g. ``MTEB(eng, v2)``: any name with parentheses) -> tasks,
    in order, without duplicates. Unknown names raise ``ValueError`` with mteb's suggestion."""
    tasks: list[AbsTask] = []
    seen: set[str] = set()
    for name in names:
        try:
            found = list(mteb.get_benchmark(name).tasks) if "(" in name else [mteb.get_task(name)]
        except KeyError as exc:
            kind = "benchmark" if "(" in name else "task"
            hint = str(exc.args[0] if exc.args else exc).removeprefix("KeyError: ").strip("\"'")
            raise ValueError(f"unknown MTEB {kind} {name!r}: {hint}") from None
        for task in found:
            if task.metadata.name not in seen:
                seen.add(task.metadata.name)
                tasks.append(task)
    if not tasks:
        raise ValueError(f"{list(names)} name no MTEB tasks")
    return tasks


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _task_entry(result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scores, subsets) from an mteb ``TaskResult``: metrics averaged over splits and subsets, as
    mteb's ``get_score`` averages the main score, and each split/subset's own metrics."""
    rows = [(split, row) for split, split_rows in result.scores.items() for row in split_rows]
    multi_split = len(result.scores) > 1
    common = set.intersection(*({k for k, v in row.items() if _numeric(v)} for _, row in rows)) if rows else set()
    scores = {k: float(sum(row[k] for _, row in rows) / len(rows)) for k in sorted(common)}
    scores["main_score"] = float(result.get_score())
    subsets = {}
    if len(rows) > 1:
        for split, row in rows:
            label = f"{split}/{row['hf_subset']}" if multi_split else str(row["hf_subset"])
            subsets[label] = {k: float(v) for k, v in row.items() if _numeric(v)}
    return scores, subsets


def _load(task: AbsTask) -> None:
    try:
        task.load_data()
    except Exception as exc:  # datasets/hub raise many types; the message is what the user needs
        raise RuntimeError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def evaluate_mteb(
    adapter: MTEBEmbedder,
    tasks: Sequence[AbsTask],
    *,
    dims: Sequence[int],
    batch_size: int = 32,
    show_progress: bool = False,
    results_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``tasks`` at every dim in ``dims`` (largest first); returns ``{"tasks", "errors", "encoding"}``.

    Args:
        adapter: the model. With several dims it caches full-width embeddings for the task at hand
            (3 KB per distinct text: fine for most MTEB tasks; a multi-million-document corpus wants
            one dim per run).
        results_dir: also save mteb's own result files there (``mteb.ResultCache`` layout), e.g. for
            a leaderboard submission.
    """
    cache = mteb.ResultCache(cache_path=str(results_dir)) if results_dir is not None else None
    adapter.cache_embeddings = len(set(dims)) > 1
    encode_kwargs = {"batch_size": batch_size, "show_progress_bar": show_progress}
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    t_run = time.perf_counter()
    for task in tasks:
        name = task.metadata.name
        t0, enc0 = time.perf_counter(), adapter.encode_seconds
        # Load once for all dims (mteb would load and unload per call); aggregate tasks load their parts.
        preload = not task.data_loaded and not getattr(task, "is_aggregate", False)
        try:
            if preload:
                _load(task)
        except RuntimeError as exc:
            errors[name] = f"could not load its data ({exc}); {HUB_HINT}"
            logger.warning("skipping %s: %s", name, errors[name])
            continue
        by_dim: dict[str, Any] = {}
        try:
            for dim in sorted(dims, reverse=True):
                result = mteb.evaluate(
                    adapter.with_dim(dim),
                    task,
                    cache=cache,
                    overwrite_strategy="always",
                    raise_error=False,
                    encode_kwargs=dict(encode_kwargs),  # type: ignore[arg-type]
                    show_progress_bar=show_progress,
                    co2_tracker=False,
                )
                if result.exceptions:
                    lines = result.exceptions[0].exception.strip().splitlines() or ["unknown error"]
                    raise RuntimeError(lines[-1])
                scores, subsets = _task_entry(result.task_results[0])
                by_dim[str(dim)] = {"scores": scores, **({"subsets": subsets} if subsets else {})}
        except RuntimeError as exc:
            # One broken task must not cost a long benchmark run its other results.
            errors[name] = f"evaluation failed at dim {dim}: {exc}"
            logger.warning("%s: %s", name, errors[name])
            continue
        finally:
            adapter.clear_cache()
            if preload:
                task.unload_data()
        out[name] = {
            "kind": task.metadata.type,
            "main_metric": task.metadata.main_score,
            "languages": sorted(task.metadata.languages),
            "dims": by_dim,
            "seconds": {
                "encode": round(adapter.encode_seconds - enc0, 3),
                "total": round(time.perf_counter() - t0, 3),
            },
        }
        logger.info("%s: main score %.4f at dim %s", name, by_dim[str(max(dims))]["scores"]["main_score"], max(dims))
    if not out:
        first = next(iter(errors.items()))
        raise ValueError(f"no MTEB task could be run; {first[0]}: {first[1]}")
    return {
        "tasks": out,
        "errors": errors,
        "total_seconds": round(time.perf_counter() - t_run, 3),
    }
