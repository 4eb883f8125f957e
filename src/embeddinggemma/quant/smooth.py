"""SmoothQuant (Xiao et al. 2023) for Gemma 3: move activation outliers into the weights before int8.

Gemma's activations carry a few huge channels (up to ~8e5, doc section 2). Quantising a whole
activation row to int8 with one scale then flattens every other channel: measured per-text cosine
to fp32 drops to 0.96, mostly from `down_proj` (its input gelu(gate) * up is the most skewed). A
per-input-channel factor s (s_j = max|X_j|^a / max|W_j|^(1-a)) divides the activation and multiplies
the weight column, which is exact in real arithmetic; we fold every 1/s into the op that produces
the activation, so inference runs no extra operation:

- q/k/v and gate/up read an RMSNorm output: 1/s goes into the norm's (1 + w);
- o_proj reads attention output, a mix of V rows: 1/s goes into v_proj's output rows (shared by the
  query heads under MQA, so one factor per head dimension);
- down_proj reads gelu(gate) * up: 1/s goes into up_proj's output rows.
"""

from __future__ import annotations

import torch
from torch import nn

from embeddinggemma.engine.batching import pad_batch
from embeddinggemma.engine.forward import padded_forward
from embeddinggemma.model import EmbeddingGemma, EncoderLayer

# Diverse calibration inputs with the trained prompts: short and long, several scripts, code.
CALIBRATION_TEXTS = (
    "task: search result | query: Which planet is known as the Red Planet?",
    "task: search result | query: how do I parse command line arguments in python",
    "task: question answering | query: When did the Second World War end?",
    "task: fact checking | query: The Great Wall of China is visible from space.",
    "task: sentence similarity | query: A man is playing a guitar on stage.",
    "task: classification | query: This movie was a complete waste of two hours.",
    "task: clustering | query: Central bank raises interest rates to curb inflation",
    "task: code retrieval | query: sort a list of dictionaries by a key",
    "title: none | text: Mars, known for its reddish appearance, is often referred to as the Red Planet. Its "
    "surface is covered in iron oxide dust, and it has the tallest volcano in the solar system, Olympus Mons.",
    "title: Photosynthesis | text: Photosynthesis is the process by which green plants and some other organisms "
    "use sunlight to synthesize foods from carbon dioxide and water, generating oxygen as a by-product.",
    "title: none | text: def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n"
    "        else:\n            out.append(b[j]); j += 1\n"
    "    return out + a[i:] + b[j:]",
    "title: none | text: SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' "
    "GROUP BY customer_id ORDER BY total DESC LIMIT 10;",
    "title: none | text: const fetchUser = async (id) => { const res = await fetch(`/api/users/${id}`); "
    "return res.json(); };",
    "title: none | text: Der Eiffelturm ist ein 330 Meter hoher Eisenfachwerkturm in Paris, errichtet für die "
    "Weltausstellung 1889.",
    "title: none | text: La photosynthèse convertit l'énergie lumineuse en énergie chimique chez les plantes vertes.",
    "title: none | text: Canberra es la capital de Australia, situada en el Territorio de la Capital Australiana.",
    "title: none | text: 東京都の人口は約1400万人で、日本で最も人口の多い都道府県です。",
    "title: none | text: 长城是中国古代的军事防御工程，总长度超过两万公里。",
    "title: none | text: Машинное обучение — класс методов искусственного интеллекта, которые учатся на данных.",
    "title: none | text: القاهرة هي عاصمة مصر وأكبر مدنها، وتقع على ضفاف نهر النيل.",
    "title: none | text: भारत दक्षिण एशिया में स्थित एक विशाल देश है जिसकी राजधानी नई दिल्ली है।",
    "title: none | text: 서울은 대한민국의 수도이며 한강을 따라 위치해 있다.",
    "title: none | text: Version 3.11.7 released on 2023-12-04: see https://www.python.org/downloads/ for 64-bit "
    "installers; SHA-256 checksums 9f1e...a27c, sizes 25.4 MB and 19,886,120 bytes.",
    'title: Terms | text: THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, '
    "INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE.",
    "x",
    "",
)


def _linear_inputs(layer: EncoderLayer) -> dict[str, nn.Linear]:
    attention, mlp = layer.self_attn, layer.mlp
    return {"attn_in": attention.q_proj, "o_in": attention.o_proj, "mlp_in": mlp.gate_proj, "down_in": mlp.down_proj}


@torch.inference_mode()
def activation_absmax(
    model: EmbeddingGemma, token_ids: list[list[int]], pad_id: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Per layer, the max |activation| of every input channel of the four linear inputs (real tokens only)."""
    stats: list[dict[str, torch.Tensor]] = [{} for _ in model.encoder.layers]
    valid: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.encoder.layers):
        for key, linear in _linear_inputs(layer).items():

            def hook(module, inputs, output, i=i, key=key):
                x = inputs[0][valid["mask"]].abs().amax(0).float()  # real tokens only: (C,)
                stats[i][key] = torch.maximum(stats[i][key], x) if key in stats[i] else x

            hooks.append(linear.register_forward_hook(hook))
    try:
        for start in range(0, len(token_ids), 8):
            input_ids, attention_mask = pad_batch(token_ids[start : start + 8], pad_id)
            valid["mask"] = attention_mask.bool().to(model.device)
            padded_forward(model, input_ids.to(model.device), attention_mask.to(model.device))
    finally:
        for handle in hooks:
            handle.remove()
    return stats


def _factor(act: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    return (act.clamp_min(1e-5) ** alpha / weight_absmax.clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)


@torch.no_grad()
def smooth_(
    model: EmbeddingGemma, stats: list[dict[str, torch.Tensor]], alpha: float = 0.5, include_down_proj: bool = True
) -> None:
    """Fold SmoothQuant factors into the model in place; fp32 outputs stay the same up to rounding.

    `include_down_proj=False` leaves down_proj's input alone: its outliers are per token rather than
    per channel (handled by per-token scales instead), and moving them into up_proj only makes up_proj
    harder to quantize.
    """
    for layer, act in zip(model.encoder.layers, stats, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        qkv = (attention.q_proj, attention.k_proj, attention.v_proj)
        s = _factor(act["attn_in"], torch.stack([lin.weight.abs().amax(0) for lin in qkv]).amax(0), alpha)
        _fold_into_norm(layer.input_layernorm, s)
        for linear in qkv:
            linear.weight.mul_(s)

        heads, head_dim = attention.num_heads, attention.head_dim
        kv_heads = attention.num_kv_heads
        # o_proj input channel (h, d) comes from V head h // (heads / kv_heads), dim d: one factor per (kv, d)
        group = heads // kv_heads
        act_o = act["o_in"].view(kv_heads, group, head_dim).amax(1)  # (kv, D)
        w_o = attention.o_proj.weight.abs().amax(0).view(kv_heads, group, head_dim).amax(1)
        s_o = _factor(act_o, w_o, alpha)  # (kv, D)
        attention.v_proj.weight.div_(s_o.reshape(-1, 1))
        attention.o_proj.weight.mul_(s_o[:, None, :].expand(kv_heads, group, head_dim).reshape(1, -1))

        gate_up = (mlp.gate_proj, mlp.up_proj)
        s = _factor(act["mlp_in"], torch.stack([lin.weight.abs().amax(0) for lin in gate_up]).amax(0), alpha)
        _fold_into_norm(layer.pre_feedforward_layernorm, s)
        for linear in gate_up:
            linear.weight.mul_(s)

        if include_down_proj:
            s = _factor(act["down_in"], mlp.down_proj.weight.abs().amax(0), alpha)
            mlp.up_proj.weight.div_(s[:, None])
            mlp.down_proj.weight.mul_(s)


def _fold_into_norm(norm: nn.Module, factor: torch.Tensor) -> None:
    """Gemma norms apply (1 + w): divide that product by `factor`."""
    norm.weight.copy_((1.0 + norm.weight.float()) / factor - 1.0)
