"""Markdown tables from results JSON: one run per dim, or several runs side by side.

Used by ``embeddinggemma eval`` to print what :func:`embeddinggemma.eval.runner.evaluate_suite`
wrote, and to compare e.g. fp32 vs bf16 vs a quantized model on the same suite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from embeddinggemma.eval.runner import load_results, score_keys

__all__ = ["compare_results", "matryoshka_markdown", "results_markdown"]

# Columns of the single-run table, per task kind (the main metric comes first).
_KEY_METRICS = {
    "retrieval": ("ndcg_at_10", "mrr_at_10", "recall_at_10", "recall_at_100", "map_at_100"),
    "sts": ("cosine_spearman", "cosine_pearson"),
    "bitext": ("f1", "accuracy", "precision", "recall"),
}
# mteb task types with the same metric names as our kinds; any other type gets a main-score table.
_KIND_ALIASES = {"Retrieval": "retrieval", "STS": "sts", "BitextMining": "bitext"}


def _kind(task: Mapping[str, Any]) -> str:
    return _KIND_ALIASES.get(task["kind"], task["kind"])


def _label(results: Mapping[str, Any]) -> str | None:
    """A run's display name: its ``name`` (run label), else its ``model``."""
    return results.get("name") or results.get("model")


def _fmt(x: float | None, scale: float) -> str:
    return "–" if x is None else f"{x * scale:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_markdown(results: Mapping[str, Any], *, scale: float = 100.0) -> str:
    """One section per dim with one table per task kind: rows are tasks (and their subsets,
    e.g. languages), columns the kind's key metrics, main metric first.

    Scores are multiplied by ``scale`` (100 gives MTEB-style percentages).
    """
    out: list[str] = []
    model = _label(results) or "unnamed model"
    kinds = list(_KEY_METRICS) + sorted({_kind(t) for t in results["tasks"].values()} - set(_KEY_METRICS))
    for dim in score_keys(results):
        mean = results.get("mean_main_score", {}).get(dim)
        out.append(f"### {model} @ dim {dim}: mean main score {_fmt(mean, scale)}\n")
        for kind in kinds:
            metrics = _KEY_METRICS.get(kind, ("main_score",))
            rows = []
            for name, task in sorted(results["tasks"].items()):
                if _kind(task) != kind or dim not in task["dims"]:
                    continue
                entry = task["dims"][dim]
                rows.append([name, *(_fmt(entry["scores"].get(m), scale) for m in metrics)])
                for sub, scores in sorted(entry.get("subsets", {}).items()):
                    rows.append([f"{name} / {sub}", *(_fmt(scores.get(m), scale) for m in metrics)])
            if rows:
                out.append(_table([f"{kind} task", *metrics], rows) + "\n")
    return "\n".join(out)


def _subset_rows(loaded: list[dict[str, Any]], name: str, dim: str, scale: float) -> list[list[str]]:
    entries = [r["tasks"].get(name, {}).get("dims", {}).get(dim) or {} for r in loaded]
    metric = next((r["tasks"][name]["main_metric"] for r in loaded if name in r["tasks"]), "")
    found = sorted({s for e in entries for s in e.get("subsets", {})})
    return [
        [
            f"{name} / {sub} / {metric} @ {dim}",
            *(_fmt(e.get("subsets", {}).get(sub, {}).get(metric), scale) for e in entries),
        ]
        for sub in found
    ]


def compare_results(
    runs: Sequence[str | Path | Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    dims: Sequence[int] | None = None,
    all_metrics: bool = False,
    subsets: bool = False,
    scale: float = 100.0,
) -> str:
    """Side-by-side markdown table: rows are ``task / metric @ dim``, columns are runs.

    Args:
        runs: results JSON paths or already loaded results dicts.
        labels: column names (default: each run's ``model`` field, else the file name).
        dims: which dims to show (default: every dim found in any run), at every embedding precision
            the runs scored them at (``768``, ``768/int8``, ``768/binary``).
        all_metrics: every metric instead of each task's main metric.
        subsets: add the main metric of every subset (language, language pair) too.
        scale: multiplier for the printed scores (100 = percentages).

    A run that lacks a task, dim or metric shows "–", so runs on different suites or dims
    can still be compared on what they share. The last rows give the mean main score per
    dim over the tasks that *all* runs have, so the means compare like with like.
    """
    loaded = [dict(r) if isinstance(r, Mapping) else load_results(r) for r in runs]
    if not loaded:
        raise ValueError("give at least one results file to compare")
    if labels is None:
        names = [Path(p).stem if not isinstance(p, Mapping) else f"run{i}" for i, p in enumerate(runs)]
        labels = [_label(r) or n for r, n in zip(loaded, names, strict=True)]
        if len(set(labels)) < len(labels):  # e.g. the same model in fp32 and bf16: say which file
            labels = [f"{lab} ({n})" for lab, n in zip(labels, names, strict=True)]
    if len(labels) != len(loaded):
        raise ValueError(f"{len(labels)} labels for {len(loaded)} runs")
    # Variant keys ("768", "768/int8", ...) of every run, widest dim first, in first-seen order per dim.
    found = list(dict.fromkeys(k for r in loaded for k in score_keys(r, dims)))
    show_dims = sorted(found, key=lambda k: -int(k.split("/")[0]))
    task_names = sorted({t for r in loaded for t in r["tasks"]})
    rows: list[list[str]] = []
    for name in task_names:
        for dim in show_dims:
            metric_names: list[str] = []
            for r in loaded:
                entry = r["tasks"].get(name, {}).get("dims", {}).get(dim)
                if entry is None:
                    continue
                names = entry["scores"].keys() if all_metrics else [r["tasks"][name]["main_metric"]]
                metric_names += [m for m in names if m not in metric_names and m not in ("main_score",)]
            for metric in metric_names:
                cells = []
                for r in loaded:
                    entry = r["tasks"].get(name, {}).get("dims", {}).get(dim)
                    value = None if entry is None else entry["scores"].get(metric)
                    counts = metric in ("num_queries", "skipped_queries")
                    cells.append(("–" if value is None else f"{value:.0f}") if counts else _fmt(value, scale))
                rows.append([f"{name} / {metric} @ {dim}", *cells])
            if subsets:
                rows += _subset_rows(loaded, name, dim, scale)
    common = [t for t in task_names if all(t in r["tasks"] for r in loaded)]
    for dim in show_dims:
        cells = []
        for r in loaded:
            vals = [r["tasks"][t]["dims"].get(dim, {}).get("scores", {}).get("main_score") for t in common]
            ok = common and all(v is not None for v in vals)
            cells.append(_fmt(sum(vals) / len(vals), scale) if ok else "–")  # type: ignore[arg-type]
        rows.append([f"**mean main score ({len(common)} tasks) @ {dim}**", *cells])
    return _table(["task / metric @ dim", *labels], rows)


def matryoshka_markdown(results: Mapping[str, Any], *, dims: Sequence[int] | None = None, scale: float = 100.0) -> str:
    """One run's main score per task (rows) and dim (columns), e.g. 768 vs 512 vs 256 vs 128, with
    each task's main metric named and the mean over tasks as the last row."""
    show = score_keys(results, dims)
    rows = []
    for name, task in sorted(results["tasks"].items()):
        cells = [_fmt(task["dims"].get(d, {}).get("scores", {}).get("main_score"), scale) for d in show]
        rows.append([name, task["main_metric"], *cells])
    means = results.get("mean_main_score", {})
    rows.append([f"**mean ({len(results['tasks'])} tasks)**", "", *(_fmt(means.get(d), scale) for d in show)])
    return _table(["task", "main metric", *(f"dim {d}" for d in show)], rows)
