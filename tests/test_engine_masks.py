"""Mask semantics pinned directly against an explicit double loop (doc section 2)."""

from __future__ import annotations

import torch

from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, EmbeddingGemmaConfig
from embeddinggemma.engine.masks import band_mask, padded_attention, padded_masks

CONFIG = EmbeddingGemmaConfig.tiny().backbone  # sliding_window 6 -> radius 3


def _explicit(lengths: list[int], total: int, radius: int | None) -> torch.Tensor:
    out = torch.zeros(len(lengths), total, total, dtype=torch.bool)
    for b, n in enumerate(lengths):
        for i in range(total):
            for j in range(total):
                sees = j < n and (radius is None or abs(i - j) <= radius)
                out[b, i, j] = sees or (i >= n and i == j and radius is not None)
    return out


def test_radius_is_half_the_stored_window():
    assert CONFIG.window_radius == 3
    assert EmbeddingGemmaConfig().backbone.window_radius == 256  # 513-token symmetric band


def test_band_is_symmetric():
    band = band_mask(9, 3)
    assert torch.equal(band, band.T)
    assert band[4].tolist() == [False, True, True, True, True, True, True, True, False]


def test_padded_masks_equal_explicit_loop():
    lengths, total = [12, 5, 1, 12], 12
    attention_mask = torch.tensor([[1] * n + [0] * (total - n) for n in lengths])
    masks = padded_masks(attention_mask, CONFIG)
    full = masks[FULL_ATTENTION].expand(4, 1, total, total)[:, 0]
    sliding = masks[SLIDING_ATTENTION][:, 0]
    explicit_full = _explicit(lengths, total, None)
    explicit_sliding = _explicit(lengths, total, 3)
    real = attention_mask.bool()
    # real query rows must match exactly; padded rows only need to be non-empty
    assert torch.equal(full[real], explicit_full[real])
    assert torch.equal(sliding[real], explicit_sliding[real])
    assert sliding.any(-1).all(), "no all-masked row (NaN) in sliding layers"
    assert full.any(-1).all()
    # padding keys are never attended by real queries
    for b, n in enumerate(lengths):
        assert not sliding[b, :n, n:].any() and not full[b, :n, n:].any()


def test_short_batch_reuses_the_key_mask():
    attention_mask = torch.ones(2, 4, dtype=torch.long)  # 4 tokens fit inside radius 3
    masks = padded_masks(attention_mask, CONFIG)
    assert masks[SLIDING_ATTENTION] is masks[FULL_ATTENTION]


def test_padded_rows_stay_finite_through_attention():
    """A query far beyond its text (whole band in padding) would be NaN without the diagonal."""
    attention_mask = torch.tensor([[1, 1] + [0] * 14])
    attend = padded_attention(attention_mask, CONFIG)[SLIDING_ATTENTION]
    q = torch.randn(1, 4, 16, 16)
    kv = torch.randn(1, 2, 16, 16)
    out = attend(q, kv, kv, 0.2)
    assert torch.isfinite(out).all()
