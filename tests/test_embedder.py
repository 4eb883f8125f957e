"""The public API on the tiny model: outputs, ordering, batching and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder, TruncationError, TruncationWarning


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


TEXTS = ["red planet", "mars is the red planet and venus is a planet", "", "code", "sort the list by key"]


def test_shapes_types_and_norms(tiny):
    many = tiny.encode_query(TEXTS)
    assert isinstance(many, np.ndarray) and many.shape == (5, 40) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-6)
    one = tiny.encode_query("red planet")
    assert one.shape == (40,)
    np.testing.assert_allclose(one, many[0], atol=1e-6)
    as_torch = tiny.encode_query(TEXTS, output="torch")
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32


def test_order_is_preserved_across_sorting_and_batches(tiny):
    texts = [("planet " * n).strip() for n in (3, 17, 1, 9, 30, 2, 11)]
    batched = tiny.encode(texts, task="query", batch_size=2)
    alone = np.stack([tiny.encode(t, task="query") for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_batch_independence_with_mixed_lengths_no_nan(tiny):
    """A short text in a batch with one far longer than the sliding band: same result, finite."""
    long_text = " ".join(["read write open close sort key value"] * 15)  # ~107 tokens >> band of 7
    mixed = tiny.encode([long_text, "red", "mars"], batch_size=3)
    assert np.isfinite(mixed).all()
    np.testing.assert_allclose(mixed[1], tiny.encode("red"), atol=1e-6)


def test_prompts_change_embeddings_and_match_explicit_prompt(tiny):
    query = tiny.encode_query("red planet")
    explicit = tiny.encode("red planet", prompt="task: search result | query: ")
    np.testing.assert_allclose(query, explicit, atol=1e-7)
    assert not np.allclose(query, tiny.encode("red planet"))
    assert not np.allclose(query, tiny.encode("red planet", task="sts"))
    # the checkpoint's own prompt names and our lowercase names resolve to the same prompt
    np.testing.assert_allclose(tiny.encode("red", task="STS"), tiny.encode("red", task="sts"), atol=1e-7)
    for task in ("question_answering", "fact_checking", "code_retrieval", "classification", "clustering"):
        assert tiny.prompts[task].startswith("task: ")


def test_document_titles(tiny):
    with_title = tiny.encode_document("red planet", titles="mars")
    np.testing.assert_allclose(with_title, tiny.encode("red planet", prompt="title: mars | text: "), atol=1e-7)
    np.testing.assert_allclose(
        tiny.encode_document(["red planet"], titles=[None]), tiny.encode_document(["red planet"]), atol=1e-7
    )


def test_normalize_false_returns_raw_head_output(tiny):
    raw = tiny.encode("red planet", normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), tiny.encode("red planet"), atol=1e-6)


def test_similarity(tiny):
    a, b = tiny.encode_query(TEXTS[:2]), tiny.encode_document(TEXTS)
    scores = tiny.similarity(a, b)
    assert scores.shape == (2, 5)
    np.testing.assert_allclose(scores, a @ b.T, atol=1e-6)
    assert isinstance(tiny.similarity(torch.as_tensor(a), b), torch.Tensor)
    with pytest.raises(ValueError, match="same D"):
        tiny.similarity(a, b[:, :10])


def test_empty_list_gives_empty_array(tiny):
    out = tiny.encode([], dim=16)
    assert out.shape == (0, 16)


def test_empty_string_is_defined(tiny):
    out = tiny.encode("")
    assert np.isfinite(out).all() and abs(np.linalg.norm(out) - 1) < 1e-6


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        (["ok", 3], TypeError, r"texts\[1\] is int"),
        ([None], TypeError, r"texts\[0\] is NoneType"),
        (42, TypeError, "string or a list of strings"),
        (b"bytes", TypeError, "string or a list of strings"),
    ],
)
def test_non_string_inputs(tiny, texts, error, match):
    with pytest.raises(error, match=match):
        tiny.encode(texts)


def test_unknown_task(tiny):
    with pytest.raises(ValueError, match=r"unknown task 'serch'.*choose one of"):
        tiny.encode("x", task="serch")


def test_task_and_prompt_together(tiny):
    with pytest.raises(ValueError, match="either task= or prompt="):
        tiny.encode("x", task="query", prompt="p: ")


@pytest.mark.parametrize("dim", [0, -1, 41, 10_000])
def test_bad_dim(tiny, dim):
    with pytest.raises(ValueError, match="dim must be between 1 and 40"):
        tiny.encode("x", dim=dim)


def test_dim_type(tiny):
    with pytest.raises(TypeError, match="dim must be an integer"):
        tiny.encode("x", dim=12.5)


def test_titles_must_align(tiny):
    with pytest.raises(ValueError, match="got 1 titles for 2 texts"):
        tiny.encode_document(["a", "b"], titles=["t"])
    with pytest.raises(TypeError, match=r"titles\[0\] is int"):
        tiny.encode_document(["a"], titles=[1])


def test_truncation_warns_with_count_or_raises(tiny_st_dir):
    short = Embedder.from_pretrained(tiny_st_dir, device="cpu", max_seq_length=8)
    texts = ["red planet", "one two three four five six seven eight nine", "mars " * 20]
    with pytest.warns(TruncationWarning, match="2 of 3 inputs exceed the 8-token limit"):
        cut = short.encode(texts)
    assert np.isfinite(cut).all()
    with pytest.raises(TruncationError, match="2 of 3 inputs"):
        short.encode(texts, on_truncation="error")
    ids = short.tokenizer.encode(texts)
    assert [len(i) for i in ids] == [4, 8, 8] and all(i[-1] == 1 and i[0] == 2 for i in ids), "EOS kept last"


def test_max_seq_length_bounds(tiny_st_dir):
    with pytest.raises(ValueError, match="max_seq_length must be between 2 and 128"):
        Embedder.from_pretrained(tiny_st_dir, device="cpu", max_seq_length=4096)


@pytest.mark.parametrize("dtype", ["float16", torch.float16, "fp16", "half"])
def test_float16_is_refused(tiny_st_dir, dtype):
    with pytest.raises(ValueError, match=r"float16 overflows.*use bfloat16 or float32"):
        Embedder.from_pretrained(tiny_st_dir, device="cpu", dtype=dtype)


def test_bfloat16_runs_close_to_float32(tiny_st_dir, tiny):
    bf16 = Embedder.from_pretrained(tiny_st_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    cosines = (bf16.encode_query(TEXTS) * tiny.encode_query(TEXTS)).sum(1)
    assert cosines.min() > 0.99


def test_defaults(tiny):
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"
    assert tiny.matryoshka_dims == (40,)
    assert tiny.max_seq_length == 128
