"""Weight layouts for quantization, bit for bit as the files store them (paper section 2, QAT).

- ``q8_0``: GGUF's Q8_0. Rows split into blocks of 32 values, one fp16 scale d = max|x| / 127 per
  block, q = round-half-away(x / d) in [-127, 127], x ~= q * d.
- ``q4_0``: GGUF's Q4_0. Blocks of 32, d = x_m / -8 where x_m is the value of largest magnitude
  (sign kept, so it maps to -8 exactly), q = min(15, trunc(x / d + 8.5)) - 8 in [-8, 7], x ~= q * d.
- ``int8_channel``: one fp32 scale per row (output channel), d = max|x| / 127, as Q8_0 otherwise.

The arithmetic follows ggml's reference quantizers (``ggml-quants.c``, mirrored by the ``gguf``
package's numpy code) step by step in fp32, including the scale being computed in fp32 for the
rounding and stored in fp16, so fake quantization during training (`quant/qat.py`), the converted
integer weights and every export (GGUF, ONNX) hold the same numbers. Blocks run along the last axis
(a Linear's input features, an embedding row), so a row never shares a scale with another row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32  # GGUF Q8_0 / Q4_0 block length
_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Layout:
    """How one tensor is stored: `bits` per value, `block` values per scale (None = one per row)."""

    name: str
    bits: int
    block: int | None
    scale_dtype: torch.dtype

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.bits == 4 else -127

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise a clear error when a tensor's rows cannot be split into this layout's blocks."""
        if len(shape) != 2:
            raise ValueError(f"{name}: {self.name} quantizes 2-D weights, got shape {tuple(shape)}")
        if self.block is not None and shape[-1] % self.block:
            raise ValueError(
                f"{name}: rows of {shape[-1]} values cannot be split into {self.name} blocks of {self.block}; "
                f"this checkpoint's shapes need a per-channel scheme (int8-channel) or no quantization"
            )


Q8_0 = Layout("q8_0", 8, BLOCK, torch.float16)
Q4_0 = Layout("q4_0", 4, BLOCK, torch.float16)
INT8_CHANNEL = Layout("int8_channel", 8, None, torch.float32)
LAYOUTS = {layout.name: layout for layout in (Q8_0, Q4_0, INT8_CHANNEL)}


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _blocks(weight: torch.Tensor, layout: Layout) -> torch.Tensor:
    rows, cols = weight.shape
    block = layout.block or cols
    return weight.float().reshape(rows, cols // block, block)  # (R, blocks, block)


def quantize(weight: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (R, C) with values in [qmin, qmax], scale (R, C // block) in the layout's scale dtype).

    Dequantize with `dequantize(q, scale)`: q * scale, per block.
    """
    layout.check_shape("weight", tuple(weight.shape))
    if weight.shape[0] > _CHUNK_ROWS:  # the 262k-row table: bounded temporaries, same numbers
        parts = [quantize(part, layout) for part in weight.split(_CHUNK_ROWS)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    blocks = _blocks(weight.detach(), layout)
    d = block_scale(blocks, layout)  # (R, B, 1) fp32
    q = round_to_grid(blocks, d, layout).to(torch.int8).reshape(weight.shape)
    return q, d.squeeze(-1).to(layout.scale_dtype)


def block_scale(blocks: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The fp32 scale of each block (..., block) -> (..., 1): Q4_0 maps the signed extreme to -8, the
    int8 layouts map max |x| to 127. Stored rounded to the layout's scale dtype."""
    if layout.name == "q4_0":
        index = blocks.abs().argmax(dim=-1, keepdim=True)  # first of equal magnitudes, as numpy and ggml
        return torch.gather(blocks, -1, index) / -8.0
    return blocks.abs().amax(dim=-1, keepdim=True) / 127.0


def round_to_grid(x: torch.Tensor, d: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Integer values (as float) of `x` on the grid of fp32 scale `d` (broadcast), as ggml rounds them."""
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    if layout.name == "q4_0":
        return torch.trunc(x * inv + 8.5).clamp_(0, 15) - 8.0
    return _round_half_away(x * inv).clamp_(-127, 127)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 weights (R, C) from integer values (R, C) and per-block scales (R, C // block)."""
    rows, cols = q.shape
    blocks = scale.shape[1]
    return (q.float().reshape(rows, blocks, cols // blocks) * scale.float().unsqueeze(-1)).reshape(rows, cols)


class _RoundStraightThrough(torch.autograd.Function):
    """Forward: the quantized-dequantized weight. Backward: identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, layout: Layout) -> torch.Tensor:
        return dequantize(*quantize(weight, layout)).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def fake_quantize(weight: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The weight as the exported file will hold it, with straight-through gradients for training."""
    return _RoundStraightThrough.apply(weight, layout)
