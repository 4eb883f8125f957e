"""Our :class:`~embeddinggemma.Embedder` as an mteb v2 model (``EncoderProtocol`` + ``ModelMeta``).

mteb (pinned in the ``[eval]`` extra) calls ``encode(inputs, *, task_metadata, hf_split, hf_subset,
prompt_type)`` with a ``DataLoader`` of text batches and expects one row per input. This adapter turns
that call into the model's trained prompt format:

* queries and symmetric inputs (STS, classification, clustering, bitext ...) get the prompt that the
  checkpoint's prompt table gives the task, looked up in mteb's own order: ``"{task name}-{side}"``,
  ``"{task name}"``, ``"{task type}-{side}"``, ``"{task type}"``, ``"{side}"`` (see
  :func:`lookup_prompt`); a task type the table lacks falls back to our prompt for its simplified type
  (e.g. Regression -> classification);
* documents (the ``document`` side of retrieval, reranking and instruction retrieval) are embedded
  with the document prompt *and their title*: mteb's corpus batches carry ``title`` and ``body``
  next to the joined ``text``, so they become ``title: {title} | text: {body}`` via
  ``Embedder.encode_document(titles=...)``, as the model card prescribes. (mteb's generic
  sentence-transformers wrapper would prepend ``title: none | text: `` to ``"{title} {body}"``, and
  for Reranking it picks the checkpoint's ``"Reranking"`` *query* prompt for documents.)

Encoding is done at full width and cached per (side, prompt, title, text); each Matryoshka ``dim``
is a truncated, re-normalised slice, so :meth:`MTEBEmbedder.with_dim` gives adapters for 512/256/128
that share the encodings of the 768 run (one encoding pass per task for all dims).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embeddinggemma.checkpoint import DEFAULT_MODEL
from embeddinggemma.eval.counting import CountingEmbedder
from embeddinggemma.eval.runner import EmbeddingCache
from embeddinggemma.matryoshka import matryoshka_truncate

if TYPE_CHECKING:
    import torch
    from mteb import TaskMetadata
    from mteb.models import ModelMeta
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

__all__ = ["MTEBEmbedder", "lookup_prompt", "model_meta"]

# The released model's facts (doc section 1); used when mteb's registry has no entry to start from.
N_PARAMETERS = 307_581_696
N_EMBEDDING_PARAMETERS = 201_326_592
RELEASE_DATE = "2025-09-04"

# Fallbacks for task types that the checkpoint's table does not name (a fine-tuned variant may ship
# only "query"/"document"): our prompt-table name for the mteb task type, else for its simplified type
# (Regression -> classification, InstructionReranking -> query, ...).
_TYPE_TASK = {
    "BitextMining": "bitext",
    "Classification": "classification",
    "MultilabelClassification": "classification",
    "Clustering": "clustering",
    "PairClassification": "pair_classification",
    "Reranking": "reranking",
    "Retrieval": "retrieval",
    "STS": "sts",
    "Summarization": "summarization",
}
_SIMPLIFIED_TYPE_TASK = {
    "retrieval": "query",
    "clustering": "clustering",
    "classification": "classification",
    "semantic-similarity": "sts",
    "pair-classification": "pair_classification",
}


def lookup_prompt(
    table: Mapping[str, str], task_name: str, task_type: str, side: str | None
) -> tuple[str | None, str | None]:
    """``(key, prompt)`` for a task, in mteb's priority order (``mteb.models.abs_encoder.get_prompt_name``).

    ``side`` is ``"query"``, ``"document"`` or ``None`` (symmetric tasks). Returns ``(None, None)`` if
    no key matches.
    """
    keys = [f"{task_name}-{side}" if side else None, task_name, f"{task_type}-{side}" if side else None, task_type]
    keys.append(side)
    for key in keys:
        if key and key in table:
            return key, table[key]
    return None, None


class MTEBEmbedder:
    """An :class:`~embeddinggemma.Embedder` (or any object with its ``encode`` / ``encode_query`` /
    ``encode_document`` API, e.g. a quantized, fine-tuned or souped variant) as an mteb encoder.

    >>> import mteb
    >>> model = MTEBEmbedder("google/embeddinggemma-300m", dim=256)
    >>> mteb.evaluate(model, mteb.get_tasks(tasks=["STS12"]))

    Args:
        model_name: hub id or local checkpoint directory; ignored for loading when ``embedder`` or
            ``model_path`` is given (it still names the model in the metadata).
        revision: hub revision to load; default: whatever the cache resolves.
        device, dtype, max_seq_length: passed to ``Embedder.from_pretrained``.
        dim: Matryoshka size (768/512/256/128); default: full width. ``embed_dim`` is mteb's name for it.
        embedder: an already loaded model to wrap instead of loading ``model_name``.
        model_path: the directory to load when ``model_name`` is only a label (mteb's ``load_model``
            passes it back from the metadata of a local variant).
        prompts: extra prompts that win over the checkpoint's table, with mteb's model-prompt keys
            (``"STS"``, ``"Retrieval-query"``, ``"MyTask-query"``, ...). Documents always use the
            titled document prompt.
        name: the model name recorded in the ``ModelMeta`` (``org/model``); default: ``model_name``,
            or ``embeddinggemma/<directory name>`` for a local directory.
        cache_embeddings: keep full-width encodings across calls (and across :meth:`with_dim`
            siblings) until :meth:`clear_cache`; costs 3 KB per distinct text.
        load_options: further ``Embedder.from_pretrained`` keywords (engine options such as a
            quantization mode). They, the dtype and ``max_seq_length`` are recorded in the metadata's
            ``experiment_kwargs``, which mteb passes back as keywords when it re-creates the model.
    """

    def __init__(
        self,
        model_name: str | Path = DEFAULT_MODEL,
        revision: str | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_seq_length: int | None = None,
        dim: int | None = None,
        embed_dim: int | None = None,
        embedder: Any = None,
        prompts: Mapping[str, str] | None = None,
        name: str | None = None,
        cache_embeddings: bool = False,
        model_path: str | Path | None = None,
        load_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # mteb's ModelMeta.load_model passes experiment_kwargs back as plain keywords: load options too.
        options = {**(load_options or {}), **kwargs}
        device = options.pop("device", device)
        dtype = options.pop("dtype", dtype)
        max_seq_length = options.pop("max_seq_length", max_seq_length)
        self.load_options = {k: v for k, v in options.items() if v is not None}
        dim = dim if dim is not None else embed_dim
        if embedder is None:
            from embeddinggemma.embedder import Embedder

            local = model_path is not None or Path(str(model_name)).exists()
            embedder = Embedder.from_pretrained(
                model_path if model_path is not None else model_name,
                device=device,
                dtype=dtype,
                revision=None if local or revision == "local" else revision,
                max_seq_length=max_seq_length,
                **self.load_options,
            )
        self.embedder = embedder
        self.counter = CountingEmbedder(embedder)
        width = int(getattr(embedder, "embedding_dim", 0)) or None
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= (width or dim)):
            raise ValueError(f"dim must be an integer between 1 and {width}, got {dim!r}")
        self.dim = dim
        self.model_name = str(model_name)
        self.model_path = model_path
        self.revision = revision
        self.name = name
        self.extra_prompts = dict(prompts or {})
        self.cache_embeddings = cache_embeddings
        self._cache = EmbeddingCache(self.counter, show_progress=False)
        self._meta: ModelMeta | None = None
        self._warned_no_prompt: set[str] = set()

    # -- mteb protocol ------------------------------------------------------------------------

    @property
    def mteb_model_meta(self) -> ModelMeta:
        if self._meta is None:
            self._meta = model_meta(
                self.embedder,
                model_name=str(self.model_path or self.model_name),
                revision=self.revision,
                dim=self.dim,
                name=self.name,
                experiment_kwargs=self.load_options,
            )
        return self._meta

    @mteb_model_meta.setter
    def mteb_model_meta(self, meta: ModelMeta) -> None:
        # ModelMeta.load_model attaches the metadata it loaded from (with its loader keywords).
        self._meta = meta

    def encode(
        self,
        inputs: DataLoader[Any],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of ``inputs``: ``(N, dim)`` float32, unit rows, in input order."""
        precision = kwargs.get("precision")
        if precision not in (None, "float32", "float"):
            raise ValueError(
                f"output precision {precision!r} is not supported; quantize the embeddings after encoding, "
                "or quantize the model and pass it as embedder="
            )
        side = getattr(prompt_type, "value", prompt_type)
        texts, titles, bodies = _collect(inputs, task_metadata.name)
        cache = self._cache if self.cache_embeddings else EmbeddingCache(self.counter)
        cache.batch_size = int(kwargs.get("batch_size", 32))
        cache.show_progress = bool(kwargs.get("show_progress_bar", False))
        if side == "document":
            # Corpus batches carry the body apart from the title; other document batches are plain text.
            body = bodies if bodies is not None else texts
            full = cache.documents(body, [(t or "").strip() or None for t in titles or [None] * len(body)])
        else:
            full = cache.prompted(texts, self.prompt_for(task_metadata, side))
        if full.shape[0] == 0:
            return np.zeros((0, self.dim or getattr(self.embedder, "embedding_dim", 0)), np.float32)
        return matryoshka_truncate(full, self.dim or full.shape[1])

    @staticmethod
    def similarity(embeddings1: np.ndarray | torch.Tensor, embeddings2: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cosine similarity matrix ``(N, M)`` as a float32 tensor (what mteb's evaluators index)."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    @staticmethod
    def similarity_pairwise(
        embeddings1: np.ndarray | torch.Tensor, embeddings2: np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Row-wise cosine similarity ``(N,)``."""
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    # -- prompts, dims, cache -----------------------------------------------------------------

    def prompt_for(self, task_metadata: TaskMetadata, side: str | None) -> str:
        """The prompt for a task's query side (``side="query"``) or its symmetric inputs (``None``)."""
        prompts = getattr(self.embedder, "prompts", None)
        checkpoint = dict(getattr(prompts, "checkpoint_prompts", None) or prompts or {})
        for table in (self.extra_prompts, checkpoint):
            key, prompt = lookup_prompt(table, task_metadata.name, task_metadata.type, side)
            if key is not None:
                return prompt  # type: ignore[return-value]
        fallback = _TYPE_TASK.get(task_metadata.type) or _SIMPLIFIED_TYPE_TASK.get(task_metadata.simplified_task_type)
        if fallback is not None and prompts is not None and fallback in prompts:
            return prompts[fallback]
        if task_metadata.name not in self._warned_no_prompt:
            self._warned_no_prompt.add(task_metadata.name)
            logger.warning("no prompt for %s (type %s): encoding without one", task_metadata.name, task_metadata.type)
        return ""

    def with_dim(self, dim: int | None) -> MTEBEmbedder:
        """An adapter for another Matryoshka size that shares this one's model and encodings."""
        twin = object.__new__(MTEBEmbedder)
        twin.__dict__.update(self.__dict__)
        twin.dim = dim
        twin._meta = None
        twin._warned_no_prompt = set()
        if dim is not None and not 1 <= dim <= int(getattr(self.embedder, "embedding_dim", dim)):
            raise ValueError(f"dim must be between 1 and {self.embedder.embedding_dim}, got {dim}")
        return twin

    def clear_cache(self) -> None:
        """Drop cached encodings (call between tasks of a large benchmark)."""
        self._cache.clear()

    @property
    def encode_seconds(self) -> float:
        return self.counter.seconds

    @property
    def tokens(self) -> int | None:
        return self.counter.tokens


def _collect(
    inputs: Iterable[Mapping[str, Any]], task_name: str
) -> tuple[list[str], list[str] | None, list[str] | None]:
    """All texts of a DataLoader, plus titles and bodies when the batches are corpus batches."""
    texts: list[str] = []
    titles: list[str] = []
    bodies: list[str] = []
    has_body = has_title = True
    for batch in inputs:
        if "text" not in batch:
            raise ValueError(
                f"task {task_name}: batches without text (columns {sorted(batch)}); EmbeddingGemma embeds text only"
            )
        batch_texts = list(batch["text"])
        texts += batch_texts
        has_body = has_body and "body" in batch
        has_title = has_title and "title" in batch
        if has_body:
            bodies += list(batch["body"])
        if has_title:
            titles += list(batch["title"])
    return texts, (titles if has_title and titles else None), (bodies if has_body and bodies else None)


def _snapshot_revision(path: Path | None) -> str | None:
    """The commit of a Hugging Face cache snapshot directory (``.../snapshots/<commit>``), else None."""
    if path is not None and path.parent.name == "snapshots" and len(path.name) == 40:
        return path.name
    return None


def model_meta(
    embedder: Any,
    *,
    model_name: str = DEFAULT_MODEL,
    revision: str | None = None,
    dim: int | None = None,
    name: str | None = None,
    experiment_kwargs: Mapping[str, Any] | None = None,
) -> ModelMeta:
    """mteb ``ModelMeta`` for a wrapped embedder.

    Starts from mteb's registry entry for ``google/embeddinggemma-300m`` (languages, training data,
    licence, citation), so results stay comparable with the leaderboard's, and replaces what differs:
    the loader (this adapter), framework, the checkpoint revision actually loaded, the embedding size,
    the parameter count, and for a local variant its name, path and ``adapted_from``. The dtype,
    ``max_seq_length`` and ``experiment_kwargs`` go into ``experiment_kwargs``, so mteb keeps the
    results of an fp32 run and an int8 run of the same model apart, and ``meta.load_model()``
    re-creates the same adapter.
    """
    import mteb
    from mteb.models import ModelMeta

    source = getattr(embedder, "source", None)
    is_local = Path(str(model_name)).exists()
    if name is None:
        name = f"embeddinggemma/{Path(str(model_name)).resolve().name}" if is_local else str(model_name)
    if "/" not in name:
        name = f"embeddinggemma/{name}"
    width = int(getattr(embedder, "embedding_dim", 768))
    experiment: dict[str, Any] = {}
    if getattr(embedder, "dtype", None) is not None:
        experiment["dtype"] = str(embedder.dtype).removeprefix("torch.")
    if getattr(embedder, "max_seq_length", None) is not None:
        experiment["max_seq_length"] = int(embedder.max_seq_length)
    experiment.update(experiment_kwargs or {})
    loader_kwargs: dict[str, Any] = {"model_path": str(Path(str(model_name)).resolve())} if is_local else {}
    if dim is not None:
        loader_kwargs["dim"] = dim
    update: dict[str, Any] = {
        "loader": MTEBEmbedder,
        "loader_kwargs": loader_kwargs,
        "name": name,
        "revision": revision or _snapshot_revision(Path(source) if source else None) or "local",
        "embed_dim": dim or width,
        "max_tokens": int(getattr(embedder, "max_seq_length", 2048)),
        "n_parameters": int(getattr(embedder, "num_parameters", N_PARAMETERS)),
        "framework": ["PyTorch", "safetensors"],
        "similarity_fn_name": "cosine",
        "extra_requirements_groups": None,
        "experiment_kwargs": experiment or None,
        "adapted_from": DEFAULT_MODEL if name != DEFAULT_MODEL else None,
    }
    try:
        base = mteb.get_model_meta(DEFAULT_MODEL)
    except KeyError:  # a future mteb without the registry entry: build it from the checkpoint's facts
        base = ModelMeta.create_empty(
            {
                "release_date": RELEASE_DATE,
                "languages": ["eng-Latn"],
                "n_embedding_parameters": N_EMBEDDING_PARAMETERS,
                "license": "gemma",
                "open_weights": True,
                "use_instructions": True,
                "reference": "https://ai.google.dev/gemma/docs/embeddinggemma/model_card",
            }
        )
    # Validate through the constructor (model_copy skips pydantic validation).
    return ModelMeta.model_validate({**base.model_dump(), **update})
