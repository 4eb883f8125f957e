"""Tests for embeddinggemma.train.losses: hand-computed cases, autograd semantics, reference formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from embeddinggemma.matryoshka import matryoshka_truncate
from embeddinggemma.train.losses import (
    EmbeddingGemmaLoss,
    LossConfig,
    TeacherProjection,
    contrastive_loss,
    embedding_distillation_loss,
    matryoshka_loss,
    spread_out_loss,
    spread_out_term,
)


def _rand(*shape: int, seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(requires_grad)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# contrastive_loss
# ---------------------------------------------------------------------------------------------------

# B=2, D=3, tau=0.5, alpha=5. Inputs deliberately unnormalised (q1 has norm 3, p2 norm 2).
Q = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
P = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
N = torch.tensor([[[0.6, 0.0, 0.8]], [[0.0, 0.0, 1.0]]])  # (B, H=1, D)


def test_contrastive_hand_computed_both_denominators() -> None:
    # Row 1: s(q1,p1)=1 -> logit 2; s(q1,p2)=0 -> 0; s(q1,n1)=0.6 -> 0.6/0.5 + ln w = 1.2 + 5*0.6 = 4.2.
    # Row 2: s(q2,p2)=1 -> 2;      s(q2,p1)=0 -> 0; s(q2,n2)=0   -> 0 + 5*0 = 0.
    infonce = _t((-2 + math.log(math.e**2 + 1 + math.exp(4.2)) - 2 + math.log(math.e**2 + 1 + 1)) / 2)
    paper = _t((-2 + math.log(1 + math.exp(4.2)) - 2 + math.log(1 + 1)) / 2)
    out = contrastive_loss(Q, P, N, temperature=0.5, alpha=5.0)
    assert_close(out["contrastive_loss"], infonce)
    assert_close(contrastive_loss(Q, P, N, temperature=0.5, denominator="paper")["contrastive_loss"], paper)
    assert_close(out["accuracy"], _t(1.0))  # 1 > max(0, 0.6) and 1 > max(0, 0)
    assert_close(out["positive_similarity"], _t(1.0))
    assert_close(out["in_batch_negative_similarity"], _t(0.0))
    assert_close(out["hard_negative_similarity"], _t(0.3))  # (0.6 + 0) / 2
    assert_close(out["hard_negative_weight"], _t((math.exp(3.0) + 1) / 2))  # w = e^{5 s}
    assert all(not v.requires_grad for k, v in out.items() if not k.endswith("_loss"))


def test_alpha_zero_and_empty_hard_negatives() -> None:
    # alpha=0: row 1's hard logit is just 1.2.
    expected = _t((-2 + math.log(math.e**2 + 1 + math.exp(1.2)) - 2 + math.log(math.e**2 + 2)) / 2)
    assert_close(contrastive_loss(Q, P, N, temperature=0.5, alpha=0.0)["contrastive_loss"], expected)
    # H = 0 is the in-batch-only case: -2 + log(e^2 + 1) per row.
    none = contrastive_loss(Q, P, None, temperature=0.5)
    empty = contrastive_loss(Q, P, N[:, :0], temperature=0.5)
    assert_close(none["contrastive_loss"], _t(-2 + math.log(math.e**2 + 1)))
    assert_close(empty["contrastive_loss"], none["contrastive_loss"])
    assert "hard_negative_weight" not in none


def test_denominators_differ_by_exactly_the_positive_term() -> None:
    q, p, n = _rand(5, 7, seed=1), _rand(5, 7, seed=2), _rand(5, 3, 7, seed=3)
    kw = {"temperature": 0.1, "reduction": "none"}
    l_info = contrastive_loss(q, p, n, denominator="infonce", **kw)["contrastive_loss"]
    l_paper = contrastive_loss(q, p, n, denominator="paper", **kw)["contrastive_loss"]
    # Z_infonce = Z_paper + e^{s_ii/tau}  <=>  e^{L_infonce} = e^{L_paper} + 1
    #                                    <=>  L_infonce = softplus(L_paper)
    assert l_info.shape == (5,)
    assert_close(l_info, F.softplus(l_paper))
    assert not torch.allclose(l_info, l_paper)


def test_hardness_weight_is_stop_gradient() -> None:
    tau, alpha = 0.5, 5.0
    q, p, n = (_rand(*s, seed=i, requires_grad=True) for i, s in enumerate([(3, 4), (3, 4), (3, 2, 4)]))
    contrastive_loss(q, p, n, temperature=tau, alpha=alpha)["contrastive_loss"].backward()

    def reference(detach_w: bool) -> list[torch.Tensor]:
        qn, pn, nn_ = (F.normalize(t, dim=-1) for t in (q, p, n))
        s_p, s_n = qn @ pn.T, torch.einsum("bd,bhd->bh", qn, nn_)
        w = torch.exp(alpha * s_n)
        w = w.detach() if detach_w else w
        z = torch.exp(s_p / tau).sum(1) + (w * torch.exp(s_n / tau)).sum(1)
        loss = (torch.log(z) - s_p.diagonal() / tau).mean()
        return list(torch.autograd.grad(loss, (q, p, n)))

    for got, want in zip((q.grad, p.grad, n.grad), reference(detach_w=True), strict=True):
        assert_close(got, want)
    assert not torch.allclose(n.grad, reference(detach_w=False)[2])  # the test can tell the difference


def test_false_negative_masking_by_ids() -> None:
    b, h, tau, alpha = 4, 2, 0.2, 2.0
    q, p, n = _rand(b, 5, seed=4), _rand(b, 5, seed=5), _rand(b, h, 5, seed=6)
    query_ids = torch.tensor([0, 1, 0, 2])  # q0 == q2
    positive_ids = torch.tensor([10, 11, 12, 11])  # p1 == p3
    hard_ids = torch.tensor([[10, 99], [12, 98], [97, 96], [95, 11]])  # own positive, p2, -, -, -, p1(=p3)
    out = contrastive_loss(
        q, p, n, temperature=tau, alpha=alpha,
        query_ids=query_ids, positive_ids=positive_ids, hard_negative_ids=hard_ids,
    )  # fmt: skip
    # Kept in-batch columns per row (diagonal = positive, kept in InfoNCE) and kept hard negatives.
    kept_cols = [[0, 1, 3], [0, 1, 2], [1, 2, 3], [0, 2, 3]]
    kept_hard = [[1], [1], [0, 1], [0]]
    qn, pn, nn_ = (F.normalize(t, dim=-1) for t in (q, p, n))
    losses = []
    for i in range(b):
        terms = [torch.exp(qn[i] @ pn[j] / tau) for j in kept_cols[i]]
        for k in kept_hard[i]:
            s = qn[i] @ nn_[i, k]
            terms.append(math.exp(alpha * s.item()) * torch.exp(s / tau))
        losses.append(torch.log(sum(terms)) - qn[i] @ pn[i] / tau)
    assert_close(out["contrastive_loss"], torch.stack(losses).mean())
    unmasked = contrastive_loss(q, p, n, temperature=tau, alpha=alpha)["contrastive_loss"]
    assert not torch.allclose(unmasked, out["contrastive_loss"])


def test_hard_negative_mask_for_ragged_rows() -> None:
    q, p, n = _rand(3, 4, seed=7), _rand(3, 4, seed=8), _rand(3, 2, 4, seed=9)
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    kw = {"temperature": 0.1, "reduction": "none"}
    got = contrastive_loss(q, p, n, hard_negative_mask=mask, **kw)["contrastive_loss"]
    assert_close(got[0], contrastive_loss(q, p, n, **kw)["contrastive_loss"][0])
    assert_close(got[1], contrastive_loss(q, p, n[:, :1], **kw)["contrastive_loss"][1])
    assert_close(got[2], contrastive_loss(q, p, None, **kw)["contrastive_loss"][2])


def test_paper_denominator_empty_row_raises() -> None:
    q, p = _rand(1, 4, seed=1), _rand(1, 4, seed=2)
    with pytest.raises(ValueError, match="empty"):
        contrastive_loss(q, p, denominator="paper")
    contrastive_loss(q, p)  # InfoNCE is fine (loss 0)
    with pytest.raises(ValueError, match="empty"):  # data-dependent: every negative masked
        contrastive_loss(q, p, _rand(1, 1, 4), denominator="paper", hard_negative_mask=torch.tensor([[False]]))


def test_matches_multiple_negatives_ranking_formula() -> None:
    # sentence-transformers' MNRL default: cross_entropy(scale * cos_sim(q, p), arange(B)), scale = 1/tau.
    q, p = _rand(6, 8, seed=10, requires_grad=True), _rand(6, 8, seed=11, requires_grad=True)
    ours = contrastive_loss(q, p, temperature=0.05, alpha=0.0)["contrastive_loss"]
    cos = F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T
    ref = F.cross_entropy(20.0 * cos, torch.arange(6))
    assert_close(ours, ref)
    assert_close(torch.autograd.grad(ours, (q, p)), torch.autograd.grad(ref, (q, p)))


@pytest.mark.parametrize("denominator", ["infonce", "paper"])
def test_query_offset_with_global_positives_equals_single_process(denominator: str) -> None:
    q, p, n = (_rand(*s, seed=20 + i, requires_grad=True) for i, s in enumerate([(6, 5), (6, 5), (6, 2, 5)]))
    qid, pid = torch.tensor([0, 1, 2, 0, 4, 5]), torch.tensor([10, 11, 12, 13, 14, 11])
    hid = torch.tensor([[10, 1], [2, 3], [4, 5], [6, 7], [8, 12], [9, 9]])
    kw = {"temperature": 0.1, "denominator": denominator, "query_ids": qid, "positive_ids": pid}
    full = contrastive_loss(q, p, n, hard_negative_ids=hid, **kw)["contrastive_loss"]
    g_full = torch.autograd.grad(full, (q, p, n))
    # Two "ranks" of 3 queries each, sharing the gathered positives; DDP averages the two.
    ranks = [
        contrastive_loss(q[s : s + 3], p, n[s : s + 3], hard_negative_ids=hid[s : s + 3], query_offset=s, **kw)
        for s in (0, 3)
    ]
    mean = (ranks[0]["contrastive_loss"] + ranks[1]["contrastive_loss"]) / 2
    assert_close(mean, full)
    assert_close(torch.autograd.grad(mean, (q, p, n)), g_full)
    with pytest.raises(ValueError, match="do not fit"):
        contrastive_loss(q[:3], p, query_offset=4)


def test_bf16_inputs_are_finite_and_close_to_fp32() -> None:
    q, p, n = _rand(8, 64, seed=30), _rand(8, 64, seed=31), _rand(8, 2, 64, seed=32)
    q16, p16, n16 = (t.bfloat16().requires_grad_() for t in (q, p, n))
    out = contrastive_loss(q16, p16, n16, temperature=0.01, alpha=5.0)
    loss = out["contrastive_loss"]
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert q16.grad.dtype == torch.bfloat16
    assert torch.isfinite(q16.grad.float()).all()
    # Computed in fp32 inside: identical to fp32 on the same (rounded) values, close to the unrounded ones.
    same = contrastive_loss(q16.float(), p16.float(), n16.float(), temperature=0.01)["contrastive_loss"]
    assert_close(loss, same)
    assert_close(loss, contrastive_loss(q, p, n, temperature=0.01)["contrastive_loss"], rtol=2e-2, atol=5e-2)


# ---------------------------------------------------------------------------------------------------
# spread-out
# ---------------------------------------------------------------------------------------------------


def test_spread_out_hand_computed() -> None:
    r = 1 / math.sqrt(2)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # third is unnormalised (1,1)
    p = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
    # q: dots 0, r, r (each counted for i<j and j>i): 2 * (0 + 1/2 + 1/2) / (3*2) = 1/3.
    # p: dot -1 twice: 2 * 1 / (2*1) = 1.
    assert r * r == pytest.approx(0.5)
    out = spread_out_loss(q, p)
    assert_close(out["spread_out_loss"], _t(1 / 3 + 1))
    assert_close(out["spread_out_queries"], _t(1 / 3))
    assert_close(out["spread_out_positives"], _t(1.0))


def test_spread_out_matches_double_loop_and_vanishes_on_orthonormal_sets() -> None:
    x = _rand(5, 3, seed=40)
    u = F.normalize(x, dim=-1)
    ref = sum((u[i] @ u[j]) ** 2 for i in range(5) for j in range(5) if i != j) / (5 * 4)
    assert_close(spread_out_term(x), ref)
    ortho, _ = torch.linalg.qr(_rand(6, 6, seed=41))  # orthonormal columns
    for b in (2, 4, 6):
        assert_close(spread_out_term(3.0 * ortho.T[:b]), _t(0.0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="B >= 2"):
        spread_out_term(x[:1])


# ---------------------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------------------


def test_distillation_hand_computed() -> None:
    sq, tq = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])  # cos 0.6
    sp, tp = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 5.0]])  # cos 1 (teacher unnormalised)
    sn, tn = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]])  # cos -1, 1
    out = embedding_distillation_loss(sq, sp, tq, tp, sn, tn)
    # mse = 2 - 2cos per row: q 0.8, p 0, n mean(4, 0) = 2.
    assert_close(out["distillation_loss"], _t(2.8))
    assert_close(out["distillation_hard_negatives"], _t(2.0))
    assert_close(out["teacher_cosine"], _t((0.6 + 1 - 1 + 1) / 4))
    # cosine = 1 - cos: exactly half.
    assert_close(embedding_distillation_loss(sq, sp, tq, tp, sn, tn, distance="cosine")["distillation_loss"], _t(1.4))
    # Masking the cos=-1 negative leaves only the matching one.
    mask = torch.tensor([[False, True]])
    assert_close(
        embedding_distillation_loss(sq, sp, tq, tp, sn, tn, hard_negative_mask=mask)["distillation_loss"],
        _t(0.8),
    )


def test_distillation_zero_for_identical_and_prefix_alignment() -> None:
    s, sn = _rand(4, 3, seed=50), _rand(4, 2, 3, seed=51)
    assert_close(embedding_distillation_loss(s, s, s, s, sn, sn)["distillation_loss"], _t(0.0), atol=1e-6, rtol=0)
    # Teacher wider (5): its first 3 dims are 2 * student, the rest noise -> prefix + renormalise matches.
    teacher = torch.cat([2 * s, _rand(4, 2, seed=52)], dim=-1)
    zero = embedding_distillation_loss(s, s, teacher, teacher)["distillation_loss"]
    assert_close(zero, _t(0.0), atol=1e-6, rtol=0)
    # Student wider: the student's prefix is compared.
    wide = torch.cat([s, _rand(4, 4, seed=53)], dim=-1)
    assert_close(embedding_distillation_loss(wide, wide, s, s)["distillation_loss"], _t(0.0), atol=1e-6, rtol=0)
    # ...and a full-width comparison would not have been zero (the alignment matters).
    padded = F.pad(s, (0, 2))
    assert embedding_distillation_loss(padded, padded, teacher, teacher)["distillation_loss"] > 0.1


def test_teacher_projection_identity_init_and_trains() -> None:
    wide, t = _rand(4, 5, seed=60), _rand(4, 3, seed=61, requires_grad=True)
    proj = TeacherProjection(student_dim=5, teacher_dim=3)
    # Rectangular identity init: equal to the prefix alignment when the student is wider.
    assert_close(
        embedding_distillation_loss(wide, wide, t, t, projection=proj)["distillation_loss"],
        embedding_distillation_loss(wide, wide, t, t)["distillation_loss"],
    )
    s, teacher = _rand(4, 3, seed=62), _rand(4, 5, seed=63, requires_grad=True)
    proj = TeacherProjection(student_dim=3, teacher_dim=5)
    opt = torch.optim.SGD(proj.parameters(), lr=0.5)
    before = embedding_distillation_loss(s, s, teacher, teacher, projection=proj)["distillation_loss"]
    before.backward()
    assert teacher.grad is None  # the teacher is a fixed target
    opt.step()
    after = embedding_distillation_loss(s, s, teacher, teacher, projection=proj)["distillation_loss"]
    assert after < before - 1e-3
    with pytest.raises(ValueError, match="projection maps"):
        embedding_distillation_loss(s, s, s, s, projection=proj)


# ---------------------------------------------------------------------------------------------------
# Matryoshka and the recipe
# ---------------------------------------------------------------------------------------------------


def test_matryoshka_prefix_renormalise_and_weighted_sum() -> None:
    q, p, n = _rand(4, 6, seed=70), _rand(4, 6, seed=71), _rand(4, 1, 6, seed=72)
    t = matryoshka_truncate(q, 4)
    assert_close(t.norm(dim=-1), torch.ones(4))
    assert_close(t, F.normalize(q[:, :4], dim=-1))
    kw = {"temperature": 0.1, "alpha": 5.0}
    out = matryoshka_loss(q, p, n, dims=(6, 4, 2), **kw)
    terms = []
    for d in (6, 4, 2):
        c = contrastive_loss(matryoshka_truncate(q, d), matryoshka_truncate(p, d), matryoshka_truncate(n, d), **kw)
        s = spread_out_loss(matryoshka_truncate(q, d), matryoshka_truncate(p, d))
        assert_close(out[f"contrastive_loss@{d}"], c["contrastive_loss"])
        assert_close(out[f"spread_out_loss@{d}"], s["spread_out_loss"])
        assert_close(out[f"accuracy@{d}"], c["accuracy"])
        terms.append(c["contrastive_loss"] + s["spread_out_loss"])
    assert_close(out["loss"], sum(terms))  # equal weights: a plain sum
    weighted = matryoshka_loss(q, p, n, dims=(6, 4, 2), weights=(1.0, 0.5, 0.0), **kw)
    assert_close(weighted["loss"], terms[0] + 0.5 * terms[1])
    assert "contrastive_loss@2" not in weighted  # zero weight: not computed
    with pytest.raises(ValueError, match="exceeds the embedding width"):
        matryoshka_loss(q, p, dims=(8, 4))
    with pytest.raises(ValueError, match="embedding width"):
        matryoshka_truncate(q, 7)


def _batch() -> dict[str, torch.Tensor]:
    return {
        "queries": _rand(4, 6, seed=80, requires_grad=True),
        "positives": _rand(4, 6, seed=81, requires_grad=True),
        "hard_negatives": _rand(4, 2, 6, seed=82, requires_grad=True),
        "teacher_queries": _rand(4, 10, seed=83),
        "teacher_positives": _rand(4, 10, seed=84),
        "teacher_hard_negatives": _rand(4, 2, 10, seed=85),
    }


def test_recipe_total_and_ablations() -> None:
    batch, dims = _batch(), (6, 3)
    cfg = LossConfig(matryoshka_dims=dims, spread_out_weight=0.5, distill_weight=2.0)
    out = EmbeddingGemmaLoss(cfg)(**batch)
    expected = sum(out[f"contrastive_loss@{d}"] + 0.5 * out[f"spread_out_loss@{d}"] for d in dims)
    assert_close(out["loss"], expected + 2.0 * out["distillation_loss"])
    out["loss"].backward()
    assert all(batch[k].grad is not None for k in ("queries", "positives", "hard_negatives"))

    nce_only = EmbeddingGemmaLoss(LossConfig(matryoshka_dims=dims, spread_out_weight=0.0, distill_weight=0.0))
    no_teacher = {k: v for k, v in batch.items() if not k.startswith("teacher")}
    out0 = nce_only(**no_teacher)  # no teacher needed once distillation is off
    assert not any(k.startswith(("spread_out", "distillation")) for k in out0)
    assert torch.equal(out0["loss"], out0["contrastive_loss@6"] + out0["contrastive_loss@3"])
    with pytest.raises(ValueError, match="distill_weight"):
        EmbeddingGemmaLoss(LossConfig(matryoshka_dims=dims))(**no_teacher)


def test_recipe_with_projection_owns_parameters() -> None:
    cfg = LossConfig(matryoshka_dims=(6,), distill_alignment="projection", student_dim=6, teacher_dim=10)
    loss_fn = EmbeddingGemmaLoss(cfg)
    assert [p.shape for p in loss_fn.parameters()] == [torch.Size([10, 6])]
    loss_fn(**_batch())["loss"].backward()
    assert loss_fn.projection.linear.weight.grad is not None
    with pytest.raises(ValueError, match="teacher_dim"):
        LossConfig(distill_alignment="projection")


def test_recipe_loss_falls_when_optimising_embeddings() -> None:
    batch = _batch()
    params = [batch[k] for k in ("queries", "positives", "hard_negatives")]
    opt = torch.optim.Adam(params, lr=0.05)
    loss_fn = EmbeddingGemmaLoss(LossConfig(matryoshka_dims=(6, 3)))
    first = None
    for _ in range(30):
        out = loss_fn(**batch)
        first = out["loss"].item() if first is None else first
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["loss"].item() < 0.7 * first


def test_recipe_across_ranks_keeps_regularisers_local() -> None:
    batch, cfg = _batch(), LossConfig(matryoshka_dims=(6, 3))
    loss_fn = EmbeddingGemmaLoss(cfg)
    full = loss_fn(**batch)
    ranks = []
    for s in (0, 2):  # two ranks of 2 rows; positives gathered (all 4 rows), the rest local
        local = {k: v[s : s + 2] for k, v in batch.items() if k != "positives"}
        ranks.append(loss_fn(positives=batch["positives"], query_offset=s, **local))
        q, p = local["queries"], batch["positives"][s : s + 2]
        assert_close(ranks[-1]["spread_out_loss@3"], spread_out_loss(q[:, :3], p[:, :3])["spread_out_loss"])
        distill = embedding_distillation_loss(
            q, p, local["teacher_queries"], local["teacher_positives"],
            local["hard_negatives"], local["teacher_hard_negatives"],
        )  # fmt: skip
        assert_close(ranks[-1]["distillation_loss"], distill["distillation_loss"])
    for d in (6, 3):
        mean = (ranks[0][f"contrastive_loss@{d}"] + ranks[1][f"contrastive_loss@{d}"]) / 2
        assert_close(mean, full[f"contrastive_loss@{d}"])
