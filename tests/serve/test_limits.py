"""Every limit and error path on a live server: one-line messages in OpenAI's error shape, naming the field."""

from __future__ import annotations

import socket
import time
import warnings

import httpx2 as httpx
import numpy as np
import pytest

LONG_TEXT = " ".join(["read write open close sort key value"] * 30)  # ~212 tokens > the tiny model's 128


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"input": ', "malformed JSON: Expecting value at line 1 column 11"),
        (b'{"input": "caf\xe9"}', "not valid UTF-8 (byte 14)"),
        (b'["red planet"]', "the body must be a JSON object"),
        (b"", "malformed JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(client, body, message):
    assert message in error_of(client.post("/v1/embeddings", content=body), 400)["message"]


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        ("/v1/embeddings", {}, "input", "input is required"),
        ("/v1/embeddings", {"input": 5}, "input", "got a number"),
        ("/v1/embeddings", {"input": ""}, "input", "input is an empty string"),
        ("/v1/embeddings", {"input": []}, "input", "input is an empty list"),
        ("/v1/embeddings", {"input": ["red", None]}, "input", "input[1] is null"),
        ("/v1/embeddings", {"input": [[2, "x", 1]]}, "input", "input[0][1] is a string"),
        ("/v1/embeddings", {"input": [[2, 1], []]}, "input", "input[1] is an empty token-id array"),
        ("/v1/embeddings", {"input": "red", "dimensions": "16"}, "dimensions", "valid integer"),
        ("/v1/embeddings", {"input": "red", "encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
        ("/v1/embeddings", {"input": "red", "taks": "query"}, "taks", "unknown field 'taks'"),
        ("/v1/embeddings", {"input": "red", "task": "poetry"}, "task", "unknown task 'poetry'; use one of"),
        ("/v1/embeddings", {"input": "red", "truncate": "yes"}, "truncate", "valid boolean"),
        ("/v1/embeddings", {"input": ["a", "b"], "titles": ["t"]}, "titles", "got 1 titles for 2 texts"),
        ("/v1/embeddings", {"input": "a", "titles": ["t"], "task": "query"}, "titles", "select the document prompt"),
        ("/v1/embeddings", {"input": "red", "dimensions": 16}, "dimensions", "not a trained Matryoshka size"),
        ("/v1/embeddings", {"input": "red", "dimensions": 0}, "dimensions", "between 1 and 40"),
        ("/v1/embeddings", {"input": "red", "dimensions": 4096}, "dimensions", "between 1 and 40"),
        ("/v1/embeddings", {"input": [5, 6, 1]}, "input", "must start with BOS (2) and end with EOS (1)"),
        ("/v1/embeddings", {"input": [2, 99999, 1]}, "input", "input[0][1] = 99999 is outside the vocabulary"),
        ("/v1/embeddings", {"input": [2, 1], "task": "query"}, "task", "token-id inputs are used as they are"),
        ("/embed", {"inputs": "red", "prompt_name": "poetry"}, "prompt_name", "unknown prompt_name 'poetry'"),
        ("/embed", {"inputs": "red", "truncation_direction": "left"}, "truncation_direction", "'right' or 'Right'"),
        ("/embed", {"inputs": ["red", ""]}, "inputs", "inputs[1] is an empty string"),
        ("/embed", {"input": "red"}, "input", "unknown field 'input'"),
    ],
)
def test_bad_fields_are_422_naming_the_field(client, path, body, param, message):
    error = error_of(client.post(path, json=body), 422)
    assert error["param"] == param and message in error["message"], error


def test_unpaired_surrogate_is_422(client):
    error = error_of(client.post("/v1/embeddings", content=b'{"input": "a\\ud800b"}'), 422)
    assert "unpaired surrogate" in error["message"]


def test_unknown_model_is_404_and_unknown_routes_are_shaped(client):
    error = error_of(client.post("/v1/embeddings", json={"input": "red", "model": "text-embedding-3-small"}), 404)
    assert error["code"] == "model_not_found" and "serves 'tiny'" in error["message"]
    assert error_of(client.get("/v2/nothing"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/embeddings"), 405)["code"] == "method_not_allowed"


def test_over_long_input_is_413_with_token_counts_unless_truncated(client, tiny_embedder):
    count = tiny_embedder.tokenizer.count_tokens([tiny_embedder.prompts["query"] + LONG_TEXT])[0]
    error = error_of(client.post("/v1/embeddings", json={"input": ["red", LONG_TEXT]}), 413)
    assert error["code"] == "input_too_long" and error["param"] == "input"
    assert f"input[1] has {count} tokens" in error["message"] and "the limit is 128" in error["message"]
    assert "truncate=true" in error["message"]
    cut = client.post("/v1/embeddings", json={"input": ["red", LONG_TEXT], "truncate": True})
    assert cut.status_code == 200 and cut.headers["x-truncated-inputs"] == "1"
    with warnings.catch_warnings():  # the offline side warns about the cut
        warnings.simplefilter("ignore")
        expected = tiny_embedder.encode(["red", LONG_TEXT], task="query")
    np.testing.assert_allclose([d["embedding"] for d in cut.json()["data"]], expected, atol=1e-6)
    assert cut.json()["usage"]["prompt_tokens"] < count + 10
    assert "x-truncated-inputs" not in client.post("/embed", json={"inputs": "red"}).headers


def test_over_long_token_ids_are_413_or_cut(client, tiny_embedder):
    ids = [2, *[40] * 200, 1]
    assert "input[0] has 202 tokens" in error_of(client.post("/v1/embeddings", json={"input": ids}), 413)["message"]
    cut = client.post("/v1/embeddings", json={"input": ids, "truncate": True, "encoding_format": "float"})
    expected = tiny_embedder.embed_token_ids([[*ids[:127], 1]])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(cut.json()["data"][0]["embedding"], expected[0].numpy(), atol=1e-6)
    assert cut.json()["usage"]["prompt_tokens"] == 128


def test_auto_truncate_server(tiny_embedder, live_server):
    with live_server(tiny_embedder, auto_truncate=True) as url, httpx.Client(base_url=url) as c:
        response = c.post("/embed", json={"inputs": [LONG_TEXT, LONG_TEXT, "red"]})
        assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "2"
        assert c.post("/embed", json={"inputs": LONG_TEXT, "truncate": False}).status_code == 413
        assert "embeddinggemma_truncated_inputs_total 2.0" in c.get("/metrics").text


def test_too_many_inputs_and_too_many_tokens_are_413(tiny_embedder, live_server):
    with (
        live_server(tiny_embedder, max_client_batch_size=3, max_queue_tokens=40) as url,
        httpx.Client(base_url=url) as c,
    ):
        error = error_of(c.post("/embed", json={"inputs": ["a", "b", "c", "d"]}), 413)
        assert error["code"] == "too_many_inputs" and "at most 3" in error["message"]
        error = error_of(c.post("/embed", json={"inputs": ["red planet " * 10] * 2}), 413)
        assert error["code"] == "request_too_large" and "--max-queue-tokens" in error["message"]
        assert c.post("/embed", json={"inputs": ["a", "b", "c"]}).status_code == 200


def test_body_size_limit(tiny_embedder, live_server):
    with live_server(tiny_embedder, payload_limit=2000) as url, httpx.Client(base_url=url) as c:
        big = {"inputs": ["red planet " * 200]}
        error = error_of(c.post("/embed", json=big), 413)  # announced by Content-Length
        assert error["code"] == "body_too_large" and "at most 2,000" in error["message"]

        def chunks():  # no Content-Length: counted while it streams in
            yield b'{"inputs": "'
            for _ in range(50):
                yield b"red planet " * 10
            yield b'"}'

        assert error_of(c.post("/embed", content=chunks()), 413)["code"] == "body_too_large"
        assert c.post("/embed", json={"inputs": "red planet"}).status_code == 200


def _raw_request(url: str, body: bytes, declared: int | None = None) -> socket.socket:
    """POST /embed on a raw socket; with `declared` > len(body) the request holds its slot waiting for the rest."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: {declared or len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_full_server_is_429_with_retry_after_and_a_gone_client_frees_its_slot(tiny_embedder, live_server):
    with live_server(tiny_embedder, max_concurrent_requests=1) as url, httpx.Client(base_url=url) as c:
        held = _raw_request(url, b'{"inputs": "re', declared=100)
        _wait_for(lambda: _metric(c, "embeddinggemma_requests_in_progress") == 1)
        error = error_of(busy := c.post("/embed", json={"inputs": "red"}), 429)
        assert error["code"] == "queue_full" and int(busy.headers["retry-after"]) >= 1
        assert c.get("/health").status_code == 200 and c.get("/info").status_code == 200  # no slot needed
        held.close()  # gone while sending its body
        _wait_for(lambda: _metric(c, "embeddinggemma_requests_in_progress") == 0)
        assert c.post("/embed", json={"inputs": "red"}).status_code == 200


def test_full_queue_is_429_with_retry_after(tiny_embedder, live_server):
    import json
    import threading

    big = [f"{'red planet ' * 15}{i}" for i in range(256)]
    tokens = sum(map(len, tiny_embedder.tokenizer.encode([tiny_embedder.prompts["query"] + t for t in big])))
    settings = {"max_batch_tokens": 64, "max_queue_tokens": tokens}
    with live_server(tiny_embedder, **settings) as url, httpx.Client(base_url=url, timeout=120) as c:
        result: dict = {}
        sender = threading.Thread(target=lambda: result.update(big=c.post("/embed", json={"inputs": big})))
        sender.start()
        _wait_for(lambda: _metric(c, "embeddinggemma_queue_tokens") > 0)
        # fits the queue on its own, but not next to the 3/4 of the big request still waiting
        error = error_of(busy := c.post("/embed", json={"inputs": big[: len(big) * 3 // 4]}), 429)
        assert error["code"] == "queue_full" and "tokens waiting" in error["message"]
        assert 1 <= int(busy.headers["retry-after"]) <= 60
        sender.join(120)
        assert result["big"].status_code == 200 and len(json.loads(result["big"].content)) == 256


def test_client_gone_while_queued_drops_its_work(tiny_embedder, live_server):
    import json

    texts = [f"{'red planet ' * 30}{i}" for i in range(256)]
    body = json.dumps({"inputs": texts}).encode()
    with (
        live_server(tiny_embedder, max_concurrent_requests=1, max_batch_tokens=64) as url,
        httpx.Client(base_url=url) as c,
    ):
        embedded_before = _metric(c, "embeddinggemma_embedded_texts_total")
        sock = _raw_request(url, body)
        _wait_for(lambda: _metric(c, "embeddinggemma_embedded_texts_total") > embedded_before)
        sock.close()
        _wait_for(lambda: _metric(c, "embeddinggemma_cancelled_requests_total") == 1)
        _wait_for(lambda: _metric(c, "embeddinggemma_requests_in_progress") == 0)
        assert _metric(c, "embeddinggemma_queue_texts") == 0
        assert c.post("/embed", json={"inputs": "red"}).status_code == 200
        assert _metric(c, "embeddinggemma_embedded_texts_total") - embedded_before < len(texts)
        assert 'status="499"' in c.get("/metrics").text


def test_api_keys(tiny_embedder, live_server):
    with live_server(tiny_embedder, api_keys=("k1", "k2")) as url, httpx.Client(base_url=url) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}, {"Authorization": "Basic k1"}):
            response = c.post("/embed", json={"inputs": "red"}, headers=headers)
            assert error_of(response, 401)["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
        assert c.post("/embed", json={"inputs": "red"}, headers={"Authorization": "Bearer k2"}).status_code == 200
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/info").status_code == 401
        assert c.get("/info", headers={"Authorization": "bearer k1"}).json()["auth"] is True
