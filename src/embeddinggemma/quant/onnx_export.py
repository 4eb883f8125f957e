"""ONNX export: one graph from token ids to the normalised sentence embedding.

Inputs `input_ids` and `attention_mask` (int64, (batch, sequence), right padding); one output
`sentence_embedding` (float32, (batch, 768)): the encoder, mean pooling, both Dense projections and
L2 normalisation are inside the graph, as in sentence-transformers' ONNX exports.

Quantized schemes keep our exact integer weights and scales (from `quant/qat.py`, the same numbers
the fake-quantized model trained with) in ONNX Runtime's weight-only operators:
- Q4_0 / Q8_0 linear layers -> `com.microsoft.MatMulNBits` (bits 4 or 8, blocks of 32, symmetric:
  the default zero point 2**(bits-1) turns the stored unsigned values back into q);
- the embedding table -> `com.microsoft.GatherBlockQuantized` (rows gathered, then dequantized);
- per-channel int8 -> `DequantizeLinear` (axis = output channel) feeding the MatMul.

The float graph is traced once with the dequantized weights; the operators that read a quantized
weight are then found by the weight's values (not by the names the exporter gives its constants) and
replaced, so the quantized graph computes exactly what our quantized model computes, up to the
runtime's float arithmetic.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embeddinggemma.model import EmbeddingGemma, mean_pool
from embeddinggemma.quant.formats import Layout, dequantize
from embeddinggemma.quant.qat import QuantizedEmbedding, QuantizedLinear, quantized_tensors, set_module

logger = logging.getLogger(__name__)

OPSET = 21
LEGACY_OPSET = 17  # the TorchScript exporter's newest well-tested opset
MS_DOMAIN = "com.microsoft"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"
# MatMulNBits accuracy_level: 0 = compute in fp32 from dequantized weights; 4 = int8 activations
# per block, int8 dot products (VNNI/AMX). Chosen per file at export time.
ACCURACY_FP32, ACCURACY_INT8 = 0, 4


class SentenceEmbeddingGraph(nn.Module):
    """Export wrapper: the padded forward with masks built from tensors only (no Python branches)."""

    def __init__(self, model: EmbeddingGemma, normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        config = self.model.encoder.config
        length = input_ids.shape[1]
        idx = torch.arange(length, device=input_ids.device)
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        diagonal = idx[:, None] == idx[None, :]  # every row sees itself: no all-masked softmax rows
        band = (idx[:, None] - idx[None, :]).abs() <= config.window_radius
        masks = {"full_attention": keys | diagonal, "sliding_attention": (keys & band) | diagonal}
        # additive masks built once for all layers (a boolean mask becomes a float (B, 1, T, T) per layer)
        biases = {kind: torch.zeros(mask.shape).masked_fill(~mask, float("-inf")) for kind, mask in masks.items()}
        positions = idx.unsqueeze(0).expand_as(input_ids)
        hidden = self.model.encoder(input_ids, positions, {kind: _attention(bias) for kind, bias in biases.items()})
        return self.model.project(mean_pool(hidden, attention_mask), normalize=self.normalize)


def _attention(mask: torch.Tensor):
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    return attend


def float_copy(model: EmbeddingGemma, inplace: bool = False) -> EmbeddingGemma:
    """A float model computing exactly what `model` computes: quantized modules -> dequantized weights.

    `inplace` swaps the modules of `model` itself (saves a 1.2 GB copy when the model is not needed after).
    """
    out = (model if inplace else copy.deepcopy(model)).float().eval()
    for name, module in list(out.named_modules()):
        if isinstance(module, QuantizedLinear):
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            plain.weight = nn.Parameter(module.weight, requires_grad=False)
            if module.bias is not None:
                plain.bias = nn.Parameter(module.bias.detach().float(), requires_grad=False)
            set_module(out, name, plain)
        elif isinstance(module, QuantizedEmbedding):
            set_module(out, name, nn.Embedding.from_pretrained(module.weight, padding_idx=module.padding_idx))
    return out.requires_grad_(False)


def trace_float_graph(model: EmbeddingGemma, normalize: bool = True):
    """Trace the float graph with dynamic batch and sequence axes -> onnx.ModelProto.

    TorchScript's exporter traces the real model in ~15 s; the dynamo exporter takes minutes (most
    of it converting and folding 1.2 GB of constants), so it is the fallback where the former is gone.
    """
    import io

    import onnx

    graph = SentenceEmbeddingGraph(model, normalize).eval()
    ids = torch.full((2, 9), model.config.backbone.bos_token_id, dtype=torch.long)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    names = {"input_names": list(INPUTS), "output_names": [OUTPUT]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            buffer = io.BytesIO()
            torch.onnx.export(
                graph,
                (ids, mask),
                buffer,
                dynamo=False,
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUTS},
                opset_version=LEGACY_OPSET,
                **names,
            )
            data = buffer.getvalue()
            del buffer  # one 1.2 GB copy at a time
            return onnx.load_from_string(data)
        except (TypeError, RuntimeError, ValueError) as error:  # the TorchScript exporter removed or failing
            logger.info("TorchScript ONNX export unavailable (%s); using the dynamo exporter", error)
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        program = torch.onnx.export(
            graph,
            (ids, mask),
            dynamo=True,
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
            opset_version=OPSET,
            verbose=False,
            **names,
        )
    return program.model_proto


def drop_nan_guards(model_proto):
    """Remove the exporter's `Where(IsNaN(Softmax(x)), 0, Softmax(x))` after every attention softmax.

    The guard is for rows where every key is masked; ours always see themselves (the masks' diagonal),
    so it only costs a (B, H, T, T) tensor and a pass over it per layer."""
    graph = model_proto.graph
    producer = {output: node for node in graph.node for output in node.output}
    nan_checks = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "IsNaN" and getattr(producer.get(node.input[0]), "op_type", None) == "Softmax"
    }
    renamed, dropped = {}, set()
    for node in graph.node:
        if node.op_type == "Where" and node.input[0] in nan_checks and node.input[2] == nan_checks[node.input[0]]:
            renamed[node.output[0]] = node.input[2]
            dropped.add(node.output[0])
    used = {name for node in graph.node if node.output[0] not in dropped for name in node.input}
    keep = [
        node
        for node in graph.node
        if node.output[0] not in dropped and not (node.op_type == "IsNaN" and node.output[0] not in used)
    ]
    for node in keep:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    for output in graph.output:
        output.name = renamed.get(output.name, output.name)
    del graph.node[:]
    graph.node.extend(keep)
    _drop_unused_initializers(graph)
    return model_proto


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _pack_unsigned(q: torch.Tensor, bits: int) -> np.ndarray:
    """Signed values (R, C) -> unsigned with offset 2**(bits-1), nibbles low-first for 4 bits (R, C*bits/8)."""
    unsigned = (q.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8).numpy()
    if bits == 8:
        return unsigned
    return (unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)).astype(np.uint8)


def quantize_graph(model_proto, tensors: dict, accuracy_level: int = ACCURACY_FP32):
    """Replace the float ops that read quantized weights (`qat.quantized_tensors` of the converted model)
    by ONNX Runtime's weight-only quantized ops."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    by_digest: dict[str, tuple[str, str]] = {}  # digest -> (module name, "W" or "WT")
    for name, (_, q, scale) in tensors.items():
        weight = dequantize(q, scale).numpy()
        by_digest.setdefault(_digest(weight), (name, "W"))
        by_digest.setdefault(_digest(weight.T), (name, "WT"))
    initializers = {init.name: init for init in graph.initializer}
    replaced: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        target = _match(node, initializers, by_digest)
        if target is None:
            new_nodes.append(node)
            continue
        name, weight_input = target
        layout, q, scale = tensors[name]
        prefix = name.replace(".", "_")
        if node.op_type == "Gather":
            nodes, inits = _gather_block_quantized(node, prefix, layout, q, scale, helper, numpy_helper)
        else:
            nodes, inits = _quantized_matmul(
                node, weight_input, prefix, layout, q, scale, accuracy_level, helper, numpy_helper
            )
        new_nodes += nodes
        graph.initializer.extend(inits)
        replaced[name] = node.op_type
    missing = sorted(set(tensors) - set(replaced))
    if missing:
        raise RuntimeError(f"ONNX export: no graph operator found for quantized weights {missing[:4]}")
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    if not any(opset.domain == MS_DOMAIN for opset in model_proto.opset_import):
        model_proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model_proto


def _match(node, initializers, by_digest) -> tuple[str, str] | None:
    """(module name, input name of the weight) when `node` reads a quantized weight, else None."""
    if node.op_type not in ("MatMul", "Gemm", "Gather"):
        return None
    position = 0 if node.op_type == "Gather" else 1
    if len(node.input) <= position or node.input[position] not in initializers:
        return None
    from onnx import numpy_helper

    array = numpy_helper.to_array(initializers[node.input[position]])
    if array.ndim != 2 or array.dtype != np.float32:
        return None
    found = by_digest.get(_digest(array))
    if found is None:
        return None
    name, orientation = found
    if node.op_type == "Gather" and orientation != "W":
        return None
    if node.op_type == "MatMul" and orientation != "WT":
        return None
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        if (
            (orientation == "W") != bool(trans_b)
            or any(k in attrs and attrs[k].f != 1.0 for k in ("alpha", "beta"))
            or ("transA" in attrs and attrs["transA"].i)
        ):
            return None
    return name, node.input[position]


def _quantized_matmul(node, weight_input, prefix, layout: Layout, q, scale, accuracy_level, helper, numpy_helper):
    rows, cols = q.shape  # (N out, K in)
    activation = node.input[0]
    out = node.output[0]
    bias = list(node.input[2:3]) if node.op_type == "Gemm" else []
    matmul_out = out if not bias else f"{prefix}_matmul"
    if layout.block is None:
        # per-channel int8: DequantizeLinear over the transposed weight, then a plain MatMul
        weight_t = numpy_helper.from_array(q.T.contiguous().numpy(), f"{prefix}_qweight_t")
        scales = numpy_helper.from_array(scale.float().reshape(-1).numpy(), f"{prefix}_scale")
        dq = helper.make_node("DequantizeLinear", [weight_t.name, scales.name], [f"{prefix}_weight_t"], axis=1)
        nodes = [dq, helper.make_node("MatMul", [activation, f"{prefix}_weight_t"], [matmul_out])]
        inits = [weight_t, scales]
    else:
        blocks = cols // layout.block
        packed = _pack_unsigned(q, layout.bits).reshape(rows, blocks, layout.block * layout.bits // 8)
        weight = numpy_helper.from_array(packed, f"{prefix}_qweight")
        scales = numpy_helper.from_array(scale.float().reshape(-1).numpy(), f"{prefix}_scale")
        nodes = [
            helper.make_node(
                "MatMulNBits",
                [activation, weight.name, scales.name],
                [matmul_out],
                domain=MS_DOMAIN,
                K=cols,
                N=rows,
                bits=layout.bits,
                block_size=layout.block,
                accuracy_level=accuracy_level,
            )
        ]
        inits = [weight, scales]
    if bias:
        nodes.append(helper.make_node("Add", [matmul_out, bias[0]], [out]))
    return nodes, inits


def _gather_block_quantized(node, prefix, layout: Layout, q, scale, helper, numpy_helper):
    if layout.block is None:
        # per-row int8 table: gather int8 rows and their scales, multiply
        table = numpy_helper.from_array(q.numpy(), f"{prefix}_qweight")
        scales = numpy_helper.from_array(scale.float().reshape(-1, 1).numpy(), f"{prefix}_scale")
        ids = node.input[1]
        nodes = [
            helper.make_node("Gather", [table.name, ids], [f"{prefix}_rows"]),
            helper.make_node("Gather", [scales.name, ids], [f"{prefix}_row_scales"]),
            helper.make_node("Cast", [f"{prefix}_rows"], [f"{prefix}_rows_f"], to=1),
            helper.make_node("Mul", [f"{prefix}_rows_f", f"{prefix}_row_scales"], [node.output[0]]),
        ]
        return nodes, [table, scales]
    table = numpy_helper.from_array(_pack_unsigned(q, layout.bits), f"{prefix}_qweight")
    scales = numpy_helper.from_array(scale.float().numpy(), f"{prefix}_scale")
    gather = helper.make_node(
        "GatherBlockQuantized",
        [table.name, node.input[1], scales.name],
        [node.output[0]],
        domain=MS_DOMAIN,
        bits=layout.bits,
        block_size=layout.block,
        gather_axis=0,
        quantize_axis=1,
    )
    return [gather], [table, scales]


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {output.name for output in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def build_onnx(
    model: EmbeddingGemma, accuracy_level: int = ACCURACY_FP32, normalize: bool = True, consume: bool = False
):
    """The ONNX model (onnx.ModelProto) of a float or converted (`qat.convert_`) EmbeddingGemma.

    `normalize=False` leaves the L2 normalisation out (the Embedder's runtime normalises itself);
    `consume=True` lets the export turn `model`'s quantized modules back into float ones (less memory).
    """
    tensors = quantized_tensors(model)
    if not tensors:
        return drop_nan_guards(trace_float_graph(model.float().eval(), normalize))
    traced = drop_nan_guards(trace_float_graph(float_copy(model, inplace=consume), normalize))
    return quantize_graph(traced, tensors, accuracy_level)


def save_onnx(model_proto, path: Path, *, external_data: bool = False) -> None:
    """Write to `path` through temporary files. A single file by default (our quantized graphs are far
    below 2 GB; the fp32 model, ~1.2 GB, is too); `external_data=True` puts the tensors in
    `path.name + ".data"`, each at a 64 KiB-aligned offset, which ONNX Runtime maps into memory instead
    of copying: pages it never reads (most rows of the embedding table) stay on disk."""
    import onnx

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    data = path.with_name(path.name + ".data")
    data_partial = data.with_name(data.name + ".partial")
    try:
        if external_data:
            _write_external_data(model_proto, data_partial, data.name)
            data_partial.replace(data)
        onnx.save_model(model_proto, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
        data_partial.unlink(missing_ok=True)


EXTERNAL_ALIGNMENT = 1 << 16  # the allocation granularity on every platform ONNX Runtime maps files on
EXTERNAL_MIN_BYTES = 1024


def _write_external_data(model_proto, data_path: Path, location: str) -> None:
    """Move every initializer of at least 1 KiB into `data_path` (aligned offsets), in place in `model_proto`."""
    from onnx import TensorProto, numpy_helper
    from onnx.external_data_helper import set_external_data

    offset = 0
    with open(data_path, "wb") as handle:
        for tensor in model_proto.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.nbytes < EXTERNAL_MIN_BYTES:
                continue
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))  # the bytes as raw_data
            offset += -offset % EXTERNAL_ALIGNMENT
            handle.seek(offset)
            handle.write(tensor.raw_data)
            set_external_data(tensor, location, offset=offset, length=len(tensor.raw_data))
            offset += len(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
