"""Indexing end to end on a real SQLite file with the tiny model: incremental runs, deletions, refusals,
Ctrl-C, and the searches (dense exact and approximate, BM25, hybrid)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from embeddinggemma.index import IndexMismatchError, IndexOptions, Searcher, index_folder, reciprocal_rank_fusion
from embeddinggemma.index import indexer as indexer_module
from embeddinggemma.index.store import IndexStore, fts_query

from .conftest import WORDS


def _index(folder, db, embedder, **options):
    rebuild = options.pop("rebuild", False)
    return index_folder(
        folder, db, embedder, model="tiny", options=IndexOptions(**options), rebuild=rebuild, show_progress=False
    )


def _consistent(db) -> dict[str, int]:
    """Row counts that must agree whatever happened to the run that wrote them."""
    con = sqlite3.connect(db)
    counts = {
        name: con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
        for name in ("files", "chunks", "vectors", "chunks_fts")
    }
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')") is not None
    (file_chunks,) = con.execute("SELECT COALESCE(SUM(chunks), 0) FROM files").fetchone()
    con.close()
    assert counts["chunks"] == counts["vectors"] == file_chunks
    return counts


def test_index_then_search_all_modes(sample_folder, tmp_path, tiny_embedder):
    db = tmp_path / "index.db"
    report = _index(sample_folder, db, tiny_embedder)
    assert report.embedded_files == 4 and report.files == 5  # README is binary content
    assert report.skipped.reasons == {"unsupported type (.bin)": 1, "binary or not UTF-8": 1}
    assert report.tokens > 0 and report.totals["files"] == 4
    counts = _consistent(db)
    with Searcher(db, tiny_embedder) as searcher:
        assert len(searcher.store.all_vectors(40)[0]) == counts["chunks"]
        dense = searcher.search("the red planet", k=3, mode="dense")
        ids, vectors = searcher.store.all_vectors(40)
        query = tiny_embedder.encode_query("the red planet")
        rows = searcher.store.chunks(ids.tolist())
        best = rows[int(ids[np.argmax(vectors @ query)])]
        assert (dense[0].path, dense[0].title) == (best.path, best.title)
        assert dense[0].score == pytest.approx(float(np.max(vectors @ query)), abs=1e-5)
        bm25 = searcher.search("close the file", k=2, mode="bm25")
        assert bm25[0].path == "files.rst" and bm25[0].line == 9 and "close the file" in bm25[0].snippet
        hybrid = searcher.search("close the file", k=3, mode="hybrid")
        assert [r.score for r in hybrid] == sorted((r.score for r in hybrid), reverse=True)
        assert searcher.search("zzzz qqqq", k=3, mode="bm25") == []
        with pytest.raises(ValueError, match="mode must be one of"):
            searcher.search("x", mode="fuzzy")
    with Searcher(db) as bm25_only:  # no model loaded: BM25 still works, dense says what it needs
        assert bm25_only.search("close the file", k=1, mode="bm25")[0].path == "files.rst"
        with pytest.raises(ValueError, match="need the model"):
            bm25_only.search("close the file", mode="dense")


def test_second_run_embeds_only_changes(sample_folder, tmp_path, tiny_embedder):
    db = tmp_path / "index.db"
    _index(sample_folder, db, tiny_embedder)
    again = _index(sample_folder, db, tiny_embedder)
    assert (again.embedded_files, again.unchanged_files, again.deleted_files, again.chunks) == (0, 4, 0, 0)
    (sample_folder / "notes.txt").write_text("the slow error\n", encoding="utf-8")
    (sample_folder / "sub" / "code.py").unlink()
    (sample_folder / "new.md").write_text("# Mars\n\nthe red planet\n", encoding="utf-8")
    (sample_folder / ".gitignore").write_text("build/\n*.log\n*.rst\n", encoding="utf-8")  # now ignored: removed
    third = _index(sample_folder, db, tiny_embedder)
    assert (third.embedded_files, third.unchanged_files, third.deleted_files) == (2, 1, 2)
    _consistent(db)
    with Searcher(db, tiny_embedder) as searcher:
        paths = {r.path for r in searcher.search("the red planet error", k=20, mode="hybrid")}
        assert paths == {"new.md", "notes.txt", "planets.md"}
        assert searcher.search("slow error", k=1, mode="bm25")[0].snippet == "the slow error"


def test_refuses_other_settings_and_says_how_to_rebuild(sample_folder, tmp_path, tiny_embedder):
    db = tmp_path / "index.db"
    _index(sample_folder, db, tiny_embedder, dim=32)
    assert _index(sample_folder, db, tiny_embedder).unchanged_files == 4  # no --dim: the index's own is kept
    for options, what in [
        ({"dim": 16}, "dim 32"),
        ({"titles": False}, "titles True"),
        ({"chunk_tokens": 64}, "chunk_tokens"),
    ]:
        with pytest.raises(IndexMismatchError, match=f"{what}.*--rebuild"):
            _index(sample_folder, db, tiny_embedder, **options)
    rebuilt = _index(sample_folder, db, tiny_embedder, dim=16, rebuild=True)
    assert rebuilt.embedded_files == 4 and IndexStore(db).meta()["dim"] == 16
    with Searcher(db, tiny_embedder) as searcher:  # a full-width query vector is cut to the index's 16 dims
        full = tiny_embedder.encode_query("the red planet")
        assert searcher.search("the red planet", vector=full) == searcher.search("the red planet")


def test_refuses_another_model(sample_folder, tmp_path, tiny_embedder, tiny_hf_dir):
    import torch

    db = tmp_path / "index.db"
    _index(sample_folder, db, tiny_embedder)
    other = type(tiny_embedder)(tiny_embedder.model, tiny_embedder.tokenizer, tiny_embedder.prompts)
    original = {k: v.clone() for k, v in other.model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in other.model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        with pytest.raises(IndexMismatchError, match=r"model tiny .*embeds differently"):
            _index(sample_folder, db, other)
        with pytest.raises(IndexMismatchError, match="search with --model tiny"):
            Searcher(db, other)
    finally:
        tiny_embedder.model.load_state_dict(original)


class _InterruptingEmbedder:
    """The tiny embedder, but Ctrl-C arrives during its ``fail_at``-th document batch."""

    def __init__(self, embedder, fail_at: int) -> None:
        self._embedder, self.fail_at, self.calls = embedder, fail_at, 0

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def encode_document(self, texts, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self._embedder.encode_document(texts, **kwargs)


def test_ctrl_c_keeps_a_consistent_index_and_the_next_run_resumes(tmp_path, tiny_embedder, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(9):
        (folder / f"f{i}.txt").write_text(f"the red planet {i}\nmars is known\n", encoding="utf-8")
    monkeypatch.setattr(indexer_module, "COMMIT_EVERY_CHUNKS", 2)
    db = tmp_path / "index.db"
    with pytest.raises(KeyboardInterrupt):
        _index(folder, db, _InterruptingEmbedder(tiny_embedder, fail_at=4))  # call 1 is the model's fingerprint
    counts = _consistent(db)
    assert counts["files"] == 4  # two committed batches of two files
    resumed = _index(folder, db, tiny_embedder)
    assert (resumed.unchanged_files, resumed.embedded_files) == (4, 5)
    assert _consistent(db)["files"] == 9


def test_approximate_dense_methods_rescore_to_the_exact_answer(tmp_path, tiny_embedder):
    folder = tmp_path / "docs"
    folder.mkdir()
    words = [*WORDS, "code", "python", "function"]
    rng = np.random.default_rng(0)
    for i in range(40):
        (folder / f"d{i}.txt").write_text(" ".join(rng.choice(words, 12)) + "\n", encoding="utf-8")
    db = tmp_path / "index.db"
    report = _index(folder, db, tiny_embedder, dense=("binary", "int8", "hnsw"))
    assert set(report.derived_seconds) == {"binary", "int8", "hnsw"}
    with Searcher(db, tiny_embedder, dense="exact") as exact:
        expected = [(r.path, r.score) for r in exact.search("red planet code", k=5)]
    for method in ("binary", "int8", "hnsw", "auto"):
        # rescoring everything (rescore x k >= corpus) must give the exact ranking and scores
        with Searcher(db, tiny_embedder, dense=method, rescore=8) as searcher:
            got = [(r.path, r.score) for r in searcher.search("red planet code", k=5)]
        assert [p for p, _ in got] == [p for p, _ in expected], method
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
    (folder / "d0.txt").write_text("python function\n", encoding="utf-8")
    _index(folder, db, tiny_embedder)  # derived structures follow the vectors
    with Searcher(db, tiny_embedder, dense="hnsw") as searcher:
        assert searcher.search("python function", k=1)[0].path == "d0.txt"


def test_fusion_and_fts_query():
    assert reciprocal_rank_fusion([[1, 2, 3], [3, 1]]) == [
        (1, pytest.approx(1 / 61 + 1 / 62)),
        (3, pytest.approx(1 / 63 + 1 / 61)),
        (2, pytest.approx(1 / 62)),
    ]
    assert fts_query('parse "args" OR NOT x*') == '"parse" OR "args" OR "or" OR "not" OR "x"'
    assert fts_query("?!") is None


def test_index_inside_the_folder_and_empty_folders(tmp_path, tiny_embedder):
    folder = tmp_path / "notes"
    folder.mkdir()
    db = folder / "notes.db"  # the index lives in the folder it indexes: never indexed itself
    assert _index(folder, db, tiny_embedder).totals == {"files": 0, "chunks": 0, "tokens": 0}
    with Searcher(db, tiny_embedder) as searcher:
        assert searcher.search("the red planet", mode="hybrid") == []
    (folder / "a.md").write_text("# Mars\n\nthe red planet\n", encoding="utf-8")
    report = _index(folder, db, tiny_embedder)
    assert report.embedded_files == 1 and not report.skipped.reasons
    with Searcher(db, tiny_embedder) as searcher:
        assert [r.path for r in searcher.search("the red planet")] == ["a.md"]
