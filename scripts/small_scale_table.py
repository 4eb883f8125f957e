"""Markdown tables of scripts/small_scale_study.sh's results: one row per run, mean main score x 100.

    python scripts/small_scale_table.py benchmarks/results/2026-11-23-cpu/small-scale

Columns: the local suite's mean (4 tasks) and the code dev split, at each dim x embedding precision the
runs were scored at, and the last logged student-teacher cosine and in-batch negative cosine (768 dims)
of the training run (when logged).
A run repeated under other seeds (files RUN-seedN-*, from SEED=N scripts/small_scale_study.sh) is shown
as the mean over its seeds with the lowest and highest value in brackets, so differences between rows
can be read against the run-to-run noise.
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


# Columns from the training log: the last logged value of each key.
LOGGED = {
    "teacher_cosine": "teacher cos",  # student-teacher cosine (distillation arms)
    "in_batch_negative_similarity@768": "in-batch neg cos",  # collapse shows as unrelated texts moving together
}


def _last_logged(log: Path, key: str) -> float | None:
    if not log.is_file():
        return None
    values = [r[key] for r in map(json.loads, log.read_text().splitlines()) if key in r]
    return values[-1] if values else None


def _seed_runs(results_dir: Path, name: str, suffix: str) -> list[str]:
    """The run's own name (seed 0) and its repeats NAME-seedN that have results for ``suffix``."""
    pattern = re.compile(rf"{re.escape(name)}-seed\d+-{re.escape(suffix)}\.json")
    repeats = sorted(p.name.removesuffix(f"-{suffix}.json") for p in results_dir.iterdir() if pattern.fullmatch(p.name))
    return [run for run in [name, *repeats] if (results_dir / f"{run}-{suffix}.json").is_file()]


def _cell(values: list[float], digits: int) -> str:
    """One value as is; several as their mean with (lowest–highest)."""
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _table(results_dir: Path, suffix: str, title: str) -> str:
    def load(run: str) -> dict:
        return load_results(results_dir / f"{run}-{suffix}.json")

    rows = [(name, {run: load(run) for run in _seed_runs(results_dir, name, suffix)}) for name in ROWS]
    rows = [(name, by_run) for name, by_run in rows if by_run]
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for _, by_run in rows for r in by_run.values() for k in score_keys(r)))
    lines = [
        f"{title}\n",
        "| run | seeds | " + " | ".join([*keys, *LOGGED.values()]) + " |",
        "|---|---:|" + "---:|" * (len(keys) + len(LOGGED)),
    ]
    for name, by_run in rows:
        cells = []
        for k in keys:
            values = [r["mean_main_score"][k] * 100 for r in by_run.values() if k in r["mean_main_score"]]
            cells.append(_cell(values, 2))
        for key in LOGGED:
            logged = [_last_logged(results_dir / f"{run}-train_log.jsonl", key) for run in by_run]
            logged = [v for v in logged if v is not None]
            cells.append(_cell(logged, 2) if logged else "")
        lines.append(f"| {name} | {len(by_run)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    args = parser.parse_args()
    for suffix, title in (
        ("suite", "Local suite, mean of 4 tasks"),
        ("code-dev", "Code dev split (nDCG@10)"),
        ("dev", "Dev splits of the 6 training datasets, mean"),
    ):
        table = _table(args.results_dir, suffix, f"### {title}")
        if table:
            print(table)


if __name__ == "__main__":
    main()
