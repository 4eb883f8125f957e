"""Training recipes: a typed dataclass tree read from YAML, validated on load, with dotted overrides.

A recipe names everything a run depends on (paper section 2: model, data mixture, loss, optimiser,
schedule), so a run is reproduced from its file plus its overrides. Loading is strict: an unknown key,
a wrong type or a missing required value is a ``RecipeError`` that names the dotted key, because a
typo such as ``optim.learning_rate`` silently falling back to a default wastes a training run.

Composition: a recipe may say ``base: other.yaml`` (relative to its own file); its keys are merged over
the base recursively. Overrides on the command line use the same dotted keys::

    embeddinggemma train recipes/finetune-code.yaml optim.lr=1e-5 train.steps=200 loss.matryoshka_dims=[768,256]

Override values are parsed as YAML (``[1, 2]``, ``null``, ``true``); numbers written ``1e-5`` (which
YAML 1.1 reads as text) are accepted wherever the field is a number. Relative paths inside a recipe are
relative to the working directory, as for any command-line tool.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from embeddinggemma.config import refuse_float16
from embeddinggemma.train.losses import LossConfig

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_recipe",
    "recipe_to_dict",
]

RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes"


class RecipeError(ValueError):
    """A recipe that does not match the schema; the message names the dotted key."""


@dataclass(frozen=True)
class ModelConfig:
    """What to train: a checkpoint, optionally cut to a shallower student (``student.py``)."""

    checkpoint: str  # hub id or directory in the sentence-transformers layout
    student_layers: int | None = None  # keep this many layers (selection rule in student.py)
    max_seq_length: int = 512  # training truncation (the paper evaluates at 512 tokens)
    freeze_embeddings: bool = False  # the 262k x 768 table is 2/3 of the parameters
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DataConfig:
    """The mixture: every global batch comes from ONE dataset, drawn at ``rates`` (paper section 2)."""

    datasets: dict[str, str] = field(default_factory=dict)  # name -> path
    rates: dict[str, float] | None = None  # name -> sampling rate (normalised); None = the loader's default
    batch_size: int = 64  # GLOBAL contrastive batch (split over processes)
    num_hard_negatives: int = 1
    teacher: str | None = None  # precomputed teacher embeddings (never a teacher model in the loop)
    seed: int = 0
    synthetic: bool = False  # built-in synthetic pairs from the tokenizer's vocabulary, for smoke runs


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine / linear decay (or constant)."""

    lr: float = 2e-5
    weight_decay: float = 0.01  # never applied to norms, embeddings or biases
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still logged)


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, memory, precision, logging, checkpoints."""

    steps: int
    output_dir: str
    micro_batch_tokens: int = 16384  # tokens per forward (padded tokens when not packing)
    packing: str = "auto"  # auto: varlen (or flex) on CUDA, padded on CPU; or off, dense, flex, varlen
    gradient_cache: bool = True
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or float32, bfloat16
    device: str | None = None  # None: CUDA when available
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2  # resumable checkpoints kept in output_dir/checkpoints
    resume: bool = True  # continue from the newest checkpoint in output_dir, if any

    def __post_init__(self) -> None:
        refuse_float16(self.precision, "train.precision")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise RecipeError(f"train.precision {self.precision!r} is not one of auto, float32, bfloat16")
        if self.packing not in ("auto", "off", "dense", "flex", "varlen"):
            raise RecipeError(f"train.packing {self.packing!r} is not one of auto, off, dense, flex, varlen")


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation with ``embeddinggemma.eval.runner`` on task or suite directories."""

    tasks: tuple[str, ...] = ()
    every: int = 0  # steps; 0: only after the last step (when tasks are given)
    dims: tuple[int, ...] | None = None  # Matryoshka dims to score (default: full width)
    batch_size: int = 32


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A whole run. Sections in the order a reader wants them (keyword-only, so required ones can follow)."""

    name: str
    description: str = ""
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        checks = [
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (0.0 <= self.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]"),
            (self.data.batch_size >= 2, "data.batch_size must be >= 2 (in-batch negatives need pairs)"),
            (self.data.num_hard_negatives >= 0, "data.num_hard_negatives must be >= 0"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
            (self.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
            (self.model.max_seq_length >= 2, "model.max_seq_length must be >= 2 (BOS and EOS)"),
            (self.data.synthetic or bool(self.data.datasets), "data.datasets is empty; name at least one dataset"),
        ]
        for ok, message in checks:
            if not ok:
                raise RecipeError(message)
        if self.data.rates is not None:
            unknown = sorted(set(self.data.rates) - set(self.data.datasets))
            if unknown and not self.data.synthetic:
                raise RecipeError(f"data.rates names {unknown}, which are not in data.datasets")
            if any(r < 0 for r in self.data.rates.values()) or not any(r > 0 for r in self.data.rates.values()):
                raise RecipeError("data.rates must be >= 0 with at least one > 0")


# -- typed conversion ------------------------------------------------------------------------------


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against a type hint; raise RecipeError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if value is None and not (origin in (typing.Union, types.UnionType) and type(None) in args):
        raise RecipeError(f"{key} is required but null; set it in the recipe or as {key}=...")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is tuple or origin is list:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise RecipeError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            items = [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return {_convert(k, args[0], key): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                value = tp(value)
            except ValueError:
                raise RecipeError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key}: expected text, got {value!r}")
        return value
    raise RecipeError(f"{key}: unsupported field type {tp}")  # a schema bug, not a user error


def from_dict(cls: type, data: Mapping[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys, wrong types and missing fields raise."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise RecipeError(f"unknown key {prefix}{unknown[0]} (valid keys under {where}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"missing required key {prefix}{name}; set it in the recipe or as {prefix}{name}=...")
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def recipe_to_dict(obj: Any) -> Any:
    """A recipe (or any part) as plain YAML-able data; ``from_dict`` reads it back to an equal recipe."""
    if dataclasses.is_dataclass(obj):
        return {f.name: recipe_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [recipe_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: recipe_to_dict(v) for k, v in obj.items()}
    return obj


# -- files and overrides ---------------------------------------------------------------------------


def _yaml():
    try:
        import yaml
    except ImportError:
        raise RecipeError("reading recipes needs PyYAML: pip install 'embeddinggemma[train]'") from None
    return yaml


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"recipe {path} includes itself through 'base'")
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist" + (f" (known: {_known()})" if RECIPES_DIR.is_dir() else ""))
    yaml = _yaml()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise RecipeError(f"{path}: base must be a file name, got {base!r}")
    return _merge(_read_raw(path.parent / base, (*seen, path)), raw)


def _known() -> str:
    return ", ".join(sorted(p.name for p in RECIPES_DIR.glob("*.yaml")))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a raw recipe mapping."""
    yaml = _yaml()
    out = _merge({}, raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=1e-5)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise RecipeError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node = out
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, merge (``base``), override and validate a recipe.

    A bare name such as ``smoke-tiny`` or ``smoke-tiny.yaml`` that is not a file is looked up in the
    repository's ``recipes/`` directory.
    """
    path = Path(path)
    if not path.exists() and RECIPES_DIR.is_dir():
        candidate = RECIPES_DIR / (path.name if path.suffix else path.name + ".yaml")
        if candidate.is_file():
            path = candidate
    raw = apply_overrides(_read_raw(path), overrides)
    try:
        return from_dict(Recipe, raw)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
