"""Packing without padding: data layout, batch planning, masks against explicit loops, and equality of
every fast path (dense packed, FlexAttention packed, streaming) with the simple padded path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, EmbeddingGemmaConfig, Gemma3TextConfig
from embeddinggemma.engine.flex import flex_block_masks
from embeddinggemma.engine.runners import PackedRunner, PaddedRunner
from embeddinggemma.packing import pack, packed_masks, token_budget_batches


def test_pack_layout():
    batch = pack([[2, 5, 1], [2, 1], [2, 7, 8, 9, 1]], multiple_of=4)
    assert batch.input_ids.shape == (1, 12) and batch.num_texts == 3 and batch.num_tokens == 10
    assert batch.input_ids[0].tolist() == [2, 5, 1, 2, 1, 2, 7, 8, 9, 1, 0, 0]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 0, 1]
    assert batch.segment_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3]


def test_pack_rejects_empty():
    with pytest.raises(ValueError, match="empty list"):
        pack([])
    with pytest.raises(ValueError, match="no tokens"):
        pack([[2, 1], []])


@pytest.mark.parametrize("pad_to_longest", [False, True])
def test_token_budget_batches(pad_to_longest):
    lengths = [5, 300, 17, 2, 64, 64, 1, 900, 33]
    batches = token_budget_batches(lengths, max_tokens=128, max_texts=3, pad_to_longest=pad_to_longest)
    assert sorted(itertools.chain(*batches)) == list(range(len(lengths)))
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        cost = len(sizes) * max(sizes) if pad_to_longest else sum(sizes)
        assert len(batch) <= 3
        assert cost <= 128 or len(batch) == 1, "only a single over-long text may exceed the budget"


def _explicit_packed_mask(lengths: list[int], radius: int | None) -> torch.Tensor:
    """Per-text loops: token i of text a sees token j of text b iff a == b (and |i - j| <= radius)."""
    total = sum(lengths)
    mask = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for n in lengths:
        for i in range(n):
            lo, hi = (0, n) if radius is None else (max(0, i - radius), min(n, i + radius + 1))
            mask[start + i, start + lo : start + hi] = True
        start += n
    return mask


def test_packed_masks_real_radius_long_and_tiny_texts():
    """The real band (+-256) with texts longer than 513 tokens and texts of 1-2 tokens."""
    config = Gemma3TextConfig()
    lengths = [600, 1, 2, 530, 3]
    batch = pack([[2] * n for n in lengths])
    masks = packed_masks(batch, config)
    assert torch.equal(masks[FULL_ATTENTION][0, 0], _explicit_packed_mask(lengths, None))
    assert torch.equal(masks[SLIDING_ATTENTION][0, 0], _explicit_packed_mask(lengths, 256))


def test_flex_block_masks_match_dense():
    """Element level (the mask functions) and block level (which 128x128 tiles the kernel visits)."""
    config = EmbeddingGemmaConfig.tiny().backbone
    lengths = [9, 1, 2, 140, 7]  # 140 spans two 128-blocks; radius 3
    batch = pack([[2] * n for n in lengths], multiple_of=128)
    length = batch.input_ids.shape[1]
    dense = packed_masks(batch, config)
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    for kind, block_mask in flex_block_masks(batch, config).items():
        expected = dense[kind][0, 0]
        assert torch.equal(block_mask.mask_mod(0, 0, q, k), expected), kind
        tiles = expected.view(length // 128, 128, length // 128, 128).any(3).any(1)
        assert torch.equal(block_mask.to_dense()[0, 0].bool(), tiles), kind


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


TEXTS = [
    "red",
    "",
    "mars is the red planet and venus is a planet " * 6,  # ~60 tokens, far past radius 3
    "sort the list by key",
    "open close read write " * 20,
    "x",
]


def _token_ids(embedder: Embedder) -> list[list[int]]:
    return embedder.tokenizer.encode([embedder.prompts["query"] + t for t in TEXTS])


@pytest.mark.parametrize("attention", ["dense", "flex"])
def test_packed_runner_equals_padded(tiny, attention):
    token_ids = _token_ids(tiny)
    padded = PaddedRunner(tiny.model).embed(token_ids)
    packed = PackedRunner(tiny.model, max_batch_tokens=96, attention=attention).embed(token_ids)
    cosine = torch.nn.functional.cosine_similarity(padded, packed)
    assert cosine.min() >= 0.99999
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_packed_engine_through_the_api(tiny_st_dir, tiny):
    packed = Embedder.from_pretrained(tiny_st_dir, device="cpu", engine="packed", attention="dense")
    np.testing.assert_allclose(packed.encode_query(TEXTS), tiny.encode_query(TEXTS), atol=1e-5)
    with pytest.raises(ValueError, match="engine must be"):
        Embedder.from_pretrained(tiny_st_dir, device="cpu", engine="fast")


def test_stream_equals_encode_and_keeps_order(tiny):
    texts = [t + f" {i % 7}" for i, t in enumerate(TEXTS * 9)]
    blocks = list(tiny.encode_stream(iter(texts), task="query", chunk_size=5, dim=16))
    assert [len(b) for b in blocks] == [5] * 10 + [4]
    np.testing.assert_allclose(np.concatenate(blocks), tiny.encode_query(texts, dim=16), atol=1e-6)


def test_stream_documents_with_titles(tiny):
    texts, titles = ["red planet", "sort the list"], ["mars", None]
    got = np.concatenate(list(tiny.encode_stream(texts, titles=titles)))
    np.testing.assert_allclose(got, tiny.encode_document(texts, titles=titles), atol=1e-6)


def test_stream_memory_is_bounded_on_a_long_generator(tiny):
    """The stream pulls at most (prefetch + 1) chunks ahead of what it has yielded, however long the input."""
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield f"word {i}"

    stream = tiny.encode_stream(endless(), chunk_size=8)
    yielded = 0
    for block in itertools.islice(stream, 6):
        yielded += len(block)
        assert pulled - yielded <= 3 * 8, f"pulled {pulled} texts for {yielded} embeddings"
    stream.close()
    assert yielded == 48


def test_stream_errors_surface_with_the_global_index(tiny):
    with pytest.raises(TypeError, match=r"texts\[10\] is int"):
        list(tiny.encode_stream(["a"] * 10 + [5], chunk_size=4))
    with pytest.raises(TypeError, match="iterable of strings"):
        next(tiny.encode_stream("just one string"))
    with pytest.raises(ValueError, match="titles select the document prompt"):
        next(tiny.encode_stream(["a"], titles=["t"], task="query"))
