#!/usr/bin/env python
"""The quantization study behind the README's table: what QAT buys over post-training rounding.

    # 1. a CPU-sized self-distillation set: a seeded subset of the code training set (built by
    #    scripts/build_training_data.py) and the fp32 model's embeddings of it (the QAT teacher)
    python scripts/quant_study.py qat-data data/qat-cpu --examples 256 --max-seq-length 128
    # 2. QAT on it (recipes/qat-int4.yaml with CPU overrides; the README gives the exact command)
    # 3. one quality row per scheme x method: local suite at 768 and 128 dims, per-text cosine to fp32
    python scripts/quant_study.py quality --scheme int4 --method rtn -o results/int4-rtn.json
    python scripts/quant_study.py quality --scheme int4 --method gptq -o results/int4-gptq.json
    python scripts/quant_study.py quality --scheme int4 --method qat --model runs/qat-int4-cpu/model -o ...

Every row runs the model the way `Embedder.from_pretrained(..., quantize=SCHEME)` runs it: the
converted integers in ONNX Runtime (int8 dot products); GPTQ rows only change which integers.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embeddinggemma import Embedder
from embeddinggemma.checkpoint import DEFAULT_MODEL, load_checkpoint
from embeddinggemma.quant.calibration import CALIBRATION_TEXTS
from embeddinggemma.quant.gptq import gptq_quantize_model_
from embeddinggemma.quant.onnx_export import ACCURACY_INT8, build_onnx, save_onnx
from embeddinggemma.quant.qat import quantize_weights_
from embeddinggemma.quant.runtime import OnnxEmbeddingModel
from embeddinggemma.quant.schemes import INT8_ACTIVATION_SCHEMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu import QUERY, passages

logger = logging.getLogger("quant_study")


def cmd_qat_data(args: argparse.Namespace) -> None:
    from embeddinggemma.train.data import iter_examples, load_dataset, write_dataset
    from embeddinggemma.train.teacher import build_teacher_cache

    spec = load_dataset(args.source)
    examples = [example for _, example in iter_examples(spec.path)]
    chosen = sorted(random.Random(args.seed).sample(range(len(examples)), min(args.examples, len(examples))))
    subset = args.outdir / spec.name
    write_dataset(
        subset,
        (examples[i] for i in chosen),
        name=spec.name,
        task=spec.task,
        description=f"{len(chosen)} examples of {args.source} (seed {args.seed}), for a CPU-sized QAT run",
    )
    teacher = Embedder.from_pretrained(args.model, device="cpu", max_seq_length=args.max_seq_length)
    start = time.perf_counter()
    report = build_teacher_cache(
        teacher,
        [subset],
        args.outdir / "teacher",
        teacher=f"{args.model}@fp32/max{args.max_seq_length}",
        batch_size=16,
        show_progress=True,
    )
    print(json.dumps(report.to_json() | {"wall_seconds": round(time.perf_counter() - start, 1)}, indent=1))


def converted_model(scheme: str, method: str, model_path: str):
    model, info = load_checkpoint(model_path, dtype=torch.float32, device="cpu")
    if method == "gptq":
        tokenizer = Embedder.from_model(model, info).tokenizer
        gptq_quantize_model_(model, scheme, tokenizer.encode(list(CALIBRATION_TEXTS)), tokenizer.pad_id)
    elif method in ("rtn", "qat"):
        quantize_weights_(model, scheme)
    elif method != "fp32":
        raise ValueError(f"unknown method {method!r}")
    return model, info


def reference_embeddings(cache: Path) -> np.ndarray:
    """fp32 embeddings of the benchmark's query + 48 passages (our fp32 equals sentence-transformers')."""
    if cache.exists():
        return np.load(cache)
    fp32 = Embedder.from_pretrained(DEFAULT_MODEL, device="cpu")
    out = np.concatenate([fp32.encode_query([QUERY]), fp32.encode_document(passages(None), batch_size=16)])
    np.save(cache, out)
    return out


def cmd_quality(args: argparse.Namespace) -> None:
    from embeddinggemma.eval.runner import evaluate_suite

    start = time.perf_counter()
    model, info = converted_model(args.scheme, args.method, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        if args.method == "fp32":
            save_onnx(build_onnx(model, normalize=False), path)
        else:
            int8_activations = args.scheme in INT8_ACTIVATION_SCHEMES
            save_onnx(build_onnx(model, ACCURACY_INT8, False, True, int8_activations), path)
        del model
        size_mb = path.stat().st_size / 1e6
        session = OnnxEmbeddingModel(path, info.config, args.threads)
        embedder = Embedder.from_model(session, info, tokenizer="tokenizers", max_batch_tokens=1024)
        convert_seconds = time.perf_counter() - start
        reference = reference_embeddings(args.reference)
        ours = np.concatenate([embedder.encode_query([QUERY]), embedder.encode_document(passages(None), batch_size=16)])
        cosine = (ours * reference).sum(1)
        report = evaluate_suite(embedder, args.suite_dir, dims=args.dims, batch_size=32, show_progress=False)
    row = {
        "scheme": args.scheme,
        "method": args.method,
        "model": args.model,
        "onnx_mb": round(size_mb, 1),
        "mean_main_score": report["mean_main_score"],
        "tasks": {
            name: {d: v["scores"]["main_score"] for d, v in t["dims"].items()} for name, t in report["tasks"].items()
        },
        "cosine_to_fp32": {"min": float(cosine.min()), "mean": float(cosine.mean())},
        "convert_seconds": round(convert_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("qat-data", help="a seeded subset of a training set and its fp32 teacher embeddings")
    data.add_argument("outdir", type=Path)
    data.add_argument("--source", type=Path, default=Path("data/train/code/train"))
    data.add_argument("--examples", type=int, default=256)
    data.add_argument("--max-seq-length", type=int, default=128)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--model", default=DEFAULT_MODEL)
    data.set_defaults(func=cmd_qat_data)
    quality = sub.add_parser("quality", help="score one scheme x method")
    quality.add_argument("--scheme", required=True, choices=["int8", "int4", "mixed", "w8a8", "f32"])
    quality.add_argument("--method", required=True, choices=["fp32", "rtn", "gptq", "qat"])
    quality.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (a QAT run's model for --method qat)")
    quality.add_argument("--suite-dir", type=Path, default=Path("data/local_suite"))
    quality.add_argument("--dims", type=int, nargs="+", default=[768, 128])
    quality.add_argument("--threads", type=int, default=2)
    quality.add_argument("--reference", type=Path, default=Path("/tmp/embeddinggemma-fp32-bench-texts.npy"))
    quality.add_argument("-o", "--output", type=Path, required=True)
    quality.set_defaults(func=cmd_quality)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
