"""UL2 batches on examples: span lengths, corruption rate, sentinels, mode tokens, prefix LM, packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from encdec_helpers import randomize, tiny_causal_config

from embeddinggemma.encdec.decoder import Gemma3CausalLM
from embeddinggemma.encdec.model import Gemma3EncoderDecoder
from embeddinggemma.encdec.ul2 import (
    IGNORE,
    UL2_MIXTURE,
    Denoiser,
    SpecialTokens,
    chunk_tokens,
    make_example,
    pack_examples,
    random_spans_noise_mask,
    ul2_loss,
    unused_token_ids,
)

SPECIAL = SpecialTokens.from_unused(list(range(90, 99)), bos=2, eos=1, pad=0)  # modes 90-92, sentinels 93-98


def _spans(mask: np.ndarray) -> list[int]:
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def test_noise_mask_counts():
    rng = np.random.default_rng(0)
    mask = random_spans_noise_mask(100, 0.15, 3.0, rng)
    assert mask.sum() == 15 and len(_spans(mask)) == 5 and not mask[0]
    mask = random_spans_noise_mask(128, 0.5, 64.0, rng)
    assert mask.sum() == 64 and len(_spans(mask)) == 1
    mask = random_spans_noise_mask(10, 0.15, 3.0, rng)  # too short for its share: at least one token
    assert mask.sum() == 2 and len(_spans(mask)) == 1
    # over many draws the mean span length is the denoiser's mean span
    lengths = [s for _ in range(300) for s in _spans(random_spans_noise_mask(256, 0.15, 8.0, rng))]
    assert abs(np.mean(lengths) - 8.0) < 0.5


def _reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    """Undo span corruption: replace each sentinel of the input by the span that follows it in the target."""
    spans, current = {}, None
    for token in targets[:-1]:
        if token in SPECIAL.sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs[1:-1]:
        out.extend(spans[token] if token in SPECIAL.sentinels else [token])
    return out


@pytest.mark.parametrize("denoiser", [Denoiser("R", 0.15, 3.0), Denoiser("X", 0.5, 8.0), Denoiser("X", 0.15, 64.0)])
def test_span_corruption_example(denoiser):
    rng = np.random.default_rng(1)
    text = list(range(10, 74))  # 64 tokens, none of them special
    example = make_example(text, denoiser, SPECIAL, rng)
    assert example.inputs[0] == SPECIAL.modes[denoiser.mode] and example.inputs[-1] == SPECIAL.eos
    assert example.targets[-1] == SPECIAL.eos
    used = [t for t in example.inputs if t in SPECIAL.sentinels]
    assert used == list(SPECIAL.sentinels[: len(used)])  # sentinels in order, one per span
    assert [t for t in example.targets if t in SPECIAL.sentinels] == used
    corrupted = len(example.targets) - 1 - len(used)
    assert corrupted == round(64 * denoiser.rate)
    assert _reconstruct(example.inputs, example.targets) == text
    assert example.decoder_inputs(SPECIAL.bos) == [SPECIAL.bos, *example.targets[:-1]]


def test_prefix_lm_example():
    rng = np.random.default_rng(2)
    text = list(range(10, 110))
    shares = []
    for _ in range(400):
        example = make_example(text, Denoiser("S", 0.25), SPECIAL, rng)
        assert example.inputs[0] == SPECIAL.modes["S"]
        assert example.inputs[1:-1] + example.targets[:-1] == text  # prefix + target = the text
        shares.append((len(example.targets) - 1) / len(text))
    assert abs(np.mean(shares) - 0.25) < 0.02 and max(shares) <= 0.5


def test_unused_ids_and_chunks():
    vocab = {"<pad>": 0, "<unused10>": 7, "<unused2>": 5, "hello": 3, "<unused0>": 4}
    assert unused_token_ids(vocab) == [4, 5, 7]
    chunks = chunk_tokens([list(range(20)), list(range(5)), list(range(9))], max_tokens=8, min_tokens=4)
    assert chunks == [list(range(8)), list(range(8, 16)), list(range(16, 20)), list(range(5)), list(range(8))]
    assert len(UL2_MIXTURE) == 7 and {d.mode for d in UL2_MIXTURE} == {"R", "X", "S"}
    with pytest.raises(ValueError, match="rate"):
        Denoiser("R", 1.5)


def test_packed_loss_equals_sum_of_separate_examples():
    lm = Gemma3CausalLM(tiny_causal_config()).eval()
    randomize(lm)
    model = Gemma3EncoderDecoder.from_decoder(lm).eval()
    rng = np.random.default_rng(3)
    texts = [list(range(10, 40)), list(range(40, 52)), list(range(20, 80))]
    examples = [make_example(t, d, SPECIAL, rng) for t, d in zip(texts, UL2_MIXTURE[::3], strict=True)]
    batch = pack_examples(examples, SPECIAL, multiple_of=16)  # with filler segments
    assert batch.num_targets == sum(len(e.targets) for e in examples)
    assert (batch.labels[batch.decoder.num_tokens :] == IGNORE).all()
    with torch.no_grad():
        packed = ul2_loss(model, batch, chunk_tokens=7)
        separate = sum(ul2_loss(model, pack_examples([e], SPECIAL)) for e in examples)
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-4)


def test_restricted_vocabulary_is_a_softmax_over_those_tokens():
    lm = Gemma3CausalLM(tiny_causal_config()).eval()
    randomize(lm)
    model = Gemma3EncoderDecoder.from_decoder(lm).eval()
    example = make_example(list(range(10, 40)), UL2_MIXTURE[0], SPECIAL, np.random.default_rng(4))
    batch = pack_examples([example], SPECIAL)
    vocabulary = torch.tensor(sorted({*example.targets, 5, 7}))
    with torch.no_grad():
        restricted = ul2_loss(model, batch, vocabulary=vocabulary)
        full = ul2_loss(model, batch)
        everything = ul2_loss(model, batch, vocabulary=torch.arange(99))
    torch.testing.assert_close(everything, full)  # the whole vocabulary is the full objective
    assert restricted < full  # fewer competitors for the same targets
    with pytest.raises(ValueError, match="outside the restricted vocabulary"):
        ul2_loss(model, batch, vocabulary=torch.tensor([5, 7]))
