"""Argument handling of the encode_* API: what is refused, what None means, where truncation is reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder, TruncationError, TruncationWarning
from embeddinggemma.embedder import resolve_device

LONG = " ".join(["red planet"] * 80)  # over the tiny model's 128 tokens


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


def test_none_means_not_given(tiny):
    texts = ["red planet", "mars"]
    default_query = tiny.encode_query(texts)
    np.testing.assert_array_equal(tiny.encode_query(texts, prompt=None), default_query)
    np.testing.assert_array_equal(tiny.encode_query(texts, task=None), default_query)
    np.testing.assert_array_equal(tiny.encode_query(texts, task=None, prompt=None), default_query)
    np.testing.assert_array_equal(default_query, tiny.encode(texts, task="query"))
    np.testing.assert_array_equal(tiny.encode(texts, prompt=None, task=None), tiny.encode(texts))
    np.testing.assert_array_equal(tiny.encode_document(texts, prompt=None), tiny.encode_document(texts))
    stream = np.concatenate(list(tiny.encode_stream(texts, prompt=None, task=None)))
    np.testing.assert_allclose(stream, tiny.encode(texts), atol=1e-6)


def test_explicit_prompt_replaces_the_default(tiny):
    texts = ["red planet", "mars"]
    expected = tiny.encode(["my prompt: " + t for t in texts])
    np.testing.assert_allclose(tiny.encode_query(texts, prompt="my prompt: "), expected, atol=1e-6)
    np.testing.assert_allclose(tiny.encode_document(texts, prompt="my prompt: "), expected, atol=1e-6)
    with pytest.raises(ValueError, match="do not combine them with prompt="):
        tiny.encode_document(texts, titles=["a", "b"], prompt="my prompt: ")
    with pytest.raises(ValueError, match="either task= or prompt="):
        tiny.encode_query(texts, task="sts", prompt="my prompt: ")


def test_a_string_of_titles_for_a_list_is_refused(tiny):
    with pytest.raises(TypeError, match=r"one title \(or None\) per text, got a single string"):
        tiny.encode_document(["a", "b"], titles="ab")
    single = tiny.encode_document("red planet", titles="mars")
    np.testing.assert_array_equal(single, tiny.encode_document(["red planet"], titles=["mars"])[0])
    with pytest.raises(TypeError, match="got a single string"):
        next(tiny.encode_stream(["a", "b"], titles="ab"))
    with pytest.raises(TypeError, match="titles must be a string or a list of strings"):
        tiny.encode_document(["a", "b"], titles={"x", "y"})


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ({"a": 1}, "got dict"),
        ({"red", "planet"}, "got set; its order is arbitrary"),
        (frozenset({"red"}), "got frozenset; its order is arbitrary"),
        ({"a": 1}.keys(), "got dict_keys; its order is arbitrary"),
        (b"red", "got bytes"),
        (np.array(["red"]), "got ndarray"),
    ],
)
def test_unordered_or_non_text_collections_are_refused(tiny, texts, match):
    with pytest.raises(TypeError, match=match):
        tiny.encode(texts)
    with pytest.raises(TypeError, match=match):
        next(tiny.encode_stream(texts))


def test_ordered_collections_are_accepted(tiny):
    texts = ["red planet", "mars", "code"]
    expected = tiny.encode(texts)
    np.testing.assert_array_equal(tiny.encode(tuple(texts)), expected)
    np.testing.assert_array_equal(tiny.encode(t for t in texts), expected)


def test_lone_surrogates_are_refused_with_their_index(tiny):
    with pytest.raises(ValueError, match=r"texts\[1\] contains a lone surrogate '\\ud800' at character 2"):
        tiny.encode(["ok", "ab\ud800"])
    with pytest.raises(ValueError, match=r"titles\[0\] contains a lone surrogate"):
        tiny.encode_document(["ok"], titles=["\udfff"])
    with pytest.raises(ValueError, match=r"texts\[4\] contains a lone surrogate"):
        list(tiny.encode_stream(["a", "b", "c", "d", "\ud83d"], chunk_size=2))


def test_stream_truncation_reports_the_global_row(tiny):
    texts = ["red", "mars", "code", LONG, "sort", LONG]
    with pytest.warns(TruncationWarning) as caught:
        list(tiny.encode_stream(texts, chunk_size=2))
    reports = [w.message for w in caught if issubclass(w.category, TruncationWarning)]
    assert [r.first for r in reports] == [3, 5]
    assert "1 of 2 inputs (rows 2-3) exceed the 128-token limit" in str(reports[0])
    assert "first at index 3" in str(reports[0])
    with pytest.raises(TruncationError, match="first at index 3") as error:
        list(tiny.encode_stream(texts, chunk_size=2, on_truncation="error"))
    assert (error.value.first, error.value.count, error.value.limit) == (3, 1, 128)


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("tpu", ValueError, "unknown device 'tpu'"),
        ("", ValueError, "unknown device ''"),
        ("mps", ValueError, "device 'mps' is not available"),
        (5, TypeError, "device must be a string"),
    ],
)
def test_devices_this_machine_lacks_are_refused(device, error, match):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(error, match=match):
        resolve_device(device)


def test_missing_cuda_is_refused():
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_pipelined_encode_reports_the_global_row(tiny_st_dir, monkeypatch):
    """The GPU engine's `encode` tokenises in chunks too (run here on the CPU through the same method)."""
    from embeddinggemma import embedder as embedder_module

    monkeypatch.setattr(embedder_module, "FIRST_PIPELINE_CHUNK", 2)
    monkeypatch.setattr(embedder_module, "PIPELINE_CHUNK", 2)
    packed = Embedder.from_pretrained(tiny_st_dir, device="cpu", engine="packed")
    texts = ["red", "mars", "code", "sort", "line", LONG]
    with pytest.warns(TruncationWarning, match=r"\(rows 4-5\) exceed .* first at index 5"):
        packed._embed_pipelined(texts, show_progress=False, on_truncation="warn")
