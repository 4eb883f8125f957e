"""Streaming writers for embeddings: `.npy` and JSONL, written block by block with bounded memory.

Both write to a temporary file beside the target and rename it on success, so an interrupted or
failed run never leaves a truncated file under the requested name (and leaves an existing file as
it was).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_FLOAT32 = np.dtype("<f4")


def check_output_path(path: str | Path) -> Path:
    """The output file as a Path, or a ValueError saying why it cannot be written (checked before any work)."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name such as {target / 'embeddings.npy'}")
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: no permission to create files in {parent}")
    return target


class _AtomicFile:
    """A temporary file beside `path`, renamed onto it by `finish` and deleted by `abort`."""

    def __init__(self, path: str | Path, mode: str) -> None:
        self.path = check_output_path(path)
        try:
            handle, partial = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        except OSError as exc:
            raise ValueError(f"cannot write {path}: {exc.strerror}") from None
        self.partial = Path(partial)
        self.file = os.fdopen(handle, mode)

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())  # the rename must not publish a file whose data is still in flight
        self.file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


class NpyWriter:
    """A float32 (rows, dim) `.npy` whose row count is known only at the end.

    numpy's header leaves room for the row count to grow in place, so the header is written with the
    rows so far and rewritten with the final count on `close`. `dim` may be left to the first block.
    """

    def __init__(self, path: str | Path, dim: int | None = None) -> None:
        self.path, self.dim, self.rows = str(path), dim, 0
        self._header_size: int | None = None
        self._out = _AtomicFile(path, "wb")

    def _write_header(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(_FLOAT32),
            "fortran_order": False,
            "shape": (self.rows, self.dim),
        }
        self._out.file.seek(0)
        np.lib.format.write_array_header_1_0(self._out.file, header)
        size = self._out.file.tell()
        if self._header_size is not None and size != self._header_size:  # numpy reserves the room; never expected
            raise RuntimeError(f".npy header changed size ({self._header_size} -> {size} bytes)")
        self._header_size = size

    def write(self, block: np.ndarray, ids: Sequence[Any] = ()) -> None:
        if self.dim is None and block.ndim == 2:
            self.dim = block.shape[1]
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"expected blocks of shape (n, {self.dim}), got {block.shape}")
        if self._header_size is None:
            self._write_header()
        self._out.file.write(np.ascontiguousarray(block, dtype=_FLOAT32).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self.dim is None:
            raise ValueError("nothing to write: no rows, and no dim to describe an empty array")
        self._write_header()
        self._out.finish()

    def abort(self) -> None:
        self._out.abort()


class JsonlWriter:
    """One line per text: {"index", "id" (when the input had one), "embedding"}; "-" is stdout."""

    def __init__(self, path: str | Path) -> None:
        self.path, self.rows = str(path), 0
        self._out = None if self.path == "-" else _AtomicFile(path, "w")
        self._file = sys.stdout if self._out is None else self._out.file

    def write(self, block: np.ndarray, ids: Sequence[Any] = ()) -> None:
        ids = list(ids) or [None] * len(block)
        for vector, text_id in zip(block, ids, strict=True):
            row: dict[str, Any] = {"index": self.rows}
            if text_id is not None:
                row["id"] = text_id
            row["embedding"] = [round(float(x), 7) for x in vector]
            self._file.write(json.dumps(row) + "\n")
            self.rows += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.finish()
        else:
            self._file.flush()

    def abort(self) -> None:
        if self._out is not None:
            self._out.abort()


OUTPUT_SUFFIXES = (".npy", ".jsonl", ".ndjson")


def open_writer(path: str | Path, dim: int | None = None) -> NpyWriter | JsonlWriter:
    """A writer chosen by the file name (`.npy`, `.jsonl`/`.ndjson`, or "-" for JSONL on stdout)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return NpyWriter(path, dim)
    if str(path) == "-" or suffix in (".jsonl", ".ndjson"):
        return JsonlWriter(path)
    raise ValueError(f"output {path!r}: use a .npy or .jsonl file name, or - for JSONL on stdout")
