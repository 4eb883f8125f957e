"""The on-device runtime without torch: a converted ONNX graph run by ONNX Runtime, behind the same
prompts, Matryoshka cut and normalisation as `Embedder`.

`OnnxEmbedder` imports numpy, onnxruntime and the tokenizer library (sentencepiece by default, or
`tokenizers`) and none of the package's torch modules, so a process that loads and embeds stays small
(README "Quantization": peak RSS). The graph comes from the conversion cache (`cache.py`); a missing or
stale conversion is built once by `convert.py`, which imports torch for that one run.
`Embedder.from_pretrained(..., quantize=...)` runs the same `OnnxSession`, so both give the same
embeddings bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embeddinggemma.checkpoint_info import DEFAULT_MODEL, CheckpointInfo, read_checkpoint_info, resolve_checkpoint
from embeddinggemma.config import EmbeddingGemmaConfig
from embeddinggemma.engine.budget import token_budget_batches
from embeddinggemma.inputs import Texts, as_text_list, as_title_list, check_dim, check_max_seq_length, choose_prompt
from embeddinggemma.matryoshka import matryoshka_truncate, trained_dims
from embeddinggemma.prompts import PromptTable, document_prompt
from embeddinggemma.quant.cache import MODEL_FILE, cache_entry, check_cache, default_cache_dir, runtime_scheme
from embeddinggemma.quant.token_table import METADATA_KEY, TableFormat, TokenTable
from embeddinggemma.tokenizer import BaseTokenizer, OnTruncation, TokenizerBackend, load_tokenizer

logger = logging.getLogger(__name__)

# Small batches bound activation memory; on CPU they cost no throughput.
MAX_BATCH_TOKENS = 1024


def quantized_model_file(
    name_or_path: str | Path, scheme: str, *, cache_dir: str | Path | None = None, revision: str | None = None
) -> tuple[Path, CheckpointInfo]:
    """The cached ONNX file of a checkpoint for a scheme, converting it once (~10 s, imports torch)."""
    scheme = runtime_scheme(scheme)
    root = resolve_checkpoint(name_or_path, revision)
    info, _ = read_checkpoint_info(root)
    entry = cache_entry(root, scheme, Path(cache_dir) if cache_dir else default_cache_dir())
    problem = check_cache(entry, root, scheme)
    if problem is not None:
        from embeddinggemma.quant.convert import convert_checkpoint

        logger.warning("converting %s to %s once (~10 s): %s; cache: %s", root, scheme, problem, entry)
        convert_checkpoint(root, scheme, entry)
    return entry / MODEL_FILE, info


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to the longest: (input_ids, attention_mask), both (B, T) int64."""
    input_ids = np.full((len(rows), max(map(len, rows))), pad_id, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class OnnxSession:
    """An ONNX Runtime session of a converted graph: padded int64 batches -> un-normalised embeddings."""

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or 0  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.num_threads = options.intra_op_num_threads
        self.input_names = [node.name for node in self.session.get_inputs()]
        # the runtime's graphs read their embedding table row by row (token_table.py); exported ones hold it
        table = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if table is not None:
            table_format = TableFormat.from_json(table)
            self.token_table: TokenTable | None = TokenTable(self.path.parent / table_format.file, table_format)
        else:
            self.token_table = None

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids and mask -> (B, E) float32."""
        first = input_ids if self.token_table is None else self.token_table.lookup(input_ids)
        feeds = dict(zip(self.input_names, (first, attention_mask), strict=True))
        return self.session.run(None, feeds)[0]

    def embed(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        pad_id: int,
        embedding_dim: int,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        max_texts: int | None = 32,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """Un-normalised full-width embeddings (N, E) in input order: sorted, right-padded batches under a
        token budget (as the engine's padded runner)."""
        out = np.empty((len(token_ids), embedding_dim), dtype=np.float32)
        lengths = [len(ids) for ids in token_ids]
        for rows in token_budget_batches(lengths, max_batch_tokens, max_texts or 32, pad_to_longest=True):
            out[rows] = self.run(*pad_rows([token_ids[i] for i in rows], pad_id))
            if progress:
                progress(len(rows))
        return out

    def __repr__(self) -> str:
        return f"OnnxSession({self.path}, {self.num_threads} threads)"


class OnnxEmbedder:
    """EmbeddingGemma on ONNX Runtime, no torch: `encode`, `encode_query`, `encode_document` as `Embedder`'s
    (numpy out), for a quantized model converted once into the cache.

    >>> model = OnnxEmbedder.from_pretrained("google/embeddinggemma-300m", quantize="int8", num_threads=2)
    >>> q = model.encode_query("Which planet is known as the Red Planet?", dim=256)
    """

    def __init__(
        self,
        session: OnnxSession,
        tokenizer: BaseTokenizer,
        prompts: PromptTable,
        config: EmbeddingGemmaConfig,
        *,
        source: Path | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        self.session, self.tokenizer, self.prompts, self.config = session, tokenizer, prompts, config
        self.source = source
        self.max_batch_tokens = max_batch_tokens
        self._warned_dims: set[int] = set()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        quantize: str = "int8",
        *,
        cache_dir: str | Path | None = None,
        revision: str | None = None,
        num_threads: int | None = None,
        max_seq_length: int | None = None,
        tokenizer: TokenizerBackend = "auto",
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> OnnxEmbedder:
        """A checkpoint (hub id or directory) quantized to `quantize` ("w8a8", "int8", "int4", "mixed",
        "int8-channel"); converted once into the cache (`cache_dir`, default ~/.cache/embeddinggemma)."""
        path, info = quantized_model_file(name_or_path, quantize, cache_dir=cache_dir, revision=revision)
        return cls.from_onnx(
            path,
            info,
            num_threads=num_threads,
            max_seq_length=max_seq_length,
            tokenizer=tokenizer,
            max_batch_tokens=max_batch_tokens,
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        checkpoint: str | Path | CheckpointInfo,
        *,
        revision: str | None = None,
        num_threads: int | None = None,
        max_seq_length: int | None = None,
        tokenizer: TokenizerBackend = "auto",
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> OnnxEmbedder:
        """A graph of ours (the cache's file, or `embeddinggemma export onnx`'s) with the tokenizer, prompts
        and limits of the checkpoint it was converted from."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file; pass an ONNX file made by `embeddinggemma export onnx`")
        if not isinstance(checkpoint, CheckpointInfo):
            checkpoint, _ = read_checkpoint_info(resolve_checkpoint(checkpoint, revision))
        config = checkpoint.config
        limit = check_max_seq_length(max_seq_length, config.max_seq_length)
        text_tokenizer = load_tokenizer(checkpoint.path, config.backbone, max_length=limit, backend=tokenizer)
        return cls(
            OnnxSession(path, num_threads),
            text_tokenizer,
            PromptTable(checkpoint.prompts),
            config,
            source=checkpoint.path,
            max_batch_tokens=max_batch_tokens,
        )

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

    def encode(
        self,
        texts: Texts,
        *,
        task: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        on_truncation: OnTruncation = "warn",
    ) -> np.ndarray:
        """Embed texts: (N, dim) float32 for a list, (dim,) for a single string; as `Embedder.encode`
        (no prompt unless `task` or `prompt`; `dim` keeps the first Matryoshka dimensions, re-normalised)."""
        items, single = as_text_list(texts)
        prompt = choose_prompt(self.prompts, task, prompt)
        return self._encode_prompted(
            [prompt + text for text in items], single, dim, batch_size, normalize, on_truncation
        )

    def encode_query(self, texts: Texts, *, task: str | None = None, prompt: str | None = None, **kwargs) -> np.ndarray:
        """Queries with a task prompt (default: retrieval, `task: search result | query: `)."""
        if prompt is None:
            task = "query" if task is None else task
        return self.encode(texts, task=task, prompt=prompt, **kwargs)

    def encode_document(
        self,
        texts: Texts,
        titles: Sequence[str | None] | str | None = None,
        *,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        on_truncation: OnTruncation = "warn",
    ) -> np.ndarray:
        """Documents with `title: {title} | text: ` (or `title: none | text: `), as `Embedder.encode_document`."""
        options = dict(dim=dim, batch_size=batch_size, normalize=normalize, on_truncation=on_truncation)
        if prompt is not None:
            if titles is not None:
                raise ValueError("titles select the document prompt; do not combine them with prompt=")
            return self.encode(texts, prompt=prompt, **options)
        items, single = as_text_list(texts)
        title_list = as_title_list(titles, len(items), single)
        prompted = [document_prompt(title) + text for text, title in zip(items, title_list, strict=True)]
        return self._encode_prompted(prompted, single, dim, batch_size, normalize, on_truncation)

    def embed_token_ids(self, token_ids: Sequence[Sequence[int]], *, batch_size: int = 32) -> np.ndarray:
        """Un-normalised full-width embeddings (N, E) float32, in input order."""
        return self.session.embed(
            token_ids,
            pad_id=self.tokenizer.pad_id,
            embedding_dim=self.embedding_dim,
            max_batch_tokens=self.max_batch_tokens,
            max_texts=batch_size,
        )

    def _encode_prompted(
        self, texts: list[str], single: bool, dim: int | None, batch_size: int, normalize: bool, on_truncation
    ) -> np.ndarray:
        dim = check_dim(dim, self.embedding_dim, self.matryoshka_dims, self._warned_dims)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if texts:
            embeddings = self.embed_token_ids(self.tokenizer.encode(texts, on_truncation), batch_size=batch_size)
        else:
            embeddings = np.empty((0, self.embedding_dim), dtype=np.float32)
        embeddings = matryoshka_truncate(embeddings, dim, normalize=normalize)
        return embeddings[0] if single else embeddings
