"""The quantized CPU runtime behind `Embedder.from_pretrained(..., quantize=...)`: ONNX Runtime.

Chosen by measurement (benchmarks/cpu.py, README "Quantization"): ONNX Runtime on a graph written from
fused operators; for w8a8 its integer GEMMs (int8 activations per token), for the weight-only schemes
its block kernels (`MatMulNBits`) on our exact Q8_0 / Q4_0 integers. It beat PyTorch's int8
(`torch.ops.quantized`, now retired here) and llama.cpp, and OpenVINO on queries.

The converted graph and its cache are in `cache.py` / `convert.py`; the session and its batching are
the torch-free `ondevice.OnnxSession`, which `OnnxEmbedder` runs too. This module wraps that session as
a model behind the Embedder's runner (torch tensors in and out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from embeddinggemma.checkpoint_info import CheckpointInfo
from embeddinggemma.config import EmbeddingGemmaConfig
from embeddinggemma.quant.cache import (  # noqa: F401 (re-exported: the runtime's public names)
    CACHE_VERSION,
    DATA_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    RUNTIME_SCHEMES,
    cache_entry,
    check_cache,
    default_cache_dir,
    file_sha256,
    runtime_scheme,
    source_fingerprint,
)
from embeddinggemma.quant.convert import convert_checkpoint  # noqa: F401 (re-exported)
from embeddinggemma.quant.ondevice import MAX_BATCH_TOKENS, OnnxSession, quantized_model_file


class OnnxEmbeddingModel(nn.Module):
    """An ONNX Runtime session standing in for `EmbeddingGemma` behind the Embedder's padded runner:
    same `forward(input_ids, attention_mask, normalize)`, `config`, `device` and `dtype`."""

    def __init__(self, path: Path, config: EmbeddingGemmaConfig, num_threads: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.path = Path(path)
        self.runtime = OnnxSession(self.path, num_threads or torch.get_num_threads())
        self.session = self.runtime.session
        self.num_threads = self.runtime.num_threads

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def make_runner(self, pad_id: int, engine: str = "auto", **options) -> OnnxRunner:
        """The Embedder's runner for this model (`Embedder.from_model` asks the model when it can)."""
        if engine not in ("auto", "padded"):
            raise ValueError(f"the quantized CPU runtime runs padded batches; engine={engine!r} is not available")
        return OnnxRunner(self, pad_id=pad_id, **options)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool | None = None
    ) -> torch.Tensor:
        ids, mask = (t.cpu().numpy().astype("int64", copy=False) for t in (input_ids, attention_mask))
        out = torch.from_numpy(self.runtime.run(ids, mask))
        return F.normalize(out, dim=-1) if (self.config.head.normalize if normalize is None else normalize) else out

    def extra_repr(self) -> str:
        return f"{self.path}, {self.num_threads} threads"


@dataclass
class OnnxRunner:
    """Sorted, right-padded batches under a token budget (as the engine's padded runner), run by ONNX Runtime."""

    model: nn.Module  # OnnxEmbeddingModel, or any model with `config` and `forward(ids, mask, normalize)`
    pad_id: int = 0
    max_batch_tokens: int = MAX_BATCH_TOKENS

    def embed(
        self, token_ids: Sequence[Sequence[int]], *, max_texts: int | None = 32, progress: Callable | None = None
    ) -> torch.Tensor:
        """Un-normalised full-width fp32 embeddings (N, E), in input order."""
        runtime = getattr(self.model, "runtime", None)
        if isinstance(runtime, OnnxSession):  # the torch-free path's own batching: the same numbers
            out = runtime.embed(
                token_ids,
                pad_id=self.pad_id,
                embedding_dim=self.model.config.embedding_dim,
                max_batch_tokens=self.max_batch_tokens,
                max_texts=max_texts,
                progress=progress,
            )
            return torch.from_numpy(out)
        return self._embed_module(token_ids, max_texts, progress)

    def _embed_module(self, token_ids, max_texts, progress) -> torch.Tensor:
        from embeddinggemma.engine.batching import pad_batch, token_budget_batches

        lengths = [len(ids) for ids in token_ids]
        out = torch.empty(len(token_ids), self.model.config.embedding_dim, dtype=torch.float32)
        for rows in token_budget_batches(lengths, self.max_batch_tokens, max_texts or 32, pad_to_longest=True):
            input_ids, attention_mask = pad_batch([token_ids[i] for i in rows], self.pad_id)
            out[rows] = self.model(input_ids, attention_mask, normalize=False)
            if progress:
                progress(len(rows))
        return out


def load_quantized(
    name_or_path: str | Path,
    scheme: str,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    num_threads: int | None = None,
) -> tuple[OnnxEmbeddingModel, CheckpointInfo]:
    """The quantized CPU model of a checkpoint, converting it once (~10 s) into the cache."""
    path, info = quantized_model_file(name_or_path, scheme, cache_dir=cache_dir, revision=revision)
    return OnnxEmbeddingModel(path, info.config, num_threads), info
