"""Model configuration: the Gemma 3 text backbone plus the EmbeddingGemma head.

Field names are Hugging Face's (`Gemma3TextConfig`), so a checkpoint's `config.json` maps onto this
dataclass field by field and a saved config is readable by `transformers`. The head (pooling and the
two bias-free projections) lives in the sentence-transformers module folders, not in `config.json`;
it is described by `HeadConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)

# The sizes the released model was trained for (paper section 2, Matryoshka loss).
MATRYOSHKA_DIMS: tuple[int, ...] = (768, 512, 256, 128)

# Gemma 3 activations reach ~8e5; float16 stops at 65504 (docs section 7).
FLOAT16_NAMES = ("float16", "fp16", "half", "torch.float16")


def refuse_float16(dtype: object, setting: str = "dtype") -> None:
    """Raise ValueError, with the reason, when ``dtype`` (a name or ``torch.float16``) is float16: the one
    check behind every dtype and precision option of the API, the CLI and training recipes."""
    if str(dtype) in FLOAT16_NAMES:
        raise ValueError(
            f"{setting}={dtype} is refused: float16 overflows in Gemma 3 activations (they reach ~8e5, "
            "float16 stops at 65504) and gives NaN or garbage embeddings; use bfloat16 or float32"
        )


class ConfigError(ValueError):
    """A config.json that this implementation cannot run faithfully."""


def _check_type(key: str, value: Any, annotation: str) -> None:
    """JSON values of the declared field type ("768" for an int, or true for a number, is a ConfigError)."""
    accepted: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    if annotation.startswith("tuple"):
        ok = isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
        expected = "a list of strings"
    else:
        kinds = accepted.get(annotation, (object,))
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        expected = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            annotation, annotation
        )
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {json.dumps(value)}")


@dataclass(frozen=True)
class Gemma3TextConfig:
    """The Gemma 3 text stack (doc section 2). Defaults are EmbeddingGemma-300m's: bidirectional.

    ``use_bidirectional_attention=False`` describes the causal Gemma 3 language model, which only the
    decoder path (`embeddinggemma.encdec`) builds; an embedding model refuses it (`EmbeddingGemmaConfig`,
    and `from_hf_dict` unless the caller asks for a decoder).
    """

    vocab_size: int = 262144
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 24
    num_attention_heads: int = 3
    num_key_value_heads: int = 1
    head_dim: int = 256
    # Attention logits are scaled by query_pre_attn_scalar**-0.5, which is NOT head_dim in general.
    query_pre_attn_scalar: float = 256
    # Hugging Face's stored value. Bidirectional sliding layers see |i - j| <= sliding_window // 2.
    sliding_window: int = 512
    layer_types: tuple[str, ...] = field(
        default_factory=lambda: tuple(FULL_ATTENTION if (i + 1) % 6 == 0 else SLIDING_ATTENTION for i in range(24))
    )
    rope_theta: float = 1_000_000.0  # full-attention layers
    rope_local_base_freq: float = 10_000.0  # sliding layers
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    hidden_activation: str = "gelu_pytorch_tanh"
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    use_bidirectional_attention: bool = True

    def __post_init__(self) -> None:
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; they must match"
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(f"unknown layer types {unknown}; expected {list(LAYER_TYPES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ConfigError(f"hidden_activation {self.hidden_activation!r} is not Gemma 3's gated tanh-GELU")

    @property
    def window_radius(self) -> int:
        """Sliding layers let token i attend token j iff |i - j| <= window_radius (256 for 512)."""
        return self.sliding_window // 2

    @property
    def attention_scale(self) -> float:
        return self.query_pre_attn_scalar**-0.5

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], *, causal: bool = False) -> Gemma3TextConfig:
        """Read a Hugging Face `config.json` (transformers 4.x or 5.x layout).

        Unknown keys (use_cache, initializer_range, ...) are ignored; keys that would change the
        arithmetic in a way this implementation does not follow raise `ConfigError`. A causal config
        (the Gemma 3 language model) is refused unless `causal=True` (the decoder path asks for it).
        """
        model_type = raw.get("model_type", "gemma3_text")
        if model_type != "gemma3_text":
            raise ConfigError(f"model_type {model_type!r} is not supported; expected 'gemma3_text'")
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if raw.get(key) is not None:
                raise ConfigError(f"{key}={raw[key]!r} is set; EmbeddingGemma uses no softcapping")
        if raw.get("attention_bias"):
            raise ConfigError("attention_bias=true is not supported; Gemma 3 attention is bias-free")
        if raw.get("rope_scaling") is not None:
            raise ConfigError(f"rope_scaling={raw['rope_scaling']!r} is not supported (EmbeddingGemma uses none)")

        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            if key in types:
                if not (key == "head_dim" and value is None):  # null head_dim: derived below
                    _check_type(key, value, str(types[key]))
                kwargs[key] = value
        # transformers 5 stores RoPE as {"full_attention": {...}, "sliding_attention": {...}}.
        rope = raw.get("rope_parameters")
        if rope:
            for layer_type, target in (
                (FULL_ATTENTION, "rope_theta"),
                (SLIDING_ATTENTION, "rope_local_base_freq"),
            ):
                params = rope.get(layer_type) or {}
                if params.get("rope_type", "default") != "default":
                    raise ConfigError(f"rope_type {params['rope_type']!r} for {layer_type} is not supported")
                if "rope_theta" in params:
                    kwargs[target] = params["rope_theta"]
        if "layer_types" in kwargs:
            kwargs["layer_types"] = tuple(kwargs["layer_types"])
        elif "num_hidden_layers" in kwargs:
            pattern = raw.get("_sliding_window_pattern", raw.get("sliding_window_pattern", 6))
            kwargs["layer_types"] = tuple(
                FULL_ATTENTION if (i + 1) % pattern == 0 else SLIDING_ATTENTION
                for i in range(kwargs["num_hidden_layers"])
            )
        if kwargs.get("head_dim") is None and "hidden_size" in kwargs:
            kwargs["head_dim"] = kwargs["hidden_size"] // kwargs.get("num_attention_heads", 3)
        config = cls(**kwargs)
        if not causal:
            config.require_bidirectional()
        return config

    def require_bidirectional(self) -> None:
        """Raise `ConfigError` for a causal config: an embedding model must attend both ways."""
        if not self.use_bidirectional_attention:
            raise ConfigError(
                "use_bidirectional_attention is false: that is the causal Gemma 3 language model, not "
                "EmbeddingGemma. Causal attention silently degrades embeddings (sentence-transformers "
                "#3725); set it to true in config.json if this checkpoint is an encoder"
            )

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` that transformers' `Gemma3TextModel` and sentence-transformers read."""
        out = dataclasses.asdict(self)
        out["layer_types"] = list(self.layer_types)
        out.update(
            architectures=["Gemma3TextModel"],
            model_type="gemma3_text",
            attention_bias=False,
            attention_dropout=0.0,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            rope_scaling=None,
            use_cache=False,
        )
        return out


@dataclass(frozen=True)
class HeadConfig:
    """Mean pooling -> bias-free linear projections -> L2 normalisation (doc section 3)."""

    # Output sizes of the projections, in order; EmbeddingGemma: 768 -> 3072 -> 768.
    dense_features: tuple[int, ...] = (3072, 768)
    dense_bias: tuple[bool, ...] = (False, False)
    normalize: bool = True

    def __post_init__(self) -> None:
        if len(self.dense_features) != len(self.dense_bias):
            raise ConfigError("dense_features and dense_bias must have one entry per projection")


@dataclass(frozen=True)
class EmbeddingGemmaConfig:
    """Everything needed to build the model: backbone, head and tokenisation limits."""

    backbone: Gemma3TextConfig = field(default_factory=Gemma3TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    max_seq_length: int = 2048

    def __post_init__(self) -> None:
        self.backbone.require_bidirectional()

    @property
    def embedding_dim(self) -> int:
        return self.head.dense_features[-1] if self.head.dense_features else self.backbone.hidden_size

    @classmethod
    def embeddinggemma_300m(cls) -> EmbeddingGemmaConfig:
        """The released `google/embeddinggemma-300m` shape (307,581,696 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> EmbeddingGemmaConfig:
        """Deliberately odd sizes so broadcasting bugs cannot hide (tests only).

        Window shorter than typical test inputs, query_pre_attn_scalar != head_dim, grouped KV heads.
        """
        backbone = Gemma3TextConfig(
            vocab_size=99,
            hidden_size=48,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=6,
            layer_types=(SLIDING_ATTENTION, SLIDING_ATTENTION, FULL_ATTENTION),
            max_position_embeddings=128,
        )
        return cls(
            backbone=backbone,
            head=HeadConfig(dense_features=(80, 40), dense_bias=(False, False)),
            max_seq_length=128,
        )
