"""The torch-free on-device runtime: `OnnxEmbedder` imports no torch, and gives exactly the embeddings of
`Embedder.from_pretrained(..., quantize=...)` (the same session, batching and normalisation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from embeddinggemma.embedder import Embedder
from embeddinggemma.quant.cache import DATA_FILE, MODEL_FILE, cache_entry
from embeddinggemma.quant.ondevice import OnnxEmbedder
from embeddinggemma.quant.onnx_export import EXTERNAL_ALIGNMENT

TEXTS = ["red planet", "mars is the red planet and venus is a planet " * 9, "sort the list by key", "x"]
SCHEME = "int8-channel"  # holds the tiny model's rows of 48 (the block schemes need multiples of 32)

# Loads the cached conversion and embeds in a fresh interpreter, then reports what it imported.
CHILD = """
import json, sys
import numpy as np
from embeddinggemma.quant.ondevice import OnnxEmbedder

model = OnnxEmbedder.from_pretrained(sys.argv[1], quantize=sys.argv[2], num_threads=1)
texts = json.loads(sys.argv[3])
np.save(sys.argv[4], np.stack([model.encode_query(texts), model.encode_document(texts)]))
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "embeddinggemma")))))
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "embeddinggemma" / "quantized"


def _outputs(model) -> dict[str, np.ndarray]:
    return {
        "query": model.encode_query(TEXTS),
        "query_16": model.encode_query(TEXTS, dim=16),
        "raw": model.encode(TEXTS, task="sts", normalize=False),
        "documents": model.encode_document(TEXTS, titles=["Mars", None, "", "t"], batch_size=2),
        "single": model.encode_query("red planet", dim=32),
        "prompt": model.encode("x y", prompt="custom: "),
        "empty": model.encode([]),
    }


@pytest.mark.filterwarnings("ignore:dim=.* is not one of the trained")
def test_onnx_embedder_equals_the_quantized_embedder_bit_for_bit(tiny_st_dir, cache, caplog):
    with caplog.at_level("WARNING"):
        ondevice = OnnxEmbedder.from_pretrained(tiny_st_dir, quantize=SCHEME, num_threads=1)
    assert "no conversion cached yet" in caplog.text, "a missing conversion is built once (with torch)"
    caplog.clear()
    with caplog.at_level("WARNING"):
        embedder = Embedder.from_pretrained(tiny_st_dir, quantize=SCHEME, num_threads=1)
    assert caplog.text == "", "both use the same cached conversion"
    ours, theirs = _outputs(ondevice), _outputs(embedder)
    for key, value in theirs.items():
        assert ours[key].dtype == np.float32 and ours[key].shape == value.shape, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    np.testing.assert_allclose(np.linalg.norm(ours["query_16"], axis=1), 1.0, atol=1e-6)
    assert ondevice.matryoshka_dims == embedder.matryoshka_dims and ondevice.max_seq_length == embedder.max_seq_length


def test_onnx_embedder_loads_and_embeds_without_torch(tiny_st_dir, cache, tmp_path):
    expected = Embedder.from_pretrained(tiny_st_dir, quantize=SCHEME, num_threads=1)  # converts, with torch
    out = tmp_path / "child.npy"
    env = {**os.environ, "EMBEDDINGGEMMA_CACHE": str(cache.parent.parent), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", CHILD, str(tiny_st_dir), SCHEME, json.dumps(TEXTS), str(out)]
    child = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert child.returncode == 0, child.stderr
    imported = json.loads(child.stdout.strip().splitlines()[-1])
    assert "torch" not in imported and not [m for m in imported if m.startswith("torch.")]
    for module in ("embeddinggemma.model", "embeddinggemma.checkpoint", "embeddinggemma.embedder"):
        assert module not in imported, f"{module} imports torch"
    assert "embeddinggemma.quant.ondevice" in imported
    query, documents = np.load(out)
    np.testing.assert_array_equal(query, expected.encode_query(TEXTS))
    np.testing.assert_array_equal(documents, expected.encode_document(TEXTS))


def test_onnx_embedder_from_an_onnx_file(tiny_st_dir, cache, tmp_path):
    OnnxEmbedder.from_pretrained(tiny_st_dir, quantize=SCHEME)
    path = cache_entry(tiny_st_dir, SCHEME, cache) / MODEL_FILE
    model = OnnxEmbedder.from_onnx(path, tiny_st_dir, num_threads=1, max_seq_length=8)
    assert model.max_seq_length == 8
    with pytest.warns(UserWarning, match="exceed the 8-token limit"):
        assert model.encode_query(TEXTS).shape == (4, 40)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        OnnxEmbedder.from_onnx(tmp_path / "missing.onnx", tiny_st_dir)
    with pytest.raises(ValueError, match="max_seq_length must be between 2 and"):
        OnnxEmbedder.from_onnx(path, tiny_st_dir, max_seq_length=1)


def test_onnx_embedder_bad_requests(tiny_st_dir, cache):
    with pytest.raises(ValueError, match="unknown quantization scheme 'int5'"):
        OnnxEmbedder.from_pretrained(tiny_st_dir, quantize="int5")
    assert not cache.exists(), "nothing converted for a refused request"
    model = OnnxEmbedder.from_pretrained(tiny_st_dir, quantize=SCHEME)
    with pytest.raises(ValueError, match="pass either task= or prompt="):
        model.encode("x", task="query", prompt="p: ")
    with pytest.raises(ValueError, match="dim must be between 1 and 40"):
        model.encode("x", dim=41)
    with pytest.raises(TypeError, match="its order is arbitrary"):
        model.encode({"a", "b"})
    with pytest.raises(ValueError, match="titles select the document prompt"):
        model.encode_document(["x"], titles=["t"], prompt="p: ")
    with pytest.warns(UserWarning, match="not one of the trained Matryoshka sizes"):
        model.encode("x", dim=7)


def test_cached_conversion_maps_its_tensors_and_has_no_nan_guards(tiny_st_dir, cache, caplog):
    import onnx

    OnnxEmbedder.from_pretrained(tiny_st_dir, quantize=SCHEME)
    entry = cache_entry(tiny_st_dir, SCHEME, cache)
    graph = onnx.load(str(entry / MODEL_FILE), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and (entry / DATA_FILE).stat().st_size > (entry / MODEL_FILE).stat().st_size
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in external]
    assert all(offset % EXTERNAL_ALIGNMENT == 0 for offset in offsets), "aligned: ONNX Runtime maps them"
    ops = [node.op_type for node in graph.node]
    assert "IsNaN" not in ops and ops.count("Where") == 2, "the two attention biases, no NaN guards per layer"

    data = entry / DATA_FILE
    data.write_bytes(data.read_bytes()[:-4] + b"0123")  # corrupt the tensors, not the graph
    with caplog.at_level("WARNING"):
        OnnxEmbedder.from_pretrained(tiny_st_dir, quantize=SCHEME)
    assert "model.onnx.data does not match its recorded SHA-256" in caplog.text
