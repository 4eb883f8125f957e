"""Reading GGUF files: metadata and tensors, dequantized to torch.

The file is parsed by the `gguf` package (`GGUFReader`, memory-mapped); this module only turns its raw
blocks into float tensors (the reading side of `gguf_export.py`; `encdec/` imports Gemma 3 decoders with it).
Dequantization is done in torch, whole tensors at once, with the same fp32 arithmetic in the same order as
ggml's reference (`ggml-quants.c`, mirrored by `gguf.quants`), so the results equal the `gguf` package's
numpy reference bit for bit (tests/encdec/test_gguf_read.py):

- ``Q8_0``: blocks of 32: fp16 d, 32 int8 q; x = q * d.
- ``Q5_0``: blocks of 32: fp16 d, 32 high bits (one uint32), 16 bytes of low nibbles; x = (q - 16) * d.
- ``Q4_K``: super-blocks of 256 in 8 sub-blocks of 32: fp16 d and dmin, 6-bit scale and min per
  sub-block packed in 12 bytes, 4-bit q; x = (d * sc) * q - (dmin * m).
- ``Q6_K``: super-blocks of 256 in 16 sub-blocks of 16: 4 low bits, 2 high bits, int8 scale per
  sub-block, fp16 d; x = (d * sc) * (q - 32).
- ``F32``, ``F16``, ``BF16``: read as they are.

GGUF lists dimensions innermost first (ggml's ne0 = the row length); tensors come back in torch order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeddinggemma.quant.formats import dequantize as dequantize_blocks

__all__ = ["SUPPORTED_TYPES", "GGUFError", "GGUFFile", "dequantize", "read_gguf"]

QK_K = 256  # super-block length of the K-quants


class GGUFError(ValueError):
    """A GGUF file this reader cannot turn into tensors."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFError("reading GGUF files needs the gguf package: pip install 'embeddinggemma[encdec]'") from None
    return gguf


def _halves(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 values from pairs of bytes (..., 2k) -> (..., k) float32."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return raw & 0x0F, raw >> 4


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    # the layout our own Q8_0 weights use (quant/formats.py): one block per row, x = q * d
    return dequantize_blocks(blocks[:, 2:].contiguous().view(torch.int8), _halves(blocks[:, :2]))


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _halves(blocks[:, :2])
    high_bytes = blocks[:, 2:6]  # one little-endian uint32: bit i is the fifth bit of value i
    shifts = torch.arange(8, dtype=torch.uint8)
    high = ((high_bytes[:, :, None] >> shifts) & 1).reshape(-1, 32)
    low, top = _nibbles(blocks[:, 6:22])  # values 0..15 in the low nibbles, 16..31 in the high ones
    q = torch.cat([low, top], dim=1) | (high << 4)
    return d * (q.to(torch.int8) - 16).float()


def _q4_k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins of a Q4_K super-block from its 12 packed bytes: (n, 12) -> 2 x (n, 8)."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mins


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _halves(blocks[:, 0:2])
    dmin = _halves(blocks[:, 2:4])
    sc, mins = _q4_k_scales(blocks[:, 4:16])
    scale = (d * sc.float()).reshape(n, 8, 1)
    offset = (dmin * mins.float()).reshape(n, 8, 1)
    qs = blocks[:, 16:].reshape(n, 4, 1, 32)  # 4 groups of 32 bytes: sub-block 2g low nibbles, 2g+1 high
    q = torch.cat(_nibbles(qs), dim=2).reshape(n, 8, 32).float()
    return (scale * q - offset).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = _halves(blocks[:, 208:210])
    scale = (d * scales).reshape(n, 16, 1)
    low = torch.cat(_nibbles(ql.reshape(n, 2, 1, 64)), dim=2).reshape(n, 8, 32)
    high = torch.cat([(qh.reshape(n, 2, 1, 32) >> s) & 3 for s in (0, 2, 4, 6)], dim=2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (scale * q).reshape(n, QK_K)


# type name -> (values per block, bytes per block, block decoder)
_BLOCK_TYPES = {
    "Q8_0": (32, 34, _q8_0),
    "Q5_0": (32, 22, _q5_0),
    "Q4_K": (QK_K, 144, _q4_k),
    "Q6_K": (QK_K, 210, _q6_k),
}
_PLAIN_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUPPORTED_TYPES = tuple(_PLAIN_TYPES) + tuple(_BLOCK_TYPES)
_CHUNK_BLOCKS = 1 << 16  # bounded temporaries for the 168M-value embedding table


def dequantize(raw: np.ndarray | torch.Tensor, type_name: str, shape: Iterable[int]) -> torch.Tensor:
    """float32 tensor of torch `shape` (outermost first) from a GGUF tensor's raw bytes of type `type_name`."""
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape))
    data = torch.from_numpy(np.array(raw, copy=True).view(np.uint8).reshape(-1))  # GGUFReader maps read-only
    if type_name in _PLAIN_TYPES:
        values = data.view(_PLAIN_TYPES[type_name])
        if values.numel() != count:
            raise GGUFError(f"{type_name} tensor holds {values.numel()} values, its shape {shape} needs {count}")
        return values.float().reshape(shape)
    if type_name not in _BLOCK_TYPES:
        raise GGUFError(f"GGUF tensor type {type_name} is not supported (supported: {', '.join(SUPPORTED_TYPES)})")
    per_block, block_bytes, decode = _BLOCK_TYPES[type_name]
    if count % per_block or data.numel() != count // per_block * block_bytes:
        raise GGUFError(f"{type_name} tensor of shape {shape}: {data.numel()} bytes do not form whole blocks")
    blocks = data.reshape(-1, block_bytes)
    out = torch.empty(blocks.shape[0], per_block)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[start : start + _CHUNK_BLOCKS] = decode(blocks[start : start + _CHUNK_BLOCKS])
    return out.reshape(shape)


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]  # torch order (outermost first)


class GGUFFile:
    """A GGUF file's metadata (key -> value) and tensors (dequantized on request)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"GGUF file {self.path} does not exist")
        gguf = _gguf()
        try:
            self._reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError) as exc:
            raise GGUFError(f"{self.path} is not a readable GGUF file ({exc})") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}

    @property
    def reader(self) -> Any:
        """The underlying `gguf.GGUFReader` (parsing a file's 262k-token vocabulary takes seconds: reuse it)."""
        return self._reader

    @property
    def metadata(self) -> dict[str, Any]:
        """Every metadata key with its value (arrays as lists), except the tokenizer's vocabulary arrays."""
        out = {}
        for key, field in self._reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
                continue
            out[key] = field.contents()
        return out

    def field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def tensor_info(self) -> dict[str, GGUFTensorInfo]:
        return {
            name: GGUFTensorInfo(name, t.tensor_type.name, tuple(int(s) for s in reversed(t.shape)))
            for name, t in self._tensors.items()
        }

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` dequantized to float32, in torch order."""
        if name not in self._tensors:
            raise GGUFError(f"{self.path} has no tensor {name!r}")
        t = self._tensors[name]
        shape = tuple(int(s) for s in reversed(t.shape))
        return dequantize(np.asarray(t.data), t.tensor_type.name, shape)


def read_gguf(path: str | Path) -> GGUFFile:
    return GGUFFile(path)
