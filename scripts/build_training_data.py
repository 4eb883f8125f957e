#!/usr/bin/env python
"""Build the training datasets into OUTDIR, disjoint from the local evaluation suite; optionally mine
hard negatives and precompute teacher embeddings with a model (see embeddinggemma.corpus.training_sources).

    python scripts/build_training_data.py data/train                       # build (minutes, no model)
    flock /tmp/embeddinggemma-cpu.lock python scripts/build_training_data.py data/train \\
        --steps teacher,mine --teacher-datasets code --max-seq-length 512  # the real model (slow on CPU)

Needs the built suite (scripts/build_local_suite.py data/local_suite) for the disjointness proof, apt
for the pinned packages (cached in OUTDIR/_sources, seeded from the suite's cache), and the Gemma
tokenizer for token counts (found in the Hugging Face cache; --tokenizer PATH or --no-tokens otherwise).

OUTDIR/<dataset>/train and /dev hold examples.jsonl + dataset.json (MixtureLoader input); dev also holds
an evaluation task (corpus/queries/qrels or pairs + task.json, for embeddinggemma.eval.runner);
mining writes <dataset>/train-mined; teacher embeddings go to OUTDIR/teacher-<model> (shared by all
datasets). OUTDIR/manifest.json records packages, counts, tokens, sha256 of every output and timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from embeddinggemma.checkpoint import cached_file
from embeddinggemma.corpus import disjoint, local_suite, pydoc, training_sources
from embeddinggemma.corpus.debian import fetch_deb, sha256_file
from embeddinggemma.corpus.disjoint import SuiteGuard, assert_splits_disjoint
from embeddinggemma.corpus.local_suite import SUITE_CODE, code_fingerprint
from embeddinggemma.corpus.suite_sources import PARTITION_SALT, SUITE_VERSION
from embeddinggemma.corpus.training_sources import DATASETS, PACKAGES, Candidate, DatasetRecipe, extract
from embeddinggemma.eval.data import TaskSpec, write_jsonl
from embeddinggemma.train import data as training_data
from embeddinggemma.train.data import (
    DatasetSpec,
    TrainingExample,
    iter_examples,
    load_dataset,
    prompt_example,
    write_dataset,
)

logger = logging.getLogger("build_training_data")

TRAIN_DATA_VERSION = "train-data/v1"
DEV_SALT = "embeddinggemma-train-dev/v1:"  # never change: it decides which groups are dev
MAX_TOKENS = 512
# Every module whose source shapes the training data's files (with this script).
TRAINING_DATA_CODE = (*SUITE_CODE, local_suite, training_data, disjoint, pydoc, training_sources)


def in_dev(group: str, percent: int) -> bool:
    """A group (module, page, message) is dev iff its salted hash falls in the first ``percent`` of 100."""
    return int(hashlib.sha256((DEV_SALT + group).encode()).hexdigest()[:8], 16) % 100 < percent


def _cap(cands: list[Candidate], limit: int, seed: int) -> list[Candidate]:
    """At most ``limit`` candidates, a seeded sample in the original (deterministic) order."""
    if len(cands) <= limit:
        return cands
    keep = set(random.Random(seed).sample(range(len(cands)), limit))
    return [c for i, c in enumerate(cands) if i in keep]


def _write_eval_task(spec: DatasetSpec, recipe: DatasetRecipe, examples: list[TrainingExample]) -> None:
    """The dev split as an evaluation task (retrieval: distinct positives are the corpus; bitext: pairs)."""
    root = spec.directory
    doc = {"description": recipe.description, "source": spec.source, "license": spec.license}
    if recipe.task == "bitext":
        rows = [{"source": e.query, "target": e.positive, "subset": f"{(e.meta or {})['lang']}-en"} for e in examples]
        write_jsonl(root / "pairs.jsonl", rows)
        TaskSpec(f"{recipe.name}-dev", "bitext", root, {"pairs": "pairs.jsonl"}, "bitext", **doc).save()
    else:
        doc_ids: dict[tuple[str, str | None], str] = {}
        for e in examples:
            doc_ids.setdefault((e.positive, e.title), f"d{len(doc_ids)}")
        corpus = [{"_id": i, "text": t, **({"title": ti} if ti else {})} for (t, ti), i in doc_ids.items()]
        queries = [
            {"_id": f"q{n}", "text": e.query, **({"subset": e.meta["lang"]} if e.meta and "lang" in e.meta else {})}
            for n, e in enumerate(examples)
        ]
        qrels = [
            {"query-id": f"q{n}", "corpus-id": doc_ids[e.positive, e.title], "score": 1} for n, e in enumerate(examples)
        ]
        write_jsonl(root / "corpus.jsonl", corpus)
        write_jsonl(root / "queries.jsonl", queries)
        write_jsonl(root / "qrels.jsonl", qrels)
        files = {"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"}
        TaskSpec(f"{recipe.name}-dev", "retrieval", root, files, recipe.task, **doc).save()


def _token_stats(tokenizer: Any, spec: DatasetSpec) -> dict[str, Any]:
    """Token counts of the prompted texts as the model sees them (BOS/EOS included), per role."""
    roles: dict[str, dict[str, None]] = {"queries": {}, "positives": {}, "negatives": {}}
    for _, ex in iter_examples(spec.path):
        p = prompt_example(ex, spec.task, symmetric=spec.symmetric)
        roles["queries"][p.query] = None
        roles["positives"][p.positive] = None
        roles["negatives"].update(dict.fromkeys(p.negatives))
    out: dict[str, Any] = {}
    for role, texts in roles.items():
        lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))] if texts else []
        out[role] = {
            "distinct_texts": len(lengths),
            "tokens": sum(lengths),
            "max": max(lengths, default=0),
            f"over_{MAX_TOKENS}": sum(n > MAX_TOKENS for n in lengths),
        }
    out["total_tokens"] = sum(r["tokens"] for r in out.values())
    return out


def _fetch(outdir: Path, suite: Path, names: set[str]) -> dict[str, Path]:
    cache = outdir / "_sources"
    cache.mkdir(parents=True, exist_ok=True)
    debs = {}
    for name in sorted(names):
        pkg = PACKAGES[name]
        seeded = suite / "_sources" / pkg.filename
        if seeded.is_file() and not (cache / pkg.filename).exists():
            os.link(seeded, cache / pkg.filename)  # same bytes; fetch_deb still verifies the hash
        debs[name] = fetch_deb(pkg, cache)
    return debs


def build(outdir: Path, suite: Path, tokenizer_path: Path | None, *, seed: int, dev_percent: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    guard = SuiteGuard.from_suite(suite)
    debs = _fetch(outdir, suite, {p for r in DATASETS for p in r.packages})
    t_fetch = time.perf_counter() - t0
    tokenizer = None
    if tokenizer_path is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    cache: dict[str, list[Candidate]] = {}
    specs: dict[str, dict[str, DatasetSpec]] = {}
    report: dict[str, Any] = {}
    for i, recipe in enumerate(DATASETS):
        cands = extract(recipe.name, debs, cache)
        kept = [c for c in cands if guard.allows(c.example, recipe.name)]
        dev = [c for c in kept if in_dev(c.group, dev_percent)]
        train = [c for c in kept if not in_dev(c.group, dev_percent)]
        train, dev = _cap(train, recipe.max_train, seed + 2 * i), _cap(dev, recipe.max_dev, seed + 2 * i + 1)
        common = {
            "name": recipe.name,
            "task": recipe.task,
            "source": " + ".join(PACKAGES[p].label for p in recipe.packages),
            "license": "; ".join(dict.fromkeys(PACKAGES[p].license for p in recipe.packages)),
            "description": recipe.description,
            "provenance": {"builder": TRAIN_DATA_VERSION, "seed": seed, "dev_percent": dev_percent},
        }
        specs[recipe.name] = {}
        for split, part in (("train", train), ("dev", dev)):
            examples = [c.example for c in part]
            specs[recipe.name][split] = write_dataset(outdir / recipe.name / split, examples, split=split, **common)
            if split == "dev":
                _write_eval_task(specs[recipe.name][split], recipe, examples)
        report[recipe.name] = {
            "task": recipe.task,
            "candidates": len(cands),
            "rejected_by_suite_guard": len(cands) - len(kept),
            "groups": {"train": len({c.group for c in train}), "dev": len({c.group for c in dev})},
            "train": len(train),
            "dev": len(dev),
        }
        logger.info("%s: %s", recipe.name, report[recipe.name])
    # The proof, independent of the filtering above: re-read every written file.
    all_specs = [s for d in specs.values() for s in d.values()]
    checked = guard.assert_disjoint(all_specs)
    dev_checked = assert_splits_disjoint([d["train"] for d in specs.values()], [d["dev"] for d in specs.values()])
    for name, by_split in specs.items():
        for split, spec in by_split.items():
            entry = report[name].setdefault("files", {})
            entry[split] = {"path": str(spec.path.relative_to(outdir)), "sha256": spec.sha256}
            if tokenizer is not None:
                report[name].setdefault("tokens", {})[split] = _token_stats(tokenizer, spec)
    files = {
        str(p.relative_to(outdir)): sha256_file(p)
        for p in sorted(outdir.glob("*/*/*"))
        if p.is_file() and p.parent.name in ("train", "dev")
    }
    manifest = {
        "version": TRAIN_DATA_VERSION,
        "code_fingerprint": code_fingerprint(*TRAINING_DATA_CODE, sys.modules[__name__]),
        "seed": seed,
        "dev_percent": dev_percent,
        "packages": {n: {**PACKAGES[n].__dict__} for n in sorted(debs)},
        "datasets": report,
        "disjointness": {
            "suite": str(suite),
            "suite_version": SUITE_VERSION,
            "rule": f"not in_suite_partition(id) for {PARTITION_SALT!r}-salted ids of suite namespaces, id not in "
            "the suite manifest's used_sources, and no text equal (whitespace/case-normalised) to a suite text",
            "suite_used_ids": len(guard.used_ids),
            "suite_texts": len(guard.texts),
            "rejected": dict(sorted(guard.rejected.items())),
            "examples_checked": checked,
            "dev_checked_against_train": dev_checked,
        },
        "tokenizer_sha256": sha256_file(tokenizer_path) if tokenizer_path else None,
        "files": files,
        "build_seconds": {"download": round(t_fetch, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    _write_manifest(outdir, manifest)
    return manifest


def _write_manifest(outdir: Path, manifest: dict[str, Any]) -> None:
    tmp = outdir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(outdir / "manifest.json")
    (outdir / "README.md").write_text(_data_card(manifest), encoding="utf-8")


def _data_card(manifest: dict[str, Any]) -> str:
    """A human-readable README for the built data (manifest.json is the machine-readable one)."""
    lines = [
        f"# embeddinggemma training data ({manifest['version']})",
        "",
        "Built by `scripts/build_training_data.py` from pinned Debian packages (see manifest.json for versions,",
        "sha256 of every package and output file, and the disjointness proof against the local suite).",
        "",
        "| dataset | task | train | dev | train tokens (prompted, distinct texts) | rejected (suite) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, d in manifest["datasets"].items():
        tokens = d.get("tokens", {}).get("train", {}).get("total_tokens", "n/a")
        lines.append(
            f"| {name} | {d['task']} | {d['train']} | {d['dev']} | {tokens} | {d['rejected_by_suite_guard']} |"
        )
    runs = manifest.get("model_runs", {})
    for kind, entries in runs.items():
        lines += ["", f"## {kind}", ""]
        lines += [f"- {k}: `{json.dumps(v, sort_keys=True)}`" for k, v in entries.items()]
    recipes = {r.name: r for r in DATASETS}
    for name in manifest["datasets"]:
        lines += ["", f"## {name}", "", recipes[name].description if name in recipes else ""]
    return "\n".join(lines) + "\n"


def _model_steps(args: argparse.Namespace, outdir: Path) -> None:
    """Teacher embeddings first (mining then reuses them: same model, same prompted texts), then mining."""
    from embeddinggemma import Embedder
    from embeddinggemma.train.mining import MiningConfig, mine_dataset
    from embeddinggemma.train.teacher import TeacherCache, build_teacher_cache

    manifest = json.loads((outdir / "manifest.json").read_text(encoding="utf-8"))
    model = Embedder.from_pretrained(args.model, device="cpu", dtype="float32", max_seq_length=args.max_seq_length)
    teacher_name = f"{args.model}@fp32/max{model.max_seq_length}"
    teacher_dir = outdir / f"teacher-{Path(args.model).name}"
    steps = set(args.steps.split(","))
    runs = manifest.setdefault("model_runs", {})

    def embed_for_teacher(split: str) -> None:
        report = build_teacher_cache(
            model, [outdir / split], teacher_dir, teacher=teacher_name, batch_size=args.batch_size, shard_size=256
        )
        runs.setdefault("teacher", {})[split] = report.to_json() | {"teacher": teacher_name}

    if "teacher" in steps:
        for name in args.teacher_datasets.split(","):
            embed_for_teacher(f"{name}/train")
            _write_manifest(outdir, manifest)
    if "mine" in steps:
        cache = TeacherCache(teacher_dir) if (teacher_dir / "teacher.json").is_file() else None
        config = MiningConfig(
            num_negatives=args.num_negatives, rank_range=(args.rank_start, args.rank_stop), margin=args.margin
        )
        limits = {k: int(v) for k, v in (item.split("=") for item in args.mine_max_examples.split(",") if item)}
        for name in args.mine_datasets.split(","):
            spec = load_dataset(outdir / name / "train")
            use_cache = cache if cache is not None and cache.teacher == teacher_name else None
            mined = mine_dataset(
                model,
                spec,
                outdir / name / "train-mined",
                model_name=teacher_name,
                config=config,
                batch_size=args.batch_size,
                cache=use_cache,
                max_examples=limits.get(name),
            )
            runs.setdefault("mining", {})[name] = dict(mined.provenance["mining"]) | {"sha256": mined.sha256}
            _write_manifest(outdir, manifest)
    if "teacher" in steps and "mine" in steps:  # the mined negatives are positives, so usually all cached
        for name in args.teacher_datasets.split(","):
            if (outdir / name / "train-mined").is_dir():
                embed_for_teacher(f"{name}/train-mined")
    _write_manifest(outdir, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--suite", type=Path, default=Path("data/local_suite"), help="the built evaluation suite")
    parser.add_argument("--steps", default="build", help="comma-separated: build, teacher, mine (default: build)")
    parser.add_argument("--tokenizer", type=Path, help="Gemma tokenizer.json for token counts")
    parser.add_argument("--no-tokens", action="store_true")
    parser.add_argument("--seed", type=int, default=20250902)
    parser.add_argument("--dev-percent", type=int, default=10)
    parser.add_argument("--model", default="google/embeddinggemma-300m", help="mining model and teacher")
    parser.add_argument("--max-seq-length", type=int, default=512, help="token limit for mining/teacher inputs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-datasets", default="code")
    parser.add_argument("--mine-datasets", default=",".join(r.name for r in DATASETS))
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--rank-start", type=int, default=10)
    parser.add_argument("--rank-stop", type=int, default=100)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument(
        "--mine-max-examples",
        default="",
        help="NAME=N,...: mine only a seeded sample of N rows of NAME (when the model is too slow for all)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    steps = set(args.steps.split(","))
    if not steps <= {"build", "teacher", "mine"}:
        parser.error(f"unknown steps {sorted(steps - {'build', 'teacher', 'mine'})}")
    if "build" in steps:
        tokenizer = None if args.no_tokens else (args.tokenizer or cached_file("tokenizer.json"))
        if tokenizer is None and not args.no_tokens:
            parser.error("no tokenizer.json in the Hugging Face cache; pass --tokenizer PATH or --no-tokens")
        manifest = build(args.outdir, args.suite, tokenizer, seed=args.seed, dev_percent=args.dev_percent)
        summary = {n: {k: d[k] for k in ("task", "train", "dev")} for n, d in manifest["datasets"].items()}
        json.dump({"datasets": summary, "build_seconds": manifest["build_seconds"]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if steps & {"teacher", "mine"}:
        if not (args.outdir / "manifest.json").is_file():
            parser.error(f"{args.outdir} has no manifest.json; run --steps build first")
        _model_steps(args, args.outdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
