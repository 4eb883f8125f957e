"""The runtime's embedding table outside the graph: rows read from disk equal the model's own lookup
(times sqrt(hidden)) bit for bit in every layout, and a damaged or mismatched file is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from quant_helpers import block_model

from embeddinggemma.quant import qat
from embeddinggemma.quant.onnx_export import write_token_table
from embeddinggemma.quant.token_table import TableFormat, TokenTable


@pytest.mark.parametrize("scheme", ["f32", "int8", "int4", "int8-channel"])
def test_rows_equal_the_models_lookup(tmp_path, scheme):
    model = block_model()
    if scheme != "f32":
        model = qat.quantize_weights_(copy.deepcopy(model), scheme)
    table = write_token_table(model, tmp_path / "table.bin")
    ids = torch.tensor([[2, 5, 5, 0], [model.config.backbone.vocab_size - 1, 7, 3, 2]])
    with torch.no_grad():
        expected = model.encoder.embed(ids).numpy()
    reader = TokenTable(tmp_path / "table.bin", TableFormat.from_json(table.to_json()))
    np.testing.assert_array_equal(reader.lookup(ids.numpy()), expected)
    assert not (tmp_path / "table.bin.partial").exists()


def test_bad_ids_and_files_are_refused(tmp_path):
    table = write_token_table(qat.quantize_weights_(block_model(), "int4"), tmp_path / "table.bin")
    reader = TokenTable(tmp_path / "table.bin", table)
    with pytest.raises(ValueError, match=f"token id {table.rows} is outside the embedding table"):
        reader.lookup(np.array([[1, table.rows]]))
    with pytest.raises(ValueError, match="token id -1 is outside"):
        reader.lookup(np.array([[-1, 3]]))
    reader.close()
    path = tmp_path / "table.bin"
    path.write_bytes(path.read_bytes()[:-1])  # truncated
    with pytest.raises(ValueError, match="convert the model again"):
        TokenTable(path, table)


def test_export_refuses_a_model_still_fake_quantized():
    from embeddinggemma.quant.onnx_export import build_onnx

    with pytest.raises(ValueError, match="convert it first"):
        build_onnx(qat.prepare_qat_(block_model(), "int4"))
