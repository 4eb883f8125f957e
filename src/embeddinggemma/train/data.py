"""Training examples, dataset descriptors, prompting and the batch the trainer consumes (paper section 2).

The recipe (docs/embeddinggemma.md section 5) trains on (query, positive, hard negatives) triples with
the task prompts the released model uses, every batch drawn from a single dataset. This module holds
the pieces that do not depend on how examples are sampled:

* the on-disk format: a directory with ``dataset.json`` (a :class:`DatasetSpec`: name, prompt task,
  number of examples, source, licence) beside a JSONL file of examples::

      {"query": str, "positive": str, "negatives": [str, ...], "title": str | null,
       "negative_titles": [str | null, ...] (optional), "id": str | int (optional), "meta": {...} (optional)}

  Loaders validate every line and raise :class:`DataFormatError` with ``file:line``.
* prompting (:func:`prompt_example`): queries get the task prompt; positives and negatives get the
  document prompt with their title (``title: {t} | text: ``), except for symmetric tasks (STS, bitext,
  classification, clustering) where both sides get the task prompt, as the model is used at inference.
* text identities (:func:`text_id`): a stable 63-bit hash of the *prompted* text. Equal texts give equal
  ids in every process, which is what the loss's false-negative mask (1_TN in the paper) compares, and
  what the teacher cache is keyed by.
* :class:`TrainingBatch`: one global batch, sliced per DDP rank by the trainer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from embeddinggemma.eval.data import DataFormatError
from embeddinggemma.prompts import TASK_PROMPTS, PromptTable, document_prompt

__all__ = [
    "DATASET_FILE",
    "SYMMETRIC_TASKS",
    "DataFormatError",
    "DatasetSpec",
    "PromptedExample",
    "TrainingBatch",
    "TrainingExample",
    "collate",
    "count_examples",
    "is_symmetric",
    "iter_examples",
    "load_dataset",
    "parse_example",
    "prompt_example",
    "read_examples",
    "text_id",
    "text_ids",
    "write_dataset",
]

DATASET_FILE = "dataset.json"
EXAMPLES_FILE = "examples.jsonl"
# Tasks whose two sides are the same kind of text: both get the task prompt (doc section 4).
SYMMETRIC_TASKS = frozenset(
    {"sts", "sentence_similarity", "pair_classification", "bitext", "classification", "clustering"}
)
_FIELDS = frozenset({"query", "positive", "negatives", "title", "negative_titles", "id", "meta"})
_PROMPTS = PromptTable()
_ID_MASK = (1 << 63) - 1


# ----------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class TrainingExample:
    """One (query, positive, hard negatives) triple, unprompted, as stored on disk."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    title: str | None = None
    negative_titles: tuple[str | None, ...] | None = None
    id: str | None = None
    meta: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.negatives, str) or not all(isinstance(n, str) for n in self.negatives):
            raise TypeError(f"negatives must be a sequence of strings, got {self.negatives!r:.80}")
        object.__setattr__(self, "negatives", tuple(self.negatives))
        if self.negative_titles is not None:
            titles = tuple(self.negative_titles)
            if len(titles) != len(self.negatives):
                raise ValueError(f"got {len(titles)} negative_titles for {len(self.negatives)} negatives")
            object.__setattr__(self, "negative_titles", titles)

    def to_json(self) -> dict[str, Any]:
        """The JSONL row; optional fields are written only when set, so files stay small and diffable."""
        row: dict[str, Any] = {"query": self.query, "positive": self.positive, "negatives": list(self.negatives)}
        row["title"] = self.title
        if self.negative_titles is not None and any(t is not None for t in self.negative_titles):
            row["negative_titles"] = list(self.negative_titles)
        if self.id is not None:
            row["id"] = self.id
        if self.meta:
            row["meta"] = dict(self.meta)
        return row

    def negative_title(self, i: int) -> str | None:
        return None if self.negative_titles is None else self.negative_titles[i]


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise DataFormatError(f"{where}: missing field {key!r} (fields present: {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataFormatError(f"{where}: field {key!r} is empty or whitespace")
    return value


def parse_example(row: Any, where: str) -> TrainingExample:
    """Validate one decoded JSONL row; ``where`` (``file:line``) starts every error message."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise DataFormatError(
            f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)} (put extra data under 'meta')"
        )
    negatives = row.get("negatives", [])
    if negatives is None:
        negatives = []
    if not isinstance(negatives, list):
        raise DataFormatError(f"{where}: field 'negatives' must be a list of strings, got {type(negatives).__name__}")
    for i, neg in enumerate(negatives):
        if not isinstance(neg, str) or not neg.strip():
            got = type(neg).__name__ if not isinstance(neg, str) else "an empty string"
            raise DataFormatError(f"{where}: negatives[{i}] must be a non-empty string, got {got}")
    title = row.get("title")
    if title is not None and not isinstance(title, str):
        raise DataFormatError(f"{where}: field 'title' must be a string or null, got {type(title).__name__}")
    neg_titles = row.get("negative_titles")
    if neg_titles is not None:
        if not isinstance(neg_titles, list) or len(neg_titles) != len(negatives):
            raise DataFormatError(
                f"{where}: 'negative_titles' must be a list with one entry (string or null) per negative "
                f"({len(negatives)}), got {neg_titles!r:.80}"
            )
        for i, t in enumerate(neg_titles):
            if t is not None and not isinstance(t, str):
                raise DataFormatError(f"{where}: negative_titles[{i}] must be a string or null")
    ident = row.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, str | int)):
        raise DataFormatError(f"{where}: field 'id' must be a string or an integer, got {type(ident).__name__}")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise DataFormatError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
    return TrainingExample(
        query=_text(row, "query", where),
        positive=_text(row, "positive", where),
        negatives=tuple(negatives),
        title=title or None,
        negative_titles=tuple(t or None for t in neg_titles) if neg_titles is not None else None,
        id=None if ident is None else str(ident),
        meta=meta,
    )


def decode_line(line: bytes | str, where: str) -> TrainingExample | None:
    """Parse one JSONL line (``None`` for a blank line)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{where}: invalid JSON ({exc.msg}); write one object per line") from exc
    return parse_example(row, where)


def iter_examples(path: str | Path) -> Iterator[tuple[int, TrainingExample]]:
    """``(line number, example)`` for every non-blank line, read lazily (constant memory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such examples file")
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            example = decode_line(line, f"{path}:{lineno}")
            if example is not None:
                yield lineno, example


def read_examples(path: str | Path) -> list[TrainingExample]:
    """All examples of a file in memory: for small files (mining, tests); the loader streams instead."""
    return [example for _, example in iter_examples(path)]


def count_examples(path: str | Path) -> int:
    """Number of examples, validating every line on the way."""
    return sum(1 for _ in iter_examples(path))


# ----------------------------------------------------------------------------------------- datasets


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    """A training dataset: what it is (name, prompt task) and where its examples are.

    Attributes:
        name: unique name; the mixture, the logs and the teacher-cache errors use it.
        task: prompt task of the queries, a name of :data:`embeddinggemma.prompts.TASK_PROMPTS`
            (``"query"``, ``"code_retrieval"``, ``"question_answering"``, ``"bitext"``, ``"sts"``, ...).
        path: the JSONL file (absolute once loaded; stored relative to the directory).
        num_examples: non-blank lines of ``path``; the loader checks it at every epoch end.
        symmetric: whether positives get the task prompt too; ``None`` = decided by the task
            (:data:`SYMMETRIC_TASKS`).
        split, source, license, description: documentation (package and exact version, licence).
        sha256: of ``path`` when the descriptor was written.
        stats, provenance: sizes/token counts, and how the file was made (builder, mining parameters).
    """

    name: str
    task: str
    path: Path
    num_examples: int
    symmetric: bool | None = None
    split: str = "train"
    source: str = ""
    license: str = ""
    description: str = ""
    sha256: str = ""
    stats: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a dataset needs a non-empty name")
        if self.task not in TASK_PROMPTS and self.task not in _PROMPTS:
            raise ValueError(f"dataset {self.name!r}: unknown task {self.task!r}; choose one of {sorted(TASK_PROMPTS)}")
        if self.num_examples < 0:
            raise ValueError(f"dataset {self.name!r}: num_examples must be >= 0, got {self.num_examples}")
        object.__setattr__(self, "path", Path(self.path))

    @property
    def is_symmetric(self) -> bool:
        return is_symmetric(self.task) if self.symmetric is None else bool(self.symmetric)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = self.path.name
        d["stats"], d["provenance"] = dict(self.stats), dict(self.provenance)
        return d

    def save(self) -> Path:
        """Write ``dataset.json`` beside the examples file (its path is stored relative to it)."""
        out = self.directory / DATASET_FILE
        out.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False, sort_keys=True) + "\n", "utf-8")
        return out


def load_dataset(path: str | Path) -> DatasetSpec:
    """Read a dataset descriptor: a directory holding ``dataset.json``, or the file itself."""
    path = Path(path)
    spec_path = path / DATASET_FILE if path.is_dir() else path
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{spec_path}: no dataset descriptor; build datasets with scripts/build_training_data.py or "
            "embeddinggemma.train.data.write_dataset"
        )
    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"))
        raw["path"] = spec_path.parent / raw["path"]
        spec = DatasetSpec(**raw)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise DataFormatError(f"{spec_path}: not a valid dataset descriptor ({exc})") from exc
    if not spec.path.is_file():
        raise FileNotFoundError(f"{spec_path}: its examples file {spec.path} is missing")
    return spec


def write_dataset(
    directory: str | Path,
    examples: Iterable[TrainingExample],
    *,
    name: str,
    task: str,
    symmetric: bool | None = None,
    **fields: Any,
) -> DatasetSpec:
    """Write ``examples.jsonl`` (sorted keys, one object per line: identical data, identical bytes) and
    ``dataset.json`` into ``directory``; returns the descriptor. Streams: ``examples`` may be a generator."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / EXAMPLES_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for example in examples:
            fh.write(json.dumps(example.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    tmp.replace(path)
    spec = DatasetSpec(
        name=name, task=task, path=path, num_examples=n, symmetric=symmetric, sha256=_sha256(path), **fields
    )
    spec.save()
    return spec


# ---------------------------------------------------------------------------------------- prompting


def is_symmetric(task: str) -> bool:
    """Symmetric tasks embed both sides with the task prompt; retrieval-like ones use the document prompt."""
    return task in SYMMETRIC_TASKS or task.lower().replace("-", "_").replace(" ", "_") in SYMMETRIC_TASKS


@dataclass(frozen=True)
class PromptedExample:
    """The exact strings the model encodes for one example."""

    query: str
    positive: str
    negatives: tuple[str, ...]


def prompt_example(example: TrainingExample, task: str, *, symmetric: bool | None = None) -> PromptedExample:
    """Apply the prompts of doc section 4: ``task: ... | query: `` on the query; on the positive and the
    negatives, ``title: {title} | text: `` (``title: none`` without one) or, for symmetric tasks, the
    query's task prompt (titles are then ignored)."""
    query_prompt = _PROMPTS[task]
    if is_symmetric(task) if symmetric is None else symmetric:
        return PromptedExample(
            query_prompt + example.query,
            query_prompt + example.positive,
            tuple(query_prompt + n for n in example.negatives),
        )
    return PromptedExample(
        query_prompt + example.query,
        document_prompt(example.title) + example.positive,
        tuple(document_prompt(example.negative_title(i)) + n for i, n in enumerate(example.negatives)),
    )


def text_id(text: str) -> int:
    """Stable 63-bit identity of a (prompted) text: blake2b, the same in every process and machine.

    Never 0: 0 marks padded hard-negative slots. Collisions are ~n^2 / 2^64, negligible below 1e8 texts.
    """
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") & _ID_MASK
    return value or 1


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """(N,) int64 ids of texts."""
    return torch.tensor([text_id(t) for t in texts], dtype=torch.long)


# ------------------------------------------------------------------------------------------- batches


@dataclass
class TrainingBatch:
    """One global batch, always from one dataset (the paper trains on single-dataset batches).

    Texts are prompted and ready to tokenize. ``*_ids`` are :func:`text_id` values of those texts (the
    loss masks in-batch duplicates with them); ``hard_negative_mask`` marks real negatives in the padded
    (B, H) layout. ``teacher`` holds the precomputed teacher embeddings of every text, float32
    (``queries`` (B, Dt), ``positives`` (B, Dt), ``hard_negatives`` (B, H, Dt), zeros where padded).
    """

    dataset: str
    task: str
    query_texts: list[str]
    positive_texts: list[str]
    hard_negative_texts: list[list[str]]
    query_ids: torch.Tensor
    positive_ids: torch.Tensor
    hard_negative_ids: torch.Tensor
    hard_negative_mask: torch.Tensor
    teacher: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.query_texts)

    @property
    def num_hard_negatives(self) -> int:
        """H, the padded width of the hard negatives (0 for in-batch negatives only)."""
        return self.hard_negative_ids.shape[1]

    def slice(self, start: int, stop: int) -> TrainingBatch:
        """Rows ``[start, stop)``, e.g. one DDP rank's share of the global batch."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"slice [{start}, {stop}) is outside the batch of {len(self)} rows")
        teacher = None if self.teacher is None else {k: v[start:stop] for k, v in self.teacher.items()}
        return replace(
            self,
            query_texts=self.query_texts[start:stop],
            positive_texts=self.positive_texts[start:stop],
            hard_negative_texts=self.hard_negative_texts[start:stop],
            query_ids=self.query_ids[start:stop],
            positive_ids=self.positive_ids[start:stop],
            hard_negative_ids=self.hard_negative_ids[start:stop],
            hard_negative_mask=self.hard_negative_mask[start:stop],
            teacher=teacher,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainingBatch:
        """The tensors moved to ``device`` (texts stay on the host)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            query_ids=move(self.query_ids),
            positive_ids=move(self.positive_ids),
            hard_negative_ids=move(self.hard_negative_ids),
            hard_negative_mask=move(self.hard_negative_mask),
            teacher=None if self.teacher is None else {k: move(v) for k, v in self.teacher.items()},
        )


def collate(rows: Sequence[PromptedExample], *, dataset: str, task: str, num_hard_negatives: int) -> TrainingBatch:
    """Stack prompted rows into a batch with (B, H) padded hard negatives (each row must have <= H)."""
    h = num_hard_negatives
    neg_ids = torch.zeros((len(rows), h), dtype=torch.long)
    neg_mask = torch.zeros((len(rows), h), dtype=torch.bool)
    for i, row in enumerate(rows):
        if len(row.negatives) > h:
            raise ValueError(f"row {i} has {len(row.negatives)} hard negatives, more than H={h}")
        for j, text in enumerate(row.negatives):
            neg_ids[i, j] = text_id(text)
            neg_mask[i, j] = True
    return TrainingBatch(
        dataset=dataset,
        task=task,
        query_texts=[r.query for r in rows],
        positive_texts=[r.positive for r in rows],
        hard_negative_texts=[list(r.negatives) for r in rows],
        query_ids=text_ids([r.query for r in rows]),
        positive_ids=text_ids([r.positive for r in rows]),
        hard_negative_ids=neg_ids,
        hard_negative_mask=neg_mask,
    )
