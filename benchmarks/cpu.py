"""CPU benchmark: our engine (fp32 and int8) against sentence-transformers fp32, same weights, same texts,
same threads, in one process (timings interleaved, so machine noise hits every engine alike).

    HF_HUB_OFFLINE=1 python benchmarks/cpu.py --threads 2 [--corpus corpus.jsonl] [--out results.json]

Workloads: one short query (the reference figure's "how do I parse command line arguments?", 15
tokens with its prompt) for latency percentiles; 48 real passages (the first 48 of the benchmark
corpus, or of CPython stdlib blocks if no corpus is given) for throughput. Peak RSS is measured in a
fresh child process per engine that only loads the model and embeds (RSS cannot be split inside one
process). Quality: per-text cosine of each engine against sentence-transformers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODEL = "google/embeddinggemma-300m"
QUERY = "how do I parse command line arguments?"


def passages(corpus: Path | None, count: int = 48) -> list[str]:
    if corpus is not None:
        with corpus.open(encoding="utf-8") as handle:
            return [json.loads(line)["text"] for _, line in zip(range(count), handle, strict=False)]
    import sysconfig

    texts: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        texts += [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n") if len(b.strip()) > 200][:2]
        if len(texts) >= count:
            break
    return texts[:count]


def engines(threads: int) -> dict:
    """name -> (encode_query(text), encode_documents(texts)) callables."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embeddinggemma import Embedder

    torch.set_num_threads(threads)
    st = SentenceTransformer(MODEL, device="cpu")
    fp32 = Embedder.from_pretrained(MODEL, device="cpu")
    int8 = Embedder.from_pretrained(MODEL, quantize="int8")
    return {
        "sentence-transformers fp32": (lambda q: st.encode_query(q), lambda d: st.encode_document(d, batch_size=16)),
        "embeddinggemma fp32": (lambda q: fp32.encode_query(q), lambda d: fp32.encode_document(d, batch_size=16)),
        "embeddinggemma int8": (lambda q: int8.encode_query(q), lambda d: int8.encode_document(d, batch_size=16)),
    }


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def child_rss(engine: str, threads: int, texts_file: Path) -> dict:
    """Peak RSS (VmHWM) of a fresh process that loads one engine and embeds the workload."""
    code = f"""
import json, torch
torch.set_num_threads({threads})
texts = json.load(open({str(texts_file)!r}))
if {engine!r} == "sentence-transformers fp32":
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer({MODEL!r}, device="cpu"); m.encode_query({QUERY!r}); m.encode_document(texts, batch_size=16)
else:
    from embeddinggemma import Embedder
    kw = dict(quantize="int8") if {engine!r}.endswith("int8") else dict(device="cpu")
    m = Embedder.from_pretrained({MODEL!r}, **kw); m.encode_query({QUERY!r}); m.encode_document(texts, batch_size=16)
status = open("/proc/self/status").read()
print(json.dumps({{k: int(status.split(k + ":")[1].split()[0]) // 1024 for k in ("VmHWM", "VmRSS")}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=None, help="JSONL from ../shared/bench/make_corpus.py")
    parser.add_argument("--query-runs", type=int, default=40)
    parser.add_argument("--passage-runs", type=int, default=2)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    from tokenizers import Tokenizer

    docs = passages(args.corpus)
    runners = engines(args.threads)
    from huggingface_hub import snapshot_download

    tokenizer = Tokenizer.from_file(str(Path(snapshot_download(MODEL, local_files_only=True)) / "tokenizer.json"))
    doc_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(["title: none | text: " + d for d in docs]))
    query_tokens = len(tokenizer.encode("task: search result | query: " + QUERY).ids)

    latencies: dict[str, list[float]] = {name: [] for name in runners}
    throughput: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, tuple] = {}
    for name, (query_fn, docs_fn) in runners.items():  # warm-up (and int8 cache creation)
        outputs[name] = (query_fn(QUERY), docs_fn(docs))
    for _ in range(args.query_runs):
        for name, (query_fn, _) in runners.items():
            latencies[name].append(timed(query_fn, QUERY)[0] * 1000)
    for _ in range(args.passage_runs):
        for name, (_, docs_fn) in runners.items():
            throughput[name].append(doc_tokens / timed(docs_fn, docs)[0])

    reference = "sentence-transformers fp32"
    ref_query, ref_docs = outputs[reference]
    rss = {}
    if not args.skip_rss:
        texts_file = Path("/tmp/embeddinggemma_bench_texts.json")
        texts_file.write_text(json.dumps(docs))
        rss = {name: child_rss(name, args.threads, texts_file) for name in runners}
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "threads": args.threads,
        "query_tokens": query_tokens,
        "passages": len(docs),
        "passage_tokens": doc_tokens,
        "engines": {},
    }
    for name in runners:
        query, documents = outputs[name]
        cos_docs = (documents * ref_docs).sum(1) / np.linalg.norm(documents, axis=1) / np.linalg.norm(ref_docs, axis=1)
        cos_query = float(query @ ref_query / np.linalg.norm(query) / np.linalg.norm(ref_query))
        lat = sorted(latencies[name])
        results["engines"][name] = {
            "query_p50_ms": statistics.median(lat),
            "query_p90_ms": lat[int(0.9 * (len(lat) - 1))],
            "query_p99_ms": lat[int(0.99 * (len(lat) - 1))],
            "passage_tokens_per_s": max(throughput[name]),
            "min_cosine_vs_reference": float(min(cos_query, cos_docs.min())),
            **({"peak_rss_mb": rss[name]["VmHWM"]} if rss else {}),
        }
    ref = results["engines"][reference]
    print(
        f"CPU: {results['cpu_model']}, {args.threads} threads; query {query_tokens} tokens; "
        f"{len(docs)} passages, {doc_tokens} tokens"
    )
    print(f"{'engine':<28}{'p50 ms':>9}{'p90 ms':>9}{'x':>7}{'tok/s':>9}{'x':>7}{'RSS MB':>9}{'min cos':>10}")
    for name, row in results["engines"].items():
        print(
            f"{name:<28}{row['query_p50_ms']:>9.1f}{row['query_p90_ms']:>9.1f}"
            f"{ref['query_p50_ms'] / row['query_p50_ms']:>7.2f}{row['passage_tokens_per_s']:>9.0f}"
            f"{row['passage_tokens_per_s'] / ref['passage_tokens_per_s']:>7.2f}"
            f"{row.get('peak_rss_mb', float('nan')):>9.0f}{row['min_cosine_vs_reference']:>10.5f}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
