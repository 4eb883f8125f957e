"""GPU benchmark: our packed engine against sentence-transformers, one process, random weights of the real
shape (speed does not depend on values), the real tokenizer, the benchmark corpus.

    python ../shared/bench/make_corpus.py corpus.jsonl        # 10,359 CPython stdlib passages
    python benchmarks/gpu.py --checkpoint-files DIR --corpus corpus.jsonl --out results.json

DIR holds the checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
tokenizer.model) and nothing else is needed: the script builds a random real-shape model, saves it in
the sentence-transformers layout so both stacks load the same weights, and measures:
- a bf16 matmul ceiling (8192^3) and MFU = achieved FLOPs / ceiling (2 x 106M FLOPs per token plus
  attention, counted exactly from the texts' lengths);
- corpus tokens/s: sentence-transformers at several batch sizes (its best is the reference) vs ours;
- short queries (8-32 tokens, default 200k): tokens/s for both;
- per-text cosine of our bf16 and fp32 outputs against sentence-transformers' (same dtype).
`--smoke` runs the whole script on CPU with a 2-layer model of the real vocabulary (a check of the
script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from embeddinggemma import Embedder, EmbeddingGemma, EmbeddingGemmaConfig, Gemma3TextConfig
from embeddinggemma.checkpoint import CheckpointInfo, save_checkpoint
from embeddinggemma.prompts import DOCUMENT_PROMPT, QUERY_PROMPT


def random_model(config: EmbeddingGemmaConfig, device: str, seed: int = 0) -> EmbeddingGemma:
    torch.manual_seed(seed)
    with torch.device(device):
        model = EmbeddingGemma(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.3 if "norm" in name else 0.02)
    return model.eval().requires_grad_(False)


def matmul_ceiling(device: str, size: int = 8192) -> float:
    """Measured bf16 dense matmul TFLOP/s on this device."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    runs = 10
    start = time.perf_counter()
    for _ in range(runs):
        a @ b
    _sync(device)
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e12


def model_flops(lengths: list[int], config: Gemma3TextConfig) -> float:
    """Forward FLOPs: 2 x non-embedding params per token + attention (QK^T and PV) per layer type."""
    hidden, heads, head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
    per_layer = (
        hidden * (heads * head_dim * 2 + 2 * config.num_key_value_heads * head_dim)
        + 3 * hidden * config.intermediate_size
    )
    dense = 2 * per_layer * config.num_hidden_layers * sum(lengths)
    attention = 0.0
    for layer_type in config.layer_types:
        for n in lengths:
            keys = n if layer_type == "full_attention" else min(n, 2 * config.window_radius + 1)
            attention += 4 * heads * head_dim * n * keys
    return dense + attention


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def short_queries(corpus: list[str], count: int, seed: int = 0) -> list[str]:
    """Queries of 8-32 tokens made of corpus words (deterministic)."""
    words = [w for text in corpus[:2000] for w in text.split() if w.isalpha()]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(4, 20))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-files", type=Path, required=True, help="directory with the tokenizer files")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--st-batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, 2-layer model, few texts: checks the script")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    device = "cpu" if args.smoke else "cuda"
    corpus = [json.loads(line)["text"] for line in args.corpus.open(encoding="utf-8")]
    config = EmbeddingGemmaConfig()
    if args.smoke:
        corpus, args.queries, args.st_batch_sizes = corpus[:24], 64, [8]
        backbone = Gemma3TextConfig(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=96,
            head_dim=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            layer_types=("sliding_attention", "full_attention"),
        )
        config = EmbeddingGemmaConfig(
            backbone=backbone, head=config.head.__class__(dense_features=(128, 64), dense_bias=(False, False))
        )
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if not args.smoke else "cpu (smoke)",
        "torch": torch.__version__,
    }
    results["matmul_tflops"] = matmul_ceiling(device, 1024 if args.smoke else 8192)

    workdir = Path(tempfile.mkdtemp())
    model = random_model(config, "cpu")
    info = CheckpointInfo(
        path=args.checkpoint_files, config=config, prompts={"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT}
    )
    save_checkpoint(model, workdir, tokenizer_dir=args.checkpoint_files, prompts=info.prompts)
    del model

    rows = []
    for dtype in ("bfloat16",) if args.smoke else ("bfloat16", "float32"):
        torch_dtype = getattr(torch, dtype)
        st = SentenceTransformer(str(workdir), device=device, model_kwargs={"torch_dtype": torch_dtype})
        ours = Embedder.from_pretrained(
            workdir,
            device=device,
            dtype=dtype,
            engine="packed",
            max_batch_tokens=args.max_batch_tokens,
            compile=not args.no_compile and not args.smoke,
            attention="flex",
        )
        lengths = [len(ids) for ids in ours.tokenizer.encode([DOCUMENT_PROMPT + t for t in corpus])]
        tokens = sum(lengths)
        flops = model_flops(lengths, config.backbone)
        ours.encode_document(corpus[:256])  # warm-up: compilation, autotuning
        seconds, ours_out = timed(partial(ours.encode_document, corpus, batch_size=1_000_000), device)
        ours_tps = tokens / seconds
        st_best, st_out = 0.0, None
        for batch_size in args.st_batch_sizes:
            st.encode_document(corpus[:batch_size], batch_size=batch_size)
            st_seconds, out = timed(partial(st.encode_document, corpus, batch_size=batch_size), device)
            results[f"st_{dtype}_bs{batch_size}_tokens_per_s"] = tokens / st_seconds
            if tokens / st_seconds > st_best:
                st_best, st_out = tokens / st_seconds, out
        cosine = (ours_out * st_out).sum(1) / np.linalg.norm(ours_out, axis=1) / np.linalg.norm(st_out, axis=1)
        queries = short_queries(corpus, args.queries)
        q_lengths = [len(ids) for ids in ours.tokenizer.encode([QUERY_PROMPT + q for q in queries])]
        q_seconds, _ = timed(partial(ours.encode_query, queries, batch_size=1_000_000), device)
        st_q_seconds, _ = timed(partial(st.encode_query, queries, batch_size=max(args.st_batch_sizes)), device)
        rows.append(
            {
                "dtype": dtype,
                "corpus_texts": len(corpus),
                "corpus_tokens": tokens,
                "ours_tokens_per_s": ours_tps,
                "st_best_tokens_per_s": st_best,
                "speedup": ours_tps / st_best,
                "mfu": flops / seconds / (results["matmul_tflops"] * 1e12),
                "min_cosine_vs_st": float(cosine.min()),
                "queries": len(queries),
                "query_tokens": sum(q_lengths),
                "ours_query_tokens_per_s": sum(q_lengths) / q_seconds,
                "st_query_tokens_per_s": sum(q_lengths) / st_q_seconds,
            }
        )
    results["runs"] = rows
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
