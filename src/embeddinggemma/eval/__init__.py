"""Evaluation: metrics, data formats, a runner with Matryoshka dims, results and reports.

Layout (dependency order):

* ``metrics``: retrieval (nDCG/MRR/Recall/MAP as trec_eval and MTEB compute them), STS, bitext.
* ``data``: BEIR-style JSONL/TSV loaders that fail with file:line, and :class:`TaskSpec`.
* ``runner``: encode once at full width, score every dim; results JSON. ``report``: markdown.
* ``counting``: tokens and seconds an embedder spent, for tokens/s in every results file.
* ``cli``: ``embeddinggemma eval`` (local suite or MTEB, several dims, results JSON, ``compare``).

mteb (the ``[eval]`` extra) is only imported by ``mteb_adapter`` (our Embedder as an mteb
``EncoderProtocol`` with a ``ModelMeta``), ``mteb_local`` (local-data tasks as mteb tasks) and
``mteb_run`` (tasks/benchmarks at several dims -> our results format); importing this package
does not import them. The local suite these tasks usually come from is built by
:mod:`embeddinggemma.corpus.local_suite`, which this package never imports.
"""

from __future__ import annotations

from embeddinggemma.eval.data import TaskSpec, load_task
from embeddinggemma.eval.metrics import bitext_scores, retrieval_scores, sts_scores
from embeddinggemma.eval.report import compare_results, results_markdown
from embeddinggemma.eval.runner import evaluate_suite, evaluate_task, load_results, write_results

__all__ = [
    "TaskSpec",
    "bitext_scores",
    "compare_results",
    "evaluate_suite",
    "evaluate_task",
    "load_results",
    "load_task",
    "results_markdown",
    "retrieval_scores",
    "sts_scores",
    "write_results",
]
