"""The EmbeddingGemma training losses as pure functions of embeddings (paper section 2, docs section 5).

Nothing here owns or calls a model: every loss takes embedding tensors, so the same code serves a
single-process run, a DDP run (gathered positives, see ``contrastive_loss``) and an ablation that
drops a term. Each function returns a dict of NAMED terms, following one rule a trainer can rely on:

- keys ending in ``_loss`` (optionally suffixed ``@dim``) are differentiable, UNWEIGHTED terms;
- the key ``"loss"`` (only from the combining functions) is the weighted total to call backward on;
- every other key is a detached diagnostic (accuracy, mean similarities, hardness weights), for logging.

All inputs may be unnormalised and of any float dtype: they are upcast to float32 and L2-normalised
inside, because cosine similarity divided by a temperature as low as 0.01 leaves no headroom for
bfloat16 rounding. Temperature and the relative weights of the terms are not published; the defaults
below are our choices and say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embeddinggemma.config import MATRYOSHKA_DIMS
from embeddinggemma.matryoshka import matryoshka_truncate

Denominator = Literal["infonce", "paper"]
Distance = Literal["mse", "cosine"]
Alignment = Literal["prefix", "projection"]

__all__ = [
    "EmbeddingGemmaLoss",
    "LossConfig",
    "TeacherProjection",
    "contrastive_loss",
    "embedding_distillation_loss",
    "matryoshka_loss",
    "spread_out_loss",
    "spread_out_term",
]


def _unit(x: Tensor) -> Tensor:
    """Upcast to float32 and L2-normalise the last dim (a zero vector stays zero instead of NaN)."""
    return F.normalize(x.float(), dim=-1)


# ----------------------------------------------------------------------------------------------------
# 1. Contrastive (NCE) loss
# ----------------------------------------------------------------------------------------------------


def contrastive_loss(
    queries: Tensor,
    positives: Tensor,
    hard_negatives: Tensor | None = None,
    *,
    temperature: float = 0.05,
    alpha: float = 5.0,
    denominator: Denominator = "infonce",
    hard_negative_mask: Tensor | None = None,
    query_ids: Tensor | None = None,
    positive_ids: Tensor | None = None,
    hard_negative_ids: Tensor | None = None,
    query_offset: int = 0,
    reduction: Literal["mean", "none"] = "mean",
) -> dict[str, Tensor]:
    """Noise-contrastive loss with in-batch negatives, hardness-weighted hard negatives and
    false-negative masking (query -> passage direction only, each row sees only its own hard negatives).

    Formula (s = cosine similarity, computed on normalised float32 copies of the inputs)::

        L_C = mean_i -log( e^{s(q_i,p_i)/tau} /
                           ( sum_k w_ik e^{s(q_i,n_ik)/tau} + sum_j 1_TN(i,j) e^{s(q_i,p_j)/tau} ) )
        w_ik = exp(alpha * stopgrad(s(q_i, n_ik)))

    In log space the hard-negative logit is ``s/tau + alpha * s.detach()``, so the weight changes how
    much a hard negative counts but no gradient flows through it. 1_TN(i,j) = 0 for j != i when
    ``query_ids[j] == query_ids[i]`` or ``positive_ids[j] == positive_ids[i]`` (duplicate texts are not
    negatives). The diagonal j = i is the positive: ``denominator="infonce"`` keeps it in the denominator
    (standard InfoNCE, bounded below by 0; default), ``"paper"`` drops it (the literal reading of the
    paper, 1_TN(i,i) = 0). Per row the two differ by exactly that term: e^{L_infonce} = e^{L_paper} + 1.

    Args:
        queries: (B, D) query embeddings of this process.
        positives: (N, D), N >= B. Usually N == B. For cross-device negatives pass the positives
            gathered from all ranks (with gradients, e.g. ``torch.distributed.nn.functional.all_gather``,
            whose backward sums across ranks) and ``query_offset``: row i of ``queries`` is global row
            ``query_offset + i`` and its positive is ``positives[query_offset + i]``. The mean over ranks
            of the per-rank losses then equals the single-process loss, and DDP's gradient averaging
            reproduces its gradient.
        hard_negatives: (B, H, D) each query's own hard negatives, H >= 0; None or H = 0 means in-batch
            negatives only (pre-finetuning).
        temperature: tau > 0. Default 0.05 (scale 20, the sentence-transformers default); the paper does
            not publish tau.
        alpha: hardness strength >= 0 (paper: 5.0); 0 disables the weighting (all w_ik = 1).
        denominator: "infonce" (default) or "paper", see above.
        hard_negative_mask: (B, H) bool, True = real negative; for rows with fewer than H negatives.
        query_ids, positive_ids: (N,) integer identities (e.g. text hashes) of the global rows, indexed
            like ``positives``; used for the false-negative mask. Either may be None (no masking on it).
        hard_negative_ids: (B, H) identities of the hard negatives; a hard negative whose id equals ANY
            row's positive id is masked (it is p_i itself, a false negative, or already counted as an
            in-batch negative). Requires ``positive_ids``.
        query_offset: global index of ``queries[0]`` in ``positives``.
        reduction: "mean" (default) or "none" for the (B,) per-row losses.

    Returns:
        ``contrastive_loss`` (scalar or (B,)); detached diagnostics ``accuracy`` (top-1 in-batch
        retrieval by raw cosine over the unmasked candidates), ``positive_similarity``,
        ``in_batch_negative_similarity`` (NaN when there are none) and, when H > 0,
        ``hard_negative_similarity`` and ``hard_negative_weight`` (mean w_ik).

    Raises:
        ValueError: bad shapes/arguments, or ``denominator="paper"`` with a row whose denominator is
            empty (B = 1 without hard negatives, or everything masked): its loss would be +inf.

    Paper reference: EmbeddingGemma (arXiv 2509.20354) section 2, "NCE loss with hardness weighting";
    docs/embeddinggemma.md section 5.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0 (0 disables hardness weighting), got {alpha}")
    if denominator not in ("infonce", "paper"):
        raise ValueError(f"denominator must be 'infonce' or 'paper', got {denominator!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if queries.ndim != 2 or positives.ndim != 2 or positives.shape[1] != queries.shape[1]:
        raise ValueError(f"expected queries (B, D) and positives (N, D), got {queries.shape}, {positives.shape}")
    b, n = queries.shape[0], positives.shape[0]
    if query_offset < 0 or query_offset + b > n:
        raise ValueError(f"queries [{query_offset}, {query_offset + b}) do not fit in {n} positives")
    h = 0
    if hard_negatives is not None:
        if hard_negatives.ndim != 3 or hard_negatives.shape[::2] != queries.shape:
            raise ValueError(
                f"hard_negatives must be (B, H, D) = ({b}, H, {queries.shape[1]}), got {hard_negatives.shape}"
            )
        h = hard_negatives.shape[1]
    if hard_negative_ids is not None and positive_ids is None:
        raise ValueError("hard_negative_ids needs positive_ids to find hard negatives equal to a positive")
    for name, ids in (("query_ids", query_ids), ("positive_ids", positive_ids)):
        if ids is not None and ids.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) like positives, got {tuple(ids.shape)}")
    for name, t in (("hard_negative_mask", hard_negative_mask), ("hard_negative_ids", hard_negative_ids)):
        if t is not None and t.shape != (b, h):
            raise ValueError(f"{name} must have shape ({b}, {h}) like hard_negatives[..., 0], got {tuple(t.shape)}")
    if denominator == "paper" and n == 1 and h == 0:
        raise ValueError(
            "denominator='paper' excludes the positive, so with one row and no hard negatives the "
            "denominator is empty; use a batch > 1, hard negatives, or denominator='infonce'"
        )

    q, p = _unit(queries), _unit(positives)
    rows = torch.arange(b, device=q.device)
    cols = rows + query_offset  # column of each row's own positive
    sim_p = q @ p.T  # (B, N)
    pos_sim = sim_p[rows, cols]  # (B,)

    # 1_TN over the in-batch columns: duplicates of the row's query or positive are not negatives.
    keep_p = torch.ones_like(sim_p, dtype=torch.bool)
    if query_ids is not None:
        keep_p &= query_ids[cols, None] != query_ids[None, :]
    if positive_ids is not None:
        keep_p &= positive_ids[cols, None] != positive_ids[None, :]
    # each row's own positive, as a mask (assigning a Python bool by index made the host wait on the GPU)
    own = cols[:, None] == torch.arange(n, device=q.device)[None, :]
    negatives_p = keep_p & ~own  # in-batch negatives proper (for diagnostics)
    keep_p = keep_p | own if denominator == "infonce" else negatives_p
    logits = [(sim_p / temperature).masked_fill(~keep_p, -math.inf)]

    sim_n = keep_n = None
    if h > 0:
        n_unit = _unit(hard_negatives)
        sim_n = torch.einsum("bd,bhd->bh", q, n_unit)  # (B, H)
        keep_n = torch.ones_like(sim_n, dtype=torch.bool)
        if hard_negative_mask is not None:
            keep_n &= hard_negative_mask.to(torch.bool)
        if hard_negative_ids is not None:
            keep_n &= ~(hard_negative_ids[:, :, None] == positive_ids[None, None, :]).any(-1)
        # log(w * e^{s/tau}) = s/tau + alpha * stopgrad(s): the weight carries no gradient.
        logit_n = sim_n / temperature + alpha * sim_n.detach()
        logits.append(logit_n.masked_fill(~keep_n, -math.inf))

    log_z = torch.logsumexp(torch.cat(logits, dim=1), dim=1)  # (B,)
    masked = any(t is not None for t in (query_ids, positive_ids, hard_negative_mask, hard_negative_ids))
    if denominator == "paper" and masked and bool(torch.isneginf(log_z).any()):  # host sync only here
        raise ValueError(
            "denominator='paper': every negative of some row is masked, so its denominator is empty; "
            "use denominator='infonce' or batches with at least one true negative per row"
        )
    per_row = log_z - pos_sim / temperature
    out = {"contrastive_loss": per_row.mean() if reduction == "mean" else per_row}

    with torch.no_grad():
        best_neg = sim_p.masked_fill(~negatives_p, -math.inf).amax(dim=1)
        if sim_n is not None:
            best_neg = torch.maximum(best_neg, sim_n.masked_fill(~keep_n, -math.inf).amax(dim=1))
        out["accuracy"] = (pos_sim > best_neg).float().mean()
        out["positive_similarity"] = pos_sim.mean()
        out["in_batch_negative_similarity"] = (sim_p * negatives_p).sum() / negatives_p.sum()
        if sim_n is not None:
            out["hard_negative_similarity"] = (sim_n * keep_n).sum() / keep_n.sum()
            out["hard_negative_weight"] = (torch.exp(alpha * sim_n) * keep_n).sum() / keep_n.sum()
    return out


# ----------------------------------------------------------------------------------------------------
# 2. Spread-out regulariser
# ----------------------------------------------------------------------------------------------------


def spread_out_term(x: Tensor) -> Tensor:
    """Global orthogonal regulariser (second moment only) for ONE set of embeddings.

    Formula: ``1/(B(B-1)) sum_{i != j} (x_i . x_j)^2`` on L2-normalised float32 rows. For vectors spread
    uniformly on the sphere of dimension D its expectation is 1/D; it is 0 when the rows are orthogonal.

    Args:
        x: (B, D), B >= 2.

    Returns:
        A differentiable scalar.

    Paper reference: EmbeddingGemma section 2, "spread-out regularizer" (after Zhang et al. 2017,
    without their hinge on the first moment); docs section 5.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"spread-out needs (B, D) with B >= 2 (pairs i != j), got {tuple(x.shape)}")
    b = x.shape[0]
    u = _unit(x)
    gram = (u @ u.T).masked_fill(torch.eye(b, dtype=torch.bool, device=u.device), 0.0)  # (B, B)
    return gram.pow(2).sum() / (b * (b - 1))


def spread_out_loss(queries: Tensor, positives: Tensor) -> dict[str, Tensor]:
    """Spread-out regulariser on the queries plus on the positives.

    Formula: ``L_S = spread(q) + spread(p)`` with ``spread`` as in ``spread_out_term``. Hard negatives are
    not included (the paper regularises queries and positives). Pass the local batch: with gathered
    positives, slice this rank's rows so that DDP averaging does not count pairs more than once.

    Args:
        queries: (B, D).
        positives: (B', D), usually B' = B.

    Returns:
        ``spread_out_loss`` (differentiable) and detached ``spread_out_queries`` / ``spread_out_positives``.

    Paper reference: EmbeddingGemma section 2, "spread-out regularizer"; docs section 5.
    """
    sq, sp = spread_out_term(queries), spread_out_term(positives)
    return {
        "spread_out_loss": sq + sp,
        "spread_out_queries": sq.detach(),
        "spread_out_positives": sp.detach(),
    }


# ----------------------------------------------------------------------------------------------------
# 3. Embedding distillation
# ----------------------------------------------------------------------------------------------------


class TeacherProjection(nn.Module):
    """Learned bias-free linear map from the student's embedding space to the teacher's.

    The student side is projected (not the teacher) so the target stays fixed: a learned map on the
    teacher could collapse every target onto one direction and make the loss trivially zero. The weight
    starts as the rectangular identity, so at initialisation it equals the prefix alignment when the
    student is wider, and zero-pads the student when the teacher is wider.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.linear = nn.Linear(student_dim, teacher_dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(teacher_dim, student_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.to(self.linear.weight.dtype))


def _distance(student: Tensor, teacher: Tensor, distance: Distance) -> Tensor:
    """Per-row distance between unit vectors (float32): ||s - t||^2 = 2 - 2cos, or 1 - cos."""
    cos = (student * teacher).sum(-1)
    return 2.0 - 2.0 * cos if distance == "mse" else 1.0 - cos


def _align(student: Tensor, teacher: Tensor, projection: TeacherProjection | None) -> tuple[Tensor, Tensor]:
    """Bring student and (detached) teacher to a common width and normalise both."""
    teacher = teacher.detach()
    if projection is not None:
        if (student.shape[-1], teacher.shape[-1]) != (projection.student_dim, projection.teacher_dim):
            raise ValueError(
                f"projection maps {projection.student_dim} -> {projection.teacher_dim}, got student "
                f"{student.shape[-1]} and teacher {teacher.shape[-1]}"
            )
        return _unit(projection(student)), _unit(teacher)
    d = min(student.shape[-1], teacher.shape[-1])
    return matryoshka_truncate(student, d), matryoshka_truncate(teacher, d)


def embedding_distillation_loss(
    student_queries: Tensor,
    student_positives: Tensor,
    teacher_queries: Tensor,
    teacher_positives: Tensor,
    student_hard_negatives: Tensor | None = None,
    teacher_hard_negatives: Tensor | None = None,
    *,
    hard_negative_mask: Tensor | None = None,
    distance: Distance = "mse",
    projection: TeacherProjection | None = None,
) -> dict[str, Tensor]:
    """Geometric embedding distillation (embedding matching): pull the student's embeddings of the
    query, the positive and the hard negative(s) onto the teacher's embeddings of the same texts.

    Formula: ``L_D = L_D^q + L_D^p + L_D^n`` with ``L_D^x = mean_rows dist(student(x), teacher(x))`` and
    ``dist`` on unit vectors (float32):

    - ``"mse"`` (default): squared Euclidean distance summed over dims, averaged over rows,
      ``||s - t||^2 = 2 - 2cos``. It is NOT averaged over dims (that would be ``(2 - 2cos)/D``, as in
      ``nn.MSELoss``), so its scale does not depend on the width.
    - ``"cosine"``: ``1 - cos``, exactly half of "mse" on unit vectors (same gradient direction).

    Teacher of another width: without ``projection`` both sides are cut to the smaller width and
    re-normalised (the teacher's Matryoshka prefix; or the student's prefix when the student is wider);
    with a ``TeacherProjection`` the full student embedding is mapped to the teacher's width. The
    teacher is always detached. L_D^n is skipped when no hard negatives are given.

    Args:
        student_queries, student_positives: (B, D_s).
        teacher_queries, teacher_positives: (B, D_t).
        student_hard_negatives, teacher_hard_negatives: (B, H, D_s) and (B, H, D_t), both or neither.
        hard_negative_mask: (B, H) bool, True = real negative (padding rows are ignored in the mean).
        distance: "mse" or "cosine".
        projection: optional learned student -> teacher map.

    Returns:
        ``distillation_loss`` (differentiable); detached ``distillation_queries``,
        ``distillation_positives``, ``distillation_hard_negatives`` (when given) and ``teacher_cosine``
        (mean student-teacher cosine over all aligned rows).

    Paper reference: EmbeddingGemma section 2, "embedding matching" (after EmbedDistill, Kim et al.
    2023); docs section 5. Distance and width alignment are not published: our choices.
    """
    if distance not in ("mse", "cosine"):
        raise ValueError(f"distance must be 'mse' or 'cosine', got {distance!r}")
    if (student_hard_negatives is None) != (teacher_hard_negatives is None):
        raise ValueError("pass both student_hard_negatives and teacher_hard_negatives, or neither")
    pairs = {
        "queries": (student_queries, teacher_queries),
        "positives": (student_positives, teacher_positives),
    }
    if student_hard_negatives is not None:
        pairs["hard_negatives"] = (student_hard_negatives, teacher_hard_negatives)
    out: dict[str, Tensor] = {}
    total, cos_sum, cos_count = 0.0, 0.0, 0.0
    for name, (s, t) in pairs.items():
        if s.shape[:-1] != t.shape[:-1]:
            raise ValueError(f"student and teacher {name} differ in leading shape: {s.shape} vs {t.shape}")
        s_u, t_u = _align(s, t, projection)
        dist = _distance(s_u, t_u, distance)  # (B,) or (B, H)
        weight = torch.ones_like(dist)
        if name == "hard_negatives" and hard_negative_mask is not None:
            weight = hard_negative_mask.to(dist.dtype)
        term = (dist * weight).sum() / weight.sum()
        total = total + term
        out[f"distillation_{name}"] = term.detach()
        with torch.no_grad():
            cos_sum = cos_sum + ((s_u * t_u).sum(-1) * weight).sum()
            cos_count = cos_count + weight.sum()
    out["distillation_loss"] = total
    out["teacher_cosine"] = cos_sum / cos_count
    return out


# ----------------------------------------------------------------------------------------------------
# 4. Matryoshka application of L_C and L_S
# ----------------------------------------------------------------------------------------------------


def matryoshka_loss(
    queries: Tensor,
    positives: Tensor,
    hard_negatives: Tensor | None = None,
    *,
    dims: Sequence[int] = MATRYOSHKA_DIMS,
    weights: Sequence[float] | None = None,
    contrastive_weight: float = 1.0,
    spread_out_weight: float = 1.0,
    query_offset: int = 0,
    **contrastive_kwargs: Any,
) -> dict[str, Tensor]:
    """Contrastive loss and spread-out regulariser at every Matryoshka width, summed with weights.

    Formula: ``L = sum_d w_d (contrastive_weight * L_C^d + spread_out_weight * L_S^d)`` where the
    superscript d means "on the first d dims, re-normalised" (queries, positives and hard negatives
    alike). Equal weights w_d = 1 by default: a SUM over widths, as the paper states, not a mean. A
    zero weight skips the computation. Distillation is not here: it applies once, to the full embedding.

    Args:
        queries, positives, hard_negatives, query_offset: as in ``contrastive_loss``.
        dims: widths, each <= the embedding width (ValueError otherwise). Default (768, 512, 256, 128).
        weights: one per dim, default all 1.
        contrastive_weight, spread_out_weight: weights of L_C and L_S at every width.
        **contrastive_kwargs: forwarded to ``contrastive_loss`` (temperature, alpha, denominator, masks,
            ids).

    Returns:
        ``loss`` (weighted total) and, per width d, ``contrastive_loss@d``, ``spread_out_loss@d`` (both
        unweighted) and the detached diagnostics of both functions suffixed ``@d``.

    Paper reference: EmbeddingGemma section 2, "Matryoshka representation learning"; docs section 5.
    """
    dims = tuple(dims)
    weights = tuple(weights) if weights is not None else (1.0,) * len(dims)
    if len(weights) != len(dims) or len(set(dims)) != len(dims):
        raise ValueError(f"need distinct dims and one weight per dim, got dims={dims}, weights={weights}")
    for d in dims:
        if not 0 < d <= queries.shape[-1]:
            raise ValueError(f"Matryoshka dim {d} exceeds the embedding width {queries.shape[-1]}")
    out: dict[str, Tensor] = {}
    total = queries.new_zeros((), dtype=torch.float32)
    b = queries.shape[0]
    for d, w in zip(dims, weights, strict=True):
        if w == 0:
            continue
        # Slicing is enough: both losses normalise their inputs, which re-normalises the prefix.
        q, p = queries[..., :d], positives[..., :d]
        if contrastive_weight != 0:
            n = hard_negatives[..., :d] if hard_negatives is not None else None
            terms = contrastive_loss(q, p, n, query_offset=query_offset, **contrastive_kwargs)
            total = total + w * contrastive_weight * terms["contrastive_loss"]
            out.update({f"{k}@{d}": v for k, v in terms.items()})
        if spread_out_weight != 0:
            terms = spread_out_loss(q, p[query_offset : query_offset + b])  # local rows only
            total = total + w * spread_out_weight * terms["spread_out_loss"]
            out.update({f"{k}@{d}": v for k, v in terms.items()})
    return {"loss": total, **out}


# ----------------------------------------------------------------------------------------------------
# 5. The whole recipe
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossConfig:
    """Knobs of the recipe loss. The paper publishes alpha = 5.0 and the Matryoshka widths; tau and the
    relative weights are ours (weights 1 follow the paper's unweighted sum L = sum_d (L_C + L_S) + L_D).
    """

    temperature: float = 0.05
    alpha: float = 5.0
    denominator: Denominator = "infonce"
    matryoshka_dims: tuple[int, ...] = MATRYOSHKA_DIMS
    matryoshka_weights: tuple[float, ...] | None = None
    contrastive_weight: float = 1.0
    spread_out_weight: float = 1.0
    distill_weight: float = 1.0
    distill_distance: Distance = "mse"
    distill_alignment: Alignment = "prefix"
    student_dim: int = 768  # only for distill_alignment="projection"
    teacher_dim: int | None = None  # required for distill_alignment="projection"

    def __post_init__(self) -> None:
        if self.distill_alignment not in ("prefix", "projection"):
            raise ValueError(f"distill_alignment must be 'prefix' or 'projection', got {self.distill_alignment!r}")
        if self.distill_alignment == "projection" and self.teacher_dim is None:
            raise ValueError("distill_alignment='projection' needs teacher_dim (the teacher's embedding width)")
        if self.matryoshka_weights is not None and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError("matryoshka_weights needs one weight per entry of matryoshka_dims")
        for name in ("contrastive_weight", "spread_out_weight", "distill_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 skips the term)")


class EmbeddingGemmaLoss(nn.Module):
    """The full training objective: ``L = sum_d w_d (L_C^d + lambda_S L_S^d) + lambda_D L_D``.

    An ``nn.Module`` only because it may own a ``TeacherProjection`` (put it in the optimizer:
    ``model.parameters()`` plus ``loss.parameters()``). Every term whose weight is 0 is not computed.

    Paper reference: EmbeddingGemma section 2 (all of it); docs section 5.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.projection: TeacherProjection | None = None
        if self.config.distill_alignment == "projection" and self.config.distill_weight != 0:
            self.projection = TeacherProjection(self.config.student_dim, self.config.teacher_dim)

    def forward(
        self,
        queries: Tensor,
        positives: Tensor,
        hard_negatives: Tensor | None = None,
        *,
        hard_negative_mask: Tensor | None = None,
        query_ids: Tensor | None = None,
        positive_ids: Tensor | None = None,
        hard_negative_ids: Tensor | None = None,
        query_offset: int = 0,
        teacher_queries: Tensor | None = None,
        teacher_positives: Tensor | None = None,
        teacher_hard_negatives: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute every enabled term.

        Args:
            queries, positives, hard_negatives, hard_negative_mask, *_ids, query_offset: as in
                ``contrastive_loss`` (positives may be gathered across ranks).
            teacher_queries, teacher_positives, teacher_hard_negatives: the teacher's embeddings of the
                LOCAL rows (B, ...); required when ``distill_weight > 0``. Hard-negative distillation
                runs when both student and teacher hard negatives are given.

        Returns:
            ``loss`` plus every named term (``contrastive_loss@d``, ``spread_out_loss@d``,
            ``distillation_loss``) and diagnostics.
        """
        cfg = self.config
        out = matryoshka_loss(
            queries,
            positives,
            hard_negatives,
            dims=cfg.matryoshka_dims,
            weights=cfg.matryoshka_weights,
            contrastive_weight=cfg.contrastive_weight,
            spread_out_weight=cfg.spread_out_weight,
            query_offset=query_offset,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            denominator=cfg.denominator,
            hard_negative_mask=hard_negative_mask,
            query_ids=query_ids,
            positive_ids=positive_ids,
            hard_negative_ids=hard_negative_ids,
        )
        if cfg.distill_weight != 0:
            if teacher_queries is None or teacher_positives is None:
                raise ValueError(
                    "distill_weight > 0 needs teacher_queries and teacher_positives; "
                    "pass the teacher's embeddings or set LossConfig(distill_weight=0)"
                )
            b = queries.shape[0]
            with_negatives = hard_negatives is not None and teacher_hard_negatives is not None
            terms = embedding_distillation_loss(
                queries,
                positives[query_offset : query_offset + b],
                teacher_queries,
                teacher_positives,
                hard_negatives if with_negatives else None,
                teacher_hard_negatives if with_negatives else None,
                hard_negative_mask=hard_negative_mask,
                distance=cfg.distill_distance,
                projection=self.projection,
            )
            out["loss"] = out["loss"] + cfg.distill_weight * terms["distillation_loss"]
            out.update(terms)
        return out
