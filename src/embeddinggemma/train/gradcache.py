"""One training step's forward and backward, with gradient caching (GradCache, Gao et al. 2021).

The contrastive loss (paper section 2) couples every query with every positive of the global batch, so
the batch cannot be split into independent micro-batches the way a language-model batch can. GradCache
decouples the batch size from memory:

1. embed every text of the batch WITHOUT a graph, in token-budget micro-batches;
2. compute the loss on those embeddings (a leaf tensor) and d loss / d embeddings;
3. re-embed each micro-batch WITH a graph and back-propagate the cached gradient of its rows.

Step 3 recomputes the forward once (about +33% compute), and peak activation memory is that of one
micro-batch, whatever the contrastive batch size. The re-run equals the first pass because the model
has no dropout; a model with dropout would need each micro-batch's RNG state replayed (GradCache's
``RandContext``). Without caching the same code keeps every
micro-batch's graph and back-propagates once: identical gradients, more memory, less compute.

Data parallelism uses the same split (``embeddinggemma.train.distributed``): each rank embeds its slice
of the global batch, the detached embeddings are all-gathered, every rank computes the identical GLOBAL
loss (spread-out regulariser and false-negative masks over the whole batch, exactly as one process
would), and back-propagates the gradient of its own rows only; a sum over ranks of the parameter
gradients then equals the single-process gradient.

``embed_micro_batch`` is the single place where token ids become embeddings: padded rows, or packed
(padding-free) sequences through the engine's ``packed_forward`` (FlashAttention varlen or FlexAttention
on CUDA, compiled layer by layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from embeddinggemma.engine import varlen
from embeddinggemma.engine.batching import pack, pad_batch, token_budget_batches
from embeddinggemma.engine.flex import BLOCK_SIZE
from embeddinggemma.engine.forward import packed_forward, padded_forward
from embeddinggemma.model import EmbeddingGemma
from embeddinggemma.tokenizer import TextTokenizer
from embeddinggemma.train.distributed import DistributedContext

PACKING_MODES = ("off", "dense", "flex", "varlen")
# Compiled varlen micro-batches run graphs with a symbolic token count: padding every micro-batch to the
# budget instead cost up to one budget of filler per step (13% on average in the H100 benchmark, where a
# step's 58k tokens ran as 65,536). `benchmarks/gpu.py` also times the padded way (False).
DYNAMIC_TOKENS = True

__all__ = [
    "BatchLike",
    "PreparedBatch",
    "batch_loss",
    "embed_micro_batch",
    "forward_backward",
    "prepare_batch",
    "resolve_packing",
]


class BatchLike(Protocol):
    """The fields of ``embeddinggemma.train.data.TrainingBatch`` the step reads (one global batch)."""

    dataset: str
    query_texts: list[str]
    positive_texts: list[str]
    hard_negative_texts: list[list[str]]
    query_ids: Tensor
    positive_ids: Tensor
    hard_negative_ids: Tensor
    hard_negative_mask: Tensor
    teacher: dict[str, Tensor] | None

    def slice(self, start: int, stop: int) -> BatchLike: ...


def resolve_packing(packing: str, device: torch.device, autocast_dtype: torch.dtype | None = torch.bfloat16) -> str:
    """ "auto" -> on CUDA "varlen" (FlashAttention over the texts' offsets; needs bf16 autocast and a
    PyTorch that has it), else "flex" (block-sparse FlexAttention); "off" on CPU (length-sorted padded
    micro-batches waste little there, and dense packed masks cost N^2)."""
    if packing == "auto":
        if device.type != "cuda":
            return "off"
        usable = autocast_dtype is not None and varlen.unsupported_reason(device, autocast_dtype, 0) is None
        return "varlen" if usable else "flex"
    if packing not in PACKING_MODES:
        raise ValueError(f"packing must be 'auto' or one of {PACKING_MODES}, got {packing!r}")
    if packing in ("flex", "varlen") and device.type != "cuda":
        raise ValueError(f"packing {packing!r} trains on CUDA only (no CPU backward kernel); use 'dense' or 'off'")
    if packing == "varlen" and (reason := varlen.unsupported_reason(device, autocast_dtype, 0)) is not None:
        raise ValueError(f"packing 'varlen' is not available: {reason}; use 'flex' (or precision bfloat16)")
    return packing


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device` without stalling the host: on CUDA a plain ``.to()`` first waits for all
    queued device work, so a step's small index and label tensors would leave the GPU idle while the host
    launches the next kernels; from pinned memory the copy queues behind that work instead."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def embed_micro_batch(
    model: nn.Module,
    tokenizer: TextTokenizer,
    token_ids: Sequence[Sequence[int]],
    *,
    packing: str = "off",
    budget: int | None = None,
) -> Tensor:
    """Un-normalised embeddings (N, E) of one micro-batch, in the current grad mode.

    ``packing="off"``: right-padded rows. ``"dense"`` / ``"flex"`` / ``"varlen"``: the texts concatenated
    into one sequence with per-text positions and block-diagonal (+ sliding band) attention, no padding
    waste. On CUDA the layers are compiled, and one graph (forward and backward) serves the whole run:
    with "varlen" it takes any token count (`DYNAMIC_TOKENS`; micro-batches are padded to the next 128
    tokens only), with "flex" (whose block masks have static shapes) every micro-batch is padded to a
    multiple of ``budget`` tokens.
    """
    device = next(model.parameters()).device
    if packing == "off":
        input_ids, attention_mask = pad_batch(token_ids, tokenizer.pad_id)
        return padded_forward(model, to_device(input_ids, device), to_device(attention_mask, device), normalize=False)
    compiled, dynamic, multiple = packed_layout(packing, device, budget)
    batch = pack(token_ids, pad_id=tokenizer.pad_id, multiple_of=multiple)
    batch = batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch.to(device)
    return packed_forward(model, batch, attention=packing, compile=compiled, dynamic_tokens=dynamic)


def packed_layout(packing: str, device: torch.device, budget: int | None) -> tuple[bool, bool, int]:
    """(compiled, compiled for any token count, pad the token count to a multiple of) for a packed
    micro-batch: compiled on CUDA; varlen with a symbolic token count (`DYNAMIC_TOKENS`), so only to the
    next 128-token block; flex's static block masks to a multiple of the budget; dense not at all."""
    compiled = packing in ("flex", "varlen") and device.type == "cuda"
    dynamic = compiled and packing == "varlen" and DYNAMIC_TOKENS
    if packing == "dense":
        return compiled, dynamic, 1
    return compiled, dynamic, (budget or BLOCK_SIZE) if compiled and not dynamic else BLOCK_SIZE


@dataclass
class _Layout:
    """Flat list of a batch slice's texts and where each goes in the (rows, 2 + H) grid
    [query, positive, negative_1 .. negative_H]; padding negatives are not embedded."""

    texts: list[str]
    rows: Tensor  # (N,) row of each text
    slots: Tensor  # (N,) column of each text


def _layout(batch: BatchLike) -> _Layout:
    b = len(batch.query_texts)
    h = batch.hard_negative_mask.shape[1]
    if len(batch.positive_texts) != b or len(batch.hard_negative_texts) != b:
        raise ValueError(
            f"batch from {batch.dataset!r} has {b} queries, {len(batch.positive_texts)} positives and "
            f"{len(batch.hard_negative_texts)} hard-negative lists; they must be equal"
        )
    texts = list(batch.query_texts) + list(batch.positive_texts)
    rows = list(range(b)) * 2
    slots = [0] * b + [1] * b
    mask = batch.hard_negative_mask.tolist()
    for i, negatives in enumerate(batch.hard_negative_texts):
        if mask[i] != [k < len(negatives) for k in range(h)]:
            raise ValueError(
                f"batch from {batch.dataset!r}, row {i}: {len(negatives)} hard-negative texts but mask {mask[i]}; "
                "the mask must be True for exactly the first len(hard_negative_texts[i]) entries"
            )
        texts.extend(negatives)
        rows.extend([i] * len(negatives))
        slots.extend(range(2, 2 + len(negatives)))
    return _Layout(texts, torch.tensor(rows, dtype=torch.long), torch.tensor(slots, dtype=torch.long))


def batch_loss(loss_fn: nn.Module, grid: Tensor, batch: BatchLike) -> dict[str, Tensor]:
    """The recipe loss on a (B, 2 + H, E) grid of GLOBAL embeddings [query, positive, negatives]."""
    device = grid.device
    h = grid.shape[1] - 2
    teacher: Mapping[str, Tensor] = batch.teacher or {}

    def on_device(t: Tensor | None) -> Tensor | None:
        return None if t is None else to_device(t, device)

    return loss_fn(
        grid[:, 0],
        grid[:, 1],
        grid[:, 2:] if h else None,
        hard_negative_mask=on_device(batch.hard_negative_mask) if h else None,
        query_ids=on_device(batch.query_ids),
        positive_ids=on_device(batch.positive_ids),
        hard_negative_ids=on_device(batch.hard_negative_ids) if h else None,
        teacher_queries=on_device(teacher.get("queries")),
        teacher_positives=on_device(teacher.get("positives")),
        teacher_hard_negatives=on_device(teacher.get("hard_negatives")) if h else None,
    )


@dataclass
class PreparedBatch:
    """The host work of a step that needs no model: this rank's texts, where each goes, their token ids."""

    layout: _Layout
    token_ids: list[list[int]]


def prepare_batch(batch: BatchLike, tokenizer: TextTokenizer, ctx: DistributedContext) -> PreparedBatch:
    """Tokenise this rank's share of `batch` (the trainer runs it one step ahead, on a host thread)."""
    start, stop = ctx.row_range(len(batch.query_texts))
    layout = _layout(batch.slice(start, stop) if ctx.distributed else batch)
    # Training truncates to max_seq_length on purpose, so no truncation report (a warning per step would
    # drown the log; and silencing warnings is not thread-safe, while this runs on a worker thread).
    return PreparedBatch(layout, tokenizer.encode_counted(layout.texts)[0])


def forward_backward(
    model: EmbeddingGemma | nn.Module,
    loss_fn: nn.Module,
    batch: BatchLike,
    tokenizer: TextTokenizer,
    *,
    ctx: DistributedContext | None = None,
    gradient_cache: bool = True,
    micro_batch_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
    packing: str = "off",
    prepared: PreparedBatch | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Accumulate into ``.grad`` the gradient of the recipe loss on one GLOBAL batch.

    On several ranks each embeds only its slice; the caller must then sum the model's gradients over
    ranks (``DistributedContext.reduce_gradients``). Returns the detached loss terms and step statistics
    (``tokens`` embedded by this rank, ``texts``, ``micro_batches``).

    Args:
        gradient_cache: embed without a graph first and re-embed per micro-batch (low memory); False keeps
            every graph (less compute). The gradients are the same.
        micro_batch_tokens: token budget of one forward (padded tokens when ``packing`` is "off").
        autocast_dtype: torch.bfloat16 for mixed precision (weights stay fp32), None for fp32.
        packing: "off", "dense", "flex" (see ``embed_micro_batch``) or "auto" (``resolve_packing``).
        prepared: ``prepare_batch(batch, tokenizer, ctx)`` when the caller already ran it.
    """
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be positive, got {micro_batch_tokens}")
    ctx = ctx or DistributedContext(device=next(model.parameters()).device)
    packing = resolve_packing(packing, ctx.device, autocast_dtype)
    start, stop = ctx.row_range(len(batch.query_texts))
    prepared = prepared or prepare_batch(batch, tokenizer, ctx)
    layout, token_ids = prepared.layout, prepared.token_ids
    # longest first: each padded micro-batch pads to its first text, and out-of-memory shows at once
    chunks = token_budget_batches([len(t) for t in token_ids], micro_batch_tokens, pad_to_longest=packing == "off")
    device = ctx.device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )

    def embed(chunk: list[int]) -> Tensor:
        with autocast:
            texts = [token_ids[i] for i in chunk]
            return embed_micro_batch(model, tokenizer, texts, packing=packing, budget=micro_batch_tokens).float()

    order = torch.tensor([i for chunk in chunks for i in chunk], dtype=torch.long)
    with torch.set_grad_enabled(not gradient_cache):
        sorted_embeddings = torch.cat([embed(chunk) for chunk in chunks])  # (N, E), rows in `order`
    width = sorted_embeddings.shape[-1]
    h = batch.hard_negative_mask.shape[1]
    grid = torch.zeros(stop - start, 2 + h, width, device=device)  # (b, 2 + H, E); padding negatives stay 0
    rows, slots = to_device(layout.rows[order], device), to_device(layout.slots[order], device)
    grid[rows, slots] = sorted_embeddings.detach()

    global_grid = ctx.all_gather_rows(grid).requires_grad_(True)  # (B, 2 + H, E)
    terms = batch_loss(loss_fn, global_grid, batch)
    terms["loss"].backward()  # d loss / d embeddings (and the loss module's own parameters)
    grads = global_grid.grad[start:stop] if ctx.distributed else global_grid.grad
    sorted_grads = grads[rows, slots]  # (N, E)

    if gradient_cache:
        offset = 0
        for chunk in chunks:
            embed(chunk).backward(sorted_grads[offset : offset + len(chunk)])
            offset += len(chunk)
    else:
        sorted_embeddings.backward(sorted_grads)
    stats = {
        "tokens": sum(len(t) for t in token_ids),
        "texts": len(token_ids),
        "micro_batches": len(chunks),
    }
    return {k: v.detach() for k, v in terms.items()}, stats
