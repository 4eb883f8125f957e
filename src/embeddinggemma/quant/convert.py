"""Quantize EmbeddingGemma for CPU inference: module swaps, and a low-memory load through a disk cache.

`quantize_model_` swaps the modules of a float model in memory. `calibrate_and_quantize_` first folds
SmoothQuant factors (quant/smooth.py) so int8 activations keep their precision. For on-device use,
`load_int8_checkpoint` converts a checkpoint once (fp32 in memory, about a minute) into an int8
safetensors file in a cache; every later load reads the layers from that file with plain reads and
leaves the embedding table on disk, reading the rows each lookup needs, so the fp32 weights are never
loaded again and the 201 MB table never enters the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from embeddinggemma.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    read_checkpoint_info,
    resolve_checkpoint,
)
from embeddinggemma.model import EmbeddingGemma
from embeddinggemma.quant.int8 import Int8DynamicLinear, Int8Embedding, quantize_rows
from embeddinggemma.quant.safetensors_io import RowFile, SafetensorsReader
from embeddinggemma.quant.smooth import CALIBRATION_TEXTS, activation_absmax, smooth_
from embeddinggemma.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

SCHEMES = ("int8",)
CACHE_VERSION = 4  # bump when the conversion changes
_TABLE = "encoder.embed_tokens"


# Measured on the real checkpoint (per-text cosine to sentence-transformers fp32, 23 golden texts):
# every linear int8 with one activation scale per call: 0.964 min; + SmoothQuant: 0.986; + down_proj
# in fp32: 0.9983 (but 85 MB more); + down_proj int8 with per-token scale buckets instead: 0.9951
# (mean 0.9974). down_proj's input, gelu(gate) * up, carries the largest per-token outliers.
DOWN_PROJ_TOKEN_BUCKETS = 1.0
SMOOTHQUANT_ALPHA = 0.7


def _encoder_linears(model: EmbeddingGemma) -> list[tuple[str, nn.Linear]]:
    return [(name, module) for name, module in model.encoder.named_modules() if isinstance(module, nn.Linear)]


def _int8_linear(name: str, q: torch.Tensor, scale: torch.Tensor) -> Int8DynamicLinear:
    buckets = DOWN_PROJ_TOKEN_BUCKETS if name.endswith("down_proj") else None
    return Int8DynamicLinear(q, scale, token_buckets=buckets)


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def quantize_model_(model: EmbeddingGemma, scheme: str = "int8") -> EmbeddingGemma:
    """Swap the encoder's linear layers and the embedding table for int8 modules, in place.

    The norms and the two projection layers of the head stay fp32: they are 0.2% of the weights and
    the head runs once per text. down_proj gets per-token activation scales (see DOWN_PROJ_TOKEN_BUCKETS).
    """
    _check_scheme(scheme)
    if any(isinstance(m, Int8DynamicLinear) for m in model.modules()):
        raise ValueError("this model is already quantized")
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ValueError("int8 quantization runs on CPU from a float32 model; load with device='cpu', dtype='float32'")
    for name, linear in _encoder_linears(model):
        _set_module(model.encoder, name, _int8_linear(name, *quantize_rows(linear.weight.detach())))
    model.encoder.embed_tokens = Int8Embedding.from_embedding(model.encoder.embed_tokens)
    return model.eval().requires_grad_(False)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; available: {', '.join(SCHEMES)}")


def default_cache_dir() -> Path:
    root = os.environ.get("EMBEDDINGGEMMA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / "embeddinggemma" / "quantized"


def _cache_path(weights: Path, scheme: str, cache_dir: Path) -> Path:
    stat = weights.stat()
    key = json.dumps([str(weights.resolve()), stat.st_size, stat.st_mtime_ns, scheme, CACHE_VERSION])
    return cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24] / f"model-{scheme}.safetensors"


def calibrate_and_quantize_(model: EmbeddingGemma, tokenizer, alpha: float = SMOOTHQUANT_ALPHA) -> EmbeddingGemma:
    """SmoothQuant with the built-in calibration texts, then the int8 module swap (in place)."""
    token_ids = tokenizer.encode(list(CALIBRATION_TEXTS))
    smooth_(model, activation_absmax(model, token_ids, tokenizer.pad_id), alpha, include_down_proj=False)
    return quantize_model_(model)


def _int8_state(model: EmbeddingGemma) -> dict[str, torch.Tensor]:
    """The tensors of a quantized model: int8 weights + scales, fp32 norms and head."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, Int8DynamicLinear | Int8Embedding):
            q, scale = module.int8_weight()
            state[f"{name}.qweight"], state[f"{name}.scale"] = q, scale
    for name, tensor in model.state_dict().items():
        state[name] = tensor
    return state


def _convert_to_cache(name_or_path: str | Path, target: Path, revision: str | None) -> None:
    """Once per checkpoint: load fp32, calibrate, smooth, quantize, write an int8 safetensors file."""
    model, info = load_checkpoint(name_or_path, dtype=torch.float32, device="cpu", revision=revision)
    tokenizer = load_tokenizer(info.path, info.config.backbone, max_length=info.config.max_seq_length)
    calibrate_and_quantize_(model, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file(
        _int8_state(model), str(partial), metadata={"scheme": "int8", "smoothquant_alpha": str(SMOOTHQUANT_ALPHA)}
    )
    partial.replace(target)


def return_large_allocations_to_os(threshold: int = 128 * 1024) -> bool:
    """Make glibc serve allocations >= `threshold` with mmap, so freed activations leave the process.

    glibc raises its mmap threshold dynamically (up to 32 MB) once large blocks are freed, after which
    freed activation buffers stay in the heap: measured +100 MB of peak RSS on the int8 path. Fixing
    the threshold disables that. Process-wide; returns False where glibc's mallopt is unavailable.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-3, threshold))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def load_int8_checkpoint(
    name_or_path: str | Path, *, cache_dir: str | Path | None = None, revision: str | None = None
) -> tuple[EmbeddingGemma, CheckpointInfo]:
    """An int8 CPU model whose embedding table stays on disk, converted once into a disk cache.

    On glibc this also fixes the malloc mmap threshold (see `return_large_allocations_to_os`): the
    on-device path is for memory-bound processes.
    """
    return_large_allocations_to_os()
    root = resolve_checkpoint(name_or_path, revision)
    info, modules = read_checkpoint_info(root)
    if modules[0].get("path", "") != "" or not (root / "model.safetensors").exists():
        raise ValueError(f"{root}: int8 loading needs a single model.safetensors at the checkpoint root")
    target = _cache_path(root / "model.safetensors", "int8", Path(cache_dir) if cache_dir else default_cache_dir())
    if not target.exists():
        logger.warning("quantizing %s to int8 once (about a minute); cached in %s", root, target)
        _convert_to_cache(root, target, revision)
    try:
        reader = SafetensorsReader(target)
    except ValueError as exc:  # a cache damaged after it was written (disk full, copied in part...)
        raise CheckpointError(f"the int8 cache is damaged: {exc}; delete {target.parent} to rebuild it") from None
    with torch.device("meta"):
        model = EmbeddingGemma(info.config)
    for name, _ in _encoder_linears(model):
        full = f"encoder.{name}"
        _set_module(
            model.encoder, name, _int8_linear(name, reader.read(f"{full}.qweight"), reader.read(f"{full}.scale"))
        )
    table = RowFile(target, f"{_TABLE}.qweight", reader.header)
    model.encoder.embed_tokens = Int8Embedding(
        table, reader.read(f"{_TABLE}.scale"), padding_idx=info.config.backbone.pad_token_id
    )
    floats = {name: reader.read(name) for name in model.state_dict() if not name.startswith(_TABLE)}
    model.load_state_dict(floats, strict=False, assign=True)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"int8 cache {target} lacks {leftover[:5]}; delete it to rebuild")
    return model.eval().requires_grad_(False), info
