"""Load and save the sentence-transformers checkpoint layout, strictly (doc section 1).

```
config.json, model.safetensors        the Gemma 3 encoder (HF names, no "model." prefix)
tokenizer.json (+ config files)       the tokenizer
modules.json                          Transformer -> Pooling -> Dense... -> Normalize
1_Pooling/config.json                 mean pooling
2_Dense/, 3_Dense/                    config.json + model.safetensors with linear.weight
config_sentence_transformers.json     prompts
sentence_bert_config.json             max_seq_length
```
Every tensor in the files must be consumed and every parameter filled, with matching shapes; anything
else is a `CheckpointError` that names what is missing or extra. `save_checkpoint` writes the same
layout so `sentence_transformers.SentenceTransformer(path)` loads our output.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from embeddinggemma.checkpoint_info import (  # noqa: F401 (re-exported: the checkpoint's public names)
    _ST_MODULE,
    DEFAULT_MODEL,
    TOKENIZER_FILES,
    CheckpointError,
    CheckpointInfo,
    _read_json,
    cached_file,
    read_checkpoint_info,
    resolve_checkpoint,
)
from embeddinggemma.config import ConfigError, Gemma3TextConfig
from embeddinggemma.model import EmbeddingGemma, Gemma3Encoder

logger = logging.getLogger(__name__)


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [directory / shard for shard in shards]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    if (directory / "pytorch_model.bin").exists():
        raise CheckpointError(
            f"{directory} holds pytorch_model.bin; only safetensors are loaded (pickles can run code). "
            "Convert it with sentence-transformers: SentenceTransformer(path).save(path, safe_serialization=True)"
        )
    raise CheckpointError(f"no model.safetensors in {directory}")


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, Path, Any]]:
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"cannot read {file}: {exc}; the file is corrupt or incomplete") from exc
        with handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, file, handle


def load_weights(
    module: nn.Module,
    files: list[Path],
    *,
    prefix: str = "",
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    config_file: Path | None = None,
) -> None:
    """Strictly fill `module` (possibly on the meta device) from safetensors files.

    Tensors are read one at a time and cast on the way, so loading in bf16 never holds an fp32 copy
    of the whole model. `prefix` is prepended to file keys to find the parameter. `config_file` is
    the file the module's shapes came from, named when the weights do not fit them.
    """
    expected = module.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: dict[str, str] = {}
    for name, file, handle in _iter_tensors(files):
        key = prefix + name
        if key not in expected:
            unexpected.append(f"{name} ({file.name})")
            continue
        shape = tuple(handle.get_slice(name).get_shape())
        if shape != tuple(expected[key].shape):
            mismatched[key] = f"{name} is {shape} in {file.name}, {tuple(expected[key].shape)} by the config"
            continue
        try:
            tensor = handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {name} from {file}: {exc}; the file is corrupt") from exc
        loaded[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() and dtype else None)
    where = ", ".join(str(f) for f in files)
    if mismatched:  # the usual cause: a config.json edited or copied from another model size
        first = next(iter(mismatched.values()))
        source = config_file or "the config"
        raise CheckpointError(
            f"{source} does not describe the weights in {where}: {len(mismatched)} tensor(s) have other shapes "
            f"(e.g. {first}); restore the config.json that came with these weights"
        )
    missing = sorted(set(expected) - set(loaded))
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            shown = ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        hint = f" or {config_file}" if config_file else ""
        raise CheckpointError(
            f"the weights in {where}{hint} do not match the model: " + "; ".join(problems) + "; the checkpoint "
            "is incomplete or of another architecture"
        )
    module.load_state_dict(loaded, strict=True, assign=True)


def load_encoder(
    directory: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> Gemma3Encoder:
    """The bare Gemma 3 encoder from a Hugging Face model directory (config.json + safetensors)."""
    directory = Path(directory)
    try:
        config = Gemma3TextConfig.from_hf_dict(_read_json(directory / "config.json"))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: {exc}") from exc
    with torch.device("meta"):
        encoder = Gemma3Encoder(config)
    load_weights(
        encoder, _safetensors_files(directory), dtype=dtype, device=device, config_file=directory / "config.json"
    )
    return encoder


def load_checkpoint(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    revision: str | None = None,
) -> tuple[EmbeddingGemma, CheckpointInfo]:
    """The full model (encoder + projections) and its metadata, strictly loaded."""
    root = resolve_checkpoint(name_or_path, revision)
    info, modules = read_checkpoint_info(root)
    with torch.device("meta"):
        model = EmbeddingGemma(info.config)
    transformer_dir = root / modules[0].get("path", "")
    load_weights(
        model.encoder,
        _safetensors_files(transformer_dir),
        dtype=dtype,
        device=device,
        config_file=transformer_dir / "config.json",
    )
    dense_modules = [m for m in modules[2:] if m["kind"] == "Dense"]
    for linear, module in zip(model.dense, dense_modules, strict=True):
        folder = root / module["path"]
        load_weights(
            _DenseFile(linear),
            _safetensors_files(folder),
            dtype=dtype,
            device=device,
            config_file=folder / "config.json",
        )
    model.eval().requires_grad_(False)
    return model, info


class _DenseFile(nn.Module):
    """sentence-transformers' Dense module stores its layer as `linear.weight` / `linear.bias`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def save_checkpoint(
    model: EmbeddingGemma,
    path: str | Path,
    *,
    tokenizer_dir: Path,
    prompts: Mapping[str, str],
) -> Path:
    """Write the sentence-transformers layout (weights in the model's current dtype)."""
    with torch.device("meta"):
        reference = EmbeddingGemma(model.config)
    if set(reference.state_dict()) != set(model.state_dict()):
        raise ValueError(
            "cannot save a quantized model in the sentence-transformers layout (it holds float weights); "
            "save the float model, and quantize after loading with quantize='int8'"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    backbone = config.backbone.to_hf_dict() | {"dtype": str(model.dtype).removeprefix("torch.")}
    (out / "config.json").write_text(json.dumps(backbone, indent=2) + "\n")
    _save_tensors(model.encoder.state_dict(), out / "model.safetensors")

    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": _ST_MODULE + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_MODULE + "Pooling"},
    ]
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": config.backbone.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=4) + "\n")
    for linear in model.dense:
        idx = len(modules)
        folder = out / f"{idx}_Dense"
        folder.mkdir(exist_ok=True)
        dense = {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": linear.bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        (folder / "config.json").write_text(json.dumps(dense, indent=4) + "\n")
        _save_tensors(_DenseFile(linear).state_dict(), folder / "model.safetensors")
        modules.append({"idx": idx, "name": str(idx), "path": folder.name, "type": _ST_MODULE + "Dense"})
    if config.head.normalize:
        idx = len(modules)
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": _ST_MODULE + "Normalize"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": dict(prompts),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": config.max_seq_length, "do_lower_case": False}, indent=4) + "\n"
    )
    if tokenizer_dir.resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copyfile(tokenizer_dir / name, out / name)
        if not (out / "tokenizer.json").exists():
            raise CheckpointError(f"cannot save: tokenizer.json is no longer in {tokenizer_dir}")
    return out
