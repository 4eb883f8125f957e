"""Capacity arithmetic for a corpus job: GPU-hours, wall time on N GPUs, and output size per dim and precision.

    python -m embeddinggemma.scale.plan --tokens-per-second 50000 --gpus 8 64 --mean-tokens 256 512

Time is the corpus's tokens over the measured throughput of one GPU (tokens/s, prompt included, from
`benchmarks/gpu.py` on the same GPU and dtype), divided by the GPUs, over `efficiency` (the share of a
worker's time spent embedding; see `benchmarks/scale_ray.py` for how to measure it). Output size is what
`embed_files` writes per row: the embedding column(s), an int64 id and an int32 token count; Parquet adds
little to fixed-size lists of floats or bytes (they do not compress), which `benchmarks/scale_ray.py`
measures on real output.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from embeddinggemma.config import MATRYOSHKA_DIMS
from embeddinggemma.vectors.codes import EMBEDDING_PRECISIONS

__all__ = ["bytes_per_row", "gpu_hours", "plan_markdown", "wall_hours"]

_ID_BYTES = 8  # int64 ids; string ids add their length
_TOKEN_COUNT_BYTES = 4


def embedding_bytes(dim: int, precision: str) -> int:
    if precision not in EMBEDDING_PRECISIONS:
        raise ValueError(f"precision must be one of {list(EMBEDDING_PRECISIONS)}, got {precision!r}")
    return {"float32": 4 * dim, "int8": dim, "binary": -(-dim // 8)}[precision]


def bytes_per_row(dims: Sequence[int], precision: str) -> int:
    """One output row: each dim's column, the id and the token count."""
    return sum(embedding_bytes(d, precision) for d in dims) + _ID_BYTES + _TOKEN_COUNT_BYTES


def gpu_hours(passages: float, mean_tokens: float, tokens_per_second: float) -> float:
    if tokens_per_second <= 0:
        raise ValueError(f"tokens_per_second must be positive, got {tokens_per_second}")
    return passages * mean_tokens / tokens_per_second / 3600


def wall_hours(
    passages: float, mean_tokens: float, tokens_per_second: float, gpus: int, efficiency: float = 1.0
) -> float:
    if gpus < 1 or not 0 < efficiency <= 1:
        raise ValueError(f"need gpus >= 1 and 0 < efficiency <= 1, got {gpus} and {efficiency}")
    return gpu_hours(passages, mean_tokens, tokens_per_second) / gpus / efficiency


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def plan_markdown(
    *,
    passages: float,
    mean_tokens: Sequence[float],
    tokens_per_second: float,
    gpus: Sequence[int],
    efficiency: float = 1.0,
    dims: Sequence[int] = MATRYOSHKA_DIMS,
) -> str:
    """Two Markdown tables: time (GPU-hours and wall hours per GPU count) and output size per dim x precision."""
    walls = " | ".join(f"wall, {g} GPU" + "s" * (g > 1) for g in gpus)
    lines = [
        f"| mean tokens per passage | total tokens | GPU-hours | {walls} |",
        "|---:|---:|---:|" + "---:|" * len(gpus),
    ]
    for tokens in mean_tokens:
        hours = gpu_hours(passages, tokens, tokens_per_second)
        walls = [wall_hours(passages, tokens, tokens_per_second, g, efficiency) for g in gpus]
        lines.append(
            f"| {tokens:g} | {passages * tokens:.3g} | {hours / efficiency:,.1f} | "
            + " | ".join(f"{w:,.1f} h" for w in walls)
            + " |"
        )
    lines += ["", f"| dim | {' | '.join(EMBEDDING_PRECISIONS)} |", "|---:|" + "---:|" * len(EMBEDDING_PRECISIONS)]
    for dim in dims:
        sizes = [_size(passages * bytes_per_row([dim], p)) for p in EMBEDDING_PRECISIONS]
        lines.append(f"| {dim} | {' | '.join(sizes)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens-per-second", type=float, required=True, help="one GPU's measured throughput")
    parser.add_argument("--passages", type=float, default=1e9)
    parser.add_argument("--mean-tokens", type=float, nargs="+", default=[256, 512])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--efficiency", type=float, default=1.0, help="share of worker time spent embedding")
    args = parser.parse_args(argv)
    print(
        plan_markdown(
            passages=args.passages,
            mean_tokens=args.mean_tokens,
            tokens_per_second=args.tokens_per_second,
            gpus=args.gpus,
            efficiency=args.efficiency,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
