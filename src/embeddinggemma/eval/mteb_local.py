"""Local-data tasks as mteb tasks: any :class:`~embeddinggemma.eval.data.TaskSpec` (the local suite's,
or your own BEIR-style directory) runs through mteb's evaluators, offline.

Each class overrides ``load_data()`` to read our JSONL files instead of the Hugging Face hub, so the
same data can be scored by our runner and by mteb, and the two must agree (the test suite checks
that they do). Subsets follow mteb's conventions: queries with a ``subset`` (a language) become one
``hf_subset`` each over the shared corpus; bitext pairs become one subset per language pair.

Prompts: mteb looks prompts up by task name and type, so :func:`local_prompts` gives the adapter the
prompt each spec declares (``query_task``, e.g. ``code_retrieval`` for the code task, where the
checkpoint's table would give the generic retrieval query prompt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from datasets import Dataset
from mteb import TaskMetadata
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

from embeddinggemma.eval.data import TaskSpec, load_bitext, load_corpus, load_qrels, load_queries, load_sts
from embeddinggemma.eval.runner import suite_tasks

logger = logging.getLogger(__name__)

__all__ = [
    "LocalBitextTask",
    "LocalRetrievalTask",
    "LocalSTSTask",
    "local_mteb_task",
    "local_mteb_tasks",
    "local_prompts",
]

SPLIT = "test"
DEFAULT_SUBSET = "default"

# Our subset names -> mteb's ISO 639-3 + script codes. Unknown subsets are tagged English, which only
# affects mteb's language filters, never a score.
_LANGS = {
    "en": "eng-Latn", "de": "deu-Latn", "es": "spa-Latn", "fr": "fra-Latn", "ja": "jpn-Jpan",
    "ko": "kor-Hang", "pl": "pol-Latn", "ru": "rus-Cyrl", "zh_CN": "zho-Hans", "zh": "zho-Hans",
}  # fmt: skip
_MTEB_TYPE = {"retrieval": "Retrieval", "sts": "STS", "bitext": "BitextMining"}


def _lang(code: str) -> str:
    return _LANGS.get(code, _LANGS.get(code.split("_")[0], "eng-Latn"))


def _metadata(spec: TaskSpec, eval_langs: list[str] | dict[str, list[str]]) -> TaskMetadata:
    code = spec.query_task == "code_retrieval"
    return TaskMetadata(
        name=spec.name,
        description=(spec.description or f"local {spec.kind} task from {spec.root}")
        + (f" Source: {spec.source}." if spec.source else "")
        + (f" Licence: {spec.license}." if spec.license else ""),
        # load_data() below never touches the hub; the path says where the files are.
        dataset={"path": str(spec.root), "revision": "local"},
        type=_MTEB_TYPE[spec.kind],  # type: ignore[arg-type]
        category="t2t",
        eval_splits=[SPLIT],
        eval_langs=eval_langs,  # type: ignore[arg-type]
        main_score=spec.main_metric,
        domains=["Programming"] if code else ["Written"],
        task_subtypes=["Code retrieval"] if code else [],
        license="not specified",
        annotations_creators="derived",
        sample_creation="found",
        bibtex_citation="",
    )


class LocalRetrievalTask(AbsTaskRetrieval):
    """A retrieval :class:`TaskSpec` (corpus, queries, qrels) as an mteb retrieval task.

    mteb keeps a task's metadata on its class (``unload_data`` restores it from there), so each spec
    gets its own subclass: build instances with :func:`local_mteb_task`.
    """

    spec: ClassVar[TaskSpec]
    k_values = (1, 10, 100)  # the runner's cut-offs; mteb's default adds 3, 5, 20 and 1000

    @classmethod
    def metadata_for(cls, spec: TaskSpec) -> TaskMetadata:
        found = {q.subset for q in load_queries(spec.path("queries"))}
        subsets = sorted(s for s in found if s is not None)
        if subsets and None in found:
            subsets.append(DEFAULT_SUBSET)  # queries without a subset next to ones with
        if subsets:
            return _metadata(spec, {s: [_lang(s)] for s in subsets})
        return _metadata(spec, ["python-Code" if spec.query_task == "code_retrieval" else "eng-Latn"])

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        corpus = load_corpus(self.spec.path("corpus"))
        all_queries = load_queries(self.spec.path("queries"))
        qrels = load_qrels(self.spec.path("qrels"))
        # mteb's collate refuses None, and its corpus formatter treats "" as "no title".
        corpus_ds = Dataset.from_list([{"id": d.id, "title": d.title or "", "text": d.text} for d in corpus])
        self.dataset = {}
        for subset in self.metadata.hf_subsets:
            # Only judged queries, as the runner encodes them (mteb drops unjudged ones too).
            queries = [
                q for q in all_queries
                if q.id in qrels and (not self.metadata.is_multilingual or (q.subset or DEFAULT_SUBSET) == subset)
            ]  # fmt: skip
            self.dataset[subset] = {
                SPLIT: RetrievalSplitData(
                    corpus=corpus_ds,
                    queries=Dataset.from_list([{"id": q.id, "text": q.text} for q in queries]),
                    relevant_docs={q.id: dict(qrels[q.id]) for q in queries},
                    top_ranked=None,
                )
            }
        self.data_loaded = True


class LocalSTSTask(AbsTaskSTS):
    """An STS :class:`TaskSpec` (sentence pairs with gold scores) as an mteb STS task."""

    spec: ClassVar[TaskSpec]

    @classmethod
    def metadata_for(cls, spec: TaskSpec) -> TaskMetadata:
        return _metadata(spec, ["eng-Latn"])

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        pairs = load_sts(self.spec.path("pairs"))
        # Only the order of gold scores matters to the correlations; mteb rescales by these bounds.
        self.min_score = min(p.score for p in pairs)
        self.max_score = max(p.score for p in pairs)
        rows = [{"sentence1": p.sentence1, "sentence2": p.sentence2, "score": p.score} for p in pairs]
        self.dataset = {DEFAULT_SUBSET: {SPLIT: Dataset.from_list(rows)}}
        self.data_loaded = True


class LocalBitextTask(AbsTaskBitextMining):
    """A bitext :class:`TaskSpec` as an mteb bitext-mining task: one subset per ``subset`` (language
    pair), each source mined against that subset's targets (``sentence1`` -> ``sentence2``)."""

    spec: ClassVar[TaskSpec]

    @classmethod
    def metadata_for(cls, spec: TaskSpec) -> TaskMetadata:
        subsets = sorted({p.subset or DEFAULT_SUBSET for p in load_bitext(spec.path("pairs"))})
        if subsets == [DEFAULT_SUBSET]:
            return _metadata(spec, ["eng-Latn"])
        return _metadata(spec, {s: [_lang(part) for part in s.split("-")[:2]] for s in subsets})

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        pairs = load_bitext(self.spec.path("pairs"))
        self.dataset = {}
        for subset in self.metadata.hf_subsets:
            rows = [
                {"sentence1": p.source, "sentence2": p.target} for p in pairs if (p.subset or DEFAULT_SUBSET) == subset
            ]
            self.dataset[subset] = {SPLIT: Dataset.from_list(rows)}
        self.data_loaded = True


LocalTask = LocalRetrievalTask | LocalSTSTask | LocalBitextTask
_TASK_CLASSES: dict[str, type[LocalRetrievalTask] | type[LocalSTSTask] | type[LocalBitextTask]] = {
    "retrieval": LocalRetrievalTask,
    "sts": LocalSTSTask,
    "bitext": LocalBitextTask,
}


def local_mteb_task(spec: TaskSpec) -> LocalTask:
    """An mteb task instance for one spec (a subclass of the kind's class that carries the metadata)."""
    base = _TASK_CLASSES[spec.kind]
    cls = type(base.__name__, (base,), {"spec": spec, "metadata": base.metadata_for(spec), "__module__": __name__})
    return cls()


def local_mteb_tasks(
    suite: str | Path | Sequence[TaskSpec | str | Path], tasks: Sequence[str] | None = None
) -> list[LocalTask]:
    """mteb tasks for a suite directory (or a list of specs / task directories), optionally only ``tasks``."""
    specs = suite_tasks(suite)
    if tasks is not None:
        unknown = sorted(set(tasks) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this suite has {sorted(s.name for s in specs)}")
        specs = [s for s in specs if s.name in set(tasks)]
    return [local_mteb_task(s) for s in specs]


def local_prompts(tasks: Sequence[Any], prompt_table: Mapping[str, str]) -> dict[str, str]:
    """Adapter prompts (mteb keys) that give each local task the prompt its spec declares; tasks that
    are not local (no ``spec``) are left to the checkpoint's table."""
    out: dict[str, str] = {}
    for task in tasks:
        spec: TaskSpec | None = getattr(task, "spec", None)
        if spec is None:
            continue
        key = f"{spec.name}-query" if spec.kind == "retrieval" else spec.name
        out[key] = prompt_table[spec.query_task]
    return out
