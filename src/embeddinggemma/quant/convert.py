"""Conversion of a checkpoint into the cached ONNX graph of a scheme (needs torch; runs once per
checkpoint and scheme, ~10 s for the released model: the graph is written from the weights, not traced).

A checkpoint (ours, fine-tuned, souped or QAT-trained: a QAT checkpoint holds the float weights whose
rounding it trained for, and converting them reproduces that rounding exactly) is loaded in fp32,
rounded to the scheme and exported without the final normalisation (the runtime normalises after the
Matryoshka cut). Files are written under temporary names and renamed, the manifest last, so an
interrupted conversion leaves nothing that a later load would trust.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from embeddinggemma.checkpoint import load_checkpoint, resolve_checkpoint
from embeddinggemma.quant.cache import (
    CACHE_VERSION,
    CHECKED_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    TABLE_FILE,
    file_sha256,
    source_fingerprint,
)
from embeddinggemma.quant.onnx_export import ACCURACY_INT8, build_onnx, save_onnx, write_token_table
from embeddinggemma.quant.qat import quantize_weights_
from embeddinggemma.quant.schemes import BANDED_SCHEMES, INT8_ACTIVATION_SCHEMES, LOW_MEMORY_SCHEMES


def convert_checkpoint(
    name_or_path: str | Path,
    scheme: str,
    entry: Path,
    *,
    revision: str | None = None,
    accuracy_level: int = ACCURACY_INT8,
) -> None:
    """Load fp32, round to the scheme, write the token table and the ONNX graph (no final normalisation),
    then the manifest."""
    root = resolve_checkpoint(name_or_path, revision)
    model, _ = load_checkpoint(root, dtype=torch.float32, device="cpu")
    quantize_weights_(model, scheme)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / MANIFEST_FILE).unlink(missing_ok=True)  # the old manifest must not vouch for the new files
    table = write_token_table(model, entry / TABLE_FILE)
    int8_activations = scheme in INT8_ACTIVATION_SCHEMES
    low_memory, banded = scheme in LOW_MEMORY_SCHEMES, scheme in BANDED_SCHEMES
    proto = build_onnx(
        model, accuracy_level, False, True, int8_activations, token_table=table, low_memory=low_memory, banded=banded
    )
    del model
    save_onnx(proto, entry / MODEL_FILE, external_data=True)
    manifest = {
        "version": CACHE_VERSION,
        "scheme": scheme,
        "accuracy_level": accuracy_level,
        "checkpoint": str(root),
        "source": source_fingerprint(root),
        **{key: file_sha256(entry / name) for name, key in CHECKED_FILES},
    }
    partial = entry / (MANIFEST_FILE + ".partial")
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(entry / MANIFEST_FILE)
