"""GPTQ into Q4_0 / Q8_0: a valid block layout, lower output error than round-to-nearest on the
calibration inputs, and a converted model the exports take as is."""

from __future__ import annotations

import copy

import pytest
import torch
from quant_helpers import block_model

from embeddinggemma.engine.forward import padded_forward
from embeddinggemma.quant import qat
from embeddinggemma.quant.formats import Q4_0, Q8_0, dequantize, quantize
from embeddinggemma.quant.gptq import gptq_quantize, gptq_quantize_model_


@pytest.mark.parametrize("layout", [Q4_0, Q8_0])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(layout):
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(96, 96, generator=generator)
    x = torch.randn(512, 96, generator=generator) @ mixing  # correlated features, as real activations
    weight = torch.randn(40, 96, generator=generator)
    q, scale = gptq_quantize(weight, x.double().T @ x.double(), layout)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (40, 3)
    assert q.min() >= layout.qmin and q.max() <= layout.qmax
    gptq_error = (x @ (dequantize(q, scale) - weight).T).pow(2).mean()
    rtn_error = (x @ (dequantize(*quantize(weight, layout)) - weight).T).pow(2).mean()
    assert gptq_error < 0.8 * rtn_error


def test_gptq_model_is_a_converted_model():
    model = block_model()
    token_ids = [[2, *range(4 + i, 40 + i), 1] for i in range(12)]
    quantized = gptq_quantize_model_(copy.deepcopy(model), "int4", token_ids)
    tensors = qat.quantized_tensors(quantized)
    assert len(tensors) == 1 + 3 * 7 + 2
    ids = torch.tensor([[2, 9, 10, 11, 12, 1]])
    with torch.no_grad():
        mask = torch.ones_like(ids)
        out, ref = padded_forward(quantized, ids, mask), padded_forward(model, ids, mask)
    assert torch.nn.functional.cosine_similarity(out, ref).item() > 0.9
    rtn = qat.quantize_weights_(copy.deepcopy(model), "int4")
    same_table = torch.equal(quantized.encoder.embed_tokens.qweight, rtn.encoder.embed_tokens.qweight)
    assert same_table, "the table (no activations) is rounded to nearest"
    assert not torch.equal(quantized.encoder.layers[1].mlp.up_proj.qweight, rtn.encoder.layers[1].mlp.up_proj.qweight)
