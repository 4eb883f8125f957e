"""Int8 modules for CPU inference, swapped in from outside the model (the model file knows nothing of them).

- `Int8DynamicLinear`: weights int8 per output channel (symmetric), activations quantised per call
  (dynamic) and multiplied with PyTorch's x86/ARM int8 GEMM (fbgemm / qnnpack via
  `torch.ops.quantized.linear_dynamic`). Measured faster than fp32 and bf16 on AVX2 CPUs at the short
  lengths that dominate query latency (see benchmarks/cpu.py).
- `Int8Embedding`: the 262,144 x 768 table (two thirds of the parameters) as int8 rows with one fp32
  scale per row, in memory or read row by row from the cache file (`RowFile`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from embeddinggemma.quant.safetensors_io import RowFile


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

    The kernel takes one activation scale per call. `token_buckets` (a width in powers of two) groups
    the rows (tokens) whose max |x| lie in the same bucket and makes one call per group, so a few
    huge rows (the BOS token of Gemma carries activations ~1e5) no longer flatten every other row:
    per-token precision within a factor 2**width, for a handful of extra calls.
    `reduce_range` keeps activations to 7 bits, which AVX2 int8 kernels (no VNNI) need to avoid
    saturating their 16-bit intermediate sums.
    """

    def __init__(
        self,
        q: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        reduce_range: bool = True,
        token_buckets: float | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.reduce_range = reduce_range
        self.token_buckets = token_buckets
        self._packed = _prepack(q, scale, None if bias is None else bias.float())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, reduce_range: bool = True, token_buckets: float | None = None
    ) -> Int8DynamicLinear:
        q, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scale, bias, reduce_range, token_buckets)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q int8 (out, in), scale fp32 (out,)) recovered from the packed weight, for saving."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x2d, self._packed, self.reduce_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).float()
        if self.token_buckets is None:
            out = self._matmul(x2d)
        else:
            row_max = x2d.abs().amax(dim=1).clamp_min(1e-12)
            bucket = torch.floor(torch.log2(row_max) / self.token_buckets)
            order = torch.argsort(bucket, stable=True)
            counts = torch.unique_consecutive(bucket[order], return_counts=True)[1].tolist()
            sorted_out = torch.cat([self._matmul(part) for part in x2d[order].split(counts)])
            out = torch.empty_like(sorted_out)
            out[order] = sorted_out
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        buckets = "" if self.token_buckets is None else f", token buckets 2**{self.token_buckets:g}"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, dynamic{buckets}"


class Int8Embedding(nn.Module):
    """Embedding lookup from int8 rows and per-row fp32 scales; returns fp32 rows.

    `q` is an int8 tensor, or a `RowFile` that reads the looked-up rows from disk on demand (the
    on-device path: the 201 MB table never enters the process).
    """

    def __init__(self, q: torch.Tensor | RowFile, scale: torch.Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.padding_idx = padding_idx
        # plain attributes, not buffers: a RowFile is not a tensor, and neither is trained
        self.q = q
        self.scale = scale

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        q, scale = quantize_rows(embedding.weight.detach())
        return cls(q, scale, embedding.padding_idx)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.q.read_all() if isinstance(self.q, RowFile) else self.q), self.scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        if isinstance(self.q, RowFile):
            rows = self.q.gather(flat.cpu()).to(input_ids.device)
        else:
            rows = self.q.index_select(0, flat)
        rows = rows.float() * self.scale.index_select(0, flat).unsqueeze(-1)
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"
