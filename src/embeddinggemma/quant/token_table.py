"""The embedding table of the quantized CPU runtime, read row by row from disk (no torch).

Inside an ONNX graph the 262,144-row table is an initializer that ONNX Runtime maps into memory; every
looked-up row then brings its neighbours along (the kernel maps pages around each fault and reads
ahead), so embedding a few thousand distinct tokens made most of the table resident: ~200 MB of the
int8 runtime's peak RSS for the benchmark's 48 passages. The runtime graph therefore takes token
embeddings as input, and this module reads only the rows a batch uses, with `os.pread` (nothing
mapped), decoding them in numpy with the model's arithmetic: rows = values * scale (per row or per
block of 32), then times sqrt(hidden).

File: fixed-size records, one per token id, each the row's values as the layout stores them (int8;
Q4_0 nibbles low-first with offset 8; Q8_0 with offset 128; or fp32) followed by its fp32 scales. How to
read it (the layout and the sizes) travels in the ONNX graph's metadata under `METADATA_KEY`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

METADATA_KEY = "embeddinggemma.token_table"
TOKEN_EMBEDDINGS = "token_embeddings"  # the runtime graph's input that replaces input_ids


@dataclass(frozen=True)
class TableFormat:
    """How the rows are stored: `bits` 32 (fp32 values, no scales), 8 or 4; `block` values per scale
    (0: one per row); `embed_scale` multiplies every decoded row (Gemma's sqrt(hidden), in fp32)."""

    file: str
    rows: int
    cols: int
    bits: int
    block: int
    embed_scale: float

    @property
    def scales_per_row(self) -> int:
        if self.bits == 32:
            return 0
        return self.cols // self.block if self.block else 1

    @property
    def value_bytes(self) -> int:
        return self.cols * self.bits // 8

    @property
    def record_bytes(self) -> int:
        return self.value_bytes + 4 * self.scales_per_row

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TableFormat:
        return cls(**json.loads(text))


def pack_unsigned(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed values (R, C) -> uint8 with offset 2**(bits-1), two per byte low nibble first for 4 bits
    (R, C * bits / 8): the layout of ONNX Runtime's MatMulNBits / GatherBlockQuantized and of this file."""
    unsigned = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    if bits == 8:
        return unsigned
    return unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)


def encode_records(values: np.ndarray, scales: np.ndarray | None, table: TableFormat) -> bytes:
    """Rows (R, C) -> the file's bytes. `values`: int8 q in the layout's range (fp32 rows when bits is 32);
    `scales`: (R, scales_per_row) fp32."""
    if table.bits == 32:
        return np.ascontiguousarray(values, dtype="<f4").tobytes()
    packed = pack_unsigned(values, table.bits)
    scales = np.ascontiguousarray(scales, dtype="<f4").reshape(len(values), table.scales_per_row)
    return np.concatenate([packed, scales.view(np.uint8)], axis=1).tobytes()


class TokenTable:
    """Looks up token rows of a table file: ids (B, T) -> fp32 (B, T, C), reading only the distinct ids."""

    def __init__(self, path: str | Path, table: TableFormat) -> None:
        self._fd = -1
        self.path, self.format = Path(path), table
        expected = table.rows * table.record_bytes
        size = self.path.stat().st_size
        if size != expected:
            raise ValueError(f"{self.path} has {size} bytes, its format says {expected}; convert the model again")
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        table = self.format
        unique, inverse = np.unique(ids, return_inverse=True)
        if unique.size and (unique[0] < 0 or unique[-1] >= table.rows):
            bad = unique[0] if unique[0] < 0 else unique[-1]
            raise ValueError(f"token id {bad} is outside the embedding table (0..{table.rows - 1})")
        size = table.record_bytes
        raw = b"".join(os.pread(self._fd, size, int(token) * size) for token in unique)
        rows = self.decode(np.frombuffer(raw, dtype=np.uint8).reshape(len(unique), size))
        return rows[inverse.reshape(-1)].reshape(*ids.shape, table.cols)

    def decode(self, records: np.ndarray) -> np.ndarray:
        """(N, record_bytes) uint8 -> (N, C) fp32, times embed_scale."""
        table, count = self.format, len(records)
        scale = np.float32(table.embed_scale)
        if table.bits == 32:
            return records.view("<f4").reshape(count, table.cols) * scale
        values = records[:, : table.value_bytes]
        if table.bits == 4:
            values = np.stack([values & 0x0F, values >> 4], axis=-1).reshape(count, table.cols)
        q = values.astype(np.float32) - np.float32(1 << (table.bits - 1))
        scales = records[:, table.value_bytes :].copy().view("<f4")  # (N, scales_per_row)
        block = table.block or table.cols
        rows = (q.reshape(count, -1, block) * scales[:, :, None]).reshape(count, table.cols)
        return rows * scale
