"""Exact search: agreement with a brute-force reference, the tie rule, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddinggemma.vectors.exact import search


def _reference(q: np.ndarray, c: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Full score matrix, then per row a lexsort on (-score, index): the documented rule."""
    q64, c64 = q.astype(np.float32), c.astype(np.float32)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        c64 = c64 / np.linalg.norm(c64, axis=1, keepdims=True)
    s = q64 @ c64.T
    idx = np.stack([np.lexsort((np.arange(s.shape[1]), -row))[:k] for row in s])
    return np.take_along_axis(s, idx, 1), idx


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize(("k", "chunk", "qchunk"), [(1, 7, 3), (5, 7, 3), (13, 4, 5), (40, 16, 100), (10, 1000, 1)])
def test_matches_brute_force(metric: str, k: int, chunk: int, qchunk: int) -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(11, 9)).astype(np.float32)
    c = rng.normal(size=(37, 9)).astype(np.float32)
    scores, idx = search(q, c, k, metric=metric, chunk_size=chunk, query_chunk_size=qchunk)
    ref_s, ref_i = _reference(q, c, min(k, 37), metric)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-6)
    assert scores.dtype == np.float32
    assert idx.dtype == np.int64


def test_ties_go_to_the_lower_index_across_chunks() -> None:
    # Rows 2, 5, 6, 9 are the same vector; chunks of 3 split them over three chunks.
    c = np.zeros((10, 2), np.float32)
    c[:, 1] = 1.0  # everything else points elsewhere (score 0)
    for i in (2, 5, 6, 9):
        c[i] = [1.0, 0.0]
    q = np.array([[1.0, 0.0]], np.float32)
    _, idx = search(q, c, 3, chunk_size=3)
    assert idx.tolist() == [[2, 5, 6]]
    # All ten tie at 0 against an orthogonal query: the first k indices, in order.
    flat = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    flat[:, 2] = 0.0
    scores, idx = search(np.array([[0.0, 0.0, 1.0]], np.float32), flat, 4, chunk_size=3)
    assert idx.tolist() == [[0, 1, 2, 3]]
    assert scores.tolist() == [[0.0] * 4]


def test_ties_within_one_block_beyond_topk_choice() -> None:
    # 50 identical documents and k=5 inside a single chunk: torch.topk may pick any 5.
    c = np.ones((50, 4), np.float32)
    q = np.ones((3, 4), np.float32)
    _, idx = search(q, c, 5, chunk_size=64)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 3


def test_k_larger_than_corpus_is_clamped() -> None:
    c = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    scores, idx = search(np.array([[1.0, 0.0]], np.float32), c, 100)
    assert idx.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores, [[1.0, 0.6, 0.0]], atol=1e-6)


def test_torch_bfloat16_and_numpy_float16_inputs() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 8)).astype(np.float32)
    c = rng.normal(size=(20, 8)).astype(np.float32)
    s_t, i_t = search(torch.from_numpy(q).bfloat16(), torch.from_numpy(c).bfloat16(), 3)
    assert isinstance(s_t, torch.Tensor)
    assert s_t.dtype == torch.float32
    assert i_t.dtype == torch.int64
    # Same ranking as float32 search over the bf16-rounded values (computed in float32).
    _ref_s, ref_i = _reference(
        torch.from_numpy(q).bfloat16().float().numpy(),
        torch.from_numpy(c).bfloat16().float().numpy(),
        3,
        "cosine",
    )
    np.testing.assert_array_equal(i_t.numpy(), ref_i)
    _, i_h = search(q.astype(np.float16), c.astype(np.float16), 3)
    assert isinstance(i_h, np.ndarray)
    assert i_h.shape == (4, 3)


def test_zero_vector_scores_zero_not_nan() -> None:
    scores, idx = search(np.zeros((1, 3), np.float32), np.eye(3, dtype=np.float32), 2)
    assert np.isfinite(scores).all()
    assert idx.tolist() == [[0, 1]]


def test_empty_queries_give_empty_results() -> None:
    scores, idx = search(np.zeros((0, 3), np.float32), np.eye(3, dtype=np.float32), 2)
    assert scores.shape == (0, 2)
    assert idx.shape == (0, 2)


@pytest.mark.parametrize(
    ("q", "c", "k", "match"),
    [
        (np.ones((2, 3)), np.ones((4, 5)), 1, "dimensions differ"),
        (np.ones(3), np.ones((4, 3)), 1, "2-D"),
        (np.ones((2, 3)), np.ones((4, 3)), 0, "k must be"),
        (np.ones((2, 3)), np.ones((0, 3)), 1, "corpus is empty"),
        (np.full((2, 3), np.nan), np.ones((4, 3)), 1, "NaN"),
    ],
)
def test_invalid_input_is_rejected(q: np.ndarray, c: np.ndarray, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        search(q, c, k)


def test_integer_embeddings_are_rejected() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        search(np.ones((2, 3), np.int64), np.ones((4, 3)), 1)
