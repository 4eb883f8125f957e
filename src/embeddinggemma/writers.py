"""Streaming writers for embeddings: `.npy` and JSONL, written block by block with bounded memory.

Both write to a temporary file beside the target and rename it on success, so an interrupted or
failed run never leaves a truncated file under the requested name.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_NPY_HEADER = 128  # bytes: room for any (rows, dim) shape, so the header can be rewritten in place


class _AtomicFile:
    def __init__(self, path: str, mode: str) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.file = open(self.partial, mode)  # noqa: SIM115 - closed in finish/abort

    def finish(self) -> None:
        self.file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


class NpyWriter:
    """A float32 (rows, dim) `.npy` whose row count is known only at the end."""

    def __init__(self, path: str, dim: int) -> None:
        self.dim, self.rows = dim, 0
        self._out = _AtomicFile(path, "wb")
        self._out.file.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {self.dim}), }}"
        body = text.ljust(_NPY_HEADER - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def write(self, block: np.ndarray, ids: Sequence[Any] = ()) -> None:
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"expected blocks of shape (n, {self.dim}), got {block.shape}")
        self._out.file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self._out.file.seek(0)
        self._out.file.write(self._header(self.rows))
        self._out.finish()

    def abort(self) -> None:
        self._out.abort()


class JsonlWriter:
    """One line per text: {"index", "id" (when the input had one), "embedding"}; "-" is stdout."""

    def __init__(self, path: str) -> None:
        self.rows = 0
        self._out = None if path == "-" else _AtomicFile(path, "w")
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

    def close(self) -> None:
        if self._out is not None:
            self._out.finish()
        else:
            self._file.flush()

    def abort(self) -> None:
        if self._out is not None:
            self._out.abort()


def open_writer(path: str, dim: int) -> NpyWriter | JsonlWriter:
    if path.endswith(".npy"):
        return NpyWriter(path, dim)
    if path == "-" or path.endswith((".jsonl", ".ndjson")):
        return JsonlWriter(path)
    raise ValueError(f"output {path!r}: use a .npy or .jsonl file name, or - for JSONL on stdout")
