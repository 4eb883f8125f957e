#!/usr/bin/env python
"""Retrieval quality through the index (files -> chunks -> SQLite -> search) against `embeddinggemma eval`.

Each retrieval task of the local suite is scored twice with the same loaded model, in one process:

* ``eval``: :func:`embeddinggemma.eval.runner.evaluate_task`, what `embeddinggemma eval` runs;
* ``index``: every corpus document written as a file (opaque names ``d00001.txt``, so the file-name
  title carries no answer), indexed by :func:`embeddinggemma.index.index_folder`, and every query sent
  through :class:`embeddinggemma.index.Searcher` in dense, hybrid and bm25 modes. Chunk hits are mapped
  back to their file's document (first hit wins) and scored with the same metric code.

    HF_HUB_OFFLINE=1 python benchmarks/index_suite.py --suite-dir data/local_suite -o runs/index_suite.json

The documents fit one 512-token chunk almost always (the suite's own budget), so the two paths embed
nearly the same inputs; what differs is the title (``title: d00001.txt`` vs ``title: none``; use
``--titles none`` to drop it) and the few documents split in two chunks.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from embeddinggemma.embedder import Embedder
from embeddinggemma.eval.data import load_corpus, load_qrels, load_queries
from embeddinggemma.eval.metrics import retrieval_per_query
from embeddinggemma.eval.runner import evaluate_task, suite_tasks
from embeddinggemma.index import IndexOptions, Searcher, index_folder

DEPTH = 100  # chunks retrieved per query (the metrics look at the top 10 documents)


def index_path_scores(task, embedder, work: Path, titles: bool, cache: dict) -> dict:
    corpus = load_corpus(task.path("corpus"))
    queries = load_queries(task.path("queries"))
    qrels = load_qrels(task.path("qrels"))
    key = task.path("corpus").read_bytes()
    if key not in cache:  # the two man-page tasks share one corpus: index it once
        folder = work / f"corpus{len(cache)}"
        folder.mkdir()
        names = {}
        for i, doc in enumerate(corpus):
            name = f"d{i:05d}.txt"
            (folder / name).write_text(doc.text, encoding="utf-8")
            names[name] = doc.id
        db = work / f"corpus{len(cache)}.db"
        report = index_folder(
            folder, db, embedder, model="benchmark", options=IndexOptions(chunk_tokens=512, titles=titles)
        )
        cache[key] = (db, names, report)
    db, names, report = cache[key]
    judged = [q for q in queries if q.id in qrels]
    t0 = time.perf_counter()
    vectors = embedder.encode_query([q.text for q in judged], task=task.query_task)
    query_seconds = time.perf_counter() - t0
    out = {
        "index": {
            "files": report.totals["files"],
            "chunks": report.totals["chunks"],
            "tokens": report.tokens,
            "tokens_per_second": round(report.tokens_per_second, 1),
            "seconds": round(report.seconds, 1),
        },
        "query_encode_seconds": round(query_seconds, 1),
    }
    with Searcher(db, embedder, dense="exact") as searcher:
        for mode in ("dense", "hybrid", "bm25"):
            ranked = {}
            for query, vector in zip(judged, vectors, strict=True):
                hits = searcher.ranked_ids(query.text, DEPTH, mode=mode, task=task.query_task, vector=vector)
                rows = searcher.store.chunks([i for i, _ in hits])
                docs = [names[rows[i].path] for i, _ in hits]
                ranked[query.id] = list(dict.fromkeys(docs))
            per_query, _ = retrieval_per_query(
                ranked, qrels, query_ids=[q.id for q in queries], corpus_ids=[d.id for d in corpus]
            )
            out[mode] = float(np.mean([m["ndcg_at_10"] for m in per_query.values()]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite-dir", type=Path, default=Path("data/local_suite"))
    parser.add_argument("--model", default="google/embeddinggemma-300m")
    parser.add_argument("--quantize", default=None, help="int8: the CPU int8 path for both sides")
    parser.add_argument("--titles", choices=["file-and-heading", "none"], default="file-and-heading")
    parser.add_argument("--tasks", nargs="+", help="default: every retrieval task")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    embedder = Embedder.from_pretrained(args.model, max_seq_length=512, quantize=args.quantize)
    tasks = [
        t for t in suite_tasks(args.suite_dir) if t.kind == "retrieval" and (not args.tasks or t.name in args.tasks)
    ]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict = {}
        for task in tasks:
            t0 = time.perf_counter()
            through_index = index_path_scores(task, embedder, Path(tmp), args.titles != "none", cache)
            index_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            evaluated = evaluate_task(embedder, task)["dims"][str(embedder.embedding_dim)]["scores"]["ndcg_at_10"]
            results[task.name] = {
                "eval": evaluated,
                **through_index,
                "seconds": {"index_path": index_s, "eval": time.perf_counter() - t0},
            }
            row = results[task.name]
            print(
                f"{task.name}: nDCG@10 eval {100 * evaluated:.2f} | index dense {100 * row['dense']:.2f} "
                f"(diff {100 * (row['dense'] - evaluated):+.2f}) hybrid {100 * row['hybrid']:.2f} "
                f"bm25 {100 * row['bm25']:.2f}",
                flush=True,
            )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps(
                {"model": args.model, "quantize": args.quantize, "titles": args.titles, "tasks": results}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
