"""The ASGI app: OpenAI `/v1/embeddings`, TEI `/embed`, `/health`, `/info`, `/metrics`, `/v1/models`.

`create_app(embedder, settings, extra_routers=[...])` builds it; other routers (a search endpoint, a
page) are included as they are and reach the shared queue through `request.app.state.service`
(an `EmbeddingService`: `await service.embed(Inputs(texts=[...]), task="query")`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from embeddinggemma.embedder import Embedder
from embeddinggemma.serve.errors import ClientDisconnectedError, RequestError, error_response
from embeddinggemma.serve.metrics import ServeMetrics
from embeddinggemma.serve.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestMetricsMiddleware
from embeddinggemma.serve.schemas import EmbeddingsRequest, EmbedRequest, Inputs, to_inputs
from embeddinggemma.serve.service import EmbeddingService, EmbedResult, FieldNames
from embeddinggemma.serve.settings import ServeSettings

if TYPE_CHECKING:
    from embeddinggemma.index.searcher import Searcher

logger = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)
OPENAI_NAMES = FieldNames()
TEI_NAMES = FieldNames(inputs="inputs", task="prompt_name")
CLIENT_CLOSED = 499  # nginx's "client closed request": counted in metrics, never seen by the client
RENDER_IN_THREAD = 32  # inputs above which JSON/base64 rendering leaves the event loop

router = APIRouter()


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The body schema for /docs: the routes parse bodies themselves (size limit, 400 vs 422, disconnects)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def parse_body(request: Request, model: type[Model]) -> Model:
    """The JSON body as `model`: 400 for bytes that are not a UTF-8 JSON object, 422 naming a bad field."""
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            400, f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON", code="invalid_utf8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise RequestError(400, 'the body must be a JSON object, e.g. {"input": "some text"}', code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, model) from None


def _validation_error(exc: ValidationError, model: type[BaseModel]) -> RequestError:
    # a misspelt field also shows as a missing one: name the unknown field first
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    field = ".".join(str(part) for part in error["loc"]) or "body"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown field {field!r}; the fields are {', '.join(model.model_fields)}"
    elif error["type"] == "missing":
        message = f"{field} is required"
    elif not message.startswith(field):
        message = f"{field}: {message}"
    more = len(errors) - 1
    return RequestError(422, message + (f" (and {more} more problems)" if more else ""), param=field)


def _timing_headers(result: EmbedResult, started: float) -> dict[str, str]:
    """TEI's timing headers (milliseconds), the truncation count and any warning."""
    headers = {
        "X-Total-Time": f"{(time.perf_counter() - started) * 1000:.1f}",
        "X-Tokenization-Time": f"{result.tokenization_seconds * 1000:.1f}",
        "X-Queue-Time": f"{result.queue_seconds * 1000:.1f}",
        "X-Inference-Time": f"{result.inference_seconds * 1000:.1f}",
    }
    if result.truncated is not None:
        headers["X-Truncated-Inputs"] = str(result.truncated)
    if result.warning:
        headers["X-Embeddinggemma-Warning"] = result.warning
    return headers


def _service(request: Request) -> EmbeddingService:
    return request.app.state.service


@router.post("/v1/embeddings", openapi_extra=_openapi_body(EmbeddingsRequest))
async def openai_embeddings(request: Request) -> Response:
    """OpenAI-compatible embeddings."""
    started = time.perf_counter()
    service = _service(request)
    with service.slot():
        body = await parse_body(request, EmbeddingsRequest)
        served = service.settings.model_name
        if body.model is not None and body.model != served:
            raise RequestError(
                404,
                f"model {body.model!r} is not served here; this server serves {served!r}",
                param="model",
                code="model_not_found",
            )
        result = await service.embed(
            to_inputs(body.input),
            task=body.task,
            titles=body.titles,
            dimensions=body.dimensions,
            truncate=body.truncate,
            request=request,
            names=OPENAI_NAMES,
        )
        content = await _render(result.embeddings, _openai_payload, body.encoding_format, served, result.prompt_tokens)
    return Response(content, media_type="application/json", headers=_timing_headers(result, started))


def _openai_payload(embeddings: np.ndarray, encoding_format: str, model: str, tokens: int) -> bytes:
    if encoding_format == "base64":  # little-endian float32 bytes, as OpenAI's client decodes them
        little = embeddings.astype("<f4", copy=False)
        vectors: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        vectors = embeddings.tolist()
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


async def _render(embeddings: np.ndarray, render, *args: Any) -> bytes:
    if len(embeddings) > RENDER_IN_THREAD:
        return await run_in_threadpool(render, embeddings, *args)
    return render(embeddings, *args)


@router.post("/embed", openapi_extra=_openapi_body(EmbedRequest))
async def tei_embed(request: Request) -> Response:
    """Text-embeddings-inference-compatible embeddings: a JSON array of vectors."""
    started = time.perf_counter()
    service = _service(request)
    with service.slot():
        body = await parse_body(request, EmbedRequest)
        result = await service.embed(
            to_inputs(body.inputs),
            task=body.prompt_name,
            titles=body.titles,
            dimensions=body.dimensions,
            normalize=body.normalize,
            truncate=body.truncate,
            request=request,
            names=TEI_NAMES,
        )
        content = await _render(result.embeddings, lambda e: json.dumps(e.tolist(), separators=(",", ":")).encode())
    return Response(content, media_type="application/json", headers=_timing_headers(result, started))


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the model worker runs; open without an API key."""
    if _service(request).batcher.alive:
        return JSONResponse({"status": "ok"})
    return error_response(503, "the model worker is not running", code="unavailable")


@router.get("/info")
async def info(request: Request) -> JSONResponse:
    """Model, dims, limits, batching, prompts, and the default prompt requests without a task get."""
    return JSONResponse(request.app.state.info)


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    name = _service(request).settings.model_name
    created = request.app.state.created
    return JSONResponse(
        {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "embeddinggemma"}]}
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry: ServeMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)


def server_info(service: EmbeddingService) -> dict[str, Any]:
    from embeddinggemma import __version__

    embedder, settings = service.embedder, service.settings
    sizes = list(embedder.matryoshka_dims)
    return {
        "model_id": settings.model_name,
        "model_path": str(embedder.source) if embedder.source else None,
        "model_dtype": str(embedder.dtype).removeprefix("torch."),
        "device": str(embedder.device),
        "engine": type(embedder.runner).__name__,
        "embedding_dim": embedder.embedding_dim,
        "matryoshka_dims": sizes,
        "dimensions_policy": (
            f"any size from 1 to {embedder.embedding_dim}; sizes other than {sizes} get a warning header"
            if settings.allow_untrained_dimensions
            else f"one of {sizes} (the first dimensions, re-normalised); other sizes are refused (422)"
        ),
        "max_input_length": embedder.max_seq_length,
        "auto_truncate": settings.auto_truncate,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_client_batch_size": settings.max_client_batch_size,
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_queue_tokens": settings.max_queue_tokens,
        "payload_limit": settings.payload_limit,
        "default_task": settings.default_task,
        "default_prompt": service.default_prompt,
        "prompts": dict(embedder.prompts),
        "titles": "a `titles` list selects the document prompt 'title: {title} | text: ' ('title: none' for null)",
        "token_ids": "used as they are: EmbeddingGemma ids of prompt + text, from BOS to EOS; no prompt is added",
        "auth": bool(settings.api_keys),
        "version": __version__,
    }


def index_router(service: EmbeddingService, searcher: Searcher) -> APIRouter:
    """The index's search page (`GET /`) and `POST /search`, its queries embedded through the shared queue."""
    from embeddinggemma.index.web import create_router

    async def embed_query(query: str, task: str) -> np.ndarray:
        with service.slot():  # a search holds a request slot like any embedding request (429 when full)
            try:
                # cut like the offline Searcher's encode_query (which truncates with a warning); full width,
                # normalised: the Searcher cuts it to the index's dim and normalises again
                result = await service.embed(Inputs(texts=[query]), task=task, truncate=True)
            except RequestError as exc:
                if exc.status != 422:  # 429 and 500 keep their status; an unknown task is the index's 400
                    raise
                raise ValueError(exc.message) from None
        return result.embeddings[0]

    return create_router(searcher, embed_query=embed_query)


def create_app(
    embedder: Embedder,
    settings: ServeSettings | None = None,
    *,
    extra_routers: Iterable[APIRouter] = (),
    searcher: Searcher | None = None,
) -> FastAPI:
    """The server app around a loaded `Embedder`. `extra_routers` are included after ours, behind the same
    API keys, body limit and metrics; their routes find the shared `EmbeddingService` at
    `request.app.state.service`. `searcher` (an open index, searched with this `embedder`) mounts the
    index's `POST /search` and search page at `/`."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    service = EmbeddingService(embedder, settings, metrics)
    if searcher is not None:
        extra_routers = [*extra_routers, index_router(service, searcher)]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    from embeddinggemma import __version__

    app = FastAPI(title="EmbeddingGemma server", version=__version__, lifespan=lifespan)
    app.state.service = service
    app.state.metrics = metrics
    app.state.info = server_info(service)
    app.state.created = int(time.time())
    app.include_router(router)
    for extra in extra_routers:
        app.include_router(extra)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> Response:
        metrics.errors.labels(str(exc.status), exc.code).inc()
        return exc.response()

    @app.exception_handler(ClientDisconnect)  # gone while sending its body
    @app.exception_handler(ClientDisconnectedError)  # gone while waiting for its embeddings
    async def client_disconnected(request: Request, exc: Exception) -> Response:
        metrics.errors.labels(str(CLIENT_CLOSED), "client_disconnected").inc()
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        metrics.errors.labels(str(exc.status_code), code).inc()
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, message, code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.errors.labels("500", "internal_error").inc()
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")

    # the last added runs first: metrics see every answer, keys are checked before any body is read
    app.add_middleware(BodyLimitMiddleware, limit=settings.payload_limit, metrics=metrics)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, metrics=metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
