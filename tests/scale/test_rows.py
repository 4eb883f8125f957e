"""A worker's embedding of one block, without Ray: bit-exact to `Embedder.encode`, and every bad row explained."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scale_helpers import MAX_TOKENS, make_texts

from embeddinggemma import Embedder
from embeddinggemma.scale.rows import EmbedSettings, RowEmbedder
from embeddinggemma.vectors.codes import int8_ranges, quantize_embeddings

# the tiny model embeds into 40 dims; 16 is a test Matryoshka size it was not trained for
pytestmark = pytest.mark.filterwarnings("ignore:dim=16 is not one of the trained")


@pytest.fixture(scope="module")
def reference(tiny_st_dir):
    return Embedder.from_pretrained(tiny_st_dir, device="cpu", max_seq_length=MAX_TOKENS)


def _settings(tiny_st_dir, **overrides) -> EmbedSettings:
    return EmbedSettings(
        **{"model": str(tiny_st_dir), "dims": (40, 16), "max_seq_length": MAX_TOKENS, "batch_size": 8, **overrides}
    )


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)


def test_documents_with_titles_bit_exact_and_bad_rows(tiny_st_dir, reference):
    texts: list = make_texts(30, seed=3, longest=12)
    titles: list = [None if i % 4 else f"the {t.split()[0]}" for i, t in enumerate(texts)]
    texts[2], texts[5], texts[9] = None, "  \n", 42
    titles[11] = 7
    texts[13] = " ".join(["sort"] * 40)  # over the 24-token limit with the prompt
    worker = RowEmbedder(_settings(tiny_st_dir))
    result = worker.embed(texts, titles)
    assert result.bad == {
        2: "text is null, not a string",
        5: "text is empty",
        9: "text is int, not a string",
        11: "title is int, not a string or null",
        13: f"{len(texts[13].split()) + 8} tokens (prompt included) exceed the {MAX_TOKENS}-token limit",
    }
    good = [i for i in range(30) if i not in result.bad]
    assert result.rows.tolist() == good
    ids = pa.array(range(100, 130))
    table = worker.table(result, ids, id_name="doc")
    assert table.column_names == ["doc", "embedding_40", "embedding_16", "num_tokens"]
    assert table.schema.field("embedding_40").type == pa.list_(pa.float32(), 40)
    assert table.column("doc").to_pylist() == [100 + i for i in good]
    for dim in (40, 16):
        expected = reference.encode_document(
            [texts[i] for i in good], titles=[titles[i] for i in good], dim=dim, batch_size=8
        )
        assert np.array_equal(_column(table, f"embedding_{dim}"), expected)  # bit-exact
    prompted = [f"title: {titles[i] or 'none'} | text: {texts[i]}" for i in good]
    assert table.column("num_tokens").to_pylist() == reference.tokenizer.count_tokens(prompted)


def test_task_prompt_and_full_table(tiny_st_dir, reference):
    texts = [*make_texts(6, seed=4, longest=10), "", None]
    worker = RowEmbedder(_settings(tiny_st_dir, task="query", dims=None))
    result = worker.embed(texts)
    table = worker.full_table(result, len(texts), pa.array(list("abcdefgh")), id_name="key")
    assert table.column_names == ["key", "embedding_40", "num_tokens", "error"]
    assert table.column("error").to_pylist() == [None] * 6 + ["text is empty", "text is null, not a string"]
    assert table.column("embedding_40").null_count == 2 and table.column("num_tokens").null_count == 2
    embedded = table.slice(0, 6)
    assert np.array_equal(_column(embedded, "embedding_40"), reference.encode(texts[:6], task="query", batch_size=8))
    with pytest.raises(ValueError, match="titles select the document prompt"):
        worker.embed(texts, [None] * len(texts))


def test_truncate_policy_embeds_the_first_tokens(tiny_st_dir, reference):
    texts = make_texts(12, seed=5, longest=30)
    worker = RowEmbedder(_settings(tiny_st_dir, overlong="truncate"))
    result = worker.embed(texts)
    long_rows = {i: len(t.split()) + 8 for i, t in enumerate(texts) if len(t.split()) + 8 > MAX_TOKENS}
    assert long_rows and result.truncated_from == long_rows and not result.bad
    table = worker.table(result, None)
    assert table.column("truncated_from").to_pylist() == [long_rows.get(i) for i in range(12)]
    with pytest.warns(UserWarning, match="truncated"):
        expected = reference.encode_document(texts, dim=16, batch_size=8)
    assert np.array_equal(_column(table, "embedding_16"), expected)


def test_int8_and_binary_codes_are_the_quantized_embeddings(tiny_st_dir, reference):
    texts = make_texts(20, seed=6, longest=10)
    floats = {d: reference.encode_document(texts, dim=d, batch_size=8) for d in (40, 16)}
    ranges = {d: int8_ranges(v) for d, v in floats.items()}
    int8 = RowEmbedder(_settings(tiny_st_dir, precision="int8", int8_ranges=ranges))
    binary = RowEmbedder(_settings(tiny_st_dir, precision="binary"))
    int8_table = int8.table(int8.embed(texts), None)
    binary_table = binary.table(binary.embed(texts), None)
    assert int8_table.schema.field("embedding_16").type == pa.list_(pa.int8(), 16)
    assert binary_table.schema.field("embedding_40").type == pa.list_(pa.uint8(), 5)
    for dim in (40, 16):
        codes = quantize_embeddings(floats[dim], "int8", ranges=ranges[dim])
        assert np.array_equal(_column(int8_table, f"embedding_{dim}"), codes)
        bits = quantize_embeddings(floats[dim], "binary")
        assert np.array_equal(_column(binary_table, f"embedding_{dim}"), bits)
    with pytest.raises(ValueError, match="int8 precision needs calibrated ranges for dims"):
        RowEmbedder(_settings(tiny_st_dir, precision="int8"))


def test_settings_round_trip_and_checks(tiny_st_dir):
    settings = _settings(tiny_st_dir, precision="int8", int8_ranges={16: np.ones((2, 16)), 40: np.zeros((2, 40))})
    again = EmbedSettings.from_json(settings.to_json())
    assert again == settings and np.array_equal(again.int8_ranges[16], np.ones((2, 16)))
    with pytest.raises(ValueError, match="precision must be one of"):
        EmbedSettings(model="m", precision="fp8")
    with pytest.raises(ValueError, match=r"dims \[64\]: each must be between 1 and 40"):
        RowEmbedder(_settings(tiny_st_dir, dims=(64,)))


def test_chunks_tokenised_ahead_are_embedded_chunk_by_chunk(tiny_st_dir, reference):
    """The GPU path (chunks of `chunk_rows`, the next one tokenised on a thread), run on CPU with small chunks."""
    texts: list = make_texts(23, seed=8, longest=30)
    texts[4] = None
    worker = RowEmbedder(_settings(tiny_st_dir, dims=(40,)), chunk_rows=5)
    result = worker.embed(texts)
    candidates = [i for i in range(23) if i != 4]  # chunks are cut from the rows with a usable text
    over_long = {i for i in candidates if len(texts[i].split()) + 8 > MAX_TOKENS}
    assert set(result.bad) == {4} | over_long and over_long
    assert result.rows.tolist() == [i for i in candidates if i not in over_long]
    expected = []
    for start in range(0, len(candidates), 5):
        good = [texts[i] for i in candidates[start : start + 5] if i not in over_long]
        if good:
            expected.append(reference.encode_document(good, batch_size=8))
    assert np.array_equal(result.vectors[40], np.concatenate(expected))
