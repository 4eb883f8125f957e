"""Quantization-aware training and weight-only quantization by module swap (paper section 2, QAT).

The lifecycle of gpt-fast / torchao, from outside the model (model.py knows nothing of it):

    plan = prepare_qat_(model, "int4")       # nn.Linear / nn.Embedding -> FakeQuant* (same parameters)
    ... train: forward passes see the weights exactly as the file will hold them, gradients pass
        straight through the rounding to the float weights ...
    convert_(model)                          # FakeQuant* -> Quantized* (integer values + scales)

Round-to-nearest post-training quantization is `convert_(prepare_qat_(model, scheme))` with no
training in between. The converted model's outputs equal the fake-quantized model's bit for bit: both
compute with `formats.dequantize(formats.quantize(w))`.

Schemes (which layout each weight gets; norms always stay fp32):

| scheme | embedding table | attention q/k/v/o | feed-forward | head projections |
|---|---|---|---|---|
| int8 | Q8_0 | Q8_0 | Q8_0 | Q8_0 |
| int4 | Q4_0 | Q4_0 | Q4_0 | Q4_0 |
| mixed (`e4_a8_f4_p4`) | Q4_0 | Q8_0 | Q4_0 | Q4_0 |
| int8-channel | per-row int8 | per-channel int8 | per-channel int8 | per-channel int8 |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embeddinggemma.quant.formats import INT8_CHANNEL, Q4_0, Q8_0, Layout, dequantize, fake_quantize, quantize
from embeddinggemma.quant.schemes import SCHEME_ALIASES, SCHEME_NAMES, resolve_scheme  # noqa: F401

# weight group -> layout, per scheme. Groups: "embed", "attn", "ffn", "proj".
SCHEMES: dict[str, dict[str, Layout]] = {
    "int8": {"embed": Q8_0, "attn": Q8_0, "ffn": Q8_0, "proj": Q8_0},
    "int4": {"embed": Q4_0, "attn": Q4_0, "ffn": Q4_0, "proj": Q4_0},
    "mixed": {"embed": Q4_0, "attn": Q8_0, "ffn": Q4_0, "proj": Q4_0},  # e4_a8_f4_p4
    "int8-channel": {"embed": INT8_CHANNEL, "attn": INT8_CHANNEL, "ffn": INT8_CHANNEL, "proj": INT8_CHANNEL},
    # the int8-channel weights; the runtime quantizes activations too (schemes.INT8_ACTIVATION_SCHEMES)
    "w8a8": {"embed": INT8_CHANNEL, "attn": INT8_CHANNEL, "ffn": INT8_CHANNEL, "proj": INT8_CHANNEL},
}


def weight_group(name: str) -> str | None:
    """Which scheme group a module belongs to, from its name in `EmbeddingGemma` (None: not quantized)."""
    if name.endswith("embed_tokens"):
        return "embed"
    if ".self_attn." in name and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return "attn"
    if ".mlp." in name:
        return "ffn"
    if name.startswith("dense."):
        return "proj"
    return None


def quantization_plan(model: nn.Module, scheme: str) -> dict[str, Layout]:
    """Module name -> layout for every weight the scheme quantizes, shapes checked up front."""
    layouts = SCHEMES[resolve_scheme(scheme)]
    plan: dict[str, Layout] = {}
    for name, module in model.named_modules():
        group = weight_group(name)
        if group is None or not isinstance(module, nn.Linear | nn.Embedding | _QuantModule):
            continue
        layout = layouts[group]
        layout.check_shape(f"{name}.weight", tuple(module.weight.shape))
        plan[name] = layout
    if not plan:
        raise ValueError("no quantizable weights found; is this an EmbeddingGemma model?")
    return plan


class _QuantModule(nn.Module):
    layout: Layout


class FakeQuantLinear(_QuantModule):
    """nn.Linear whose forward uses the weight rounded to `layout` (straight-through gradients).

    Owns the same `weight` (and `bias`) parameter objects as the Linear it replaces, so optimizer
    state, state-dict keys and checkpoints are unchanged.
    """

    def __init__(self, linear: nn.Linear, layout: Layout) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quantize(self.weight, self.layout), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fake {self.layout.name}"


class FakeQuantEmbedding(_QuantModule):
    """nn.Embedding with rows rounded to `layout`. Only the looked-up rows are rounded (blocks never
    span rows), so a step costs the batch's tokens, not the 262k-row table."""

    def __init__(self, embedding: nn.Embedding, layout: Layout) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.weight.shape
        self.padding_idx = embedding.padding_idx
        self.weight = embedding.weight
        self.layout = layout

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        rows = fake_quantize(self.weight.index_select(0, unique), self.layout)
        return rows.index_select(0, inverse).reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fake {self.layout.name}"


class QuantizedLinear(_QuantModule):
    """Integer weights (int8 tensor, values in the layout's range) + scales; computes with them dequantized."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, layout: Layout, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.layout = layout
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.layout.name}"


class QuantizedEmbedding(_QuantModule):
    """Integer rows + scales; a lookup dequantizes only the rows it needs."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, layout: Layout, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.layout = layout
        self.padding_idx = padding_idx
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        rows = dequantize(self.qweight.index_select(0, flat), self.scale.index_select(0, flat))
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.layout.name}"


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def prepare_qat_(model: nn.Module, scheme: str) -> nn.Module:
    """Swap every weight the scheme covers for its fake-quantized module, in place; returns the model."""
    if any(isinstance(m, _QuantModule) for m in model.modules()):
        raise ValueError("this model is already prepared or quantized; prepare a float model")
    for name, layout in quantization_plan(model, scheme).items():
        module = model.get_submodule(name)
        swapped = (
            FakeQuantEmbedding(module, layout) if isinstance(module, nn.Embedding) else FakeQuantLinear(module, layout)
        )
        set_module(model, name, swapped)
    return model


def strip_qat_(model: nn.Module) -> nn.Module:
    """Undo `prepare_qat_`: plain nn.Linear / nn.Embedding with the trained float weights (for saving
    a QAT checkpoint in the ordinary layout, from which `convert_` reproduces the trained rounding)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            set_module(model, name, plain)
        elif isinstance(module, FakeQuantEmbedding):
            plain = nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx, _weight=module.weight)
            set_module(model, name, plain)
    return model


@torch.no_grad()
def convert_(model: nn.Module) -> nn.Module:
    """FakeQuant* -> Quantized*: integer weights and scales, the same outputs; in place, frozen."""
    found = False
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear | FakeQuantEmbedding):
            found = True
            q, scale = quantize(module.weight, module.layout)
            if isinstance(module, FakeQuantEmbedding):
                quantized: nn.Module = QuantizedEmbedding(q, scale, module.layout, module.padding_idx)
            else:
                bias = None if module.bias is None else module.bias.detach().float()
                quantized = QuantizedLinear(q, scale, module.layout, bias)
            set_module(model, name, quantized)
    if not found:
        raise ValueError("nothing to convert: call prepare_qat_(model, scheme) first")
    return model.eval().requires_grad_(False)


def quantize_weights_(model: nn.Module, scheme: str) -> nn.Module:
    """Round-to-nearest weight-only quantization: prepare then convert, no training."""
    return convert_(prepare_qat_(model, scheme))


def quantized_tensors(model: nn.Module) -> dict[str, tuple[Layout, torch.Tensor, torch.Tensor]]:
    """Module name -> (layout, integer values, scales) of a converted model (what exports write)."""
    return {
        name: (module.layout, module.qweight, module.scale)
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLinear | QuantizedEmbedding)
    }


def scheme_of(model: nn.Module) -> dict[str, str]:
    """Module name -> layout name for the quantized / fake-quantized modules of a model."""
    return {name: module.layout.name for name, module in model.named_modules() if isinstance(module, _QuantModule)}
