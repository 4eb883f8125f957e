"""Packing without padding: data layout, batch planning, masks against explicit loops, and equality of
every fast path (dense packed, FlexAttention packed, streaming) with the simple padded path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.config import FULL_ATTENTION, SLIDING_ATTENTION, EmbeddingGemmaConfig, Gemma3TextConfig
from embeddinggemma.engine.batching import PAD_SEGMENT, pack, token_budget_batches
from embeddinggemma.engine.flex import packed_block_masks, reference_block_masks
from embeddinggemma.engine.masks import packed_masks
from embeddinggemma.engine.runners import PackedRunner, PaddedRunner


def test_pack_layout():
    batch = pack([[2, 5, 1], [2, 1], [2, 7, 8, 9, 1]], multiple_of=4)
    assert batch.input_ids.shape == (1, 12) and batch.num_texts == 3 and batch.num_tokens == 10
    assert batch.input_ids[0].tolist() == [2, 5, 1, 2, 1, 2, 7, 8, 9, 1, 0, 0]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 0, 1]
    assert batch.segment_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3]
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 10, 12] and batch.cu_seqlens.dtype == torch.int32
    assert batch.token_counts().tolist() == [3, 2, 5]
    assert batch.max_segment_length == 5


def test_filler_is_cut_into_block_sized_segments():
    """Filler up to a large budget costs attention work per 128-token segment, not padding^2."""
    batch = pack([[2] * 5, [2] * 200], multiple_of=1024)
    lengths = torch.diff(batch.cu_seqlens).tolist()
    assert lengths[:2] == [5, 200] and sum(lengths) == 1024
    assert max(lengths[2:]) <= PAD_SEGMENT
    starts = batch.cu_seqlens[2:-1].tolist()
    assert all(s % PAD_SEGMENT == 0 for s in starts[1:]), "filler segments after the first align to blocks"
    assert batch.position_ids[0, 205:].tolist()[:51] == list(range(51))  # 205 -> 256: first filler segment
    assert batch.segment_ids[-1].item() == batch.num_segments - 1


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
    for kind, block_mask in packed_block_masks(batch, config).items():
        expected = dense[kind][0, 0]
        assert torch.equal(block_mask.mask_mod(0, 0, q, k), expected), kind
        tiles = expected.view(length // 128, 128, length // 128, 128).any(3).any(1)
        assert torch.equal(block_mask.to_dense()[0, 0].bool(), tiles), kind


def _assert_same_structure(ours, reference, kind):
    pairs = [("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")]
    pairs += [("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")]
    for counts_name, indices_name in pairs:
        counts, expected_counts = getattr(ours, counts_name), getattr(reference, counts_name)
        assert torch.equal(counts.long(), expected_counts.long()), (kind, counts_name)
        indices, expected_indices = getattr(ours, indices_name), getattr(reference, indices_name)
        for row, n in enumerate(counts[0, 0].tolist()):
            assert indices[0, 0, row, :n].tolist() == expected_indices[0, 0, row, :n].tolist(), (
                kind,
                indices_name,
                row,
            )


@pytest.mark.parametrize(
    ("lengths", "multiple"),
    [
        ([1, 2, 513, 2048, 3, 700, 1], 128),  # the real band (+-256) across long and 1-2 token texts
        ([1], 128),
        ([128, 128, 256], 128),  # texts exactly on tile boundaries
        ([5] * 40, 4096),  # a small batch padded to a large budget: filler segments
        ([2048, 2048], 128),
    ],
)
def test_block_masks_from_offsets_equal_create_block_mask(lengths, multiple):
    """The O(tiles) construction visits exactly the tiles create_block_mask finds by evaluating all N^2
    pairs: the same partial and full tiles per query tile (forward) and per key tile (backward)."""
    config = Gemma3TextConfig()
    batch = pack([[2] * n for n in lengths], multiple_of=multiple)
    reference = reference_block_masks(batch, config)
    for kind, block_mask in packed_block_masks(batch, config, for_backward=True).items():
        _assert_same_structure(block_mask, reference[kind], kind)


def test_block_masks_on_random_batches():
    config = Gemma3TextConfig()
    rng = np.random.default_rng(0)
    for _ in range(6):
        lengths = [
            int(rng.choice([1, 2, 3, rng.integers(1, 600), rng.integers(500, 2049)]))
            for _ in range(rng.integers(1, 10))
        ]
        batch = pack([[2] * n for n in lengths], multiple_of=int(rng.choice([128, 1024])))
        reference = reference_block_masks(batch, config)
        for kind, block_mask in packed_block_masks(batch, config, for_backward=True).items():
            _assert_same_structure(block_mask, reference[kind], kind)


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
    packed = PackedRunner(tiny.model, max_batch_tokens=96, attention=attention, path="modules").embed(token_ids)
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


def test_layers_compiled_for_any_token_count_match_eager_without_recompiling(tiny_st_dir, tiny):
    """The trainer's compiled varlen micro-batches are not padded to a fixed budget: one graph per
    layer kind takes every token count, and values and gradients equal the eager modules'."""
    from torch._dynamo.utils import counters

    from embeddinggemma.checkpoint import load_checkpoint
    from embeddinggemma.engine.forward import packed_forward

    model = load_checkpoint(tiny_st_dir, dtype=torch.float32)[0].train().requires_grad_(True)
    eager = load_checkpoint(tiny_st_dir, dtype=torch.float32)[0].train().requires_grad_(True)
    token_ids = _token_ids(tiny)
    torch._dynamo.reset()
    counters.clear()
    for texts in (token_ids, token_ids[2:], token_ids[:3] + token_ids[4:]):  # 3 token counts, 3 text counts
        batch = pack(texts, multiple_of=1)
        got = packed_forward(model, batch, attention="dense", compile=True, dynamic_tokens=True)
        want = packed_forward(eager, batch, attention="dense")
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        got.square().sum().backward()
        want.square().sum().backward()
    # compiled for static shapes, the second token count compiles a second graph
    assert counters["stats"]["unique_graphs"] == 1, "a new token count compiled the layers again"
    for (name, param), reference in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(param.grad, reference.grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("asks_for_gqa", [True, False])
def test_varlen_kernel_is_asked_to_share_kv_heads_where_it_must_be(monkeypatch, asks_for_gqa):
    """PyTorch 2.13's varlen_attn refuses 3 query heads on 1 K/V head unless enable_gqa=True (2.11 has no
    such argument): without it the GPU engine would fail its self-check and fall back to FlexAttention."""
    from embeddinggemma.engine import varlen

    calls = []
    monkeypatch.setattr(varlen, "_KERNEL", lambda *args, **kwargs: calls.append(kwargs) or args[0])
    monkeypatch.setattr(varlen, "_ASKS_FOR_GQA", asks_for_gqa)
    q, kv = torch.zeros(5, 3, 8), torch.zeros(5, 1, 8)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    varlen.varlen_attend_packed(q, kv, kv, 0.1, cu_seqlens=cu, max_seqlen=5, radius=2)
    varlen.varlen_attend_packed(q, q, q, 0.1, cu_seqlens=cu, max_seqlen=5, radius=None)
    if asks_for_gqa:
        assert [c["enable_gqa"] for c in calls] == [True, False]
    else:
        assert all("enable_gqa" not in c for c in calls)
    assert [c["window_size"] for c in calls] == [(2, 2), (-1, -1)]
