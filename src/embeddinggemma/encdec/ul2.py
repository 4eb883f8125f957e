"""UL2: the mixture of denoisers that adapts the encoder-decoder (Tay et al. 2022; T5Gemma's recipe).

Every example is a chunk of real text turned into (encoder input, decoder target) by one denoiser:

- span corruption (R: regular, X: extreme): `rate` of the tokens, in spans of mean length `mean_span`,
  are cut out. The input keeps the rest with one sentinel per span; the target lists each sentinel
  followed by the span it replaced (T5's format). The noise mask is T5's `random_spans_noise_mask`:
  round(L * rate) noise tokens in round(noise / mean_span) spans, span and gap lengths drawn as random
  compositions, starting with a gap.
- prefix LM (S): the input is a prefix, the target the rest. The target's share of the chunk is drawn
  uniformly in (0, 2 * rate], so `rate` is its mean.

The encoder input starts with the denoiser's mode token ([R], [X], [S] in UL2) and ends with EOS; the
target ends with EOS; the decoder reads BOS + target[:-1] (teacher forcing). Mode tokens and sentinels
are the tokenizer's unused ids (`<unused0>`, `<unused1>`, ... in Gemma's vocabulary): the first three are
the modes, the rest sentinels in order.

Examples are packed back to back (`engine.batching.pack`: per-example positions and segment ids) on both
sides; decoder tokens cross-attend only to their own example's encoder tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from embeddinggemma.engine.batching import PackedBatch, pack
from embeddinggemma.engine.masks import packed_dense_attention, sdpa_attention

__all__ = [
    "UL2_MIXTURE",
    "Denoiser",
    "SpecialTokens",
    "UL2Batch",
    "UL2Example",
    "chunk_tokens",
    "make_example",
    "pack_examples",
    "random_spans_noise_mask",
    "ul2_loss",
    "unused_token_ids",
]

IGNORE = -100


@dataclass(frozen=True)
class Denoiser:
    """One UL2 denoiser. `mode`: R / X (span corruption) or S (prefix LM)."""

    mode: Literal["R", "X", "S"]
    rate: float  # span: the corrupted share of tokens; prefix: the mean share of the target
    mean_span: float = 3.0  # span corruption only
    weight: float = 1.0  # sampling weight in the mixture

    def __post_init__(self) -> None:
        if self.mode not in ("R", "X", "S"):
            raise ValueError(f"denoiser mode must be R, X or S, got {self.mode!r}")
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"denoiser rate must be in (0, 1), got {self.rate}")
        if self.mode == "S" and self.rate > 0.5:
            raise ValueError("the S denoiser's mean target share (rate) must be <= 0.5")
        if self.mean_span < 1 or self.weight < 0:
            raise ValueError("denoiser mean_span must be >= 1 and weight >= 0")

    @property
    def name(self) -> str:
        return "S" if self.mode == "S" else f"{self.mode}(mu={self.mean_span:g},r={self.rate:g})"


# UL2's seven denoisers (paper section 3.1.4): R with mean spans 3 and 8 at 15%; X with spans 3 and 8 at
# 50% and span 64 at 15% and 50%; S (prefix LM, a quarter of the text as target on average).
UL2_MIXTURE = (
    Denoiser("R", 0.15, 3.0),
    Denoiser("R", 0.15, 8.0),
    Denoiser("X", 0.5, 3.0),
    Denoiser("X", 0.5, 8.0),
    Denoiser("X", 0.15, 64.0),
    Denoiser("X", 0.5, 64.0),
    Denoiser("S", 0.25),
)


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    pad: int
    modes: dict[str, int]  # "R" / "X" / "S" -> token id
    sentinels: tuple[int, ...]

    @classmethod
    def from_unused(cls, unused: Sequence[int], *, bos: int, eos: int, pad: int) -> SpecialTokens:
        if len(unused) < 4:
            raise ValueError(f"UL2 needs at least 4 unused token ids (3 modes + sentinels), got {len(unused)}")
        return cls(bos, eos, pad, {"R": unused[0], "X": unused[1], "S": unused[2]}, tuple(unused[3:]))


_UNUSED = re.compile(r"<unused(\d+)>")


def unused_token_ids(vocabulary: dict[str, int]) -> list[int]:
    """Ids of the `<unusedN>` tokens of a vocabulary (token -> id), in the order of N."""
    found = sorted((int(m.group(1)), i) for token, i in vocabulary.items() if (m := _UNUSED.fullmatch(token)))
    return [i for _, i in found]


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive integers, uniformly over compositions (T5's segmentation)."""
    if parts == 1:
        return np.array([total])
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(
    length: int, rate: float, mean_span: float, rng: np.random.Generator, max_spans: int | None = None
) -> np.ndarray:
    """Boolean (length,) mask, True on corrupted tokens: round(length * rate) of them (at least 1, at most
    length - 1) in round(noise / mean_span) spans (at least 1), separated by non-empty gaps; the text
    starts with a gap, so every span has a token before it."""
    if length < 2:
        raise ValueError("span corruption needs at least 2 tokens")
    noise = min(max(round(length * rate), 1), length - 1)
    spans = max(round(noise / mean_span), 1)
    spans = min(spans, noise, length - noise, max_spans or spans)
    noise_lengths = _composition(noise, spans, rng)
    gap_lengths = _composition(length - noise, spans, rng)
    mask = np.zeros(length, dtype=bool)
    start = 0
    for gap, span in zip(gap_lengths, noise_lengths, strict=True):
        start += int(gap)
        mask[start : start + int(span)] = True
        start += int(span)
    return mask


@dataclass(frozen=True)
class UL2Example:
    inputs: list[int]  # encoder: mode token, corrupted text or prefix, EOS
    targets: list[int]  # decoder labels: (sentinel, span)* or the suffix, then EOS
    denoiser: str

    def decoder_inputs(self, bos: int) -> list[int]:
        return [bos, *self.targets[:-1]]


def make_example(tokens: Sequence[int], denoiser: Denoiser, special: SpecialTokens, rng: np.random.Generator):
    """One UL2 example from a chunk of text token ids (no BOS/EOS) with `denoiser`."""
    tokens = list(tokens)
    mode = special.modes[denoiser.mode]
    if denoiser.mode == "S":
        share = rng.uniform(0.0, 2.0 * denoiser.rate)
        target_len = min(max(round(len(tokens) * share), 1), len(tokens) - 1)
        split = len(tokens) - target_len
        return UL2Example([mode, *tokens[:split], special.eos], [*tokens[split:], special.eos], denoiser.name)
    mask = random_spans_noise_mask(len(tokens), denoiser.rate, denoiser.mean_span, rng, len(special.sentinels))
    inputs, targets = [mode], []
    span = -1
    for i, token in enumerate(tokens):
        if mask[i]:
            if i == 0 or not mask[i - 1]:
                span += 1
                inputs.append(special.sentinels[span])
                targets.append(special.sentinels[span])
            targets.append(token)
        else:
            inputs.append(token)
    return UL2Example([*inputs, special.eos], [*targets, special.eos], denoiser.name)


def chunk_tokens(token_lists: Sequence[Sequence[int]], max_tokens: int, min_tokens: int = 8) -> list[list[int]]:
    """Texts cut into chunks of at most `max_tokens` (a text never shares a chunk); shorter than
    `min_tokens` is too little to corrupt and is left out (the count is the caller's to report)."""
    chunks = []
    for ids in token_lists:
        for start in range(0, len(ids), max_tokens):
            piece = list(ids[start : start + max_tokens])
            if len(piece) >= min_tokens:
                chunks.append(piece)
    return chunks


@dataclass(frozen=True)
class UL2Batch:
    """Packed examples: encoder stream, decoder stream, labels aligned with the decoder stream."""

    encoder: PackedBatch
    decoder: PackedBatch
    labels: torch.Tensor  # (N_dec,) int64, IGNORE on filler
    denoisers: tuple[str, ...]
    dataset: str = "ul2"  # the trainer logs batches per dataset

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device | str) -> UL2Batch:
        return UL2Batch(self.encoder.to(device), self.decoder.to(device), self.labels.to(device), self.denoisers)


def pack_examples(examples: Sequence[UL2Example], special: SpecialTokens, multiple_of: int = 1) -> UL2Batch:
    encoder = pack([e.inputs for e in examples], pad_id=special.pad, multiple_of=multiple_of)
    decoder = pack([e.decoder_inputs(special.bos) for e in examples], pad_id=special.pad, multiple_of=multiple_of)
    labels = torch.full((decoder.input_ids.shape[1],), IGNORE, dtype=torch.long)
    labels[: decoder.num_tokens] = torch.tensor([t for e in examples for t in e.targets], dtype=torch.long)
    return UL2Batch(encoder, decoder, labels, tuple(e.denoiser for e in examples))


def cross_mask(batch: UL2Batch) -> torch.Tensor:
    """(N_dec, N_enc) bool: a decoder token sees its own example's encoder tokens. Decoder filler sees
    everything (its output is ignored; an all-masked row would be NaN)."""
    dec, enc = batch.decoder.segment_ids, batch.encoder.segment_ids
    return (dec[:, None] == enc[None, :]) | (dec >= batch.decoder.num_texts)[:, None]


def _chunk_loss(hidden: torch.Tensor, table: torch.Tensor, labels: torch.Tensor, softcap: float | None):
    from embeddinggemma.encdec.decoder import tied_logits

    logits = tied_logits(hidden, table, softcap).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def ul2_loss(model, batch: UL2Batch, *, chunk_tokens: int = 256, vocabulary: torch.Tensor | None = None):
    """Summed next-token cross-entropy over the batch's target tokens (dense masks: CPU and tests).

    The vocabulary projection runs in chunks of `chunk_tokens` decoder tokens, each recomputed in the
    backward pass, so a 262k-entry table never holds logits for the whole batch at once. `vocabulary`
    (sorted token ids holding every target) restricts the softmax to those tokens: a CPU-scale shortcut
    (the 262k-way projection is most of a small model's work), not the full objective.
    """
    config = model.config
    enc, dec = batch.encoder, batch.decoder
    memory = model.encode(enc.input_ids, enc.position_ids, packed_dense_attention(enc, config))
    hidden = model.decode(
        dec.input_ids,
        dec.position_ids,
        packed_dense_attention(dec, config, causal=True),
        memory,
        sdpa_attention(cross_mask(batch)[None, None]),
    )[0]  # (N_dec, C)
    keep = batch.labels != IGNORE
    hidden, labels = hidden[keep], batch.labels[keep]
    table = model.encoder.embed_tokens.weight
    if vocabulary is not None:
        position = torch.full((table.shape[0],), -1, dtype=torch.long, device=labels.device)
        position[vocabulary] = torch.arange(vocabulary.numel(), device=labels.device)
        labels = position[labels]
        if (labels < 0).any():
            raise ValueError("a target token is outside the restricted vocabulary; build it from the same text")
        table = table[vocabulary]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss, hidden[part], table, labels[part], model.final_logit_softcapping, use_reentrant=False
            )
        else:
            total = total + _chunk_loss(hidden[part], table, labels[part], model.final_logit_softcapping)
    return total
