"""The released checkpoint against goldens made by scripts/make_goldens.py (sentence-transformers, fp32).

Skipped without the weights on a user's machine; CI sets EMBEDDINGGEMMA_REQUIRE_WEIGHTS=1 so a missing
checkpoint fails instead.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import Embedder

GOLDENS = json.loads((Path(__file__).parent / "goldens" / "embeddinggemma-300m.json").read_text(encoding="utf-8"))


def _unpack(blob: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(blob), dtype="<f4")


def _encode_records(embedder: Embedder, records: list[dict] | None = None) -> np.ndarray:
    rows = []
    for record in records or GOLDENS["records"]:
        if record["kind"] == "query":
            rows.append(embedder.encode(record["text"], task=record["task"]))
        else:
            rows.append(embedder.encode_document(record["text"], titles=record["title"]))
    return np.stack(rows)


def _cosines(got: np.ndarray, records: list[dict] | None = None) -> np.ndarray:
    expected = np.stack([_unpack(r["embedding"]) for r in records or GOLDENS["records"]])
    assert got.shape == expected.shape
    return (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)


def test_goldens_cover_the_hard_cases():
    tokens = [r["tokens"] for r in GOLDENS["records"]]
    assert max(tokens) > 600, "a text longer than the sliding band is needed"
    assert any(r["title"] for r in GOLDENS["records"] if r["kind"] == "document")
    assert any(r["text"] == "" for r in GOLDENS["records"])


@pytest.fixture(scope="module")
def fp32_alone(real_embedder) -> np.ndarray:
    """Every golden text encoded on its own, as the reference did."""
    return _encode_records(real_embedder)


@pytest.mark.real_weights
def test_fp32_matches_sentence_transformers(fp32_alone):
    cosines = _cosines(fp32_alone)
    assert cosines.min() >= 0.99999, f"per-text cosines {np.round(cosines, 7)}"


@pytest.mark.real_weights
def test_bf16_matches_within_rounding():
    """bf16 on a CPU without bf16 units is slow: the long passage plus one text of each other kind."""
    bf16 = Embedder.from_pretrained("google/embeddinggemma-300m", device="cpu", dtype="bfloat16")
    # the long passage; English, German and Japanese queries; a titled document; a code document
    records = [GOLDENS["records"][i] for i in (8, 0, 3, 5, 11, 16)]
    assert records[0]["tokens"] > 600 and records[4]["title"] and records[5]["text"].startswith("def ")
    got = _encode_records(bf16, records)
    cosines = _cosines(got, records)
    assert cosines.min() >= 0.999, f"per-text cosines {np.round(cosines, 5)}"


@pytest.mark.real_weights
def test_model_card_example(real_embedder):
    card = GOLDENS["card"]
    scores = real_embedder.similarity(
        real_embedder.encode_query(card["query"]), real_embedder.encode_document(card["documents"])
    )[0]
    assert int(np.argmax(scores)) == 1, "Mars must rank first"
    np.testing.assert_allclose(scores, [0.301, 0.636, 0.493, 0.489], atol=0.005)
    np.testing.assert_allclose(scores, card["scores"], atol=1e-5)


@pytest.mark.real_weights
def test_embedding_does_not_depend_on_batch(real_embedder, fp32_alone):
    """Short texts alone and in one batch with a 1,383-token text (over 1,100 padded positions, far past
    their sliding band): same embedding, no NaN."""
    records = GOLDENS["records"]
    rows = [i for i, r in enumerate(records) if r["kind"] == "query" and r["task"] == "query"]
    rows = [rows[0], rows[3], *(i for i in rows if records[i]["tokens"] > 1000)]
    mixed = real_embedder.encode_query([records[i]["text"] for i in rows], batch_size=len(rows))
    assert np.isfinite(mixed).all()
    np.testing.assert_allclose((mixed * fp32_alone[rows]).sum(1), 1.0, atol=1e-5)
