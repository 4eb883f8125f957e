"""Int8 modules for CPU inference, swapped in from outside the model (the model file knows nothing of them).

- `Int8DynamicLinear`: weights int8 per output channel (symmetric), activations quantised per call
  (dynamic) and multiplied with PyTorch's x86/ARM int8 GEMM (fbgemm / qnnpack via
  `torch.ops.quantized.linear_dynamic`). Measured faster than fp32 and bf16 on AVX2 CPUs at the short
  lengths that dominate query latency (see benchmarks/cpu.py).
- `Int8Embedding`: the 262,144 x 768 table (two thirds of the parameters) as int8 rows with one fp32
  scale per row. It can live in a memory-mapped file, so only the rows a process looks up become
  resident.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q (R, C) int8, scale (R,) fp32) with weight ~= q * scale[:, None]."""
    weight = weight.float()
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _prepack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # PyTorch marks quantized tensors as deprecated; linear_dynamic still needs one to prepack.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*deprecated.*")
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(qweight, bias)


class Int8DynamicLinear(nn.Module):
    """y = x @ dequant(W).T (+ b), with W int8 per output channel and x quantised per call.

    `reduce_range` keeps activations to 7 bits, which AVX2 int8 kernels (no VNNI) need to avoid
    saturating their 16-bit intermediate sums.
    """

    def __init__(
        self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, reduce_range: bool = True
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.reduce_range = reduce_range
        self._packed = _prepack(q, scale, None if bias is None else bias.float())

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduce_range: bool = True) -> Int8DynamicLinear:
        q, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scale, bias, reduce_range)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q int8 (out, in), scale fp32 (out,)) recovered from the packed weight, for saving."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self._packed, self.reduce_range)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, dynamic"


class Int8Embedding(nn.Module):
    """Embedding lookup from int8 rows and per-row fp32 scales; returns fp32 rows."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.padding_idx = padding_idx
        # plain attributes, not buffers: the table may be a read-only memory map shared between processes
        self.q = q
        self.scale = scale

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        q, scale = quantize_rows(embedding.weight.detach())
        return cls(q, scale, embedding.padding_idx)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q, self.scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        rows = self.q.index_select(0, flat).float() * self.scale.index_select(0, flat).unsqueeze(-1)
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"
