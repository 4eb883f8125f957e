#!/usr/bin/env python
"""Score the local suite with sentence-transformers and with our Embedder in one process; print the
main metric of every task for both and the difference.

    python scripts/compare_local_suite.py                       # data/local_suite, fp32, CPU
    python scripts/compare_local_suite.py --suite-dir DIR --tasks manpages-en-retrieval

The requirement (issue 4): |ours - sentence-transformers| <= 0.1 point of each task's main metric
(nDCG@10 for retrieval, F1 for bitext, Spearman for STS; points = x100). Both models read the
released checkpoint, run fp32 on the CPU with max_seq_length 512 and get the same prompts:
sentence-transformers through ``encode_query`` / ``encode_document`` / ``encode`` with ``prompt=``
(documents grouped by title, since its prompt is per call), ours through its task names. Both go
through the same runner, metrics and search, so any difference comes from the embeddings; the
script also reports the lowest cosine between the two models' embeddings of the same text.

Exit status: 0 if every task is within the tolerance, 1 otherwise. Takes about twice the suite's
scoring time (two models); run it under the shared CPU lock.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embeddinggemma.eval.runner import EmbeddingCache, evaluate_task, suite_tasks
from embeddinggemma.prompts import PromptTable, document_prompt

logger = logging.getLogger("compare_local_suite")

MODEL = "google/embeddinggemma-300m"
TOLERANCE_POINTS = 0.1


class SentenceTransformersEmbedder:
    """sentence-transformers behind the runner's embedder API, with our prompt strings passed as
    ``prompt=`` so that both models see identical input text."""

    def __init__(self, model: Any, prompts: PromptTable) -> None:
        self.model = model
        self.prompts = prompts

    def _kw(self, batch_size: int, show_progress: bool) -> dict[str, Any]:
        return {"batch_size": batch_size, "show_progress_bar": show_progress, "normalize_embeddings": True}

    def encode_query(
        self, texts: list[str], *, task: str = "query", batch_size: int = 32, show_progress: bool = False, **_: Any
    ) -> np.ndarray:
        return self.model.encode_query(texts, prompt=self.prompts[task], **self._kw(batch_size, show_progress))

    def encode_document(
        self,
        texts: list[str],
        *,
        titles: Sequence[str | None] | None = None,
        batch_size: int = 32,
        show_progress: bool = False,
        **_: Any,
    ) -> np.ndarray:
        groups: dict[str, list[int]] = {}
        for i, title in enumerate(titles or [None] * len(texts)):
            groups.setdefault(document_prompt(title), []).append(i)
        out = np.zeros((len(texts), self.model.get_embedding_dimension()), np.float32)
        for prompt, rows in groups.items():
            out[rows] = self.model.encode_document(
                [texts[i] for i in rows], prompt=prompt, **self._kw(batch_size, show_progress)
            )
        return out

    def encode(
        self,
        texts: list[str],
        *,
        task: str | None = None,
        batch_size: int = 32,
        show_progress: bool = False,
        **_: Any,
    ) -> np.ndarray:
        prompt = self.prompts[task] if task is not None else None
        return self.model.encode(texts, prompt=prompt, **self._kw(batch_size, show_progress))


def _score(embedder: Any, specs: list[Any], batch_size: int, progress: bool) -> tuple[dict[str, Any], EmbeddingCache]:
    cache = EmbeddingCache(embedder, batch_size=batch_size, show_progress=progress)
    return {s.name: evaluate_task(embedder, s, cache=cache) for s in specs}, cache


def _min_cosine(a: EmbeddingCache, b: EmbeddingCache) -> tuple[float, int]:
    ra, rb = a.rows(), b.rows()
    keys = [k for k in ra if k in rb]
    x = np.stack([ra[k] for k in keys]).astype(np.float64)
    y = np.stack([rb[k] for k in keys]).astype(np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.min()), len(keys)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite-dir", type=Path, default=Path("data/local_suite"))
    parser.add_argument("--tasks", nargs="+", help="only these tasks")
    parser.add_argument("--model", default=MODEL, help="hub id or local checkpoint directory")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    from embeddinggemma import Embedder

    specs = suite_tasks(args.suite_dir)
    if args.tasks:
        unknown = sorted(set(args.tasks) - {s.name for s in specs})
        if unknown:
            parser.error(f"unknown task(s) {unknown}; the suite has {sorted(s.name for s in specs)}")
        specs = [s for s in specs if s.name in args.tasks]

    ours = Embedder.from_pretrained(args.model, device="cpu", dtype="float32", max_seq_length=args.max_seq_length)
    st_model = SentenceTransformer(args.model, device="cpu")
    st_model.max_seq_length = args.max_seq_length
    reference = SentenceTransformersEmbedder(st_model, ours.prompts)

    t0 = time.perf_counter()
    st_results, st_cache = _score(reference, specs, args.batch_size, not args.no_progress)
    st_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    our_results, our_cache = _score(ours, specs, args.batch_size, not args.no_progress)
    our_seconds = time.perf_counter() - t0
    min_cos, n_texts = _min_cosine(our_cache, st_cache)

    print(f"# ours vs sentence-transformers {sentence_transformers.__version__} on {args.suite_dir}")
    print(
        f"model {args.model}, fp32, CPU ({_cpu_name()}, {torch.get_num_threads()} threads), "
        f"max_seq_length {args.max_seq_length}, torch {torch.__version__}\n"
    )
    print("| task | main metric | ours | sentence-transformers | ours - ST (points) | within 0.1 |")
    print("|---|---|---:|---:|---:|---|")
    failures = 0
    for spec in specs:
        metric = our_results[spec.name]["main_metric"]
        a = our_results[spec.name]["dims"][str(ours.embedding_dim)]["scores"]["main_score"] * 100
        b = st_results[spec.name]["dims"][str(ours.embedding_dim)]["scores"]["main_score"] * 100
        ok = abs(a - b) <= TOLERANCE_POINTS
        failures += not ok
        print(f"| {spec.name} | {metric} | {a:.2f} | {b:.2f} | {a - b:+.3f} | {'yes' if ok else 'NO'} |")
    print(
        f"\nlowest cosine(ours, ST) over {n_texts} distinct texts: {min_cos:.6f}; "
        f"encode+score time: ours {our_seconds:.0f} s, sentence-transformers {st_seconds:.0f} s"
    )
    print("PASS: every task within 0.1 point" if not failures else f"FAIL: {failures} task(s) off by > 0.1 point")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
