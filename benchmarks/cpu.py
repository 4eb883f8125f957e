"""CPU benchmark: every CPU runtime of EmbeddingGemma against sentence-transformers fp32, same weights, same
texts, same threads, in one process (timings interleaved, so machine noise hits every engine alike).

    HF_HUB_OFFLINE=1 python benchmarks/cpu.py --threads 2 [--corpus corpus.jsonl] [--out results.json]

Engines (each runs only where its package is installed; `pip install -e '.[bench]'`):
- sentence-transformers fp32 (the reference) and our PyTorch fp32;
- ours quantized, `Embedder.from_pretrained(quantize=w8a8|int8|int4|mixed)`: ONNX Runtime on our
  per-channel int8 weights with int8 activations (integer GEMMs), or on our Q8_0 / Q4_0 integers;
- ONNX Runtime fp32 on our exported graph; OpenVINO on the same graph (bf16 where the CPU has it) and
  on our int8 / int4 graphs;
- llama.cpp (llama-cpp-python) on our GGUF exports, Q8_0 / Q4_0 / mixed.

Workloads: one short query (the reference figure's "how do I parse command line arguments?", 15
tokens with its prompt) for latency percentiles; 48 real passages (the first 48 of the benchmark
corpus, or of CPython stdlib blocks if no corpus is given) for throughput, as one `encode_document` call
on the list (batched) and, with --one-per-call N, also one passage per call (and split by length).
Peak RSS is measured in a fresh child process per engine that only loads the model and embeds (RSS
cannot be split inside one process); our quantized engines run the torch-free `OnnxEmbedder` there (and
everywhere here). Quality: per-text cosine of each engine against sentence-transformers fp32 (worst, mean).

Every pass runs each engine once, back to back, so two engines of one pass share the machine's state.
On a noisy host (a shared VM: single runs vary by 10-30%) compare engines with the head-to-head lines:
the median, over passes, of how many times faster one engine was than another in the same pass.
Exported files (built on first use) live in --exports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODEL = "google/embeddinggemma-300m"
QUERY = "how do I parse command line arguments?"
QUERY_PROMPT, DOCUMENT_PROMPT = "task: search result | query: ", "title: none | text: "
REFERENCE = "sentence-transformers fp32"
OUR_SCHEMES = ("w8a8", "int8", "int4", "mixed")
Engine = tuple[Callable[[str], np.ndarray], Callable[[list[str]], np.ndarray]]


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


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def engine_names(skip: set[str]) -> list[str]:
    names = [REFERENCE, "ours fp32 (torch)"]
    names += [f"ours {s} (onnxruntime)" for s in OUR_SCHEMES]
    names += ["onnxruntime fp32 (our export)"]
    if _available("openvino"):
        names += [
            "openvino fp32->bf16 (our export)",
            "openvino int8 (our Q8_0 export)",
            "openvino int4 (our Q4_0 export)",
        ]
    if _available("llama_cpp"):
        names += ["llama.cpp Q8_0 (our GGUF)", "llama.cpp Q4_0 (our GGUF)", "llama.cpp mixed (our GGUF)"]
    return [n for n in names if not any(s in n for s in skip)]


def export_file(exports: Path, fmt: str, scheme: str) -> Path:
    """Our export of the checkpoint, built once and reused while the conversion's version stands (a graph
    written by an older version is not benchmarked as ours)."""
    from embeddinggemma.export import export_checkpoint
    from embeddinggemma.quant.cache import CACHE_VERSION

    exports.mkdir(parents=True, exist_ok=True)
    path = exports / f"embeddinggemma-{scheme}-v{CACHE_VERSION}.{fmt}"
    if not path.exists():
        print(f"exporting {path} (once)", file=sys.stderr, flush=True)
        export_checkpoint(MODEL, fmt, path, scheme=scheme)
    return path


def onnx_file(exports: Path, scheme: str) -> Path:
    """fp32: our export; int8 / int4: the graph our quantized runtime runs (its cache file, the same
    export without the final normalisation, which the Embedder applies)."""
    if scheme == "f32":
        return export_file(exports, "onnx", scheme)
    from embeddinggemma.quant.ondevice import quantized_model_file

    return quantized_model_file(MODEL, scheme)[0]  # converts once if needed


class _SessionModel:
    """Runs an ONNX graph of ours (outputs normalised embeddings) behind the Embedder's padded runner."""

    def __new__(cls, path: Path, threads: int, kind: str):
        import torch
        from torch import nn

        from embeddinggemma.checkpoint import read_checkpoint_info, resolve_checkpoint
        from embeddinggemma.quant.runtime import OnnxEmbeddingModel, OnnxRunner

        config = read_checkpoint_info(resolve_checkpoint(MODEL))[0].config
        if kind == "onnxruntime":
            return OnnxEmbeddingModel(path, config, threads)
        import openvino as ov

        class OpenVinoModel(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.config = config
                self.device, self.dtype = torch.device("cpu"), torch.float32
                core = ov.Core()
                options = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
                self.compiled = core.compile_model(str(path), "CPU", options)
                self.request = self.compiled.create_infer_request()

            def make_runner(self, pad_id, engine="auto", **options):
                return OnnxRunner(self, pad_id=pad_id, **options)

            def forward(self, input_ids, attention_mask, normalize=None):
                feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
                return torch.from_numpy(np.array(self.request.infer(feeds)[0]))

        return OpenVinoModel()


def build_engine(name: str, threads: int, exports: Path) -> Engine:
    """name -> (encode_query(text) -> (E,), encode_documents(texts) -> (N, E)).

    "ours SCHEME (onnxruntime)" run `OnnxEmbedder`, the torch-free path (the same session and
    embeddings as `Embedder.from_pretrained(quantize=...)`), so their RSS children never import torch."""
    if name.startswith("ours") and name.endswith("(onnxruntime)"):
        from embeddinggemma.quant.ondevice import OnnxEmbedder

        ondevice = OnnxEmbedder.from_pretrained(MODEL, quantize=name.split()[1], num_threads=threads)
        return (lambda q: ondevice.encode_query(q), lambda d: ondevice.encode_document(d, batch_size=16))
    import torch

    torch.set_num_threads(threads)
    if name == REFERENCE:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(MODEL, device="cpu")
        return (lambda q: st.encode_query(q), lambda d: st.encode_document(d, batch_size=16))
    if name.startswith("llama.cpp"):
        return _llama_engine(name, threads, exports)
    from embeddinggemma import Embedder

    if name == "ours fp32 (torch)":
        embedder = Embedder.from_pretrained(MODEL, device="cpu")
    else:
        scheme = {"fp32": "f32", "int8": "int8", "int4": "int4"}[name.split()[1].split("-")[0]]
        kind = "openvino" if name.startswith("openvino") else "onnxruntime"
        session = _SessionModel(onnx_file(exports, scheme), threads, kind)
        from embeddinggemma.checkpoint import read_checkpoint_info, resolve_checkpoint

        info = read_checkpoint_info(resolve_checkpoint(MODEL))[0]
        embedder = Embedder.from_model(session, info, tokenizer="tokenizers", max_batch_tokens=1024)
    return (lambda q: embedder.encode_query(q), lambda d: embedder.encode_document(d, batch_size=16))


def _llama_engine(name: str, threads: int, exports: Path) -> Engine:
    import llama_cpp

    scheme = {"Q8_0": "int8", "Q4_0": "int4", "mixed": "mixed"}[name.split()[1]]
    llm = llama_cpp.Llama(
        model_path=str(export_file(exports, "gguf", scheme)),
        embedding=True,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_threads=threads,
        n_threads_batch=threads,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        verbose=False,
    )

    def embed(texts: list[str]) -> np.ndarray:
        out = np.array([llm.embed(text, normalize=False) for text in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return (lambda q: embed([QUERY_PROMPT + q])[0], lambda d: embed([DOCUMENT_PROMPT + t for t in d]))


def settle(seconds: float = 0.2) -> None:
    """Let the previous engine's thread pool go idle: ONNX Runtime, OpenVINO and OpenMP workers spin
    for a while after each call, and on 2 cores a spinning pool halves the next engine's speed."""
    time.sleep(seconds)


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def child_rss(engine: str, threads: int, exports: Path, texts_file: Path) -> dict:
    """Peak RSS (VmHWM) of a fresh process that loads one engine and embeds the workload."""
    command = [sys.executable, __file__, "--child", engine, "--threads", str(threads), "--exports", str(exports)]
    out = subprocess.run([*command, "--texts", str(texts_file)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"RSS child for {engine} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(engine: str, threads: int, exports: Path, texts_file: Path) -> None:
    texts = json.loads(texts_file.read_text())
    query_fn, docs_fn = build_engine(engine, threads, exports)
    query_fn(QUERY)
    docs_fn(texts)
    status = Path("/proc/self/status").read_text()
    print(json.dumps({k: int(status.split(k + ":")[1].split()[0]) // 1024 for k in ("VmHWM", "VmRSS")}))


def file_sizes(exports: Path) -> dict[str, float]:
    """MB on disk of what each engine loads (the quantized runtime: its cached ONNX file)."""
    from embeddinggemma.checkpoint import resolve_checkpoint
    from embeddinggemma.quant.cache import CHECKED_FILES, MODEL_FILE, cache_entry, default_cache_dir

    root = resolve_checkpoint(MODEL)
    sizes = {REFERENCE: sum(p.stat().st_size for p in root.rglob("*.safetensors")) / 1e6}
    for scheme in OUR_SCHEMES:
        entry = cache_entry(root, scheme, default_cache_dir())
        if (entry / MODEL_FILE).exists():
            files = [entry / name for name, _ in CHECKED_FILES]  # graph, tensors, token table
            sizes[f"ours {scheme} (onnxruntime)"] = sum(f.stat().st_size for f in files if f.exists()) / 1e6
    for path in exports.glob("embeddinggemma-*"):
        sizes[path.name] = path.stat().st_size / 1e6
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=None, help="JSONL from ../shared/bench/make_corpus.py")
    parser.add_argument("--query-runs", type=int, default=40)
    parser.add_argument("--passage-runs", type=int, default=2)
    parser.add_argument("--one-per-call", type=int, default=0, help="passes embedding the passages one per call")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip", action="append", default=[], help="leave out engines whose name contains this")
    parser.add_argument("--exports", type=Path, default=Path.home() / ".cache" / "embeddinggemma" / "bench-exports")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.threads, args.exports, args.texts)
        return

    from tokenizers import Tokenizer

    from embeddinggemma.checkpoint import resolve_checkpoint

    docs = passages(args.corpus)
    names = engine_names(set(args.skip))
    runners, skipped = {}, {}
    for name in names:
        try:
            runners[name] = build_engine(name, args.threads, args.exports)
        except Exception as error:  # a runtime that cannot load our file is a result, not a crash
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(f"skipped {name}: {skipped[name]}", file=sys.stderr, flush=True)
    tokenizer = Tokenizer.from_file(str(resolve_checkpoint(MODEL) / "tokenizer.json"))
    doc_lengths = [len(e.ids) for e in tokenizer.encode_batch([DOCUMENT_PROMPT + d for d in docs])]
    doc_tokens = sum(doc_lengths)
    query_tokens = len(tokenizer.encode(QUERY_PROMPT + QUERY).ids)

    latencies: dict[str, list[float]] = {name: [] for name in runners}
    throughput: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, tuple] = {}
    for name, (query_fn, docs_fn) in runners.items():  # warm-up
        outputs[name] = (np.asarray(query_fn(QUERY)), np.asarray(docs_fn(docs)))
    for _ in range(args.query_runs):
        for name, (query_fn, _) in runners.items():
            settle()
            latencies[name].append(timed(query_fn, QUERY)[0] * 1000)
    for _ in range(args.passage_runs):
        for name, (_, docs_fn) in runners.items():
            settle()
            throughput[name].append(len(docs) / timed(docs_fn, docs)[0])
    passage_seconds: dict[str, list[list[float]]] = {name: [] for name in runners}  # [pass][passage]
    for _ in range(args.one_per_call):
        for name, (_, docs_fn) in runners.items():
            settle()
            passage_seconds[name].append([timed(docs_fn, [doc])[0] for doc in docs])
    one_per_call = {name: [len(docs) / sum(seconds) for seconds in passes] for name, passes in passage_seconds.items()}

    rss = {}
    if not args.skip_rss:
        texts_file = Path("/tmp/embeddinggemma_bench_texts.json")
        texts_file.write_text(json.dumps(docs))
        rss = {name: child_rss(name, args.threads, args.exports, texts_file) for name in runners}
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_model": cpu_name(),
        "threads": args.threads,
        "query_tokens": query_tokens,
        "passages": len(docs),
        "passage_tokens": doc_tokens,
        "versions": _versions(),
        "file_mb": file_sizes(args.exports),
        "skipped": skipped,
        "engines": {},
    }
    ref_query, ref_docs = outputs[REFERENCE]
    for name in runners:
        query, documents = outputs[name]
        cos_docs = (documents * ref_docs).sum(1) / np.linalg.norm(documents, axis=1) / np.linalg.norm(ref_docs, axis=1)
        cos_query = float(query @ ref_query / np.linalg.norm(query) / np.linalg.norm(ref_query))
        cosines = np.concatenate([[cos_query], cos_docs])
        lat = sorted(latencies[name])
        results["engines"][name] = {
            "query_p50_ms": statistics.median(lat),
            "query_p90_ms": lat[int(0.9 * (len(lat) - 1))],
            "passages_per_s": max(throughput[name]),
            "passages_per_s_median": statistics.median(throughput[name]),
            "passage_tokens_per_s": max(throughput[name]) * doc_tokens / len(docs),
            **({"one_per_call_per_s": max(one_per_call[name])} if one_per_call[name] else {}),
            "runs": {
                "query_ms": latencies[name],
                "passages_per_s": throughput[name],
                "one_per_call_per_s": one_per_call[name],
            },
            "min_cosine_vs_reference": float(cosines.min()),
            "mean_cosine_vs_reference": float(cosines.mean()),
            **({"peak_rss_mb": rss[name]["VmHWM"]} if rss else {}),
        }
    if args.one_per_call:
        results["one_per_call_by_length"] = by_length(passage_seconds, doc_lengths)
    results["head_to_head"] = head_to_head(results["engines"])
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def paired_speedup(ours: list[float], theirs: list[float], higher_is_faster: bool) -> float | None:
    """Median over passes of how many times faster `ours` was than `theirs` in the same pass."""
    pairs = [(a / b if higher_is_faster else b / a) for a, b in zip(ours, theirs, strict=True) if a > 0 and b > 0]
    return statistics.median(pairs) if pairs else None


# Up to 512 tokens every layer sees the whole text; past it the sliding-window layers attend to a band.
LENGTH_BUCKETS = ((1, 256), (257, 512), (513, 2048))


def by_length(passage_seconds: dict[str, list[list[float]]], lengths: list[int]) -> dict:
    """One passage per call, split by passage length: each engine's passages/s in each bucket (median over
    passes) and its speed against the reference (median over passes of the ratio in the same pass)."""
    out = {}
    for low, high in LENGTH_BUCKETS:
        members = [i for i, n in enumerate(lengths) if low <= n <= high]
        if not members:
            continue
        bucket_seconds = {
            name: [sum(seconds[i] for i in members) for seconds in passes] for name, passes in passage_seconds.items()
        }
        reference = bucket_seconds[REFERENCE]
        out[f"{low}-{high}"] = {
            "passages": len(members),
            "tokens": sum(lengths[i] for i in members),
            "engines": {
                name: {
                    "per_s": len(members) / statistics.median(seconds),
                    "x_reference": paired_speedup(seconds, reference, higher_is_faster=False),
                }
                for name, seconds in bucket_seconds.items()
            },
        }
    return out


def head_to_head(engines: dict) -> dict:
    """Each of our quantized engines against every engine that is not ours, pass by pass."""
    out = {}
    for ours in (name for name in engines if name.startswith("ours") and name.endswith("(onnxruntime)")):
        for other in (name for name in engines if not name.startswith("ours")):
            a, b = engines[ours]["runs"], engines[other]["runs"]
            out[f"{ours} vs {other}"] = {
                "query": paired_speedup(a["query_ms"], b["query_ms"], higher_is_faster=False),
                "passages": paired_speedup(a["passages_per_s"], b["passages_per_s"], higher_is_faster=True),
                "one_per_call": paired_speedup(a["one_per_call_per_s"], b["one_per_call_per_s"], higher_is_faster=True),
                "passes": len(a["passages_per_s"]),
            }
    return out


def print_table(results: dict) -> None:
    ref = results["engines"][REFERENCE]
    print(
        f"CPU: {results['cpu_model']}, {results['threads']} threads; query {results['query_tokens']} tokens; "
        f"{results['passages']} passages, {results['passage_tokens']} tokens; {results['date']}"
    )
    header = (
        f"{'engine':<34}{'p50 ms':>8}{'p90 ms':>8}{'x':>6}{'pass/s':>8}{'x':>6}{'RSS MB':>8}{'min cos':>9}{'mean':>8}"
    )
    print(header)
    for name, row in results["engines"].items():
        print(
            f"{name:<34}{row['query_p50_ms']:>8.1f}{row['query_p90_ms']:>8.1f}"
            f"{ref['query_p50_ms'] / row['query_p50_ms']:>6.2f}{row['passages_per_s']:>8.2f}"
            f"{row['passages_per_s'] / ref['passages_per_s']:>6.2f}"
            f"{row.get('peak_rss_mb', float('nan')):>8.0f}{row['min_cosine_vs_reference']:>9.4f}"
            f"{row['mean_cosine_vs_reference']:>8.4f}"
        )
    if any("one_per_call_per_s" in row for row in results["engines"].values()):
        print("one passage per call (passages/s, x reference):")
        for name, row in results["engines"].items():
            speed = row["one_per_call_per_s"]
            print(f"  {name:<32}{speed:>8.2f}{speed / ref['one_per_call_per_s']:>6.2f}")
        buckets = results.get("one_per_call_by_length", {})
        print("  by passage length (passages/s, x reference paired by pass):")
        titles = (f"{span} tok ({bucket['passages']})" for span, bucket in buckets.items())
        print("  " + " " * 32 + "".join(f"{title:>22}" for title in titles))
        for name in results["engines"]:
            cells = (v["engines"][name] for v in buckets.values())
            print(f"  {name:<32}" + "".join(f"{c['per_s']:>14.2f}  x{c['x_reference']:<5.2f}" for c in cells))
    print("head to head (median over passes of the speed ratio in the same pass; > 1: ours faster):")
    for pair, ratios in results.get("head_to_head", {}).items():
        shown = ", ".join(f"{kind} x{value:.2f}" for kind, value in ratios.items() if kind != "passes" and value)
        print(f"  {pair}: {shown} ({ratios['passes']} passage passes)")
    print("files (MB):", ", ".join(f"{k} {v:.0f}" for k, v in sorted(results["file_mb"].items())))
    for name, reason in results.get("skipped", {}).items():
        print(f"skipped {name}: {reason}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "sentence-transformers", "onnxruntime", "openvino", "llama-cpp-python"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def cpu_name() -> str:
    """The CPU model for result files (the other benchmark scripts import it from here)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
