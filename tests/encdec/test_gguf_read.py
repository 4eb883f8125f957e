"""GGUF dequantization in torch against the gguf package's own numpy reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddinggemma.quant.gguf_read import SUPPORTED_TYPES, GGUFError, GGUFFile, dequantize

gguf = pytest.importorskip("gguf")

# bytes per block, values per block, offsets of the fp16 scales inside a block
_LAYOUT = {"Q8_0": (34, 32, (0,)), "Q5_0": (22, 32, (0,)), "Q4_K": (144, 256, (0, 2)), "Q6_K": (210, 256, (208,))}


def _random_blocks(type_name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random block bytes with finite fp16 scales (random bytes would include NaN/inf scales)."""
    block_bytes, _, scale_offsets = _LAYOUT[type_name]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0", "Q4_K", "Q6_K"])
def test_block_types_match_gguf_reference(type_name):
    _, per_block, _ = _LAYOUT[type_name]
    rows, blocks_per_row = 7, 3
    raw = _random_blocks(type_name, rows * blocks_per_row, seed=len(type_name))
    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    reference = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
    ours = dequantize(raw, type_name, (rows, blocks_per_row * per_block))
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)))


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_plain_types_match_gguf_reference(type_name):
    values = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    stored = gguf.quants.quantize(values, qtype)
    reference = gguf.quants.dequantize(stored, qtype)
    ours = dequantize(stored, type_name, (5, 64))
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)))


def test_bad_input_is_refused():
    with pytest.raises(GGUFError, match="not supported"):
        dequantize(np.zeros(18, np.uint8), "Q2_K", (1, 256))
    with pytest.raises(GGUFError, match="whole blocks"):
        dequantize(np.zeros(33, np.uint8), "Q8_0", (1, 32))
    with pytest.raises(GGUFError, match="holds 3 values"):
        dequantize(np.zeros(3, np.float32), "F32", (2, 2))
    assert set(SUPPORTED_TYPES) >= {"F32", "F16", "Q8_0", "Q5_0", "Q4_K", "Q6_K"}


def test_written_file_reads_back(tmp_path):
    """A file written by gguf's own writer (Q8_0 and F32 tensors, metadata) reads back through GGUFFile."""
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    weight = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    norm = np.arange(64, dtype=np.float32)
    q8 = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
    writer.add_uint32("gemma3.block_count", 1)
    writer.add_tensor("w", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("norm", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    file = GGUFFile(path)
    assert file.field("gemma3.block_count") == 1 and file.metadata["general.architecture"] == "gemma3"
    assert file.tensor_info()["w"].shape == (4, 64) and file.tensor_info()["w"].type_name == "Q8_0"
    reference = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(file.tensor("w"), torch.from_numpy(reference))
    assert torch.equal(file.tensor("norm"), torch.from_numpy(norm))
    with pytest.raises(GGUFError, match="no tensor"):
        file.tensor("missing")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        GGUFFile(tmp_path / "bad.gguf")


@pytest.mark.gemma3_gguf
def test_every_type_in_gemma3_270m_matches_reference(gemma3_gguf):
    """The real file: one tensor of every type it uses (F32, Q5_0, Q4_K, Q6_K, Q8_0) equals gguf's numpy."""
    file = GGUFFile(gemma3_gguf)
    first = {}
    for tensor in file.reader.tensors:
        if tensor.name != "token_embd.weight":  # 168M values: the same Q8_0 code as blk.*.attn_v
            first.setdefault(tensor.tensor_type.name, tensor)
    assert set(first) == {"F32", "Q5_0", "Q4_K", "Q6_K", "Q8_0"}
    for type_name, tensor in first.items():
        reference = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        ours = file.tensor(tensor.name)
        assert torch.equal(ours, torch.from_numpy(np.array(reference, np.float32)).reshape(ours.shape)), type_name
