"""Shared pieces of the trainer tests: the tiny model, synthetic batches and recipes.

A plain module (not a conftest) so that spawned DDP workers can import it by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.embedder import Embedder
from embeddinggemma.train.data import PromptedExample, TrainingBatch, collate
from embeddinggemma.train.recipes import load_recipe

# Words of the tiny test tokenizer's vocabulary (tests/conftest.py), so no text is all <unk>.
_TEXT = (
    "the red planet mars venus known which search result query task title text sentence code python function "
    "returns list string number file read write open close sort key value error line word first last big small"
)
WORDS = _TEXT.split()


def tiny_model(tiny_st_dir: Path):
    """(model, info, tokenizer) of the tiny checkpoint, float32 on CPU, max 32 tokens."""
    model, info = load_checkpoint(tiny_st_dir, dtype=torch.float32)
    tokenizer = Embedder.from_model(model, info, max_seq_length=32).tokenizer
    return model, info, tokenizer


def synthetic_batch(
    rows: int = 8, *, hard_negatives: int = 2, teacher_dim: int | None = None, seed: int = 0
) -> TrainingBatch:
    """A global batch with a varying number of hard negatives per row (0..H), duplicates and lengths."""
    g = torch.Generator().manual_seed(seed)

    def text(n: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))

    examples = []
    for i in range(rows):
        negatives = tuple(text(3 + k) for k in range(i % (hard_negatives + 1)))
        examples.append(PromptedExample(query=text(2 + i % 5), positive=text(4 + (i * 3) % 7), negatives=negatives))
    if rows >= 4:  # a duplicated positive exercises the false-negative mask
        examples[3] = dataclasses.replace(examples[3], positive=examples[1].positive)
    batch = collate(examples, dataset="synthetic", task="query", num_hard_negatives=hard_negatives)
    if teacher_dim is not None:
        batch.teacher = {
            "queries": torch.randn(rows, teacher_dim, generator=g),
            "positives": torch.randn(rows, teacher_dim, generator=g),
            "hard_negatives": torch.randn(rows, hard_negatives, teacher_dim, generator=g)
            * batch.hard_negative_mask[..., None],
        }
    return batch


class ListLoader:
    """Cycles through fixed batches; resumable like MixtureLoader."""

    def __init__(self, batches: list[TrainingBatch]) -> None:
        self.batches = batches
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> TrainingBatch:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def smoke_recipe(tiny_st_dir: Path, output_dir: Path, *overrides: str):
    """The shipped smoke-tiny recipe on the tiny checkpoint, writing to output_dir."""
    return load_recipe("smoke-tiny", [f"model.checkpoint={tiny_st_dir}", f"train.output_dir={output_dir}", *overrides])
