"""Helpers shared by the encdec tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import dataclasses

import torch

from embeddinggemma.config import EmbeddingGemmaConfig, Gemma3TextConfig


def tiny_causal_config(**overrides) -> Gemma3TextConfig:
    """The tiny encoder's odd sizes (EmbeddingGemmaConfig.tiny), causal, a left window shorter than the inputs."""
    base = {"sliding_window": 5, "use_bidirectional_attention": False}
    return dataclasses.replace(EmbeddingGemmaConfig.tiny().backbone, **(base | overrides))


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere, norms included (zero norms would hide a mis-mapped gain)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if "norm" in name else 0.15))


# Words of the tiny test tokenizer (tests/conftest.py); UL2 text is built from them.
WORDS = [
    "the",
    "red",
    "planet",
    "mars",
    "venus",
    "known",
    "which",
    "search",
    "result",
    "query",
    "task",
    "title",
    "text",
    "sentence",
    "code",
    "python",
    "function",
    "returns",
    "list",
    "string",
    "number",
    "file",
    "read",
    "write",
    "open",
    "close",
    "sort",
    "key",
    "value",
    "error",
    "line",
    "word",
    "first",
    "last",
    "big",
    "small",
]


def ul2_checkpoint(tiny_st_dir, directory):
    """A copy of the tiny checkpoint whose tokenizer also knows <unused0>..<unused8> (ids 90..98): UL2's
    mode tokens and sentinels."""
    import json
    import shutil

    shutil.copytree(tiny_st_dir, directory)
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    for k in range(9):
        tokenizer["model"]["vocab"][f"<unused{k}>"] = 90 + k
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    return directory


def ul2_texts(directory, count: int = 40, seed: int = 0):
    """A train-split dataset of random sentences over the tiny vocabulary."""
    from embeddinggemma.train.data import TrainingExample, write_dataset

    g = torch.Generator().manual_seed(seed)

    def sentence(n: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))

    examples = [TrainingExample(query=sentence(12 + i % 7), positive=sentence(20 + i % 11)) for i in range(count)]
    return write_dataset(directory, examples, name="tiny-text", task="query").directory


def ul2_worker(rank: int, world_size: int, port: int, recipe_args: tuple) -> None:
    """One torchrun-like rank running adapt_recipe (importable by name from spawned processes)."""
    import os

    import torch.distributed as dist

    from embeddinggemma.train.ul2 import adapt_recipe, load_ul2_recipe

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    try:
        adapt_recipe(load_ul2_recipe(*recipe_args))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
