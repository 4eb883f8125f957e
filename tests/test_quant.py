"""The int8 CPU path on the tiny model: SmoothQuant folding is exact, int8 stays close to fp32, the disk
cache is built once and reused, and bad requests fail clearly. Real-checkpoint quality is in
test_real_checkpoint.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.quant import convert
from embeddinggemma.quant.convert import calibrate_and_quantize_, load_int8_checkpoint, quantize_model_
from embeddinggemma.quant.int8 import Int8DynamicLinear, Int8Embedding, quantize_rows
from embeddinggemma.quant.safetensors_io import RowFile
from embeddinggemma.quant.smooth import CALIBRATION_TEXTS, activation_absmax, smooth_

TEXTS = ["red planet", "mars is the red planet and venus is a planet " * 4, "sort the list by key", ""]


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


def _with_model(embedder: Embedder, model) -> Embedder:
    return Embedder(model, embedder.tokenizer, embedder.prompts, source=embedder.source)


def test_token_buckets_give_per_token_precision():
    """Rows of very different magnitude: one scale for all loses the small rows; buckets keep them."""
    linear = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(6, 64)
    x[0] *= 1e4  # a BOS-like outlier row
    exact = linear(x).detach()
    one_scale = Int8DynamicLinear.from_linear(linear)(x)
    bucketed = Int8DynamicLinear.from_linear(linear, token_buckets=1.0)(x)
    cos = torch.nn.functional.cosine_similarity
    assert cos(bucketed[1:], exact[1:]).min() > 0.99
    assert cos(one_scale[1:], exact[1:]).min() < 0.9
    torch.testing.assert_close(bucketed[0], exact[0], rtol=0.05, atol=float(exact[0].abs().max()) * 0.05)


def test_quantize_rows_round_trip():
    weight = torch.randn(7, 33)
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    torch.testing.assert_close(q.float() * scale[:, None], weight, atol=(scale.max() / 2).item(), rtol=0)


def test_int8_linear_matches_float_linear():
    linear = torch.nn.Linear(48, 37, bias=True)
    x = torch.randn(5, 3, 48)
    q = Int8DynamicLinear.from_linear(linear)
    out = q(x)
    assert out.shape == (5, 3, 37)
    cosine = torch.nn.functional.cosine_similarity(out.reshape(-1, 37), linear(x).reshape(-1, 37).detach())
    assert cosine.min() > 0.99
    q_back, scale_back = q.int8_weight()
    torch.testing.assert_close(q_back.float() * scale_back[:, None], linear.weight.detach(), atol=2e-3, rtol=0)


def test_smoothing_is_exact_in_fp32(tiny):
    smoothed = copy.deepcopy(tiny.model)
    token_ids = tiny.tokenizer.encode(list(CALIBRATION_TEXTS))
    stats = activation_absmax(smoothed, token_ids)
    assert len(stats) == 3 and set(stats[0]) == {"attn_in", "o_in", "mlp_in", "down_in"}
    smooth_(smoothed, stats, alpha=0.5)
    changed = smoothed.encoder.layers[0].mlp.down_proj.weight - tiny.model.encoder.layers[0].mlp.down_proj.weight
    assert changed.abs().max() > 1e-3, "smoothing must actually rescale weights"
    np.testing.assert_allclose(_with_model(tiny, smoothed).encode(TEXTS), tiny.encode(TEXTS), atol=2e-5)


def test_int8_model_close_to_fp32(tiny):
    quantized = calibrate_and_quantize_(copy.deepcopy(tiny.model), tiny.tokenizer)
    assert quantized.encoder.layers[0].mlp.up_proj.token_buckets is None
    assert quantized.encoder.layers[0].mlp.down_proj.token_buckets == 1.0, "down_proj: per-token scales"
    assert isinstance(quantized.encoder.embed_tokens, Int8Embedding)
    assert isinstance(quantized.dense[0], torch.nn.Linear), "the head stays fp32"
    cosine = (_with_model(tiny, quantized).encode(TEXTS) * tiny.encode(TEXTS)).sum(1)
    assert cosine.min() > 0.99, cosine
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model_(quantized)


def test_int8_cache_is_built_once_and_reused(tiny_st_dir, tiny, tmp_path, monkeypatch):
    model, _ = load_int8_checkpoint(tiny_st_dir, cache_dir=tmp_path)
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    expected = calibrate_and_quantize_(copy.deepcopy(tiny.model), tiny.tokenizer)
    np.testing.assert_allclose(
        _with_model(tiny, model).encode(TEXTS), _with_model(tiny, expected).encode(TEXTS), atol=1e-6
    )
    # the table stays in the cache file; lookups read rows on demand
    table = model.encoder.embed_tokens.q
    assert isinstance(table, RowFile)
    ids = torch.tensor([[5, 0, 98, 5], [3, 3, 1, 2]])
    torch.testing.assert_close(table.gather(ids), expected.encoder.embed_tokens.q[ids])
    with pytest.raises(IndexError, match="row ids must lie in"):
        table.gather(torch.tensor([99]))

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(convert, "_convert_to_cache", no_conversion)
    again, _ = load_int8_checkpoint(tiny_st_dir, cache_dir=tmp_path)
    np.testing.assert_array_equal(_with_model(tiny, again).encode(TEXTS), _with_model(tiny, model).encode(TEXTS))


def test_quantize_through_the_api(tiny_st_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path))
    int8 = Embedder.from_pretrained(tiny_st_dir, quantize="int8-channel")  # rows of 48: no blocks of 32
    assert int8.encode_query(TEXTS).shape == (4, 40)
    with pytest.raises(ValueError, match="rows of 48 values cannot be split into q8_0 blocks"):
        Embedder.from_pretrained(tiny_st_dir, quantize="int8")
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        Embedder.from_pretrained(tiny_st_dir, quantize="int3")
    with pytest.raises(ValueError, match="CPU path"):
        Embedder.from_pretrained(tiny_st_dir, quantize="int8", dtype="bfloat16")
    with pytest.raises(ValueError, match="quantized model"):
        int8.save(tmp_path / "out")
