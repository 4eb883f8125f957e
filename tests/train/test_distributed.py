"""Two processes (gloo, CPU) on one global batch train exactly like one process."""

from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp
from trainer_helpers import ddp_worker, smoke_recipe

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.train.trainer import train_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

# Hard negatives and a spread-out term: both depend on rows that the two ranks embed separately.
OVERRIDES = ["train.steps=3", "data.batch_size=8", "data.num_hard_negatives=2", "optim.warmup_steps=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_losses(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == "train"]


def test_two_processes_equal_one(tiny_st_dir, tmp_path):
    single = train_recipe(smoke_recipe(tiny_st_dir, tmp_path / "single", *OVERRIDES))
    mp.spawn(ddp_worker, args=(2, _free_port(), tiny_st_dir, tmp_path / "ddp", OVERRIDES), nprocs=2, join=True)

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
