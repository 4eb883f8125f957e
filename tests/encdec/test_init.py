"""EmbeddingGemma initialisations for the ablation: from the adapted encoder, from the decoder, random;
and the recipe option that trains them."""

from __future__ import annotations

import pytest
import torch
from encdec_helpers import randomize, tiny_causal_config

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.encdec.decoder import Gemma3CausalLM, save_decoder
from embeddinggemma.encdec.init import init_embedding_model
from embeddinggemma.encdec.model import Gemma3EncoderDecoder, save_encoder_decoder
from embeddinggemma.train.recipes import RecipeError, load_recipe
from embeddinggemma.train.trainer import train_recipe


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    lm = Gemma3CausalLM(tiny_causal_config())
    randomize(lm)
    save_decoder(lm, root / "decoder")
    encdec = Gemma3EncoderDecoder.from_decoder(lm)
    with torch.no_grad():  # stand-in for UL2: the encoder differs from the decoder
        encdec.encoder.layers[0].mlp.up_proj.weight.add_(1.0)
    save_encoder_decoder(encdec, root / "encdec")
    return {"lm": lm, "encdec": encdec, "decoder": root / "decoder", "encdec_dir": root / "encdec"}


def test_each_init_fills_the_encoder_and_a_new_head(sources):
    from_encdec = init_embedding_model("encoder-decoder", sources["encdec_dir"])
    from_decoder = init_embedding_model("decoder", sources["decoder"])
    for model, stack in ((from_encdec, sources["encdec"].encoder), (from_decoder, sources["lm"].model)):
        for (name, a), (_, b) in zip(model.encoder.state_dict().items(), stack.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
        backbone = model.config.backbone
        assert backbone.use_bidirectional_attention and backbone.num_hidden_layers == 3
        assert [d.weight.shape for d in model.dense] == [(192, 48), (48, 192)]  # d -> 4d -> d
        assert all(d.bias is None for d in model.dense) and model.config.head.normalize
    torch.manual_seed(0)
    random_a = init_embedding_model("random", sources["decoder"])
    torch.manual_seed(0)
    random_b = init_embedding_model("random", sources["decoder"])
    torch.manual_seed(1)
    random_c = init_embedding_model("random", sources["decoder"])
    table = random_a.encoder.embed_tokens.weight
    assert torch.equal(table, random_b.encoder.embed_tokens.weight)
    assert not torch.equal(table, random_c.encoder.embed_tokens.weight)
    assert abs(float(table[1:].detach().std()) - 0.02) < 0.002 and not table[0].any()  # Gemma init, zero pad row
    assert not random_a.encoder.norm.weight.any()
    with pytest.raises(ValueError, match="init must be one of"):
        init_embedding_model("teacher", sources["decoder"])


def _recipe(tiny_st_dir, tmp_path, *overrides):
    return load_recipe(
        "smoke-tiny",
        [f"model.checkpoint={tiny_st_dir}", f"train.output_dir={tmp_path}", "train.save_every=0", *overrides],
    )


@pytest.mark.parametrize("init", ["encoder-decoder", "decoder", "random"])
def test_recipe_trains_from_each_init(init, sources, tiny_st_dir, tmp_path):
    source = sources["encdec_dir"] if init == "encoder-decoder" else sources["decoder"]
    recipe = _recipe(tiny_st_dir, tmp_path, f"model.init={init}", f"model.init_from={source}", "model.student_layers=2")
    final = train_recipe(recipe)
    model, info = load_checkpoint(final)
    assert model.config.backbone.num_hidden_layers == 2 and model.config.embedding_dim == 48
    assert info.prompts  # the tokenizer checkpoint's prompts travel with the new model
    if init != "random":
        start = init_embedding_model(init, source)
        # trained: the weights moved away from their init
        assert not torch.equal(model.encoder.layers[1].mlp.up_proj.weight, start.encoder.layers[2].mlp.up_proj.weight)


def test_recipe_refuses_encoder_decoder_without_its_directory(tiny_st_dir, tmp_path):
    with pytest.raises(RecipeError, match="init_from"):
        _recipe(tiny_st_dir, tmp_path, "model.init=encoder-decoder")
    with pytest.raises(RecipeError, match=r"model\.init"):
        _recipe(tiny_st_dir, tmp_path, "model.init=teacher")
