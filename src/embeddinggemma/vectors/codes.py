"""Quantized embeddings: int8 (1 byte per dimension) and binary (1 bit per dimension) vectors.

Vector stores keep embeddings compressed: scalar int8 quantization (FAISS ``SQ8``, Qdrant's scalar
quantization, sentence-transformers' ``quantize_embeddings``) is 4x smaller than float32, binary
quantization 32x. The paper's spread-out regulariser exists to make the model robust to exactly this
(docs section 5), so the evaluation scores every run after both.

* **int8**: per-dimension ranges ``[lo, hi]`` come from calibration embeddings (usually the corpus
  being indexed); each value maps to the nearest of 256 evenly spaced levels across its range
  (values outside it are clipped). Scores are dot products of the dequantized levels, which is what
  an SQ8 index computes.
* **binary**: one sign bit per dimension (``x > 0``), packed 8 per byte. Two binary vectors score
  ``dim - 2 * hamming``, the dot product of their +-1 forms, so ranking by it is ranking by Hamming
  distance.

Matryoshka truncation comes first: quantize the ``dim``-wide, re-normalised slice, not the full vector.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "EMBEDDING_PRECISIONS",
    "EmbeddingPrecision",
    "dequantize_int8",
    "int8_ranges",
    "quantize_embeddings",
    "scoring_vectors",
    "unpack_binary",
]

EmbeddingPrecision = Literal["float32", "int8", "binary"]
EMBEDDING_PRECISIONS: tuple[str, ...] = ("float32", "int8", "binary")
_LEVELS = 255  # steps between lo and hi: 256 int8 levels


def _as_matrix(embeddings: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(embeddings)
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise ValueError(f"{name} must be a 2-D float array (rows, dim), got {arr.dtype} of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr.astype(np.float32, copy=False)


def _check_precision(precision: str) -> None:
    if precision not in EMBEDDING_PRECISIONS:
        raise ValueError(f"unknown embedding precision {precision!r}; choose one of {list(EMBEDDING_PRECISIONS)}")


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
    """Per-dimension ``[lo, hi]`` (shape ``(2, dim)``) of calibration embeddings, for :func:`quantize_embeddings`.

    Calibrate on the texts that will be indexed (or a sample of them): a query that falls outside a
    range is clipped to it, which costs less than stretching every level to cover rare extremes.
    """
    cal = _as_matrix(calibration, "calibration embeddings")
    if cal.shape[0] < 2:
        raise ValueError("int8 calibration needs at least 2 embeddings to measure each dimension's range")
    return np.stack([cal.min(axis=0), cal.max(axis=0)])


def _steps(ranges: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, dim):
        raise ValueError(f"int8 ranges must have shape (2, {dim}) (lo and hi per dimension), got {ranges.shape}")
    lo, hi = ranges
    if (hi < lo).any():
        raise ValueError("int8 ranges have hi < lo in some dimension; build them with int8_ranges()")
    # A constant dimension (hi == lo) gets a tiny step so it maps to one level instead of dividing by zero.
    return lo, np.maximum((hi - lo) / _LEVELS, np.float32(1e-12))


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: EmbeddingPrecision,
    *,
    ranges: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
) -> np.ndarray:
    """Compress float embeddings.

    Args:
        embeddings: ``(rows, dim)`` float array (already truncated to the Matryoshka dim you store).
        precision: ``"int8"`` -> int8 codes ``(rows, dim)``; ``"binary"`` -> sign bits packed into
            ``(rows, ceil(dim / 8))`` uint8 (big-endian bit order, as ``np.packbits``); ``"float32"``
            -> the input as float32.
        ranges: int8 only: ``(2, dim)`` from :func:`int8_ranges`; store them with the index, queries
            must be quantized with the same ranges.
        calibration: int8 only, instead of ``ranges``: embeddings to compute them from.
    """
    _check_precision(precision)
    emb = _as_matrix(embeddings, "embeddings")
    if precision == "float32":
        return emb
    if precision == "binary":
        return np.packbits(emb > 0, axis=1)
    if (ranges is None) == (calibration is None):
        raise ValueError("int8 quantization needs exactly one of ranges= or calibration= (e.g. the corpus embeddings)")
    lo, step = _steps(int8_ranges(calibration) if ranges is None else ranges, emb.shape[1])
    levels = np.clip(np.rint((emb - lo) / step), 0, _LEVELS)
    return (levels - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes back to float32 levels (what an SQ8 index scores with)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.int8:
        raise ValueError(f"int8 codes must be a 2-D int8 array, got {codes.dtype} of shape {codes.shape}")
    lo, step = _steps(ranges, codes.shape[1])
    return lo + (codes.astype(np.float32) + 128) * step


def unpack_binary(bits: np.ndarray, dim: int) -> np.ndarray:
    """Packed sign bits back to +-1 float32 vectors of width ``dim``: their dot product is ``dim - 2 * hamming``."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.dtype != np.uint8 or bits.shape[1] != -(-dim // 8):
        raise ValueError(f"binary codes for dim {dim} must be uint8 of shape (rows, {-(-dim // 8)}), got {bits.shape}")
    return np.unpackbits(bits, axis=1, count=dim).astype(np.float32) * 2 - 1


def scoring_vectors(
    embeddings: np.ndarray, precision: EmbeddingPrecision, *, ranges: np.ndarray | None = None
) -> np.ndarray:
    """Float vectors whose dot products equal the scores of ``precision``-quantized embeddings.

    Lets exact float search (:func:`embeddinggemma.vectors.exact.search`) rank a quantized index: int8 codes
    are dequantized with ``ranges``, binary codes become +-1.
    """
    _check_precision(precision)
    codes = quantize_embeddings(embeddings, precision, ranges=ranges)  # type: ignore[arg-type]
    if precision == "int8":
        return dequantize_int8(codes, ranges)  # type: ignore[arg-type]
    if precision == "binary":
        return unpack_binary(codes, embeddings.shape[1])
    return codes
