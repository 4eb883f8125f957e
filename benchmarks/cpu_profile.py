"""Where the CPU time of a query and of passages goes, and what the machine's matmul kernels allow.

    HF_HUB_OFFLINE=1 python benchmarks/cpu_profile.py --threads 2

Prints (1) the rate of each matmul kernel an engine could run, on one layer's seven linear layers at the
model's real shapes, for a short query (M = its tokens), a passage of the mean length (240 tokens), a
padded batch of passages (M = 4 x 251 tokens) and the longest passage (1,079 tokens): fp32 and bf16
through PyTorch (oneDNN; AMX where the CPU has it), ONNX Runtime's `MatMulIntegerToFloat` (what
`quantize="w8a8"` runs, with its per-token A scale) and oneDNN's int8 `qlinear_pointwise` through
PyTorch (AMX where present; an input already in int8, output in fp32);
(2) the matmul floor of each workload at the best rate; (3) ONNX Runtime's profile of the `w8a8`
runtime on each workload, summed by operator type. If a kernel here is much faster than the one
`w8a8` runs, an engine built on it could be too; the profile says what share of the time it would touch.

With --compiled (needs a C++ compiler; ~1 minute of compiling per shape) it also times such an engine:
(4) the encoder's layers in PyTorch with int8 weights and per-token int8 activations, compiled by
Inductor with freezing (each product becomes oneDNN's `qlinear_pointwise`, the norms and the per-token
rounding are fused into the kernels around them), attention in fp32 and in bf16, against the `w8a8`
runtime's graph on the same shapes (one mean passage, a passage batch), interleaved. Random weights of
the real shapes, static shapes (a compile per shape); the shapes are under the 512-token sliding
window, so every layer attends to the whole text in both engines.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "google/embeddinggemma-300m"
QUERY = "how do I parse command line arguments?"
BATCH = (4, 251)  # a padded batch of the benchmark's passages (cpu.py), ~1,000 tokens
ONE_PASSAGE = (1, 240)  # the benchmark's mean passage (11,542 tokens / 48), one per call
LONGEST = (1, 1079)  # its longest passage: the sliding layers' band, attention's largest share


def rate(fn, ops: float, seconds: float = 1.5) -> float:
    """G(FL)OP/s of `fn` (warmed up, repeated for ~`seconds`)."""
    for _ in range(3):
        fn()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return ops * runs / (time.perf_counter() - start) / 1e9


def linear_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of every matmul of one layer: q, k, v, o, gate, up, down."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    h, i = c.hidden_size, c.intermediate_size
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def onnxruntime_int8(rows: int, shapes: list[tuple[int, int]], threads: int):
    """One layer's products as w8a8 writes them, in one session: `MatMulIntegerToFloat` of a uint8
    input (zero point 128) with a per-row scale and an int8 weight with a per-column scale."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    fan_ins = sorted({fan_in for fan_in, _ in shapes})
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.UINT8, [rows, k]) for k in fan_ins]
    inputs.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, [rows, 1]))
    weights, nodes, outputs = [numpy_helper.from_array(np.uint8(128), "zero_point")], [], []
    for index, (fan_in, fan_out) in enumerate(shapes):
        weights.append(numpy_helper.from_array(rng.integers(-127, 128, (fan_in, fan_out), dtype=np.int8), f"w{index}"))
        weights.append(numpy_helper.from_array((rng.random(fan_out, dtype=np.float32) + 0.5) / 127, f"s{index}"))
        names = [f"x{fan_in}", f"w{index}", "x_scale", f"s{index}", "zero_point"]
        nodes.append(helper.make_node("MatMulIntegerToFloat", names, [f"y{index}"], domain="com.microsoft"))
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, [rows, fan_out]))
    graph = helper.make_graph(nodes, "layer", inputs, outputs, initializer=weights)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), options)
    feeds = {f"x{k}": rng.integers(0, 256, (rows, k), dtype=np.uint8) for k in fan_ins}
    feeds["x_scale"] = np.full((rows, 1), 0.01, np.float32)
    return lambda: session.run(None, feeds)


def onednn_int8(rows: int, fan_in: int, fan_out: int):
    """oneDNN's int8 linear through PyTorch: int8 input, per-channel int8 weight, fp32 output."""
    weight = torch.ops.onednn.qlinear_prepack(torch.randint(-127, 128, (fan_out, fan_in), dtype=torch.int8), None)
    scales, zero_points = torch.rand(fan_out) / 100 + 1e-3, torch.zeros(fan_out, dtype=torch.int64)
    x = torch.randint(-127, 128, (rows, fan_in), dtype=torch.int8)
    product = torch.ops.onednn.qlinear_pointwise
    return lambda: product(x, 1.0, 0, weight, scales, zero_points, None, 1.0, 0, torch.float32, "none", [], "")


def kernel_rates(shapes: list[tuple[int, int]], rows: int, threads: int) -> dict[str, float]:
    """G(FL)OP/s of one layer's seven products at `rows` tokens, per kernel."""
    ops = 2 * rows * sum(i * o for i, o in shapes)
    inputs = {fan_in: torch.randn(rows, fan_in) for fan_in, _ in shapes}
    fp32 = [torch.nn.Linear(i, o, bias=False) for i, o in shapes]
    bf16 = [torch.nn.Linear(i, o, bias=False).bfloat16() for i, o in shapes]
    bf16_inputs = {k: v.bfloat16() for k, v in inputs.items()}

    def layers(modules, xs):
        with torch.inference_mode():
            for module, (fan_in, _) in zip(modules, shapes, strict=True):
                module(xs[fan_in])

    out = {
        "fp32 linear (PyTorch)": rate(lambda: layers(fp32, inputs), ops),
        "bf16 linear (PyTorch, oneDNN)": rate(lambda: layers(bf16, bf16_inputs), ops),
    }
    # one session (as the runtime): a session per product would leave each one's threads spinning
    out["int8 MatMulIntegerToFloat (ONNX Runtime, w8a8)"] = rate(onnxruntime_int8(rows, shapes, threads), ops)
    try:
        onednn_products = [onednn_int8(rows, i, o) for i, o in shapes]
        out["int8 qlinear_pointwise (PyTorch, oneDNN)"] = rate(lambda: [p() for p in onednn_products], ops)
    except (RuntimeError, AttributeError) as error:  # a PyTorch build without oneDNN's quantized ops
        print(f"oneDNN int8 not available: {str(error).splitlines()[0]}")
    return out


def runtime_profile(session_path: Path, feeds: dict, threads: int, runs: int = 5) -> tuple[float, list]:
    """ONNX Runtime's own profile of a graph: (ms per run, [(operator type, kernel ms per run)], slowest first)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as directory:  # the profile file is read once, then removed
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(directory) / "profile")
        session = ort.InferenceSession(str(session_path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feeds)
        ms = (time.perf_counter() - start) / runs * 1000
        events = json.loads(Path(session.end_profiling()).read_text())
    by_type: collections.Counter = collections.Counter()
    for event in events:
        # an If's time holds its branch's nodes, which are reported on their own
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["args"]["op_name"] != "If":
            by_type[event["args"]["op_name"]] += event["dur"]
    return ms, [(op, us / (runs + 1) / 1000) for op, us in by_type.most_common()]


class Int8Linear(torch.nn.Module):
    """w8a8's product in PyTorch: x rounded to int8 per token (max |x| / 127), times int8 weights with a
    scale per output channel, through `torch._int_mm` (which Inductor's freezing pass hands to oneDNN)."""

    def __init__(self, weight_t: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight_t", weight_t.to(torch.int8).contiguous())  # (in, out)
        self.register_buffer("scale", scale.reshape(-1).float())

    @classmethod
    def random(cls, fan_in: int, fan_out: int) -> Int8Linear:
        weight_t = torch.randint(-127, 128, (fan_in, fan_out), dtype=torch.int8)
        return cls(weight_t, (torch.rand(fan_out) + 0.5) / 127 / fan_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        row_scale = rows.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
        product = torch._int_mm(torch.round(rows / row_scale).to(torch.int8), self.weight_t)
        return (product.to(torch.float32) * row_scale * self.scale).reshape(*x.shape[:-1], -1)


def compiled_w8a8_encoder(config, batch: tuple[int, int], attention_dtype: torch.dtype = torch.float32):
    """The encoder's layers as a w8a8 engine in PyTorch, compiled by Inductor for one input shape, attention
    in `attention_dtype` (bf16: oneDNN's AMX path where the CPU has it); returns `run(hidden) -> hidden`.
    Inductor's freezing pass matches `_int_mm(int8 x, constant int8 w)` times the two scales and runs it
    as oneDNN's `qlinear_pointwise` on a prepacked weight."""
    import torch._inductor.config as inductor_config
    import torch.nn.functional as F
    from torch import nn

    inductor_config.freezing = True
    c = config
    heads, kv_heads, head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    hidden, intermediate, eps = c.hidden_size, c.intermediate_size, c.rms_norm_eps

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], -1)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # q, k, v as one product and gate, up as one: fewer, larger GEMMs, one rounding each
            self.qkv = Int8Linear.random(hidden, (heads + 2 * kv_heads) * head_dim)
            self.o, self.down = Int8Linear.random(heads * head_dim, hidden), Int8Linear.random(intermediate, hidden)
            self.gate_up = Int8Linear.random(hidden, 2 * intermediate)
            self.norms = nn.ParameterList(nn.Parameter(torch.rand(hidden)) for _ in range(4))
            self.q_norm, self.k_norm = nn.Parameter(torch.rand(head_dim)), nn.Parameter(torch.rand(head_dim))

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
            q, k, v = self.qkv(rms(x, self.norms[0])).split(sizes, -1)
            q = rotate(rms(q.view(b, t, heads, head_dim), self.q_norm).transpose(1, 2), cos, sin)
            k = rotate(rms(k.view(b, t, kv_heads, head_dim), self.k_norm).transpose(1, 2), cos, sin)
            v = v.view(b, t, kv_heads, head_dim).transpose(1, 2)
            q, k, v = q.to(attention_dtype), k.to(attention_dtype), v.to(attention_dtype)
            scale = c.query_pre_attn_scalar**-0.5
            attended = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=scale).float()
            x = x + rms(self.o(attended.transpose(1, 2).reshape(b, t, -1)), self.norms[1])
            gate, up = self.gate_up(rms(x, self.norms[2])).chunk(2, dim=-1)
            return x + rms(self.down(F.gelu(gate, approximate="tanh") * up), self.norms[3])

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(c.num_hidden_layers))

        def forward(self, x, cos, sin):
            for layer in self.layers:
                x = layer(x, cos, sin)
            return x

    angles = torch.rand(batch[1], head_dim // 2)
    cos, sin = angles.cos(), angles.sin()
    compiled = torch.compile(Encoder().eval(), dynamic=False)
    return lambda x: compiled(x, cos, sin)


def compare_compiled(runtime, config, shapes: list[tuple[int, int]], rounds: int = 10) -> None:
    """Time the compiled PyTorch w8a8 encoder against the w8a8 runtime's graph, shape by shape."""
    print("\n## candidate engine: compiled PyTorch w8a8 (oneDNN int8, fused) vs the w8a8 runtime (ONNX Runtime)")
    print(f"{'shape':<10}{'attention':>10}{'compile s':>10}{'PyTorch ms':>12}{'ONNX Runtime ms':>17}{'ratio':>8}")
    for batch in shapes:
        for attention_dtype in (torch.float32, torch.bfloat16):
            compare_compiled_shape(runtime, config, batch, attention_dtype, rounds)


def compare_compiled_shape(runtime, config, batch: tuple[int, int], attention_dtype: torch.dtype, rounds: int) -> None:
    """One shape: compile, then time both engines in interleaved rounds; the ratio is the median over
    rounds of the runtime's time over PyTorch's (> 1: the compiled engine is faster)."""
    start = time.perf_counter()
    encoder = compiled_w8a8_encoder(config, batch, attention_dtype)
    hidden = torch.randn(*batch, config.hidden_size)

    def ours() -> None:
        with torch.no_grad():
            encoder(hidden)

    ours()
    compile_s = time.perf_counter() - start
    ids, mask = np.full(batch, 2, np.int64), np.ones(batch, np.int64)
    first = ids if runtime.token_table is None else runtime.token_table.lookup(ids)
    feeds = dict(zip(runtime.input_names, (first, mask), strict=True))
    engines = {"torch": ours, "onnxruntime": lambda: runtime.session.run(None, feeds)}
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(rounds + 2):
        for name in engines if round_ % 2 == 0 else list(engines)[::-1]:
            time.sleep(0.1)  # let the other engine's threads go idle
            start = time.perf_counter()
            engines[name]()
            if round_ >= 2:  # two warm-up rounds
                seconds[name].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(seconds["torch"], seconds["onnxruntime"], strict=True)]
    torch_ms, ort_ms = (1000 * statistics.median(seconds[name]) for name in engines)
    shape, dtype = f"{batch[0]} x {batch[1]}", str(attention_dtype).removeprefix("torch.")
    print(f"{shape:<10}{dtype:>10}{compile_s:>10.0f}{torch_ms:>12.1f}{ort_ms:>17.1f}{statistics.median(ratios):>7.2f}x")
    with torch.no_grad(), torch.profiler.profile() as profile:
        encoder(hidden)
    kernels = {event.key: event.self_cpu_time_total / 1000 for event in profile.key_averages()}
    products = kernels.get("onednn::qlinear_pointwise", 0.0)
    attention = sum(ms for key, ms in kernels.items() if "scaled_dot_product" in key)
    rest = sum(kernels.values()) - products - attention
    print(
        f"{'':<10}PyTorch's profile: int8 products {products:.1f} ms, attention {attention:.1f} ms, "
        f"the rest (compiled elementwise kernels) {rest:.1f} ms"
    )


def compiled_w8a8_model(attention_dtype: torch.dtype = torch.bfloat16):
    """The real checkpoint as that engine: w8a8's weights (int8 per channel; the head's projections
    dequantized, fp32 input, as the runtime graph), attention in `attention_dtype`, compiled once with
    dynamic shapes (texts have any length); `run(token_embeddings, attention_mask) -> embeddings`."""
    import torch._inductor.config as inductor_config
    import torch.nn.functional as F

    from embeddinggemma.checkpoint import load_checkpoint
    from embeddinggemma.engine.forward import padded_position_ids
    from embeddinggemma.engine.masks import padded_masks
    from embeddinggemma.model import mean_pool, rope_tables
    from embeddinggemma.quant.qat import quantize_weights_, quantized_tensors

    inductor_config.freezing = True
    model, _ = load_checkpoint(MODEL, dtype=torch.float32)
    quantize_weights_(model, "w8a8")
    for name, (_, integers, scale) in quantized_tensors(model).items():
        if name.startswith("encoder.layers."):
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, Int8Linear(integers.t(), scale))
    model.encoder.embed_tokens = None  # the rows come from the runtime's token table

    def attention(mask):
        def attend(q, k, v, scale):
            q, k, v = q.to(attention_dtype), k.to(attention_dtype), v.to(attention_dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True).float()

        return attend

    class Engine(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            encoder = self.model.encoder
            rope = rope_tables(encoder.config, padded_position_ids(attention_mask), torch.float32)
            masks = padded_masks(attention_mask, encoder.config)
            for layer in encoder.layers:
                cos, sin = rope[layer.layer_type]
                hidden = layer(hidden, cos, sin, attention(masks[layer.layer_type]))
            pooled = mean_pool(encoder.norm(hidden), attention_mask)
            return self.model.project(pooled, normalize=False)

    compiled = torch.compile(Engine().eval(), dynamic=True)

    def run(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compiled(torch.from_numpy(hidden), torch.from_numpy(attention_mask)).numpy()

    return run


def compare_compiled_real(w8a8, corpus: Path | None, passes: int = 4) -> None:
    """The benchmark's 48 passages one per call through the compiled real model and through the `w8a8`
    runtime, interleaved passes; the same token-table rows go into both."""
    from cpu import DOCUMENT_PROMPT, passages
    from embeddinggemma.quant.ondevice import pad_rows

    runtime = w8a8.session
    texts = passages(corpus)
    rows = [
        pad_rows([ids], w8a8.tokenizer.pad_id) for ids in w8a8.tokenizer.encode([DOCUMENT_PROMPT + t for t in texts])
    ]
    start = time.perf_counter()
    compiled = compiled_w8a8_model()
    ours = np.concatenate([compiled(runtime.token_table.lookup(ids), mask) for ids, mask in rows])
    compile_s = time.perf_counter() - start
    theirs = np.concatenate([runtime.run(ids, mask) for ids, mask in rows])
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    engines = {
        "torch": lambda ids, mask: compiled(runtime.token_table.lookup(ids), mask),
        "onnxruntime": runtime.run,
    }
    speed: dict[str, list[float]] = {name: [] for name in engines}
    for pass_ in range(passes):
        for name in engines if pass_ % 2 == 0 else list(engines)[::-1]:
            time.sleep(0.2)
            start = time.perf_counter()
            for ids, mask in rows:
                engines[name](ids, mask)
            speed[name].append(len(rows) / (time.perf_counter() - start))
    ratio = statistics.median(a / b for a, b in zip(speed["torch"], speed["onnxruntime"], strict=True))
    print(
        f"\n## the real model as that engine (dynamic shapes, bf16 attention), {len(rows)} passages one per call:"
        f"\ncompile and first pass {compile_s:.0f} s; passages/s PyTorch {max(speed['torch']):.2f}, "
        f"ONNX Runtime {max(speed['onnxruntime']):.2f} (best of {passes}); PyTorch / runtime, median over "
        f"passes: {ratio:.2f}x; cosine between the two, worst / mean {cosine.min():.4f} / {cosine.mean():.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compiled", action="store_true", help="also time a compiled PyTorch w8a8 encoder")
    parser.add_argument("--corpus", type=Path, default=None, help="passages for --compiled (as cpu.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from embeddinggemma.quant.ondevice import OnnxEmbedder, OnnxSession, pad_rows

    w8a8 = OnnxEmbedder.from_pretrained(MODEL, quantize="w8a8", num_threads=args.threads)
    runtime: OnnxSession = w8a8.session
    config = w8a8.config.backbone  # the encoder's shapes
    query_ids = w8a8.tokenizer.encode([w8a8.prompts["query"] + QUERY])
    shapes = linear_shapes(config)
    workloads = {
        f"query ({len(query_ids[0])} tokens)": (len(query_ids[0]), pad_rows(query_ids, w8a8.tokenizer.pad_id)),
    }
    for label, shape in (("mean passage", ONE_PASSAGE), ("passage batch", BATCH), ("longest passage", LONGEST)):
        workloads[f"{label} ({shape[0]} x {shape[1]})"] = (
            shape[0] * shape[1],
            (np.full(shape, 2, np.int64), np.ones(shape, np.int64)),
        )
    print(f"CPU threads {args.threads}; products of one layer ({config.num_hidden_layers} layers)")
    for name, (rows, _) in workloads.items():
        rates = kernel_rates(shapes, rows, args.threads)
        model_ops = 2 * rows * sum(i * o for i, o in shapes) * config.num_hidden_layers
        print(f"\n## {name}: {model_ops / 1e9:.1f} G(FL)OP of linear layers")
        print(f"{'kernel':<50}{'GOP/s':>8}{'floor ms':>10}")
        for kernel, value in rates.items():
            print(f"{kernel:<50}{value:>8.0f}{model_ops / value / 1e6:>10.1f}")
    for name, (_, (ids, mask)) in workloads.items():
        first = ids if runtime.token_table is None else runtime.token_table.lookup(ids)
        feeds = dict(zip(runtime.input_names, (first, mask), strict=True))
        ms, by_type = runtime_profile(runtime.path, feeds, args.threads)
        total = sum(value for _, value in by_type)
        print(f"\n## w8a8 runtime, {name}: {ms:.1f} ms a run; kernel time by operator type (ONNX Runtime's profiler):")
        for op, value in by_type[:12]:
            print(f"  {op:<28}{value:>8.1f} ms {100 * value / total:>5.1f}%")
    if args.compiled:
        compare_compiled(runtime, config, [ONE_PASSAGE, BATCH])
        compare_compiled_real(w8a8, args.corpus)


if __name__ == "__main__":
    main()
