"""Hard-negative mining with an embedding model (paper section 2, finetuning stage).

The finetuning stage trains with "one hard negative per query", hardness-weighted in the NCE loss. Hard
negatives are documents the current model ranks high for a query although they are not its positive.
The very top of that ranking is where unlabelled true positives hide (a false negative teaches the model
to push away a correct answer), so, as is common practice (the paper does not publish its procedure):

* candidates come from a rank window, ``rank_range=(10, 100)`` by default: ranks 10..99 of the corpus
  ordered by cosine similarity, counted after removing the positive and its duplicates;
* a margin drops candidates scoring too close to the positive: kept iff
  ``score < positive score - margin``;
* the positive, exact duplicates of it (up to whitespace and case), and the positives of other rows with
  the same query are never negatives; for symmetric tasks neither is the query itself.

Search is exact (:func:`embeddinggemma.vectors.exact.search`, batched top-k, deterministic tie order), so the
result depends only on the model, the data and these parameters. Embeddings can be taken from a
:class:`~embeddinggemma.train.teacher.TeacherCache` when the mining model is the teacher: the prompted
texts are the same, so mining then costs no model time for the texts already cached.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embeddinggemma.prompts import PromptTable, document_prompt
from embeddinggemma.train.data import (
    DatasetSpec,
    TrainingExample,
    is_symmetric,
    load_dataset,
    read_examples,
    text_id,
    write_dataset,
)
from embeddinggemma.train.teacher import TeacherCache, TextEncoder
from embeddinggemma.vectors.exact import search

logger = logging.getLogger(__name__)

__all__ = ["CorpusDocument", "MiningConfig", "MiningStats", "mine_dataset", "mine_hard_negatives"]

Sampling = Literal["top", "random"]


@dataclass(frozen=True)
class CorpusDocument:
    """A candidate negative: its text and title (the title goes into the document prompt)."""

    text: str
    title: str | None = None


@dataclass(frozen=True)
class MiningConfig:
    """Mining parameters (recorded in the mined dataset's ``dataset.json``).

    Attributes:
        num_negatives: negatives kept per row (the loader draws H of them each time the row is used).
        rank_range: ``(start, stop)``: candidates are ranks start..stop-1 (0-based) of the corpus for the
            query, counted without the excluded documents.
        margin: keep a candidate only if its score < positive score - margin; None disables the check.
        sampling: "top" keeps the highest-ranked candidates of the window, "random" a seeded sample of it.
        seed: for "random".
    """

    num_negatives: int = 4
    rank_range: tuple[int, int] = (10, 100)
    margin: float | None = 0.0
    sampling: Sampling = "top"
    seed: int = 0

    def __post_init__(self) -> None:
        start, stop = self.rank_range
        object.__setattr__(self, "rank_range", (int(start), int(stop)))
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if not 0 <= start < stop:
            raise ValueError(f"rank_range must be (start, stop) with 0 <= start < stop, got {self.rank_range}")
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}")


@dataclass(frozen=True)
class MiningStats:
    """What mining found: counts, mean scores and time."""

    examples: int
    corpus: int
    rows_without_negatives: int
    negatives: int
    rejected_by_margin: int
    mean_positive_score: float
    mean_negative_score: float | None
    encoded_texts: int
    cached_texts: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("mean_positive_score", "mean_negative_score", "seconds"):
            d[key] = None if d[key] is None else round(float(d[key]), 4)
        return d


def _dup_key(text: str) -> str:
    return " ".join(text.split()).casefold()


class _Embeddings:
    """Distinct prompted texts -> rows of one float32 matrix, from the cache where possible."""

    def __init__(self, embedder: TextEncoder, cache: TeacherCache | None, batch_size: int) -> None:
        self.embedder, self.cache, self.batch_size = embedder, cache, batch_size
        self.encoded = self.cached = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        ids = np.array([text_id(t) for t in texts], dtype=np.int64)
        out = np.empty((len(texts), int(self.embedder.embedding_dim)), dtype=np.float32)
        have = self.cache.contains_ids(ids) if self.cache is not None else np.zeros(len(texts), bool)
        if have.any():
            assert self.cache is not None
            out[have] = self.cache.lookup_ids(ids[have])
            self.cached += int(have.sum())
        todo = np.flatnonzero(~have)
        if len(todo):
            encoded = self.embedder.encode([texts[i] for i in todo], batch_size=self.batch_size, show_progress=False)
            out[todo] = np.asarray(encoded, dtype=np.float32)
            self.encoded += len(todo)
        if not np.isfinite(out).all():
            raise ValueError("the mining model returned NaN or inf embeddings; check its dtype (fp16 is not supported)")
        return out


def mine_hard_negatives(
    embedder: TextEncoder,
    examples: Sequence[TrainingExample] | DatasetSpec | str | Path,
    corpus: Sequence[CorpusDocument | str] | None = None,
    *,
    task: str | None = None,
    symmetric: bool | None = None,
    config: MiningConfig | None = None,
    batch_size: int = 32,
    cache: TeacherCache | None = None,
    **config_kwargs: Any,
) -> tuple[list[TrainingExample], MiningStats]:
    """Fill every example's ``negatives`` (and ``negative_titles``) with mined hard negatives.

    Args:
        embedder: the mining model; ``encode(texts)`` must add no prompt of its own (``Embedder.encode``
            with no task does not); texts are prompted here exactly as the loader prompts them.
        examples: the examples, or a dataset (descriptor or directory) to read them from.
        corpus: candidate documents; default: the distinct positives of ``examples`` (with their titles).
        task, symmetric: prompt task of the queries (taken from the dataset when one is given).
        config: a :class:`MiningConfig`, or its fields as keyword arguments (``num_negatives``,
            ``rank_range``, ``margin``, ``sampling``, ``seed``).
        cache: embeddings of the same model for some prompted texts (a teacher cache of this model).

    Returns:
        the examples with negatives replaced (order kept; rows whose window holds no acceptable
        candidate get none), and :class:`MiningStats`.
    """
    if config is None:
        config = MiningConfig(**config_kwargs)
    elif config_kwargs:
        raise ValueError("pass either config= or the mining parameters as keywords, not both")
    t0 = time.perf_counter()
    if isinstance(examples, DatasetSpec | str | Path):
        spec = examples if isinstance(examples, DatasetSpec) else load_dataset(examples)
        task, symmetric = spec.task, spec.symmetric
        examples = read_examples(spec.path)
    if task is None:
        raise ValueError("task= is required when examples are given as a list (it selects the prompts)")
    if not examples:
        raise ValueError("no examples to mine negatives for")
    sym = is_symmetric(task) if symmetric is None else symmetric
    query_prompt = PromptTable()[task]

    def doc_text(text: str, title: str | None) -> str:
        return query_prompt + text if sym else document_prompt(title) + text

    if corpus is None:
        corpus = [CorpusDocument(ex.positive, ex.title) for ex in examples]
    docs = [d if isinstance(d, CorpusDocument) else CorpusDocument(d) for d in corpus]
    seen_docs: dict[int, int] = {}
    unique_docs: list[CorpusDocument] = []
    for d in docs:  # identical prompted documents are one candidate
        tid = text_id(doc_text(d.text, d.title))
        if tid not in seen_docs:
            seen_docs[tid] = len(unique_docs)
            unique_docs.append(d)
    if not unique_docs:
        raise ValueError("the corpus is empty; there is nothing to mine from")

    embed = _Embeddings(embedder, cache, batch_size)
    query_texts = sorted({query_prompt + ex.query for ex in examples})
    query_row = {t: i for i, t in enumerate(query_texts)}
    positive_texts = sorted({doc_text(ex.positive, ex.title) for ex in examples})
    positive_row = {t: i for i, t in enumerate(positive_texts)}
    q_emb = embed(query_texts)
    c_emb = embed([doc_text(d.text, d.title) for d in unique_docs])
    p_emb = embed(positive_texts)
    logger.info("mining: %d queries, %d documents (%d texts encoded, %d from cache)",
                len(query_texts), len(unique_docs), embed.encoded, embed.cached)  # fmt: skip

    # Documents that are never negatives for a row: the positive and its duplicates, the positives of
    # rows with the same query, and (symmetric tasks) the query itself.
    docs_by_key: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(unique_docs):
        docs_by_key[_dup_key(d.text)].append(i)
    positives_of_query: dict[str, set[str]] = defaultdict(set)
    for ex in examples:
        positives_of_query[_dup_key(ex.query)].add(_dup_key(ex.positive))

    def excluded(ex: TrainingExample) -> set[int]:
        keys = set(positives_of_query[_dup_key(ex.query)])
        if sym:
            keys.add(_dup_key(ex.query))
        return {i for k in keys for i in docs_by_key.get(k, ())}

    exclusions = [excluded(ex) for ex in examples]
    start, stop = config.rank_range
    k = min(len(unique_docs), stop + max(len(e) for e in exclusions))
    row_of_example = np.array([query_row[query_prompt + ex.query] for ex in examples])
    scores, indices = search(q_emb, c_emb, k)
    q_unit = q_emb / np.maximum(np.linalg.norm(q_emb, axis=1, keepdims=True), 1e-12)
    p_unit = p_emb / np.maximum(np.linalg.norm(p_emb, axis=1, keepdims=True), 1e-12)

    out: list[TrainingExample] = []
    rejected = empty = 0
    pos_scores, neg_scores = [], []
    for n, ex in enumerate(examples):
        qr = row_of_example[n]
        pos_score = float(q_unit[qr] @ p_unit[positive_row[doc_text(ex.positive, ex.title)]])
        pos_scores.append(pos_score)
        window: list[tuple[int, float]] = []
        rank = 0
        for score, idx in zip(scores[qr], indices[qr], strict=True):
            if int(idx) in exclusions[n]:
                continue
            if rank >= stop:
                break
            if rank >= start:
                if config.margin is not None and not float(score) < pos_score - config.margin:
                    rejected += 1
                else:
                    window.append((int(idx), float(score)))
            rank += 1
        if config.sampling == "random" and len(window) > config.num_negatives:
            pick = np.sort(np.random.default_rng([config.seed, n]).choice(len(window), config.num_negatives, False))
            chosen = [window[i] for i in pick]
        else:
            chosen = window[: config.num_negatives]
        empty += not chosen
        neg_scores += [s for _, s in chosen]
        out.append(
            replace(
                ex,
                negatives=tuple(unique_docs[i].text for i, _ in chosen),
                negative_titles=None if sym else tuple(unique_docs[i].title for i, _ in chosen),
            )
        )
    stats = MiningStats(
        examples=len(examples),
        corpus=len(unique_docs),
        rows_without_negatives=empty,
        negatives=len(neg_scores),
        rejected_by_margin=rejected,
        mean_positive_score=float(np.mean(pos_scores)),
        mean_negative_score=float(np.mean(neg_scores)) if neg_scores else None,
        encoded_texts=embed.encoded,
        cached_texts=embed.cached,
        seconds=time.perf_counter() - t0,
    )
    return out, stats


def mine_dataset(
    embedder: TextEncoder,
    dataset: DatasetSpec | str | Path,
    out_dir: str | Path,
    *,
    corpus: Sequence[CorpusDocument | str] | None = None,
    model_name: str = "",
    config: MiningConfig | None = None,
    batch_size: int = 32,
    cache: TeacherCache | None = None,
    max_examples: int | None = None,
    **config_kwargs: Any,
) -> DatasetSpec:
    """Mine a dataset and write the result as a new dataset in ``out_dir`` (same name and task), recording
    the source file's sha256, the model and the parameters in its ``provenance``.

    ``max_examples`` mines (and writes) only a seeded sample of that many rows, in file order, when the
    model is too slow for all of them; their negatives still come from the whole corpus (default: every
    positive of the full dataset).
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else load_dataset(dataset)
    config = config or MiningConfig(**config_kwargs)
    examples = read_examples(spec.path)
    if corpus is None:
        corpus = [CorpusDocument(ex.positive, ex.title) for ex in examples]
    if max_examples is not None and max_examples < len(examples):
        keep = sorted(random.Random(config.seed).sample(range(len(examples)), max_examples))
        examples = [examples[i] for i in keep]
    mined, stats = mine_hard_negatives(
        embedder, examples, corpus, task=spec.task, symmetric=spec.symmetric, config=config, batch_size=batch_size,
        cache=cache,
    )  # fmt: skip
    logger.info("mined %s: %s", spec.name, stats.to_json())
    provenance = {
        **dict(spec.provenance),
        "mined_from": {"path": str(spec.path), "sha256": spec.sha256, "examples": spec.num_examples},
        "mining": {"model": model_name, **asdict(config), "max_examples": max_examples, "stats": stats.to_json()},
    }
    return write_dataset(
        out_dir,
        mined,
        name=spec.name,
        task=spec.task,
        symmetric=spec.symmetric,
        split=spec.split,
        source=spec.source,
        license=spec.license,
        description=spec.description,
        stats=dict(spec.stats),
        provenance=provenance,
    )
