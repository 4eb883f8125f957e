"""MixtureLoader and ExampleStream: single-dataset batches, rates, determinism, exact resume, bounded memory."""

from __future__ import annotations

import gc
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma.train.data import DataFormatError, TrainingExample, load_dataset, text_id, write_dataset
from embeddinggemma.train.loader import ExampleStream, MixtureLoader, MixtureSpec, load_mixture


def _dataset(root: Path, name: str, n: int, *, task: str = "query", negatives: int = 0):
    examples = (
        TrainingExample(f"{name} query {i}", f"{name} doc {i}", tuple(f"{name} neg {i}.{j}" for j in range(negatives)))
        for i in range(n)
    )
    return write_dataset(root / name, examples, name=name, task=task)


def _fingerprint(batch) -> tuple:
    return (batch.dataset, tuple(batch.query_texts), tuple(map(tuple, batch.hard_negative_texts)))


@pytest.fixture
def three(tmp_path: Path):
    return [
        _dataset(tmp_path, "a", 40, negatives=3),
        _dataset(tmp_path, "b", 25, task="bitext"),
        _dataset(tmp_path, "c", 30),
    ]


def test_batches_are_single_dataset_prompted_and_deterministic(three) -> None:
    kw = {"seed": 7, "num_hard_negatives": 2, "buffer_size": 8, "block_bytes": 256}
    first = [_fingerprint(b) for b in MixtureLoader(three, [1, 1, 1], 6, max_batches=30, **kw)]
    again = [_fingerprint(b) for b in MixtureLoader(three, [1, 1, 1], 6, max_batches=30, **kw)]
    other = [_fingerprint(b) for b in MixtureLoader(three, [1, 1, 1], 6, max_batches=30, **{**kw, "seed": 8})]
    assert first == again and first != other and len(first) == 30
    for batch in MixtureLoader(three, [1, 1, 1], 6, max_batches=30, **kw):
        name = batch.dataset
        assert all(q.startswith(f"task: search result | query: {name} query ") for q in batch.query_texts)
        if name == "b":  # bitext is symmetric: positives get the query prompt too
            assert batch.task == "bitext" and batch.positive_texts[0].startswith("task: search result | query: b doc")
        else:
            assert all(p.startswith(f"title: none | text: {name} doc ") for p in batch.positive_texts)
        assert batch.query_ids.tolist() == [text_id(t) for t in batch.query_texts]
        if name == "a":  # 3 stored negatives, H=2 drawn per visit, all of this row's own
            assert batch.hard_negative_mask.all()
            for q, negs in zip(batch.query_texts, batch.hard_negative_texts, strict=True):
                i = q.rsplit(" ", 1)[1]
                assert len(negs) == 2 and all(n.startswith(f"title: none | text: a neg {i}.") for n in negs)
        else:
            assert not batch.hard_negative_mask.any() and batch.hard_negative_ids.shape == (6, 2)


def test_sampling_rates_respected(tmp_path: Path) -> None:
    specs = [_dataset(tmp_path, n, 4) for n in ("x", "y", "z")]
    loader = MixtureLoader(specs, {"x": 6, "y": 3, "z": 1}, 2, seed=0, num_hard_negatives=0, max_batches=3000)
    counts = Counter(b.dataset for b in loader)
    expected = {"x": 1800, "y": 900, "z": 300}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < 13.8, (counts, chi2)  # p = 0.001 for 2 degrees of freedom
    zero = MixtureLoader(specs, [1, 0, 1], 2, seed=0, num_hard_negatives=0, max_batches=200)
    assert "y" not in {b.dataset for b in zero}


def test_every_example_once_per_epoch(tmp_path: Path) -> None:
    spec = _dataset(tmp_path, "e", 103)
    stream = ExampleStream(spec, seed=3, buffer_size=10, block_bytes=300)  # many blocks, small buffer
    assert stream.num_blocks > 10
    epochs = [[ex.query for ex in stream.take(103)] for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(f"e query {i}" for i in range(103))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # Without a buffer, an epoch is the blocks in a seeded order, each read front to back.
    blocks = ExampleStream(spec, seed=3, buffer_size=1, block_bytes=300)
    order = [int(ex.query.rsplit(" ", 1)[1]) for ex in blocks.take(103)]
    runs = 1 + sum(b != a + 1 for a, b in itertools.pairwise(order))
    assert sorted(order) == list(range(103)) and order != sorted(order)
    assert 1 < runs <= blocks.num_blocks
    assert epochs[0] != sorted(epochs[0], key=lambda q: int(q.rsplit(" ", 1)[1]))  # shuffled at all
    # drop_last: a batch never spans two epochs; the epoch's tail (103 % 10 = 3) is skipped.
    loader = MixtureLoader([spec], [1], 10, seed=0, num_hard_negatives=0, max_batches=11)
    batches = [b.query_texts for b in loader]
    assert all(len(b) == 10 for b in batches)
    assert len({q for b in batches[:10] for q in b}) == 100
    short = MixtureLoader([spec], [1], 10, seed=0, num_hard_negatives=0, drop_last=False, max_batches=11)
    assert [len(b) for b in short][-1] == 3
    with pytest.raises(ValueError, match="fewer examples than batch_size"):
        MixtureLoader([spec], [1], 200, seed=0, num_hard_negatives=0)


@pytest.mark.parametrize("k", [0, 1, 7, 23])
def test_exact_resume(three, k: int) -> None:
    kw = {"seed": 11, "num_hard_negatives": 2, "buffer_size": 5, "block_bytes": 200}
    straight = MixtureLoader(three, [2, 1, 1], 6, **kw)
    expected = [_fingerprint(next(straight)) for _ in range(k + 15)]
    first = MixtureLoader(three, [2, 1, 1], 6, **kw)
    for _ in range(k):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip (and torch.save)
    resumed = MixtureLoader(three, [2, 1, 1], 6, **kw)
    resumed.load_state_dict(state)
    assert [_fingerprint(next(resumed)) for _ in range(15)] == expected[k:]
    assert resumed.batches == k + 15
    with pytest.raises(ValueError, match="batch_size: checkpoint 6 vs now 4"):
        MixtureLoader(three, [2, 1, 1], 4, **kw).load_state_dict(state)


def test_resume_respects_max_batches(three) -> None:
    loader = MixtureLoader(three, [1, 1, 1], 4, seed=0, num_hard_negatives=0, max_batches=5)
    for _ in range(3):
        next(loader)
    resumed = MixtureLoader(three, [1, 1, 1], 4, seed=0, num_hard_negatives=0, max_batches=5)
    resumed.load_state_dict(loader.state_dict())
    assert len(list(resumed)) == 2


def test_streaming_keeps_memory_bounded(tmp_path: Path) -> None:
    """A 100k-line file is streamed: never more than buffer_size examples (plus the batch being drawn)
    are alive, counted on the heap itself, and every example still comes exactly once per epoch."""
    path = tmp_path / "big"
    path.mkdir()
    line = '{"negatives": [], "positive": "document number %d", "query": "q%d", "title": null}\n'
    with (path / "examples.jsonl").open("w") as fh:
        fh.writelines(line % (i, i) for i in range(100_000))
    descriptor = {"name": "big", "task": "query", "path": "examples.jsonl", "num_examples": 100_000}
    (path / "dataset.json").write_text(json.dumps(descriptor))
    stream = ExampleStream(load_dataset(path), seed=0, buffer_size=64, block_bytes=1 << 16)
    assert stream.num_blocks > 30
    seen = 0
    for step in range(1000):  # one full epoch, 100 examples at a time
        batch = stream.take(100)
        seen += len(batch)
        assert stream.buffered <= 64
        if step % 250 == 125:
            gc.collect()  # garbage cycles left by earlier tests (tracebacks holding examples) are not alive
            live = sum(type(o) is TrainingExample for o in gc.get_objects())
            assert live <= 64 + 100, live
        del batch
    assert seen == 100_000 and stream.epoch == 1


def test_stream_errors_name_the_line_and_detect_changes(tmp_path: Path) -> None:
    spec = _dataset(tmp_path, "s", 5)
    lines = spec.path.read_text().splitlines()
    lines[3] = '{"query": "q", "positive": 5}'
    spec.path.write_text("\n".join(lines) + "\n")
    stream = ExampleStream(spec, seed=0, buffer_size=2)
    with pytest.raises(DataFormatError, match=rf"{spec.path}:4: field 'positive' must be a string"):
        stream.take(5)
    fresh = _dataset(tmp_path / "other", "t", 5)
    with fresh.path.open("a") as fh:
        fh.write('{"query": "extra", "positive": "extra"}\n')
    with pytest.raises(DataFormatError, match="says 5"):
        ExampleStream(fresh, seed=0).take(6)


def test_mixture_spec_from_yaml_and_dict(tmp_path: Path) -> None:
    a = _dataset(tmp_path, "a", 10)
    _dataset(tmp_path, "b", 10)
    (tmp_path / "mix.yaml").write_text("mixture:\n  - {dataset: a, rate: 3}\n  - {dataset: b, rate: 1}\n")
    mix = load_mixture(tmp_path / "mix.yaml")
    assert [d.name for d in mix.datasets()] == ["a", "b"] and mix.rates == [3.0, 1.0]
    loader = MixtureLoader.from_mixture(mix, 2, seed=0, num_hard_negatives=0, max_batches=4)
    assert np.allclose(loader.probs, [0.75, 0.25]) and len(list(loader)) == 4
    assert load_mixture([{"dataset": str(a.directory), "rate": 1}]).entries[0].dataset == a.directory
    with pytest.raises(ValueError, match="exactly the keys"):
        MixtureSpec.from_config([{"dataset": "a", "weight": 1}])
    with pytest.raises(ValueError, match="not all 0"):
        MixtureSpec.from_config([{"dataset": "a", "rate": 0}])
    with pytest.raises(ValueError, match="unique dataset names"):
        MixtureLoader([a, a], [1, 1], 2, seed=0, num_hard_negatives=0)
    with pytest.raises(ValueError, match="rates are given for"):
        MixtureLoader(mix.datasets(), {"a": 1}, 2, seed=0, num_hard_negatives=0)
