"""The EmbeddingGemma network: a bidirectional Gemma 3 encoder, mean pooling, two projections.

Reads top to bottom: RMSNorm, rotary embeddings, attention, MLP, layer, encoder, head. Numerics follow
transformers' `models/gemma3/modeling_gemma3.py` (doc section 2); where they are subtle the comment
says why. The caller passes the attention kernel per layer type (`AttentionFn`) and the pooling, so
the same weights run padded batches, packed batches or quantized modules swapped in from outside
without this file knowing how batches are laid out: masks and batching live in `embeddinggemma.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from embeddinggemma.config import EmbeddingGemmaConfig, Gemma3TextConfig

# (q (B, H, T, D), k (B, Hkv, T, D), v (B, Hkv, T, D), scale) -> (B, H, T, D): applies the layer's mask
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
# final hidden states (B, T, C) -> pooled fp32 features (S, C), one row per text
PoolFn = Callable[[torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """Gemma RMSNorm: weights stored zero-centred, applied as (1 + w), math in fp32.

    The product is taken before casting back (transformers PR #29402): Llama casts first, Gemma after.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for half-split (rotate_half) RoPE over the full head_dim, computed in fp32.

    position_ids: (B, T) -> cos, sin: (B, 1, T, head_dim) in `dtype`, ready to broadcast over heads.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (base**exponent)  # (D/2,)
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_tables(
    config: Gemma3TextConfig, position_ids: torch.Tensor, dtype: torch.dtype
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """cos/sin per layer type: global layers rotate with rope_theta, sliding layers with the local base."""
    return {
        "full_attention": rotary_cos_sin(position_ids, config.head_dim, config.rope_theta, dtype),
        "sliding_attention": rotary_cos_sin(position_ids, config.head_dim, config.rope_local_base_freq, dtype),
    }


class Attention(nn.Module):
    """Multi-query attention with QK-norm applied before RoPE (Gemma 3)."""

    def __init__(self, config: Gemma3TextConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale
        hidden, heads_dim, kv_dim = (
            config.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
        self.q_proj = nn.Linear(hidden, heads_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_dim, bias=False)
        self.o_proj = nn.Linear(heads_dim, hidden, bias=False)
        # One norm over head_dim, shared by all heads.
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(self.q_norm(q), cos, sin)
        k = apply_rotary(self.k_norm(k), cos, sin)
        out = attend(q, k, v, self.scale)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """Gated GELU (tanh approximation): down(gelu(gate(x)) * up(x))."""

    def __init__(self, config: Gemma3TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class EncoderLayer(nn.Module):
    """Sandwich norms: every sub-block is normalised on the way in and on the way out."""

    def __init__(self, config: Gemma3TextConfig, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = MLP(config)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, attend))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Encoder(nn.Module):
    """Token embeddings -> 24 layers (local/global) -> final RMSNorm. State-dict keys equal HF's."""

    def __init__(self, config: Gemma3TextConfig) -> None:
        super().__init__()
        self.config = config
        # nn.Embedding's own init on the meta device imports ~800 modules (+70 MB resident), which the
        # low-memory int8 load cannot afford; initialise explicitly, and only real tensors.
        weight = torch.empty(config.vocab_size, config.hidden_size)
        if weight.device.type != "meta":
            nn.init.normal_(weight)
            weight[config.pad_token_id].zero_()
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id, _weight=weight
        )
        self.layers = nn.ModuleList(EncoderLayer(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        # HF multiplies by sqrt(hidden) cast to the activation dtype: 27.7128 becomes 27.75 in bf16. (Filled on
        # the device: torch.tensor(..., device="cuda") copies from the host and waits for the GPU first.)
        return hidden * torch.full((), self.config.embed_scale, dtype=hidden.dtype, device=hidden.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attend: Mapping[str, AttentionFn],
        output_hidden_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids, position_ids: (B, T); `attend` maps each layer type to its attention kernel.

        Returns the final hidden states (B, T, C), and with `output_hidden_states` also the input to
        every layer plus the final output (the convention of transformers' `hidden_states`).
        """
        hidden = self.embed(input_ids)
        rope = rope_tables(self.config, position_ids, hidden.dtype)
        states = [hidden] if output_hidden_states else []
        for layer in self.layers:
            cos, sin = rope[layer.layer_type]
            fn = attend[layer.layer_type]
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, cos, sin, fn, use_reentrant=False)
            else:
                hidden = layer(hidden, cos, sin, fn)
            if output_hidden_states:
                states.append(hidden)
        hidden = self.norm(hidden)
        if output_hidden_states:
            states[-1] = hidden  # HF reports the normed output as the last hidden state
            return hidden, states
        return hidden


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over attended tokens (BOS, prompt, text, EOS), accumulated in fp32. (B, T, C) -> (B, C)."""
    weights = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    summed = (hidden.float() * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp_min(1.0)


def segment_mean_pool(
    hidden: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean per text over a packed token stream, in fp32. hidden (N, C), segment_ids (N,) -> (S, C).

    `counts` (S,), the tokens per segment when the caller knows them, spares a bincount (which waits
    for the GPU to size its output).
    """
    sums = torch.zeros(num_segments, hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, segment_ids, hidden.float())
    if counts is None:
        counts = torch.bincount(segment_ids, minlength=num_segments)
    return sums / counts.clamp_min(1).to(torch.float32)[:, None]


class EmbeddingGemma(nn.Module):
    """Encoder + head: mean pooling -> Dense 768->3072 -> Dense 3072->768 -> (L2 normalise).

    The projections stay separate (not fused into one 768x768 map) so they can be trained.
    """

    def __init__(self, config: EmbeddingGemmaConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Gemma3Encoder(config.backbone)
        dims = (config.backbone.hidden_size, *config.head.dense_features)
        self.dense = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=bias)
            for d_in, d_out, bias in zip(dims[:-1], dims[1:], config.head.dense_bias, strict=True)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.norm.weight.device

    def project(self, pooled: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """Pooled fp32 features (B, C) -> sentence embeddings (B, E), normalised by default."""
        out = pooled.to(self.dense[0].weight.dtype if len(self.dense) else pooled.dtype)
        for linear in self.dense:
            out = linear(out)
        if self.config.head.normalize if normalize is None else normalize:
            out = F.normalize(out.float(), dim=-1)
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attend: Mapping[str, AttentionFn],
        pool: PoolFn,
        normalize: bool | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> sentence embeddings (S, E). The engine supplies the batch layout: positions,
        the attention kernel per layer type and the pooling (`embeddinggemma.engine.forward`)."""
        return self.project(pool(self.encoder(input_ids, position_ids, attend)), normalize)
