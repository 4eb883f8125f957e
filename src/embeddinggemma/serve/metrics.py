"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServeMetrics:
    """Request, queue and inference latencies; batch sizes in texts, tokens and requests; throughput; queue
    depth; errors by status and code."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "embeddinggemma_"
        self.requests = Counter(
            p + "requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(p + "errors", "error responses by status and error code", ["status", "code"], registry=r)
        self.request_seconds = Histogram(
            p + "request_duration_seconds",
            "time from request to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenization_seconds = Histogram(
            p + "tokenization_duration_seconds", "tokenising one request", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            p + "queue_duration_seconds",
            "time from a request's admission to the start of the first batch holding one of its inputs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            p + "inference_duration_seconds", "one engine call (one batch)", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_texts = Histogram(p + "batch_texts", "inputs per batch", buckets=COUNT_BUCKETS, registry=r)
        self.batch_tokens = Histogram(p + "batch_tokens", "tokens per batch", buckets=TOKEN_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            p + "batch_requests", "requests sharing one batch", buckets=COUNT_BUCKETS, registry=r
        )
        self.embedded_tokens = Counter(p + "embedded_tokens", "tokens embedded", registry=r)
        self.embedded_texts = Counter(p + "embedded_texts", "inputs embedded", registry=r)
        self.tokens_per_second = Gauge(p + "tokens_per_second", "throughput of the latest batch", registry=r)
        self.truncated_inputs = Counter(p + "truncated_inputs", "inputs cut to the token limit on request", registry=r)
        self.cancelled_requests = Counter(
            p + "cancelled_requests", "requests dropped because their client disconnected", registry=r
        )
        self.in_progress = Gauge(p + "requests_in_progress", "requests holding a slot", registry=r)
        self.queue_requests = Gauge(p + "queue_requests", "requests with inputs waiting for the model", registry=r)
        self.queue_texts = Gauge(p + "queue_texts", "inputs waiting for the model", registry=r)
        self.queue_tokens = Gauge(p + "queue_tokens", "tokens waiting for the model", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
