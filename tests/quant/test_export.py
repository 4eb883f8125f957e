"""Exports and the quantized runtime on the tiny block model: ONNX through onnxruntime equals our
quantized model, GGUF read back with `gguf` holds exactly our integers and scales, the conversion
cache is rebuilt when stale or corrupt, and bad requests fail without leaving files."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.cli import main as cli_main
from embeddinggemma.engine.forward import padded_forward
from embeddinggemma.export import export_checkpoint
from embeddinggemma.quant import qat
from embeddinggemma.quant.onnx_export import ACCURACY_FP32, ACCURACY_INT8
from embeddinggemma.quant.runtime import MANIFEST_FILE, MODEL_FILE, cache_entry, load_quantized

ort = pytest.importorskip("onnxruntime")
TEXTS = ["red planet", "mars is the red planet and venus is a planet " * 3, "sort the list by key", "x"]


def _batch(embedder: Embedder) -> tuple[torch.Tensor, torch.Tensor]:
    from embeddinggemma.engine.batching import pad_batch

    return pad_batch(embedder.tokenizer.encode(TEXTS), 0)


@pytest.fixture(scope="module")
def block_embedder(block_dir) -> Embedder:
    return Embedder.from_pretrained(block_dir, device="cpu")


def _run_onnx(path, ids, mask) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding"]
    return session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


@pytest.mark.parametrize("scheme", ["f32", "int8", "int4", "mixed"])
def test_onnx_equals_our_quantized_model(block_dir, block_embedder, tmp_path, scheme):
    ids, mask = _batch(block_embedder)
    model = copy.deepcopy(block_embedder.model)
    if scheme != "f32":
        qat.quantize_weights_(model, scheme)
    with torch.no_grad():
        expected = padded_forward(model, ids, mask).numpy()
    exact = export_checkpoint(block_dir, "onnx", tmp_path / "exact.onnx", scheme=scheme, accuracy_level=ACCURACY_FP32)
    np.testing.assert_allclose(_run_onnx(exact, ids, mask), expected, atol=2e-6, rtol=0)
    if scheme != "f32":  # int8 dot products: close, not exact
        fast = export_checkpoint(block_dir, "onnx", tmp_path / "fast.onnx", scheme=scheme, accuracy_level=ACCURACY_INT8)
        cosine = (_run_onnx(fast, ids, mask) * expected).sum(1)
        assert cosine.min() >= 0.999


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize(("low_memory", "banded"), [(False, False), (True, False), (False, True), (True, True)])
def test_onnx_attention_layouts_equal_the_model(kv_heads, low_memory, banded):
    """Every way the graph writes attention gives the model's embeddings: one kv head (EmbeddingGemma's
    layout: 3 query heads, no transposes) or two; query chunks (low memory); the band (a long text's
    sliding layers against each chunk's window: the 20-token rows are long for the window of 6). A
    padded batch with a long row exercises both masks and the padding rows; 1- and 2-token texts are
    shorter than the number of chunks (empty chunks) and than the band threshold; a 60-token batch has
    more query rows than the RoPE tables."""
    import dataclasses

    from quant_helpers import block_config, block_model

    from embeddinggemma.quant.onnx_export import build_onnx

    config = block_config()
    heads = 3 if kv_heads == 1 else 4
    backbone = dataclasses.replace(config.backbone, num_attention_heads=heads, num_key_value_heads=kv_heads)
    model = block_model(config=dataclasses.replace(config, backbone=backbone))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, backbone.vocab_size, (3, 20), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 1:] = 0, 0
    proto = build_onnx(model, low_memory=low_memory, banded=banded)
    assert any(node.op_type == "If" for node in proto.graph.node) == banded
    if kv_heads == 1:  # q's heads are normed and rotated as the score rows: no Reshape to heads and back
        nodes = proto.graph.node
        normed = {node.output[0] for node in nodes if node.op_type == "RMSNormalization"}
        assert not [node for node in nodes if node.op_type == "Reshape" and node.input[0] in normed]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    # 60 tokens x 3 query heads: more score rows than RoPE table rows (128), which the rows must not be
    long_ids = torch.randint(1, backbone.vocab_size, (2, 60), generator=generator)
    long_mask = torch.ones_like(long_ids)
    long_mask[1, 41:] = 0
    batches = [(ids, mask), (ids[:1, :1], mask[:1, :1]), (ids[:2, :2], mask[:2, :2]), (long_ids, long_mask)]
    for batch_ids, batch_mask in batches:
        with torch.no_grad():
            expected = padded_forward(model, batch_ids, batch_mask).numpy()
        got = session.run(None, {"input_ids": batch_ids.numpy(), "attention_mask": batch_mask.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)


def _per_token_int8_inputs(model: torch.nn.Module) -> list:
    """The w8a8 runtime's arithmetic in PyTorch: every quantized product's input in the encoder rounded
    to int8 with one scale per token (max |x| / 127, halves to even as QuantizeLinear rounds); the
    pooled embedding's projections keep fp32 inputs."""

    def round_input(module, inputs):
        x = inputs[0]
        scale = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-30)
        return (torch.round(x / scale) * scale,)

    return [
        module.register_forward_pre_hook(round_input)
        for module in model.encoder.modules()
        if isinstance(module, qat.QuantizedLinear)
    ]


def test_w8a8_onnx_equals_per_token_int8_arithmetic(block_dir, block_embedder, tmp_path):
    import onnx

    ids, mask = _batch(block_embedder)
    model = qat.quantize_weights_(copy.deepcopy(block_embedder.model), "w8a8")
    with torch.no_grad():
        weight_only = padded_forward(model, ids, mask).numpy()
        hooks = _per_token_int8_inputs(model)
        expected = padded_forward(model, ids, mask).numpy()
    for hook in hooks:
        hook.remove()
    path = export_checkpoint(block_dir, "onnx", tmp_path / "w8a8.onnx", scheme="w8a8")
    got = _run_onnx(path, ids, mask)
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0)  # integer products; float rounding only
    assert (got * weight_only).sum(1).min() >= 0.99, "int8 activations stay close to the weight-only model"
    nodes = onnx.load(str(path)).graph.node
    ops = [node.op_type for node in nodes]
    layers = block_embedder.model.config.backbone.num_hidden_layers
    assert ops.count("MatMulIntegerToFloat") == 7 * layers, "q/k/v and gate/up apart: no Split copies"
    assert ops.count("QuantizeLinear") == 4 * layers, "one quantized input per norm / product input"
    products = {node.output[0] for node in nodes if node.op_type == "MatMulIntegerToFloat"}
    row_scales = {node.input[1] for node in nodes if node.op_type == "QuantizeLinear"}
    scaled_after = [node for node in nodes if node.op_type == "Mul" and {*node.input} <= products | row_scales]
    assert not scaled_after, "the per-token scale goes in as the product's A scale, not as a Mul after it"
    assert "MatMulNBits" not in ops and "DequantizeLinear" not in ops, "the head: fp32 inputs, float weights"
    # the runtime's conversion: the same arithmetic with the table outside and the band (TEXTS[1] is long
    # for the tiny model's window), without the final normalisation
    from embeddinggemma.quant.convert import convert_checkpoint
    from embeddinggemma.quant.ondevice import OnnxSession

    convert_checkpoint(block_dir, "w8a8", tmp_path / "runtime")
    session = OnnxSession(tmp_path / "runtime" / MODEL_FILE, 1)
    assert any(node.op_type == "If" for node in onnx.load(str(session.path), load_external_data=False).graph.node)
    raw = session.run(ids.numpy(), mask.numpy())
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("dense_bias", [(False, False), (True, True), (False, True)])
def test_w8a8_head_is_one_float_product_of_both_projections(dense_bias):
    """w8a8 multiplies the pooled embedding (fp32) by the two projections' product, biases carried
    through: the weight-only head's numbers, one small matrix instead of two."""
    import dataclasses

    import onnx
    from quant_helpers import block_config, block_model

    from embeddinggemma.quant.onnx_export import build_onnx

    config = block_config()
    config = dataclasses.replace(config, head=dataclasses.replace(config.head, dense_bias=dense_bias))
    model = qat.quantize_weights_(block_model(config=config), "w8a8")
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, config.backbone.vocab_size, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        hooks = _per_token_int8_inputs(model)
        expected = padded_forward(model, ids, mask).numpy()
    for hook in hooks:
        hook.remove()
    proto = build_onnx(copy.deepcopy(model), int8_activations=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0)
    hidden = config.backbone.hidden_size
    shapes = [list(t.dims) for t in proto.graph.initializer]
    floats = [list(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert floats.count([hidden, config.embedding_dim]) == 1, "one float (hidden x embedding) matrix"
    wide = config.head.dense_features[0]
    assert not [shape for shape in shapes if wide in shape], "not the pair through the wide projection"


def _short_and_long_paths(graph) -> tuple[list[str], list[list[str]]]:
    """The op types a short text runs (every `If` taking its else branch) and each `If`'s then branch."""
    short, banded = [], []
    for node in graph.node:
        if node.op_type == "If":
            branches = {attribute.name: attribute.g for attribute in node.attribute}
            short += [n.op_type for n in branches["else_branch"].node]
            banded.append([n.op_type for n in branches["then_branch"].node])
        else:
            short.append(node.op_type)
    return short, banded


def test_onnx_graph_is_fused_operators(block_dir, tmp_path):
    import onnx
    from quant_helpers import block_model

    from embeddinggemma.quant.onnx_export import BAND_CHUNKS, build_onnx

    path = export_checkpoint(block_dir, "onnx", tmp_path / "int8.onnx", scheme="int8")
    graph = onnx.load(str(path)).graph
    ops, banded = _short_and_long_paths(graph)
    layers, sliding = 3, 2
    # the tiny model's 2 kv heads each read 2 query heads: all of them in one score product a layer
    assert ops.count("Softmax") == layers and ops.count("MatMul") == 2 * layers + 1, "+ the pooling"
    assert ops.count("RotaryEmbedding") == 2 * layers and ops.count("MatMulNBits") == 4 * layers + 2
    assert len(ops) <= 50 * layers + 60, f"{len(ops)} nodes: the graph is meant to be under 50 per layer"
    assert ops.count("Where") == 2, "two attention biases, built once for all layers"
    assert not banded, "exports leave the band out (OpenVINO runs its If slower)"
    # the runtime's graph: a long text's sliding layers score each chunk of query tokens against its window
    runtime = build_onnx(qat.quantize_weights_(block_model(), "int8"), banded=True).graph
    ops_short, banded = _short_and_long_paths(runtime)
    assert ops_short.count("Softmax") == layers
    assert len(banded) == sliding and all(branch.count("Softmax") == BAND_CHUNKS for branch in banded)
    small = [(t.data_type, tuple(t.dims), t.raw_data) for t in graph.initializer if np.prod(t.dims) <= 16]
    assert len(small) == len(set(small)), "each small constant (axes, shapes, scalars) written once"
    # int4 is a low-memory scheme: the query tokens in 2 chunks (one head's worth of scores each)
    low_memory = export_checkpoint(block_dir, "onnx", tmp_path / "int4.onnx", scheme="int4")
    ops, _ = _short_and_long_paths(onnx.load(str(low_memory)).graph)
    assert ops.count("Softmax") == 2 * layers and ops.count("MatMul") == 2 * 2 * layers + 1


def test_gguf_holds_our_integers_and_scales_exactly(block_dir, block_embedder, tmp_path):
    gguf = pytest.importorskip("gguf")
    path = export_checkpoint(block_dir, "gguf", tmp_path / "m.gguf", scheme="mixed")
    reader = gguf.GGUFReader(str(path))
    fields = {name: field for name, field in reader.fields.items()}

    def value(key):
        field = fields[key]
        return field.contents()

    assert value("general.architecture") == "gemma-embedding"
    assert value("gemma-embedding.pooling_type") == gguf.PoolingType.MEAN
    assert value("gemma-embedding.attention.sliding_window") == 6
    assert value("gemma-embedding.dense_2_feat_in") == 64 and value("gemma-embedding.dense_2_feat_out") == 160
    assert value("gemma-embedding.dense_3_feat_in") == 160 and value("gemma-embedding.dense_3_feat_out") == 96
    assert value("embeddinggemma.prompt.query") == "task: search result | query: "
    assert value("tokenizer.ggml.add_bos_token") and value("tokenizer.ggml.add_eos_token")
    assert len(value("tokenizer.ggml.tokens")) == 99

    model = qat.quantize_weights_(copy.deepcopy(block_embedder.model), "mixed")
    expected = {
        "token_embd.weight": ("Q4_0", model.encoder.embed_tokens.weight),
        "blk.1.attn_q.weight": ("Q8_0", model.encoder.layers[1].self_attn.q_proj.weight),
        "blk.2.attn_output.weight": ("Q8_0", model.encoder.layers[2].self_attn.o_proj.weight),
        "blk.0.ffn_down.weight": ("Q4_0", model.encoder.layers[0].mlp.down_proj.weight),
        "dense_2.weight": ("Q4_0", model.dense[0].weight),
        "dense_3.weight": ("Q4_0", model.dense[1].weight),
        "blk.0.attn_norm.weight": ("F32", 1 + model.encoder.layers[0].input_layernorm.weight.detach()),
        "output_norm.weight": ("F32", 1 + model.encoder.norm.weight.detach()),
    }
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 1 + 3 * (7 + 6) + 1 + 2  # table, 7 weights + 6 norms per layer, final norm, dense
    for name, (kind, weight) in expected.items():
        tensor = tensors[name]
        assert tensor.tensor_type.name == kind, name
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        np.testing.assert_array_equal(values, weight.float().numpy(), err_msg=name)


def test_export_refuses_bad_requests_and_leaves_nothing(block_dir, tiny_st_dir, tmp_path):
    existing = tmp_path / "taken.onnx"
    existing.write_text("keep me")
    with pytest.raises(ValueError, match="exists; choose another path or pass --force"):
        export_checkpoint(block_dir, "onnx", existing)
    assert existing.read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown quantization scheme 'int2'"):
        export_checkpoint(block_dir, "gguf", tmp_path / "a.gguf", scheme="int2")
    with pytest.raises(ValueError, match="gguf cannot hold the int8-channel scheme"):
        export_checkpoint(block_dir, "gguf", tmp_path / "a.gguf", scheme="int8-channel")
    with pytest.raises(ValueError, match="rows of 48 values cannot be split into q8_0 blocks"):
        export_checkpoint(tiny_st_dir, "gguf", tmp_path / "a.gguf", scheme="int8")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.model is missing"):
        export_checkpoint(tiny_st_dir, "gguf", tmp_path / "a.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"], "no partial files left behind"


def test_export_cli(block_dir, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert cli_main(["export", "gguf", "--model", str(block_dir), "--scheme", "int4", "-o", str(out)]) == 0
    assert out.exists() and capsys.readouterr().out.strip() == str(out)
    assert cli_main(["export", "gguf", "--model", str(block_dir), "--scheme", "int4", "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_quantized_embedder_runs_onnx_and_caches_the_conversion(
    block_dir, block_embedder, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        int4 = Embedder.from_pretrained(block_dir, quantize="int4", num_threads=1, tokenizer="tokenizers")
    assert "no conversion cached yet" in caplog.text
    reference = qat.quantize_weights_(copy.deepcopy(block_embedder.model), "int4")
    expected = Embedder(reference, block_embedder.tokenizer, block_embedder.prompts).encode_query(TEXTS)
    got = int4.encode_query(TEXTS)
    assert (got * expected).sum(1).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    raw = int4.encode_query(TEXTS, normalize=False, dim=48)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)

    entry = cache_entry(block_dir, "int4", tmp_path / "cache" / "embeddinggemma" / "quantized")
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = Embedder.from_pretrained(block_dir, quantize="int4", tokenizer="tokenizers")
    assert caplog.text == "", "a valid cache is used silently"
    np.testing.assert_array_equal(again.encode_query(TEXTS), got)

    model_file = entry / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:-10] + b"0123456789")  # corrupt in place
    with caplog.at_level("WARNING"):
        load_quantized(block_dir, "int4")
    assert "does not match its recorded SHA-256" in caplog.text
    caplog.clear()
    weights = block_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the checkpoint changed
    with caplog.at_level("WARNING"):
        load_quantized(block_dir, "int4")
    assert "changed since it was converted (stale)" in caplog.text
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    assert manifest["scheme"] == "int4" and len(manifest["sha256"]) == 64


def test_quantized_embedder_bad_requests(block_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="unknown quantization scheme 'int5'"):
        Embedder.from_pretrained(block_dir, quantize="int5")
    with pytest.raises(ValueError, match="CPU path"):
        Embedder.from_pretrained(block_dir, quantize="int8", dtype="bfloat16")
    assert not (tmp_path / "cache").exists(), "nothing converted for a refused request"


def test_per_channel_runtime_holds_any_shape(tiny_st_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))
    int8 = Embedder.from_pretrained(tiny_st_dir, quantize="int8-channel")  # rows of 48: no blocks of 32
    assert int8.encode_query(TEXTS).shape == (4, 40)
    w8a8 = Embedder.from_pretrained(tiny_st_dir, quantize="w8a8")
    assert (w8a8.encode_query(TEXTS) * int8.encode_query(TEXTS)).sum(1).min() >= 0.99
    with pytest.raises(ValueError, match="rows of 48 values cannot be split into q8_0 blocks"):
        Embedder.from_pretrained(tiny_st_dir, quantize="int8")
    with pytest.raises(ValueError, match="quantized model"):
        int8.save(tmp_path / "out")
