"""GPU benchmark: our engine against sentence-transformers in one process, random weights of the real
shape (speed does not depend on values), the real tokenizer, the benchmark corpus. One command answers
every GPU target; each step writes the results JSON as it finishes, so a run cut short keeps what it did.

    python ../shared/bench/make_corpus.py corpus.jsonl        # 10,359 CPython stdlib passages
    python benchmarks/gpu.py --checkpoint-files DIR --corpus corpus.jsonl --out benchmarks/results/gpu.json

DIR holds the checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
tokenizer.model; .gz copies are accepted). The script builds a random real-shape model, saves it in the
sentence-transformers layout so both stacks load the same weights, then, in order of importance:

1. the bf16 matmul ceiling (8192^3), for MFU = model FLOPs / time / ceiling;
2. ours with no options (`Embedder.from_pretrained(path, device="cuda")`, `encode_document(corpus)`);
3. sentence-transformers: batch sizes on a quarter of the corpus, the best one on the whole corpus;
4. bf16 parity (per-text cosine, ours vs sentence-transformers);
5. short queries (8-32 tokens): ours on all of them, sentence-transformers on a quarter;
6. first-call times of a new process with cold and with warm kernel caches (subprocesses);
7. tuned variants of the packed engine (attention kernel, token budget, fused or module path);
8. the trainer's step (packed forward + backward + AdamW, bf16 autocast) as `Trainer.fit` runs it,
   GradCache on and off, and the way before (padded to the budget, tokenising inside the step), with
   a profile of one step and the places where the host waits for the GPU;
9. a profile of the default path (top kernels), the GPU's idle time around the engine in a whole call,
   each fused kernel's memory bandwidth, the compiled-layers variant, fp32 parity.
The training steps need the `[train]` extra (pydantic) in the GPU machine's Python.
`--smoke` runs the whole script on CPU with a 2-layer model of the real vocabulary (a check of the
script, not a measurement). `--time-budget` skips the steps that would not finish in time.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from embeddinggemma import Embedder, EmbeddingGemma, EmbeddingGemmaConfig, Gemma3TextConfig
from embeddinggemma.checkpoint import TOKENIZER_FILES, CheckpointInfo, load_checkpoint, save_checkpoint
from embeddinggemma.config import HeadConfig
from embeddinggemma.prompts import DOCUMENT_PROMPT, QUERY_PROMPT
from embeddinggemma.tokenizer import TruncationWarning, load_tokenizer

# -- helpers -----------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable, device: str):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def matmul_ceiling(device: str, size: int = 8192) -> float:
    """Measured bf16 dense matmul TFLOP/s on this device."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(10)], device)
    return 2 * size**3 * 10 / seconds / 1e12


def model_flops(lengths: list[int], config: Gemma3TextConfig) -> float:
    """Forward FLOPs: 2 x non-embedding params per token + attention (QK^T and PV) per layer type."""
    hidden, heads, head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
    per_layer = (
        hidden * (heads * head_dim * 2 + 2 * config.num_key_value_heads * head_dim)
        + 3 * hidden * config.intermediate_size
    )
    n = np.asarray(lengths, dtype=np.float64)
    dense = 2 * per_layer * config.num_hidden_layers * n.sum()
    full = sum(t == "full_attention" for t in config.layer_types)
    window = 2 * config.window_radius + 1
    attention = (
        4
        * heads
        * head_dim
        * (full * (n * n).sum() + (len(config.layer_types) - full) * (n * np.minimum(n, window)).sum())
    )
    return float(dense + attention)


def short_queries(corpus: list[str], count: int, seed: int = 0) -> list[str]:
    """Queries of 8-32 tokens made of corpus words (deterministic)."""
    words = [w for text in corpus[:2000] for w in text.split() if w.isalpha()]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(4, 20))) for _ in range(count)]


def random_model(config: EmbeddingGemmaConfig, device: str, dtype: torch.dtype, seed: int = 0) -> EmbeddingGemma:
    torch.manual_seed(seed)
    with torch.device(device):
        model = EmbeddingGemma(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.3 if "norm" in name else 0.02)
    return model.to(dtype).eval().requires_grad_(False)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def copy_tokenizer(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
        elif (source / f"{name}.gz").exists():
            with gzip.open(source / f"{name}.gz", "rb") as src, open(target / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def read_corpus(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


class Run:
    """Steps with a time budget; results saved after each one, failures recorded and skipped past."""

    def __init__(self, out: Path | None, budget: float, only: list[str] | None = None) -> None:
        self.out, self.budget, self.start = out, budget, time.perf_counter()
        self.only = set(only or ()) | {"env", "setup"} if only else None
        self.results: dict = {"steps": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
            tmp.replace(self.out)

    def step(self, name: str, estimate: float, fn: Callable[[], dict]) -> dict | None:
        if self.only is not None and name not in self.only:
            return None
        left = self.budget - self.elapsed()
        if estimate > left:
            self.results["steps"][name] = {"skipped": f"needs ~{estimate:.0f} s, {left:.0f} s left in the budget"}
            print(f"[{self.elapsed():6.1f}s] {name}: skipped ({left:.0f} s left)", flush=True)
            self.save()
            return None
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        begin = time.perf_counter()
        try:
            result = fn()
            result["step_seconds"] = round(time.perf_counter() - begin, 2)
        except Exception as exc:  # a failing step must not cost the others
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            print(result["traceback"], flush=True)
        self.results["steps"][name] = result
        print(f"[{self.elapsed():6.1f}s] {name}: {json.dumps(_short(result), default=str)}", flush=True)
        self.save()
        return result


def _short(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("traceback", "top_kernels")}


def profiled(fn: Callable[[], object], device: str, top: int = 25) -> dict:
    """Device time per kernel (self time, summed over calls) while `fn` runs, and the wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        wall, _ = timed(fn, device)
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    # kernels only: host-side events (aten ops, and the launch records compiled code gives each Triton
    # kernel under the kernel's own name) also carry the device time of the kernels they launch
    events = averages = list(prof.key_averages())
    if device == "cuda":
        kernels_only = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        events = kernels_only or [e for e in events if not e.key.startswith(("aten::", "cuda"))]
    events.sort(key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) / 1e3
    kernels = [{"name": e.key[:100], "ms": getattr(e, key, 0) / 1e3, "calls": e.count} for e in events[:top]]
    categories: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        kind = next((k for k, words in KERNEL_CATEGORIES if any(w in name for w in words)), "other")
        categories[kind] = categories.get(kind, 0.0) + getattr(e, key, 0) / 1e3
    # the host's side: which calls hold the CPU (a step that waits on the host leaves the GPU idle)
    host = [e for e in averages if e.device_type == torch.autograd.DeviceType.CPU]
    host.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "wall_ms": wall * 1e3,
        "host_ms": sum(e.self_cpu_time_total for e in host) / 1e3,
        "top_host": [{"name": e.key[:100], "ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in host[:top]],
        "device_ms": total,
        "device_busy": total / (wall * 1e3),
        "by_category_ms": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "top_kernels": kernels,
    }


def device_timeline(fn: Callable[[], object], device: str, parts: int = 10) -> dict:
    """When the device is idle while `fn` runs (kernels only are recorded: little host overhead): busy
    fraction overall and per tenth of the run, and the longest idle gaps."""
    from torch.profiler import ProfilerActivity, profile

    if device != "cuda":
        return {"skipped": "no CUDA"}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall, _ = timed(fn, device)
    cuda = torch.autograd.DeviceType.CUDA
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == cuda)
    if not spans:
        return {"wall_ms": wall * 1e3, "kernels": 0}
    start, end = spans[0][0], max(e for _, e in spans)
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    gaps = sorted(((b[0] - a[1]) / 1e3, (a[1] - start) / (end - start)) for a, b in itertools.pairwise(merged))
    width = (end - start) / parts
    busy = [0.0] * parts
    for a, b in merged:  # busy microseconds per tenth
        for k in range(int((a - start) // width), min(parts - 1, int((b - start) // width)) + 1):
            lo, hi = start + k * width, start + (k + 1) * width
            busy[k] += max(0.0, min(b, hi) - max(a, lo))
    return {
        "wall_ms": wall * 1e3,
        "device_span_ms": (end - start) / 1e3,
        "busy": sum(b - a for a, b in merged) / (end - start),
        "busy_per_tenth": [round(b / width, 3) for b in busy],
        "longest_gaps_ms_at": [(round(g, 2), round(at, 3)) for g, at in gaps[-8:]],
        "gaps_over_1ms_total_ms": sum(g for g, _ in gaps if g > 1.0),
    }


# first match wins: where device time goes, in words
KERNEL_CATEGORIES = (
    ("attention", ("flash", "flex", "attention")),
    ("matmul", ("nvjet", "gemm", "cutlass", "sm90_xmma", "cublas")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("our triton kernels", ("_qk_norm_rope", "_add_rmsnorm", "_geglu", "_embed_rmsnorm", "_segment_mean")),
    ("inductor (compiled)", ("triton_",)),
    ("embedding / indexing", ("index", "embedding", "gather", "scatter", "sort", "radix")),
    ("copies / memset", ("copy", "memcpy", "memset", "fill", "cat")),
    ("reductions", ("reduce", "norm")),
)


# -- first call in a new process ---------------------------------------------------------------------


def first_call(model_dir: str, device: str, passages: int) -> dict:
    """Run in a subprocess: load, embed one query, then `passages` passages once the fused kernels are ready."""
    begin = time.perf_counter()
    embedder = Embedder.from_pretrained(model_dir, device=device)
    loaded = time.perf_counter()
    embedder.encode_query("which planet is known as the red planet?")
    _sync(device)
    first = time.perf_counter()
    warm = getattr(embedder.runner, "_warm", None)
    if warm is not None:
        warm.result()
    ready = time.perf_counter()
    texts = [f"passage {i}: " + "the red planet mars is known for its color " * (1 + i % 40) for i in range(passages)]
    embedder.encode_document(texts)
    _sync(device)
    done = time.perf_counter()
    return {
        "load_s": loaded - begin,
        "first_query_s": first - loaded,
        "kernels_ready_after_load_s": ready - loaded,
        "first_passages_s": done - ready,
        "passages": passages,
        "path": getattr(embedder.runner, "path", None),
        "attention": getattr(embedder.runner, "attention", None),
    }


def _child_env(**extra: str) -> dict[str, str]:
    source = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]), **extra}


def first_call_subprocesses(model_dir: Path, device: str, passages: int) -> dict:
    """Two new processes sharing fresh Triton/Inductor cache directories: the first cold, the second warm."""
    caches = Path(tempfile.mkdtemp(prefix="eg-caches-"))
    env = _child_env(TRITON_CACHE_DIR=str(caches / "triton"), TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"))
    out = {}
    for label in ("cold", "warm"):
        begin = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--first-call", str(model_dir), "--device", device, "--passages", str(passages)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            out[label] = {"error": done.stderr[-3000:]}
            continue
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
        out[label]["process_wall_s"] = time.perf_counter() - begin
    shutil.rmtree(caches, ignore_errors=True)
    return out


# -- training ------------------------------------------------------------------------------------------


def training_batches(corpus: list[str], rows: int, count: int, seed: int = 0):
    """Global batches of (query, passage, hard negative) rows from the corpus, prompted as training does."""
    from embeddinggemma.train.data import PromptedExample, collate

    rng = random.Random(seed)
    batches = []
    for _ in range(count):
        examples = []
        for _ in range(rows):
            passage, negative = rng.sample(corpus, 2)
            words = passage.split()
            query = " ".join(words[: rng.randint(5, 25)])
            examples.append(
                PromptedExample(
                    query=QUERY_PROMPT + query,
                    positive=DOCUMENT_PROMPT + passage,
                    negatives=(DOCUMENT_PROMPT + negative,),
                )
            )
        batches.append(collate(examples, dataset="bench", task="query", num_hard_negatives=1))
    return batches


def train_speed(
    model_dir: Path, corpus: list[str], device: str, options: dict, rows: int, steps: int, profile: bool = False
) -> dict:
    """tokens/s of the trainer's own step (forward + backward + clip + AdamW) after `warmup` steps."""
    from embeddinggemma.train import gradcache
    from embeddinggemma.train.losses import EmbeddingGemmaLoss, LossConfig
    from embeddinggemma.train.recipes import OptimConfig, TrainConfig
    from embeddinggemma.train.trainer import Trainer

    # the way before (both False): micro-batches padded to the budget, each step tokenising its own batch
    gradcache.DYNAMIC_TOKENS = not options.pop("padded_to_budget", False)
    ahead = options.pop("prepare_ahead", True)
    model, info = load_checkpoint(model_dir, dtype=torch.float32, device=device)
    tokenizer = load_tokenizer(info.path, info.config.backbone, max_length=512)
    width = info.config.embedding_dim
    dims = tuple(d for d in (768, 512, 256, 128) if d <= width) or (width,)  # the smoke model is narrow
    loss_fn = EmbeddingGemmaLoss(LossConfig(distill_weight=0.0, matryoshka_dims=dims)).to(device)
    freeze = options.pop("freeze_embeddings", False)
    train = TrainConfig(steps=1000, output_dir=tempfile.mkdtemp(prefix="eg-train-"), **options)
    trainer = Trainer(
        model, info, tokenizer, loss_fn, None, optim=OptimConfig(lr=1e-5), train=train, freeze_embeddings=freeze
    )
    batches = training_batches(corpus, rows, 2 + steps)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def run_steps(some: list) -> list[dict]:
        if ahead:  # as `Trainer.fit` runs them: the next batch tokenised on a thread during each step
            return [stats for _, stats in trainer.train_steps(some, len(some))]
        return [trainer.train_step(b) for b in some]

    warm_start = time.perf_counter()
    run_steps(batches[:2])  # compilation and autotuning
    _sync(device)
    warm = time.perf_counter() - warm_start
    losses: list[dict] = []
    seconds, _ = timed(lambda: losses.extend(run_steps(batches[2:])), device)
    tokens = sum(s["tokens"] for s in losses)
    result = {
        "packing": trainer.packing,
        "options": {
            **options,
            "freeze_embeddings": freeze,
            "padded_to_budget": not gradcache.DYNAMIC_TOKENS,
            "prepare_ahead": ahead,
        },
        "rows_per_batch": rows,
        "tokens_per_step": tokens / steps,
        "tokens_per_s": tokens / seconds,
        "step_s": seconds / steps,
        "first_two_steps_s": warm,
        "loss_first_last": [losses[0]["loss"], losses[-1]["loss"]],
    }
    if device.startswith("cuda"):
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        try:  # a diagnostic: its failure must not cost the measurement above
            result["host_syncs"] = host_syncs(lambda: trainer.train_step(batches[-1], trainer.prepare(batches[-1])))
        except Exception as exc:
            result["host_syncs"] = {"error": f"{type(exc).__name__}: {exc}"}
    if profile:
        result["profile"] = profiled(lambda: trainer.train_step(batches[-1]), device)
    return result


def host_syncs(fn: Callable[[], object]) -> dict:
    """Where `fn` makes the host wait for the GPU (CUDA's sync debug mode: a warning per synchronising
    call, located at the Python line that made it). Each one leaves the GPU idle while the host then
    launches the next kernels."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {"count": sum(sites.values()), "sites": dict(sites.most_common())}


# -- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-files", type=Path, help="directory with the tokenizer files")
    parser.add_argument("--corpus", type=Path, help="JSONL (or .jsonl.gz) with a 'text' field")
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--st-batch-sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--train-rows", type=int, default=128, help="rows (query, positive, negative) per step")
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--time-budget", type=float, default=330.0, help="seconds for all steps")
    parser.add_argument("--smoke", action="store_true", help="CPU, 2-layer model, few texts: checks the script")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (env and setup always run)")
    parser.add_argument("--first-call", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--passages", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--train-job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_call:
        print(json.dumps(first_call(args.first_call, args.device, args.passages)))
        return
    if args.train_job:
        job = json.loads(args.train_job)
        corpus = read_corpus(args.corpus)[: 24 if job["smoke"] else None]
        result = train_speed(
            args.checkpoint_files, corpus, args.device, job["options"], job["rows"], job["steps"], job["profile"]
        )
        print(json.dumps(result))
        return
    if not args.checkpoint_files or not args.corpus:
        parser.error("--checkpoint-files and --corpus are required")

    from sentence_transformers import SentenceTransformer

    device = "cpu" if args.smoke else "cuda"
    corpus = read_corpus(args.corpus)
    config = EmbeddingGemmaConfig()
    if args.smoke:
        corpus, args.queries, args.st_batch_sizes, args.train_rows = corpus[:24], 64, [8], 4
        args.time_budget = max(args.time_budget, 1800)
        backbone = Gemma3TextConfig(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=96,
            head_dim=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            layer_types=("sliding_attention", "full_attention"),
        )
        config = EmbeddingGemmaConfig(backbone=backbone, head=HeadConfig(dense_features=(128, 64)))
    run = Run(args.out, args.time_budget, args.only)
    try:  # said at once, not after the inference steps: the training steps need the [train] extra
        import embeddinggemma.train.recipes  # noqa: F401

        training_missing = None
    except ImportError as exc:
        training_missing = str(exc)
        print(f"training steps will be skipped: {exc}", flush=True)
    run.results.update(
        date=time.strftime("%Y-%m-%d"),
        device=torch.cuda.get_device_name() if device == "cuda" else f"cpu (smoke): {platform.processor()}",
        torch=torch.__version__,
        python=platform.python_version(),
        corpus=str(args.corpus),
        smoke=args.smoke,
    )
    with contextlib.suppress(ImportError):
        import triton

        run.results["triton"] = triton.__version__
    state: dict = {}

    def env() -> dict:
        from embeddinggemma.engine import varlen

        reason = varlen.unsupported_reason(torch.device(device), torch.bfloat16, 256)
        return {"matmul_tflops": matmul_ceiling(device, 1024 if args.smoke else 8192), "varlen_unsupported": reason}

    def setup() -> dict:
        workdir = Path(tempfile.mkdtemp(prefix="eg-bench-"))
        model = random_model(config, device, torch.bfloat16)
        info = CheckpointInfo(path=workdir, config=config, prompts={"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT})
        copy_tokenizer(args.checkpoint_files, workdir / "tok")
        save_checkpoint(model.cpu(), workdir / "model", tokenizer_dir=workdir / "tok", prompts=info.prompts)
        del model
        state["model_dir"] = workdir / "model"
        tokenizer_probe = load_tokenizer(state["model_dir"], config.backbone, max_length=config.max_seq_length)
        state["lengths"] = [len(ids) for ids in tokenizer_probe.encode([DOCUMENT_PROMPT + t for t in corpus])]
        state["queries"] = short_queries(corpus, args.queries)
        state["query_lengths"] = [
            len(ids) for ids in tokenizer_probe.encode([QUERY_PROMPT + q for q in state["queries"]])
        ]
        return {
            "passages": len(corpus),
            "corpus_tokens": sum(state["lengths"]),
            "mean_tokens": float(np.mean(state["lengths"])),
            "max_tokens": max(state["lengths"]),
            "queries": len(state["queries"]),
            "query_tokens": sum(state["query_lengths"]),
        }

    def ours_default() -> dict:
        load_s, ours = timed(lambda: Embedder.from_pretrained(state["model_dir"], device=device), device)
        first_s, _ = timed(lambda: ours.encode_query("which planet is known as the red planet?"), device)
        warm = getattr(ours.runner, "_warm", None)
        ready_s, _ = timed(lambda: warm.result() if warm is not None else None, device)
        ours.encode_document(corpus[:256])
        tokens = sum(state["lengths"])
        times = []
        for _ in range(2):
            seconds, out = timed(lambda: ours.encode_document(corpus), device)
            times.append(seconds)
        state["ours"], state["ours_out"] = ours, out
        best = min(times)
        flops = model_flops(state["lengths"], config.backbone)
        tflops = run.results["steps"].get("env", {}).get("matmul_tflops")
        return {
            "load_s": load_s,
            "first_query_s": first_s,
            "kernels_ready_s": ready_s,
            "attention": getattr(ours.runner, "attention", None),
            "path": getattr(ours.runner, "path", None),
            "max_batch_tokens": getattr(ours.runner, "max_batch_tokens", None),
            "tokenizer_workers": ours._processes.workers if ours._processes is not None else 0,
            "seconds": times,
            "tokens_per_s": tokens / best,
            "mfu": flops / best / (tflops * 1e12) if tflops else None,
        }

    def sentence_transformers_best() -> dict:
        st = SentenceTransformer(str(state["model_dir"]), device=device, model_kwargs={"torch_dtype": torch.bfloat16})
        state["st"] = st
        quarter = corpus[::4]
        quarter_tokens = sum(state["lengths"][::4])
        sweep = {}
        for batch_size in args.st_batch_sizes:
            st.encode_document(quarter[:batch_size], batch_size=batch_size)
            seconds, _ = timed(lambda bs=batch_size: st.encode_document(quarter, batch_size=bs), device)
            sweep[batch_size] = quarter_tokens / seconds
        best = max(sweep, key=sweep.get)
        seconds, out = timed(lambda: st.encode_document(corpus, batch_size=best), device)
        state["st_out"], state["st_best_batch"] = out, best
        return {
            "quarter_sweep_tokens_per_s": sweep,
            "best_batch_size": best,
            "tokens_per_s": sum(state["lengths"]) / seconds,
        }

    def parity() -> dict:
        c = cosines(state["ours_out"], state["st_out"])
        return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean()), "texts": len(c)}

    def queries() -> dict:
        ours, queries, lengths = state["ours"], state["queries"], state["query_lengths"]
        ours.encode_query(queries[:2048])
        seconds, _ = timed(lambda: ours.encode_query(queries), device)
        quarter = queries[::4]
        st = state["st"]
        st.encode_query(quarter[:256], batch_size=state["st_best_batch"])
        st_seconds, _ = timed(lambda: st.encode_query(quarter, batch_size=state["st_best_batch"]), device)
        in_process = Embedder(ours.model, ours.tokenizer, ours.prompts, runner=ours.runner, tokenizer_workers=0)
        in_process_s, _ = timed(lambda: in_process.encode_query(queries), device)
        return {
            "ours_tokens_per_s": sum(lengths) / seconds,
            "ours_without_tokenizer_workers_tokens_per_s": sum(lengths) / in_process_s,
            "st_tokens_per_s": sum(lengths[::4]) / st_seconds,
            "speedup": (sum(lengths) / seconds) / (sum(lengths[::4]) / st_seconds),
            "mean_query_tokens": float(np.mean(lengths)),
            **breakdown(ours, [QUERY_PROMPT + q for q in queries], sum(lengths)),
        }

    def breakdown(ours, prompted: list[str], tokens: int) -> dict:
        """Where the end-to-end time goes: tokenisation alone, the engine alone on token ids, and the
        device's busy fraction while the engine runs."""
        tokenize_s, token_ids = timed(lambda: ours.tokenizer.encode(prompted), device)
        processes = ours._tokenizer_processes(len(prompted))
        workers_s = None
        if processes is not None:
            while not processes.ready:
                time.sleep(0.05)
            workers_s, token_ids = timed(lambda: processes.encode(prompted), device)  # int32 rows: fast packing
        chunks = [token_ids[i : i + 16384] for i in range(0, len(token_ids), 16384)]
        runner = ours.runner
        engine = runner.embed_chunks if hasattr(runner, "embed_chunks") else lambda cs: map(runner.embed, cs)
        engine_s, _ = timed(lambda: list(engine(chunks)), device)
        prof = profiled(lambda: list(engine(chunks)), device)
        return {
            "tokenize_only_tokens_per_s": tokens / tokenize_s,
            "tokenize_workers": processes.workers if processes is not None else 0,
            "tokenize_workers_tokens_per_s": tokens / workers_s if workers_s else None,
            "engine_only_tokens_per_s": tokens / engine_s,
            "engine_profile": prof,
        }

    def kernels() -> dict:
        """Memory bandwidth of each fused kernel on a full batch's shapes (65,536 tokens), and the GeGLU
        kernel's column blocking before (2 x 1,024 columns for 1,152) and now."""
        from embeddinggemma.engine import fused
        from embeddinggemma.engine import kernels as K

        if device != "cuda":
            return {"skipped": "the Triton kernels run on CUDA"}
        bb = config.backbone
        n = 4096 if args.smoke else 65536
        c, heads, kv, d, inter = (
            bb.hidden_size,
            bb.num_attention_heads,
            bb.num_key_value_heads,
            bb.head_dim,
            bb.intermediate_size,
        )
        bf = dict(device=device, dtype=torch.bfloat16)
        qkv = torch.randn(n, (heads + 2 * kv) * d, **bf)
        branch, residual, w = torch.randn(n, c, **bf), torch.randn(n, c, **bf), torch.randn(c, **bf)
        gate_up = torch.randn(n, 2 * inter, **bf)
        positions = torch.randint(0, 512, (n,), device=device)
        cos, sin = fused.rope_tables(bb.max_position_embeddings, d, bb.rope_theta, torch.bfloat16, torch.device(device))
        qw, kw = torch.randn(d, **bf), torch.randn(d, **bf)
        element = 2  # bytes
        cases = {
            # bytes read + written per call
            "qk_norm_rope": (
                lambda: K.qk_norm_rope(qkv, qw, kw, positions, cos, sin, heads, kv, 1e-6),
                2 * qkv.numel() * element,
            ),
            "add_rmsnorm": (lambda: K.add_rmsnorm(branch, residual, w, w, 1e-6), 4 * branch.numel() * element),
            "geglu": (lambda: K.geglu(gate_up), 1.5 * gate_up.numel() * element),
            "geglu_before": (lambda: K.geglu(gate_up, block_cols=1024), 1.5 * gate_up.numel() * element),
        }
        out = {}
        for name, (fn, nbytes) in cases.items():
            for _ in range(3):
                fn()
            seconds, _ = timed(lambda f=fn: [f() for _ in range(20)], device)
            out[name] = {"us": seconds / 20 * 1e6, "gb_per_s": nbytes * 20 / seconds / 1e9}
        out["geglu_speedup"] = out["geglu_before"]["us"] / out["geglu"]["us"]
        return out

    def tuned() -> dict:
        base = state["ours"]
        variants = {
            "varlen-fused-128k": dict(attention="varlen", path="fused", max_batch_tokens=131072),
            "varlen-fused-32k": dict(attention="varlen", path="fused", max_batch_tokens=32768),
            "varlen-modules-64k": dict(attention="varlen", path="modules", max_batch_tokens=65536),
            "default-without-tokenizer-workers": dict(tokenizer_workers=0),
        }
        tokens = sum(state["lengths"])
        out = {}
        info = CheckpointInfo(
            path=state["model_dir"], config=config, prompts={"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT}
        )
        for name, options in variants.items():
            if run.elapsed() > run.budget - 20:
                out[name] = {"skipped": "time budget"}
                continue
            try:
                embedder = Embedder.from_model(base.model, info, engine="packed", **options)
                warm = getattr(embedder.runner, "_warm", None)
                if warm is not None:
                    warm.result()
                embedder.encode_document(corpus[:512])
                processes = embedder._tokenizer_processes(len(corpus))  # started, as after a first big call
                while processes is not None and not processes.ready:
                    time.sleep(0.05)
                embedder.encode_document(corpus[-4096:])  # the workers' first pieces (cold caches)
                seconds, _ = timed(lambda e=embedder: e.encode_document(corpus), device)
                out[name] = {
                    "tokens_per_s": tokens / seconds,
                    "attention": embedder.runner.attention,
                    "path": embedder.runner.path,
                }
                embedder.close()
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        default = run.results["steps"].get("ours_default", {}).get("tokens_per_s") or 0.0
        best = max([default] + [v.get("tokens_per_s", 0.0) for v in out.values()])
        return {"variants": out, "best_tokens_per_s": best, "default_over_best": default / best if best else None}

    def first_calls() -> dict:
        return first_call_subprocesses(state["model_dir"], device, 20 if args.smoke else 1000)

    def training(options: dict, profile: bool = False) -> Callable[[], dict]:
        """Each configuration in a new process: compiled graphs of one must not count against another's
        recompilation limit (a training job runs one configuration)."""
        job = dict(options=options, rows=args.train_rows, steps=args.train_steps, profile=profile, smoke=args.smoke)

        def measure() -> dict:
            if training_missing:
                return {"skipped": training_missing}
            command = [sys.executable, __file__, "--train-job", json.dumps(job), "--device", device]
            command += ["--checkpoint-files", str(state["model_dir"]), "--corpus", str(args.corpus)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_child_env())
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            return json.loads(done.stdout.strip().splitlines()[-1])

        return measure

    def corpus_breakdown() -> dict:
        return breakdown(state["ours"], [DOCUMENT_PROMPT + t for t in corpus], sum(state["lengths"]))

    def end_to_end_timeline() -> dict:
        return device_timeline(lambda: state["ours"].encode_document(corpus), device)

    def compiled_layers() -> dict:
        info = CheckpointInfo(
            path=state["model_dir"], config=config, prompts={"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT}
        )
        model, _ = load_checkpoint(state["model_dir"], dtype=torch.bfloat16, device=device)
        embedder = Embedder.from_model(model, info, engine="packed", compile=True)
        first_s, _ = timed(lambda: embedder.encode_document(corpus[:512]), device)
        embedder.encode_document(corpus[512:2048])
        seconds, _ = timed(lambda: embedder.encode_document(corpus), device)
        return {
            "first_call_s": first_s,
            "tokens_per_s": sum(state["lengths"]) / seconds,
            "attention": embedder.runner.attention,
        }

    def fp32_parity() -> dict:
        sample = corpus[:512]
        ours = Embedder.from_pretrained(state["model_dir"], device=device, dtype="float32", engine="padded")
        st = SentenceTransformer(str(state["model_dir"]), device=device, model_kwargs={"torch_dtype": torch.float32})
        c = cosines(ours.encode_document(sample), st.encode_document(sample, batch_size=64))
        return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean()), "texts": len(c)}

    run.step("env", 5, env)
    run.step("setup", 20, setup)
    if "model_dir" not in state:
        return
    warnings.simplefilter("ignore", TruncationWarning)  # the corpus has a few passages over 2,048 tokens
    run.step("ours_default", 20, ours_default)
    run.step("sentence_transformers", 45, sentence_transformers_best)
    if "st_out" in state:
        run.step("parity_bf16", 1, parity)
        run.step("queries", 20, queries)
    run.step("first_call", 40, first_calls)
    plain = dict(micro_batch_tokens=65536, gradient_cache=False)
    run.step("train_no_gradcache_64k", 30, training(plain, profile=True))
    run.step("train_before_64k", 25, training(dict(plain, padded_to_budget=True, prepare_ahead=False)))
    run.step("train_gradcache_16k", 30, training(dict(micro_batch_tokens=16384, gradient_cache=True)))
    run.step("train_gradcache_64k", 20, training(dict(micro_batch_tokens=65536, gradient_cache=True)))
    run.step("corpus_breakdown", 10, corpus_breakdown)
    run.step("end_to_end_timeline", 5, end_to_end_timeline)
    run.step("kernels", 10, kernels)
    run.step("tuned", 30, tuned)
    run.step("train_frozen_table_64k", 15, training(dict(plain, freeze_embeddings=True)))
    run.step("compiled_layers", 40, compiled_layers)
    run.step("fp32_parity", 15, fp32_parity)
    # the two training changes apart (static shapes with the batch prepared ahead, dynamic ones prepared in
    # the step): diagnostics, last, so that they never take the budget of the steps above
    run.step("train_padded_64k", 25, training(dict(plain, padded_to_budget=True), profile=True))
    run.step("train_inline_64k", 25, training(dict(plain, prepare_ahead=False)))
    run.results["total_s"] = run.elapsed()
    run.save()
    print_table(run.results)


def print_table(results: dict) -> None:
    steps = results["steps"]

    def get(step: str, key: str):
        value = steps.get(step, {}).get(key)
        return f"{value:,.0f}" if isinstance(value, int | float) else "-"

    st = steps.get("sentence_transformers", {}).get("tokens_per_s")
    ours = steps.get("ours_default", {}).get("tokens_per_s")
    tuned = steps.get("tuned", {}).get("best_tokens_per_s")
    rows = [
        ("bf16 matmul ceiling (TFLOP/s)", get("env", "matmul_tflops"), ""),
        ("sentence-transformers best batch (tokens/s)", get("sentence_transformers", "tokens_per_s"), "1.0x"),
        ("ours, default (tokens/s)", get("ours_default", "tokens_per_s"), f"{ours / st:.1f}x" if ours and st else ""),
        (
            "ours, best tuned (tokens/s)",
            get("tuned", "best_tokens_per_s"),
            f"{tuned / st:.1f}x" if tuned and st else "",
        ),
        ("short queries, ours (tokens/s)", get("queries", "ours_tokens_per_s"), ""),
        ("short queries, sentence-transformers (tokens/s)", get("queries", "st_tokens_per_s"), ""),
        ("training, GradCache, 16k micro-batches (tokens/s)", get("train_gradcache_16k", "tokens_per_s"), ""),
        ("training, no GradCache, 64k (tokens/s)", get("train_no_gradcache_64k", "tokens_per_s"), ""),
        ("  the same padded to 64k, tokenising in the step (tokens/s)", get("train_before_64k", "tokens_per_s"), ""),
        ("  padded to 64k, tokenised ahead (tokens/s)", get("train_padded_64k", "tokens_per_s"), ""),
        ("  not padded, tokenising in the step (tokens/s)", get("train_inline_64k", "tokens_per_s"), ""),
        ("training, GradCache, 64k micro-batches (tokens/s)", get("train_gradcache_64k", "tokens_per_s"), ""),
        ("training, frozen table, 64k (tokens/s)", get("train_frozen_table_64k", "tokens_per_s"), ""),
    ]
    print(f"\n{results.get('device')}  torch {results.get('torch')}  {results.get('date')}")
    for label, value, ratio in rows:
        print(f"  {label:<52} {value:>14} {ratio:>6}")
    parity = steps.get("parity_bf16", {})
    if "min_cosine" in parity:
        print(f"  bf16 parity vs sentence-transformers: min cosine {parity['min_cosine']:.5f}")
    first = steps.get("first_call", {})
    for label in ("cold", "warm"):
        if "first_query_s" in first.get(label, {}):
            f = first[label]
            print(
                f"  new process, {label} caches: load {f['load_s']:.1f} s, first query {f['first_query_s']:.2f} s, "
                f"kernels ready {f['kernels_ready_after_load_s']:.1f} s"
            )


if __name__ == "__main__":
    main()
