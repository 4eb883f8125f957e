"""The training loop of the EmbeddingGemma recipe (paper section 2; docs section 5).

One step: a GLOBAL single-dataset batch from the mixture loader -> embeddings of its queries, positives
and hard negatives (``gradcache.forward_backward``: GradCache micro-batches, data parallel over ranks)
-> the recipe loss ``sum_d (L_C^d + L_S^d) + L_D`` -> gradients summed over ranks -> clipping -> AdamW ->
learning-rate schedule. Teacher embeddings come precomputed in the batch; no teacher model runs here.

Everything a run needs to continue is saved (model weights in the sentence-transformers layout,
optimizer, scheduler, loss-module parameters, RNG states, data-loader position, step), so a resumed
run reproduces the uninterrupted one step for step. The log is a JSONL file with one record per logged
step (every named loss term, diagnostics, learning rate, gradient norm, throughput) and per evaluation.

Precision: weights and optimizer state stay float32; ``bfloat16`` autocast runs the forward on GPU.
float16 is refused: Gemma 3 activations reach ~8e5 and overflow it (docs section 7).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embeddinggemma.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from embeddinggemma.config import refuse_float16
from embeddinggemma.embedder import Embedder
from embeddinggemma.eval.data import load_task
from embeddinggemma.eval.runner import evaluate_suite, suite_tasks
from embeddinggemma.model import EmbeddingGemma
from embeddinggemma.prompts import PromptTable
from embeddinggemma.tokenizer import TextTokenizer, load_tokenizer
from embeddinggemma.train.data import load_dataset
from embeddinggemma.train.distributed import DistributedContext, init_distributed
from embeddinggemma.train.gradcache import forward_backward, prepare_batch, resolve_packing
from embeddinggemma.train.loader import MixtureLoader
from embeddinggemma.train.losses import EmbeddingGemmaLoss
from embeddinggemma.train.recipes import DataConfig, EvalConfig, OptimConfig, Recipe, TrainConfig, recipe_to_dict
from embeddinggemma.train.student import student_from_model
from embeddinggemma.train.synthetic import vocabulary_words, write_synthetic_dataset
from embeddinggemma.train.teacher import TeacherCache

logger = logging.getLogger(__name__)

__all__ = ["LOG_FILE", "Trainer", "WarmupDecay", "build_loader", "build_optimizer", "resolve_autocast", "train_recipe"]

LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.pt"


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA for "auto", none (fp32) on CPU; "float16" is refused."""
    refuse_float16(precision, "precision")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision in ("bfloat16", "bf16"):
        return torch.bfloat16
    if precision in ("float32", "fp32"):
        return None
    raise ValueError(f"unknown precision {precision!r}; use auto, bfloat16 or float32")


def build_optimizer(
    model: nn.Module, loss_fn: nn.Module, config: OptimConfig, *, freeze_embeddings: bool = False
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases and the embedding table are not decayed
    (decaying RMSNorm's zero-centred gains or rarely-seen token rows pulls them toward a meaningless 0)."""
    if freeze_embeddings:
        # The 262k x 768 table is 2/3 of the parameters; freezing it saves its gradient and Adam state.
        model.encoder.embed_tokens.weight.requires_grad_(False)
    decay, no_decay = [], []
    for module in (model, loss_fn):
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "embed_tokens" in name or "norm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # on CUDA one fused kernel updates every tensor (the foreach default launches several per step)
    fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)


@dataclass
class WarmupDecay:
    """LR multiplier: linear warm-up from 0 over ``warmup`` steps, then cosine/linear decay to ``floor``
    at ``total`` steps (or constant). A callable object, not a lambda, so the scheduler can be saved."""

    warmup: int
    total: int
    schedule: str = "cosine"
    floor: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1.0 - progress
        return self.floor + (1.0 - self.floor) * shape


class Trainer:
    """Runs ``train.steps`` optimizer steps of the recipe on ``loader``'s global batches.

    Args:
        model: float32 ``EmbeddingGemma`` on ``ctx.device`` (made trainable here).
        info: the checkpoint metadata (tokenizer files and prompts are copied into saved checkpoints).
        tokenizer: tokenizer with the training ``max_seq_length``.
        loss_fn: ``EmbeddingGemmaLoss`` (its own parameters, if any, are trained too).
        loader: iterator of ``TrainingBatch`` with ``state_dict()`` / ``load_state_dict()``.
        optim, train, eval: the recipe sections.
        ctx: distributed context (default: one process on the model's device).
        freeze_embeddings, gradient_checkpointing: model options from the recipe.
        recipe_dict: the resolved recipe, written beside the log for the record.
    """

    def __init__(
        self,
        model: EmbeddingGemma,
        info: CheckpointInfo,
        tokenizer: TextTokenizer,
        loss_fn: nn.Module,
        loader: Any,
        *,
        optim: OptimConfig,
        train: TrainConfig,
        eval: EvalConfig | None = None,
        ctx: DistributedContext | None = None,
        freeze_embeddings: bool = False,
        gradient_checkpointing: bool = False,
        recipe_dict: dict[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx or DistributedContext(device=model.device)
        self.model, self.info, self.tokenizer, self.loss_fn, self.loader = model, info, tokenizer, loss_fn, loader
        self.train_cfg, self.optim_cfg, self.eval_cfg = train, optim, eval or EvalConfig()
        if model.dtype != torch.float32:
            raise ValueError(f"train float32 master weights (got {model.dtype}); precision sets the autocast dtype")
        self.autocast = resolve_autocast(train.precision, self.ctx.device)
        self.packing = resolve_packing(train.packing, self.ctx.device, self.autocast)
        model.requires_grad_(True).train()
        model.encoder.gradient_checkpointing = gradient_checkpointing
        self.optimizer = build_optimizer(model, loss_fn, optim, freeze_embeddings=freeze_embeddings)
        self.schedule = WarmupDecay(optim.warmup_steps, train.steps, optim.schedule, optim.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.model_params = [p for p in model.parameters() if p.requires_grad]
        self.loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
        self.output_dir = Path(train.output_dir)
        self.step = 0
        self.recipe_dict = recipe_dict
        self.eval_tasks = _expand_tasks(self.eval_cfg.tasks)
        self._window: dict[str, list[float]] = {}
        self._window_start = time.perf_counter()
        self._loader_state: dict[str, Any] | None = None  # the loader's state after the batch a save is due for

    # -- one step ----------------------------------------------------------------------------------

    def train_step(self, batch: Any, prepared: Any = None) -> dict[str, float]:
        """One optimizer step on one global batch; returns the scalar terms and statistics. `prepared`:
        `self.prepare(batch)` when it already ran (`train_steps` runs it a step ahead)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms, stats = self.forward_backward(batch, prepared)
        # every scalar term in one copy to the host: a float() each made ~40 waits on the GPU a step
        scalar_names = [k for k, v in terms.items() if v.numel() == 1]
        device = terms["loss"].device  # (a trainer may keep some terms on the CPU: UL2's are)
        values = torch.stack([terms[k].detach().reshape(()).to(device, torch.float32) for k in scalar_names]).tolist()
        out = dict(zip(scalar_names, values, strict=True))
        loss = out["loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {self.step + 1} (dataset {batch.dataset!r}); lower optim.lr, check the "
                "data, or resume from the last checkpoint"
            )
        self.ctx.reduce_gradients(self.model_params, self.loss_params)
        max_norm = self.optim_cfg.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model_params + self.loss_params, max_norm if max_norm is not None else math.inf
        )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        out.update(lr=lr, grad_norm=float(grad_norm))
        out["tokens"] = self.ctx.sum_scalar(stats["tokens"])
        out["texts"] = self.ctx.sum_scalar(stats["texts"])
        return out

    def train_steps(
        self, batches: Iterable[Any], count: int, *, saves_after: Callable[[int], bool] = lambda step: False
    ) -> Iterator[tuple[Any, dict[str, float]]]:
        """`train_step` on the next `count` batches, yielding (batch, its statistics). Each next batch is
        drawn and prepared (tokenised) on a host thread while the device runs the step before it, so the
        device does not wait for the host between steps. The loader is then one batch ahead: its state
        after the batches of the steps for which `saves_after(step)` holds is kept for `save_checkpoint`."""
        iterator, first, last = iter(batches), self.step + 1, self.step + count
        has_state = hasattr(self.loader, "state_dict")

        def draw(step: int) -> tuple[Any, Any, dict[str, Any] | None] | None:
            batch = next(iterator, None)
            if batch is None:
                return None
            state = self.loader.state_dict() if has_state and saves_after(step) else None
            return batch, self.prepare(batch), state

        with ThreadPoolExecutor(1, thread_name_prefix="embeddinggemma-next-batch") as pool:
            pending = pool.submit(draw, first) if count > 0 else None
            for step in range(first, last + 1):
                drawn = pending.result()
                if drawn is None:
                    raise ValueError(f"the data loader ran out after {self.step} steps of {last}")
                pending = pool.submit(draw, step + 1) if step < last else None
                batch, prepared, loader_state = drawn
                stats = self.train_step(batch, prepared)
                self._loader_state = loader_state
                yield batch, stats

    def prepare(self, batch: Any) -> Any:
        """The host work of a step that needs neither the model nor the device (tokenising this rank's
        texts); `train_steps` runs it a step ahead on a thread. Other objectives return None."""
        return prepare_batch(batch, self.tokenizer, self.ctx)

    def forward_backward(self, batch: Any, prepared: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms (scalars; "loss" is what was back-propagated) and token/text counts of this rank's
        share of `batch`, with the gradients accumulated into the parameters; `prepared` is what `prepare`
        returned for it. Other objectives (the UL2 adaptation, `train.ul2`) override both; the rest of the
        step is shared."""
        return forward_backward(
            self.model,
            self.loss_fn,
            batch,
            self.tokenizer,
            ctx=self.ctx,
            gradient_cache=self.train_cfg.gradient_cache,
            micro_batch_tokens=self.train_cfg.micro_batch_tokens,
            autocast_dtype=self.autocast,
            packing=self.packing,
            prepared=prepared,
        )

    def save_model(self, directory: Path) -> None:
        """Write the model in its loadable layout (here: sentence-transformers; overridden for other models)."""
        save_checkpoint(self.model, directory, tokenizer_dir=self.info.path, prompts=self.info.prompts)

    def load_model(self, directory: Path) -> nn.Module:
        """Read back what `save_model` wrote (float32, CPU)."""
        return load_checkpoint(directory, dtype=torch.float32)[0]

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train to ``train.steps`` (resuming when a checkpoint exists); returns the final model directory."""
        if self.ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()
        latest = self.latest_checkpoint() if self.train_cfg.resume else None
        if latest is None and self.checkpoints():
            raise ValueError(
                f"{self.output_dir} already holds checkpoints; set train.resume=true to continue, or use a new "
                "train.output_dir"
            )
        if latest is not None:
            self.load(latest)
        self._start_log(resumed=latest is not None)
        total, every = self.train_cfg.steps, self.train_cfg.save_every
        saves_after = lambda step: step == total or bool(every and step % every == 0)  # noqa: E731
        for batch, stats in self.train_steps(self.loader, total - self.step, saves_after=saves_after):
            self._record(stats, batch.dataset)
            if self.step % self.train_cfg.log_every == 0 or self.step == total:
                self._flush_log()
            if saves_after(self.step) and self.step < total:  # the last step's save follows the loop
                self.save_checkpoint()
            if self.eval_tasks and self.eval_cfg.every and self.step % self.eval_cfg.every == 0:
                self.evaluate()
        if self.eval_tasks and (not self.eval_cfg.every or total % self.eval_cfg.every):
            self.evaluate()
        final = self.output_dir / "model"
        if self.ctx.is_main:
            if final.exists():
                shutil.rmtree(final)
            self.save_model(final)
            logger.info("final model written to %s", final)
        self.save_checkpoint()
        self._loader_state = None
        return final

    # -- logging -----------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.output_dir / LOG_FILE

    def _write_log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with self.log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")

    def _start_log(self, *, resumed: bool) -> None:
        if not self.ctx.is_main:
            return
        kept = []
        if resumed and self.log_path.exists():  # drop records from after the checkpoint: they will be redone
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= self.step:
                    kept.append(line)
        self.log_path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        if self.recipe_dict is not None:
            (self.output_dir / "recipe.json").write_text(json.dumps(self.recipe_dict, indent=2) + "\n")
        event = "resume" if resumed else "start"
        self._write_log({"event": event, "step": self.step, "world_size": self.ctx.world_size})
        self._window_start = time.perf_counter()

    def _record(self, values: dict[str, float], dataset: str) -> None:
        for key, value in values.items():
            self._window.setdefault(key, []).append(value)
        self._window.setdefault(f"batches/{dataset}", []).append(1.0)

    def _flush_log(self) -> None:
        if not self._window:
            return
        seconds = time.perf_counter() - self._window_start
        sums = {k: v for k, v in self._window.items() if k in ("tokens", "texts") or k.startswith("batches/")}
        record: dict[str, Any] = {"event": "train", "step": self.step, "seconds": round(seconds, 3)}
        record.update({k: float(np.mean(v)) for k, v in self._window.items() if k not in sums})
        record["lr"] = self._window["lr"][-1]
        record["datasets"] = {
            k.removeprefix("batches/"): int(sum(v)) for k, v in sums.items() if k.startswith("batches/")
        }
        record["tokens"], record["texts"] = int(sum(self._window["tokens"])), int(sum(self._window["texts"]))
        record["tokens_per_s"] = sum(self._window["tokens"]) / max(seconds, 1e-9)
        record["texts_per_s"] = sum(self._window["texts"]) / max(seconds, 1e-9)
        self._write_log(record)
        if self.ctx.is_main:
            logger.info(
                "step %d/%d  loss %.4f  lr %.2e  grad %.3f  %.0f tok/s",
                self.step, self.train_cfg.steps, record["loss"], record["lr"], record["grad_norm"],
                record["tokens_per_s"],
            )  # fmt: skip
        self._window = {}
        self._window_start = time.perf_counter()

    # -- evaluation --------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        """Score the current model on ``eval.tasks`` (rank 0; the others wait) and log the result."""
        report = None
        if self.ctx.is_main:
            self.model.eval()
            # no tokenizer worker processes forked from a training process (its cores feed the training)
            embedder = Embedder(
                self.model, self.tokenizer, PromptTable(self.info.prompts), source=self.info.path, tokenizer_workers=0
            )
            autocast = torch.autocast(self.ctx.device.type, dtype=self.autocast, enabled=self.autocast is not None)
            with autocast:
                report = evaluate_suite(
                    embedder,
                    self.eval_tasks,
                    dims=self.eval_cfg.dims,
                    batch_size=self.eval_cfg.batch_size,
                    show_progress=False,
                )
            self.model.train()
            first = str(report["dims"][0])
            record = {
                "event": "eval",
                "step": self.step,
                "mean_main_score": report["mean_main_score"],
                "main_score": {name: r["dims"][first]["scores"]["main_score"] for name, r in report["tasks"].items()},
            }
            self._write_log(record)
            logger.info("eval at step %d: mean main score %s", self.step, report["mean_main_score"])
        self.ctx.barrier()
        return report

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete resumable checkpoints, oldest first (a directory is complete once renamed)."""
        root = self.output_dir / "checkpoints"
        return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` (model, optimizer, scheduler, loader, RNG, step), atomically."""
        final = self.output_dir / "checkpoints" / f"step-{self.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.save_model(tmp / "model")
            state = {
                "step": self.step,
                "world_size": self.ctx.world_size,
                "optimizer": self.optimizer.state_dict(),
                # The schedule's shape comes from the recipe (so a run can be extended); only the position is saved.
                "scheduler": self.scheduler.state_dict() | {"lr_lambdas": [None] * len(self.optimizer.param_groups)},
                "loss_fn": self.loss_fn.state_dict(),
                "loader": self._loader_state if self._loader_state is not None else self.loader.state_dict(),
            }
            torch.save(state, tmp / STATE_FILE)
        self.ctx.barrier()
        torch.save(_rng_state(), tmp / f"rng-rank{self.ctx.rank}.pt")
        self.ctx.barrier()
        if self.ctx.is_main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.checkpoints()[: -self.train_cfg.keep_checkpoints]:
                shutil.rmtree(old)
            logger.info("checkpoint %s", final)
        self.ctx.barrier()
        return final

    def load(self, directory: str | Path) -> None:
        """Restore everything ``save_checkpoint`` wrote; the next step is the one after it."""
        directory = Path(directory)
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        if state["world_size"] != self.ctx.world_size:
            logger.warning(
                "resuming a %d-process run on %d processes: the global batch is the same, the RNG streams are not",
                state["world_size"], self.ctx.world_size,
            )  # fmt: skip
        saved = self.load_model(directory / "model")
        with torch.no_grad():
            for (name, param), (saved_name, value) in zip(
                self.model.state_dict().items(), saved.state_dict().items(), strict=True
            ):
                if name != saved_name or param.shape != value.shape:
                    raise ValueError(f"checkpoint {directory} does not match the model ({name} vs {saved_name})")
                param.copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        # Only the schedule's position is restored; its base lr and shape come from the CURRENT recipe (same
        # recipe: the same value, bit for bit; a longer or re-tuned run: its own schedule). LambdaLR's
        # constructor resumes at a position: it steps once from last_epoch, to the saved one.
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.optim_cfg.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, self.schedule, last_epoch=state["scheduler"]["last_epoch"] - 1
        )
        self.loss_fn.load_state_dict(state["loss_fn"])
        self.loader.load_state_dict(state["loader"])
        self._loader_state = None
        rng_file = directory / f"rng-rank{self.ctx.rank}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=True))
        self.step = int(state["step"])
        logger.info("resumed from %s at step %d", directory, self.step)


def _rng_state() -> dict[str, Any]:
    """Global RNGs (the model has no dropout today; a recipe that adds randomness stays resumable). The
    data loader keeps its own generators in its state_dict; numpy's legacy global RNG is not used."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def _expand_tasks(entries: Iterable[str]) -> list[Any]:
    """Task directories as given; a suite directory (manifest.json or task subdirectories) expands."""
    out: list[Any] = []
    for entry in entries:
        path = Path(entry)
        if (path / "task.json").is_file():
            out.append(load_task(path))
        elif path.is_dir():
            out.extend(suite_tasks(path))
        else:
            raise FileNotFoundError(f"eval task or suite {path} does not exist; fix eval.tasks")
    return out


# -- from a recipe ---------------------------------------------------------------------------------


def build_loader(
    data: DataConfig, *, tokenizer_file: Path, work_dir: Path, ctx: DistributedContext | None = None
) -> Any:
    """The recipe's ``MixtureLoader``. With ``data.synthetic``, over a synthetic dataset that rank 0 writes
    to ``work_dir`` from the tokenizer's vocabulary (deterministic from ``data.seed``)."""
    if data.synthetic:
        if ctx is None or ctx.is_main:
            write_synthetic_dataset(
                work_dir,
                vocabulary_words(tokenizer_file),
                num_examples=max(256, 4 * data.batch_size),
                num_negatives=data.num_hard_negatives,
                seed=data.seed,
            )
        if ctx is not None:
            ctx.barrier()
        spec = load_dataset(work_dir)
        return MixtureLoader([spec], [1.0], data.batch_size, seed=data.seed, num_hard_negatives=data.num_hard_negatives)
    specs = []
    for name, path in data.datasets.items():
        spec = load_dataset(path)
        if spec.name != name:
            raise ValueError(f"data.datasets.{name}: {path} holds dataset {spec.name!r}; use that name as the key")
        specs.append(spec)
    rates = data.rates or {name: 1.0 for name in data.datasets}
    missing = sorted(set(data.datasets) - set(rates))
    if missing:
        raise ValueError(f"data.rates has no rate for {missing}; give every dataset a rate (0 leaves it out)")
    teacher = None
    if data.teacher is not None:
        teacher = TeacherCache(data.teacher)
    return MixtureLoader(
        specs,
        {name: rates[name] for name in data.datasets},
        data.batch_size,
        seed=data.seed,
        num_hard_negatives=data.num_hard_negatives,
        teacher=teacher,
    )


def train_recipe(recipe: Recipe, *, loader: Any = None) -> Path:
    """Run a recipe end to end (under ``torchrun`` on every rank); returns the final model directory.

    ``loader`` replaces the recipe's data (tests, custom pipelines).
    """
    ctx = init_distributed(recipe.train.device)
    # refuse a bad precision or packing before loading anything
    resolve_packing(recipe.train.packing, ctx.device, resolve_autocast(recipe.train.precision, ctx.device))
    torch.manual_seed(recipe.train.seed)
    random.seed(recipe.train.seed)
    if recipe.model.init == "checkpoint":
        model, info = load_checkpoint(recipe.model.checkpoint, dtype=torch.float32, device=ctx.device)
    else:  # a new model from a Gemma 3 decoder; the checkpoint lends its tokenizer and prompts
        from embeddinggemma.checkpoint import read_checkpoint_info, resolve_checkpoint
        from embeddinggemma.encdec.init import init_embedding_model

        source, _ = read_checkpoint_info(resolve_checkpoint(recipe.model.checkpoint))
        model = init_embedding_model(
            recipe.model.init, recipe.model.init_from, max_seq_length=source.config.max_seq_length
        ).to(ctx.device)
        info = CheckpointInfo(path=source.path, config=model.config, prompts=source.prompts)
    if recipe.model.student_layers is not None:
        model, kept = student_from_model(model, recipe.model.student_layers)
        info = CheckpointInfo(path=info.path, config=model.config, prompts=info.prompts)
        logger.info("student: kept teacher layers %s", kept)
    if recipe.qat.scheme is not None:  # fake-quantized forward passes; the same parameters are trained
        from embeddinggemma.quant.qat import prepare_qat_

        prepare_qat_(model, recipe.qat.scheme)
        logger.info("quantization-aware training: %s", recipe.qat.scheme)
    limit = min(recipe.model.max_seq_length, info.config.max_seq_length)
    tokenizer = load_tokenizer(info.path, info.config.backbone, max_length=limit)
    loss_fn = EmbeddingGemmaLoss(recipe.loss).to(ctx.device)
    output_dir = Path(recipe.train.output_dir)
    if loader is None:
        loader = build_loader(
            recipe.data, tokenizer_file=info.path / "tokenizer.json", work_dir=output_dir / "synthetic-data", ctx=ctx
        )
    trainer = Trainer(
        model,
        info,
        tokenizer,
        loss_fn,
        loader,
        optim=recipe.optim,
        train=recipe.train,
        eval=recipe.eval,
        ctx=ctx,
        freeze_embeddings=recipe.model.freeze_embeddings,
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        recipe_dict=recipe_to_dict(recipe),
    )
    return trainer.fit()
