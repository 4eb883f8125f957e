"""One Matryoshka cut for the API, the evaluation and the loss (embeddinggemma.matryoshka)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embeddinggemma.matryoshka import matryoshka_truncate


def test_prefix_is_renormalised_numpy_in_numpy_out() -> None:
    x = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 5.0]], np.float32)
    out = matryoshka_truncate(x, 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])  # a zero prefix stays zero, no NaN
    # what the evaluation computed before it used this function, to the last float32 rounding
    rows = np.random.default_rng(0).standard_normal((64, 768)).astype(np.float32)
    for dim in (768, 512, 256, 128):
        prefix = rows[:, :dim]
        expected = prefix / np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)
        np.testing.assert_allclose(matryoshka_truncate(rows, dim), expected, rtol=0, atol=1e-7)


def test_torch_in_torch_out_is_what_the_api_and_the_loss_computed() -> None:
    x = torch.randn(4, 3, 16, dtype=torch.bfloat16, requires_grad=True)
    out = matryoshka_truncate(x, 8)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 8)
    assert torch.equal(out, F.normalize(x[..., :8].float(), dim=-1))  # bit for bit
    out.sum().backward()
    assert x.grad is not None and x.grad[..., 8:].abs().sum() == 0
    raw = matryoshka_truncate(x.detach(), 8, normalize=False)
    assert raw.is_contiguous() and torch.equal(raw, x.detach()[..., :8])


@pytest.mark.parametrize("dim", [0, 17, -1])
def test_a_dim_outside_the_width_is_refused(dim: int) -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.16 \(the embedding width\)"):
        matryoshka_truncate(torch.zeros(2, 16), dim)
    with pytest.raises(ValueError, match="embedding width"):
        matryoshka_truncate(np.zeros((2, 16), np.float32), dim)
