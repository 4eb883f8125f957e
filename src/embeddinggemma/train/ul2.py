"""UL2 adaptation of the encoder-decoder on our trainer (paper section 2: decoder -> encoder-decoder).

    embeddinggemma adapt ul2-gemma3-270m [KEY=VALUE ...]      -> train.output_dir/model (encoder-decoder)
    embeddinggemma train init-encoder-decoder model.init_from=runs/ul2-gemma3-270m/model

A Gemma 3 decoder (GGUF file or directory; by default Gemma 3 270M, optionally cut to `model.layers`
layers by the student rule of `train.student`) becomes a T5Gemma-style encoder-decoder
(`encdec.model`), trained on the UL2 mixture (`encdec.ul2`) over text from the pinned Debian sources:
the queries and positives of the training datasets' TRAIN splits (`scripts/build_training_data.py`),
so neither the local suite nor any dev split is seen. Texts are cut into chunks of `data.max_tokens`,
each chunk becomes one example of a denoiser drawn by weight, and examples are packed.

The loop is `train.trainer.Trainer` (resume, JSONL log, DDP through `torchrun`): this module only swaps
the forward/backward (summed token cross-entropy divided by the global target count, so summing the
ranks' gradients gives the global mean) and the model's file layout.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embeddinggemma.checkpoint import CheckpointInfo, read_checkpoint_info, resolve_checkpoint
from embeddinggemma.config import EmbeddingGemmaConfig
from embeddinggemma.encdec.decoder import load_decoder
from embeddinggemma.encdec.model import Gemma3EncoderDecoder, load_encoder_decoder, save_encoder_decoder
from embeddinggemma.encdec.ul2 import (
    UL2_MIXTURE,
    Denoiser,
    SpecialTokens,
    UL2Batch,
    chunk_tokens,
    make_example,
    pack_examples,
    ul2_loss,
    unused_token_ids,
)
from embeddinggemma.tokenizer import load_tokenizer
from embeddinggemma.train.data import load_dataset, read_examples
from embeddinggemma.train.recipes import OptimConfig, RecipeError, TrainConfig, load_recipe, recipe_to_dict
from embeddinggemma.train.student import select_layers
from embeddinggemma.train.trainer import Trainer, resolve_autocast

logger = logging.getLogger(__name__)

__all__ = [
    "UL2Loader",
    "UL2Recipe",
    "UL2Trainer",
    "adapt_recipe",
    "load_ul2_recipe",
    "special_tokens",
    "training_texts",
]


@dataclass(frozen=True)
class UL2ModelConfig:
    """The decoder to adapt and the tokenizer to read text with (Gemma 3's vocabulary)."""

    decoder: str | None = None  # a Gemma 3 .gguf file or `save_decoder` directory; null: Gemma 3 270M
    layers: int | None = None  # keep this many of the decoder's layers (train.student's rule); null: all
    tokenizer: str = "google/embeddinggemma-300m"  # a checkpoint with the same vocabulary (its tokenizer.json)
    freeze_embeddings: bool = False  # the 262k-entry table: 2/3 of the 270M's parameters
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class UL2DataConfig:
    """Text chunks -> UL2 examples, `batch_size` examples per global step."""

    texts: tuple[str, ...] = ()  # training dataset directories (TRAIN splits only: no suite, no dev split)
    max_tokens: int = 512  # chunk length in text tokens (before the mode token and EOS)
    min_tokens: int = 16  # shorter chunks are left out
    batch_size: int = 128  # examples per global batch (split over processes)
    denoisers: tuple[Denoiser, ...] = UL2_MIXTURE
    seed: int = 0
    # Softmax over the tokens of this text (+ specials) instead of all 262k: a CPU-scale shortcut for
    # shrunk runs, where the full projection is most of the work. Off for real adaptation.
    corpus_vocabulary: bool = False


@dataclass(frozen=True, kw_only=True)
class UL2Recipe:
    name: str
    description: str = ""
    model: UL2ModelConfig = field(default_factory=UL2ModelConfig)
    data: UL2DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig

    def __post_init__(self) -> None:
        checks = [
            (bool(self.data.texts), "data.texts is empty; name the training datasets whose text UL2 reads"),
            (self.data.batch_size >= 1, "data.batch_size must be >= 1"),
            (self.data.max_tokens >= self.data.min_tokens >= 2, "need data.max_tokens >= data.min_tokens >= 2"),
            (any(d.weight > 0 for d in self.data.denoisers), "data.denoisers needs a denoiser with weight > 0"),
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise RecipeError(message)


def load_ul2_recipe(path: str | Path, overrides=()) -> UL2Recipe:
    return load_recipe(path, overrides, schema=UL2Recipe)


def training_texts(directories: tuple[str, ...]) -> list[str]:
    """The distinct queries and positives of training datasets, in file order. Dev splits are refused:
    they are evaluation data."""
    texts: dict[str, None] = {}
    for directory in directories:
        spec = load_dataset(directory)
        if spec.split != "train":
            raise ValueError(f"{directory} is the {spec.split!r} split of {spec.name}; UL2 reads train splits only")
        for example in read_examples(spec.path):
            texts.setdefault(example.query)
            texts.setdefault(example.positive)
    return list(texts)


class UL2Loader:
    """Endless global batches of UL2 examples, deterministic from (seed, step) and resumable from the step.

    Every rank draws the same global batch and keeps its share (examples rank, rank + world, ...).
    """

    def __init__(
        self,
        chunks: list[list[int]],
        denoisers: tuple[Denoiser, ...],
        special: SpecialTokens,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(chunks) < batch_size:
            raise ValueError(f"{len(chunks)} text chunks cannot fill a batch of {batch_size} examples; add text")
        if batch_size < world_size:
            raise ValueError(f"data.batch_size {batch_size} is smaller than the {world_size} processes")
        self.chunks, self.denoisers, self.special = chunks, denoisers, special
        weights = np.array([d.weight for d in denoisers], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.step = 0

    def global_examples(self, step: int) -> list:
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(len(self.chunks), size=self.batch_size, replace=False)
        kinds = rng.choice(len(self.denoisers), size=self.batch_size, p=self.probabilities)
        pairs = zip(picks, kinds, strict=True)
        return [make_example(self.chunks[c], self.denoisers[k], self.special, rng) for c, k in pairs]

    def __iter__(self):
        return self

    def __next__(self) -> UL2Batch:
        examples = self.global_examples(self.step)[self.rank :: self.world_size]
        self.step += 1
        return pack_examples(examples, self.special)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint was written with data.seed={state['seed']}, the recipe says {self.seed}")
        self.step = int(state["step"])


class _NoLossModule(nn.Module):
    """The Trainer trains its loss module's parameters too; UL2's loss has none."""


class UL2Trainer(Trainer):
    """`Trainer` with UL2's forward/backward and the encoder-decoder's file layout."""

    def __init__(self, model: Gemma3EncoderDecoder, *args: Any, **kwargs: Any) -> None:
        gradient_checkpointing = kwargs.get("gradient_checkpointing", False)
        super().__init__(model, *args, **kwargs)
        model.decoder.gradient_checkpointing = gradient_checkpointing
        self.record: dict[str, Any] = {}
        self.vocabulary: torch.Tensor | None = None  # data.corpus_vocabulary

    def prepare(self, batch: UL2Batch) -> None:
        return None  # UL2 batches arrive tokenised

    def forward_backward(
        self, batch: UL2Batch, prepared: None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        local = batch.to(self.ctx.device)
        targets = self.ctx.sum_scalar(float(local.num_targets))
        device = self.ctx.device.type
        vocabulary = None if self.vocabulary is None else self.vocabulary.to(self.ctx.device)
        with torch.autocast(device, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            summed = ul2_loss(self.model, local, vocabulary=vocabulary)
        (summed / targets).backward()
        loss = self.ctx.sum_scalar(float(summed.detach())) / targets
        tokens = local.encoder.num_tokens + local.decoder.num_tokens
        return {"loss": torch.tensor(loss), "target_tokens": torch.tensor(targets)}, {
            "tokens": float(tokens),
            "texts": float(local.encoder.num_texts),
        }

    def save_model(self, directory: Path) -> None:
        save_encoder_decoder(self.model, directory, record=self.record)

    def load_model(self, directory: Path) -> nn.Module:
        return load_encoder_decoder(directory)


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """Mode tokens and sentinels from the tokenizer's <unusedN> tokens."""
    unused = unused_token_ids(tokenizer.vocabulary())
    return SpecialTokens.from_unused(unused, bos=tokenizer.bos_id, eos=tokenizer.eos_id, pad=tokenizer.pad_id)


def adapt_recipe(recipe: UL2Recipe, *, loader: Any = None, model: Gemma3EncoderDecoder | None = None) -> Path:
    """Run a UL2 recipe end to end (under ``torchrun`` on every rank); returns the encoder-decoder directory.

    ``model`` and ``loader`` replace the recipe's decoder and data (tests, custom pipelines).
    """
    from embeddinggemma.train.distributed import init_distributed

    ctx = init_distributed(recipe.train.device)
    resolve_autocast(recipe.train.precision, ctx.device)  # refuse float16 before loading anything
    torch.manual_seed(recipe.train.seed)
    random.seed(recipe.train.seed)
    source, _ = read_checkpoint_info(resolve_checkpoint(recipe.model.tokenizer))
    record: dict[str, Any] = {"decoder": recipe.model.decoder or "gemma3-270m (package)", "recipe": recipe.name}
    if model is None:
        count = recipe.model.layers
        kept: list[int] = []

        def select(layer_types: tuple[str, ...]) -> list[int]:
            kept.extend(range(len(layer_types)) if count is None else select_layers(layer_types, count))
            return kept

        lm = load_decoder(recipe.model.decoder, layers=select)
        record["decoder_layers"] = kept
        model = Gemma3EncoderDecoder.from_decoder(lm)
        del lm
    model = model.float().to(ctx.device)
    tokenizer = load_tokenizer(source.path, model.config, max_length=1 << 30)
    if loader is None:
        texts = training_texts(recipe.data.texts)
        ids = [row[1:-1] for row in tokenizer.encode(texts)]  # without BOS/EOS: the examples add their own
        chunks = chunk_tokens(ids, recipe.data.max_tokens, recipe.data.min_tokens)
        logger.info("UL2 text: %d texts, %d chunks, %d tokens", len(texts), len(chunks), sum(map(len, chunks)))
        record.update(texts=len(texts), chunks=len(chunks), tokens=sum(map(len, chunks)))
        loader = UL2Loader(
            chunks,
            recipe.data.denoisers,
            special_tokens(tokenizer),
            recipe.data.batch_size,
            seed=recipe.data.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
    vocabulary = None
    if recipe.data.corpus_vocabulary:
        if loader is None or not hasattr(loader, "chunks"):
            raise ValueError("data.corpus_vocabulary needs the recipe's own text loader")
        special = loader.special
        ids = {t for chunk in loader.chunks for t in chunk} | {special.eos, *special.sentinels}
        vocabulary = torch.tensor(sorted(ids), dtype=torch.long)
        record["softmax_vocabulary"] = len(ids)
        logger.info("UL2 softmax over the %d tokens of the text (data.corpus_vocabulary)", len(ids))
    info = CheckpointInfo(path=source.path, config=EmbeddingGemmaConfig(), prompts=source.prompts)
    trainer = UL2Trainer(
        model,
        info,
        tokenizer,
        _NoLossModule(),
        loader,
        optim=recipe.optim,
        train=recipe.train,
        ctx=ctx,
        freeze_embeddings=recipe.model.freeze_embeddings,
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        recipe_dict=recipe_to_dict(recipe),
    )
    trainer.record = record
    trainer.vocabulary = vocabulary
    return trainer.fit()
