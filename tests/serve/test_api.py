"""The endpoints on a live loopback server (tiny model): the official `openai` client, TEI's /embed, /info,
/health, /v1/models, /metrics. Every embedding is compared with offline `Embedder` output."""

from __future__ import annotations

import base64
import warnings

import httpx2 as httpx
import numpy as np
import pytest
from fastapi import APIRouter, Request

from embeddinggemma.serve import Inputs

TEXTS = ["red planet", "mars is the red planet and venus is a planet", "code", "sort the list by key"]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_openai_client_floats_in_input_order(openai_client, tiny_embedder):
    response = openai_client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert [d.index for d in response.data] == [0, 1, 2, 3]
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_embedder.encode(TEXTS, task="query"), atol=1e-6)  # the default task
    tokens = sum(
        len(ids) for ids in tiny_embedder.tokenizer.encode([tiny_embedder.prompts["query"] + t for t in TEXTS])
    )
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    assert response.model == "tiny"


def test_openai_client_base64_is_little_endian_float32(openai_client, tiny_embedder):
    # without encoding_format the client asks for base64 and decodes it itself
    decoded = openai_client.embeddings.create(model="tiny", input="red planet")
    np.testing.assert_allclose(decoded.data[0].embedding, tiny_embedder.encode("red planet", task="query"), atol=1e-6)
    raw = openai_client.embeddings.create(model="tiny", input=TEXTS, encoding_format="base64")
    vectors = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    floats = openai_client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    np.testing.assert_array_equal(vectors, np.array([d.embedding for d in floats.data], dtype=np.float32))
    np.testing.assert_allclose(vectors, tiny_embedder.encode(TEXTS, task="query"), atol=1e-6)


def test_openai_client_dimensions_and_extensions(tiny_embedder, live_server):
    openai = pytest.importorskip("openai")
    with live_server(tiny_embedder, allow_untrained_dimensions=True) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = client.embeddings.with_raw_response.create(model="tiny", input=TEXTS, dimensions=16)
        response = raw.parse()
        assert "not a trained size" in raw.headers["x-embeddinggemma-warning"]
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert got.shape == (4, 16)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # re-normalised after the cut
        with warnings.catch_warnings():  # the offline side warns about the untrained size too
            warnings.simplefilter("ignore", UserWarning)
            expected = tiny_embedder.encode(TEXTS, task="query", dim=16)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        documents = client.embeddings.create(
            model="tiny", input=TEXTS[:2], extra_body={"titles": ["mars", None]}, encoding_format="float"
        )
        expected = tiny_embedder.encode_document(TEXTS[:2], titles=["mars", None])
        np.testing.assert_allclose([d.embedding for d in documents.data], expected, atol=1e-6)
        sts = client.embeddings.create(model="tiny", input=TEXTS, extra_body={"task": "STS"}, encoding_format="float")
        np.testing.assert_allclose([d.embedding for d in sts.data], tiny_embedder.encode(TEXTS, task="sts"), atol=1e-6)


def test_token_id_inputs_are_used_as_they_are(client, tiny_embedder):
    ids = tiny_embedder.tokenizer.encode([tiny_embedder.prompts["document"] + t for t in TEXTS])
    expected = tiny_embedder.encode(TEXTS, task="document")
    many = client.post("/v1/embeddings", json={"input": ids, "encoding_format": "float"})
    assert many.status_code == 200, many.text
    np.testing.assert_allclose([d["embedding"] for d in many.json()["data"]], expected, atol=1e-6)
    assert many.json()["usage"]["prompt_tokens"] == sum(map(len, ids))
    one = client.post("/v1/embeddings", json={"input": ids[0]})
    np.testing.assert_allclose(one.json()["data"][0]["embedding"], expected[0], atol=1e-6)


def test_tei_embed(client, tiny_embedder):
    single = client.post("/embed", json={"inputs": "red planet"})
    assert single.status_code == 200
    np.testing.assert_allclose(single.json(), [tiny_embedder.encode("red planet", task="query")], atol=1e-6)
    raw = client.post("/embed", json={"inputs": TEXTS, "normalize": False, "prompt_name": "document"})
    np.testing.assert_allclose(
        raw.json(), tiny_embedder.encode(TEXTS, task="document", normalize=False), rtol=1e-5, atol=1e-6
    )
    titled = client.post("/embed", json={"inputs": TEXTS[:2], "titles": ["mars", "venus"], "truncate": True})
    np.testing.assert_allclose(
        titled.json(), tiny_embedder.encode_document(TEXTS[:2], titles=["mars", "venus"]), atol=1e-6
    )
    assert titled.headers["x-truncated-inputs"] == "0"
    for name in ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert float(single.headers[name]) >= 0


def test_default_task_none_adds_no_prompt(tiny_embedder, live_server):
    with live_server(tiny_embedder, default_task=None) as url, httpx.Client(base_url=url) as c:
        assert c.get("/info").json()["default_prompt"] == ""
        got = c.post("/embed", json={"inputs": TEXTS}).json()
        np.testing.assert_allclose(got, tiny_embedder.encode(TEXTS), atol=1e-6)


def test_info_models_health(client, tiny_embedder):
    info = client.get("/info").json()
    assert info["model_id"] == "tiny" and info["embedding_dim"] == 40
    assert info["default_task"] == "query" and info["default_prompt"] == "task: search result | query: "
    assert info["prompts"]["document"] == "title: none | text: "
    assert info["max_input_length"] == tiny_embedder.max_seq_length
    assert {"max_batch_tokens", "max_client_batch_size", "max_concurrent_requests", "payload_limit"} <= set(info)
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert client.get("/health").json() == {"status": "ok"}


def test_metrics_count_requests_batches_and_errors(client):
    client.post("/embed", json={"inputs": TEXTS})
    client.post("/embed", json={"inputs": ""})
    text = client.get("/metrics").text
    for name in (
        "embeddinggemma_request_duration_seconds_bucket",
        "embeddinggemma_queue_duration_seconds_bucket",
        "embeddinggemma_inference_duration_seconds_bucket",
        "embeddinggemma_tokenization_duration_seconds_bucket",
        "embeddinggemma_batch_texts_bucket",
        "embeddinggemma_batch_tokens_bucket",
        "embeddinggemma_batch_requests_bucket",
        "embeddinggemma_tokens_per_second",
        "embeddinggemma_queue_texts",
        "embeddinggemma_requests_in_progress",
    ):
        assert name in text, name
    assert 'embeddinggemma_requests_total{endpoint="/embed",status="200"}' in text
    assert 'embeddinggemma_errors_total{code="invalid_value",status="422"}' in text
    embedded = [line for line in text.splitlines() if line.startswith("embeddinggemma_embedded_texts_total")]
    assert float(embedded[0].split()[-1]) >= len(TEXTS)


def test_extra_router_is_mounted_behind_the_same_keys(tiny_embedder, live_server):
    router = APIRouter()

    @router.post("/echo-embed")
    async def echo(request: Request) -> dict:
        result = await request.app.state.service.embed(Inputs(texts=["red planet"]), task="query")
        return {"first": float(result.embeddings[0, 0])}

    with live_server(tiny_embedder, extra_routers=[router], api_keys=("k1",)) as url, httpx.Client(base_url=url) as c:
        assert c.post("/echo-embed").status_code == 401
        got = c.post("/echo-embed", headers={"Authorization": "Bearer k1"}).json()["first"]
        assert got == pytest.approx(float(tiny_embedder.encode("red planet", task="query")[0]), abs=1e-6)
