"""Input blocks and the output directory of a resumable embedding job (no Ray here).

A block is a deterministic piece of the input: whole Parquet row groups (merged up to `rows_per_block`
rows), a byte range of a JSONL file (the lines that start in it), or a whole compressed JSONL file. The
plan (files, sizes, blocks) is computed once and stored in the output directory, so a rerun works on the
same blocks whatever the cluster looks like. Block `k` of file `f` is written to `part-FFFFFF-KKKKKK.parquet`
through a temporary file and a rename: a part either exists complete or not at all, and a finished
block is never redone.

Files are reached through pyarrow filesystems, as Ray Data reads them: local paths, `s3://`, `gs://`,
`hdfs://`, `abfs://`, and any other fsspec scheme.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

__all__ = ["Block", "BlockRows", "InputFile", "OutputDir", "Plan", "make_plan", "read_block", "resolve_filesystem"]

_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_COMPRESSIONS = (".gz", ".bz2", ".zst")
_SAMPLE_BYTES = 1 << 20  # bytes of the first JSONL file read to estimate bytes per row


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI, as Ray Data resolves them (pyarrow first, then fsspec)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str  # parquet | jsonl
    size: int
    compressed: bool = False


@dataclass(frozen=True)
class Block:
    """Parquet: row groups [start, stop), the first of them at row `first_row` of the file. JSONL: the lines
    that start at byte offsets [start, stop) (a compressed file is one block, offsets in its decompressed text)."""

    name: str
    file: int
    start: int
    stop: int
    first_row: int = 0


@dataclass
class Plan:
    input: str
    files: list[InputFile]
    blocks: list[Block]
    id_type: str  # an Arrow type alias: int64, string, ...
    columns: dict[str, str | None] = field(default_factory=dict)  # id, text, title

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "files": [asdict(f) for f in self.files],
            "blocks": [[b.name, b.file, b.start, b.stop, b.first_row] for b in self.blocks],
            "id_type": self.id_type,
            "columns": self.columns,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            input=data["input"],
            files=[InputFile(**f) for f in data["files"]],
            blocks=[Block(*b) for b in data["blocks"]],
            id_type=data["id_type"],
            columns=dict(data["columns"]),
        )


def _format_of(path: str, requested: str) -> tuple[str | None, bool]:
    base = path.lower()
    compressed = base.endswith(_COMPRESSIONS)
    if compressed:
        base = base.rsplit(".", 1)[0]
    if requested != "auto":
        return requested, compressed
    return _FORMATS.get(os.path.splitext(base)[1]), compressed


def list_inputs(uri: str, fmt: str = "auto") -> list[InputFile]:
    """The input files in path order: one file, or every Parquet/JSONL file under a directory."""
    fs, root = resolve_filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri} does not exist")
    if info.type == pafs.FileType.File:
        found = [info]
    else:
        selector = pafs.FileSelector(root, recursive=True)
        found = [
            i
            for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))
        ]
    files = []
    for item in sorted(found, key=lambda i: i.path):
        file_format, compressed = _format_of(item.path, fmt)
        if file_format is None:
            if info.type == pafs.FileType.File:
                raise ValueError(f"{uri}: unknown input format; name it .parquet or .jsonl, or pass --format")
            continue  # a directory may hold other files
        if file_format == "parquet" and compressed:
            raise ValueError(f"{item.path}: Parquet compresses internally; a compressed .parquet file cannot be read")
        files.append(InputFile(item.path, file_format, int(item.size), compressed))
    if not files:
        raise ValueError(f"no .parquet or .jsonl files under {uri}")
    formats = {f.format for f in files}
    if len(formats) > 1:
        raise ValueError(f"{uri} mixes Parquet and JSONL files; embed each format into its own output")
    return files


# -- planning --------------------------------------------------------------------------------------


def _id_alias(type_: pa.DataType, where: str, column: str) -> str:
    if pa.types.is_integer(type_):
        return "int64"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return "string"
    raise ValueError(f"{where}: id column {column!r} is {type_}; ids must be integers or strings")


def _check_string_column(schema: pa.Schema, column: str, where: str, role: str) -> None:
    type_ = schema.field(column).type
    is_string = pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)
    if not is_string and not pa.types.is_null(type_):  # an all-null column: every row is reported
        raise ValueError(f"{where}: {role} column {column!r} is {type_}, not strings")


def _parquet_blocks(
    fs: pafs.FileSystem, file: InputFile, index: int, columns: Mapping[str, str | None], rows_per_block: int
) -> tuple[list[Block], str]:
    with fs.open_input_file(file.path) as handle:
        parquet = pq.ParquetFile(handle)
        schema, meta = parquet.schema_arrow, parquet.metadata
    for role in ("id", "text", "title"):
        column = columns.get(role)
        if column is not None and column not in schema.names:
            flag = {"id": "--id-column", "text": "--text-column", "title": "--title-column"}[role]
            raise ValueError(f"{file.path} has no column {column!r} (columns: {schema.names}); name it with {flag}")
    _check_string_column(schema, columns["text"], file.path, "text")  # type: ignore[arg-type]
    if columns.get("title"):
        _check_string_column(schema, columns["title"], file.path, "title")  # type: ignore[arg-type]
    id_type = _id_alias(schema.field(columns["id"]).type, file.path, columns["id"])  # type: ignore[arg-type]
    blocks: list[Block] = []
    group, row, first_group, first_row, rows = 0, 0, 0, 0, 0
    for group in range(meta.num_row_groups):
        group_rows = meta.row_group(group).num_rows
        if rows and rows + group_rows > rows_per_block:
            blocks.append(Block(f"part-{index:06d}-{len(blocks):06d}", index, first_group, group, first_row))
            first_group, first_row, rows = group, row, 0
        rows += group_rows
        row += group_rows
        if group_rows > 4 * rows_per_block:
            logger.warning(
                "%s: row group %d has %d rows: it is one block (rewrite the file with smaller row groups to resume "
                "at a finer grain)",
                file.path,
                group,
                group_rows,
            )
    if rows:
        blocks.append(Block(f"part-{index:06d}-{len(blocks):06d}", index, first_group, meta.num_row_groups, first_row))
    return blocks, id_type


def _jsonl_sample(fs: pafs.FileSystem, file: InputFile, id_column: str) -> tuple[float, str]:
    """(mean bytes per line, id type) from the start of a JSONL file."""
    opener = fs.open_input_stream(file.path, compression="detect" if file.compressed else None)
    with opener as handle:
        sample = handle.read(_SAMPLE_BYTES)
    lines = [line for line in sample.split(b"\n")[: -1 if len(sample) == _SAMPLE_BYTES else None] if line.strip()]
    if not lines:
        raise ValueError(f"{file.path}: no JSON lines in its first {_SAMPLE_BYTES} bytes")
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file.path}: the first line is not JSON ({exc.msg})") from None
    if not isinstance(first, dict) or id_column not in first:
        raise ValueError(
            f"{file.path}: the first record has no {id_column!r} field; name the id field with --id-column"
        )
    value = first[id_column]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{file.path}: id {value!r} is {type(value).__name__}; ids must be integers or strings")
    return len(sample) / max(sample.count(b"\n"), 1), "int64" if isinstance(value, int) else "string"


def make_plan(
    uri: str,
    *,
    text_column: str = "text",
    id_column: str = "id",
    title_column: str | None = None,
    fmt: str = "auto",
    rows_per_block: int = 10_000,
) -> Plan:
    """Split the input into blocks. Parquet footers are read in parallel threads (one request each)."""
    if rows_per_block < 1:
        raise ValueError(f"rows_per_block must be positive, got {rows_per_block}")
    files = list_inputs(uri, fmt)
    fs, _ = resolve_filesystem(uri)
    columns = {"id": id_column, "text": text_column, "title": title_column}
    blocks: list[Block] = []
    if files[0].format == "parquet":
        with ThreadPoolExecutor(16) as pool:
            per_file = list(
                pool.map(lambda item: _parquet_blocks(fs, item[1], item[0], columns, rows_per_block), enumerate(files))
            )
        id_types = {id_type for _, id_type in per_file}
        if len(id_types) > 1:
            raise ValueError(f"the input files disagree on the id column's type ({sorted(id_types)})")
        id_type = id_types.pop()
        for file_blocks, _ in per_file:
            blocks.extend(file_blocks)
    else:
        line_bytes, id_type = _jsonl_sample(fs, files[0], id_column)
        block_bytes = max(1, round(rows_per_block * line_bytes))
        for index, file in enumerate(files):
            if file.compressed:
                ranges = [(0, file.size)]
            else:
                ranges = [(start, min(start + block_bytes, file.size)) for start in range(0, file.size, block_bytes)]
            blocks.extend(Block(f"part-{index:06d}-{k:06d}", index, a, b, -1) for k, (a, b) in enumerate(ranges))
    return Plan(uri, files, blocks, id_type, columns)


# -- reading ---------------------------------------------------------------------------------------


@dataclass
class BlockRows:
    """A block's rows. `texts`/`titles` are raw values (checked by the embedder); rows that could not even
    be parsed have a reason in `bad` already. `locations`: row numbers (Parquet) or byte offsets (JSONL)."""

    ids: pa.Array  # typed as the plan's id type; null where the row's id is missing or of another type
    raw_ids: list[Any]  # as read, for the bad-rows report
    texts: list[Any]
    titles: list[Any] | None
    locations: list[int]
    bad: dict[int, str]


def _lines_in_range(handle: Any, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for each line of a seekable file that starts at a byte offset in [start, stop)."""
    base = max(start - 1, 0)
    handle.seek(base)
    data = handle.read(stop - base)
    if len(data) == stop - base and not data.endswith(b"\n"):  # the last line runs past `stop`: finish it
        tail = []
        while chunk := handle.read(1 << 16):
            newline = chunk.find(b"\n")
            tail.append(chunk if newline < 0 else chunk[: newline + 1])
            if newline >= 0:
                break
        data += b"".join(tail)
    pos = 0
    if start > 0:  # skip the end of the line that started before `start` (it is the previous block's)
        newline = data.find(b"\n")
        if newline < 0:
            return
        pos = newline + 1
    while pos < len(data) and base + pos < stop:
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline
        yield base + pos, data[pos:end]
        pos = end + 1


def _parse_record(raw: bytes, fields: Mapping[str, str | None], want_int: bool) -> tuple[dict[str, Any], str | None]:
    """(record, why the line is bad or None)."""
    if not raw.strip():
        return {}, "blank line, not a JSON object"
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return {}, f"not valid JSON ({getattr(exc, 'msg', exc)})"
    if not isinstance(record, dict):
        return {}, f"a JSON {type(record).__name__}, not an object"
    id_field, text_field = fields["id"], fields["text"]
    if id_field not in record:
        return record, f"no {id_field!r} field"
    row_id = record[id_field]
    if row_id is None:
        return record, "id is null"
    if not _id_ok(row_id, want_int):
        expected = "a 64-bit integer" if want_int else "a string"
        return record, f"id {row_id!r} is {type(row_id).__name__}, not {expected}"
    if text_field not in record:
        return record, f"no {text_field!r} field"
    return record, None


def _read_jsonl(fs: pafs.FileSystem, file: InputFile, block: Block, plan: Plan) -> BlockRows:
    if file.compressed:
        with fs.open_input_stream(file.path, compression="detect") as handle:
            data = handle.read()
        lines, offset = [], 0
        for raw in data.split(b"\n"):
            lines.append((offset, raw))
            offset += len(raw) + 1
        if lines and not lines[-1][1]:
            lines.pop()  # the file's final newline ends the last line; it starts no new one
    else:
        with fs.open_input_file(file.path) as handle:
            lines = list(_lines_in_range(handle, block.start, block.stop))
    want_int = plan.id_type == "int64"
    raw_ids: list[Any] = []
    texts: list[Any] = []
    titles: list[Any] = []
    bad: dict[int, str] = {}
    for row, (_, raw) in enumerate(lines):
        record, problem = _parse_record(raw.removesuffix(b"\r"), plan.columns, want_int)
        if problem is not None:
            bad[row] = problem
        raw_ids.append(record.get(plan.columns["id"]))  # type: ignore[arg-type]
        texts.append(None if problem else record[plan.columns["text"]])  # type: ignore[index]
        titles.append(record.get(plan.columns["title"]) if plan.columns["title"] else None)
    typed = [value if _id_ok(value, want_int) else None for value in raw_ids]
    ids = pa.array(typed, type=pa.int64() if want_int else pa.string())
    return BlockRows(ids, raw_ids, texts, titles if plan.columns["title"] else None, [o for o, _ in lines], bad)


def _id_ok(value: Any, want_int: bool) -> bool:
    if want_int:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return isinstance(value, str)


def _read_parquet(fs: pafs.FileSystem, file: InputFile, block: Block, plan: Plan) -> BlockRows:
    columns = [c for c in (plan.columns["id"], plan.columns["text"], plan.columns["title"]) if c]
    with fs.open_input_file(file.path) as handle:
        table = pq.ParquetFile(handle).read_row_groups(range(block.start, block.stop), columns=columns)
    ids = table.column(plan.columns["id"]).combine_chunks().cast(pa.type_for_alias(plan.id_type))
    texts = table.column(plan.columns["text"]).to_pylist()
    titles = table.column(plan.columns["title"]).to_pylist() if plan.columns["title"] else None
    bad = {int(i): "id is null" for i in np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))}
    return BlockRows(ids, ids.to_pylist(), texts, titles, list(range(block.first_row, block.first_row + len(ids))), bad)


def read_block(plan: Plan, block: Block) -> BlockRows:
    file = plan.files[block.file]
    fs, _ = resolve_filesystem(plan.input)
    reader = _read_parquet if file.format == "parquet" else _read_jsonl
    return reader(fs, file, block, plan)


# -- the output directory -------------------------------------------------------------------------


class OutputDir:
    """`part-*.parquet` (the embeddings), `_job.json` (settings and plan), `_blocks/` (per-block reports),
    `_bad_rows.jsonl` and `_SUCCESS` (written at the end). Readers of Parquet datasets skip `_` names."""

    MANIFEST = "_job.json"
    SUCCESS = "_SUCCESS"
    BAD_ROWS = "_bad_rows.jsonl"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = resolve_filesystem(uri)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def part(self, name: str) -> str:
        return self.path(f"{name}.parquet")

    def report(self, name: str) -> str:
        return self.path("_blocks", f"{name}.json")

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def prepare(self) -> None:
        for directory in (self.root, self.path("_blocks"), self.path("_tmp")):
            self.fs.create_dir(directory, recursive=True)

    def finished_parts(self) -> set[str]:
        """Names of the blocks whose part file exists (complete: parts appear only by rename)."""
        info = self.fs.get_file_info(self.root)
        if info.type != pafs.FileType.Directory:
            return set()
        listing = self.fs.get_file_info(pafs.FileSelector(self.root))
        return {
            i.base_name.removesuffix(".parquet")
            for i in listing
            if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")
        }

    def clear_temporary(self) -> None:
        """Drop half-written files of an interrupted run (they never had a final name)."""
        if self.fs.get_file_info(self.path("_tmp")).type == pafs.FileType.Directory:
            self.fs.delete_dir_contents(self.path("_tmp"), missing_dir_ok=True)

    def write_atomic(self, path: str, write: Callable[[str], None]) -> None:
        """`write(temporary path)`, then move it to `path`: a reader sees the whole file or none."""
        temporary = self.path("_tmp", f"{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}")
        try:
            write(temporary)
            self.fs.move(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(temporary)
            raise

    def write_json(self, path: str, value: Any) -> None:
        def write(temporary: str) -> None:
            with self.fs.open_output_stream(temporary) as out:
                out.write(json.dumps(value, ensure_ascii=False, default=str).encode())

        self.write_atomic(path, write)

    def write_bytes(self, path: str, data: bytes) -> None:
        def write(temporary: str) -> None:
            with self.fs.open_output_stream(temporary) as out:
                out.write(data)

        self.write_atomic(path, write)

    def write_parquet(self, path: str, table: pa.Table) -> None:
        self.write_atomic(path, lambda temporary: pq.write_table(table, temporary, filesystem=self.fs))

    def read_json(self, path: str) -> Any:
        with self.fs.open_input_stream(path) as handle:
            return json.loads(handle.read())

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.path(self.MANIFEST)
        return self.read_json(path) if self.exists(path) else None
