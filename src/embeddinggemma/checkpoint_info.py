"""The checkpoint's files without its weights: where it is (a directory or the Hugging Face cache) and
what its configs say (`CheckpointInfo`). No torch here: the on-device runtime reads checkpoints through
this module alone (`embeddinggemma.quant.ondevice`); `checkpoint` loads and saves the weights.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from embeddinggemma.config import ConfigError, EmbeddingGemmaConfig, Gemma3TextConfig, HeadConfig

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
    offline = offline_snapshot(text, revision)
    if offline is not None:
        return offline
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


def offline_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """In offline mode (HF_HUB_OFFLINE=1), the snapshot directory `snapshot_download` would return, read
    from the cache layout (refs/<revision> -> snapshots/<commit>) without importing huggingface_hub's
    download and HTTP stack: 20 MB of a quantized on-device process's ~300 MB peak. None when not
    offline, not cached, or when the cache holds the commit's file listing (trees/<commit>.json: then
    `snapshot_download` checks the snapshot is complete and gives its own answer or error)."""
    from huggingface_hub import constants  # 3 MB: paths and switches only

    if not constants.is_offline_mode():
        return None
    repo = Path(constants.HF_HUB_CACHE) / constants.REPO_ID_SEPARATOR.join(["models", *repo_id.split("/")])
    revision = revision or "main"
    commit = revision
    if not re.fullmatch("[0-9a-f]{40}", revision):  # a commit hash, as huggingface_hub tells them apart
        try:
            commit = (repo / "refs" / revision).read_text().strip()
        except OSError:
            return None
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir() or (repo / "trees" / f"{commit}.json").exists():
        return None
    return snapshot


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
