"""Hard-negative mining (embeddinggemma.train.mining) with hand-made embeddings: which candidates survive
the exclusions, the rank window and the margin."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma.train.data import TrainingExample, load_dataset, read_examples, write_dataset
from embeddinggemma.train.loader import MixtureLoader
from embeddinggemma.train.mining import CorpusDocument, MiningConfig, mine_dataset, mine_hard_negatives
from embeddinggemma.train.teacher import TeacherCache, build_teacher_cache


class TableEmbedder:
    """Embeds a prompted text by looking up the text after its prompt in a table of 2-d vectors.
    ``score`` s gives the unit vector (s, sqrt(1 - s^2)): its cosine with the query (1, 0) is exactly s."""

    embedding_dim = 2

    def __init__(self, scores: dict[str, float]) -> None:
        self.table = {t: np.array([s, math.sqrt(1 - s * s)], np.float32) for t, s in scores.items()}
        self.calls: list[list[str]] = []

    def encode(self, texts, *, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t.rsplit(": ", 1)[1]] for t in texts])


# Query q scores 1.0 with itself; the positive P scores 0.8; "  p " is P up to case and whitespace.
SCORES = {"q": 1.0, "P": 0.8, "  p ": 0.95, "A": 0.9, "B": 0.85, "C": 0.79, "D": 0.7, "E": 0.6, "F": 0.5, "G": 0.4}
CORPUS = [CorpusDocument(t, title=f"title {t}") for t in ("P", "  p ", "A", "B", "C", "D", "E", "F", "G")]


def _mine(**kwargs):
    examples = [TrainingExample("q", "P", title="title P")]
    mined, stats = mine_hard_negatives(TableEmbedder(SCORES), examples, CORPUS, task="query", **kwargs)
    return mined[0], stats


def test_rank_window_excludes_positive_and_duplicates() -> None:
    # Without P and "  p ", the ranking is A B C D E F G (ranks 0..6).
    ex, stats = _mine(rank_range=(1, 5), margin=None, num_negatives=3)
    assert ex.negatives == ("B", "C", "D")
    assert ex.negative_titles == ("title B", "title C", "title D")
    assert stats.mean_positive_score == pytest.approx(0.8)
    assert _mine(rank_range=(0, 2), margin=None, num_negatives=5)[0].negatives == ("A", "B")
    assert _mine(rank_range=(5, 100), margin=None, num_negatives=5)[0].negatives == ("F", "G")


def test_margin_drops_candidates_close_to_the_positive() -> None:
    # Kept iff score < 0.8 - 0.05 = 0.75: B (0.85) and C (0.79) go, D and E stay.
    ex, stats = _mine(rank_range=(1, 5), margin=0.05, num_negatives=3)
    assert ex.negatives == ("D", "E") and stats.rejected_by_margin == 2
    assert stats.mean_negative_score == pytest.approx(0.65)
    # margin 0: strictly below the positive.
    assert _mine(rank_range=(0, 3), margin=0.0, num_negatives=3)[0].negatives == ("C",)
    assert _mine(rank_range=(0, 4), margin=0.02, num_negatives=3)[0].negatives == ("D",)  # 0.79 >= 0.78: out
    none, stats = _mine(rank_range=(0, 2), margin=0.5, num_negatives=3)
    assert none.negatives == () and stats.rows_without_negatives == 1


def test_same_query_positives_and_symmetric_query_are_excluded() -> None:
    examples = [TrainingExample("q", "P"), TrainingExample("q", "A")]  # two answers to one query
    mined, _ = mine_hard_negatives(
        TableEmbedder(SCORES), examples, [d.text for d in CORPUS], task="query", rank_range=(0, 3), margin=None
    )
    assert [m.negatives for m in mined] == [("B", "C", "D"), ("B", "C", "D")]  # neither answer is a negative
    assert mined[0].negative_titles == (None, None, None)
    sym, _ = mine_hard_negatives(
        TableEmbedder(SCORES), [TrainingExample("B", "P")], ["B", "A", "C"], task="sts", rank_range=(0, 5), margin=None
    )
    assert sym[0].negatives == ("A", "C")  # the query's own text is never its negative


def test_random_sampling_is_seeded_and_stays_in_the_window() -> None:
    kw = {"rank_range": (0, 7), "margin": None, "num_negatives": 3, "sampling": "random"}
    first = _mine(seed=1, **kw)[0].negatives
    assert first == _mine(seed=1, **kw)[0].negatives and len(first) == 3
    assert set(first) <= set("ABCDEFG")
    assert {_mine(seed=s, **kw)[0].negatives for s in range(8)} != {first}


def test_default_corpus_is_the_positives(tmp_path: Path) -> None:
    scores = {f"d{i}": 0.9 - 0.1 * i for i in range(6)} | {"x": 1.0}
    examples = [TrainingExample("x", f"d{i}") for i in range(6)]
    mined, stats = mine_hard_negatives(TableEmbedder(scores), examples, task="query", rank_range=(0, 2), margin=None)
    assert stats.corpus == 6
    # Every row shares the query "x", so every positive is excluded for every row: nothing is left.
    assert all(m.negatives == () for m in mined)
    examples = [TrainingExample(f"q{i}", f"d{i}") for i in range(6)]
    table = TableEmbedder({**scores, **{f"q{i}": 1.0 for i in range(6)}})
    mined, _ = mine_hard_negatives(table, examples, task="query", rank_range=(0, 2), margin=None)
    assert mined[0].negatives == ("d1", "d2") and mined[3].negatives == ("d0", "d1")


def test_mine_dataset_writes_provenance_and_reuses_a_cache(tmp_path: Path) -> None:
    examples = [TrainingExample("q", "P", title="title P"), TrainingExample("q2", "A")]
    spec = write_dataset(tmp_path / "src", examples, name="toy", task="query")
    table = TableEmbedder({**SCORES, "q2": 1.0})
    report = build_teacher_cache(table, [spec], tmp_path / "cache", teacher="table")
    assert report.embedded == 4  # q, P (titled), q2, A

    class Refuses(TableEmbedder):
        def encode(self, texts, **kwargs):
            raise AssertionError(f"should have come from the cache: {texts}")

    mined = mine_dataset(
        Refuses({}), spec, tmp_path / "mined", cache=TeacherCache(tmp_path / "cache"), model_name="table",
        rank_range=(0, 5), margin=None, num_negatives=2,
    )  # fmt: skip
    assert mined.name == "toy" and mined.task == "query" and mined.num_examples == 2
    assert mined.provenance["mined_from"]["sha256"] == spec.sha256
    assert mined.provenance["mining"]["model"] == "table"
    assert (
        mined.provenance["mining"]["stats"]["cached_texts"] == 6
        and mined.provenance["mining"]["stats"]["encoded_texts"] == 0
    )
    rows = read_examples(load_dataset(tmp_path / "mined").path)
    assert rows[0].negatives == ("A",) and rows[1].negatives == ("P",)
    assert rows[1].negative_titles == ("title P",)  # the title travels with the document
    batch = next(MixtureLoader([mined], [1], 2, seed=0, num_hard_negatives=1))
    assert batch.hard_negative_mask.all()
    # The mined negative of row 1 is row 0's positive, prompted identically: same text id, so the loss
    # can mask it (hard_negative_ids == positive_ids).
    by_query = {q: i for i, q in enumerate(batch.query_texts)}
    i0, i1 = by_query["task: search result | query: q"], by_query["task: search result | query: q2"]
    assert batch.hard_negative_ids[i1, 0] == batch.positive_ids[i0]


def test_mining_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="rank_range"):
        MiningConfig(rank_range=(5, 5))
    with pytest.raises(ValueError, match="num_negatives"):
        MiningConfig(num_negatives=0)
    with pytest.raises(ValueError, match="task= is required"):
        mine_hard_negatives(TableEmbedder(SCORES), [TrainingExample("q", "P")])
    with pytest.raises(ValueError, match="either config="):
        mine_hard_negatives(
            TableEmbedder(SCORES), [TrainingExample("q", "P")], task="query", config=MiningConfig(), seed=1
        )
