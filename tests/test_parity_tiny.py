"""Parity with the reference stack on a tiny random model, through our production loader.

- transformers' Gemma3TextModel (use_bidirectional_attention=True) layer by layer, fp32;
- sentence-transformers' full pipeline (prompts, pooling, Dense, Normalize, truncate_dim);
- our save() loaded back by sentence-transformers (round trip).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder, load_encoder
from embeddinggemma.engine.batching import pad_batch
from embeddinggemma.engine.forward import padded_position_ids
from embeddinggemma.engine.masks import padded_attention
from embeddinggemma.tokenizer import TextTokenizer

# 13 texts, lengths 3..24 tokens with BOS/EOS: longer than the sliding band (radius 3), padded batch.
TEXTS = [
    "red",
    "mars is the red planet",
    "which planet is known as the red planet",
    "python function returns a sorted list of string keys and the value of the first line",
    "open file",
    "read write open close sort key value error line word first last big small fast slow the a red",
    "venus",
    "the big slow planet",
    "search result for code",
    "a word",
    "sort the list with a key function and write each line to the file then close it fast",
    "error",
    "first and last",
]


def _batch(tokenizer, texts):
    return pad_batch(tokenizer.encode(texts), tokenizer.pad_id)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_encoder_matches_transformers_layer_by_layer(tiny_hf_dir, attn_implementation):
    from transformers import Gemma3TextModel

    reference = Gemma3TextModel.from_pretrained(tiny_hf_dir, attn_implementation=attn_implementation).eval()
    ours = load_encoder(tiny_hf_dir).eval()
    tokenizer = TextTokenizer.from_file(
        tiny_hf_dir / "tokenizer.json", max_length=128, bos_id=2, eos_id=1, pad_id=0, vocab_size=99
    )
    input_ids, attention_mask = _batch(tokenizer, TEXTS)
    assert input_ids.shape[0] == 13 and input_ids.shape[1] > 2 * ours.config.window_radius + 1

    with torch.no_grad():
        ref = reference(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        _, states = ours(
            input_ids,
            padded_position_ids(attention_mask),
            padded_attention(attention_mask, ours.config),
            output_hidden_states=True,
        )
    assert len(states) == len(ref.hidden_states) == ours.config.num_hidden_layers + 1
    valid = attention_mask.bool()
    for layer, (mine, theirs) in enumerate(zip(states, ref.hidden_states, strict=True)):
        torch.testing.assert_close(mine[valid], theirs[valid], atol=2e-5, rtol=2e-5, msg=f"hidden state {layer}")
        assert torch.isfinite(mine).all(), f"non-finite values at layer {layer} (padding included)"
    torch.testing.assert_close(states[-1][valid], ref.last_hidden_state[valid], atol=2e-5, rtol=2e-5)


@pytest.fixture(scope="module")
def tiny_pair(tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    return Embedder.from_pretrained(tiny_st_dir, device="cpu"), SentenceTransformer(str(tiny_st_dir), device="cpu")


def test_pipeline_matches_sentence_transformers(tiny_pair):
    ours, st = tiny_pair
    np.testing.assert_allclose(ours.encode_query(TEXTS), st.encode_query(TEXTS), atol=2e-6)
    np.testing.assert_allclose(ours.encode_document(TEXTS), st.encode_document(TEXTS), atol=2e-6)
    np.testing.assert_allclose(ours.encode(TEXTS), st.encode(TEXTS), atol=2e-6)
    np.testing.assert_allclose(ours.encode(TEXTS, task="STS"), st.encode(TEXTS, prompt_name="STS"), atol=2e-6)


def test_titles_match_sentence_transformers_prompt(tiny_pair, tiny_prompts):
    ours, st = tiny_pair
    titles = ["mars", None, "code"] + [None] * 10
    expected = [
        st.encode(text, prompt=f"title: {title} | text: " if title else tiny_prompts["document"])
        for text, title in zip(TEXTS, titles, strict=True)
    ]
    np.testing.assert_allclose(ours.encode_document(TEXTS, titles=titles), np.stack(expected), atol=2e-6)


@pytest.mark.parametrize("dim", [8, 16, 40])
def test_matryoshka_dim_matches_sentence_transformers(tiny_pair, recwarn, dim):
    ours, st = tiny_pair
    got = ours.encode_query(TEXTS, dim=dim)
    # 40 is the tiny model's full width, the only "trained" size; other prefixes warn.
    assert any("not one of the trained" in str(w.message) for w in recwarn) == (dim != 40)
    expected = st.encode_query(TEXTS, truncate_dim=dim, normalize_embeddings=True)
    assert got.shape == (len(TEXTS), dim)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_save_round_trip_loads_in_sentence_transformers(tiny_pair, tmp_path, tiny_prompts):
    from sentence_transformers import SentenceTransformer

    ours, _ = tiny_pair
    ours.save(tmp_path / "saved")
    reloaded_st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    reloaded_ours = Embedder.from_pretrained(tmp_path / "saved", device="cpu")
    expected = ours.encode_query(TEXTS)
    np.testing.assert_allclose(reloaded_st.encode_query(TEXTS), expected, atol=2e-6)
    np.testing.assert_array_equal(reloaded_ours.encode_query(TEXTS), expected)
    assert reloaded_st.prompts["query"] == tiny_prompts["query"]
