"""Dynamic batching: the round-robin scheduler on its own, then 64 concurrent clients on a live server whose
every response must equal the offline embeddings of the same inputs, in order."""

from __future__ import annotations

import asyncio
import random
import time
import warnings

import httpx2 as httpx
import numpy as np
import pytest
import torch

from embeddinggemma.serve.batching import Batcher, InferenceError, QueueFullError


def _ids(length: int, first: int = 5) -> list[int]:
    return [2, *[first] * (length - 2), 1]


def _lengths(batch) -> list[tuple[int, int]]:
    return [(id(job) % 10_000, len(job.token_ids[i])) for job, i in batch]


def test_round_robin_lets_short_requests_into_the_next_batch():
    async def scenario():
        batcher = Batcher(lambda ids: None, max_batch_tokens=40, max_batch_texts=100, max_queue_tokens=10_000)
        big = batcher.submit([_ids(10)] * 100)
        small = [batcher.submit([_ids(5)]) for _ in range(3)]
        first = batcher.take_batch()
        # one input of each request per round: the three short ones ride in the first batch
        assert [job for job, _ in first] == [big, *small, big]
        assert [i for job, i in first if job is big] == [0, 1]
        assert batcher.queued_texts == 98 and batcher.queued_tokens == 980
        rest = batcher.take_batch()
        assert all(job is big for job, _ in rest) and [i for _, i in rest] == [2, 3, 4, 5]

    asyncio.run(scenario())


def test_an_input_that_does_not_fit_is_passed_over_then_goes_first():
    async def scenario():
        batcher = Batcher(lambda ids: None, max_batch_tokens=100, max_batch_texts=100, max_queue_tokens=10_000)
        a, b, c = batcher.submit([_ids(60)]), batcher.submit([_ids(60)]), batcher.submit([_ids(10)])
        assert [job for job, _ in batcher.take_batch()] == [a, c]
        assert [job for job, _ in batcher.take_batch()] == [b]
        huge = batcher.submit([_ids(500), _ids(3)])  # longer than the budget: a batch of its own
        assert [len(huge.token_ids[i]) for _, i in batcher.take_batch()] == [500]
        assert batcher.take_batch() == [(huge, 1)] and batcher.take_batch() == []

    asyncio.run(scenario())


def test_text_cap_queue_full_and_cancel():
    async def scenario():
        batcher = Batcher(lambda ids: None, max_batch_tokens=1000, max_batch_texts=2, max_queue_tokens=50)
        job = batcher.submit([_ids(10)] * 4)
        with pytest.raises(QueueFullError) as full:
            batcher.submit([_ids(11)])
        assert full.value.retry_after >= 1 and "40 of 50 tokens" in str(full.value)
        assert len(batcher.take_batch()) == 2
        batcher.cancel(job)
        assert job.future.cancelled() and batcher.queued_tokens == 0 and batcher.queued_texts == 0
        assert batcher.take_batch() == []
        batcher.submit([_ids(25), _ids(25)])  # the room is back

    asyncio.run(scenario())


def test_worker_scatters_rows_back_to_each_request_in_order():
    def embed(token_ids):  # row = (length, first id): enough to see where every row went
        return torch.tensor([[len(ids), ids[1]] for ids in token_ids], dtype=torch.float32)

    async def scenario():
        batcher = Batcher(embed, max_batch_tokens=20, max_batch_texts=100, max_queue_tokens=10_000)
        batcher.start()
        requests = [[_ids(random.randint(3, 12), first=10 * r + i) for i in range(r + 1)] for r in range(6)]
        jobs = [batcher.submit(ids) for ids in requests]
        results = await asyncio.gather(*(job.future for job in jobs))
        for ids, result in zip(requests, results, strict=True):
            assert result.tolist() == [[len(x), x[1]] for x in ids]
        await batcher.stop()

    random.seed(0)
    asyncio.run(scenario())


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    def embed(token_ids):
        if any(len(ids) == 7 for ids in token_ids):
            raise RuntimeError("out of memory")
        return torch.zeros(len(token_ids), 4)

    async def scenario():
        batcher = Batcher(embed, max_batch_tokens=7, max_batch_texts=100, max_queue_tokens=10_000)
        batcher.start()
        doomed, fine = batcher.submit([_ids(7)]), batcher.submit([_ids(5)])
        with pytest.raises(InferenceError, match="RuntimeError: out of memory"):
            await doomed.future
        assert (await fine.future).shape == (1, 4)
        assert batcher.alive and batcher.queued_tokens == 0
        await batcher.stop()

    asyncio.run(scenario())


def _mixed_requests(seed: int, count: int) -> list[dict]:
    """Mixed lengths, sizes, endpoints, tasks, titles, dims and encodings."""
    rng = random.Random(seed)
    words = ["red", "planet", "mars", "venus", "is", "known", "as", "the", "code", "python", "function", "sort", "key"]
    requests = []
    for _ in range(count):
        texts = [" ".join(rng.choices(words, k=rng.choice([1, 3, 8, 20, 60]))) for _ in range(rng.randint(1, 6))]
        kind = rng.choice(["query", "document", "titles", "sts", "tei"])
        requests.append({"texts": texts, "kind": kind, "dim": rng.choice([None, 40, 16]), "base64": rng.random() < 0.5})
    return requests


def _offline(embedder, request: dict) -> np.ndarray:
    texts, kind, dim = request["texts"], request["kind"], request["dim"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dim 16 is not a trained size
        if kind == "titles":
            return embedder.encode_document(texts, titles=[f"title {i}" if i % 2 else None for i in range(len(texts))])
        return embedder.encode(texts, task="query" if kind == "tei" else kind, dim=dim)


async def _send(client: httpx.AsyncClient, request: dict) -> np.ndarray:
    texts, kind = request["texts"], request["kind"]
    if kind == "tei":
        response = await client.post("/embed", json={"inputs": texts, "dimensions": request["dim"]})
        assert response.status_code == 200, response.text
        return np.array(response.json(), dtype=np.float32)
    body: dict = {"input": texts, "model": "tiny", "encoding_format": "base64" if request["base64"] else "float"}
    if kind == "titles":
        body["titles"] = [f"title {i}" if i % 2 else None for i in range(len(texts))]
    else:
        body.update(task=kind, dimensions=request["dim"])
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(texts)))
    if request["base64"]:
        import base64

        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def test_64_concurrent_clients_get_exactly_their_offline_embeddings(tiny_embedder, live_server):
    clients, rounds = 64, 3
    plans = [_mixed_requests(seed, rounds) for seed in range(clients)]

    async def client_loop(url: str, plan: list[dict]) -> list[np.ndarray]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return [await _send(client, request) for request in plan]

    async def run_all(url: str):
        return await asyncio.gather(*(client_loop(url, plan) for plan in plans))

    settings = {"max_batch_tokens": 512, "allow_untrained_dimensions": True}
    with live_server(tiny_embedder, **settings) as url:
        results = asyncio.run(run_all(url))
        metrics = httpx.get(url + "/metrics").text
    for plan, got in zip(plans, results, strict=True):
        for request, embeddings in zip(plan, got, strict=True):
            np.testing.assert_allclose(embeddings, _offline(tiny_embedder, request), atol=1e-5)
    # requests were merged: some batches held inputs of more than one request
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if not line.startswith("#")}
    assert values['embeddinggemma_batch_requests_bucket{le="1.0"}'] < values["embeddinggemma_batch_requests_count"]
    assert 'status="5' not in metrics


def test_a_huge_request_does_not_starve_a_short_one(tiny_embedder, live_server):
    big = {"inputs": [f"{'sort the list by key ' * 6}{i}" for i in range(256)]}

    async def scenario(url: str) -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            big_task = asyncio.ensure_future(client.post("/embed", json=big))
            while True:  # wait until the big request is being embedded
                metrics = (await client.get("/metrics")).text
                if "embeddinggemma_queue_texts 0.0" not in metrics:
                    break
                await asyncio.sleep(0.005)
            short = await client.post("/embed", json={"inputs": "red planet"})
            short_done = time.perf_counter()
            assert short.status_code == 200
            response = await big_task
            assert response.status_code == 200 and len(response.json()) == 256
            return short_done, time.perf_counter()

    with live_server(tiny_embedder, max_batch_tokens=64) as url:
        short_done, big_done = asyncio.run(scenario(url))
    assert short_done < big_done
