"""The cache of converted models, without torch: where a checkpoint's ONNX file for a scheme lives and
whether it can be trusted.

A checkpoint is converted once per scheme (`convert.py`, which needs torch) into a cache directory: the
ONNX graph, its tensors in a data file that ONNX Runtime maps into memory, the embedding table read
row by row (`token_table.py`), and a manifest that records the source files' sizes and modification
times and the SHA-256 of the three files. Every load checks them:
a changed checkpoint (stale) or a damaged file (corrupt) is rebuilt with a warning that says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from embeddinggemma.quant.schemes import resolve_scheme

RUNTIME_SCHEMES = ("int8", "int4", "mixed", "int8-channel", "w8a8")  # int8-channel, w8a8: any shape (no blocks)
# bump when the conversion changes (2: tensors in DATA_FILE, no NaN guards; 3: graph built from fused
# ops, the embedding table in TABLE_FILE; 4: attention as MatMul / Softmax, one query head at a time;
# 5: a kv head's query heads stacked into one product, long texts' sliding layers banded; 6: banded
# for w8a8 only; 7: q normed and rotated as score rows, w8a8's per-token scale as the product's A scale;
# 8: w8a8's two projections of the pooled embedding as one float product, fp32 input)
CACHE_VERSION = 8
MODEL_FILE, DATA_FILE, MANIFEST_FILE = "model.onnx", "model.onnx.data", "manifest.json"
TABLE_FILE = "token_table.bin"  # read row by row (token_table.py), never mapped
CHECKED_FILES = ((MODEL_FILE, "sha256"), (DATA_FILE, "data_sha256"), (TABLE_FILE, "table_sha256"))


def default_cache_dir() -> Path:
    root = os.environ.get("EMBEDDINGGEMMA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / "embeddinggemma" / "quantized"


def runtime_scheme(scheme: str) -> str:
    name = resolve_scheme(scheme)
    if name not in RUNTIME_SCHEMES:
        raise ValueError(f"quantize={scheme!r} has no CPU runtime; choose one of {', '.join(RUNTIME_SCHEMES)}")
    return name


def source_fingerprint(root: Path) -> list[list[Any]]:
    """(relative path, size, mtime_ns) of every file the conversion reads: weights and configs."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".bin"))
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:  # file_digest reads into one small buffer: no 4 MB chunks left behind
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cache_entry(root: Path, scheme: str, cache_dir: Path) -> Path:
    key = json.dumps([str(root.resolve()), scheme, CACHE_VERSION])
    return cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]


def check_cache(entry: Path, root: Path, scheme: str) -> str | None:
    """None when the cached conversion can be trusted, else the reason it cannot."""
    manifest_file = entry / MANIFEST_FILE
    if not manifest_file.exists():
        return "no conversion cached yet"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return f"{manifest_file} is unreadable (corrupt)"
    if manifest.get("version") != CACHE_VERSION or manifest.get("scheme") != scheme:
        return "the cached conversion was made by another version of this library"
    if manifest.get("source") != source_fingerprint(root):
        return f"{root} changed since it was converted (stale)"
    for name, key in CHECKED_FILES:
        path = entry / name
        if not path.exists() or file_sha256(path) != manifest.get(key):
            return f"{path} does not match its recorded SHA-256 (corrupt or incomplete)"
    return None
