"""GPTQ (Frantar et al. 2023) into our exact Q8_0 / Q4_0 layouts: the stronger post-training baseline.

Round-to-nearest rounds every weight on its own. GPTQ rounds one input column at a time and pushes
each column's rounding error onto the columns not yet rounded, weighted by the inverse Hessian
H = X^T X of the layer's calibration inputs, so the layer's OUTPUT error on those inputs is what gets
minimised. Each block of 32 gets its scale from its current (error-corrected) values when GPTQ
reaches it, by the same formula as round-to-nearest, so the result is an ordinary Q8_0 / Q4_0 tensor
(integers + fp16 scales) that every export and runtime of ours takes as is.

Layers are quantized in order (a layer's calibration inputs come from the already-quantized layers
before it). The embedding table has no input activations to weight errors by and is rounded to
nearest. Why not a library: GPTQ libraries (gptqmodel, auto-gptq) quantize Hugging Face decoder
models into their own asymmetric zero-point formats with GPU kernels; neither writes GGUF's
symmetric blocks with ggml's rounding, which is what our files must hold.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from embeddinggemma.engine.batching import pad_batch
from embeddinggemma.engine.forward import padded_forward
from embeddinggemma.model import EmbeddingGemma
from embeddinggemma.quant.formats import Layout, block_scale, round_to_grid
from embeddinggemma.quant.qat import (
    FakeQuantEmbedding,
    FakeQuantLinear,
    QuantizedEmbedding,
    QuantizedLinear,
    prepare_qat_,
    set_module,
)

logger = logging.getLogger(__name__)


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor, hessian: torch.Tensor, layout: Layout, damp: float = 0.01, chunk: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (R, C), scale (R, C // 32)) for `weight` (R, C) given H = X^T X (C, C)."""
    if layout.block is None:
        raise ValueError("GPTQ here writes block layouts (Q8_0 / Q4_0)")
    weight = weight.detach().double().clone()
    rows, cols = weight.shape
    hessian = hessian.double().clone()
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0
    hessian += torch.eye(cols, dtype=torch.float64) * damp * torch.diag(hessian).mean()
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    q_out = torch.zeros(rows, cols, dtype=torch.int8)
    scales = torch.zeros(rows, cols // layout.block, dtype=torch.float32)
    block = layout.block
    for start in range(0, cols, chunk):
        stop = min(start + chunk, cols)
        w = weight[:, start:stop].clone()
        errors = torch.zeros_like(w)
        inv = inverse[start:stop, start:stop]
        d32 = d16 = None
        for i in range(stop - start):
            column = start + i
            if column % block == 0:  # a new block: its scale from its current, corrected values
                d32 = block_scale(w[:, i : i + block].float(), layout)  # (R, 1)
                d16 = d32.to(layout.scale_dtype).float()
                scales[:, column // block] = d16.squeeze(-1)
            q = round_to_grid(w[:, i : i + 1].float(), d32, layout)  # (R, 1)
            q_out[:, column] = q.squeeze(-1).to(torch.int8)
            error = (w[:, i] - (q * d16).squeeze(-1).double()) / inv[i, i]
            w[:, i:] -= error[:, None] * inv[i, i:][None, :]
            errors[:, i] = error
        weight[:, stop:] -= errors @ inverse[start:stop, stop:]
    return q_out, scales.to(layout.scale_dtype)


class _HessianHook:
    """Accumulates X^T X over the real (non-padding) tokens a Linear sees."""

    def __init__(self, linear: nn.Module, valid: dict[str, torch.Tensor]) -> None:
        self.hessian = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64)
        self.valid = valid
        self.handle = linear.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0]
        x = x[self.valid["mask"]] if x.dim() == 3 else x  # encoder tokens, or pooled rows of the head
        x = x.reshape(-1, x.shape[-1]).double()
        self.hessian += x.T @ x


@torch.no_grad()
def gptq_quantize_model_(
    model: EmbeddingGemma, scheme: str, token_ids: list[list[int]], pad_id: int = 0, batch: int = 8
) -> EmbeddingGemma:
    """GPTQ every linear layer of the scheme, layer by layer (RTN for the embedding table); in place.

    Returns a converted model (QuantizedLinear / QuantizedEmbedding), like `qat.convert_`.
    """
    prepare_qat_(model, scheme)
    model.eval()
    valid: dict[str, torch.Tensor] = {}
    groups = [[f"encoder.layers.{i}." for i in range(len(model.encoder.layers))], ["dense."]]
    prefixes = [p for group in groups for p in group]
    for prefix in prefixes:
        targets = {
            name: module
            for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, FakeQuantLinear)
        }
        hooks = {name: _HessianHook(module, valid) for name, module in targets.items()}
        try:
            for start in range(0, len(token_ids), batch):
                input_ids, attention_mask = pad_batch(token_ids[start : start + batch], pad_id)
                valid["mask"] = attention_mask.bool()
                padded_forward(model, input_ids, attention_mask)
        finally:
            for hook in hooks.values():
                hook.handle.remove()
        for name, module in targets.items():
            q, scale = gptq_quantize(module.weight, hooks[name].hessian, module.layout)
            bias = None if module.bias is None else module.bias.detach().float()
            set_module(model, name, QuantizedLinear(q, scale, module.layout, bias))
        logger.info("GPTQ: %s done (%d linear layers)", prefix, len(targets))
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantEmbedding):
            from embeddinggemma.quant.formats import quantize

            q, scale = quantize(module.weight, module.layout)
            set_module(model, name, QuantizedEmbedding(q, scale, module.layout, module.padding_idx))
    return model.requires_grad_(False)
