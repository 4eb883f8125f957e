"""UL2 adaptation on the trainer: a few steps lower the loss on a tiny model; resume reproduces the
uninterrupted run; two processes train like one; the recipe and command refuse bad input."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from encdec_helpers import randomize, tiny_causal_config, ul2_checkpoint, ul2_texts, ul2_worker

from embeddinggemma.encdec.decoder import Gemma3CausalLM, load_decoder, save_decoder
from embeddinggemma.encdec.model import Gemma3EncoderDecoder, load_encoder_decoder
from embeddinggemma.encdec.ul2 import chunk_tokens, ul2_loss
from embeddinggemma.tokenizer import load_tokenizer
from embeddinggemma.train.recipes import RecipeError
from embeddinggemma.train.ul2 import UL2Loader, adapt_recipe, load_ul2_recipe, special_tokens, training_texts


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_st_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ul2")
    types = ("sliding_attention",) * 5 + ("full_attention",)
    lm = Gemma3CausalLM(tiny_causal_config(num_hidden_layers=6, layer_types=types))
    randomize(lm)
    with torch.no_grad():  # a gentler start than randomize's: the tiny LM should be trainable
        for name, p in lm.named_parameters():
            p.mul_(0.3 if "norm" not in name else 0.0)
    save_decoder(lm, root / "decoder")
    return {
        "decoder": root / "decoder",
        "checkpoint": ul2_checkpoint(tiny_st_dir, root / "ckpt"),
        "texts": ul2_texts(root / "texts"),
    }


def _args(setup, out, *extra):
    return (
        "ul2-gemma3-270m",
        [
            f"model.decoder={setup['decoder']}",
            "model.layers=3",
            f"model.tokenizer={setup['checkpoint']}",
            f"data.texts=[{setup['texts']}]",
            "data.max_tokens=16",
            "data.min_tokens=8",
            "data.batch_size=8",
            "optim.lr=3e-3",
            "optim.warmup_steps=0",
            "optim.schedule=constant",
            "train.precision=float32",
            "train.device=cpu",
            "train.log_every=1",
            f"train.output_dir={out}",
            *extra,
        ],
    )


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_ul2_steps_lower_the_loss(setup, tmp_path):
    recipe = load_ul2_recipe(*_args(setup, tmp_path / "run", "train.steps=12"))
    final = adapt_recipe(recipe)
    model = load_encoder_decoder(final)
    record = json.loads((final / "encoder_decoder.json").read_text())
    assert record["decoder_layers"] == [0, 4, 5] and model.config.num_hidden_layers == 3  # student rule
    assert record["chunks"] > 8
    losses = [r["loss"] for r in _log(tmp_path / "run") if r["event"] == "train"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    first = next(r for r in _log(tmp_path / "run") if r["event"] == "train")
    assert first["datasets"] == {"ul2": 1} and first["tokens"] > 0
    # a batch the run never drew (another seed), before and after: the targets are predicted better
    start = Gemma3EncoderDecoder.from_decoder(load_decoder(setup["decoder"], layers=[0, 4, 5]))
    tokenizer = load_tokenizer(setup["checkpoint"], model.config, max_length=1 << 20)
    ids = [row[1:-1] for row in tokenizer.encode(training_texts((str(setup["texts"]),)))]
    loader = UL2Loader(chunk_tokens(ids, 16, 8), recipe.data.denoisers, special_tokens(tokenizer), 8, seed=99)
    batch = next(loader)
    assert set(batch.denoisers) > {"S"}  # the batch mixes denoisers
    with torch.no_grad():
        before, after = (float(ul2_loss(m.eval(), batch)) / batch.num_targets for m in (start, model))
    assert after < 0.8 * before, (before, after)


def test_resume_reproduces_the_uninterrupted_run(setup, tmp_path):
    whole = adapt_recipe(load_ul2_recipe(*_args(setup, tmp_path / "whole", "train.steps=4")))
    adapt_recipe(load_ul2_recipe(*_args(setup, tmp_path / "parts", "train.steps=2", "train.save_every=1")))
    resumed = adapt_recipe(load_ul2_recipe(*_args(setup, tmp_path / "parts", "train.steps=4")))
    a, b = load_encoder_decoder(whole), load_encoder_decoder(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert [r["loss"] for r in _log(tmp_path / "whole") if r["event"] == "train"] == [
        r["loss"] for r in _log(tmp_path / "parts") if r["event"] == "train"
    ]


def test_corpus_vocabulary_option(setup, tmp_path):
    final = adapt_recipe(load_ul2_recipe(*_args(setup, tmp_path / "v", "train.steps=2", "data.corpus_vocabulary=true")))
    record = json.loads((final / "encoder_decoder.json").read_text())
    assert 8 < record["softmax_vocabulary"] < 99  # the tiny text's words, EOS and the sentinels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(setup, tmp_path):
    adapt_recipe(load_ul2_recipe(*_args(setup, tmp_path / "one", "train.steps=2")))
    mp.spawn(ul2_worker, args=(2, _free_port(), _args(setup, tmp_path / "two", "train.steps=2")), nprocs=2, join=True)
    one = [r for r in _log(tmp_path / "one") if r["event"] == "train"]
    two = [r for r in _log(tmp_path / "two") if r["event"] == "train"]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["tokens"] == a["tokens"] and b["texts"] == a["texts"] == 8


def test_bad_input_is_refused(setup, tmp_path):
    with pytest.raises(RecipeError, match=r"data\.texts is empty"):
        load_ul2_recipe("ul2-gemma3-270m", ["data.texts=[]", f"train.output_dir={tmp_path}"])
    with pytest.raises(RecipeError, match="mode"):
        load_ul2_recipe(*_args(setup, tmp_path, "data.denoisers=[{mode: Q, rate: 0.1}]"))
    dev = ul2_texts(tmp_path / "dev-split")
    spec = json.loads((dev / "dataset.json").read_text())
    (dev / "dataset.json").write_text(json.dumps(spec | {"split": "dev"}))
    with pytest.raises(ValueError, match="train splits only"):
        training_texts((str(dev),))
