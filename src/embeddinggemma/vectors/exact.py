"""Exact (brute-force) nearest-neighbour search over embeddings.

Evaluation and small deployments need the *exact* top-k, not an approximate index, but a
1M-document corpus must never materialise a ``queries x corpus`` score matrix. :func:`search`
therefore streams the corpus in chunks of ``chunk_size`` rows and the queries in blocks of
``query_chunk_size`` rows, and merges each block's top-k into a running top-k per query.

Peak extra memory is about ``query_chunk_size * chunk_size * 4`` bytes for one score block
(plus the same again for temporaries) and ``num_queries * k * 12`` bytes for the running
results, independent of corpus size.

Tie rule (deterministic by construction, not by luck of ``torch.topk``): results are sorted
by score descending and, among *exactly* equal scores, by corpus index ascending (the
earlier document wins). This holds across chunk boundaries. Note that the scores themselves
come from float32 matrix products, whose last bits can depend on the BLAS blocking, so
bit-identical scores are only guaranteed for identical inputs, devices and chunk sizes.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["search"]

Metric = Literal["cosine", "dot"]
ArrayLike = np.ndarray | torch.Tensor

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Wrap without copying where possible; dtype conversion happens per chunk."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point embeddings, got numpy dtype {x.dtype}")
        t = torch.from_numpy(x)
    elif isinstance(x, torch.Tensor):
        t = x
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32/float64/float16/bfloat16, got {t.dtype}")
    if t.ndim != 2:
        hint = " (use x.reshape(1, -1) for a single vector)" if t.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}{hint}")
    return t


def _prepare(block: torch.Tensor, device: torch.device, metric: Metric, name: str) -> torch.Tensor:
    """Move one chunk to the compute device as float32 and normalise it for cosine scoring."""
    block = block.to(device=device, dtype=torch.float32)
    if not torch.isfinite(block).all():
        raise ValueError(f"{name} contains NaN or inf values; fix the encoder output before searching")
    if metric == "cosine":
        # Zero vectors get score 0 against everything instead of NaN.
        block = torch.nn.functional.normalize(block, p=2.0, dim=1, eps=1e-12)
    return block


def _sort_candidates(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by (score desc, index asc): index-sort first, then a stable score sort."""
    indices, perm = indices.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, perm)


def _block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a (Q, C) block with ties at the k-th score resolved to the lowest indices.

    ``torch.topk`` picks an arbitrary subset when several entries tie with the k-th value.
    Rows where that happens (rare with real embeddings) are redone exactly: everything
    strictly above the k-th value is kept, then the first tied entries in index order.
    """
    values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    kth = values[:, -1:]  # (Q, 1)
    n_greater = (scores > kth).sum(dim=1)
    n_equal = (scores == kth).sum(dim=1)
    ambiguous = (n_greater + n_equal) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        sub = scores[rows]
        sub_kth = kth[rows]
        equal = sub == sub_kth
        need = (k - n_greater[rows]).unsqueeze(1)
        keep = (sub > sub_kth) | (equal & (equal.cumsum(dim=1) <= need))  # exactly k per row
        idx = keep.nonzero()[:, 1].view(len(rows), k)  # row-major: ascending index per row
        indices = indices.clone()
        values = values.clone()
        indices[rows] = idx
        values[rows] = sub.gather(1, idx)
    return _sort_candidates(values, indices)


@torch.inference_mode()
def search(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int = 10,
    *,
    metric: Metric = "cosine",
    chunk_size: int = 16384,
    query_chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """Exact top-``k`` corpus rows for every query row.

    Args:
        queries: ``(Q, D)`` embeddings, numpy or torch, float32/float64/float16/bfloat16.
            Scores are always computed in float32 (bfloat16 storage is fine, bfloat16
            arithmetic would make ties and rank flips far more common).
        corpus: ``(N, D)`` embeddings, same kinds as ``queries``. A numpy memmap works:
            only ``chunk_size`` rows are converted at a time.
        k: number of neighbours; must be >= 1. If ``k > N`` it is clamped to ``N`` (every
            document is returned, ranked), which is not an error.
        metric: ``"cosine"`` (rows are L2-normalised here, so unnormalised input is fine)
            or ``"dot"`` (raw inner product).
        chunk_size: corpus rows scored per step; bounds memory together with
            ``query_chunk_size`` (one float32 block is ``query_chunk_size * chunk_size * 4`` B).
        query_chunk_size: query rows scored per step.
        device: where to compute (default: the device of ``corpus`` if it is a tensor, else CPU).

    Returns:
        ``(scores, indices)``, each ``(Q, min(k, N))``, sorted by score descending, ties broken
        by ascending corpus index. numpy ``(float32, int64)`` arrays if ``queries`` is a numpy
        array, otherwise torch tensors on the compute device.

    Raises:
        ValueError: on non-2-D input, mismatched dimensions, an empty corpus, ``k < 1``,
            non-positive chunk sizes, or non-finite values.
    """
    q = _as_tensor(queries, "queries")
    c = _as_tensor(corpus, "corpus")
    if q.shape[1] != c.shape[1]:
        raise ValueError(
            f"embedding dimensions differ: queries have {q.shape[1]}, corpus has {c.shape[1]}; "
            "encode both with the same model and the same Matryoshka dim"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ValueError(f"chunk sizes must be >= 1, got chunk_size={chunk_size}, query_chunk_size={query_chunk_size}")
    if metric not in ("cosine", "dot"):
        raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
    n_corpus, n_queries = c.shape[0], q.shape[0]
    if n_corpus == 0:
        raise ValueError("the corpus is empty; there is nothing to search")
    if k > n_corpus:
        logger.debug("k=%d exceeds the corpus size %d; returning all %d documents", k, n_corpus, n_corpus)
        k = n_corpus
    if device is None:
        device = c.device if isinstance(corpus, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)

    best_scores = torch.full((n_queries, k), -torch.inf, dtype=torch.float32, device=device)
    best_index = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
    filled = 0  # corpus rows merged so far; running lists hold min(filled, k) valid entries
    q_blocks = [
        _prepare(q[s : s + query_chunk_size], device, metric, "queries") for s in range(0, n_queries, query_chunk_size)
    ]
    for c_start in range(0, n_corpus, chunk_size):
        block = _prepare(c[c_start : c_start + chunk_size], device, metric, "corpus")
        kk = min(k, block.shape[0])
        for b, q_block in enumerate(q_blocks):
            rows = slice(b * query_chunk_size, b * query_chunk_size + q_block.shape[0])
            vals, idx = _block_topk(q_block @ block.T, kk)  # (Qb, kk)
            idx = idx + c_start
            if filled == 0:
                best_scores[rows, :kk] = vals
                best_index[rows, :kk] = idx
                continue
            n_old = min(filled, k)
            # Every running index is smaller than every index of this chunk, so putting the
            # running entries first and sorting stably keeps "lower index wins" on ties.
            all_vals = torch.cat([best_scores[rows, :n_old], vals], dim=1)
            all_idx = torch.cat([best_index[rows, :n_old], idx], dim=1)
            all_vals, order = all_vals.sort(dim=1, descending=True, stable=True)
            take = min(k, n_old + kk)
            best_scores[rows, :take] = all_vals[:, :take]
            best_index[rows, :take] = all_idx.gather(1, order[:, :take])
        filled += block.shape[0]

    if isinstance(queries, np.ndarray):
        return best_scores.cpu().numpy(), best_index.cpu().numpy()
    return best_scores, best_index
