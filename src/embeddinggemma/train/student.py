"""Students: a checkpoint cut to k of its layers, written as a normal checkpoint to distil into.

EmbeddingGemma interleaves local and global attention: 24 layers, a full-attention layer after every five
sliding-window layers (layers 5, 11, 17, 23; docs section 2). A shallower student initialised from the
teacher's own layers starts far closer to the teacher than a random one (the layer-dropping init of
DistilBERT, Sanh et al. 2019), and embedding distillation (paper section 2, "embedding matching") then
closes the gap. Dropping layers blindly would break the local/global pattern, e.g. keep no global layer
at all, so the kept layers are chosen by a fixed rule:

1. Global layers: ``g = clamp(round(k * G / L), 1, min(G, k))`` of the teacher's G full-attention layers
   (L layers in all), evenly spaced over them and always including the LAST one (the layer that feeds
   the pooled output sees the whole text). For EmbeddingGemma: k=12 -> layers 11 and 23; k=6 -> 23.
2. Local layers: the other ``k - g`` are taken from the sliding layers of the segments that end at each
   kept global layer (and any sliding layers after the last one), shared between segments as equally as
   possible (never more than a segment holds; ties favour earlier segments), so that the student keeps
   a regular run of local layers before each global one; inside a segment they are evenly spaced with
   both ends included.

For k=12 this keeps teacher layers [0, 2, 4, 8, 10, 11, 12, 14, 16, 20, 22, 23]: sliding x5, full,
sliding x5, full, i.e. the teacher's pattern of one global layer after every five local ones. Every kept
layer keeps its weights and its attention type (hence its window and RoPE base), so given the same input
it computes exactly what it computed in the teacher. Embeddings, final norm and the Dense head are
copied unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from embeddinggemma.checkpoint import load_checkpoint, save_checkpoint
from embeddinggemma.config import FULL_ATTENTION, EmbeddingGemmaConfig
from embeddinggemma.model import EmbeddingGemma

logger = logging.getLogger(__name__)

__all__ = ["make_student", "select_layers", "student_config", "student_from_model"]


def _evenly(candidates: Sequence[int], count: int) -> list[int]:
    """``count`` items of ``candidates`` evenly spaced, first and last included (just the first for 1)."""
    if count <= 0:
        return []
    if count == 1:
        return [candidates[0]]
    n = len(candidates)
    return [candidates[round(i * (n - 1) / (count - 1))] for i in range(count)]


def _fill_evenly(total: int, capacities: Sequence[int]) -> list[int]:
    """Split ``total`` over bins as equally as possible, never above a bin's capacity (ties: earlier bin)."""
    shares = [0] * len(capacities)
    for _ in range(total):
        open_bins = [i for i, cap in enumerate(capacities) if shares[i] < cap]
        shares[min(open_bins, key=lambda i: (shares[i], i))] += 1
    return shares


def select_layers(layer_types: Sequence[str], num_layers: int) -> list[int]:
    """Teacher layer indices (increasing) that a ``num_layers``-layer student keeps; see the module doc."""
    total = len(layer_types)
    if not 1 <= num_layers <= total:
        raise ValueError(f"a student keeps between 1 and {total} layers (the teacher's depth), got {num_layers}")
    full = [i for i, t in enumerate(layer_types) if t == FULL_ATTENTION]
    if not full:  # a purely local model: just spread the layers evenly
        return _evenly(range(total), num_layers)
    g = min(max(1, round(num_layers * len(full) / total)), len(full), num_layers)
    kept_full = [full[round((i + 1) * len(full) / g) - 1] for i in range(g)]
    if kept_full[-1] != full[-1]:  # the rounding above always ends on the last one; keep it explicit
        raise AssertionError("selection rule failed to keep the last global layer")
    # Segments of sliding layers: before each kept global layer, and after the last one.
    bounds = [-1, *kept_full, total]
    segments = [
        [i for i in range(lo + 1, hi) if layer_types[i] != FULL_ATTENTION] for lo, hi in itertools.pairwise(bounds)
    ]
    shares = _fill_evenly(num_layers - g, [len(s) for s in segments])
    kept = list(kept_full)
    for segment, share in zip(segments, shares, strict=True):
        kept += _evenly(segment, share)
    return sorted(kept)


def student_config(config: EmbeddingGemmaConfig, num_layers: int) -> tuple[EmbeddingGemmaConfig, list[int]]:
    """The config of a ``num_layers`` student of ``config`` and the teacher layers it keeps."""
    kept = select_layers(config.backbone.layer_types, num_layers)
    backbone = dataclasses.replace(
        config.backbone,
        num_hidden_layers=len(kept),
        layer_types=tuple(config.backbone.layer_types[i] for i in kept),
    )
    return dataclasses.replace(config, backbone=backbone), kept


def student_from_model(teacher: EmbeddingGemma, num_layers: int) -> tuple[EmbeddingGemma, list[int]]:
    """A new model holding copies of the kept layers (renumbered), embeddings, final norm and head."""
    config, kept = student_config(teacher.config, num_layers)
    with torch.device("meta"):
        student = EmbeddingGemma(config)
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith("encoder.layers."):
            index, rest = key.removeprefix("encoder.layers.").split(".", 1)
            if int(index) not in kept:
                continue
            key = f"encoder.layers.{kept.index(int(index))}.{rest}"
        state[key] = value.detach().clone()
    student.load_state_dict(state, strict=True, assign=True)
    return student.to(teacher.dtype), kept


def make_student(
    checkpoint: str | Path,
    out: str | Path,
    num_layers: int,
    *,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[Path, list[int]]:
    """Write a ``num_layers``-layer student of ``checkpoint`` to ``out`` (sentence-transformers layout).

    ``config.json`` carries the student's ``num_hidden_layers`` and ``layer_types``; ``student.json``
    records the teacher and the kept teacher layers. Our loader and sentence-transformers load the result.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new directory for the student")
    teacher, info = load_checkpoint(checkpoint, dtype=dtype)
    student, kept = student_from_model(teacher, num_layers)
    save_checkpoint(student, out, tokenizer_dir=info.path, prompts=info.prompts)
    record = {
        "teacher": str(checkpoint),
        "teacher_layers": teacher.config.backbone.num_hidden_layers,
        "kept_layers": kept,
        "layer_types": list(student.config.backbone.layer_types),
    }
    (out / "student.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("student with %d layers %s written to %s", len(kept), kept, out)
    return out, kept
