"""`embeddinggemma export gguf|onnx`: a checkpoint (released, fine-tuned, souped or QAT) to a file that
llama.cpp / Ollama (GGUF) or ONNX Runtime / sentence-transformers (ONNX) run.

    embeddinggemma export gguf --scheme int4 -o embeddinggemma-q4_0.gguf
    embeddinggemma export onnx --scheme int8 --model runs/qat-int8/final -o model.onnx

The weights are rounded exactly as `quant/qat.py` rounds them in training and in our CPU runtime, so
a QAT checkpoint keeps the rounding it was trained for. Nothing is left at PATH unless the export
completes (written to a temporary name, then renamed); an existing PATH is refused unless --force.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from embeddinggemma.checkpoint import DEFAULT_MODEL, load_checkpoint
from embeddinggemma.quant.onnx_export import ACCURACY_FP32, ACCURACY_INT8
from embeddinggemma.quant.qat import SCHEMES, quantize_weights_, resolve_scheme
from embeddinggemma.quant.schemes import INT8_ACTIVATION_SCHEMES, LOW_MEMORY_SCHEMES

logger = logging.getLogger(__name__)

FORMATS = ("gguf", "onnx")
# Per format: the schemes it can hold ("f32" = no quantization).
FORMAT_SCHEMES = {"gguf": ("f32", "int8", "int4", "mixed"), "onnx": ("f32", *SCHEMES)}


def export_checkpoint(
    name_or_path: str | Path,
    fmt: str,
    output: str | Path,
    *,
    scheme: str = "f32",
    accuracy_level: int = ACCURACY_INT8,
    overwrite: bool = False,
    revision: str | None = None,
) -> Path:
    """Export a checkpoint to GGUF or ONNX; returns the written path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose gguf or onnx")
    scheme = scheme if scheme in ("f32", "fp32") else resolve_scheme(scheme)
    scheme = "f32" if scheme == "fp32" else scheme
    if scheme not in FORMAT_SCHEMES[fmt]:
        raise ValueError(f"{fmt} cannot hold the {scheme} scheme; choose one of {', '.join(FORMAT_SCHEMES[fmt])}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists; choose another path or pass --force to replace it")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"directory {output.parent} does not exist; create it first")
    model, info = load_checkpoint(name_or_path, dtype=torch.float32, device="cpu", revision=revision)
    if scheme != "f32":
        quantize_weights_(model, scheme)
    if fmt == "gguf":
        from embeddinggemma.quant.gguf_export import write_gguf

        write_gguf(model, info, output, name=Path(str(name_or_path)).name)
    else:
        from embeddinggemma.quant.onnx_export import build_onnx, save_onnx

        int8_activations, low_memory = scheme in INT8_ACTIVATION_SCHEMES, scheme in LOW_MEMORY_SCHEMES
        proto = build_onnx(
            model, accuracy_level, consume=True, int8_activations=int8_activations, low_memory=low_memory
        )
        save_onnx(proto, output)
    logger.info("wrote %s (%s, %s, %.1f MB)", output, fmt, scheme, output.stat().st_size / 1e6)
    return output


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="write a GGUF (llama.cpp, Ollama) or ONNX (ONNX Runtime) file")
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("-o", "--output", required=True, help="file to write (refused if it exists, unless --force)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or checkpoint directory (ours, fine-tuned, QAT)")
    parser.add_argument(
        "--scheme",
        default="f32",
        help="f32, int8 (Q8_0), int4 (Q4_0), mixed (e4_a8_f4_p4: int4 embeddings/feed-forward/projections, "
        "int8 attention); ONNX also int8-channel and w8a8 (int8-channel weights, activations rounded to int8 "
        "per token at run time: the fastest CPU runtime)",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="ONNX: compute in fp32 from the dequantized weights instead of int8 dot products (slower, exact)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=cmd_export, on_interrupt="nothing was written (temporary files are removed)")


def cmd_export(args: argparse.Namespace) -> int:
    path = export_checkpoint(
        args.model,
        args.format,
        args.output,
        scheme=args.scheme,
        accuracy_level=ACCURACY_FP32 if args.exact else ACCURACY_INT8,
        overwrite=args.force,
    )
    print(path)
    return 0
