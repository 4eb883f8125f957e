"""Pure ASGI middleware (no buffering, so disconnects still reach the routes): request metrics, API keys,
and the request body limit."""

from __future__ import annotations

import hmac
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embeddinggemma.serve.errors import RequestError, error_response
from embeddinggemma.serve.metrics import ServeMetrics

OPEN_PATHS = frozenset({"/health"})


class RequestMetricsMiddleware:
    """Counts every answer by endpoint and status and times it; unknown paths share one label."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)


class ApiKeyMiddleware:
    """`Authorization: Bearer KEY` on every path but /health; 401 otherwise."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], metrics: ServeMetrics) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        self.metrics.errors.labels("401", "invalid_api_key").inc()
        response = error_response(
            401,
            "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # compare against every key (constant time per key) so timing does not tell which one nearly matched
        return any([hmac.compare_digest(token, key) for key in self.keys])


class BodyLimitMiddleware:
    """413 for bodies over `limit` bytes: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, limit: int, metrics: ServeMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    def _error(self, size: str) -> RequestError:
        return RequestError(
            413,
            f"the request body is {size} bytes; this server takes at most {self.limit:,} (--payload-limit): "
            "split the request",
            code="body_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            error = self._error(f"{int(declared):,}")
            self.metrics.errors.labels("413", error.code).inc()
            await error.response()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error(f"over {self.limit:,}")  # the app's RequestError handler answers
            return message

        await self.app(scope, limited_receive, send)
