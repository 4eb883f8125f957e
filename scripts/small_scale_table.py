"""Markdown tables of scripts/small_scale_study.sh's results: one row per run, mean main score x 100.

    python scripts/small_scale_table.py benchmarks/results/2026-11-23-cpu/small-scale

Columns: the local suite's mean (4 tasks) and the code dev split, at each dim x embedding precision the
runs were scored at, and the last logged student-teacher cosine of the training run (when logged).
"""

from __future__ import annotations

import argparse
import json
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


def _last_teacher_cosine(log: Path) -> str:
    if not log.is_file():
        return ""
    values = [r["teacher_cosine"] for r in map(json.loads, log.read_text().splitlines()) if "teacher_cosine" in r]
    return f"{values[-1]:.2f}" if values else ""


def _table(results_dir: Path, suffix: str, title: str) -> str:
    runs = [(name, results_dir / f"{name}-{suffix}.json") for name in ROWS]
    runs = [(name, load_results(path)) for name, path in runs if path.is_file()]
    if not runs:
        return ""
    keys = list(dict.fromkeys(k for _, r in runs for k in score_keys(r)))
    lines = [
        f"{title}\n",
        "| run | " + " | ".join(keys) + " | teacher cos |",
        "|---|" + "---:|" * (len(keys) + 1),
    ]
    for name, results in runs:
        means = results["mean_main_score"]
        cells = [f"{means[k] * 100:.2f}" if k in means else "–" for k in keys]
        cosine = _last_teacher_cosine(results_dir / f"{name}-train_log.jsonl")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cosine} |")
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
