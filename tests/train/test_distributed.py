"""Data parallelism end to end: `torchrun --nproc-per-node 2 -m embeddinggemma.cli train` (gloo, CPU) on one
global batch trains exactly like `embeddinggemma train` in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

# Hard negatives and a spread-out term: both depend on rows that the two ranks embed separately.
OVERRIDES = ["train.steps=3", "data.batch_size=8", "data.num_hard_negatives=2", "optim.warmup_steps=0"]


def _train_losses(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == "train"]


def test_torchrun_two_processes_equal_one(tiny_st_dir, tmp_path, capsys):
    recipe = ["smoke-tiny", f"model.checkpoint={tiny_st_dir}", *OVERRIDES]
    assert main(["train", *recipe, f"train.output_dir={tmp_path / 'single'}"]) == 0
    single = tmp_path / "single" / "model"
    assert f"-> {single}" in capsys.readouterr().out

    # the launcher users run; --standalone picks a free rendezvous port on this host
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*torchrun, "-m", "embeddinggemma.cli", "train", *recipe, f"train.output_dir={tmp_path / 'ddp'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 1/2 joined the gloo process group" in result.stdout + result.stderr
    assert result.stdout.count(f"trained smoke-tiny: 3 steps -> {tmp_path / 'ddp' / 'model'}") == 1  # rank 0 only

    one, two = (
        _train_losses(tmp_path / "single" / "train_log.jsonl"),
        _train_losses(tmp_path / "ddp" / "train_log.jsonl"),
    )
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "contrastive_loss@40", "spread_out_loss@16", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
        assert b["tokens"] == a["tokens"]  # each rank embedded half, the counts add up
    a_model, _ = load_checkpoint(single)
    b_model, _ = load_checkpoint(tmp_path / "ddp" / "model")
    start, _ = load_checkpoint(tiny_st_dir)
    for (name, x), (_, y), (_, x0) in zip(
        a_model.state_dict().items(), b_model.state_dict().items(), start.state_dict().items(), strict=True
    ):
        # Adam moves every element by ~lr per step whatever its gradient's size, so fp32 noise in a near-zero
        # gradient shows up at ~1e-5; measure the difference against how far training moved the tensor.
        # (A gradient-scale bug would not show in Adam's weights: the grad_norm check above catches it.)
        moved = (x - x0).norm()
        assert moved > 1e-3, f"{name} did not move: the comparison would be vacuous"
        assert (y - x).norm() < 1e-3 * moved, f"{name}: DDP differs by {(y - x).norm() / moved:.2e} of the update"
        assert (y - x).abs().max() < 1e-4, name
