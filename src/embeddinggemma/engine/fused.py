"""The fused inference path: the encoder of a packed batch in ~9 kernels per layer, with no compilation.

The embedding lookup with the first input norm, and the mean pooling at the end, are one kernel each.

Per layer: one matmul for q, k and v together, `qk_norm_rope` (Triton), attention over the texts'
offsets (FlashAttention varlen, or FlexAttention with block masks), the output projection,
`add_rmsnorm` (residual add with the post-attention norm and the feed-forward input norm in one pass),
one matmul for gate and up together, `geglu`, the down projection, and `add_rmsnorm` again (which also
applies the next layer's input norm, or the final norm). The concatenated weights are cached on the
model's modules and rebuilt when a weight changes (`concatenated`), so a model changed in place is never
stale. Inference only: the Triton kernels have no backward; training runs the model's modules.

`kernels="torch"` runs the same structure with the PyTorch references of the kernels: the CPU check of
this file's logic against the model.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig
from embeddinggemma.engine import kernels as K
from embeddinggemma.engine import varlen
from embeddinggemma.engine.batching import PackedBatch
from embeddinggemma.engine.flex import flex_attend, packed_block_masks
from embeddinggemma.engine.masks import packed_masks
from embeddinggemma.model import EmbeddingGemma


def unsupported_reason(model: EmbeddingGemma, kernels: str = "triton") -> str | None:
    """Why the fused path cannot run this model, or None."""
    if kernels == "triton" and not K.triton_available():
        return "Triton is not installed"
    if kernels == "triton" and model.device.type != "cuda":
        return "the Triton kernels run on CUDA (TRITON_INTERPRET=1 runs them on CPU for tests)"
    for layer in model.encoder.layers:
        linears = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj)
        linears += (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(type(m) is not nn.Linear for m in linears):
            return "the model's layers are not plain nn.Linear (quantized or wrapped modules)"
    return None


@functools.lru_cache(maxsize=8)
def rope_tables(
    max_positions: int, head_dim: int, base: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (max_positions, head_dim / 2) in the activation dtype: the values `model.rotary_cos_sin`
    computes, once per model shape instead of once per batch."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (base**exponent)
    angles = torch.arange(max_positions, device=device).float()[:, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def concatenated(module: nn.Module, name: str, weights: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(weights), kept on `module` until one of them changes (in place: its version counter; or
    is replaced: its storage), so a model trained or reloaded in place is never served stale."""
    key = tuple((w.data_ptr(), w._version, w.dtype) for w in weights)
    cached = module.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = (key, torch.cat(weights))
        module.__dict__[name] = cached
    return cached[1]


class _Attention:
    """Attention over a packed stream in the (N, H, D) layout, per layer type."""

    def __init__(self, batch: PackedBatch, config: Gemma3TextConfig, attention: str, dtype: torch.dtype) -> None:
        self.kind = attention
        self.radius = {FULL_ATTENTION: None, SLIDING_ATTENTION: config.window_radius}
        self.batch = batch
        if attention == "varlen":
            reason = varlen.unsupported_reason(batch.input_ids.device, dtype, config.head_dim)
            if reason is not None:
                raise ValueError(f"attention='varlen' is not available: {reason}; use 'flex' or 'dense'")
        elif attention == "flex":
            self.block_masks = packed_block_masks(batch, config)
        elif attention == "dense":
            self.dense_masks = packed_masks(batch, config)
        else:
            raise ValueError(f"attention must be 'varlen', 'flex' or 'dense', got {attention!r}")

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_type: str, scale: float):
        if self.kind == "varlen":
            return varlen.varlen_attend_packed(
                q,
                k,
                v,
                scale,
                cu_seqlens=self.batch.cu_seqlens,
                max_seqlen=self.batch.max_segment_length,
                radius=self.radius[layer_type],
            )
        layout = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])  # (1, H, N, D)
        if self.kind == "flex":
            out = flex_attend(
                *layout, scale, block_mask=self.block_masks[layer_type], compiled=q.is_cuda
            )  # (1, H, N, D)
        else:
            out = F.scaled_dot_product_attention(
                *layout, attn_mask=self.dense_masks[layer_type], scale=scale, enable_gqa=k.shape[1] != q.shape[1]
            )
        return out[0].transpose(0, 1)


@torch.inference_mode()
def encode(model: EmbeddingGemma, batch: PackedBatch, attention: str = "varlen", kernels: str = "auto"):
    """Final hidden states (N, C) of a packed batch (the output of the encoder's final norm).

    `kernels`: "triton", "torch" (the references) or "auto" (Triton on CUDA, the references elsewhere).
    """
    encoder = model.encoder
    config = encoder.config
    if kernels == "auto":
        kernels = "triton" if batch.input_ids.is_cuda and K.triton_available() else "torch"
    ops = _KERNELS[kernels]
    layers = encoder.layers
    n = batch.input_ids.shape[1]
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    positions = batch.position_ids[0]
    dtype = model.dtype
    tables = {
        FULL_ATTENTION: rope_tables(config.max_position_embeddings, head_dim, config.rope_theta, dtype, model.device),
        SLIDING_ATTENTION: rope_tables(
            config.max_position_embeddings, head_dim, config.rope_local_base_freq, dtype, model.device
        ),
    }
    attend = _Attention(batch, config, attention, dtype)
    eps = config.rms_norm_eps
    residual, hidden = ops.embed_rmsnorm(
        batch.input_ids[0], encoder.embed_tokens.weight, config.embed_scale, layers[0].input_layernorm.weight, eps
    )  # (N, C) each
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        qkv = F.linear(
            hidden, concatenated(attn, "_fused_qkv", [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        )
        cos, sin = tables[layer.layer_type]
        q, k, v = ops.qk_norm_rope(
            qkv, attn.q_norm.weight, attn.k_norm.weight, positions, cos, sin, heads, kv_heads, eps
        )  # (N, H, D), (N, Hkv, D) x 2
        out = attend(q, k, v, layer.layer_type, attn.scale)  # (N, H, D)
        branch = F.linear(out.reshape(n, heads * head_dim), attn.o_proj.weight)
        residual, hidden = ops.add_rmsnorm(
            branch, residual, layer.post_attention_layernorm.weight, layer.pre_feedforward_layernorm.weight, eps
        )
        gate_up = F.linear(hidden, concatenated(mlp, "_fused_gate_up", [mlp.gate_proj.weight, mlp.up_proj.weight]))
        branch = F.linear(ops.geglu(gate_up), mlp.down_proj.weight)
        next_norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else encoder.norm
        residual, hidden = ops.add_rmsnorm(
            branch, residual, layer.post_feedforward_layernorm.weight, next_norm.weight, eps
        )
    return hidden


@torch.inference_mode()
def mean_pool(hidden: torch.Tensor, batch: PackedBatch, kernels: str = "auto") -> torch.Tensor:
    """(num_texts, C) fp32 means of the texts of a packed batch, from `encode`'s output."""
    if kernels == "auto":
        kernels = "triton" if hidden.is_cuda and K.triton_available() else "torch"
    return _KERNELS[kernels].segment_mean(hidden, batch.cu_seqlens, batch.num_texts)


class _TorchKernels:
    qk_norm_rope = staticmethod(K.qk_norm_rope_reference)
    add_rmsnorm = staticmethod(K.add_rmsnorm_reference)
    geglu = staticmethod(K.geglu_reference)
    embed_rmsnorm = staticmethod(K.embed_rmsnorm_reference)
    segment_mean = staticmethod(K.segment_mean_reference)


class _TritonKernels:
    qk_norm_rope = staticmethod(lambda *args: K.qk_norm_rope(*args))
    add_rmsnorm = staticmethod(lambda *args: K.add_rmsnorm(*args))
    geglu = staticmethod(lambda *args: K.geglu(*args))
    embed_rmsnorm = staticmethod(lambda *args: K.embed_rmsnorm(*args))
    segment_mean = staticmethod(lambda *args: K.segment_mean(*args))


_KERNELS = {"torch": _TorchKernels, "triton": _TritonKernels}
