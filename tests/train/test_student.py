"""Student initialisation: the layer-selection rule and a checkpoint both loaders accept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.config import FULL_ATTENTION, EmbeddingGemmaConfig
from embeddinggemma.train.student import make_student, select_layers, student_config

pytestmark = pytest.mark.usefixtures("single_thread")

GEMMA = EmbeddingGemmaConfig().backbone.layer_types  # full at 5, 11, 17, 23
TEXTS = ["which planet is known as the red planet", "python function returns a sorted list of string key value"]


def _pattern(kept: list[int]) -> str:
    return "".join("F" if GEMMA[i] == FULL_ATTENTION else "s" for i in kept)


def test_twelve_layers_keep_five_local_then_one_global_twice():
    assert select_layers(GEMMA, 12) == [0, 2, 4, 8, 10, 11, 12, 14, 16, 20, 22, 23]
    for k in (6, 12, 18, 24):
        assert _pattern(select_layers(GEMMA, k)) == "sssssF" * (k // 6), k
    assert select_layers(GEMMA, 24) == list(range(24))


@pytest.mark.parametrize("k", range(1, 25))
def test_selection_invariants(k):
    kept = select_layers(GEMMA, k)
    assert len(kept) == k and kept == sorted(set(kept))
    assert kept[-1] == 23  # the last (global) layer always stays
    full = [i for i in kept if GEMMA[i] == FULL_ATTENTION]
    assert len(full) == min(max(1, round(k * 4 / 24)), 4)  # global layers in the teacher's proportion
    if k > len(full):
        assert kept[0] == 0  # the first local layer (closest to the embeddings) stays
    runs = [len(run) for run in _pattern(kept).split("F")[:-1]]
    assert max(runs) - min(runs) <= 2  # local layers spread between the global ones


def test_bad_depths_are_refused():
    for k in (0, 25):
        with pytest.raises(ValueError, match="between 1 and 24"):
            select_layers(GEMMA, k)


def test_student_config_matches_the_selection():
    config, kept = student_config(EmbeddingGemmaConfig(), 12)
    assert config.backbone.num_hidden_layers == 12
    assert config.backbone.layer_types == tuple(GEMMA[i] for i in kept)
    assert config.head == EmbeddingGemmaConfig().head


def test_student_checkpoint_loads_in_ours_and_sentence_transformers(tiny_st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out, kept = make_student(tiny_st_dir, tmp_path / "student", 2)
    assert kept == [0, 2]  # tiny teacher: [sliding, sliding, full]
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert json.loads((out / "student.json").read_text())["kept_layers"] == [0, 2]

    student, _ = load_checkpoint(out)
    teacher, _ = load_checkpoint(tiny_st_dir)
    assert torch.equal(student.encoder.layers[1].mlp.up_proj.weight, teacher.encoder.layers[2].mlp.up_proj.weight)
    assert torch.equal(student.encoder.embed_tokens.weight, teacher.encoder.embed_tokens.weight)
    assert torch.equal(student.dense[1].weight, teacher.dense[1].weight)

    ours = Embedder.from_pretrained(out, device="cpu")
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(ours.encode_query(TEXTS), st.encode_query(TEXTS), atol=2e-6)
    teacher_embedding = Embedder.from_pretrained(tiny_st_dir, device="cpu").encode_query(TEXTS)
    assert not np.allclose(ours.encode_query(TEXTS), teacher_embedding, atol=1e-3)  # really a different network


def test_keeping_every_layer_reproduces_the_teacher(tiny_st_dir, tmp_path):
    out, kept = make_student(tiny_st_dir, tmp_path / "full", 3)
    assert kept == [0, 1, 2]
    same = Embedder.from_pretrained(out, device="cpu").encode_query(TEXTS)
    np.testing.assert_array_equal(same, Embedder.from_pretrained(tiny_st_dir, device="cpu").encode_query(TEXTS))
    with pytest.raises(ValueError, match="not empty"):
        make_student(tiny_st_dir, out, 2)
