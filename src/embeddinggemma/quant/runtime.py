"""The quantized CPU runtime behind `Embedder.from_pretrained(..., quantize=...)`: ONNX Runtime.

Chosen by measurement (benchmarks/cpu.py, README "Quantization"): ONNX Runtime's weight-only block
kernels (`MatMulNBits`, int8 dot products on VNNI/AMX) running our exact Q8_0 / Q4_0 integers beat
PyTorch's int8 (`torch.ops.quantized`, now retired here), OpenVINO and llama.cpp at equal quality.

A checkpoint (ours, fine-tuned, souped or QAT-trained: a QAT checkpoint holds the float weights whose
rounding it trained for, and converting them reproduces that rounding exactly) is converted once per
scheme into an ONNX file in a cache directory, next to a manifest that records the source files'
sizes and modification times and the SHA-256 of the ONNX file. Every load checks both: a changed
checkpoint (stale) or a damaged file (corrupt) is rebuilt with a warning that says why. Files are
written under temporary names and renamed, the manifest last, so an interrupted conversion leaves
nothing that a later load would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embeddinggemma.checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint_info, resolve_checkpoint
from embeddinggemma.config import EmbeddingGemmaConfig
from embeddinggemma.engine.batching import pad_batch, token_budget_batches
from embeddinggemma.quant.onnx_export import ACCURACY_INT8, INPUTS, build_onnx, save_onnx
from embeddinggemma.quant.qat import quantize_weights_, resolve_scheme

logger = logging.getLogger(__name__)

RUNTIME_SCHEMES = ("int8", "int4", "mixed", "int8-channel")  # int8-channel: any shape (no blocks)
CACHE_VERSION = 1  # bump when the conversion changes
MODEL_FILE, MANIFEST_FILE = "model.onnx", "manifest.json"


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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_entry(root: Path, scheme: str, cache_dir: Path) -> Path:
    key = json.dumps([str(root.resolve()), scheme, CACHE_VERSION])
    return cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]


def check_cache(entry: Path, root: Path, scheme: str) -> str | None:
    """None when the cached conversion can be trusted, else the reason it cannot."""
    manifest_file, model_file = entry / MANIFEST_FILE, entry / MODEL_FILE
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
    if not model_file.exists() or file_sha256(model_file) != manifest.get("sha256"):
        return f"{model_file} does not match its recorded SHA-256 (corrupt or incomplete)"
    return None


def convert_checkpoint(
    name_or_path: str | Path,
    scheme: str,
    entry: Path,
    *,
    revision: str | None = None,
    accuracy_level: int = ACCURACY_INT8,
) -> None:
    """Load fp32, round to the scheme, export ONNX (no final normalisation), write file then manifest."""
    root = resolve_checkpoint(name_or_path, revision)
    model, _ = load_checkpoint(root, dtype=torch.float32, device="cpu")
    quantize_weights_(model, scheme)
    proto = build_onnx(model, accuracy_level, normalize=False, consume=True)
    del model
    entry.mkdir(parents=True, exist_ok=True)
    (entry / MANIFEST_FILE).unlink(missing_ok=True)  # the old manifest must not vouch for the new file
    save_onnx(proto, entry / MODEL_FILE)
    manifest = {
        "version": CACHE_VERSION,
        "scheme": scheme,
        "accuracy_level": accuracy_level,
        "checkpoint": str(root),
        "source": source_fingerprint(root),
        "sha256": file_sha256(entry / MODEL_FILE),
    }
    partial = entry / (MANIFEST_FILE + ".partial")
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(entry / MANIFEST_FILE)


class OnnxEmbeddingModel(nn.Module):
    """An ONNX Runtime session standing in for `EmbeddingGemma` behind the Embedder's padded runner:
    same `forward(input_ids, attention_mask, normalize)`, `config`, `device` and `dtype`."""

    def __init__(self, path: Path, config: EmbeddingGemmaConfig, num_threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.config = config
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.num_threads = options.intra_op_num_threads

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def make_runner(self, pad_id: int, engine: str = "auto", **options) -> OnnxRunner:
        """The Embedder's runner for this model (`Embedder.from_model` asks the model when it can)."""
        if engine not in ("auto", "padded"):
            raise ValueError(f"the quantized CPU runtime runs padded batches; engine={engine!r} is not available")
        return OnnxRunner(self, pad_id=pad_id, **options)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool | None = None
    ) -> torch.Tensor:
        feeds = {
            INPUTS[0]: input_ids.cpu().numpy().astype(np.int64, copy=False),
            INPUTS[1]: attention_mask.cpu().numpy().astype(np.int64, copy=False),
        }
        out = torch.from_numpy(self.session.run(None, feeds)[0])
        return F.normalize(out, dim=-1) if (self.config.head.normalize if normalize is None else normalize) else out

    def extra_repr(self) -> str:
        return f"{self.path}, {self.num_threads} threads"


@dataclass
class OnnxRunner:
    """Sorted, right-padded batches under a token budget (as the engine's padded runner), run by ONNX Runtime."""

    model: OnnxEmbeddingModel
    pad_id: int = 0
    max_batch_tokens: int = 1024  # small batches bound activation memory; on CPU they cost no throughput

    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = 32, progress: Callable | None = None
    ) -> torch.Tensor:
        """Un-normalised full-width fp32 embeddings (N, E), in input order."""
        lengths = [len(ids) for ids in token_ids]
        out = torch.empty(len(token_ids), self.model.config.embedding_dim, dtype=torch.float32)
        for rows in token_budget_batches(lengths, self.max_batch_tokens, max_texts or 32, pad_to_longest=True):
            input_ids, attention_mask = pad_batch([token_ids[i] for i in rows], self.pad_id)
            out[rows] = self.model(input_ids, attention_mask, normalize=False)
            if progress:
                progress(len(rows))
        return out


def load_quantized(
    name_or_path: str | Path,
    scheme: str,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    num_threads: int | None = None,
) -> tuple[OnnxEmbeddingModel, CheckpointInfo]:
    """The quantized CPU model of a checkpoint, converting it once (about a minute) into the cache."""
    scheme = runtime_scheme(scheme)
    root = resolve_checkpoint(name_or_path, revision)
    info, _ = read_checkpoint_info(root)
    entry = cache_entry(root, scheme, Path(cache_dir) if cache_dir else default_cache_dir())
    problem = check_cache(entry, root, scheme)
    if problem is not None:
        logger.warning("converting %s to %s once (about a minute): %s; cache: %s", root, scheme, problem, entry)
        convert_checkpoint(root, scheme, entry)
    return OnnxEmbeddingModel(entry / MODEL_FILE, info.config, num_threads), info
