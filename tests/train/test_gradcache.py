"""GradCache and micro-batching give the gradients of the plain loss, for every parameter."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import synthetic_batch, tiny_model

from embeddinggemma.engine import varlen
from embeddinggemma.engine.batching import pad_batch
from embeddinggemma.engine.forward import padded_forward
from embeddinggemma.train.gradcache import forward_backward, resolve_packing
from embeddinggemma.train.losses import EmbeddingGemmaLoss, LossConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _plain_gradients(model, loss_fn, batch, tokenizer) -> dict[str, torch.Tensor]:
    """Reference: every text in ONE padded forward with a graph, the loss, one backward."""
    h = batch.hard_negative_mask.shape[1]
    texts = list(batch.query_texts) + list(batch.positive_texts)
    slots = []  # (row, k) of each negative text
    for i, negatives in enumerate(batch.hard_negative_texts):
        texts += negatives
        slots += [(i, k) for k in range(len(negatives))]
    input_ids, mask = pad_batch(tokenizer.encode(texts), tokenizer.pad_id)
    emb = padded_forward(model, input_ids, mask, normalize=False)
    b = len(batch.query_texts)
    negatives = torch.zeros(b, h, emb.shape[1])
    for (i, k), e in zip(slots, emb[2 * b :], strict=True):
        negatives[i, k] = e
    teacher = batch.teacher or {}
    out = loss_fn(
        emb[:b],
        emb[b : 2 * b],
        negatives,
        hard_negative_mask=batch.hard_negative_mask,
        query_ids=batch.query_ids,
        positive_ids=batch.positive_ids,
        hard_negative_ids=batch.hard_negative_ids,
        teacher_queries=teacher.get("queries"),
        teacher_positives=teacher.get("positives"),
        teacher_hard_negatives=teacher.get("hard_negatives"),
    )
    model.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads.update({f"loss.{n}": p.grad.clone() for n, p in loss_fn.named_parameters()})
    return grads, out["loss"].detach()


@pytest.mark.parametrize(
    ("gradient_cache", "budget", "alignment", "packing"),
    [
        (True, 24, "prefix", "off"),
        (True, 1, "projection", "off"),
        (False, 40, "prefix", "off"),
        (True, 10_000, "prefix", "off"),
        # packed micro-batches (no padding) with explicit masks; FlexAttention has no CPU backward
        (True, 40, "prefix", "dense"),
        (False, 60, "projection", "dense"),
    ],
)
def test_gradients_equal_plain_loss(tiny_st_dir, gradient_cache, budget, alignment, packing):
    model, _, tokenizer = tiny_model(tiny_st_dir)
    model.requires_grad_(True).train()
    config = LossConfig(
        matryoshka_dims=(40, 16), distill_alignment=alignment, student_dim=40, teacher_dim=24, temperature=0.1
    )
    loss_fn = EmbeddingGemmaLoss(config)
    batch = synthetic_batch(8, hard_negatives=2, teacher_dim=24)
    expected, expected_loss = _plain_gradients(model, loss_fn, batch, tokenizer)

    model.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    terms, stats = forward_backward(
        model, loss_fn, batch, tokenizer, gradient_cache=gradient_cache, micro_batch_tokens=budget, packing=packing
    )
    assert stats["micro_batches"] > 1 or budget == 10_000
    torch.testing.assert_close(terms["loss"], expected_loss, rtol=1e-6, atol=1e-6)
    got = {n: p.grad for n, p in model.named_parameters()}
    got.update({f"loss.{n}": p.grad for n, p in loss_fn.named_parameters()})
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert got[name] is not None, name
        assert grad.abs().max() > 0 or "embed_tokens" in name, f"{name}: reference gradient is all zero"
        # fp32 noise only: micro-batches pad to other lengths, so sums run in another order (~1e-6 relative).
        relative = ((got[name] - grad).norm() / grad.norm().clamp_min(1e-30)).item()
        assert relative < 1e-5, f"{name}: relative gradient error {relative:.2e}"
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


def test_gradient_checkpointing_changes_nothing(tiny_st_dir):
    model, _, tokenizer = tiny_model(tiny_st_dir)
    model.requires_grad_(True).train()
    loss_fn = EmbeddingGemmaLoss(LossConfig(matryoshka_dims=(40,), distill_weight=0.0))
    batch = synthetic_batch(6, hard_negatives=1)
    grads = []
    for checkpointing in (False, True):
        model.encoder.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        forward_backward(model, loss_fn, batch, tokenizer, micro_batch_tokens=30)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7, msg=name)


def test_bad_micro_batch_budget_and_packing_are_refused(tiny_st_dir):
    model, _, tokenizer = tiny_model(tiny_st_dir)
    loss_fn = EmbeddingGemmaLoss(LossConfig(matryoshka_dims=(40,), distill_weight=0.0))
    batch = synthetic_batch(4, hard_negatives=1)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        forward_backward(model, loss_fn, batch, tokenizer, micro_batch_tokens=0)
    with pytest.raises(ValueError, match="packing"):
        forward_backward(model, loss_fn, batch, tokenizer, packing="ring")
    assert resolve_packing("auto", torch.device("cpu")) == "off"
    # varlen FlashAttention needs bf16 activations: fp32 training (no autocast) takes FlexAttention
    assert resolve_packing("auto", torch.device("cuda"), None) == "flex"
    expected = "flex" if varlen.unsupported_reason(torch.device("cuda"), torch.bfloat16, 256) else "varlen"
    assert resolve_packing("auto", torch.device("cuda"), torch.bfloat16) == expected
    for mode in ("flex", "varlen"):
        with pytest.raises(ValueError, match="CUDA only"):
            forward_backward(model, loss_fn, batch, tokenizer, packing=mode)


def test_bad_hard_negative_mask_is_refused(tiny_st_dir):
    model, _, tokenizer = tiny_model(tiny_st_dir)
    loss_fn = EmbeddingGemmaLoss(LossConfig(matryoshka_dims=(40,), distill_weight=0.0))
    batch = synthetic_batch(4, hard_negatives=2)
    batch.hard_negative_mask[0] = torch.tensor([False, True])
    with pytest.raises(ValueError, match="row 0"):
        forward_backward(model, loss_fn, batch, tokenizer)


def test_packed_micro_batches_pad_only_where_a_kernel_needs_it(monkeypatch):
    """On CUDA varlen micro-batches run layers compiled for any token count, so they are padded to the
    next 128-token block, not to the budget (58k tokens used to run as 65,536); flex's static block
    masks still need the budget; dense packing never pads."""
    from embeddinggemma.train import gradcache

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert gradcache.packed_layout("varlen", cuda, 65536) == (True, True, 128)
    assert gradcache.packed_layout("flex", cuda, 16384) == (True, False, 16384)
    assert gradcache.packed_layout("flex", cpu, 16384) == (False, False, 128)
    assert gradcache.packed_layout("dense", cpu, 16384) == (False, False, 1)
    monkeypatch.setattr(gradcache, "DYNAMIC_TOKENS", False)  # the way before, as benchmarks/gpu.py times it
    assert gradcache.packed_layout("varlen", cuda, 65536) == (True, False, 65536)
