"""The T5Gemma-style encoder-decoder built from a Gemma 3 decoder (paper section 2).

Adaptation recipe (T5Gemma, Zhang et al. 2025): both halves start from the decoder's weights.

- Encoder: the decoder's stack (`Gemma3Encoder`, the module EmbeddingGemma uses) with bidirectional
  masks: full layers see the whole input, sliding layers the symmetric band |i - j| <= sliding_window // 2,
  as EmbeddingGemma's encoder does. At initialisation it computes exactly what the decoder computes
  with bidirectional masks.
- Decoder: the same layers, causal, each with a cross-attention block between self-attention and the
  MLP (pre- and post-norm, like every Gemma 3 sub-block). Cross-attention is initialised from the
  layer's self-attention: the same q/k/v/o projections, QK-norms and sandwich norms; it takes no
  rotary embedding (encoder and decoder positions are different sequences; T5Gemma's cross-attention
  has none either).
- One embedding table for encoder input, decoder input and the output projection (tied), with
  `Gemma3CausalLM`'s logit handling.

The attention kernels come from the caller, per layer type, as for the encoder: `encoder_attend`
(bidirectional), `decoder_attend` (causal) and `cross_attend` (decoder queries x encoder keys), so
padded and packed batches share this file (`embeddinggemma.engine.masks`, `encdec.ul2`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from embeddinggemma.checkpoint import CheckpointError, _safetensors_files, _save_tensors, load_weights
from embeddinggemma.config import ConfigError, Gemma3TextConfig
from embeddinggemma.encdec.decoder import Gemma3CausalLM, tied_logits
from embeddinggemma.model import Attention, AttentionFn, EncoderLayer, Gemma3Encoder, RMSNorm, rope_tables

logger = logging.getLogger(__name__)

__all__ = ["CrossAttention", "DecoderLayer", "Gemma3EncoderDecoder", "load_encoder_decoder", "save_encoder_decoder"]

ENCDEC_FILE = "encoder_decoder.json"


class CrossAttention(Attention):
    """Queries from the decoder, keys and values from the encoder output; QK-norm, no RoPE."""

    def forward(self, x: torch.Tensor, memory: torch.Tensor, attend: AttentionFn) -> torch.Tensor:  # type: ignore[override]
        batch, length, _ = x.shape
        source = memory.shape[1]
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(memory).view(batch, source, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(memory).view(batch, source, self.num_kv_heads, self.head_dim).transpose(1, 2)
        out = attend(self.q_norm(q), self.k_norm(k), v, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class DecoderLayer(EncoderLayer):
    """A Gemma 3 layer with a cross-attention block: self-attention -> cross-attention -> MLP."""

    def __init__(self, config: Gemma3TextConfig, layer_type: str) -> None:
        super().__init__(config, layer_type)
        self.pre_cross_attn_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.cross_attn = CrossAttention(config)
        self.post_cross_attn_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: AttentionFn,
        memory: torch.Tensor,
        cross_attend: AttentionFn,
    ) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, attend))
        x = x + self.post_cross_attn_layernorm(self.cross_attn(self.pre_cross_attn_layernorm(x), memory, cross_attend))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3DecoderStack(nn.Module):
    """Decoder layers and final norm; the embedding table is the encoder's (tied), passed in by the model."""

    def __init__(self, config: Gemma3TextConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DecoderLayer(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        attend: Mapping[str, AttentionFn],
        memory: torch.Tensor,
        cross_attend: AttentionFn,
    ) -> torch.Tensor:
        rope = rope_tables(self.config, position_ids, hidden.dtype)
        for layer in self.layers:
            cos, sin = rope[layer.layer_type]
            args = (hidden, cos, sin, attend[layer.layer_type], memory, cross_attend)
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden = layer(*args)
        return self.norm(hidden)


class Gemma3EncoderDecoder(nn.Module):
    """encoder (bidirectional `Gemma3Encoder`, owns the tied table) + decoder (causal, cross-attending)."""

    def __init__(self, config: Gemma3TextConfig, final_logit_softcapping: float | None = None) -> None:
        super().__init__()
        if not config.use_bidirectional_attention:
            config = dataclasses.replace(config, use_bidirectional_attention=True)  # the config describes the encoder
        self.config = config
        self.final_logit_softcapping = final_logit_softcapping
        self.encoder = Gemma3Encoder(config)
        self.decoder = Gemma3DecoderStack(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.norm.weight.device

    @classmethod
    def from_decoder(cls, lm: Gemma3CausalLM) -> Gemma3EncoderDecoder:
        """Encoder and decoder both from `lm`'s weights; cross-attention from each layer's self-attention."""
        with torch.device("meta"):
            model = cls(lm.config, lm.final_logit_softcapping)
        stack = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
        model.encoder.load_state_dict(stack, strict=True, assign=True)
        decoder_state = {k: v.detach().clone() for k, v in stack.items() if k != "embed_tokens.weight"}
        for i in range(len(model.decoder.layers)):
            layer = f"layers.{i}."
            for name, value in lm.model.layers[i].self_attn.state_dict().items():
                decoder_state[f"{layer}cross_attn.{name}"] = value.detach().clone()
            for cross, own in (("pre_cross_attn", "input"), ("post_cross_attn", "post_attention")):
                decoder_state[f"{layer}{cross}_layernorm.weight"] = stack[f"{layer}{own}_layernorm.weight"].clone()
        model.decoder.load_state_dict(decoder_state, strict=True, assign=True)
        return model

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attend: Mapping[str, AttentionFn]
    ) -> torch.Tensor:
        return self.encoder(input_ids, position_ids, attend)

    def decode(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attend: Mapping[str, AttentionFn],
        memory: torch.Tensor,
        cross_attend: AttentionFn,
    ) -> torch.Tensor:
        """Decoder final hidden states (B, T, C) for decoder inputs given the encoder output `memory`."""
        return self.decoder(self.encoder.embed(input_ids), position_ids, attend, memory, cross_attend)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return tied_logits(hidden, self.encoder.embed_tokens.weight, self.final_logit_softcapping)


def save_encoder_decoder(model: Gemma3EncoderDecoder, directory: str | Path, *, record: dict | None = None) -> Path:
    """config.json (the encoder's, bidirectional) + model.safetensors (encoder.*, decoder.*; the table once)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict() | {
        "architectures": ["Gemma3EncoderDecoder"],
        "final_logit_softcapping": model.final_logit_softcapping,
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _save_tensors(model.state_dict(), out / "model.safetensors")
    (out / ENCDEC_FILE).write_text(json.dumps({"kind": "t5gemma-style", **(record or {})}, indent=2) + "\n")
    return out


def load_encoder_decoder(
    directory: str | Path, *, dtype: torch.dtype | None = torch.float32, device: torch.device | str = "cpu"
) -> Gemma3EncoderDecoder:
    directory = Path(directory)
    if not (directory / ENCDEC_FILE).is_file():
        raise CheckpointError(f"{directory} is not an encoder-decoder directory (no {ENCDEC_FILE}); adapt one first")
    raw = json.loads((directory / "config.json").read_text())
    try:
        config = Gemma3TextConfig.from_hf_dict({**raw, "final_logit_softcapping": None})
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: {exc}") from exc
    with torch.device("meta"):
        model = Gemma3EncoderDecoder(config, raw.get("final_logit_softcapping"))
    load_weights(model, _safetensors_files(directory), dtype=dtype, device=device)
    return model
