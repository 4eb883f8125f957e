"""Token-budget planning of batches: plain Python, no torch (the on-device runtime plans with it too)."""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_texts: int | None = None, *, pad_to_longest: bool = False
) -> list[list[int]]:
    """Group text indices into batches of at most `max_tokens` tokens, longest texts first.

    `pad_to_longest=True` counts a batch as rows x longest (padded batches); otherwise the sum of
    lengths (packed batches). A text longer than the budget gets a batch of its own. Sorting longest
    first keeps lengths in a batch alike and surfaces out-of-memory errors at the first batch.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        cost = (len(current) + 1) * lengths[current[0]] if pad_to_longest and current else used + n
        if current and (cost > max_tokens or (max_texts is not None and len(current) >= max_texts)):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches
