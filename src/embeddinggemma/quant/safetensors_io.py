"""Minimal safetensors reading for low-memory loading: plain reads, and memory maps where wanted.

The safetensors library memory-maps whole files, and every page it touches counts against the
process until the file is closed. The format is simple (8-byte header size, JSON header, raw
little-endian data), so we read tensors and row ranges with ordinary file reads (pages go to the
page cache, not to the process) and memory-map only what should stay mapped: the embedding table.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NUMPY = {"F32": np.float32, "I8": np.int8, "BF16": np.uint16, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def _to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "BF16" else tensor


class SafetensorsReader:
    """Read tensors or row ranges of a safetensors file without memory-mapping it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            self.header: dict[str, Any] = json.loads(f.read(size))
        self.data_start = 8 + size

    def _meta(self, name: str) -> dict[str, Any]:
        try:
            return self.header[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {name!r}") from None

    def read(self, name: str) -> torch.Tensor:
        meta = self._meta(name)
        return (
            self.read_rows(name, 0, meta["shape"][0] if meta["shape"] else 1) if meta["shape"] else self._scalar(meta)
        )

    def _scalar(self, meta: dict[str, Any]) -> torch.Tensor:
        array = np.fromfile(
            self.path, dtype=_NUMPY[meta["dtype"]], count=1, offset=self.data_start + meta["data_offsets"][0]
        )
        return _to_torch(array.reshape(()), meta["dtype"])

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (clamped to its length), as an owned tensor."""
        meta = self._meta(name)
        shape = meta["shape"]
        stop = min(stop, shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64))
        dtype = np.dtype(_NUMPY[meta["dtype"]])
        offset = self.data_start + meta["data_offsets"][0] + start * row * dtype.itemsize
        array = np.fromfile(self.path, dtype=dtype, count=(stop - start) * row, offset=offset)
        return _to_torch(array.reshape(stop - start, *shape[1:]), meta["dtype"])


def mmap_tensor(path: str | Path, name: str, header: Mapping[str, Any] | None = None) -> torch.Tensor:
    """A tensor backed by a copy-on-write memory map: pages load on first touch and are shared."""
    reader_header = header if header is not None else SafetensorsReader(path).header
    meta = reader_header[name]
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
    array = np.memmap(
        path,
        dtype=_NUMPY[meta["dtype"]],
        mode="c",
        offset=8 + size + meta["data_offsets"][0],
        shape=tuple(meta["shape"]),
    )
    return _to_torch(array, meta["dtype"])
