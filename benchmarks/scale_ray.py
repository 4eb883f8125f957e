"""Corpus embedding on a local Ray cluster (`embed_files`, W workers of 1 CPU) against one process
(`encode_stream` with W threads): same passages, same model, same prompts.

    python ../shared/bench/make_corpus.py corpus.jsonl
    HF_HUB_OFFLINE=1 flock /tmp/cpu-bench.lock python benchmarks/scale_ray.py --corpus corpus.jsonl --rows 300

Both sides embed the first `--rows` passages as documents at full width; over-long passages are cut
to the model's limit on both sides (`overlong="truncate"`). Ray's cost is split into what happens once
(starting the cluster, starting the actors and loading a model in each) and what happens per block
(scheduling, reading the block, writing its Parquet part): the job's wall time minus the workers'
busy time (their summed reading + embedding seconds, over W) is that overhead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cpu import cpu_name  # benchmarks/ is on the path when a script here runs

MODEL = "google/embeddinggemma-300m"


def one_process(texts: list[str], args: argparse.Namespace) -> dict:
    import numpy as np

    from embeddinggemma import Embedder

    started = time.perf_counter()
    model = Embedder.from_pretrained(args.model, quantize=args.quantize, num_threads=args.workers)
    loaded = time.perf_counter()
    rows = sum(len(block) for block in model.encode_stream(texts, task="document", batch_size=args.batch_size))
    embedded = time.perf_counter()
    lengths = model.tokenizer.count_tokens([model.prompts["document"] + t for t in texts])
    tokens = int(np.minimum(lengths, model.max_seq_length).sum())
    return {"rows": rows, "tokens": tokens, "load_s": loaded - started, "embed_s": embedded - loaded}


def on_ray(texts: list[str], args: argparse.Namespace, work: Path) -> dict:
    import ray

    from embeddinggemma.scale import embed_files

    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, object_store_memory=128 * 2**20, include_dashboard=False)
    initialised, initialised_wall = time.perf_counter(), time.time()
    try:
        summary = embed_files(
            str(corpus),
            str(work / "out"),
            model=args.model,
            quantize=args.quantize,
            overlong="truncate",
            batch_size=args.batch_size,
            rows_per_block=args.rows_per_block,
            num_gpus_per_worker=0,
            num_cpus_per_worker=1,
            concurrency=args.workers,
            progress_seconds=30,
        )
        finished = time.perf_counter()
    finally:
        ray.shutdown()
    parts = sorted((work / "out").glob("part-*.parquet"))
    first_part = min(p.stat().st_mtime for p in parts)
    return {
        "rows": summary.embedded,
        "tokens": summary.tokens,
        "blocks": summary.blocks,
        "init_s": initialised - started,
        "job_s": finished - initialised,
        "first_block_s": first_part - initialised_wall,  # actors started, models loaded, one block embedded
        "worker_busy_s": summary.worker_seconds_this_run / args.workers,
        "output_bytes": sum(p.stat().st_size for p in parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL with a text field (make_corpus.py)")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of 1 CPU; threads of the one process")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--quantize", default="int8", help="int8, or 'none' for the fp32 model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows-per-block", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    args.quantize = None if args.quantize == "none" else args.quantize
    with args.corpus.open(encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for _, line in zip(range(args.rows), handle, strict=False)]

    single = one_process(texts, args)  # first: it also fills the int8 cache the workers load from
    with tempfile.TemporaryDirectory() as work:
        ray_run = on_ray(texts, args, Path(work))
    assert single["rows"] == ray_run["rows"] == len(texts) and single["tokens"] == ray_run["tokens"]

    tokens = single["tokens"]
    rate_single = tokens / single["embed_s"]
    rate_ray_job = tokens / ray_run["job_s"]
    rate_ray_busy = tokens / ray_run["worker_busy_s"]
    results = {
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "quantize": args.quantize,
        "passages": len(texts),
        "tokens": tokens,
        "workers": args.workers,
        "one_process": single,
        "ray": ray_run,
    }
    print(f"{len(texts)} passages, {tokens:,} tokens, {args.model} quantize={args.quantize}, {results['cpu']}")
    print(
        f"one process, {args.workers} threads: load {single['load_s']:.1f} s, embed {single['embed_s']:.1f} s "
        f"= {rate_single:.0f} tokens/s ({len(texts) / single['embed_s']:.2f} passages/s)"
    )
    print(
        f"Ray, {args.workers} workers x 1 CPU: cluster start {ray_run['init_s']:.1f} s; job {ray_run['job_s']:.1f} s "
        f"= {rate_ray_job:.0f} tokens/s end to end ({ray_run['blocks']} blocks, first part after "
        f"{ray_run['first_block_s']:.1f} s); workers busy {ray_run['worker_busy_s']:.1f} s "
        f"= {rate_ray_busy:.0f} tokens/s"
    )
    overhead = ray_run["job_s"] - ray_run["worker_busy_s"]
    print(
        f"Ray / one process: {rate_ray_job / rate_single:.2f}x end to end (job only), "
        f"{rate_ray_busy / rate_single:.2f}x inside the workers; Ray's overhead {overhead:.1f} s of the "
        f"{ray_run['job_s']:.1f} s job ({overhead / ray_run['job_s']:.0%}) plus {ray_run['init_s']:.1f} s cluster start"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
