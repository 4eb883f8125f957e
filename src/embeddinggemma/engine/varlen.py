"""Variable-length FlashAttention for packed batches: no masks at all, just the texts' offsets.

`torch.nn.attention.varlen.varlen_attn` (PyTorch >= 2.10, CUDA) runs FlashAttention-2 over a packed
stream given `cu_seqlens`; its `window_size=(r, r)` is exactly the bidirectional band |i - j| <= r of
the sliding layers, and it has a backward (training). FlashAttention takes bf16 only, head_dim <= 256
(EmbeddingGemma: 256) and shares K/V heads across query heads without copies (MQA; PyTorch 2.13 wants
`enable_gqa=True` for it). Where it is missing (CPU, fp32, an older PyTorch) the engine uses
FlexAttention instead (`unsupported_reason` says why).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

import torch

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, Gemma3TextConfig
from embeddinggemma.engine.batching import PackedBatch
from embeddinggemma.model import AttentionFn

MAX_HEAD_DIM = 256


def _find_varlen_attn():
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return None
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn if "window_size" in inspect.signature(varlen_attn).parameters else None


# Resolved once at import: looking it up inside a compiled layer would make torch.compile trace
# `inspect`/`importlib` (a graph break in every layer).
_KERNEL = _find_varlen_attn()
# PyTorch 2.13 shares K/V heads only when asked (`enable_gqa=True`) and refuses MQA otherwise; where the
# argument is missing (2.11, the H100 benchmark's) MQA runs as it is.
_ASKS_FOR_GQA = _KERNEL is not None and "enable_gqa" in inspect.signature(_KERNEL).parameters


def unsupported_reason(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why varlen FlashAttention cannot run this model here, or None if it can."""
    if device.type != "cuda":
        return "varlen FlashAttention runs on CUDA only"
    if dtype != torch.bfloat16:
        return f"FlashAttention needs bfloat16 activations, got {dtype}"
    if head_dim > MAX_HEAD_DIM:
        return f"FlashAttention supports head_dim <= {MAX_HEAD_DIM}, got {head_dim}"
    if _KERNEL is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn with window_size"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return _self_check(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _self_check(device_index: int) -> str | None:
    """Run the kernel once against SDPA on a tiny MQA batch with a band: None if it agrees, else why not
    (a build without FlashAttention, an unsupported GPU...). Cached per device."""
    device = torch.device("cuda", device_index)
    try:
        generator = torch.Generator(device).manual_seed(0)
        lengths, heads, dim, radius = (5, 300, 2), 3, 256, 4
        n = sum(lengths)
        q = torch.randn(n, heads, dim, device=device, dtype=torch.bfloat16, generator=generator)
        k, v = (torch.randn(n, 1, dim, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(2))
        cu = torch.tensor([0, 5, 305, 307], dtype=torch.int32, device=device)
        got = varlen_attend_packed(q, k, v, dim**-0.5, cu_seqlens=cu, max_seqlen=max(lengths), radius=radius)
        segment = torch.repeat_interleave(torch.arange(3, device=device), torch.tensor(lengths, device=device))
        index = torch.arange(n, device=device)
        mask = (segment[:, None] == segment[None, :]) & ((index[:, None] - index[None, :]).abs() <= radius)
        want = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=dim**-0.5, enable_gqa=True
        ).transpose(0, 1)
        error = (got.float() - want.float()).abs().max().item()
        return None if error < 0.05 else f"varlen FlashAttention disagrees with SDPA here (max error {error:.3f})"
    except Exception as exc:  # any failure means: use FlexAttention
        return f"varlen FlashAttention failed on this device ({type(exc).__name__}: {exc})"


def varlen_attend_packed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    *,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    radius: int | None,
) -> torch.Tensor:
    """q (N, H, D), k/v (N, Hkv, D) of a packed stream -> (N, H, D)."""
    window = (-1, -1) if radius is None else (radius, radius)
    shared_heads = {"enable_gqa": q.shape[1] != k.shape[1]} if _ASKS_FOR_GQA else {}
    return _KERNEL(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale, window_size=window, **shared_heads
    )


def _varlen_attend_model(q, k, v, scale, *, dtype: torch.dtype, **kwargs) -> torch.Tensor:
    """The model's layout: q (1, H, N, D), k/v (1, Hkv, N, D) -> (1, H, N, D), views where the dtype
    already matches (under autocast the RoPE products come out in fp32; FlashAttention takes bf16)."""
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (q, k, v))
    return varlen_attend_packed(q, k, v, scale, **kwargs).transpose(0, 1)[None]


def varlen_attention_fns(batch: PackedBatch, config: Gemma3TextConfig, dtype: torch.dtype) -> dict[str, AttentionFn]:
    """Attention per layer type for the model's modules (training, and the unfused inference path);
    `dtype`: the activation dtype the kernel gets (bf16)."""
    shared = dict(cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_segment_length, dtype=dtype)
    return {
        FULL_ATTENTION: functools.partial(_varlen_attend_model, radius=None, **shared),
        SLIDING_ATTENTION: functools.partial(_varlen_attend_model, radius=config.window_radius, **shared),
    }
