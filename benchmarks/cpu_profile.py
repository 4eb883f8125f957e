"""Where a short query's time goes on this CPU, and the floor the hardware sets (issue: 15 ms p50 target).

    HF_HUB_OFFLINE=1 python benchmarks/cpu_profile.py --threads 2

Prints (1) the machine's measured matmul ceilings: fp32 GEMM, and the fp32 and fbgemm int8 linear layers at
the query's real shape (M = query tokens, the model's own weight shapes); (2) the arithmetic floor of one
query = its matmul FLOPs / the measured rate; (3) a torch.profiler breakdown of one query through our fp32
and int8 engines (top operators by self CPU time). If the floor is above the target, no engine reaches
the target on this machine; the breakdown shows how close ours is to the floor and what else costs.
"""

from __future__ import annotations

import argparse
import time

import torch

MODEL = "google/embeddinggemma-300m"
QUERY = "how do I parse command line arguments?"


def rate(fn, flops: float, seconds: float = 1.5) -> float:
    """GFLOP/s of `fn` (warmed up, repeated for ~`seconds`)."""
    for _ in range(3):
        fn()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return flops * runs / (time.perf_counter() - start) / 1e9


def linear_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of every matmul of one layer: q, k, v, o, gate, up, down."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    h, i = c.hidden_size, c.intermediate_size
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-ms", type=float, default=15.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    from embeddinggemma import Embedder

    fp32 = Embedder.from_pretrained(MODEL, device="cpu")
    int8 = Embedder.from_pretrained(MODEL, quantize="int8")
    config = fp32.model.encoder.config
    tokens = len(fp32.tokenizer.encode([fp32.prompts["query"] + QUERY])[0])
    shapes = linear_shapes(config)
    layer_flops = 2 * tokens * sum(i * o for i, o in shapes)
    query_flops = layer_flops * config.num_hidden_layers  # + head projection (~4% more) + attention (tiny at 15)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = rate(lambda: a @ b, 2 * 2048**3)
    x = torch.randn(tokens, config.hidden_size)
    x_mid = torch.randn(tokens, config.intermediate_size)
    fp32_layers = [torch.nn.Linear(i, o, bias=False) for i, o in shapes]
    int8_layers = []
    for layer in fp32_layers:
        q = DynamicInt8Linear(layer.in_features, layer.out_features, bias_=False, dtype=torch.qint8)
        q.set_weight_bias(
            torch.quantize_per_channel(
                layer.weight,
                layer.weight.abs().amax(1) / 127,
                torch.zeros(layer.out_features, dtype=torch.long),
                0,
                torch.qint8,
            ),
            None,
        )
        int8_layers.append(q)

    def run(layers):
        with torch.inference_mode():
            for layer, (i, _) in zip(layers, shapes, strict=True):
                layer(x if i == config.hidden_size else x_mid)

    fp32_linear = rate(lambda: run(fp32_layers), layer_flops)
    int8_linear = rate(lambda: run(int8_layers), layer_flops)
    print(f"CPU threads {args.threads}; query '{QUERY}' = {tokens} tokens with its prompt")
    print(f"matmul FLOPs per query: {query_flops / 1e9:.2f} GFLOP ({config.num_hidden_layers} layers)")
    print(f"{'kernel':<44}{'GFLOP/s':>9}{'floor ms':>10}")
    for name, r in [
        ("fp32 GEMM 2048^3 (the machine's best case)", gemm),
        (f"fp32 linear layers at M={tokens}", fp32_linear),
        (f"int8 fbgemm dynamic linear at M={tokens}", int8_linear),
    ]:
        print(f"{name:<44}{r:>9.1f}{query_flops / r / 1e6:>10.1f}")
    best = max(gemm, fp32_linear, int8_linear)
    floor = query_flops / best / 1e6
    verdict = "below" if floor <= args.target_ms else "ABOVE"
    print(f"floor at the best measured rate: {floor:.1f} ms, {verdict} the {args.target_ms:.0f} ms target\n")

    from torch.profiler import ProfilerActivity, profile

    for name, model in (("fp32", fp32), ("int8", int8)):
        for _ in range(3):
            model.encode_query(QUERY)
        start = time.perf_counter()
        runs = 10
        for _ in range(runs):
            model.encode_query(QUERY)
        ms = (time.perf_counter() - start) / runs * 1000
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model.encode_query(QUERY)
        print(f"## {name}: {ms:.1f} ms per query ({query_flops / ms / 1e6:.1f} GFLOP/s effective)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
