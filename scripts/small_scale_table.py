"""Markdown tables of scripts/small_scale_study.sh's results: one row per run, mean main score x 100.

    python scripts/small_scale_table.py benchmarks/results/2026-11-23-cpu/small-scale

Columns: the local suite's mean (4 tasks) and the code dev split, at each dim x embedding precision the
runs were scored at, and the last logged student-teacher cosine and in-batch negative cosine (widest
dim) of the training run (when logged).
A run repeated under other seeds (files RUN-seedN-*, from SEED=N scripts/small_scale_study.sh) is shown
as the mean over its seeds with the lowest and highest value in brackets, so differences between rows
can be read against the run-to-run noise; a second table gives the full recipe minus each ablation arm,
seed by seed (arms of one seed trained on the same batches, so their difference is the removed term's).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from embeddinggemma.eval.runner import load_results, score_keys

ROWS = [
    "student-init",
    "finetune-code",
    "ablation-no-spread-out",
    "ablation-no-distill",
    "ablation-no-hardness",
    "ablation-no-matryoshka",
    "soup-mixture-a",
    "soup-mixture-b",
    "soup-mixture-c",
    "soup-abc",
]


# Columns from the training log: the last logged value of each key (a key logged per Matryoshka dim,
# KEY@DIM: at the widest dim, 768 for EmbeddingGemma, 640 for the models built from Gemma 3 270M).
LOGGED = {
    "teacher_cosine": "teacher cos",  # student-teacher cosine (distillation arms)
    "in_batch_negative_similarity": "in-batch neg cos",  # collapse shows as unrelated texts moving together
}
FULL = "finetune-code"  # each ablation-* arm is this recipe with one term removed


def _last_logged(log: Path) -> dict[str, float]:
    """The last logged value of each LOGGED key in a training log (keys never logged are left out)."""
    if not log.is_file():
        return {}
    last = {}
    for record in map(json.loads, log.read_text().splitlines()):
        for key in LOGGED:
            per_dim = [k for k in record if k.startswith(f"{key}@")]
            if key in record or per_dim:
                last[key] = record[key] if key in record else record[max(per_dim, key=lambda k: int(k.split("@")[1]))]
    return last


def _seed_runs(results_dir: Path, name: str, suffix: str) -> dict[str, str]:
    """Seed tag ("" for seed 0, "-seedN") -> run name, for the runs of ``name`` with results for ``suffix``."""
    pattern = re.compile(rf"{re.escape(name)}(-seed\d+)?-{re.escape(suffix)}\.json")
    matches = (pattern.fullmatch(p.name) for p in results_dir.iterdir())
    tags = sorted((m.group(1) or "" for m in matches if m), key=lambda tag: int(tag.removeprefix("-seed") or 0))
    return {tag: name + tag for tag in tags}


def _cell(values: list[float], digits: int) -> str:
    """One value as is; several as their mean with (lowest–highest)."""
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _load(
    results_dir: Path, suffix: str, rows: list[str] = ROWS
) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    """Every row's results for ``suffix``, each file read once: row name -> seed tag -> mean main score per
    key (x100), and the score columns in the runner's order (dims x precisions)."""
    scores, keys = {}, {}
    for name in rows:
        for tag, run in _seed_runs(results_dir, name, suffix).items():
            results = load_results(results_dir / f"{run}-{suffix}.json")
            scores.setdefault(name, {})[tag] = {k: v * 100 for k, v in results["mean_main_score"].items()}
            keys.update(dict.fromkeys(score_keys(results)))
    return scores, list(keys)


def _table(results_dir: Path, scores: dict, keys: list[str], title: str) -> str:
    if not scores:
        return ""
    lines = [
        f"{title}\n",
        "| run | seeds | " + " | ".join([*keys, *LOGGED.values()]) + " |",
        "|---|---:|" + "---:|" * (len(keys) + len(LOGGED)),
    ]
    for name, by_seed in scores.items():
        cells = [_cell([s[k] for s in by_seed.values() if k in s], 2) for k in keys]
        logs = [_last_logged(results_dir / f"{name}{tag}-train_log.jsonl") for tag in by_seed]
        for key in LOGGED:
            logged = [log[key] for log in logs if key in log]
            cells.append(_cell(logged, 2) if logged else "")
        lines.append(f"| {name} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _paired_table(scores: dict, keys: list[str], title: str, reference: str = FULL) -> str:
    """The reference run minus each other arm, seed by seed: arms of one seed trained on the same batches.
    With the default reference (the full recipe) the arms are the ablation-* runs."""
    arms = [name for name in scores if name != reference and (reference != FULL or name.startswith("ablation-"))]
    if reference not in scores or not arms:
        return ""
    head = "removed" if reference == FULL else f"{reference} minus"
    lines = [f"{title}\n", f"| {head} | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for arm in arms:
        tags = [tag for tag in scores[reference] if tag in scores[arm]]
        cells = [
            " / ".join(
                f"{scores[reference][t][k] - scores[arm][t][k]:+.1f}"
                for t in tags
                if k in scores[reference][t] and k in scores[arm][t]
            )
            for k in keys
        ]
        seeds = ", ".join(tag.removeprefix("-seed") or "0" for tag in tags)
        lines.append(f"| {arm.removeprefix('ablation-no-')} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--rows", nargs="+", default=ROWS, help="run names, in table order (default: the study's)")
    parser.add_argument("--reference", default=FULL, help="the run the paired table subtracts the others from")
    args = parser.parse_args()
    for suffix, title in (
        ("suite", "Local suite, mean of 4 tasks"),
        ("code-dev", "Code dev split (nDCG@10)"),
        ("dev", "Dev splits of the 6 training datasets, mean"),
    ):
        scores, keys = _load(args.results_dir, suffix, args.rows)
        paired, arms = ("full recipe", "ablation") if args.reference == FULL else (args.reference, "arm")
        for table in (
            _table(args.results_dir, scores, keys, f"### {title}"),
            _paired_table(scores, keys, f"### {title}: {paired} minus each {arms}, paired by seed", args.reference),
        ):
            if table:
                print(table)


if __name__ == "__main__":
    main()
