"""Precomputed teacher embeddings (embeddinggemma.train.teacher): built once, resumable, complete or loud."""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from embeddinggemma.train.data import TrainingExample, prompt_example, text_id, write_dataset
from embeddinggemma.train.loader import MixtureLoader
from embeddinggemma.train.teacher import MissingTeacherEmbeddingError, TeacherCache, build_teacher_cache


class HashEmbedder:
    """Deterministic pseudo-embeddings (seeded by the text's hash), deliberately unnormalised."""

    embedding_dim = 12

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.texts: list[str] = []

    def encode(self, texts, *, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash (out of memory, preempted node, ...)")
        self.texts += list(texts)
        return np.stack([self.vector(t) for t in texts])

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).normal(size=12).astype(np.float32) * 3


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def dataset(tmp_path: Path):
    examples = [
        TrainingExample(
            f"query {i}", f"doc {i}", (f"doc {(i + 1) % 9}", f"other {i % 3}"), title="T" if i % 2 else None
        )
        for i in range(9)
    ]
    return write_dataset(tmp_path / "data", examples, name="toy", task="query")


def _distinct_texts(spec) -> list[str]:
    from embeddinggemma.train.teacher import dataset_texts

    return list(dict.fromkeys(dataset_texts(spec)))


def test_cache_holds_every_distinct_prompted_text(tmp_path: Path, dataset) -> None:
    report = build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "t", teacher="hash", shard_size=4)
    texts = _distinct_texts(dataset)
    assert report.distinct_texts == report.embedded == len(texts) and report.already_cached == 0
    assert report.shards_written == -(-len(texts) // 4)
    cache = TeacherCache(tmp_path / "t")
    assert len(cache) == len(texts) and cache.dim == 12 and cache.teacher == "hash"
    got = cache.embeddings(texts)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _unit(np.stack([HashEmbedder.vector(t) for t in texts])), rtol=1e-6)
    assert prompt_example(TrainingExample("query 0", "doc 0"), "query").positive in cache
    assert "doc 0" not in cache  # unprompted text is a different text
    # A second run embeds nothing.
    again = build_teacher_cache(HashEmbedder(fail_on_call=1), [dataset], tmp_path / "t", teacher="hash", shard_size=4)
    assert again.embedded == 0 and again.already_cached == len(texts)


def test_resume_after_interruption(tmp_path: Path, dataset) -> None:
    texts = _distinct_texts(dataset)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_teacher_cache(HashEmbedder(fail_on_call=3), [dataset], tmp_path / "t", teacher="hash", shard_size=4)
    partial = TeacherCache(tmp_path / "t")
    assert len(partial) == 8 and partial.num_shards == 2  # two complete shards survived
    # A crash in the middle of writing shard 2 leaves a temporary file and an orphan embeddings file.
    (tmp_path / "t" / "shard-00002.emb.npy.tmp").write_bytes(b"garbage")
    np.save(tmp_path / "t" / "shard-00002.emb.npy", np.zeros((3, 12), np.float32))
    resumed = HashEmbedder()
    report = build_teacher_cache(resumed, [dataset], tmp_path / "t", teacher="hash", shard_size=4)
    assert report.already_cached == 8 and report.embedded == len(texts) - 8
    assert set(resumed.texts) == set(texts[8:])  # completed shards were not recomputed
    assert not list((tmp_path / "t").glob("*.tmp"))
    straight = build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "u", teacher="hash", shard_size=4)
    assert straight.embedded == len(texts)
    np.testing.assert_array_equal(
        TeacherCache(tmp_path / "t").embeddings(texts), TeacherCache(tmp_path / "u").embeddings(texts)
    )


def test_missing_texts_raise_clear_errors(tmp_path: Path, dataset) -> None:
    other = write_dataset(tmp_path / "other", [TrainingExample("new query", "new doc")] * 2, name="other", task="query")
    build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "t", teacher="hash")
    cache = TeacherCache(tmp_path / "t")
    with pytest.raises(MissingTeacherEmbeddingError, match="lacks 2 of the 2 distinct texts of dataset 'other'"):
        MixtureLoader([dataset, other], [1, 1], 2, seed=0, num_hard_negatives=1, teacher=cache)
    lazy = MixtureLoader([other], [1], 2, seed=0, num_hard_negatives=1, teacher=cache, verify_teacher=False)
    with pytest.raises(
        MissingTeacherEmbeddingError, match=r"'task: search result \| query: new query'.*build_teacher_cache"
    ):
        next(lazy)
    # A mapping gives a cache per dataset; a dataset without one gets no teacher.
    loader = MixtureLoader(
        [dataset, other], [1, 1], 2, seed=0, num_hard_negatives=1, teacher={"toy": cache}, max_batches=10
    )
    assert {b.dataset: b.teacher is None for b in loader} == {"toy": False, "other": True}
    with pytest.raises(FileNotFoundError, match="not a teacher cache"):
        TeacherCache(tmp_path / "nowhere")


def test_loader_fills_teacher_embeddings(tmp_path: Path, dataset) -> None:
    build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "t", teacher="hash", shard_size=5)
    batch = next(MixtureLoader([dataset], [1], 9, seed=0, num_hard_negatives=3, teacher=TeacherCache(tmp_path / "t")))
    t = batch.teacher
    assert t["queries"].shape == (9, 12) and t["positives"].shape == (9, 12) and t["hard_negatives"].shape == (9, 3, 12)
    expected = _unit(np.stack([HashEmbedder.vector(x) for x in batch.positive_texts]))
    torch.testing.assert_close(t["positives"], torch.from_numpy(expected))
    assert batch.hard_negative_mask[:, :2].all() and not batch.hard_negative_mask[:, 2].any()
    assert torch.equal(t["hard_negatives"][:, 2], torch.zeros(9, 12))  # padded slot
    neg = batch.hard_negative_texts[4][1]
    torch.testing.assert_close(t["hard_negatives"][4, 1], torch.from_numpy(_unit(HashEmbedder.vector(neg))))
    part = batch.slice(3, 6)
    assert torch.equal(part.teacher["hard_negatives"], t["hard_negatives"][3:6])


def test_bfloat16_storage_and_guards(tmp_path: Path, dataset) -> None:
    build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "b", teacher="hash", storage="bfloat16")
    texts = _distinct_texts(dataset)
    stored = np.load(tmp_path / "b" / "shard-00000.emb.npy")
    assert stored.dtype == np.uint16
    got = TeacherCache(tmp_path / "b").embeddings(texts)
    exact = _unit(np.stack([HashEmbedder.vector(x) for x in texts]))
    assert np.abs(got - exact).max() < 4e-3 and not np.array_equal(got, exact)
    with pytest.raises(ValueError, match="float16 is not offered"):
        build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "c", teacher="hash", storage="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different teacher"):
        build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "b", teacher="another model", storage="bfloat16")
    with (tmp_path / "b" / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another process is building"):
            build_teacher_cache(HashEmbedder(), [dataset], tmp_path / "b", teacher="hash", storage="bfloat16")
    assert text_id(texts[0]) in set(np.load(tmp_path / "b" / "shard-00000.ids.npy").tolist())
