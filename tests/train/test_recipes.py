"""Recipes: every shipped recipe loads; the schema is strict; overrides and `base` compose."""

from __future__ import annotations

import dataclasses

import pytest

from embeddinggemma.train.recipes import (
    SHIPPED_RECIPES,
    Recipe,
    RecipeError,
    apply_overrides,
    from_dict,
    load_recipe,
    recipe_to_dict,
    shipped_recipes,
)


def test_the_recipes_ship_as_package_data():
    names = set(shipped_recipes())
    assert {"smoke-tiny", "finetune-code", "distill-student-12l", "soup-mixture-a", "soup-mixture-b"} <= names
    assert all((SHIPPED_RECIPES / f"{name}.yaml").is_file() for name in names)


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_recipe_loads_and_round_trips(name):
    overrides = ["model.checkpoint=/some/tiny/model"] if name == "smoke-tiny" else []
    if name.startswith("ul2-"):  # UL2 adaptation recipes (embeddinggemma adapt): their own schema
        from embeddinggemma.train.ul2 import UL2Recipe

        recipe = load_recipe(name, schema=UL2Recipe)
        assert recipe.name == name and recipe.description
        assert from_dict(UL2Recipe, recipe_to_dict(recipe)) == recipe
        return
    recipe = load_recipe(name, overrides)
    assert recipe.name == name
    assert recipe.description
    assert from_dict(Recipe, recipe_to_dict(recipe)) == recipe
    assert not recipe.data.rates or set(recipe.data.rates) == set(recipe.data.datasets)


def test_finetune_code_is_the_full_recipe():
    recipe = load_recipe("finetune-code")
    loss = recipe.loss
    assert loss.matryoshka_dims == (768, 512, 256, 128) and loss.alpha == 5.0
    assert loss.contrastive_weight > 0 and loss.spread_out_weight > 0 and loss.distill_weight > 0
    assert recipe.data.teacher and recipe.data.num_hard_negatives == 1
    assert recipe.train.gradient_cache


def test_ablations_differ_from_their_base_only_where_they_say():
    base = recipe_to_dict(load_recipe("finetune-code"))
    changed = {
        "ablation-no-distill": {"loss.distill_weight"},
        "ablation-no-spread-out": {"loss.spread_out_weight"},
        "ablation-no-hardness": {"loss.alpha"},
        "ablation-no-matryoshka": {"loss.matryoshka_dims", "eval.dims"},
        "ablation-frozen-embeddings": {"model.freeze_embeddings"},
    }
    for name, keys in changed.items():
        recipe = recipe_to_dict(load_recipe(name))
        diff = {
            f"{section}.{key}"
            for section in base
            if isinstance(base[section], dict)
            for key in base[section]
            if base[section][key] != recipe[section][key]
        }
        assert diff == keys | {"train.output_dir"}, name


def test_soup_ingredients_differ_in_rates():
    rates = [load_recipe(f"soup-mixture-{x}").data.rates for x in "abc"]
    assert rates[0] != rates[1] != rates[2] != rates[0]
    assert len({load_recipe(f"soup-mixture-{x}").train.output_dir for x in "abc"}) == 3


def test_student_recipe_keeps_twelve_layers():
    assert load_recipe("distill-student-12l").model.student_layers == 12


def test_overrides_are_typed():
    recipe = load_recipe(
        "finetune-code",
        ["optim.lr=1e-5", "train.steps=7", "loss.matryoshka_dims=[768, 256]", "data.rates.code=0.5", "eval.tasks=[]"],
    )
    assert recipe.optim.lr == 1e-5 and isinstance(recipe.optim.lr, float)  # YAML reads 1e-5 as text
    assert recipe.train.steps == 7
    assert recipe.loss.matryoshka_dims == (768, 256)
    assert recipe.data.rates == {"code": 0.5}
    assert recipe.eval.tasks == ()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.learning_rate=1", r"unknown key optim\.learning_rate .*valid keys under optim: betas, eps, lr"),
        ("bogus=1", "unknown key bogus"),
        ("loss.bogus=1", r"unknown key loss\.bogus .*valid keys under loss: alpha, contrastive_weight"),
        ("train.steps=1.5", r"train\.steps: input should be a valid integer.*\(got 1\.5\)"),
        ("train.gradient_cache=yes please", r"train\.gradient_cache: input should be a valid boolean"),
        ("train.gradient_cache=1", r"train\.gradient_cache: input should be a valid boolean \(got 1\)"),
        ("optim.schedule=exponential", r"optim\.schedule: input should be 'cosine', 'linear' or 'constant'"),
        ("optim.betas=[0.9]", r"optim\.betas: no value at position 1 \(got \[0\.9\]\)"),
        ("optim.betas=[0.9, 0.9, 0.9]", r"optim\.betas: tuple should have at most 2 items"),
        ("data.datasets=[a]", r"data\.datasets: input should be a valid dictionary \(got \['a'\]\)"),
        ("eval.dims=[768, x]", r"eval\.dims\[1\]: input should be a valid integer"),
        ("train.precision=float16", "float16 is refused"),
        ("model.checkpoint=null", r"model\.checkpoint is required"),
        ("loss.distill_alignment=projection", r"loss: distill_alignment='projection' needs teacher_dim"),
        ("data.rates.nope=1", r"data\.rates names \['nope'\]"),
        ("optim.lr", "not KEY=VALUE"),
        ("optim.lr.x=1", r"optim\.lr is not a section"),
    ],
)
def test_bad_values_name_their_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("finetune-code", [override])


def test_every_bad_key_is_named_in_one_line():
    with pytest.raises(RecipeError) as info:
        load_recipe("finetune-code", ["train.steps=x", "optim.lr=fast"])
    message = str(info.value)
    assert "\n" not in message and "finetune-code.yaml: " in message
    assert (
        "train.steps: input should be a valid integer" in message
        and "optim.lr: input should be a valid number" in message
    )


def test_a_missing_recipe_lists_the_shipped_ones(tmp_path):
    with pytest.raises(RecipeError, match=r"does not exist \(shipped recipes: .*finetune-code"):
        load_recipe(tmp_path / "nope.yaml")


def test_base_is_relative_to_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "name: base\nmodel: {checkpoint: x}\ndata: {synthetic: true}\ntrain: {steps: 2, output_dir: o}\n"
    )
    (tmp_path / "sub" / "top.yaml").write_text("base: ../base.yaml\nname: top\ntrain: {steps: 5}\n")
    recipe = load_recipe(tmp_path / "sub" / "top.yaml")
    assert recipe.name == "top" and recipe.train.steps == 5 and recipe.train.output_dir == "o"


def test_missing_required_section_and_base_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nmodel: {checkpoint: x}\n")
    with pytest.raises(RecipeError, match="missing required key train"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\nname: b\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nname: c\n")
    with pytest.raises(RecipeError, match="includes itself"):
        load_recipe(tmp_path / "b.yaml")
    (tmp_path / "d.yaml").write_text("- not a mapping\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(tmp_path / "d.yaml")


def test_apply_overrides_does_not_touch_its_input():
    raw = {"optim": {"lr": 1.0}}
    out = apply_overrides(raw, ["optim.lr=2.0", "train.steps=3"])
    assert raw == {"optim": {"lr": 1.0}}
    assert out == {"optim": {"lr": 2.0}, "train": {"steps": 3}}


def test_recipe_is_immutable():
    recipe = load_recipe("finetune-code")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.optim.lr = 1.0  # type: ignore[misc]
