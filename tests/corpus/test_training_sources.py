"""Training data stays disjoint from the evaluation suite (embeddinggemma.corpus.disjoint, .training_sources), on small
fixtures: a fake built suite, fake .deb packages and a fake gettext catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import fake_deb, fake_mo

from embeddinggemma.corpus.disjoint import DisjointnessError, SuiteGuard, assert_splits_disjoint
from embeddinggemma.corpus.pydoc import parse_rst
from embeddinggemma.corpus.suite_sources import in_suite_partition, msgid_source_id
from embeddinggemma.corpus.training_sources import bitext_candidates, code_candidates, cut_words
from embeddinggemma.train.data import TrainingExample, write_dataset

# Partition membership is a pure function of the identifier (checked here, so the fixtures cannot drift).
IN_SUITE, OUTSIDE = "alpha", "beta"
assert in_suite_partition(f"cpython-stdlib:{IN_SUITE}") and not in_suite_partition(f"cpython-stdlib:{OUTSIDE}")


def _message(in_coreutils_partition: bool, in_tar_partition: bool) -> str:
    return next(
        m
        for m in (f"could not read the archive member number {i} today" for i in range(500))
        if in_suite_partition(msgid_source_id("coreutils", m)) == in_coreutils_partition
        and in_suite_partition(msgid_source_id("tar", m)) == in_tar_partition
    )


def _fake_suite(root: Path) -> Path:
    (root / "task").mkdir(parents=True)
    (root / "task" / "corpus.jsonl").write_text(
        json.dumps({"_id": "d", "text": "Return the sum of two numbers."}) + "\n"
    )
    (root / "task" / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "add two numbers"}) + "\n")
    manifest = {
        "used_sources": {"task": ["python-doc:faq/x#used"]},
        "files": {"task/corpus.jsonl": "-", "task/queries.jsonl": "-"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _ex(query: str, positive: str, *ids: str, negatives: tuple[str, ...] = ()) -> TrainingExample:
    return TrainingExample(query, positive, negatives, meta={"source_ids": list(ids)})


def test_guard_rejects_suite_ids_and_suite_texts(tmp_path: Path) -> None:
    guard = SuiteGuard.from_suite(_fake_suite(tmp_path / "suite"))
    ok = _ex("multiply", "def mul(a, b): return a * b", f"cpython-stdlib:{OUTSIDE}")
    assert guard.allows(ok, "code")
    assert not guard.allows(_ex("q", "def f(): pass", f"cpython-stdlib:{IN_SUITE}"), "code")  # partition
    assert not guard.allows(_ex("q", "p", "python-doc:faq/x#used"), "docs")  # listed by the built suite
    assert not guard.allows(_ex("q", "  return the SUM of two\nnumbers. ", f"cpython-stdlib:{OUTSIDE}"), "code")
    assert not guard.allows(_ex("q", "p", f"cpython-stdlib:{OUTSIDE}", negatives=("Add two numbers",)), "code")
    # A tar message is judged by its coreutils identifier (the suite's domain), not by its own.
    shared = _message(in_coreutils_partition=True, in_tar_partition=False)
    own_only = _message(in_coreutils_partition=False, in_tar_partition=True)
    for msg, allowed in ((shared, False), (own_only, True)):
        ids = (msgid_source_id("tar", msg), msgid_source_id("coreutils", msg))
        assert guard.allows(_ex("übersetzt", msg, *ids), "bitext") is allowed
    assert guard.rejected == {"code: id": 1, "docs: id": 1, "code: text": 2, "bitext: id": 1}


def test_assert_disjoint_rereads_finished_files(tmp_path: Path) -> None:
    guard = SuiteGuard.from_suite(_fake_suite(tmp_path / "suite"))
    clean = write_dataset(tmp_path / "clean", [_ex("q", "p", f"cpython-stdlib:{OUTSIDE}")] * 3, name="c", task="query")
    assert guard.assert_disjoint([clean]) == {"c/train": 3}
    rows = [_ex("q", "p", f"cpython-stdlib:{OUTSIDE}"), _ex("add two numbers", "p", f"cpython-stdlib:{OUTSIDE}")]
    leaky = write_dataset(tmp_path / "leaky", rows, name="l", task="query")
    with pytest.raises(DisjointnessError, match=rf"{leaky.path}:2 .*'add two numbers' occurs in the suite"):
        guard.assert_disjoint([clean, leaky])
    anonymous = write_dataset(tmp_path / "anon", [TrainingExample("q", "p")], name="a", task="query")
    with pytest.raises(DisjointnessError, match=r"no meta\.source_ids"):
        guard.assert_disjoint([anonymous])


def test_dev_split_disjoint_from_train(tmp_path: Path) -> None:
    train = write_dataset(tmp_path / "train", [_ex("q1", "doc one", "x:1")], name="d", task="query")
    dev = write_dataset(tmp_path / "dev", [_ex("q2", "doc two", "x:2")], name="d", task="query", split="dev")
    assert assert_splits_disjoint([train], [dev]) == 1
    bad = write_dataset(tmp_path / "bad", [_ex("q3", "DOC  one", "x:3")], name="d", task="query", split="dev")
    with pytest.raises(DisjointnessError, match="also in training dataset 'd'"):
        assert_splits_disjoint([train], [dev, bad])


MODULE = '''
def documented(values, key=None):
    """Sort the values by key and drop duplicates.

    More details here."""
    seen = set()
    out = []
    for v in sorted(values, key=key):
        if v not in seen:
            out.append(v)
    return out


def short():
    """A function too short to tell apart."""
    return 1
'''


def test_code_candidates_keep_only_modules_outside_the_suite(tmp_path: Path) -> None:
    lib = "usr/lib/python3.11/"
    files = {f"{lib}{IN_SUITE}.py": MODULE.encode(), f"{lib}{OUTSIDE}.py": MODULE.replace("values", "items").encode()}
    debs = {
        "libpython3.11-minimal": fake_deb(tmp_path / "a.deb", files),
        "libpython3.11-stdlib": fake_deb(tmp_path / "b.deb", {}),
    }
    cands = code_candidates(debs)
    assert [c.group for c in cands] == [f"cpython-stdlib:{IN_SUITE}", f"cpython-stdlib:{OUTSIDE}"]
    assert cands[0].example.query == "Sort the values by key and drop duplicates."
    assert '"""' not in cands[0].example.positive and cands[0].example.positive.startswith("def documented(values")
    guard = SuiteGuard.from_suite(_fake_suite(tmp_path / "suite"))
    assert [c.example.meta["source_ids"] for c in cands if guard.allows(c.example)] == [[f"cpython-stdlib:{OUTSIDE}"]]


def test_bitext_candidates_carry_the_coreutils_identifier(tmp_path: Path) -> None:
    shared = _message(in_coreutils_partition=True, in_tar_partition=False)
    own = _message(in_coreutils_partition=False, in_tar_partition=True)
    catalogue = fake_mo(
        {shared: "übersetzung eins der nachricht", own: "übersetzung zwei der nachricht", "%s: %s": "%s: %s"}
    )
    debs = {"tar": fake_deb(tmp_path / "tar.deb", {"usr/share/locale/de/LC_MESSAGES/tar.mo": catalogue})}
    debs |= {d: fake_deb(tmp_path / f"{d}.deb", {}) for d in ("grep", "sed", "findutils", "diffutils")}
    cands = bitext_candidates(debs)
    assert {c.example.positive for c in cands} == {shared, own}  # "%s: %s" is not mineable
    by_positive = {c.example.positive: c.example for c in cands}
    assert by_positive[own].query == "übersetzung zwei der nachricht" and by_positive[own].meta["lang"] == "de"
    assert by_positive[shared].meta["source_ids"] == [
        msgid_source_id("tar", shared),
        msgid_source_id("coreutils", shared),
    ]
    guard = SuiteGuard.from_suite(_fake_suite(tmp_path / "suite"))
    assert [c.example.positive for c in cands if guard.allows(c.example)] == [own]


def test_rst_is_parsed_by_docutils_with_sphinx_markup_as_text(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    page = parse_rst(
        f"""=======================
 The Title (overlined)
=======================

Intro |name| text [#]_.

.. |name| replace:: substituted

.. [#] a footnote

Lists
=====

#. first
#. second

* a bullet

term
   its definition

>>> 1 + 1
2

.. note::
   A note under the directive line.

.. versionchanged:: 3.9
   :class:`dict` supports ``[]``.

.. c:function:: int f(int *a, \\
                      int b)
                PyObject* g(void)

   Does *things*.

.. include:: {secret}

.. raw:: html
   :file: {secret}

+------+-------+
| a    | b     |
+======+=======+
| 1    | 2     |
+------+-------+
"""
    )
    assert page.title == "The Title (overlined)"
    assert page.sections[0][1] == "Intro substituted text."
    assert page.sections[1] == (
        "Lists",
        "1. first\n2. second\n* a bullet\nterm its definition\n>>> 1 + 1\n2\nA note under the directive line.\n"
        "dict supports [].\nint f(int *a, int b)\nPyObject* g(void)\nDoes things.\na | b\n1 | 2",
    )
    assert "do not read me" not in str(page)


def test_rst_sections_and_cut_words() -> None:
    page = parse_rst(
        """:mod:`spam` --- Eggs
====================

.. module:: spam
   :synopsis: nothing

.. index:: single: spam

How do I fry :func:`~spam.eggs`?
--------------------------------

Use ``eggs()`` with *care*, see `the docs <https://example.org>`_. For example::

    eggs(
        2)

.. function:: eggs(n)

   Fry *n* eggs.
"""
    )
    assert page.title == "spam --- Eggs" and page.modules == ("spam",)
    assert page.sections[1][0] == "How do I fry spam.eggs?"
    assert (
        page.sections[1][1] == "Use eggs() with care, see the docs. For example:\neggs(\n    2)\neggs(n)\nFry n eggs."
    )
    assert cut_words("One two three. Four five six. Seven", 6) == "One two three. Four five six."
    assert cut_words("short text", 7) == "short text"
    assert cut_words("a b c d e f g h i j", 4) == "a b c d"
