"""On-disk formats for evaluation data, and the task description that points at them.

The formats are BEIR's, so existing retrieval datasets drop in unchanged:

* ``corpus.jsonl``: ``{"_id": str, "title": str (optional), "text": str}`` per line
* ``queries.jsonl``: ``{"_id": str, "text": str, "subset": str (optional)}`` per line;
  ``subset`` (e.g. a language) only adds a per-subset breakdown of the scores
* qrels, either ``qrels.jsonl`` with ``{"query-id", "corpus-id", "score": int}`` per line,
  or BEIR's ``qrels/test.tsv`` with the header ``query-id<TAB>corpus-id<TAB>score``
* STS: ``{"sentence1": str, "sentence2": str, "score": float}`` per line
* bitext: ``{"source": str, "target": str, "subset": str (optional)}`` per line; mining
  happens within each subset (e.g. one language pair)

Every loader validates as it reads and raises :class:`DataFormatError` with ``file:line``
so a broken file is fixed at the line that broke it, not discovered as a silent 0 score.
A task directory holds these files plus ``task.json`` (a serialised :class:`TaskSpec`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BitextPair",
    "DataFormatError",
    "Document",
    "Query",
    "STSPair",
    "TaskSpec",
    "load_bitext",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "load_sts",
    "load_task",
    "write_jsonl",
]

TaskKind = Literal["retrieval", "sts", "bitext"]
TASK_FILE = "task.json"
_KINDS = ("retrieval", "sts", "bitext")
_MAIN_METRIC = {"retrieval": "ndcg_at_10", "sts": "cosine_spearman", "bitext": "f1"}
_DEFAULT_QUERY_TASK = {"retrieval": "query", "sts": "sts", "bitext": "bitext"}
_REQUIRED_FILES = {"retrieval": ("corpus", "queries", "qrels"), "sts": ("pairs",), "bitext": ("pairs",)}


class DataFormatError(ValueError):
    """A data file does not follow its documented format; the message starts with file:line."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str | None = None


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    subset: str | None = None


@dataclass(frozen=True)
class STSPair:
    sentence1: str
    sentence2: str
    score: float


@dataclass(frozen=True)
class BitextPair:
    source: str
    target: str
    subset: str | None = None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{lineno}: invalid JSON ({exc.msg}); write one object per line") from exc
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _str_field(row: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    if key not in row or row[key] is None:
        if optional:
            return None
        raise DataFormatError(f"{where}: missing field {key!r} (fields present: {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not optional and not value.strip():
        raise DataFormatError(f"{where}: field {key!r} is empty")
    return value


def _id_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    # BEIR files sometimes carry integer ids; they are ids, not numbers, so keep them as text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str_field(row, key, where)  # type: ignore[return-value]


def load_corpus(path: str | Path) -> list[Document]:
    """Read ``corpus.jsonl``; an empty title becomes ``None`` (the document prompt then says "none")."""
    path = Path(path)
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for lineno, row in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = _id_field(row, "_id", where)
        if doc_id in seen:
            raise DataFormatError(f"{where}: duplicate _id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        title = _str_field(row, "title", where, optional=True)
        docs.append(Document(doc_id, _str_field(row, "text", where), title or None))  # type: ignore[arg-type]
    if not docs:
        raise DataFormatError(f"{path}: the corpus is empty")
    return docs


def load_queries(path: str | Path) -> list[Query]:
    """Read ``queries.jsonl``."""
    path = Path(path)
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for lineno, row in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        qid = _id_field(row, "_id", where)
        if qid in seen:
            raise DataFormatError(f"{where}: duplicate _id {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        text = _str_field(row, "text", where)
        queries.append(Query(qid, text, _str_field(row, "subset", where, optional=True)))  # type: ignore[arg-type]
    if not queries:
        raise DataFormatError(f"{path}: no queries")
    return queries


def _grade(value: Any, where: str) -> int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataFormatError(f"{where}: score {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataFormatError(f"{where}: score must be an integer grade, got {value!r}")
    if value != int(value):
        raise DataFormatError(f"{where}: score {value!r} is not an integer grade (use 0, 1, 2, ...)")
    return int(value)


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read qrels from ``.jsonl`` or BEIR's ``.tsv`` (chosen by suffix).

    Returns query id -> {corpus id: grade}. A repeated (query, document) pair is an error:
    two grades for one judgement means the file was concatenated by mistake.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first: dict[tuple[str, str], int] = {}

    def add(qid: str, did: str, grade: int, lineno: int) -> None:
        where = f"{path}:{lineno}"
        if (qid, did) in first:
            raise DataFormatError(
                f"{where}: duplicate judgement for ({qid!r}, {did!r}) (first on line {first[qid, did]})"
            )
        first[qid, did] = lineno
        qrels.setdefault(qid, {})[did] = grade

    if path.suffix == ".tsv":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such qrels file")
        with path.open(encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
            if header != ["query-id", "corpus-id", "score"]:
                raise DataFormatError(f"{path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score', got {header}")
            for lineno, line in enumerate(fh, start=2):
                if not line.strip():
                    continue
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 3 or not parts[0] or not parts[1]:
                    raise DataFormatError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(parts)}")
                add(parts[0], parts[1], _grade(parts[2], f"{path}:{lineno}"), lineno)
    else:
        for lineno, row in _iter_jsonl(path):
            where = f"{path}:{lineno}"
            if "score" not in row:
                raise DataFormatError(f"{where}: missing field 'score'")
            add(
                _id_field(row, "query-id", where),
                _id_field(row, "corpus-id", where),
                _grade(row["score"], where),
                lineno,
            )
    if not qrels:
        raise DataFormatError(f"{path}: no judgements")
    return qrels


def load_sts(path: str | Path) -> list[STSPair]:
    """Read STS pairs; scores are floats on any scale (only their order matters to Spearman)."""
    path = Path(path)
    pairs: list[STSPair] = []
    for lineno, row in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        score = row.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise DataFormatError(f"{where}: 'score' must be a finite number, got {score!r}")
        pairs.append(STSPair(_str_field(row, "sentence1", where), _str_field(row, "sentence2", where), float(score)))  # type: ignore[arg-type]
    if len(pairs) < 2:
        raise DataFormatError(f"{path}: need at least 2 pairs for a correlation, found {len(pairs)}")
    return pairs


def load_bitext(path: str | Path) -> list[BitextPair]:
    """Read bitext pairs. Within a subset, targets must be unique: a repeated target makes
    the gold answer ambiguous (mining either copy would be right)."""
    path = Path(path)
    pairs: list[BitextPair] = []
    seen: dict[tuple[str | None, str], int] = {}
    for lineno, row in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        src = _str_field(row, "source", where)
        tgt = _str_field(row, "target", where)
        subset = _str_field(row, "subset", where, optional=True)
        key = (subset, tgt)  # type: ignore[assignment]
        if key in seen:
            raise DataFormatError(
                f"{where}: target repeated within subset {subset!r} (first on line {seen[key]}); dedupe the targets"
            )
        seen[key] = lineno  # type: ignore[index]
        pairs.append(BitextPair(src, tgt, subset))  # type: ignore[arg-type]
    if not pairs:
        raise DataFormatError(f"{path}: no pairs")
    return pairs


def write_jsonl(path: str | Path, rows: list[Mapping[str, Any]]) -> None:
    """Write rows as UTF-8 JSONL with sorted keys, so identical data gives identical bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is and where its files are.

    Attributes:
        name: unique task name (used as the key in results files).
        kind: ``"retrieval"``, ``"sts"`` or ``"bitext"``.
        root: directory the ``files`` paths are relative to.
        files: role -> relative path. Retrieval needs ``corpus``, ``queries`` and ``qrels``;
            STS and bitext need ``pairs``.
        query_task: prompt task name used to encode queries (retrieval: e.g. ``"query"`` or
            ``"code_retrieval"``; documents always use the document prompt) or both sides
            (STS: ``"sts"``, bitext: ``"bitext"``).
        description, source, license: documentation: what is measured, where the text comes
            from (package and exact version), under which licence.
        stats: sizes and token counts, for the reader and the manifest.
    """

    name: str
    kind: TaskKind
    root: Path
    files: Mapping[str, str]
    query_task: str = ""
    description: str = ""
    source: str = ""
    license: str = ""
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")
        missing = [r for r in _REQUIRED_FILES[self.kind] if r not in self.files]
        if missing:
            raise ValueError(f"task {self.name!r}: a {self.kind} task needs files {missing} (got {sorted(self.files)})")
        if not self.query_task:
            object.__setattr__(self, "query_task", _DEFAULT_QUERY_TASK[self.kind])
        object.__setattr__(self, "root", Path(self.root))

    @property
    def main_metric(self) -> str:
        """The metric MTEB reports first for this kind of task."""
        return _MAIN_METRIC[self.kind]

    def path(self, role: str) -> Path:
        return self.root / self.files[role]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        d["files"] = dict(self.files)
        d["stats"] = dict(self.stats)
        return d

    def save(self) -> Path:
        """Write ``task.json`` into ``root``."""
        out = self.root / TASK_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(self.to_json(), indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
        )
        return out


def load_task(task_dir: str | Path) -> TaskSpec:
    """Read ``<task_dir>/task.json`` (paths inside it are relative to ``task_dir``)."""
    task_dir = Path(task_dir)
    spec_path = task_dir / TASK_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path}: not a task directory (no {TASK_FILE}); build the suite first")
    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"))
        return TaskSpec(root=task_dir, **raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataFormatError(f"{spec_path}: not a valid task description ({exc})") from exc
