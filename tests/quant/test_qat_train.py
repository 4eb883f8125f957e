"""QAT through the trainer: the recipe's `qat.scheme` trains the tiny block model through fake
quantization and saves an ordinary checkpoint whose rounding is the trained one."""

from __future__ import annotations

import json

import pytest
import torch

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.quant import qat
from embeddinggemma.train.recipes import RecipeError, load_recipe
from embeddinggemma.train.trainer import train_recipe


def _recipe(block_dir, output_dir, *overrides):
    return load_recipe(
        "smoke-tiny",
        [
            f"model.checkpoint={block_dir}",
            f"train.output_dir={output_dir}",
            "loss.matryoshka_dims=[96,32]",
            "train.steps=3",
            "train.save_every=0",
            *overrides,
        ],
    )


def test_qat_recipe_trains_through_the_rounding(block_dir, tmp_path, single_thread):
    final = train_recipe(_recipe(block_dir, tmp_path / "run", "qat.scheme=int4"))
    trained, _ = load_checkpoint(final, dtype=torch.float32, device="cpu")
    start, _ = load_checkpoint(block_dir, dtype=torch.float32, device="cpu")
    assert isinstance(trained.encoder.layers[0].mlp.up_proj, torch.nn.Linear), "saved as an ordinary checkpoint"
    moved = trained.encoder.layers[0].mlp.up_proj.weight - start.encoder.layers[0].mlp.up_proj.weight
    assert moved.abs().max() > 0
    rounded = qat.quantize_weights_(trained, "int4")
    assert rounded.encoder.layers[0].mlp.up_proj.layout.name == "q4_0"
    recorded = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recorded["qat"] == {"scheme": "int4"}, "the run's record names its QAT scheme"


def test_qat_recipe_refuses_unknown_scheme(block_dir, tmp_path):
    with pytest.raises(RecipeError, match=r"qat\.scheme: unknown quantization scheme 'int3'"):
        _recipe(block_dir, tmp_path, "qat.scheme=int3")


@pytest.mark.parametrize("name", ["qat-int4", "qat-int8", "qat-mixed"])
def test_qat_recipes_are_the_full_recipe_plus_qat(name):
    recipe = load_recipe(name)
    base = load_recipe("finetune-code")
    assert recipe.qat.scheme == name.removeprefix("qat-")
    assert recipe.loss == base.loss, "NCE, spread-out, Matryoshka and distillation kept"
    assert recipe.data.teacher == base.data.teacher, "self-distilled from the fp32 model's cached embeddings"


def test_cpu_sized_qat_recipe_is_distillation_only_with_the_table_frozen():
    recipe, full = load_recipe("qat-int4-cpu"), load_recipe("qat-int4")
    assert recipe.qat == full.qat and recipe.model.checkpoint == full.model.checkpoint
    assert (recipe.loss.contrastive_weight, recipe.loss.spread_out_weight, recipe.loss.distill_weight) == (0, 0, 1)
    assert recipe.model.freeze_embeddings and not full.model.freeze_embeddings
    assert recipe.data.teacher == "data/qat-cpu/teacher" and recipe.data.datasets == {"code": "data/qat-cpu/code"}
    assert recipe.train.steps == 60 and recipe.data.batch_size == 8 and recipe.model.max_seq_length == 64
