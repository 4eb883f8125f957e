"""ONNX export: one graph from token ids to the sentence embedding, built operator by operator.

Inputs `input_ids` and `attention_mask` (int64, (batch, sequence), right padding); one output
`sentence_embedding` (float32, (batch, 768)): the encoder, mean pooling, both Dense projections and
L2 normalisation are inside the graph, as in sentence-transformers' ONNX exports.

The graph is written from the weights, not traced: a traced Gemma layer is ~80 small shape and
elementwise nodes, and on a short query ONNX Runtime spent more time running those than in the
matrix products. Here norms and RoPE are opset 23's fused `RMSNormalization` and `RotaryEmbedding`,
`Gelu` is tanh, q/k/v and gate/up are one matrix product each (not w8a8's: `linears`), and the two
attention masks are built once for all layers as additive biases. Attention is written as MatMul ->
Add bias -> Softmax -> MatMul, a KV head's query heads stacked into one product (its scale folded into
the q norm; with one kv head q is normed and rotated in that layout, `layer`): on ONNX
Runtime 1.32 the first such graph (one query head at a time) ran the benchmark's passages ~20% faster
than opset 23's `Attention` operator and held ~30 MB less activation memory on a 1,079-token text;
`GraphBuilder.attention` says what stacking, query chunks and the band add. Under 50 nodes per layer.

Quantized schemes keep our exact integer weights and scales (from `quant/qat.py`, the same numbers
the fake-quantized model trained with) in ONNX Runtime's weight-only operators:
- Q4_0 / Q8_0 linear layers -> `com.microsoft.MatMulNBits` (bits 4 or 8, blocks of 32, symmetric:
  the default zero point 2**(bits-1) turns the stored unsigned values back into q);
- the embedding table -> `com.microsoft.GatherBlockQuantized` (rows gathered, then dequantized);
- per-channel int8 -> `DequantizeLinear` (axis = output channel) feeding the MatMul.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embeddinggemma.model import EmbeddingGemma, EncoderLayer, RMSNorm, rotary_cos_sin
from embeddinggemma.quant.formats import Layout
from embeddinggemma.quant.qat import QuantizedEmbedding, QuantizedLinear, _QuantModule
from embeddinggemma.quant.token_table import (
    METADATA_KEY,
    TOKEN_EMBEDDINGS,
    TableFormat,
    encode_records,
    pack_unsigned,
)

logger = logging.getLogger(__name__)

OPSET = 23  # RMSNormalization and RotaryEmbedding arrived in opset 23
IR_VERSION = 10  # ONNX Runtime >= 1.20 reads it
MS_DOMAIN = "com.microsoft"
# sliding layers of a long text score their queries in this many chunks, each against its window's keys
BAND_CHUNKS = 8
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"
# MatMulNBits accuracy_level: 0 = compute in fp32 from dequantized weights; 4 = int8 activations
# per block, int8 dot products (VNNI/AMX). Chosen per file at export time.
ACCURACY_FP32, ACCURACY_INT8 = 0, 4
SHARED_CONSTANT_SIZE = 16  # initializers of at most this many elements are written once per graph


def build_onnx(
    model: EmbeddingGemma,
    accuracy_level: int = ACCURACY_FP32,
    normalize: bool = True,
    consume: bool = False,
    int8_activations: bool = False,
    token_table: TableFormat | None = None,
    low_memory: bool = False,
    banded: bool = False,
):
    """The ONNX model (onnx.ModelProto) of a float or converted (`qat.convert_`) EmbeddingGemma.

    `normalize=False` leaves the L2 normalisation out (the Embedder's runtime normalises itself);
    `consume=True` frees each of `model`'s weights once the graph holds it (one copy of the weights
    in memory instead of two; the model is unusable afterwards); `int8_activations` (the w8a8 scheme:
    per-channel int8 weights) rounds every encoder product's input to int8 per token and multiplies
    integers (`MatMulIntegerToFloat`, ONNX Runtime's int8 GEMM: VNNI / AMX; the pooled embedding's two
    projections become one float product, `GraphBuilder.head_as_one`); `token_table` (from
    `write_token_table`) leaves the embedding table out: the graph takes `token_embeddings` (B, T, C)
    instead of `input_ids`, and records where its table is in its metadata (the CPU runtime's graph);
    `low_memory` scores attention one chunk of query tokens at a time (`GraphBuilder.attention`);
    `banded` scores a long text's sliding layers against each query chunk's window only, behind an `If`
    (`GraphBuilder.banded_attention`; ONNX Runtime gains, OpenVINO loses: exports leave it out).
    """
    builder = GraphBuilder(
        model,
        accuracy_level,
        consume=consume,
        int8_activations=int8_activations,
        low_memory=low_memory,
        banded=banded,
    )
    return builder.build(normalize, token_table)


def write_token_table(model: EmbeddingGemma, path: Path) -> TableFormat:
    """The embedding table as `token_table.TokenTable` reads it (temporary file, then renamed)."""
    module, config = model.encoder.embed_tokens, model.encoder.config
    if isinstance(module, QuantizedEmbedding):
        values, scales = module.qweight.numpy(), module.scale.float().numpy()
        bits, block = module.layout.bits, module.layout.block or 0
    else:
        values, scales, bits, block = module.weight.detach().float().numpy(), None, 32, 0
    rows, cols = values.shape
    table = TableFormat(Path(path).name, rows, cols, bits, block, float(np.float32(config.embed_scale)))
    partial = Path(path).with_name(Path(path).name + ".partial")
    try:
        with open(partial, "wb") as handle:
            for start in range(0, rows, 8192):  # bounded temporaries for the 262k-row table
                part = None if scales is None else scales[start : start + 8192]
                handle.write(encode_records(values[start : start + 8192], part, table))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return table


def _all_nodes(nodes: list) -> list:
    """The nodes and, recursively, those of their subgraphs (`If` branches)."""
    found = []
    for node in nodes:
        found.append(node)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                found.extend(_all_nodes(list(attribute.g.node)))
    return found


@dataclass(frozen=True)
class _Weight:
    """One linear layer's weight as the graph stores it: integers and scales, or a float matrix."""

    layout: Layout | None  # None: float
    values: torch.Tensor  # q (N, K) int8, or the float weight (N, K)
    scale: torch.Tensor | None
    bias: torch.Tensor | None

    def joins(self, other: _Weight) -> bool:
        """Whether both can be one matrix product (same storage, no bias to split)."""
        return self.layout == other.layout and self.bias is None and other.bias is None


class GraphBuilder:
    """Writes the nodes and initializers of one EmbeddingGemma graph (`build`)."""

    def __init__(
        self,
        model: EmbeddingGemma,
        accuracy_level: int = ACCURACY_FP32,
        consume: bool = False,
        int8_activations: bool = False,
        low_memory: bool = False,
        banded: bool = False,
    ) -> None:
        fake = [
            name
            for name, module in model.named_modules()
            if isinstance(module, _QuantModule) and not isinstance(module, QuantizedLinear | QuantizedEmbedding)
        ]
        if fake:
            raise ValueError(
                f"the model still has fake-quantized modules ({fake[0]}, ...): convert it first (qat.convert_)"
            )
        self.model = model
        self.config = model.encoder.config
        self.accuracy_level = accuracy_level
        self.consume = consume
        self.int8_activations = int8_activations
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self._shared: dict[tuple, str] = {}  # small constant's (dtype, shape, bytes) -> its initializer
        self._one = self.constant("one", np.float32(1.0))
        self._tiny = self.constant("tiny", np.float32(1e-30))  # an all-zero token's scale: its values stay 0
        self._zero_u8 = self.constant("zero_point", np.uint8(128))
        self._row_zero_points: dict[int, str] = {}  # rank -> zero point (..., 1) for quantize_rows
        # written by positions_and_masks, read by attention: score shapes, query chunk sizes (tokens, rows),
        # each kind's bias (whole, chunks), whether the text is long and the band's chunk bounds
        self._score_shapes: tuple[str, str] = ("", "")
        self._chunk_tokens = self._chunk_rows = self._long = ""
        self._biases: dict[str, tuple[str, list[str]]] = {}
        self._band: list[list[str]] = []
        self._head_positions = self._rows_shape = ""
        self.group = self.config.num_attention_heads // self.config.num_key_value_heads  # query heads per kv head
        self.query_chunks = self.group if low_memory else 1
        self.banded = banded

    # -- plumbing ---------------------------------------------------------------------------------

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, value) -> str:
        """An initializer holding `value`. Small ones (scalars, shapes, axes: every layer and product
        asks for the same few) are written once and shared."""
        from onnx import numpy_helper

        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        array = np.ascontiguousarray(array)  # (scalars become shape (1,), as ONNX Runtime has always read them)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= SHARED_CONSTANT_SIZE else None
        if key in self._shared:
            return self._shared[key]
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._shared[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, domain: str = "", **attributes):
        from onnx import helper

        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain or None, **attributes))
        return names[0] if outputs == 1 else names

    def _release(self, module: nn.Module) -> None:
        if self.consume:
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                tensor.data = torch.empty(0, dtype=tensor.dtype)

    # -- the network --------------------------------------------------------------------------------

    def build(self, normalize: bool = True, token_table: TableFormat | None = None):
        from onnx import TensorProto, helper

        config = self.config
        ids, mask = INPUTS
        if token_table is None:
            hidden = self.embedding(ids)
            inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in INPUTS]
        else:  # rows looked up outside the graph (token_table.TokenTable), already times sqrt(hidden)
            hidden = TOKEN_EMBEDDINGS
            inputs = [
                helper.make_tensor_value_info(hidden, TensorProto.FLOAT, ["batch", "sequence", config.hidden_size]),
                helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "sequence"]),
            ]
        positions = self.positions_and_masks(mask)
        rope = {
            "full_attention": self.rope_tables("rope_global", config.rope_theta),
            "sliding_attention": self.rope_tables("rope_local", config.rope_local_base_freq),
        }
        for index, layer in enumerate(self.model.encoder.layers):
            hidden = self.layer(layer, index, hidden, positions, rope[layer.layer_type], layer.layer_type)
        hidden = self.rms_norm(hidden, self.model.encoder.norm)
        out = self.mean_pool(hidden, mask)
        if self.int8_activations and len(self.model.dense):
            out = self.matmul(out, self.head_as_one())
        else:
            for dense in self.model.dense:
                (out,) = self.linears(out, [dense], rank=2)
        if normalize:  # F.normalize: x / max(|x|, 1e-12)
            length = self.op("ReduceL2", [out, self.constant("axes", np.array([-1]))], keepdims=1)
            norm = self.op("Max", [length, self.constant("eps", np.float32(1e-12))])
            out = self.op("Div", [out, norm])
        self.nodes[-1].output[0] = OUTPUT
        used = {name for node in _all_nodes(self.nodes) for name in node.input}
        self.initializers = [tensor for tensor in self.initializers if tensor.name in used]
        graph = helper.make_graph(
            self.nodes,
            "embeddinggemma",
            inputs,
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", self.model.config.embedding_dim])],
            initializer=self.initializers,
        )
        opsets = [helper.make_opsetid("", OPSET)]
        if any(node.domain == MS_DOMAIN for node in self.nodes):
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="embeddinggemma")
        proto.ir_version = IR_VERSION
        if token_table is not None:
            helper.set_model_props(proto, {METADATA_KEY: token_table.to_json()})
        return proto

    def embedding(self, ids: str) -> str:
        """Token rows times sqrt(hidden) (the encoder's `embed`, in fp32)."""
        module = self.model.encoder.embed_tokens
        if isinstance(module, QuantizedEmbedding):
            rows = self._quantized_rows(module, ids)
        else:
            rows = self.op("Gather", [self.constant("embed_tokens", module.weight.float()), ids])
        self._release(module)
        return self.op("Mul", [rows, self.constant("embed_scale", np.float32(self.config.embed_scale))])

    def _quantized_rows(self, module: QuantizedEmbedding, ids: str) -> str:
        layout, q, scale = module.layout, module.qweight, module.scale
        if layout.block is None:  # per-row int8 table: gather int8 rows and their scales, multiply
            rows = self.op("Cast", [self.op("Gather", [self.constant("embed_q", q), ids])], to=1)
            scales = self.op("Gather", [self.constant("embed_scale_rows", scale.float().reshape(-1, 1)), ids])
            return self.op("Mul", [rows, scales])
        return self.op(
            "GatherBlockQuantized",
            [
                self.constant("embed_q", pack_unsigned(q.numpy(), layout.bits)),
                ids,
                self.constant("embed_s", scale.float()),
            ],
            domain=MS_DOMAIN,
            bits=layout.bits,
            block_size=layout.block,
            gather_axis=0,
            quantize_axis=1,
        )

    def positions_and_masks(self, mask: str) -> str:
        """Positions (B, T); writes what every layer's `attention` reads: one additive bias per attention
        kind, the score shapes, the query chunks and the band geometry.

        Full layers see every real key, sliding layers the real keys within the window: 0 where a query
        sees a key, -inf where not, shaped to broadcast over the scores as `attention` views them:
        (B, T, 1, T) with one kv head, (B, 1, T, 1, T) with several. Every row also sees itself, so a
        padding row far from the text never has all keys masked (a NaN there would reach the real rows
        through 0 * NaN in the next layer)."""
        shape = self.op("Shape", [mask])  # (B, T)
        length = self.op("Gather", [shape, self.constant("axis1", np.int64(1))])
        index = self.op("Range", [self.constant("zero", np.int64(0)), length, self.constant("one", np.int64(1))])
        positions = self.op("Expand", [self.op("Unsqueeze", [index, self.constant("axes0", np.array([0]))]), shape])
        tokens = self.op("Slice", [shape, *(self.constant(n, np.array([v])) for n, v in (("one", 1), ("two", 2)))])
        group = self.constant("group", np.array([self.group]))
        if self.config.num_key_value_heads == 1:  # for `layer`'s q: (B * T, G) positions, the rows' shape
            per_head = self.op("Unsqueeze", [positions, self.constant("axes2", np.array([2]))])
            per_head = self.op("Expand", [per_head, self.constant("heads_1d", np.array([1, 1, self.group]))])
            self._head_positions = self.op("Reshape", [per_head, self.constant("per_head", np.array([-1, self.group]))])
            batch = self.op("Slice", [shape, *(self.constant(n, np.array([v])) for n, v in (("zero", 0), ("one", 1)))])
            self._rows_shape = self.op(
                "Concat", [batch, self.constant("rows", np.array([-1, self.config.head_dim]))], axis=0
            )
        keys = self.op("Cast", [self.op("Unsqueeze", [mask, self.constant("axes1", np.array([1]))])], to=9)
        rows = self.op("Unsqueeze", [index, self.constant("axes1", np.array([1]))])
        distance = self.op("Abs", [self.op("Sub", [rows, index])])  # (T, T)
        radius = self.config.window_radius
        band = self.op("LessOrEqual", [distance, self.constant("radius", np.int64(radius))])
        diagonal = self.op("Equal", [distance, self.constant("zero", np.int64(0))])
        sliding = self.op("Or", [self.op("And", [keys, band]), diagonal])
        visible = {"full_attention": self.op("Or", [keys, diagonal]), "sliding_attention": sliding}  # (B, T, T)
        zero, hidden = self.constant("zero", np.float32(0.0)), self.constant("hidden", np.float32(-np.inf))

        several = self.config.num_key_value_heads > 1
        self._score_shapes = self.score_shapes(tokens)
        chunks = self.query_chunks
        if chunks > 1:  # chunks of the query tokens, the remainder in the first (chunks may be empty)
            chunk = self.op("Div", [tokens, self.constant("chunks", np.array([chunks]))])
            first = self.op("Sub", [tokens, self.op("Mul", [chunk, self.constant("others", np.array([chunks - 1]))])])
            self._chunk_tokens = self.op("Concat", [first, *[chunk] * (chunks - 1)], axis=0)
            self._chunk_rows = self.op("Mul", [self._chunk_tokens, group])
        for kind, seen in visible.items():
            axes = self.constant("bias_axes", np.array([1, 3] if several else [2]))
            bias = self.op("Unsqueeze", [self.op("Where", [seen, zero, hidden]), axes])
            split = [bias, self._chunk_tokens] if chunks > 1 else None
            self._biases[kind] = (bias, self.op("Split", split, outputs=chunks, axis=1 + several) if split else [bias])

        if not self.banded:
            return positions
        # sliding layers of a long text: BAND_CHUNKS chunks of query tokens, each against the keys within
        # the window of its tokens only (`banded_attention`); worth it once a chunk's key span
        # (T / BAND_CHUNKS + 2 * radius) is shorter than the text
        count, radius_1d = BAND_CHUNKS, self.constant("radius_1d", np.array([radius]))
        threshold = 2 * radius * count // (count - 1)  # T - T / count > 2 * radius
        self._long = self.op("Greater", [length, self.constant("band_threshold", np.int64(threshold))])
        rounded_up = self.op("Add", [tokens, self.constant("count_less_one", np.array([count - 1]))])
        size = self.op("Div", [rounded_up, self.constant("band_chunks", np.array([count]))])  # ceil(T / count)
        starts = self.op("Min", [self.op("Mul", [self.constant("chunk_index", np.arange(count)), size]), tokens])
        ends = self.op("Min", [self.op("Add", [starts, size]), tokens])
        key_starts = self.op("Max", [self.op("Sub", [starts, radius_1d]), self.constant("zero_1d", np.array([0]))])
        key_ends = self.op("Min", [self.op("Add", [ends, radius_1d]), tokens])
        row_starts, row_ends = (self.op("Mul", [bounds, group]) for bounds in (starts, ends))
        ones = self.constant("band_ones", np.ones(count, np.int64))
        self._band = [
            self.op("Split", [bounds, ones], outputs=count, axis=0)
            for bounds in (starts, ends, row_starts, row_ends, key_starts, key_ends)
        ]
        return positions

    def score_shapes(self, keys: str) -> tuple[str, str]:
        """(B, [KV,] T, G, keys) and (B, [KV,] T * G, keys): the scores viewed per head, and stacked."""
        lead = [0, 0] if self.config.num_key_value_heads > 1 else [0]  # batch (and kv head) kept
        return (
            self.op("Concat", [self.constant("grouped", np.array([*lead, -1, self.group])), keys], axis=0),
            self.op("Concat", [self.constant("stacked", np.array([*lead, -1])), keys], axis=0),
        )

    def rope_tables(self, hint: str, base: float) -> tuple[str, str]:
        """cos/sin caches (max positions, head_dim / 2), the same fp32 numbers as the model's tables."""
        positions = torch.arange(self.config.max_position_embeddings)[None]
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, base, torch.float32)
        half = self.config.head_dim // 2
        return self.constant(f"{hint}_cos", cos[0, 0, :, :half]), self.constant(f"{hint}_sin", sin[0, 0, :, :half])

    def layer(self, layer: EncoderLayer, index: int, x: str, positions: str, rope: tuple[str, str], kind: str) -> str:
        config, attn = self.config, layer.self_attn
        heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        q, k, v = self.linears(self.rms_norm(x, layer.input_layernorm), [attn.q_proj, attn.k_proj, attn.v_proj])
        # the score scale is folded into the q norm's weight (RoPE is linear; 1/16 here: exact in fp32)
        if kv_heads == 1:  # k is one head as it is; q's heads are normed and rotated as (B * T, G, D)
            # (ONNX Runtime's RoPE wants the sequence axis no longer than its tables: heads there, not T * G)
            by_head = self.op("Reshape", [q, self.constant("by_head", np.array([-1, heads, head_dim]))])
            by_head = self.rotate(self.rms_norm(by_head, attn.q_norm, times=attn.scale), self._head_positions, rope, 1)
            q = self.op("Reshape", [by_head, self._rows_shape])  # (B, T * G, D): `attention`'s rows
            k = self.rotate(self.rms_norm(k, attn.k_norm), positions, rope, 1)
        else:
            q = self.rotate(self.rms_norm(q, attn.q_norm, head_dim, times=attn.scale), positions, rope, heads)
            k = self.rotate(self.rms_norm(k, attn.k_norm, head_dim), positions, rope, kv_heads)
        (out,) = self.linears(self.attention(q, k, v, kind, kv_heads, heads // kv_heads, head_dim), [attn.o_proj])
        x = self.op("Add", [x, self.rms_norm(out, layer.post_attention_layernorm)])
        normed = self.rms_norm(x, layer.pre_feedforward_layernorm)
        gate, up = self.linears(normed, [layer.mlp.gate_proj, layer.mlp.up_proj])
        (down,) = self.linears(self.op("Mul", [self.op("Gelu", [gate], approximate="tanh"), up]), [layer.mlp.down_proj])
        logger.debug("layer %d written (%s)", index, config.layer_types[index])
        return self.op("Add", [x, self.rms_norm(down, layer.post_feedforward_layernorm)])

    def attention(self, q: str, k: str, v: str, kind: str, kv_heads: int, group: int, head_dim: int) -> str:
        """softmax(q k^T + bias) v, q already scaled: query head h reads kv head h // group (as the model's
        repeat of the kv heads). k, v: (B, T, KV * D); q: (B, T * G, D) rows with one kv head (`layer`
        writes them), else (B, T, heads * D).

        A kv head's query heads are stacked as rows ordered (token, head), so one product scores them
        all: larger GEMMs than one head at a time (passages ~6% faster, short queries ~15%), and with one
        kv head no transpose of q or of the output. That holds G heads' scores at once; with
        `query_chunks` the rows go in chunks of tokens, one chunk's scores live at a time (`group` chunks:
        as many as one head's; 19 MB less for a 1,079-token text, for the same speed on int4 weights).
        Sliding layers of a text longer than the band threshold take `banded_attention` instead."""
        if kv_heads == 1:
            rows = q  # B, T*G, D
            keys_t = self.op("Transpose", [k], perm=[0, 2, 1])  # B, D, T
            values = v  # B, T, D
        else:
            by_kv = self.constant("by_kv", np.array([0, 0, kv_heads, -1]))
            per_token = self.op("Transpose", [self.op("Reshape", [q, by_kv])], perm=[0, 2, 1, 3])  # B, KV, T, G*D
            rows = self.op("Reshape", [per_token, self.constant("rows", np.array([0, 0, -1, head_dim]))])
            keys_t = self.op("Transpose", [self.op("Reshape", [k, by_kv])], perm=[0, 2, 3, 1])  # B, KV, D, T
            values = self.op("Transpose", [self.op("Reshape", [v, by_kv])], perm=[0, 2, 1, 3])  # B, KV, T, D
        token_axis = 1 if kv_heads == 1 else 2
        whole_bias, bias_chunks = self._biases[kind]
        if kind == "sliding_attention" and self.banded:
            banded = self.branch("banded", lambda: self.banded_attention(rows, keys_t, values, whole_bias, token_axis))
            full = self.branch("full", lambda: self.chunked_attention(rows, keys_t, values, bias_chunks, token_axis))
            joined = self.op("If", [self._long], then_branch=banded, else_branch=full)
        else:
            joined = self.chunked_attention(rows, keys_t, values, bias_chunks, token_axis)
        if kv_heads == 1:
            return self.op("Reshape", [joined, self.constant("flat", np.array([0, -1, group * head_dim]))])
        by_token = self.op("Reshape", [joined, self.constant("tokens", np.array([0, 0, -1, group * head_dim]))])
        merged = self.op("Transpose", [by_token], perm=[0, 2, 1, 3])  # B, T, KV, G*D
        return self.op("Reshape", [merged, self.constant("flat", np.array([0, 0, -1]))])

    def scaled_product(self, rows: str, keys_t: str, values: str, bias: str, shapes: tuple[str, str]) -> str:
        """softmax(rows keys_t + bias) values for stacked rows (B, [KV,] R * G, D): (B, [KV,] R * G, D).
        Viewed as (B, [KV,] R, G, keys) the bias (B, [1,] R, 1, keys) broadcasts over the heads."""
        grouped, stacked = shapes
        scores = self.op("Add", [self.op("Reshape", [self.op("MatMul", [rows, keys_t]), grouped]), bias])
        probabilities = self.op("Reshape", [self.op("Softmax", [scores], axis=-1), stacked])
        return self.op("MatMul", [probabilities, values])

    def chunked_attention(self, rows: str, keys_t: str, values: str, bias_chunks: list[str], axis: int) -> str:
        """Every query against every key, the rows (B, [KV,] T * G, D) in `query_chunks` chunks along
        the token `axis`: (B, [KV,] T * G, D)."""
        count = self.query_chunks
        if count == 1:
            return self.scaled_product(rows, keys_t, values, bias_chunks[0], self._score_shapes)
        chunks = self.op("Split", [rows, self._chunk_rows], outputs=count, axis=axis)
        attended = [
            self.scaled_product(chunk, keys_t, values, bias, self._score_shapes)
            for chunk, bias in zip(chunks, bias_chunks, strict=True)
        ]
        return self.op("Concat", attended, axis=axis)

    def banded_attention(self, rows: str, keys_t: str, values: str, bias: str, axis: int) -> str:
        """A sliding layer of a long text: BAND_CHUNKS chunks of query tokens, each scored against the
        keys of its window only (its tokens +- radius): (T / chunks + 2 radius) keys a row instead of T.
        The keys dropped are those the bias masks anyway, so the result is the same."""
        axes = self.constant("band_axes", np.array([axis]))
        key_axes = self.constant("band_key_axes", np.array([axis + 1]))  # keys_t is (.., D, T)
        bias_axes = self.constant("band_bias_axes", np.array([axis, axis + 2]))
        attended = []
        for start, end, row_start, row_end, key_start, key_end in zip(*self._band, strict=True):
            chunk_rows = self.op("Slice", [rows, row_start, row_end, axes])
            chunk_keys = self.op("Slice", [keys_t, key_start, key_end, key_axes])
            chunk_values = self.op("Slice", [values, key_start, key_end, axes])
            corner = [self.op("Concat", [a, b], axis=0) for a, b in ((start, key_start), (end, key_end))]
            chunk_bias = self.op("Slice", [bias, *corner, bias_axes])
            shapes = self.score_shapes(self.op("Sub", [key_end, key_start]))
            attended.append(self.scaled_product(chunk_rows, chunk_keys, chunk_values, chunk_bias, shapes))
        return self.op("Concat", attended, axis=axis)

    def branch(self, name: str, build: Callable[[], str]):
        """A subgraph (for `If`) of the nodes `build` writes; it reads the outer graph's values."""
        from onnx import TensorProto, helper

        outer, self.nodes = self.nodes, []
        out = build()
        nodes, self.nodes = self.nodes, outer
        return helper.make_graph(
            nodes, self._name(name), [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
        )

    def rms_norm(self, x: str, norm: RMSNorm, head_dim: int | None = None, times: float = 1.0) -> str:
        """Gemma's RMSNorm (x * rsqrt(mean(x^2) + eps) * (1 + w)), times a constant; per head when
        `head_dim` is given."""
        scale = self.constant("norm", (1.0 + norm.weight.detach().float()) * times)
        self._release(norm)
        if head_dim is None:
            return self.op("RMSNormalization", [x, scale], axis=-1, epsilon=norm.eps)
        heads = self.op("Reshape", [x, self.constant("heads", np.array([0, 0, -1, head_dim]))])
        normed = self.op("RMSNormalization", [heads, scale], axis=-1, epsilon=norm.eps)
        return self.op("Reshape", [normed, self.constant("flat", np.array([0, 0, -1]))])

    def rotate(self, x: str, positions: str, rope: tuple[str, str], heads: int) -> str:
        """Half-split RoPE over the whole head (the model's `apply_rotary`) on (B, T, heads * D)."""
        return self.op("RotaryEmbedding", [x, rope[0], rope[1], positions], num_heads=heads, interleaved=0)

    def mean_pool(self, hidden: str, mask: str) -> str:
        """Mean over attended tokens: one (B, 1, T) x (B, T, C) product, divided by the count (>= 1)."""
        weights = self.op("Unsqueeze", [self.op("Cast", [mask], to=1), self.constant("axes1", np.array([1]))])
        summed = self.op("Squeeze", [self.op("MatMul", [weights, hidden]), self.constant("axes1", np.array([1]))])
        count = self.op("ReduceSum", [weights, self.constant("axes2", np.array([2]))], keepdims=0)
        return self.op("Div", [summed, self.op("Max", [count, self._one])])

    # -- linear layers ------------------------------------------------------------------------------

    def head_as_one(self) -> _Weight:
        """The pooled embedding's projections (no activation between them) as one float matrix, their
        dequantized weights multiplied out in float64: w8a8's head, with an fp32 input.

        Rounding the mean of a text's tokens to int8 cost w8a8 a worst cosine to fp32 of 0.9923 against
        0.997 (real model, 48 passages). Dequantized 768 x 3072 and 3072 x 768 weights would read 19 MB
        a call (ONNX Runtime would also fuse DequantizeLinear + MatMul into `MatMulNBits`, which rounds
        the input to int8 again); their product is 768 x 768, half the int8 pair's bytes."""
        weight = bias = None
        for dense in self.model.dense:  # nn.Linear, or QuantizedLinear (its `weight` is dequantized)
            matrix = dense.weight.detach().double()
            weight = matrix if weight is None else matrix @ weight
            bias = None if bias is None else matrix @ bias
            if dense.bias is not None:
                bias = dense.bias.detach().double() if bias is None else bias + dense.bias.detach().double()
            self._release(dense)
        return _Weight(None, weight.float(), None, None if bias is None else bias.float())

    def linears(self, x: str, modules: list[nn.Module], rank: int = 3) -> list[str]:
        """x times each module's weight; modules stored alike are one product, then split. `rank`: x's
        number of dims (3: hidden states (B, T, K); 2: the pooled embedding (B, K))."""
        weights = [self._weight(module) for module in modules]
        integer = any(self._integer(w) for w in weights)
        integer_input = self.quantize_rows(x, weights[0].values.shape[1], rank) if integer else None
        # integer products stay apart: they share the quantized input, and ONNX Runtime's int8 GEMM then
        # writes each output in place of one joined product's Split copy (w8a8 ~4% faster, A/B)
        if not integer and len(weights) > 1 and all(weights[0].joins(w) for w in weights[1:]):
            sizes = [w.values.shape[0] for w in weights]
            joined = _Weight(
                weights[0].layout,
                torch.cat([w.values for w in weights]),
                None if weights[0].scale is None else torch.cat([w.scale for w in weights]),
                None,
            )
            product = self.matmul(x, joined, integer_input)
            outputs = self.op("Split", [product, self.constant("sizes", np.array(sizes))], outputs=len(sizes), axis=-1)
        else:
            outputs = [self.matmul(x, weight, integer_input) for weight in weights]
        for module in modules:
            self._release(module)
        return outputs

    @staticmethod
    def _weight(module: nn.Module) -> _Weight:
        bias = None if module.bias is None else module.bias.detach().float()
        if isinstance(module, QuantizedLinear):
            return _Weight(module.layout, module.qweight, module.scale, bias)
        return _Weight(None, module.weight.detach().float(), None, bias)

    def _integer(self, weight: _Weight) -> bool:
        """Whether this product multiplies integers (int8 activations and per-channel int8 weights)."""
        return self.int8_activations and weight.layout is not None and weight.layout.block is None

    def quantize_rows(self, x: str, width: int, rank: int) -> tuple[str, str]:
        """x (..., K) of `rank` dims -> (uint8 values with zero point 128, per-token scale (..., 1)):
        symmetric int8, scale = max |x| / 127 per token, so nothing saturates and outlier tokens keep
        their own scale."""
        absmax = self.op("ReduceMax", [self.op("Abs", [x]), self.constant("axes", np.array([-1]))], keepdims=1)
        scale = self.op("Max", [self.op("Mul", [absmax, self.constant("inv127", np.float32(1 / 127))]), self._tiny])
        # blocked QuantizeLinear wants a zero point shaped like the scale. Every product input of one rank
        # has the same leading dims here (hidden states (B, T, K), pooled (B, K)), so one expanded zero
        # point per rank serves them all: 2 nodes fewer per product (~200 of a short query's ~1,400)
        if rank not in self._row_zero_points:
            self._row_zero_points[rank] = self.op("Expand", [self._zero_u8, self.op("Shape", [scale])])
        return self.op("QuantizeLinear", [x, scale, self._row_zero_points[rank]], axis=-1, block_size=width), scale

    def matmul(self, x: str, weight: _Weight, integer_input: tuple[str, str] | None = None) -> str:
        """x @ W.T (+ bias). With int8 activations, `integer_input` is x quantized (`quantize_rows`).

        The per-token scale is multiplied in even before a norm that would cancel it: the norms' eps
        (1e-6) does not scale with it, and some tokens' outputs have a mean square that small (the last
        layer's down projection: 7e-7), so the norm's output size, added to the residual, changes.
        Leaving it out cost a worst cosine of 0.94 on the real model."""
        layout, (rows, cols) = weight.layout, weight.values.shape  # (N out, K in)
        if layout is None:
            out = self.op("MatMul", [x, self.constant("weight_t", weight.values.T.contiguous())])
        elif self._integer(weight):  # uint8 (zero point 128) x int8 -> fp32, weight scales per column
            # the per-token scales (..., 1) go in as A's per-row scale (ONNX Runtime >= 1.24.1 multiplies
            # them in; the w8a8 test checks the arithmetic): no Mul after each product, ~100 nodes fewer
            values, row_scale = integer_input
            out = self.op(
                "MatMulIntegerToFloat",
                [
                    values,
                    self.constant("qweight_t", weight.values.T.contiguous()),
                    row_scale,
                    self.constant("scale", weight.scale.float().reshape(-1)),
                    self._zero_u8,
                ],
                domain=MS_DOMAIN,
            )
        elif layout.block is None:  # per-channel int8: dequantize the transposed weight, then MatMul
            q_t = self.constant("qweight_t", weight.values.T.contiguous())
            scales = self.constant("scale", weight.scale.float().reshape(-1))
            out = self.op("MatMul", [x, self.op("DequantizeLinear", [q_t, scales], axis=1)])
        else:
            blocks = cols // layout.block
            packed = pack_unsigned(weight.values.numpy(), layout.bits)
            packed = packed.reshape(rows, blocks, layout.block * layout.bits // 8)
            out = self.op(
                "MatMulNBits",
                [x, self.constant("qweight", packed), self.constant("scale", weight.scale.float().reshape(-1))],
                domain=MS_DOMAIN,
                K=cols,
                N=rows,
                bits=layout.bits,
                block_size=layout.block,
                accuracy_level=self.accuracy_level,
            )
        return out if weight.bias is None else self.op("Add", [out, self.constant("bias", weight.bias)])


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
