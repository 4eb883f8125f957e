"""Matryoshka embeddings: the first ``dim`` coordinates of an embedding, re-normalised, are a smaller one.

The released model was trained for the prefixes in :data:`embeddinggemma.config.MATRYOSHKA_DIMS`
(paper section 2). The public API, the evaluation and the training loss all cut embeddings the same
way, with :func:`matryoshka_truncate`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["matryoshka_truncate"]

Embeddings = TypeVar("Embeddings", np.ndarray, torch.Tensor)


def matryoshka_truncate(embeddings: Embeddings, dim: int, *, normalize: bool = True) -> Embeddings:
    """The first ``dim`` coordinates of every row (last axis), L2-normalised in float32 (a zero row stays
    zero); with ``normalize=False`` the contiguous prefix as it is. numpy in, numpy out; torch in, torch
    out (differentiable).

    Raises ValueError when ``dim`` is outside 1..width: a silent no-op slice would report (or train) a
    Matryoshka size that does not exist.
    """
    as_numpy = isinstance(embeddings, np.ndarray)
    x = torch.from_numpy(embeddings) if as_numpy else embeddings
    width = x.shape[-1]
    if not 1 <= dim <= width:
        raise ValueError(f"Matryoshka dim {dim} is outside 1..{width} (the embedding width); use a dim <= {width}")
    prefix = x[..., :dim]
    out = F.normalize(prefix.float(), dim=-1) if normalize else prefix.contiguous()
    return out.numpy() if as_numpy else out
