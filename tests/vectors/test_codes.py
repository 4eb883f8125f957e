"""int8 / binary embedding quantization against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from embeddinggemma.vectors.codes import (
    dequantize_int8,
    int8_ranges,
    quantize_embeddings,
    scoring_vectors,
    unpack_binary,
)


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_levels_by_hand() -> None:
    cal = np.array([[-1.0, 0.0], [1.0, 2.55]], np.float32)  # ranges: [-1, 1] and [0, 2.55]
    np.testing.assert_allclose(int8_ranges(cal), [[-1.0, 0.0], [1.0, 2.55]])
    x = np.array([[-1.0, 0.0], [1.0, 2.55], [0.5, 1.0], [5.0, -3.0]], np.float32)
    codes = quantize_embeddings(x, "int8", calibration=cal)
    assert codes.dtype == np.int8 and codes.shape == (4, 2)
    # lo -> -128, hi -> 127; 0.5 in [-1, 1] is level 191.25 -> 191 -> code 63; 1.0 in [0, 2.55] is level 100.
    np.testing.assert_array_equal(codes, [[-128, -128], [127, 127], [63, -28], [127, -128]])  # last row clipped
    back = dequantize_int8(codes, int8_ranges(cal))
    np.testing.assert_allclose(back[:3], x[:3], atol=(2 / 255) / 2 + 1e-6)


def test_int8_error_is_half_a_step_and_ranking_survives() -> None:
    docs, queries = _unit_rows(500, 128, 1), _unit_rows(20, 128, 2)
    ranges = int8_ranges(docs)
    step = (ranges[1] - ranges[0]) / 255
    d8 = scoring_vectors(docs, "int8", ranges=ranges)
    assert np.all(np.abs(d8 - docs) <= step / 2 + 1e-6)
    exact = (queries @ docs.T).argmax(1)
    approx = (scoring_vectors(queries, "int8", ranges=ranges) @ d8.T).argmax(1)
    assert (exact == approx).mean() >= 0.9


def test_binary_scores_are_dim_minus_twice_hamming() -> None:
    x = np.array([[0.5, -0.1, 0.0, 2.0, -3.0, 1.0, 1.0, -1.0, 0.2, -0.2, 0.3, 0.0]], np.float32)
    bits = quantize_embeddings(x, "binary")
    assert bits.dtype == np.uint8 and bits.shape == (1, 2)  # 12 dims -> 2 bytes, zero-padded
    assert bits[0, 0] == 0b10010110 and bits[0, 1] == 0b10100000  # x > 0, big-endian bit order
    a, b = _unit_rows(6, 96, 3), _unit_rows(4, 96, 4)
    sa, sb = scoring_vectors(a, "binary"), scoring_vectors(b, "binary")
    assert set(np.unique(sa)) == {-1.0, 1.0}
    hamming = ((a[:, None, :] > 0) != (b[None, :, :] > 0)).sum(-1)
    np.testing.assert_array_equal(sa @ sb.T, 96 - 2 * hamming)
    np.testing.assert_array_equal(unpack_binary(quantize_embeddings(a, "binary"), 96), sa)


def test_float32_is_identity_and_bad_input_is_refused() -> None:
    x = _unit_rows(3, 8)
    assert scoring_vectors(x, "float32") is not None
    np.testing.assert_array_equal(scoring_vectors(x, "float32"), x)
    with pytest.raises(ValueError, match="unknown embedding precision 'int4'"):
        quantize_embeddings(x, "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one of ranges= or calibration="):
        quantize_embeddings(x, "int8")
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        quantize_embeddings(x, "int8", ranges=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        int8_ranges(x[:1])
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_embeddings(np.full((2, 8), np.nan, np.float32), "binary")
    with pytest.raises(ValueError, match="2-D float array"):
        quantize_embeddings(np.ones(8, np.float32), "binary")
    with pytest.raises(ValueError, match=r"uint8 of shape \(rows, 1\)"):
        unpack_binary(np.zeros((2, 2), np.uint8), 8)
    # A constant dimension maps to one level, no division by zero.
    flat = np.array([[0.5, 1.0], [0.5, -1.0]], np.float32)
    np.testing.assert_allclose(scoring_vectors(flat, "int8", ranges=int8_ranges(flat))[:, 0], [0.5, 0.5])
