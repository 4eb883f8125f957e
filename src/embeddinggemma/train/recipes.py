"""Training recipes: a typed dataclass tree read from YAML, validated on load (pydantic), with dotted overrides.

A recipe names everything a run depends on (paper section 2: model, data mixture, loss, optimiser,
schedule), so a run is reproduced from its file plus its overrides. Loading is strict: an unknown key,
a wrong type or a missing required value is a ``RecipeError`` that names the dotted key, because a
typo such as ``optim.learning_rate`` silently falling back to a default wastes a training run.

Composition: a recipe may say ``base: other.yaml`` (relative to its own file); its keys are merged over
the base recursively. Overrides on the command line use the same dotted keys::

    embeddinggemma train finetune-code optim.lr=1e-5 train.steps=200 loss.matryoshka_dims=[768,256]

Override values are parsed as YAML (``[1, 2]``, ``null``, ``true``); numbers written ``1e-5`` (which
YAML 1.1 reads as text) are accepted wherever the field is a number. Relative paths inside a recipe are
relative to the working directory, as for any command-line tool. The recipes of this project ship inside
the package (``embeddinggemma/recipes/``, :func:`shipped_recipes`), so a name works from any directory.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

try:  # the [train] extra
    import yaml
    from pydantic import ConfigDict, StrictBool, TypeAdapter, ValidationError, with_config
    from pydantic_core import ErrorDetails
except ImportError as exc:
    raise ImportError(f"training recipes need the [train] extra: pip install 'embeddinggemma[train]' ({exc})") from exc

from embeddinggemma.config import refuse_float16
from embeddinggemma.train.losses import LossConfig

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "QATConfig",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_recipe",
    "recipe_to_dict",
    "shipped_recipes",
]

# Package data, so `embeddinggemma train NAME` works from an installed wheel.
SHIPPED_RECIPES: Traversable = importlib.resources.files("embeddinggemma") / "recipes"


class RecipeError(ValueError):
    """A recipe that does not match the schema; the message names the dotted key."""


@dataclass(frozen=True)
class ModelConfig:
    """What to train: a checkpoint, or a new model initialised from a Gemma 3 decoder (``init``, paper
    section 2: ``encdec.init``), optionally cut to a shallower student (``student.py``)."""

    checkpoint: str  # hub id or directory in the sentence-transformers layout (init: its tokenizer and prompts)
    # checkpoint: the checkpoint's weights. encoder-decoder: the encoder of a UL2-adapted encoder-decoder
    # (init_from: its directory, from `embeddinggemma adapt`). decoder: a Gemma 3 decoder's weights, run
    # bidirectionally (init_from: a .gguf file or decoder directory; null: Gemma 3 270M). random: the
    # decoder's architecture, Gemma-initialised. The head (d -> 4d -> d) is new for all three.
    init: Literal["checkpoint", "encoder-decoder", "decoder", "random"] = "checkpoint"
    init_from: str | None = None
    student_layers: int | None = None  # keep this many layers (selection rule in student.py)
    max_seq_length: int = 512  # training truncation (the paper evaluates at 512 tokens)
    freeze_embeddings: StrictBool = False  # the 262k x 768 table is 2/3 of the parameters
    gradient_checkpointing: StrictBool = False


@dataclass(frozen=True)
class DataConfig:
    """The mixture: every global batch comes from ONE dataset, drawn at ``rates`` (paper section 2)."""

    datasets: dict[str, str] = field(default_factory=dict)  # name -> path
    rates: dict[str, float] | None = None  # name -> sampling rate (normalised); None = the loader's default
    batch_size: int = 64  # GLOBAL contrastive batch (split over processes)
    num_hard_negatives: int = 1
    teacher: str | None = None  # precomputed teacher embeddings (never a teacher model in the loop)
    seed: int = 0
    synthetic: StrictBool = False  # built-in synthetic pairs from the tokenizer's vocabulary, for smoke runs


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
    gradient_cache: StrictBool = True
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or float32, bfloat16
    device: str | None = None  # None: CUDA when available
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2  # resumable checkpoints kept in output_dir/checkpoints
    resume: StrictBool = True  # continue from the newest checkpoint in output_dir, if any

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


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training (paper section 2, ``quant/qat.py``): the forward passes see the weights
    rounded as the exported file will hold them; the saved checkpoint keeps the float weights, whose
    rounding (`quantize=` at load, `embeddinggemma export --scheme`) reproduces the trained one exactly."""

    scheme: str | None = None  # int8 (Q8_0), int4 (Q4_0), mixed (e4_a8_f4_p4); None: no QAT

    def __post_init__(self) -> None:
        if self.scheme is not None:
            from embeddinggemma.quant.qat import resolve_scheme

            try:
                resolve_scheme(self.scheme)
            except ValueError as error:
                raise RecipeError(f"qat.scheme: {error}") from None


@with_config(ConfigDict(extra="forbid"))  # applies to every section: an unknown key is an error
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
    qat: QATConfig = field(default_factory=QATConfig)

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
            (
                self.model.init != "encoder-decoder" or self.model.init_from is not None,
                "model.init encoder-decoder needs model.init_from: the adapted encoder-decoder directory",
            ),
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


# -- typed conversion (pydantic) -------------------------------------------------------------------


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def _dotted(loc: Sequence[str | int]) -> str:
    """``("optim", "betas", 1)`` -> ``optim.betas[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _section_fields(cls: type, path: Sequence[str | int]) -> list[str]:
    """The field names of the dataclass found at ``path`` below ``cls`` (for "valid keys under ...")."""
    for part in path:
        if not (dataclasses.is_dataclass(cls) and isinstance(part, str)):
            return []
        hint = typing.get_type_hints(cls).get(part)
        options = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
        cls = next((a for a in options if dataclasses.is_dataclass(a)), None)  # type: ignore[assignment]
    return sorted(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []


def _describe(cls: type, error: ErrorDetails) -> str:
    """One pydantic error as a sentence that names the dotted key and says what to write instead."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    key = _dotted(loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        section = _dotted(loc[:-1]) or "the top level"
        return f"unknown key {key} (valid keys under {section}: {', '.join(_section_fields(cls, loc[:-1]))})"
    if kind in ("missing", "missing_argument") and loc and isinstance(loc[-1], int):
        return f"{_dotted(loc[:-1])}: no value at position {loc[-1]} (got {value!r})"
    if kind in ("missing", "missing_argument"):
        return f"missing required key {key}; set it in the recipe or as {key}=..."
    if value is None and kind.endswith("_type"):
        return f"{key} is required but null; set it in the recipe or as {key}=..."
    if kind == "value_error":  # a dataclass's own check (__post_init__): its message names its keys
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return message if not key or message.startswith(key) else f"{key}: {message}"
    return f"{key}: {error['msg'][:1].lower()}{error['msg'][1:]} (got {value!r})"


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Build dataclass ``cls`` (a :class:`Recipe` or one of its sections) from plain data with pydantic:
    unknown keys, wrong types and missing fields raise one RecipeError that names every bad dotted key."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        raise RecipeError("; ".join(_describe(cls, e) for e in exc.errors())) from None


def recipe_to_dict(obj: Any) -> Any:
    """A recipe (or any section) as plain YAML-able data; ``from_dict`` reads it back to an equal recipe."""
    return _adapter(type(obj)).dump_python(obj, mode="json")


# -- files and overrides ---------------------------------------------------------------------------


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _read_raw(source: Traversable, directory: Traversable, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe file's mapping with its ``base`` chain merged in (``base`` is relative to ``directory``)."""
    if isinstance(source, Path):
        source = source.resolve()
        directory = source.parent
    if str(source) in seen:
        raise RecipeError(f"recipe {source} includes itself through 'base'")
    if not source.is_file():
        raise RecipeError(f"recipe {source} does not exist (shipped recipes: {', '.join(shipped_recipes())})")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise RecipeError(f"{source}: base must be a file name, got {base!r}")
    return _merge(_read_raw(directory.joinpath(base), directory, (*seen, str(source))), raw)


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (``embeddinggemma/recipes/*.yaml``)."""
    return sorted(p.name.removesuffix(".yaml") for p in SHIPPED_RECIPES.iterdir() if p.name.endswith(".yaml"))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a raw recipe mapping."""
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


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, schema: type = Recipe) -> Any:
    """Read, merge (``base``), override and validate a recipe (``schema``: ``Recipe``, or another recipe
    dataclass such as ``train.ul2.UL2Recipe``).

    A name such as ``smoke-tiny`` or ``smoke-tiny.yaml`` (or any path that does not exist, by its file name)
    is looked up among the recipes shipped with the package (:func:`shipped_recipes`).
    """
    source: Traversable = Path(path)
    if not source.exists():
        shipped = SHIPPED_RECIPES / (source.name if source.suffix else source.name + ".yaml")
        if shipped.is_file():
            source = shipped
    raw = apply_overrides(_read_raw(source, SHIPPED_RECIPES), overrides)
    try:
        return from_dict(schema, raw)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
