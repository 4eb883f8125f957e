"""Matryoshka embeddings: the first ``dim`` coordinates of an embedding, re-normalised, are a smaller one.

The released model was trained for the prefixes in :data:`embeddinggemma.config.MATRYOSHKA_DIMS`
(paper section 2). The public API, the evaluation and the training loss all cut embeddings the same
way, with :func:`matryoshka_truncate`. numpy arrays are cut and normalised in numpy (no torch import:
the on-device runtime uses this module), torch tensors in torch (differentiable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

from embeddinggemma.config import MATRYOSHKA_DIMS

if TYPE_CHECKING:
    import torch

__all__ = ["matryoshka_truncate", "trained_dims"]

Embeddings = TypeVar("Embeddings", np.ndarray, "torch.Tensor")
_EPS = 1e-12  # torch.nn.functional.normalize's default


def trained_dims(width: int) -> tuple[int, ...]:
    """The sizes a model of this embedding width was trained to be truncated to."""
    return tuple(d for d in MATRYOSHKA_DIMS if d <= width) if width in MATRYOSHKA_DIMS else (width,)


def matryoshka_truncate(embeddings: Embeddings, dim: int, *, normalize: bool = True) -> Embeddings:
    """The first ``dim`` coordinates of every row (last axis), L2-normalised in float32 (a zero row stays
    zero); with ``normalize=False`` the contiguous prefix as it is. numpy in, numpy out; torch in, torch
    out (differentiable).

    Raises ValueError when ``dim`` is outside 1..width: a silent no-op slice would report (or train) a
    Matryoshka size that does not exist.
    """
    width = embeddings.shape[-1]
    if not 1 <= dim <= width:
        raise ValueError(f"Matryoshka dim {dim} is outside 1..{width} (the embedding width); use a dim <= {width}")
    prefix = embeddings[..., :dim]
    if isinstance(embeddings, np.ndarray):
        if not normalize:
            return np.ascontiguousarray(prefix)
        prefix = prefix.astype(np.float32, copy=False)
        norms = np.sqrt(np.einsum("...i,...i->...", prefix, prefix))[..., None]
        return prefix / np.maximum(norms, np.float32(_EPS))
    import torch.nn.functional as F

    return F.normalize(prefix.float(), dim=-1, eps=_EPS) if normalize else prefix.contiguous()
