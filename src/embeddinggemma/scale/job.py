"""Embedding on Ray Data: `embed_dataset` (a Dataset transform) and `embed_files` (the resumable file job).

Both run `map_batches` over a pool of actors (Ray Data's `ActorPoolStrategy`), each holding one
`Embedder` loaded once: on its own GPU (`num_gpus_per_worker=1`; Ray sets CUDA_VISIBLE_DEVICES) or on
`num_cpus_per_worker` CPU threads. `embed_files` feeds the pool block descriptors, not rows: each actor
reads its block, embeds it and writes the block's output itself, so the work is resumable per block
and no embedding passes through the driver.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embeddinggemma.checkpoint import DEFAULT_MODEL, read_checkpoint_info, resolve_checkpoint
from embeddinggemma.prompts import PromptTable
from embeddinggemma.scale.blocks import Block, OutputDir, Plan, list_inputs, make_plan, read_block
from embeddinggemma.scale.rows import EmbedSettings, RowEmbedder, embedding_column
from embeddinggemma.vectors.codes import int8_ranges as compute_int8_ranges

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

__all__ = ["JobSummary", "embed_dataset", "embed_files"]

MANIFEST_VERSION = 1


def _require_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("embedding on Ray needs Ray Data: pip install 'embeddinggemma[ray]'") from None
    return ray


# -- settings checked on the driver -------------------------------------------------------------


def _check_settings(settings: EmbedSettings, title_column: str | None) -> None:
    """Fail on the driver with one line, before any worker starts, on what would fail in every worker."""
    info, _ = read_checkpoint_info(resolve_checkpoint(settings.model))
    width = info.config.embedding_dim
    for dim in settings.output_dims(width):
        if not 1 <= dim <= width:
            raise ValueError(f"dim {dim} is outside 1..{width}, the model's embedding size")
    if settings.task != "document":
        PromptTable(info.prompts)[settings.task]  # an unknown task raises with the list of known ones
        if title_column is not None:
            raise ValueError("titles select the document prompt; drop the title column or use task 'document'")
    if settings.precision == "int8" and settings.int8_ranges is not None:
        for dim in settings.output_dims(width):
            ranges = settings.int8_ranges.get(dim)
            if ranges is None or np.shape(ranges) != (2, dim):
                raise ValueError(f"int8_ranges needs a (2, {dim}) array of per-dimension [lo, hi] for dim {dim}")


@dataclass(frozen=True)
class _Resources:
    num_gpus: float
    num_cpus: float
    concurrency: int

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    @property
    def threads(self) -> int | None:
        """CPU workers run as many torch threads as the CPUs they reserve; GPU workers leave it to torch."""
        return None if self.num_gpus > 0 else max(1, math.floor(self.num_cpus))


def _resources(
    num_gpus_per_worker: float | None,
    num_cpus_per_worker: float,
    concurrency: int | None,
    ray_init: Mapping[str, Any] | None = None,
) -> _Resources:
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(**(ray_init or {}))
    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    if num_gpus_per_worker is None:
        num_gpus_per_worker = 1.0 if gpus else 0.0
    if num_gpus_per_worker > 0 and not gpus:
        raise ValueError("num_gpus_per_worker > 0 but the Ray cluster has no GPUs; use num_gpus_per_worker=0")
    if num_cpus_per_worker <= 0:
        raise ValueError(f"num_cpus_per_worker must be positive, got {num_cpus_per_worker}")
    if concurrency is None:  # one worker per GPU, or as many CPU workers as the cluster's CPUs hold
        if num_gpus_per_worker:
            concurrency = int(gpus // num_gpus_per_worker)
        else:
            concurrency = int(cluster.get("CPU", 1.0) // num_cpus_per_worker)
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    return _Resources(float(num_gpus_per_worker), float(num_cpus_per_worker), int(concurrency))


def _map_options(resources: _Resources) -> dict[str, Any]:
    ray = _require_ray()
    return dict(
        # two tasks in flight per actor: the next input is ready when the current one ends, and a worker that
        # dies loses little queued work
        compute=ray.data.ActorPoolStrategy(size=resources.concurrency, max_tasks_in_flight_per_actor=2),
        num_gpus=resources.num_gpus,
        num_cpus=resources.num_cpus,
    )


# -- embed_dataset -----------------------------------------------------------------------------------


class _BatchWorker:
    """Ray actor: one Embedder; Arrow batches in, the same rows with embedding columns out."""

    def __init__(self, settings: dict, columns: dict, device: str, num_threads: int | None) -> None:
        self.rows = RowEmbedder(EmbedSettings.from_json(settings), device=device, num_threads=num_threads)
        self.columns = columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        text, title, id_ = self.columns["text"], self.columns["title"], self.columns["id"]
        missing = [c for c in (text, title, id_) if c is not None and c not in batch.column_names]
        if missing:
            raise ValueError(f"the dataset has no column(s) {missing}; its columns are {batch.column_names}")
        texts = batch.column(text).to_pylist()
        titles = batch.column(title).to_pylist() if title else None
        result = self.rows.embed(texts, titles)
        ids = batch.column(id_).combine_chunks() if id_ else None
        return self.rows.full_table(result, batch.num_rows, ids, id_name=id_ or "id")


def _embed_settings(
    model: str,
    task: str,
    dims: Sequence[int] | None,
    precision: str,
    dtype: str | None,
    quantize: str | None,
    max_seq_length: int | None,
    overlong: str,
    batch_size: int,
    int8_ranges: Mapping[int, Any] | None,
) -> EmbedSettings:
    ranges = None if int8_ranges is None else {int(d): np.asarray(r, dtype=np.float32) for d, r in int8_ranges.items()}
    return EmbedSettings(
        model=str(model),
        task=task,
        dims=tuple(int(d) for d in dims) if dims else None,
        precision=precision,
        dtype=dtype,
        quantize=quantize,
        max_seq_length=max_seq_length,
        overlong=overlong,
        batch_size=batch_size,
        int8_ranges=ranges,
    )


def _map_embed(
    ds: ray.data.Dataset, settings: EmbedSettings, columns: dict, resources: _Resources, rows_per_batch: int
) -> ray.data.Dataset:
    return ds.map_batches(
        _BatchWorker,
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        fn_constructor_kwargs=dict(
            settings=settings.to_json(), columns=columns, device=resources.device, num_threads=resources.threads
        ),
        **_map_options(resources),
    )


def embed_dataset(
    ds: ray.data.Dataset,
    *,
    model: str = DEFAULT_MODEL,
    text_column: str = "text",
    title_column: str | None = None,
    id_column: str | None = "id",
    task: str = "document",
    dims: Sequence[int] | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    precision: str = "float32",
    int8_ranges: Mapping[int, Any] | None = None,
    max_seq_length: int | None = None,
    overlong: str = "skip",
    batch_size: int = 32,
    rows_per_batch: int = 1024,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float = 1,
    concurrency: int | None = None,
) -> ray.data.Dataset:
    """Embed a Ray Dataset's text column with a pool of actors, one `Embedder` each (lazy, like any transform).

    Returns a Dataset with `id_column` (as in the input; None to leave it out), `embedding_{dim}` for each of
    `dims` (default: the model's full width) as fixed-size lists of float32, int8 codes (`precision="int8"`
    with `int8_ranges={dim: (2, dim) [lo, hi]}`, see `embeddinggemma.vectors.codes.int8_ranges`) or
    packed sign bits (`precision="binary"`), `num_tokens` (prompt, BOS and EOS included), and `error`: null
    for an embedded row, otherwise why the row was not embedded (its other columns are null): a text that
    is not a string, empty, or longer than the model's limit (`overlong="truncate"` embeds its first tokens
    instead and adds `truncated_from`).

    `task` picks the prompt ("document" uses `title_column` when given, as `encode_document`); `dtype`,
    `quantize`, `max_seq_length` and `batch_size` are the Embedder's. `num_gpus_per_worker` defaults to 1
    on a cluster with GPUs, else 0 (then each worker runs `num_cpus_per_worker` torch threads);
    `concurrency` (actors) defaults to one per GPU, or the cluster's CPUs / `num_cpus_per_worker`.
    Row order follows Ray Data's execution options; the id column identifies rows.
    """
    settings = _embed_settings(
        model, task, dims, precision, dtype, quantize, max_seq_length, overlong, batch_size, int8_ranges
    )
    if precision == "int8" and int8_ranges is None:
        raise ValueError("precision='int8' needs int8_ranges={dim: ranges} calibrated on embeddings of this corpus")
    _check_settings(settings, title_column)
    resources = _resources(num_gpus_per_worker, num_cpus_per_worker, concurrency)
    columns = {"text": text_column, "title": title_column, "id": id_column}
    return _map_embed(ds, settings, columns, resources, rows_per_batch)


# -- embed_files -------------------------------------------------------------------------------------


@dataclass
class JobSummary:
    """Totals over the whole output (every run), and what this run did."""

    output: str
    blocks: int
    blocks_done_before: int  # finished by an earlier run and skipped
    rows: int
    embedded: int
    bad_rows: int
    truncated: int
    tokens: int
    seconds: float  # this run, from start to the last block
    rows_this_run: int
    tokens_this_run: int
    worker_seconds_this_run: float  # summed over blocks: reading and embedding inside the workers

    @property
    def rows_per_second(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_this_run / self.seconds if self.seconds else 0.0


class _BlockWorker:
    """Ray actor: one Embedder; block descriptors in, one part file (and its report) written per block."""

    def __init__(self, settings: dict, plan: dict, output: str, device: str, num_threads: int | None) -> None:
        self.rows = RowEmbedder(EmbedSettings.from_json(settings), device=device, num_threads=num_threads)
        self.plan = Plan.from_json(plan)
        self.out = OutputDir(output)
        self.metadata = {b"embeddinggemma": json.dumps(settings).encode()}  # a lone part file says how it was made

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        fields = zip(batch["name"], batch["file"], batch["start"], batch["stop"], batch["first_row"], strict=True)
        reports = [self.run(Block(str(n), int(f), int(a), int(b), int(r))) for n, f, a, b, r in fields]
        return {"report": [json.dumps(r, ensure_ascii=False, default=str) for r in reports]}

    def run(self, block: Block) -> dict[str, Any]:
        started = time.perf_counter()
        rows = read_block(self.plan, block)
        texts = [None if i in rows.bad else text for i, text in enumerate(rows.texts)]
        result = self.rows.embed(texts, rows.titles)
        bad = {**result.bad, **rows.bad}  # a row that failed to parse is reported for that, not as a null text
        id_name = self.plan.columns["id"] or "id"
        table = self.rows.table(result, rows.ids, id_name=id_name).replace_schema_metadata(self.metadata)
        file = self.plan.files[block.file]
        where = "row" if file.format == "parquet" else "byte_offset"
        limit = self.rows.embedder.max_seq_length

        def located(i: int, **extra: Any) -> dict[str, Any]:
            return {"id": rows.raw_ids[i], "file": file.path, where: rows.locations[i], **extra}

        report = {
            "block": block.name,
            "seconds": time.perf_counter() - started,  # reading and embedding, before the writes
            "rows": len(rows.texts),
            "embedded": len(result.rows),
            "tokens": int(result.num_tokens.sum()),
            "bad": [located(i, reason=bad[i]) for i in sorted(bad)],
            "truncated": [
                located(i, reason=f"truncated: {n} tokens exceed the {limit}-token limit; embedded the first {limit}")
                for i, n in sorted(result.truncated_from.items())
            ],
        }
        self.out.write_json(self.out.report(block.name), report)
        self.out.write_parquet(self.out.part(block.name), table)  # the commit: the block is done
        return report


def _calibrate(plan: Plan, settings: EmbedSettings, rows: int, resources: _Resources) -> dict[int, np.ndarray]:
    """Per-dim int8 ranges from the float embeddings of the first `rows` good rows of the input."""
    ray = _require_ray()
    texts: list[str] = []
    titles: list[str | None] = []
    for block in plan.blocks:
        found = read_block(plan, block)
        for i, text in enumerate(found.texts):
            title = found.titles[i] if found.titles else None
            if i not in found.bad and isinstance(text, str) and text.strip() and isinstance(title, str | None):
                texts.append(text)
                titles.append(title)
        if len(texts) >= rows:
            break
    texts, titles = texts[:rows], titles[:rows]
    if len(texts) < 2:
        raise ValueError("int8 precision calibrates on the input's embeddings, and it has fewer than 2 usable rows")
    logger.info("calibrating int8 ranges on %d rows", len(texts))
    has_titles = plan.columns["title"] is not None
    table = pa.table({"text": texts, **({"title": pa.array(titles, pa.string())} if has_titles else {})})
    float_settings = replace(settings, precision="float32", int8_ranges=None)
    columns = {"text": "text", "title": "title" if has_titles else None, "id": None}
    batch_rows = max(1, math.ceil(len(texts) / resources.concurrency))
    calibration = replace(resources, concurrency=min(resources.concurrency, math.ceil(len(texts) / batch_rows)))
    pieces = [table.slice(start, batch_rows) for start in range(0, len(texts), batch_rows)]  # one per worker
    embedded = _map_embed(ray.data.from_arrow(pieces), float_settings, columns, calibration, batch_rows)
    batches = list(embedded.iter_batches(batch_format="pyarrow", batch_size=None))
    ranges = {}
    for dim in float_settings.output_dims(_model_width(settings.model)):
        column = pa.concat_arrays([b.column(embedding_column(dim)).combine_chunks() for b in batches])
        good = column.filter(column.is_valid())
        vectors = good.flatten().to_numpy(zero_copy_only=False).reshape(len(good), dim)
        ranges[dim] = compute_int8_ranges(vectors)
    return ranges


def _model_width(model: str) -> int:
    info, _ = read_checkpoint_info(resolve_checkpoint(model))
    return info.config.embedding_dim


def _comparable(settings: dict[str, Any], *, with_ranges: bool) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if with_ranges or k != "int8_ranges"}


def _resume_plan(out: OutputDir, manifest: dict[str, Any], settings: EmbedSettings, plan_args: dict) -> tuple:
    """The stored plan and settings, after checking that this run asks for the same job on the same input."""
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{out.uri} was written by another version of this job; use a new output directory")
    stored = manifest["settings"]
    requested = settings.to_json()
    differences = [
        f"{key}: {stored.get(key)!r} there, {value!r} now"
        for key, value in _comparable(requested, with_ranges=settings.int8_ranges is not None).items()
        if stored.get(key) != value
    ]
    plan = Plan.from_json(manifest["plan"])
    for key, value in (("input", plan_args["uri"]), ("columns", plan_args["columns"])):
        if manifest["plan"][key] != value:
            differences.append(f"{key}: {manifest['plan'][key]!r} there, {value!r} now")
    if manifest["rows_per_block"] != plan_args["rows_per_block"]:
        differences.append(f"rows_per_block: {manifest['rows_per_block']} there, {plan_args['rows_per_block']} now")
    if differences:
        raise ValueError(
            f"{out.uri} holds a job with other settings ({'; '.join(differences)}); resume it with the same "
            "settings, or write to a new output directory"
        )
    now = {f.path: f.size for f in list_inputs(plan.input, plan_args["fmt"])}
    for file in plan.files:
        if now.get(file.path) != file.size:
            raise ValueError(
                f"the input changed since the job started ({file.path}: {file.size} bytes then, "
                f"{now.get(file.path)} now); finish with the original input or start a new output directory"
            )
    return plan, EmbedSettings.from_json(stored)


def _read_reports(out: OutputDir, names: list[str]) -> dict[str, dict]:
    with ThreadPoolExecutor(32) as pool:
        return dict(zip(names, pool.map(lambda name: out.read_json(out.report(name)), names), strict=True))


def _finish(out: OutputDir, plan: Plan, reports: dict[str, dict], started: float, this_run: dict) -> JobSummary:
    """Gather the block reports into `_bad_rows.jsonl` and `_SUCCESS`."""
    # every block is done: what is left in _tmp was being written by a worker that died (Ray retried
    # its block elsewhere), and nothing will ever finish it
    out.clear_temporary()
    earlier = [b.name for b in plan.blocks if b.name not in reports]
    reports.update(_read_reports(out, earlier))
    lines: list[str] = []
    totals = {"rows": 0, "embedded": 0, "bad_rows": 0, "truncated": 0, "tokens": 0}
    for block in plan.blocks:
        report = reports[block.name]
        for entry in report["bad"]:
            lines.append(json.dumps({**entry, "embedded": False}, ensure_ascii=False, default=str))
        for entry in report["truncated"]:
            lines.append(json.dumps({**entry, "embedded": True}, ensure_ascii=False, default=str))
        totals["rows"] += report["rows"]
        totals["embedded"] += report["embedded"]
        totals["bad_rows"] += len(report["bad"])
        totals["truncated"] += len(report["truncated"])
        totals["tokens"] += report["tokens"]
    out.write_bytes(out.path(OutputDir.BAD_ROWS), "".join(line + "\n" for line in lines).encode())
    summary = JobSummary(
        output=out.uri,
        blocks=len(plan.blocks),
        blocks_done_before=len(earlier),
        seconds=time.monotonic() - started,
        **totals,
        **this_run,
    )
    out.write_json(out.path(OutputDir.SUCCESS), asdict(summary))
    return summary


def embed_files(
    input: str,
    output: str,
    *,
    model: str = DEFAULT_MODEL,
    text_column: str = "text",
    title_column: str | None = None,
    id_column: str = "id",
    task: str = "document",
    dims: Sequence[int] | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    precision: str = "float32",
    int8_ranges: Mapping[int, Any] | None = None,
    calibration_rows: int = 10_000,
    max_seq_length: int | None = None,
    overlong: str = "skip",
    batch_size: int = 32,
    rows_per_block: int = 10_000,
    input_format: str = "auto",
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float = 1,
    concurrency: int | None = None,
    progress_seconds: float = 10.0,
    ray_init: Mapping[str, Any] | None = None,
) -> JobSummary:
    """Embed Parquet or JSONL files (a file or a directory; local or any pyarrow/fsspec URI) into a directory of
    Parquet parts, resumably: run it again with the same arguments after a crash and it does only the
    blocks that have no part yet. The options are `embed_dataset`'s; in addition:

    - `rows_per_block`: rows per output part (Parquet: whole row groups merged up to it; JSONL: byte ranges
      sized from the first file's mean line). Parts hold the embedded rows in input order.
    - `precision="int8"` without `int8_ranges` calibrates them on the first `calibration_rows` rows; the
      ranges are stored in `_job.json` (settings.int8_ranges) for scoring queries.
    - Rows that are not embedded (and truncated ones) are listed in `_bad_rows.jsonl` with id, file, row
      number (Parquet) or byte offset (JSONL) and the reason.
    - `ray_init`: arguments of `ray.init` if Ray is not initialised yet; the input, the model and the
      settings are checked before that, so a job that cannot run fails without starting Ray.
    """
    ray = _require_ray()
    started = time.monotonic()
    settings = _embed_settings(
        model, task, dims, precision, dtype, quantize, max_seq_length, overlong, batch_size, int8_ranges
    )
    out = OutputDir(output)
    columns = {"id": id_column, "text": text_column, "title": title_column}
    plan_args = {"uri": input, "columns": columns, "rows_per_block": rows_per_block, "fmt": input_format}
    manifest = out.read_manifest()
    if manifest is not None:
        plan, settings = _resume_plan(out, manifest, settings, plan_args)
    else:
        _check_settings(settings, title_column)
        plan = make_plan(
            input,
            text_column=text_column,
            id_column=id_column,
            title_column=title_column,
            fmt=input_format,
            rows_per_block=rows_per_block,
        )
    resources = _resources(num_gpus_per_worker, num_cpus_per_worker, concurrency, ray_init)
    if manifest is None:
        if precision == "int8" and settings.int8_ranges is None:
            settings = replace(settings, int8_ranges=_calibrate(plan, settings, calibration_rows, resources))
        out.prepare()
        manifest = {
            "version": MANIFEST_VERSION,
            "settings": settings.to_json(),
            "rows_per_block": rows_per_block,
            "plan": plan.to_json(),
        }
        out.write_json(out.path(OutputDir.MANIFEST), manifest)
    out.prepare()
    out.clear_temporary()
    done = out.finished_parts()
    pending = [b for b in plan.blocks if b.name not in done]
    logger.info(
        "%d blocks: %d finished before, %d to embed with %d worker(s) (%s)",
        len(plan.blocks),
        len(plan.blocks) - len(pending),
        len(pending),
        resources.concurrency,
        f"{resources.num_gpus:g} GPU each" if resources.num_gpus else f"{resources.num_cpus:g} CPU each",
    )
    reports: dict[str, dict] = {}
    this_run = {"rows_this_run": 0, "tokens_this_run": 0, "worker_seconds_this_run": 0.0}
    if pending:
        items = [asdict(b) for b in pending]
        work = ray.data.from_items(items, override_num_blocks=len(items))  # one block per task
        shared_plan = Plan(plan.input, plan.files, [], plan.id_type, plan.columns).to_json()
        results = work.map_batches(
            _BlockWorker,
            batch_size=1,
            fn_constructor_kwargs=dict(
                settings=settings.to_json(),
                plan=shared_plan,
                output=output,
                device=resources.device,
                num_threads=resources.threads,
            ),
            **_map_options(resources),
        )
        last_log = time.monotonic()
        for row in results.iter_rows():
            report = json.loads(row["report"])
            reports[report["block"]] = report
            this_run["rows_this_run"] += report["rows"]
            this_run["tokens_this_run"] += report["tokens"]
            this_run["worker_seconds_this_run"] += report["seconds"]
            now = time.monotonic()
            if now - last_log >= progress_seconds or len(reports) == len(pending):
                last_log = now
                seconds = now - started
                logger.info(
                    "embedded %d/%d blocks (%d rows, %.0f rows/s, %.0f tokens/s)",
                    len(reports) + len(plan.blocks) - len(pending),
                    len(plan.blocks),
                    this_run["rows_this_run"],
                    this_run["rows_this_run"] / seconds,
                    this_run["tokens_this_run"] / seconds,
                )
    return _finish(out, plan, reports, started, this_run)
