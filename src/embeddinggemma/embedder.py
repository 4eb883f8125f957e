"""The public API: `Embedder.from_pretrained(...)`, `encode`, `encode_query`, `encode_document`, `similarity`.

Mirrors sentence-transformers' embedding API (prompts by task, Matryoshka `dim`, numpy or torch
outputs) on our own model. Long inputs are sorted by length internally, so batches carry little
padding, and results come back in input order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from embeddinggemma.checkpoint import DEFAULT_MODEL, CheckpointInfo, load_checkpoint, save_checkpoint
from embeddinggemma.config import EmbeddingGemmaConfig, refuse_float16
from embeddinggemma.engine.runners import PackedRunner, PaddedRunner, Runner
from embeddinggemma.engine.stream import chunked, prefetch_map
from embeddinggemma.inputs import (  # noqa: F401 (re-exported: callers import them from here)
    Texts,
    as_text_list,
    as_title_list,
    check_dim,
    check_max_seq_length,
    check_ordered,
    check_text,
    choose_prompt,
    lone_surrogate,
)
from embeddinggemma.matryoshka import matryoshka_truncate, trained_dims
from embeddinggemma.model import EmbeddingGemma
from embeddinggemma.prompts import PromptTable, document_prompt
from embeddinggemma.tokenizer import (
    BaseTokenizer,
    OnTruncation,
    TextTokenizer,
    TokenizerBackend,
    TokenizerProcesses,
    load_tokenizer,
)

logger = logging.getLogger(__name__)

Output = Literal["numpy", "torch"]

# Texts tokenised per step when tokenisation overlaps the device's work (GPU engine).
PIPELINE_CHUNK = 16384
# Inputs of more texts than this tokenise chunk by chunk while the device works (smaller ones in one go).
PIPELINE_MIN_TEXTS = 512
# The device waits for the first chunk's tokens, so it is small (128 texts); chunks then double, each
# tokenised while the device embeds the one before.
FIRST_PIPELINE_CHUNK = 128
# Inputs of at least this many texts on a GPU tokenise in worker processes (`TokenizerProcesses`), when
# the machine has the cores for it: one worker per core but three, which stay with the process that drives
# the GPU (the launching thread, the packing thread, the thread that receives the workers' results).
PROCESS_TOKENIZE_MIN_TEXTS = 4096
MIN_CPUS_FOR_TOKENIZER_PROCESSES = 8
CPUS_KEPT_FOR_THE_GPU_PROCESS = 3
MAX_TOKENIZER_PROCESSES = 16

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> fp32 on CPU, bf16 on CUDA. float16 is refused with the reason."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    refuse_float16(dtype)
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype {dtype} is not supported; use torch.float32 or torch.bfloat16")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'bfloat16'") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda if available, else cpu. A device PyTorch does not know, or this machine lacks, is a ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return resolved
    backend = getattr(torch, resolved.type, None)  # torch.mps, torch.xpu, ...
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"device {device!r} is not available in this PyTorch build or machine; use 'cpu'")
    return resolved


class Embedder:
    """EmbeddingGemma text embeddings.

    >>> model = Embedder.from_pretrained("google/embeddinggemma-300m")
    >>> q = model.encode_query("Which planet is known as the Red Planet?")
    >>> d = model.encode_document(["Mars is the Red Planet.", "Venus is Earth's twin."])
    >>> model.similarity(q, d)
    """

    def __init__(
        self,
        model: EmbeddingGemma,
        tokenizer: BaseTokenizer,
        prompts: PromptTable,
        *,
        source: Path | None = None,
        runner: Runner | None = None,
        tokenizer_workers: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.source = source
        self.runner = runner or default_runner(model, tokenizer.pad_id)
        if tokenizer_workers is not None and (not isinstance(tokenizer_workers, int) or tokenizer_workers < 0):
            raise ValueError(f"tokenizer_workers must be None (automatic) or >= 0, got {tokenizer_workers!r}")
        self.tokenizer_workers = tokenizer_workers
        self._processes: TokenizerProcesses | None = None
        self._warned_dims: set[int] = set()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        revision: str | None = None,
        max_seq_length: int | None = None,
        quantize: str | None = None,
        tokenizer: TokenizerBackend = "auto",
        engine: str = "auto",
        num_threads: int | None = None,
        tokenizer_workers: int | None = None,
        **engine_options,
    ) -> Embedder:
        """Load a sentence-transformers checkpoint: a hub id (standard HF cache) or a local directory.

        - `device`/`dtype`: defaults fp32 on CPU, bf16 on CUDA; float16 is refused.
        - `max_seq_length` lowers the 2048-token limit (longer inputs are truncated with a warning).
        - `quantize="w8a8" | "int8" | "int4" | "mixed" | "int8-channel"`: the CPU path, run by ONNX Runtime
          and converted once into a cache that is checked on every load (see `embeddinggemma.quant`).
          "w8a8" (the fastest): int8 weights per channel, each encoder product's input rounded to int8
          per token, integer GEMMs (the pooled embedding's head in fp32); the others round only the
          weights, to GGUF's Q8_0 / Q4_0 blocks (mixed: int4 embeddings, feed-forward and projections,
          int8 attention) or to int8 per channel.
        - `tokenizer`: "tokenizers" (tokenizer.json, the reference), "sentencepiece" (tokenizer.model,
          same ids, ~300 MB less peak memory) or "auto" (sentencepiece with `quantize`, else tokenizers).
        - `engine`: "padded" (sorted, padded batches), "packed" (no padding: fused Triton kernels and
          FlashAttention over the texts' offsets on CUDA) or "auto" (packed on CUDA, padded on CPU);
          `engine_options` go to the runner: `max_batch_tokens` (both), and for packed `attention`
          ("varlen", "flex", "dense"), `path` ("fused", "modules"), `compile`. On the packed engine a
          batch is bounded by `max_batch_tokens` (default 65,536) alone; `batch_size` applies to the
          padded engine.
        - `num_threads` sets PyTorch's intra-op threads (process-wide) and the quantized runtime's threads.
        - `tokenizer_workers`: processes that tokenise big inputs (>= 4,096 texts) so the thread driving
          the GPU never waits for the GIL; None: automatic (on CUDA with >= 8 CPUs, all CPUs but three,
          at most 16; none otherwise), 0: never. They start on the first big input and answer once ready.
        """
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be positive, got {num_threads}")
            torch.set_num_threads(num_threads)
        resolved_device = resolve_device(device)
        if quantize is not None:
            from embeddinggemma.quant.runtime import load_quantized, runtime_scheme

            runtime_scheme(quantize)  # an unknown scheme fails before anything is loaded
            if resolved_device.type != "cpu" or dtype not in (None, "float32", "fp32", torch.float32):
                raise ValueError(f"quantize={quantize!r} is the CPU path: use device='cpu' and leave dtype unset")
            model, info = load_quantized(name_or_path, quantize, revision=revision, num_threads=num_threads)
            # small batches bound activation memory; on CPU they cost no throughput
            engine_options.setdefault("max_batch_tokens", 1024)
        else:
            resolved_dtype = resolve_dtype(dtype, resolved_device)
            model, info = load_checkpoint(name_or_path, dtype=resolved_dtype, device=resolved_device, revision=revision)
        if tokenizer == "auto" and not quantize:
            tokenizer = "tokenizers"  # the reference; "auto" picks the low-memory one for the on-device path
        return cls.from_model(
            model,
            info,
            max_seq_length=max_seq_length,
            tokenizer=tokenizer,
            engine=engine,
            tokenizer_workers=tokenizer_workers,
            **engine_options,
        )

    @classmethod
    def from_model(
        cls,
        model: EmbeddingGemma,
        info: CheckpointInfo,
        *,
        max_seq_length: int | None = None,
        tokenizer: TokenizerBackend = "tokenizers",
        engine: str = "auto",
        tokenizer_workers: int | None = None,
        **engine_options,
    ) -> Embedder:
        limit = check_max_seq_length(max_seq_length, info.config.max_seq_length)
        backbone = info.config.backbone
        text_tokenizer = load_tokenizer(info.path, backbone, max_length=limit, backend=tokenizer)
        runner = default_runner(model, backbone.pad_token_id, engine, **engine_options)
        return cls(
            model,
            text_tokenizer,
            PromptTable(info.prompts),
            source=info.path,
            runner=runner,
            tokenizer_workers=tokenizer_workers,
        )

    # -- properties -------------------------------------------------------------------------------

    @property
    def config(self) -> EmbeddingGemmaConfig:
        return self.model.config

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        """The sizes the model was trained to be truncated to."""
        return trained_dims(self.embedding_dim)

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- encoding ---------------------------------------------------------------------------------

    def encode(
        self,
        texts: Texts,
        *,
        task: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        output: Output = "numpy",
        show_progress: bool = False,
        on_truncation: OnTruncation = "warn",
    ) -> np.ndarray | torch.Tensor:
        """Embed texts: (N, dim) for a list, (dim,) for a single string; float32.

        With neither `task` nor `prompt`, no prompt is added (as sentence-transformers' `encode`); use
        `encode_query` / `encode_document`, or `task=` (see `self.prompts`), for the trained prompts.
        `dim` keeps the first `dim` Matryoshka dimensions and re-normalises.
        """
        items, single = as_text_list(texts)
        prompt = choose_prompt(self.prompts, task, prompt)
        return self._encode_prompted(
            [prompt + text for text in items],
            single=single,
            dim=dim,
            batch_size=batch_size,
            normalize=normalize,
            output=output,
            show_progress=show_progress,
            on_truncation=on_truncation,
        )

    def encode_query(
        self, texts: Texts, *, task: str | None = None, prompt: str | None = None, **kwargs
    ) -> np.ndarray | torch.Tensor:
        """Queries with a task prompt (default: retrieval, `task: search result | query: `).

        An explicit `prompt=` replaces the task's prompt; None (for either) means "not given".
        """
        if prompt is None:
            task = "query" if task is None else task
        return self.encode(texts, task=task, prompt=prompt, **kwargs)

    def encode_document(
        self,
        texts: Texts,
        titles: Sequence[str | None] | str | None = None,
        *,
        prompt: str | None = None,
        **kwargs,
    ) -> np.ndarray | torch.Tensor:
        """Documents with `title: {title} | text: ` (or `title: none | text: ` without a title).

        `titles`: one title (or None) per text, a string for a single text. An explicit `prompt=` replaces
        the document prompt (and then takes no titles); None means "not given".
        """
        items, single = as_text_list(texts)
        if prompt is not None:
            if titles is not None:
                raise ValueError("titles select the document prompt; do not combine them with prompt=")
            return self.encode(texts, prompt=prompt, **kwargs)
        title_list = as_title_list(titles, len(items), single)
        prompted = [document_prompt(title) + text for text, title in zip(items, title_list, strict=True)]
        return self._encode_prompted(prompted, single=single, **kwargs)

    def encode_stream(
        self,
        texts: Iterable[str],
        *,
        titles: Iterable[str | None] | None = None,
        task: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = 32,
        chunk_size: int = 4096,
        normalize: bool = True,
        show_progress: bool = False,
        on_truncation: OnTruncation = "warn",
    ) -> Iterator[np.ndarray]:
        """Embed an iterable of any length with bounded memory: yields float32 blocks (<= chunk_size, dim)
        in input order.

        `titles` (an iterable aligned with `texts`) selects the document prompt as in `encode_document`;
        otherwise `task`/`prompt` as in `encode`. The next chunk is tokenised in a background thread
        while the model embeds the current one.
        """
        if isinstance(texts, str):
            raise TypeError("encode_stream takes an iterable of strings; use encode() for a single string")
        check_ordered(texts)
        if titles is not None:
            if isinstance(titles, str):
                raise TypeError("titles must be an iterable with one title (or None) per text, got a single string")
            check_ordered(titles, "titles")
        dim = self._check_dim(dim)
        if titles is not None and (task not in (None, "document") or prompt is not None):
            raise ValueError("titles select the document prompt; do not combine them with another task or prompt")
        fixed_prompt = choose_prompt(self.prompts, task, prompt)
        pairs = zip(texts, titles, strict=True) if titles is not None else ((t, None) for t in texts)
        offset = 0

        def tokenize(chunk: list[tuple[str, str | None]]) -> list[list[int]]:
            nonlocal offset
            first, offset = offset, offset + len(chunk)
            for i, (text, title) in enumerate(chunk, start=first):
                check_text(text, i)
                if title is not None:
                    check_text(title, i, "titles")
            if titles is not None:
                prompted = [document_prompt(title) + text for text, title in chunk]
            else:
                prompted = [fixed_prompt + text for text, _ in chunk]
            # a stream is big once it has passed a chunk (its length is not known in advance)
            return self._tokenize(prompted, on_truncation, first, self._tokenizer_processes(offset))

        with _progress_bar(None, show_progress) as bar:
            token_chunks = prefetch_map(tokenize, chunked(pairs, chunk_size))
            if getattr(self.runner, "pipelined", False):  # the device stays busy across chunk boundaries
                blocks = self.runner.embed_chunks(token_chunks, progress=bar.update)
            else:
                blocks = (self.runner.embed(ids, max_texts=batch_size, progress=bar.update) for ids in token_chunks)
            for embeddings in blocks:
                yield matryoshka_truncate(embeddings.numpy(), dim, normalize=normalize)

    def _encode_prompted(
        self,
        texts: Sequence[str],
        *,
        single: bool = False,
        dim: int | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        output: Output = "numpy",
        show_progress: bool = False,
        on_truncation: OnTruncation = "warn",
    ) -> np.ndarray | torch.Tensor:
        dim = self._check_dim(dim)
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(texts) > PIPELINE_MIN_TEXTS and getattr(self.runner, "pipelined", False):
            embeddings = self._embed_pipelined(texts, show_progress=show_progress, on_truncation=on_truncation)
        elif texts:
            token_ids = self.tokenizer.encode(texts, on_truncation=on_truncation)
            embeddings = self.embed_token_ids(token_ids, batch_size=batch_size, show_progress=show_progress)
        else:
            embeddings = torch.empty(0, self.embedding_dim)
        # numpy output is cut and normalised in numpy: the same arithmetic as the torch-free OnnxEmbedder
        embeddings = matryoshka_truncate(
            embeddings.numpy() if output == "numpy" else embeddings, dim, normalize=normalize
        )
        return embeddings[0] if single else embeddings

    def _embed_pipelined(
        self, texts: Sequence[str], *, show_progress: bool, on_truncation: OnTruncation
    ) -> torch.Tensor:
        """Tokenise chunk k+1 on a host thread while the device embeds chunk k (GPU engine)."""
        offset = 0

        processes = self._tokenizer_processes(len(texts))

        def tokenize(chunk: list[str]) -> Sequence[Sequence[int]]:  # chunks arrive in order, one at a time
            nonlocal offset
            first, offset = offset, offset + len(chunk)
            return self._tokenize(chunk, on_truncation, first, processes)

        with _progress_bar(len(texts), show_progress) as bar:
            token_chunks = prefetch_map(tokenize, _growing_chunks(texts))
            return torch.cat(list(self.runner.embed_chunks(token_chunks, progress=bar.update)))

    def _tokenizer_processes(self, num_texts: int) -> TokenizerProcesses | None:
        """The worker processes for an input of `num_texts` texts, started on first need; None where
        tokenising in this process is the better choice (small inputs, few cores, CPU models)."""
        if self._processes is not None:
            return self._processes if num_texts >= PROCESS_TOKENIZE_MIN_TEXTS else None
        workers = self.tokenizer_workers
        if workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            wanted = getattr(self.runner, "pipelined", False) and cpus >= MIN_CPUS_FOR_TOKENIZER_PROCESSES
            workers = min(MAX_TOKENIZER_PROCESSES, cpus - CPUS_KEPT_FOR_THE_GPU_PROCESS) if wanted else 0
        if workers == 0 or num_texts < PROCESS_TOKENIZE_MIN_TEXTS:
            return None
        if not isinstance(self.tokenizer, TextTokenizer) or self.tokenizer.source_file is None:
            return None  # only the `tokenizers` backend loaded from its file runs in workers
        self._processes = TokenizerProcesses(self.tokenizer, workers)
        return self._processes

    def _tokenize(
        self, texts: list[str], on_truncation: OnTruncation, first_index: int, processes: TokenizerProcesses | None
    ) -> Sequence[Sequence[int]]:
        """Token ids of a chunk: in the worker processes once they are ready, here until then."""
        if processes is not None and processes.ready:
            return processes.encode(texts, on_truncation, first_index=first_index)
        return self.tokenizer.encode(texts, on_truncation=on_truncation, first_index=first_index)

    def close(self) -> None:
        """Stop the tokenizer worker processes, if any were started (they also stop at exit)."""
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    def embed_token_ids(
        self, token_ids: Sequence[Sequence[int]], *, batch_size: int = 32, show_progress: bool = False
    ) -> torch.Tensor:
        """Un-normalised full-width embeddings (N, E), fp32 on CPU, in input order."""
        with _progress_bar(len(token_ids), show_progress) as bar:
            return self.runner.embed(token_ids, max_texts=batch_size, progress=bar.update)

    def _check_dim(self, dim: int | None) -> int:
        return check_dim(dim, self.embedding_dim, self.matryoshka_dims, self._warned_dims, stacklevel=5)

    # -- similarity and saving --------------------------------------------------------------------

    @staticmethod
    def similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Cosine similarity matrix (N, M) of two sets of embeddings; returns numpy if `a` is numpy."""
        ta, tb = (torch.as_tensor(x).float() for x in (a, b))
        ta, tb = (t.unsqueeze(0) if t.ndim == 1 else t for t in (ta, tb))
        if ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[1]:
            raise ValueError(
                f"similarity needs two (N, D) arrays with the same D, got {tuple(ta.shape)} and {tuple(tb.shape)}"
            )
        scores = F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T
        return scores.numpy() if isinstance(a, np.ndarray) else scores

    def save(self, path: str | Path) -> Path:
        """Write the sentence-transformers layout; `SentenceTransformer(path)` loads it."""
        if self.source is None:
            raise ValueError("this Embedder was not loaded from a checkpoint; there is no tokenizer to save")
        return save_checkpoint(self.model, path, tokenizer_dir=self.source, prompts=self.prompts.checkpoint_prompts)


def _growing_chunks(texts: Sequence[str]) -> Iterator[list[str]]:
    """Chunks that double from FIRST_PIPELINE_CHUNK to PIPELINE_CHUNK texts: the device starts after a
    small chunk, and each chunk tokenises (several threads) while the device embeds the one before."""
    start, size = 0, FIRST_PIPELINE_CHUNK
    while start < len(texts):
        yield list(texts[start : start + size])
        start, size = start + size, min(2 * size, PIPELINE_CHUNK)


def default_runner(model: EmbeddingGemma, pad_id: int, engine: str = "auto", **options) -> Runner:
    """`auto`: packed batches on CUDA (no padding; fused kernels, FlashAttention over the texts' offsets),
    sorted padded batches on CPU."""
    if hasattr(model, "make_runner"):  # a model run by another runtime (the quantized CPU path) brings its own
        return model.make_runner(pad_id, engine, **options)
    if engine == "auto":
        engine = "packed" if model.device.type == "cuda" else "padded"
    if engine == "padded":
        return PaddedRunner(model, pad_id=pad_id, **options)
    if engine == "packed":
        return PackedRunner(model, pad_id=pad_id, **options)
    raise ValueError(f"engine must be 'auto', 'padded' or 'packed', got {engine!r}")


def _progress_bar(total: int | None, show: bool):
    """tqdm's bar, drawn after half a second so quick calls stay quiet; tqdm's own TQDM_DELAY
    environment variable, when set, decides instead."""
    from tqdm.auto import tqdm

    delay = {} if "TQDM_DELAY" in os.environ else {"delay": 0.5}
    return tqdm(total=total, disable=not show, unit="text", desc="embedding", **delay)
