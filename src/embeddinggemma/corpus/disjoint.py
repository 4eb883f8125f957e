"""Proof that training data never touches the evaluation suite (held-out items stay held out).

The local suite (``embeddinggemma.corpus.local_suite``) splits every source 50/50 by
:func:`~embeddinggemma.corpus.suite_sources.in_suite_partition` and draws only from its half. Training
examples carry the identifiers of everything they are cut from (``meta.source_ids``: stdlib modules,
man pages, gettext messages, documented modules), and :class:`SuiteGuard` rejects an example when

1. any of its identifiers of a suite namespace is in the suite's partition (a rule that needs no built
   suite, so it also covers items a future suite build might pick), or is listed in the built suite's
   manifest (``used_source_ids``); or
2. any of its texts equals a text of the built suite up to whitespace and case (this catches what
   identifiers cannot: the same gnulib message in coreutils and tar, the same function body in two
   modules, a NAME line shared by two pages).

Builders filter with :meth:`SuiteGuard.allows`; :meth:`SuiteGuard.assert_disjoint` re-checks finished
datasets independently and raises :class:`DisjointnessError` on the first clash.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from embeddinggemma.corpus.local_suite import load_manifest, used_source_ids
from embeddinggemma.corpus.suite_sources import in_suite_partition
from embeddinggemma.train.data import DatasetSpec, TrainingExample, iter_examples

__all__ = [
    "SUITE_NAMESPACES",
    "DisjointnessError",
    "SuiteGuard",
    "assert_splits_disjoint",
    "normalize_text",
    "source_ids",
]

# Identifier prefixes the suite draws from (stdlib modules, man pages, coreutils messages); identifiers
# of other namespaces (python-doc:..., gettext:tar:...) are not subject to the partition, only to the
# text check. A message of another program also carries its coreutils identifier, see training_sources.py.
SUITE_NAMESPACES = ("cpython-stdlib:", "man-pages:", "gettext:coreutils:")


class DisjointnessError(AssertionError):
    """A training example shares a source item or a text with the evaluation suite."""


def normalize_text(text: str) -> str:
    """Whitespace-collapsed, casefolded: two texts that differ only so are the same item."""
    return " ".join(text.split()).casefold()


def source_ids(example: TrainingExample) -> list[str]:
    """The ``meta.source_ids`` of an example (empty when it has none)."""
    ids = (example.meta or {}).get("source_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"meta.source_ids must be a list of strings, got {ids!r}")
    return ids


def example_texts(example: TrainingExample) -> list[str]:
    return [example.query, example.positive, *example.negatives]


@dataclass
class SuiteGuard:
    """The suite's used identifiers and texts, and the partition rule.

    Attributes:
        used_ids: identifiers a built suite uses (its manifest's ``used_sources``).
        texts: normalised texts of every suite file (queries, documents, bitext pairs).
        rejected: counts of rejections by reason, for the build manifest.
    """

    used_ids: frozenset[str] = frozenset()
    texts: frozenset[str] = frozenset()
    rejected: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_suite(cls, suite_dir: str | Path) -> SuiteGuard:
        """Read a built suite: ``manifest.json`` (used identifiers, file list) and every JSONL text in it."""
        suite_dir = Path(suite_dir)
        manifest = load_manifest(suite_dir)
        texts: set[str] = set()
        for rel in manifest["files"]:
            if not rel.endswith(".jsonl"):
                continue
            with (suite_dir / rel).open(encoding="utf-8") as fh:
                for line in fh:
                    row = json.loads(line)
                    for key in ("text", "source", "target", "sentence1", "sentence2", "title"):
                        if isinstance(row.get(key), str) and row[key].strip():
                            texts.add(normalize_text(row[key]))
        if not texts:
            raise ValueError(f"{suite_dir}: the suite manifest lists no JSONL texts; rebuild the suite")
        return cls(used_source_ids(suite_dir), frozenset(texts))

    def id_allowed(self, source_id: str) -> bool:
        """False for an identifier in the suite's partition or used by the built suite."""
        if source_id in self.used_ids:
            return False
        return not (source_id.startswith(SUITE_NAMESPACES) and in_suite_partition(source_id))

    def reason(self, example: TrainingExample) -> str | None:
        """Why ``example`` may not be used for training, or None if it may."""
        for sid in source_ids(example):
            if not self.id_allowed(sid):
                return f"source id {sid} is in the suite partition or used by the suite"
        for text in example_texts(example):
            if normalize_text(text) in self.texts:
                return f"text {text[:80]!r} occurs in the suite"
        return None

    def allows(self, example: TrainingExample, dataset: str = "") -> bool:
        """Filter for builders: False (and counted in ``rejected``) when the example touches the suite."""
        why = self.reason(example)
        if why is None:
            return True
        self.rejected[f"{dataset}: {'id' if why.startswith('source id') else 'text'}"] += 1
        return False

    def assert_disjoint(self, datasets: Iterable[DatasetSpec]) -> dict[str, int]:
        """Re-read finished datasets and raise :class:`DisjointnessError` at the first clash.

        Every example must carry source identifiers (an example without them could not be checked).
        Returns examples checked per dataset.
        """
        checked: dict[str, int] = {}
        for spec in datasets:
            n = 0
            for lineno, example in iter_examples(spec.path):
                where = f"{spec.path}:{lineno}"
                if not source_ids(example):
                    raise DisjointnessError(f"{where}: no meta.source_ids, so disjointness cannot be checked")
                why = self.reason(example)
                if why is not None:
                    raise DisjointnessError(f"{where} (dataset {spec.name!r}): {why}")
                n += 1
            checked[f"{spec.name}/{spec.split}"] = n
        return checked


def assert_splits_disjoint(train: Iterable[DatasetSpec], dev: Iterable[DatasetSpec]) -> int:
    """Raise :class:`DisjointnessError` if a dev query or positive is also a query or positive of any
    training dataset (a dev split must measure generalisation, not memory). Returns dev examples checked."""
    seen: dict[str, str] = {}
    for spec in train:
        for _, example in iter_examples(spec.path):
            for text in (example.query, example.positive):
                seen.setdefault(normalize_text(text), spec.name)
    n = 0
    for spec in dev:
        for lineno, example in iter_examples(spec.path):
            for text in (example.query, example.positive):
                if normalize_text(text) in seen:
                    raise DisjointnessError(
                        f"{spec.path}:{lineno}: dev text {text[:80]!r} is also in training dataset "
                        f"{seen[normalize_text(text)]!r}"
                    )
            n += 1
    return n
