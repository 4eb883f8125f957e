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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from embeddinggemma.config import ConfigError, EmbeddingGemmaConfig, Gemma3TextConfig, HeadConfig
from embeddinggemma.model import EmbeddingGemma, Gemma3Encoder

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "google/embeddinggemma-300m"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
)
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*/*.json", "*/*.safetensors"]
_ST_MODULE = "sentence_transformers.models."


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or not the layout we expect."""


@dataclass
class CheckpointInfo:
    """What `load_checkpoint` read besides the weights."""

    path: Path
    config: EmbeddingGemmaConfig
    prompts: dict[str, str] = field(default_factory=dict)
    similarity_fn_name: str = "cosine"


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a hub id fetched through the standard Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint directory that contains it")
        return path
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"checkpoint directory {text!r} does not exist (and it is not a hub id 'org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS))
    except GatedRepoError as exc:
        raise CheckpointError(
            f"{text} is gated: accept its licence on huggingface.co and log in (`hf auth login`)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"no model {text!r} on the Hugging Face hub (or no access to it)") from exc
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{text} is not in the local Hugging Face cache and the hub cannot be reached (offline, or "
            f"HF_HUB_OFFLINE=1). Download it once with `hf download {text}`, or pass a local directory"
        ) from exc


def cached_file(filename: str, model: str = DEFAULT_MODEL) -> Path | None:
    """A file of a hub model if it is already in the local Hugging Face cache (never downloads), else None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, filename)
    return Path(found) if isinstance(found, str) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing from {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from exc


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


def _read_modules(root: Path) -> list[dict[str, Any]]:
    modules_file = root / "modules.json"
    if not modules_file.exists():
        raise CheckpointError(
            f"{root} has no modules.json: not a sentence-transformers checkpoint. EmbeddingGemma needs its "
            "pooling and Dense layers (dropping them gives wrong embeddings: llama.cpp #16367)"
        )
    modules = sorted(_read_json(modules_file), key=lambda m: m.get("idx", 0))
    kinds = [str(m.get("type", "")).removeprefix(_ST_MODULE).rsplit(".", 1)[-1] for m in modules]
    if not kinds or kinds[0] != "Transformer" or kinds[1:2] != ["Pooling"]:
        raise CheckpointError(f"modules.json lists {kinds}; expected Transformer, Pooling, Dense..., Normalize")
    for module, kind in zip(modules, kinds, strict=True):
        module["kind"] = kind
        path = module.get("path", "")
        parts = PurePosixPath(path).parts if isinstance(path, str) else None
        if parts is None or PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
            raise CheckpointError(
                f"{modules_file}: module {module.get('name', kind)!r} has path {path!r}; module paths must be "
                "folders inside the checkpoint directory"
            )
    unknown = [k for k in kinds[2:] if k not in ("Dense", "Normalize")]
    if unknown:
        raise CheckpointError(f"modules.json has modules this implementation cannot run: {unknown}")
    return modules


def _check_pooling(config: Mapping[str, Any], where: Path) -> None:
    # sentence-transformers <= 5 writes one boolean per mode; 6 writes "pooling_mode": "mean".
    legacy = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    mode = config.get("pooling_mode")
    if not (mode == "mean" or (mode is None and legacy == ["pooling_mode_mean_tokens"])):
        raise CheckpointError(f"{where}: pooling {mode or legacy} is not mean pooling (EmbeddingGemma's)")
    if config.get("include_prompt", True) is False:
        raise CheckpointError(f"{where}: include_prompt=false is not supported; EmbeddingGemma pools the prompt too")


def _max_seq_length(transformer_dir: Path, backbone: Gemma3TextConfig) -> int:
    """sentence_bert_config.json (sentence-transformers <= 5), else the tokenizer's model_max_length (6)."""
    candidates = []
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        file = transformer_dir / name
        if file.exists():
            value = _read_json(file).get(key)
            if isinstance(value, int) and 0 < value < 1_000_000:  # HF writes 1e30 for "no limit"
                candidates.append(value)
    return min(candidates[0] if candidates else backbone.max_position_embeddings, backbone.max_position_embeddings)


def read_checkpoint_info(root: Path) -> tuple[CheckpointInfo, list[dict[str, Any]]]:
    """Parse every config file of the layout (no weights yet)."""
    modules = _read_modules(root)
    transformer_dir = root / modules[0].get("path", "")
    try:
        backbone = Gemma3TextConfig.from_hf_dict(_read_json(transformer_dir / "config.json"))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{transformer_dir / 'config.json'}: {exc}") from exc
    _check_pooling(_read_json(root / modules[1]["path"] / "config.json"), root / modules[1]["path"])

    features, biases = [], []
    for module in modules[2:]:
        if module["kind"] != "Dense":
            continue
        dense_config = _read_json(root / module["path"] / "config.json")
        activation = str(dense_config.get("activation_function", "torch.nn.modules.linear.Identity"))
        if not activation.endswith("Identity"):
            raise CheckpointError(f"{module['path']}: activation {activation} is not Identity")
        features.append(int(dense_config["out_features"]))
        biases.append(bool(dense_config.get("bias", True)))
    normalize = modules[-1]["kind"] == "Normalize"
    config = EmbeddingGemmaConfig(
        backbone=backbone,
        head=HeadConfig(dense_features=tuple(features), dense_bias=tuple(biases), normalize=normalize),
        max_seq_length=_max_seq_length(transformer_dir, backbone),
    )
    st_config_file = root / "config_sentence_transformers.json"
    st_config = _read_json(st_config_file) if st_config_file.exists() else {}
    info = CheckpointInfo(
        path=root,
        config=config,
        prompts=dict(st_config.get("prompts") or {}),
        similarity_fn_name=st_config.get("similarity_fn_name") or "cosine",
    )
    if info.similarity_fn_name != "cosine":
        logger.warning("checkpoint declares similarity %r; embeddings are compared by cosine", info.similarity_fn_name)
    return info, modules


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
