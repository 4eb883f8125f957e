"""Model souping: exact no-op on identical checkpoints, weighted averages, and clear refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embeddinggemma import Embedder
from embeddinggemma.checkpoint import load_checkpoint, save_checkpoint
from embeddinggemma.train.soup import SoupError, soup_checkpoints
from embeddinggemma.train.student import make_student

pytestmark = pytest.mark.usefixtures("single_thread")

WEIGHT_FILES = ("model.safetensors", "2_Dense/model.safetensors", "3_Dense/model.safetensors")


def _variant(tiny_st_dir, out, seed, prompts=None):
    """The tiny checkpoint with every parameter shifted by seeded noise (a stand-in for a fine-tune)."""
    model, info = load_checkpoint(tiny_st_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return save_checkpoint(model, out, tokenizer_dir=tiny_st_dir, prompts=prompts or info.prompts)


def test_souping_identical_checkpoints_is_bit_exact(tiny_st_dir, tmp_path):
    out = soup_checkpoints([tiny_st_dir] * 3, tmp_path / "soup", weights=[1.0, 2.0, 7.0])
    for name in WEIGHT_FILES:
        original, souped = load_file(tiny_st_dir / name), load_file(out / name)
        assert original.keys() == souped.keys()
        for key in original:
            assert original[key].dtype == souped[key].dtype
            assert torch.equal(original[key].view(torch.int32), souped[key].view(torch.int32)), key  # bits
    assert (out / "tokenizer.json").read_bytes() == (tiny_st_dir / "tokenizer.json").read_bytes()
    record = json.loads((out / "soup.json").read_text())
    assert record["weights"] == pytest.approx([0.1, 0.2, 0.7])


def test_weighted_soup_is_the_weighted_average_and_loads_everywhere(tiny_st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    a = _variant(tiny_st_dir, tmp_path / "a", seed=1)
    b = _variant(tiny_st_dir, tmp_path / "b", seed=2)
    out = soup_checkpoints([a, b], tmp_path / "soup", weights=[1, 3])
    for name in WEIGHT_FILES:
        ta, tb, ts = load_file(a / name), load_file(b / name), load_file(out / name)
        for key in ts:
            expected = (0.25 * ta[key].double() + 0.75 * tb[key].double()).float()  # averaged in float64
            assert torch.equal(ts[key], expected), key
    ours = Embedder.from_pretrained(out, device="cpu")
    st = SentenceTransformer(str(out), device="cpu")
    texts = ["the red planet", "python function returns a list"]
    np.testing.assert_allclose(ours.encode_query(texts), st.encode_query(texts), atol=2e-6)


def test_mismatches_are_refused_with_the_difference_named(tiny_st_dir, tmp_path):
    a = _variant(tiny_st_dir, tmp_path / "a", seed=1)
    student, _ = make_student(tiny_st_dir, tmp_path / "student", 2)
    with pytest.raises(SoupError, match="num_hidden_layers: 2 vs 3"):
        soup_checkpoints([a, student], tmp_path / "o1")

    other_tokenizer = tmp_path / "tok"
    shutil.copytree(a, other_tokenizer)
    raw = json.loads((other_tokenizer / "tokenizer.json").read_text())
    raw["model"]["vocab"]["zebra"] = 98
    (other_tokenizer / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(SoupError, match=r"different tokenizers.*tokenizer\.json"):
        soup_checkpoints([a, other_tokenizer], tmp_path / "o2")

    extra_tensor = tmp_path / "extra"
    shutil.copytree(a, extra_tensor)
    tensors = load_file(extra_tensor / "2_Dense" / "model.safetensors")
    save_file({**tensors, "linear.bias": torch.zeros(80)}, str(extra_tensor / "2_Dense" / "model.safetensors"))
    with pytest.raises(SoupError, match=r"different tensor names in 2_Dense/model\.safetensors.*linear\.bias"):
        soup_checkpoints([a, extra_tensor], tmp_path / "o3")

    prompts = _variant(tiny_st_dir, tmp_path / "p", seed=3, prompts={"query": "q: "})
    with pytest.raises(SoupError, match="different prompts"):
        soup_checkpoints([a, prompts], tmp_path / "o4")


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "one weight per checkpoint"), ([1.0, 0.0], "positive"), ([1.0, -2.0], "positive")],
)
def test_bad_weights_are_refused(tiny_st_dir, tmp_path, weights, message):
    with pytest.raises(SoupError, match=message):
        soup_checkpoints([tiny_st_dir, tiny_st_dir], tmp_path / "o", weights=weights)


def test_output_must_be_new(tiny_st_dir, tmp_path):
    with pytest.raises(SoupError, match="one of the inputs"):
        soup_checkpoints([tiny_st_dir, tiny_st_dir], tiny_st_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(SoupError, match="not empty"):
        soup_checkpoints([tiny_st_dir], tmp_path / "busy")
