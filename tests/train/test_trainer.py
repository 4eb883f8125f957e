"""The training loop: an overfit smoke run, exact resume, optimiser groups, schedule, precision."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trainer_helpers import ListLoader, smoke_recipe, synthetic_batch, tiny_model

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.train.losses import EmbeddingGemmaLoss, LossConfig
from embeddinggemma.train.recipes import OptimConfig, TrainConfig
from embeddinggemma.train.trainer import (
    Trainer,
    WarmupDecay,
    build_loader,
    build_optimizer,
    resolve_autocast,
    train_recipe,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _trainer(tiny_st_dir, tmp_path, loader, *, steps=4, lr=1e-3, **train_kwargs):
    model, info, tokenizer = tiny_model(tiny_st_dir)
    loss_fn = EmbeddingGemmaLoss(LossConfig(matryoshka_dims=(40, 16), distill_weight=0.0))
    return Trainer(
        model,
        info,
        tokenizer,
        loss_fn,
        loader,
        optim=OptimConfig(lr=lr, warmup_steps=0, schedule="constant"),
        train=TrainConfig(steps=steps, output_dir=str(tmp_path), micro_batch_tokens=48, log_every=1, **train_kwargs),
    )


def test_overfit_batch_losses_are_finite_named_and_fall(tiny_st_dir, tmp_path):
    trainer = _trainer(tiny_st_dir, tmp_path, ListLoader([synthetic_batch(8, hard_negatives=1)]), steps=12)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    named = {k for k in steps[0] if k.endswith("_loss") or "_loss@" in k}
    assert named == {"contrastive_loss@40", "contrastive_loss@16", "spread_out_loss@40", "spread_out_loss@16"}
    for record in steps:
        assert all(math.isfinite(record[k]) for k in [*named, "loss", "grad_norm"])
    assert steps[-1]["contrastive_loss@40"] < 0.5 * steps[0]["contrastive_loss@40"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert steps[-1]["accuracy@40"] == 1.0
    # The final model is a loadable checkpoint that differs from the start.
    trained, _ = load_checkpoint(tmp_path / "model")
    start, _ = load_checkpoint(tiny_st_dir)
    assert not torch.equal(trained.dense[0].weight, start.dense[0].weight)


class _InterruptError(Exception):
    pass


class _InterruptingLoader:
    """Wraps a loader and raises after ``stop_after`` batches, like a killed job."""

    def __init__(self, loader, stop_after):
        self.loader, self.stop_after, self.count = loader, stop_after, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.count == self.stop_after:
            raise _InterruptError
        self.count += 1
        return next(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def test_trainer_resume_is_bit_exact(tiny_st_dir, tmp_path):
    """The trainer's own state (weights, AdamW, schedule, RNG, step) on a trivially resumable loader."""
    batches = [synthetic_batch(8, hard_negatives=2, seed=s) for s in range(4)]
    kwargs = {"steps": 5, "save_every": 2}
    straight = _trainer(tiny_st_dir, tmp_path / "a", ListLoader(batches), **kwargs)
    straight.fit()
    with pytest.raises(_InterruptError):
        _trainer(tiny_st_dir, tmp_path / "b", _InterruptingLoader(ListLoader(batches), stop_after=3), **kwargs).fit()
    resumed = _trainer(tiny_st_dir, tmp_path / "b", ListLoader(batches), **kwargs)
    resumed.fit()
    assert resumed.step == 5
    for (name, x), (_, y) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    for a, b in zip(straight.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and torch.equal(a["step"], b["step"])


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tiny_st_dir, tmp_path):
    """End to end with the real MixtureLoader on synthetic data: 5 steps straight vs. 3 steps, a crash after
    the 4th, then resume from the step-3 checkpoint."""
    overrides = ("train.steps=5", "train.save_every=3", "optim.warmup_steps=2", "data.num_hard_negatives=2")
    straight = smoke_recipe(tiny_st_dir, tmp_path / "straight", *overrides)
    final = train_recipe(straight)

    resumed = smoke_recipe(tiny_st_dir, tmp_path / "resumed", *overrides)

    def loader():
        return build_loader(
            resumed.data, tokenizer_file=tiny_st_dir / "tokenizer.json", work_dir=tmp_path / "resumed" / "data"
        )

    with pytest.raises(_InterruptError):
        train_recipe(resumed, loader=_InterruptingLoader(loader(), stop_after=4))
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-0000003"]
    final_resumed = train_recipe(resumed, loader=loader())

    a, _ = load_checkpoint(final)
    b, _ = load_checkpoint(final_resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # The log of the resumed run has each step once, with the same losses.
    logs = [
        [json.loads(x) for x in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        for run in ("straight", "resumed")
    ]
    losses = [{r["step"]: r["loss"] for r in log if r["event"] == "train"} for log in logs]
    assert losses[0] == losses[1]
    assert [r["event"] for r in logs[1]].count("resume") == 1


def test_a_finished_run_can_be_extended_with_more_steps(tiny_st_dir, tmp_path):
    """Resuming with a larger train.steps continues the step count and stretches the schedule."""
    train_recipe(smoke_recipe(tiny_st_dir, tmp_path, "train.steps=2"))
    train_recipe(smoke_recipe(tiny_st_dir, tmp_path, "train.steps=4"))
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if r["event"] == "train"}
    assert sorted(lrs) == [1, 2, 3, 4]
    schedule = WarmupDecay(warmup=1, total=4, schedule="cosine")
    assert lrs[3] == pytest.approx(1e-3 * schedule(2)) and lrs[4] == pytest.approx(1e-3 * schedule(3))


def test_existing_checkpoints_without_resume_are_refused(tiny_st_dir, tmp_path):
    train_recipe(smoke_recipe(tiny_st_dir, tmp_path, "train.steps=1"))
    with pytest.raises(ValueError, match=r"train\.resume"):
        train_recipe(smoke_recipe(tiny_st_dir, tmp_path, "train.steps=2", "train.resume=false"))


def test_optimizer_groups_and_frozen_embeddings(tiny_st_dir):
    model, _, _ = tiny_model(tiny_st_dir)
    model.requires_grad_(True)
    loss_fn = EmbeddingGemmaLoss(LossConfig(distill_alignment="projection", student_dim=40, teacher_dim=24))
    optimizer = build_optimizer(model, loss_fn, OptimConfig(weight_decay=0.1), freeze_embeddings=True)
    named = [*model.named_parameters(), *(("loss." + n, p) for n, p in loss_fn.named_parameters())]
    names = {id(p): n for n, p in named}
    decayed = {names[id(p)] for p in optimizer.param_groups[0]["params"]}
    plain = {names[id(p)] for p in optimizer.param_groups[1]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert "encoder.embed_tokens.weight" not in decayed | plain  # frozen
    assert not model.encoder.embed_tokens.weight.requires_grad
    assert all("norm" in n for n in plain) and plain
    assert {"dense.0.weight", "encoder.layers.0.mlp.up_proj.weight", "loss.projection.linear.weight"} <= decayed
    assert not any("norm" in n for n in decayed)


def test_schedule_warmup_then_decay():
    cosine = WarmupDecay(warmup=4, total=12, schedule="cosine", floor=0.1)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == pytest.approx(1.0) and cosine(8) == pytest.approx(0.55) and cosine(12) == pytest.approx(0.1)
    linear = WarmupDecay(warmup=0, total=10, schedule="linear")
    assert linear(0) == 1.0 and linear(5) == pytest.approx(0.5) and linear(10) == 0.0 and linear(20) == 0.0
    assert WarmupDecay(warmup=2, total=10, schedule="constant")(9) == 1.0


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_autocast("auto", cpu) is None
    assert resolve_autocast("auto", cuda) is torch.bfloat16
    assert resolve_autocast("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="float16 overflows"):
        resolve_autocast("float16", cuda)


def test_non_finite_loss_stops_with_the_step_and_dataset(tiny_st_dir, tmp_path):
    trainer = _trainer(tiny_st_dir, tmp_path, ListLoader([synthetic_batch(4, hard_negatives=0)]), steps=2)
    with torch.no_grad():
        trainer.model.dense[1].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"step 1 .*synthetic"):
        trainer.fit()


def test_batch_that_does_not_split_over_ranks_is_refused():
    from embeddinggemma.train.distributed import DistributedContext

    with pytest.raises(ValueError, match="multiple of the number of processes"):
        DistributedContext(rank=0, world_size=3).row_range(8)
    assert DistributedContext(rank=1, world_size=2).row_range(8) == (4, 8)


def test_the_next_batch_is_tokenised_while_a_step_runs(tiny_st_dir, tmp_path):
    """`fit` draws and tokenises batch k + 1 on a host thread during step k (the GPU then never waits for
    the host between steps): no step tokenises on the main thread."""
    import threading

    batches = [synthetic_batch(4, hard_negatives=1, seed=seed) for seed in range(3)]
    trainer = _trainer(tiny_st_dir, tmp_path, ListLoader(batches), steps=3)
    second_tokenised = threading.Event()
    tokenised_on = []
    encode_counted, step = trainer.tokenizer.encode_counted, trainer.train_step

    def recording_encode(texts, **kwargs):
        tokenised_on.append(threading.current_thread() is threading.main_thread())
        if len(tokenised_on) == 2:
            second_tokenised.set()
        return encode_counted(texts, **kwargs)

    def recording_step(batch, prepared=None):
        if batch is batches[0]:
            assert second_tokenised.wait(30), "batch 2 was not tokenised while step 1 ran"
        return step(batch, prepared)

    trainer.tokenizer.encode_counted, trainer.train_step = recording_encode, recording_step
    trainer.fit()
    assert tokenised_on == [False, False, False], "a batch was tokenised on the main thread"
