#!/usr/bin/env python
"""Are the real checkpoint's golden embeddings bit-identical between a reference commit and the working tree?

    HF_HUB_OFFLINE=1 python scripts/check_goldens_identical.py                  # reference: main
    HF_HUB_OFFLINE=1 python scripts/check_goldens_identical.py --reference HEAD~3

For a refactoring that must not change behaviour. The reference commit's ``src/`` is exported with
``git archive`` into a temporary directory; each side then runs in its own Python process with its own
``src/`` first on the path and encodes the texts of ``tests/goldens/embeddinggemma-300m.json`` with the
public API on CPU in float32: every text alone (as the golden test does), and all queries and all
documents each in one batch (so padding and length sorting are exercised too). Prints the max abs
difference per mode and exits 1 unless every one is 0.0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "goldens" / "embeddinggemma-300m.json"
MODES = ("alone", "batched")


def encode(records: list[dict], model: str, out: Path) -> None:
    """Runs in the child process, against whichever ``embeddinggemma`` is first on the path."""
    import embeddinggemma
    from embeddinggemma import Embedder

    print(f"  encoding with {Path(embeddinggemma.__file__).parent}", file=sys.stderr)
    embedder = Embedder.from_pretrained(model, device="cpu", dtype="float32")
    alone = []
    for record in records:
        if record["kind"] == "query":
            alone.append(embedder.encode(record["text"], task=record["task"]))
        else:
            alone.append(embedder.encode_document(record["text"], titles=record["title"]))
    batched = np.zeros((len(records), embedder.embedding_dim), np.float32)
    for task in sorted({r["task"] for r in records if r["kind"] == "query"}):
        rows = [i for i, r in enumerate(records) if r["kind"] == "query" and r["task"] == task]
        batched[rows] = embedder.encode([records[i]["text"] for i in rows], task=task, batch_size=len(rows))
    rows = [i for i, r in enumerate(records) if r["kind"] == "document"]
    batched[rows] = embedder.encode_document(
        [records[i]["text"] for i in rows], titles=[records[i]["title"] for i in rows], batch_size=len(rows)
    )
    np.savez(out, alone=np.stack(alone), batched=batched)


def run_side(src: Path, model: str, out: Path) -> dict[str, np.ndarray]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--encode", str(out), "--model", model]
    subprocess.run(cmd, env=env, check=True)
    with np.load(out) as data:
        return {mode: data[mode] for mode in MODES}


def export_src(reference: str, into: Path) -> Path:
    """The reference commit's ``src/`` as plain files (no checkout, no worktree)."""
    archive = into / "src.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", reference, "src"], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="main", help="commit, branch or tag to compare against (default: main)")
    parser.add_argument("--model", default="google/embeddinggemma-300m")
    parser.add_argument("--encode", type=Path, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args(argv)
    records = json.loads(GOLDENS.read_text(encoding="utf-8"))["records"]
    if args.encode is not None:
        encode(records, args.model, args.encode)
        return 0
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{args.reference}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        parser.error(f"--reference {args.reference!r} is not a commit of {ROOT}")
    with tempfile.TemporaryDirectory(prefix="goldens-") as tmp:
        tmp_dir = Path(tmp)
        print(f"reference {args.reference} ({commit.stdout.strip()[:12]}):", file=sys.stderr)
        before = run_side(export_src(commit.stdout.strip(), tmp_dir), args.model, tmp_dir / "before.npz")
        print("working tree:", file=sys.stderr)
        after = run_side(ROOT / "src", args.model, tmp_dir / "after.npz")
    worst = 0.0
    for mode in MODES:
        diff = float(np.abs(before[mode] - after[mode]).max())
        worst = max(worst, diff)
        print(f"{mode}: {len(records)} golden texts, {before[mode].shape[1]} dims, max abs difference {diff}")
    print(f"max abs difference: {worst}")
    return 0 if worst == 0.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
