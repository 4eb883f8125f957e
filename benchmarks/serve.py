"""Load test of `embeddinggemma serve` on loopback: throughput and latency at 1, 8 and 64 concurrent clients,
short queries and passages, against `Embedder.encode` called one request at a time in one process; then a
burst beyond the server's queue (429s, no 5xx, bounded memory).

    HF_HUB_OFFLINE=1 python benchmarks/serve.py [--corpus corpus.jsonl] [--threads 2] [--requests 256]
        [--seconds 60] [--out results.json] [-- extra serve flags, e.g. --dtype bfloat16]

Every scenario is bounded: at most `--requests` requests and `--seconds` seconds of sending (requests still
running `--grace` seconds later are cancelled, i.e. their clients disconnect, and counted as such). Clients
are closed-loop: each sends one text per request (`/v1/embeddings`, base64, as OpenAI's client does) and
the next as soon as the answer arrives. The baseline runs in this process, in a slice right before each
scenario (so "vs one at a time" compares like with like on a busy machine); the server is a separate
process so the load generator does not share its interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import cpu_name, passages  # the same passages as the CPU benchmark

MODEL = "google/embeddinggemma-300m"
VERBS = ["parse", "sort", "read", "merge", "validate", "serialize", "compress", "cache"]
OBJECTS = ["command line arguments", "a csv file", "json from a socket", "two dictionaries", "an email address",
           "a dataclass", "a log file", "http responses"]  # fmt: skip
QUERIES = [f"how do I {verb} {thing} in python?" for verb in VERBS for thing in OBJECTS]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(latencies: list[float], elapsed: float, statuses: Counter, cancelled: int = 0) -> dict:
    return {
        "completed": len(latencies),
        "seconds": round(elapsed, 2),
        "throughput": len(latencies) / elapsed if elapsed else 0.0,
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "statuses": dict(sorted(statuses.items())),
        "cancelled": cancelled,
    }


class Baseline:
    """`Embedder.encode`, one request at a time, in this process. A slice of it runs right before each
    server scenario (the server idles meanwhile), so a change in the machine's load between the two
    cannot fake a ratio; the baseline row pools the slices."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from embeddinggemma import Embedder

        torch.set_num_threads(args.threads)
        warnings.simplefilter("ignore")  # over-long passages are cut, as the server does on request
        self.embedder = Embedder.from_pretrained(args.model, **server_load_options(args.serve_args))
        self.latencies: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}

    def run(self, texts: list[str], kind: str, seconds: float, max_requests: int) -> float:
        """One slice; returns its throughput (requests/s)."""
        embedder = self.embedder
        encode = embedder.encode_query if kind == "queries" else (lambda text: embedder.encode_document([text]))
        if kind not in self.latencies:
            for text in texts[:3]:
                encode(text)  # warm-up
            self.latencies[kind], self.seconds[kind] = [], 0.0
        latencies = self.latencies[kind]
        count = 0
        started = time.perf_counter()
        while count < max_requests and time.perf_counter() - started < seconds:
            begin = time.perf_counter()
            encode(texts[len(latencies) % len(texts)])
            latencies.append(time.perf_counter() - begin)
            count += 1
        elapsed = time.perf_counter() - started
        self.seconds[kind] += elapsed
        return count / elapsed

    def summary(self, kind: str) -> dict:
        return summarize(self.latencies[kind], self.seconds[kind], Counter())


def server_load_options(serve_args: list[str]) -> dict:
    """The serve flags that change how the model loads, so the baseline loads it the same way."""
    options = {}
    for flag, key in (("--dtype", "dtype"), ("--quantize", "quantize")):
        if flag in serve_args:
            options[key] = serve_args[serve_args.index(flag) + 1]
    options.setdefault("device", None if "quantize" in options else "cpu")
    return {k: v for k, v in options.items() if v is not None}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "embeddinggemma.cli", "serve", "--model", args.model, "--host", "127.0.0.1"]
    command += ["--port", "0", "--num-threads", str(args.threads), "--max-concurrent-requests", str(args.queue)]
    command += args.serve_args
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, found.group(1)
    raise RuntimeError(f"the server did not start (exit status {process.wait()})")


def rss_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(status.split(key + ":")[1].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}


def server_counters(url: str) -> dict[str, float]:
    import httpx2 as httpx

    wanted = ("embeddinggemma_batch_texts_sum", "embeddinggemma_batch_texts_count", "embeddinggemma_batch_tokens_sum")
    text = httpx.get(url + "/metrics", timeout=30).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


def body(text: str, kind: str, model: str) -> dict:
    request = {"input": text, "model": model, "encoding_format": "base64"}
    if kind == "passages":
        request.update(task="document", truncate=True)  # as the baseline, which cuts with a warning
    return request


async def closed_loop(url: str, texts: list[str], kind: str, clients: int, args: argparse.Namespace) -> dict:
    import httpx2 as httpx

    latencies: list[float] = []
    statuses: Counter = Counter()
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + args.seconds
        last_done = started

        async def worker() -> None:
            nonlocal sent, last_done
            while sent < args.requests and time.perf_counter() < deadline:
                text = texts[sent % len(texts)]
                sent += 1
                begin = time.perf_counter()
                response = await client.post("/v1/embeddings", json=body(text, kind, args.model))
                last_done = time.perf_counter()
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(last_done - begin)

        tasks = [asyncio.ensure_future(worker()) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=args.seconds + args.grace)
        for task in pending:  # the clients hang up; the server drops their queued work
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return summarize(latencies, last_done - started, statuses, cancelled=len(pending))


async def burst(url: str, count: int, model: str) -> dict:
    """`count` single-query requests at once, each on its own connection."""
    import httpx2 as httpx

    statuses: Counter = Counter()
    retry_after: set[str] = set()
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:

        async def one(i: int) -> None:
            try:
                response = await client.post("/v1/embeddings", json=body(QUERIES[i % len(QUERIES)], "queries", model))
            except httpx.TransportError as exc:
                statuses[f"connection error: {type(exc).__name__}"] += 1
                return
            statuses[response.status_code] += 1
            if response.status_code == 429:
                retry_after.add(response.headers.get("retry-after", "missing"))

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        health = (await client.get("/health")).status_code
    return {
        "requests": count,
        "seconds": round(time.perf_counter() - started, 2),
        "statuses": dict(sorted(statuses.items(), key=str)),
        "retry_after": sorted(retry_after),
        "health_after": health,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--corpus", type=Path, help="benchmark corpus JSONL (passages); default: stdlib blocks")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads, both sides")
    parser.add_argument("--requests", type=int, default=256, help="at most this many requests per scenario")
    parser.add_argument("--seconds", type=float, default=60, help="at most this long sending, per scenario")
    parser.add_argument("--baseline-seconds", type=float, default=20, help="one-at-a-time slice before each scenario")
    parser.add_argument("--grace", type=float, default=60, help="then this long for answers still due")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--kinds", nargs="+", choices=["queries", "passages"], default=["queries", "passages"])
    parser.add_argument("--queue", type=int, default=128, help="the server's --max-concurrent-requests")
    parser.add_argument("--burst", type=int, default=512, help="requests fired at once at the end (0: none)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("serve_args", nargs="*", help="extra `embeddinggemma serve` flags (after --)")
    args = parser.parse_args()

    workloads = {"queries": QUERIES, "passages": passages(args.corpus, 64)}
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "threads": args.threads,
        "command": " ".join(sys.argv),
        "baseline": {},
        "scenarios": [],
    }
    base = Baseline(args)
    process, url = start_server(args)
    try:
        results["rss_start"] = rss_mb(process.pid)
        for kind in args.kinds:
            for clients in args.clients:
                adjacent = base.run(workloads[kind], kind, args.baseline_seconds, args.requests)
                before = server_counters(url)
                scenario = asyncio.run(closed_loop(url, workloads[kind], kind, clients, args))
                after = server_counters(url)
                batches = after["embeddinggemma_batch_texts_count"] - before["embeddinggemma_batch_texts_count"]
                texts = after["embeddinggemma_batch_texts_sum"] - before["embeddinggemma_batch_texts_sum"]
                scenario.update(kind=kind, clients=clients, mean_batch_texts=texts / batches if batches else 0.0)
                scenario.update(baseline_throughput=adjacent, vs_baseline=scenario["throughput"] / adjacent)
                results["scenarios"].append(scenario)
                print(
                    f"{kind} x{clients}: {fmt(scenario)}; one at a time just before: {adjacent:.2f}/s",
                    file=sys.stderr,
                    flush=True,
                )
            results["baseline"][kind] = base.summary(kind)
        results["rss_before_burst"] = rss_mb(process.pid)
        if args.burst:
            results["burst"] = asyncio.run(burst(url, args.burst, args.model))
            results["rss_after_burst"] = rss_mb(process.pid)
            print(f"burst: {results['burst']}", file=sys.stderr, flush=True)
    finally:
        process.terminate()
        results["server_exit_status"] = process.wait(120)
    results["targets"] = check_targets(results)
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(results["targets"].values()) else 1


def fmt(result: dict) -> str:
    return (
        f"{result['completed']} in {result['seconds']} s, {result['throughput']:.2f}/s, p50 {result['p50']:.3f} s, "
        f"p99 {result['p99']:.3f} s, statuses {result['statuses']}, cancelled {result['cancelled']}"
    )


def check_targets(results: dict) -> dict[str, bool]:
    targets: dict[str, bool] = {}
    crowd = next((s for s in results["scenarios"] if s["kind"] == "queries" and s["clients"] == 64), None)
    if crowd:
        targets["64 clients x short queries: throughput >= 3x one-at-a-time"] = crowd["vs_baseline"] >= 3
        targets["64 clients x short queries: p99 < 2 s"] = crowd["p99"] < 2
    targets["zero 5xx in every scenario"] = not any(
        str(status).startswith("5") for s in results["scenarios"] for status in s["statuses"]
    )
    if "burst" in results:
        statuses = results["burst"]["statuses"]
        targets["burst beyond the queue: 429s, no 5xx, healthy after"] = (
            statuses.get(429, 0) > 0
            and not any(str(status).startswith("5") for status in statuses)
            and results["burst"]["health_after"] == 200
        )
    targets["SIGTERM: drained, exit status 0"] = results["server_exit_status"] == 0
    return targets


def table(results: dict) -> str:
    lines = [
        f"{results['date']}, {results['cpu']}, {results['threads']} threads; command: {results['command']}",
        "",
        "| workload | clients | completed | requests/s | vs one at a time (slice just before) | mean batch "
        "| p50 | p90 | p99 | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, base in results["baseline"].items():
        lines.append(
            f"| {kind} | `Embedder.encode`, 1 at a time | {base['completed']} | {base['throughput']:.2f} | 1.00x | 1 | "
            f"{base['p50']:.3f} s | {base['p90']:.3f} s | {base['p99']:.3f} s | |"
        )
        for s in (s for s in results["scenarios"] if s["kind"] == kind):
            statuses = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
            if s["cancelled"]:
                statuses += f", {s['cancelled']} cancelled at the time limit"
            lines.append(
                f"| {kind} | {s['clients']} | {s['completed']} | {s['throughput']:.2f} | {s['vs_baseline']:.2f}x | "
                f"{s['mean_batch_texts']:.1f} | {s['p50']:.3f} s | {s['p90']:.3f} s | {s['p99']:.3f} s | {statuses} |"
            )
    if "burst" in results:
        b = results["burst"]
        lines += [
            "",
            f"Burst: {b['requests']} requests at once against --max-concurrent-requests; statuses {b['statuses']}, "
            f"Retry-After {b['retry_after']}, /health after: {b['health_after']}; server RSS "
            f"{results['rss_before_burst']['VmRSS']} MB before, {results['rss_after_burst']['VmRSS']} MB after "
            f"(peak {results['rss_after_burst']['VmHWM']} MB).",
        ]
    lines += ["", "Targets:"] + [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in results["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
