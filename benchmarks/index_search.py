#!/usr/bin/env python
"""Index size and search latency at 10k and 100k chunks, and the vector-store comparison behind the
index's design (exact float32, binary and int8 codes with float32 rescoring, usearch and faiss HNSW,
sqlite-vec), all on the same vectors.

Embedding 100k chunks with the 300M model does not fit a 2-core machine's day, so the chunks are
embedded by a *static* model: the mean of EmbeddingGemma's own input token embeddings over each chunk
(real text, the real tokenizer and chunker; vectors with the anisotropy of real embeddings, not random
ones). Query latencies below are for the store with the query already embedded; the model adds its
query time (see the CPU benchmark table).

    apt-get download python3.11-doc libpython3.11-stdlib   # CPython 3.11 Doc/ sources and Lib/
    dpkg-deb -x python3.11-doc_*.deb doc && dpkg-deb -x libpython3.11-stdlib_*.deb lib
    DOC=doc/usr/share/doc/python3.11/html/_sources SITE=.venv/lib/python3.11/site-packages
    HF_HUB_OFFLINE=1 python benchmarks/index_search.py --work /tmp/index-bench --small $DOC \\
        --large $DOC lib/usr/lib/python3.11 $SITE/transformers -o index_search.json

Indexes already in ``--work`` are reused (``--build-only`` builds them and stops), so the timed part
can run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from embeddinggemma.checkpoint import cached_file
from embeddinggemma.config import MATRYOSHKA_DIMS
from embeddinggemma.index import IndexOptions, Searcher, index_folder
from embeddinggemma.prompts import PromptTable, document_prompt
from embeddinggemma.tokenizer import TextTokenizer


class StaticEmbedder:
    """Mean of EmbeddingGemma's input token embeddings: the Embedder interface the index uses, at
    table-lookup speed."""

    embedding_dim = 768
    matryoshka_dims = tuple(MATRYOSHKA_DIMS)
    max_seq_length = 2048

    def __init__(self) -> None:
        from safetensors import safe_open

        self.tokenizer = TextTokenizer.from_file(
            cached_file("tokenizer.json"), max_length=2048, bos_id=2, eos_id=1, pad_id=0, vocab_size=262144
        )
        with safe_open(cached_file("model.safetensors"), "np") as f:
            self.table = f.get_tensor("embed_tokens.weight").astype(np.float32)
        self.prompts = PromptTable()

    def _embed(self, texts: list[str], dim: int | None) -> np.ndarray:
        from scipy.sparse import csr_matrix

        ids = self.tokenizer.encode(texts)
        rows = np.repeat(np.arange(len(ids)), [len(t) for t in ids])
        counts = csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(ids))), shape=(len(ids), 262144))
        out = np.asarray(counts @ self.table)[:, : dim or 768]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def encode_document(self, texts, titles=None, dim=None, **_):
        titles = titles or [None] * len(texts)
        return self._embed([document_prompt(t) + x for x, t in zip(texts, titles, strict=True)], dim)

    def encode_query(self, texts, task="query", dim=None, **_):
        single = isinstance(texts, str)
        out = self._embed([self.prompts[task] + t for t in ([texts] if single else texts)], dim)
        return out[0] if single else out


def gather(folders: list[Path], into: Path) -> Path:
    """Hard links of the folders' files under one root (the index walks one folder)."""
    for folder in folders:
        shutil.copytree(folder, into / folder.name, copy_function=os.link, dirs_exist_ok=True)
    return into


def p50_ms(fn, items) -> float:
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure_index(name: str, folders: list[Path], work: Path, embedder: StaticEmbedder, args) -> dict:
    db = work / f"{name}.db"
    root = work / name
    if not root.exists():
        gather(folders, root)
    t0 = time.perf_counter()
    report = index_folder(
        root, db, embedder, model="static", show_progress=False,
        options=IndexOptions(chunk_tokens=args.chunk_tokens, dense=("binary", "int8")),
    )  # fmt: skip
    out = {
        "files": report.totals["files"],
        "chunks": report.totals["chunks"],
        "tokens": report.totals["tokens"],
        "index_seconds_static_model": round(time.perf_counter() - t0, 1),
        "embedded_this_run": report.embedded_files,
        "db_mb": round(db.stat().st_size / 1e6, 1),
        "skipped": dict(report.skipped.reasons),
    }
    if args.build_only:
        return out
    with Searcher(db, embedder, dense="exact") as searcher:
        rng = np.random.default_rng(0)
        ids = searcher.store.all_vectors(768)[0]
        picked = searcher.store.chunks(rng.choice(ids, args.queries, replace=False).tolist())
        queries = [" ".join(row.text.split()[:12]) for row in picked.values()]
        vectors = embedder.encode_query(queries)
    pairs = list(zip(queries, vectors, strict=True))
    for method in ("exact", "binary", "int8"):
        t0 = time.perf_counter()
        with Searcher(db, embedder, dense=method) as searcher:
            searcher.ranked_ids(*pairs[0][:1], 10, vector=pairs[0][1])
            out[f"open_and_first_query_ms_{method}"] = round(1000 * (time.perf_counter() - t0), 1)
            for mode in ("dense", "hybrid") if method != "exact" else ("dense", "hybrid", "bm25"):
                ms = p50_ms(lambda p, m=mode, s=searcher: s.search(p[0], 10, mode=m, vector=p[1]), pairs)
                out[f"p50_ms_{mode}_{method}" if mode != "bm25" else "p50_ms_bm25"] = round(ms, 2)
    return out


def compare_stores(db: Path, embedder: StaticEmbedder, args) -> dict:
    """Recall@10 against exact search and p50 latency of each vector store on the index's own vectors."""
    from embeddinggemma.index.store import IndexStore

    store = IndexStore(db)
    ids, vectors = store.all_vectors(768)
    rng = np.random.default_rng(1)
    picked = store.chunks(rng.choice(ids, args.queries, replace=False).tolist())
    queries = embedder.encode_query([" ".join(r.text.split()[:12]) for r in picked.values()]).astype(np.float32)
    k = 10
    truth = [set(ids[np.argsort(-(vectors @ q), kind="stable")[:k]].tolist()) for q in queries]

    def run(name: str, search, build_seconds: float, size_bytes: int) -> None:
        found = []
        ms = p50_ms(lambda q: found.append(set(int(x) for x in search(q))), queries)
        recall = float(np.mean([len(f & t) / k for f, t in zip(found, truth, strict=True)]))
        results[name] = {"recall_at_10": round(recall, 4), "p50_ms": round(ms, 2), "build_s": round(build_seconds, 1),
                         "mb": round(size_bytes / 1e6, 1)}  # fmt: skip
        print(name, results[name], flush=True)

    results: dict = {"vectors": len(ids)}
    from embeddinggemma.index.dense import DenseIndex

    for method, rescore in (("exact", 1), ("binary", 10), ("binary", 40), ("int8", 10)):
        index = DenseIndex(store, 768, method, rescore=rescore)
        size = index.vectors.nbytes if method == "exact" else index.codes.nbytes
        run(f"{method}" + (f" + float32 rescore x{rescore}" if method != "exact" else " float32"),
            lambda q, i=index: [c for c, _ in i.search(q, k)], 0.0, size)  # fmt: skip
    from usearch.index import Index

    for connectivity, expansion in ((16, 64),):
        graph = Index(ndim=768, metric="ip", dtype="f32", connectivity=connectivity, expansion_add=expansion * 2)
        t0 = time.perf_counter()
        graph.add(ids, vectors, threads=os.cpu_count())
        build = time.perf_counter() - t0
        size = len(graph.save())
        for ef in (64, 256):
            graph.expansion_search = ef
            run(f"usearch HNSW M={connectivity} ef_search={ef}", lambda q, g=graph: g.search(q, k).keys, build, size)
    import faiss

    hnsw = faiss.IndexHNSWFlat(768, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 128
    t0 = time.perf_counter()
    hnsw.add(vectors)
    build = time.perf_counter() - t0
    for ef in (64, 256):
        hnsw.hnsw.efSearch = ef
        run(f"faiss HNSWFlat M=16 efSearch={ef}", lambda q, h=hnsw: ids[h.search(q[None], k)[1][0]], build,
            faiss.serialize_index(hnsw).nbytes)  # fmt: skip
    try:
        import apsw
        import sqlite_vec
    except ImportError:
        results["sqlite-vec"] = (
            "not measured: needs apsw and sqlite-vec (the stdlib sqlite3 here cannot load extensions)"
        )
        return results
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vec.db"
        con = apsw.Connection(str(path))
        con.enable_load_extension(True)
        con.load_extension(sqlite_vec.loadable_path())
        con.execute("CREATE VIRTUAL TABLE v USING vec0(embedding float[768] distance_metric=cosine)")
        t0 = time.perf_counter()
        with con:
            con.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                            ((int(i), v.tobytes()) for i, v in zip(ids, vectors, strict=True)))  # fmt: skip
        build = time.perf_counter() - t0
        sql = "SELECT rowid FROM v WHERE embedding MATCH ? AND k = 10 ORDER BY distance"
        run("sqlite-vec vec0 float[768] (brute force)", lambda q: [r[0] for r in con.execute(sql, (q.tobytes(),))],
            build, path.stat().st_size)  # fmt: skip
        con.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", nargs="+", type=Path, required=True, help="folders for the ~10k-chunk index")
    parser.add_argument("--large", nargs="+", type=Path, required=True, help="folders for the ~100k-chunk index")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (indexes are kept there)")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--skip-stores", action="store_true", help="no vector-store comparison")
    parser.add_argument("--build-only", action="store_true", help="build (or update) the indexes and stop")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    embedder = StaticEmbedder()
    results = {"chunk_tokens": args.chunk_tokens, "cpu": _cpu()}
    for name, folders in (("small", args.small), ("large", args.large)):
        results[name] = measure_index(name, folders, args.work, embedder, args)
        print(name, json.dumps(results[name]), flush=True)
    if not args.skip_stores and not args.build_only:
        results["stores"] = compare_stores(args.work / "large.db", embedder, args)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cpu() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    raise SystemExit(main())
