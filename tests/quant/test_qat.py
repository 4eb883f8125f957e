"""Fake quantization and conversion: the layouts equal GGUF's reference quantizers bit for bit, the
fake-quantized model trains through the rounding, and the converted model computes exactly what the
fake-quantized one does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from quant_helpers import block_model

from embeddinggemma.engine.forward import padded_forward
from embeddinggemma.quant import qat
from embeddinggemma.quant.formats import INT8_CHANNEL, Q4_0, Q8_0, dequantize, fake_quantize, quantize

IDS = torch.tensor([[2, 5, 9, 11, 40, 7, 1, 0, 0], [2, 8, 8, 30, 31, 32, 33, 34, 1]])
MASK = (IDS != 0).long()


def _hard_weights() -> torch.Tensor:
    """Blocks of zeros, ties, negative and positive extremes, and six decades of magnitude."""
    weight = torch.randn(40, 96, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 96)
    weight[0, :32] = 0.0
    weight[1, :32] = 0.5  # every value ties for the largest magnitude
    weight[2, 5] = -weight[2, :32].abs().max() * 2  # a negative extreme: Q4_0 maps it to -8
    weight[3, 40] = weight[3, 32:64].abs().max() * 2
    weight[4, 64:96] = torch.tensor([-1.0, 1.0] * 16)  # opposite signs tie: the first wins
    return weight


@pytest.mark.parametrize(("layout", "qtype"), [(Q8_0, "Q8_0"), (Q4_0, "Q4_0")])
def test_block_layouts_equal_gguf_reference_bit_for_bit(layout, qtype):
    gguf = pytest.importorskip("gguf")
    weight = _hard_weights()
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    packed = gguf.quants.quantize(weight.numpy(), kind)
    reference = gguf.quants.dequantize(packed, kind)
    q, scale = quantize(weight, layout)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16
    assert q.min() >= layout.qmin and q.max() <= layout.qmax
    np.testing.assert_array_equal(dequantize(q, scale).numpy(), reference)
    np.testing.assert_array_equal(fake_quantize(weight, layout).numpy(), reference)


def test_per_channel_int8_has_one_scale_per_row():
    weight = _hard_weights()
    q, scale = quantize(weight, INT8_CHANNEL)
    assert scale.shape == (40, 1) and scale.dtype == torch.float32
    assert (q.abs().amax(dim=1)[weight.abs().amax(dim=1) > 0] == 127).all()
    error = (dequantize(q, scale) - weight).abs()
    assert (error <= scale / 2 + 1e-6 * weight.abs()).all()


def test_large_tables_are_quantized_in_chunks_with_the_same_numbers():
    weight = torch.randn(9000, 64)
    q, scale = quantize(weight, Q4_0)
    q_head, scale_head = quantize(weight[:100], Q4_0)
    assert torch.equal(q[:100], q_head) and torch.equal(scale[:100], scale_head)
    assert q.shape == (9000, 64) and scale.shape == (9000, 2)


def test_straight_through_gradient():
    weight = torch.randn(8, 64, requires_grad=True)
    grad = torch.randn(8, 64)
    fake_quantize(weight, Q4_0).backward(grad)
    assert torch.equal(weight.grad, grad)


@pytest.mark.parametrize("scheme", ["int8", "int4", "mixed", "int8-channel"])
def test_convert_equals_fake_quantized_model(scheme):
    model = block_model()
    fake = qat.prepare_qat_(copy.deepcopy(model), scheme)
    converted = qat.convert_(copy.deepcopy(fake))
    with torch.no_grad():
        expected = padded_forward(fake, IDS, MASK)
        got = padded_forward(converted, IDS, MASK)
        float_out = padded_forward(model, IDS, MASK)
    assert torch.equal(got, expected), "the converted model must compute exactly what training saw"
    assert not torch.equal(got, float_out), "quantization must change something"
    assert torch.nn.functional.cosine_similarity(got, float_out).min() > 0.9


def test_mixed_scheme_assignment():
    model = qat.prepare_qat_(block_model(), "e4_a8_f4_p4")
    layouts = qat.scheme_of(model)
    assert layouts["encoder.embed_tokens"] == "q4_0"
    assert layouts["encoder.layers.0.self_attn.q_proj"] == "q8_0"
    assert layouts["encoder.layers.2.self_attn.o_proj"] == "q8_0"
    assert layouts["encoder.layers.1.mlp.down_proj"] == "q4_0"
    assert layouts["dense.0"] == layouts["dense.1"] == "q4_0"
    assert not any("norm" in name for name in layouts), "norms stay float"
    assert len(layouts) == 1 + 3 * 7 + 2


def test_qat_trains_the_float_weights_through_the_rounding():
    model = qat.prepare_qat_(block_model(), "int4")
    parameters = dict(model.named_parameters())
    assert "encoder.layers.0.mlp.up_proj.weight" in parameters, "state-dict keys unchanged"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    target = torch.nn.functional.normalize(torch.randn(2, 96, generator=torch.Generator().manual_seed(1)), dim=-1)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = (padded_forward(model, IDS, MASK) - target).pow(2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    embed = model.encoder.embed_tokens.weight
    assert embed.grad is not None and embed.grad[IDS.unique()].abs().sum() > 0
    assert embed.grad[60:].abs().sum() == 0, "rows never looked up get no gradient"
    plain = qat.strip_qat_(model)
    assert isinstance(plain.encoder.layers[0].mlp.up_proj, torch.nn.Linear)
    assert plain.encoder.layers[0].mlp.up_proj.weight is parameters["encoder.layers.0.mlp.up_proj.weight"]


def test_bad_requests():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        qat.prepare_qat_(block_model(), "int3")
    model = qat.prepare_qat_(block_model(), "int8")
    with pytest.raises(ValueError, match="already prepared"):
        qat.prepare_qat_(model, "int8")
    with pytest.raises(ValueError, match="nothing to convert"):
        qat.convert_(block_model())


def test_shapes_that_blocks_cannot_hold_fail_clearly(tiny_st_dir):
    from embeddinggemma.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_st_dir, dtype=torch.float32, device="cpu")  # hidden 48: not blocks of 32
    with pytest.raises(ValueError, match=r"rows of 48 values cannot be split into q4_0 blocks of 32"):
        qat.prepare_qat_(model, "int4")
    assert isinstance(model.encoder.layers[0].mlp.up_proj, torch.nn.Linear), "nothing swapped on failure"
    qat.quantize_weights_(model, "int8-channel")  # per-channel scales hold any shape
