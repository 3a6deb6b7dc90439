"""`yelp-lora serve`: the adapter behind an HTTP API (FastAPI on uvicorn) with dynamic micro-batching
(`batcher`): one worker thread owns the model; requests are gathered into its batches
(`max_wait_ms` 0, the default, measured better than 10 ms at 1, 8 and 32 clients: docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import secrets
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from yelp_lora import __version__
from yelp_lora.config import ServeSettings
from yelp_lora.inference.predictor import Prediction, Predictor
from yelp_lora.serving.batcher import MicroBatcher, ServiceClosed
from yelp_lora.serving.schemas import (
    Classification,
    ClassifyRequest,
    ErrorDetail,
    ErrorResponse,
    InputError,
    ModelResponse,
    check_texts,
    classification,
)
from yelp_lora.serving.telemetry import ServiceMetrics

STATIC_DIR = importlib.resources.files("yelp_lora.serving") / "static"
PROTECTED_PREFIX = "/v1/"
KNOWN_PATHS = {"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/v1/classify", "/v1/model"}
# Status for each InputError code: limits are 413 (too large), content problems 422.
INPUT_ERROR_STATUS = {"too_many_texts": 413, "text_too_long": 413}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details or [], headers


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed JSON",
        401: "Missing or wrong API key",
        413: "Too many texts, a text over the character limit, or a body over the size limit",
        415: "A body that is not sent as JSON",
        422: "Empty, non-string or missing text",
        503: "Shutting down or not ready",
    }.items()
}


def _field(loc: tuple) -> str:
    """('body', 'texts', 2) -> 'texts[2]'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _validation_error(err: RequestValidationError) -> ApiError:
    errors = err.errors()
    invalid_json = [e for e in errors if e.get("type") == "json_invalid"]
    if invalid_json:
        ctx = invalid_json[0].get("ctx", {})
        return ApiError(400, "malformed_json", f"the request body is not valid JSON ({ctx.get('error', 'parse error')})")
    details = [{"field": _field(tuple(e["loc"])), "problem": e["msg"]} for e in errors]
    first = errors[0]
    if first.get("type") == "missing" and tuple(first["loc"]) == ("body",):
        message = 'no request body: send JSON such as {"texts": ["..."]}'
    elif first.get("type") == "model_attributes_type" or (first.get("type") == "dict_type"):
        message = 'the body must be a JSON object such as {"texts": ["..."]}'
    elif first.get("type") == "extra_forbidden":
        message = f"unknown field '{_field(tuple(first['loc']))}': send 'texts' (a list) or 'text' (a string)"
    else:
        message = f"{_field(tuple(first['loc']))}: {first['msg']}"
    return ApiError(422, "invalid_request", message, details)


# ------------------------------------------------------------------ the app


class _ClientLeft(Exception):
    pass


class _Guard:
    """Plain ASGI middleware: metrics for every request, then API key and body size checks.

    Runs before routing and body parsing, so a request without the key is refused (401)
    whatever its body, and an oversized body is never read whole.
    """

    def __init__(self, app, settings: ServeSettings, metrics: ServiceMetrics, error_response):
        self.app, self.settings, self.metrics, self.error_response = app, settings, metrics, error_response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS or scope["path"].startswith("/static/") else "other"
        method = scope["method"]
        status = {"code": 500}
        started = time.perf_counter()

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            problem = self._check(scope) or self._check_content_type(scope)
            if problem is None and method in ("POST", "PUT", "PATCH"):
                problem, receive = await self._read_body(scope, receive)
            if problem is not None:
                await self.error_response(problem)(scope, receive, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        except _ClientLeft:
            status["code"] = 499  # nginx's "client closed request": nobody to answer
        finally:
            self.metrics.requests.labels(method, path, str(status["code"])).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)

    def _check(self, scope) -> ApiError | None:
        key = self.settings.api_key
        if not key or not scope["path"].startswith(PROTECTED_PREFIX):
            return None
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None:
            return ApiError(
                401, "unauthorized", "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(given.encode(), key.encode()):
            return ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})
        return None

    @staticmethod
    def _check_content_type(scope) -> ApiError | None:
        if scope["method"] != "POST" or not scope["path"].startswith(PROTECTED_PREFIX):
            return None
        declared = dict(scope["headers"]).get(b"content-type", b"application/json").decode("latin-1")
        media_type = declared.split(";")[0].strip().lower()
        if media_type == "application/json" or media_type.endswith("+json"):
            return None
        return ApiError(415, "unsupported_media_type", f"send the body as JSON with 'Content-Type: application/json' (got '{declared}')")

    async def _read_body(self, scope, receive):
        """(problem, replaying receive): the body read up to the limit, then handed on unchanged."""
        limit = self.settings.max_body_bytes
        too_big = ApiError(413, "body_too_large", f"request body over the limit of {limit:,} bytes")
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return ApiError(400, "bad_content_length", "the Content-Length header is not a number"), receive
            if int(declared) > limit:
                return too_big, receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return too_big, receive
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The service around a loaded predictor; the micro-batcher runs from startup to shutdown."""
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    batcher = MicroBatcher(
        predictor, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000, metrics=metrics
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        # uvicorn calls this after in-flight requests have been answered; finish any stragglers.
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="yelp-lora sentiment service",
        version=__version__,
        description="Star rating (1-5) and five sentiment probabilities for review texts, from a LoRA-tuned BERT. "
        f"Limits: up to {settings.max_texts} texts per request, {settings.max_chars:,} characters per text.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        strict_content_type=False,  # a body sent without any Content-Type is read as JSON too

    )

    def error_response(err: ApiError) -> JSONResponse:
        metrics.errors.labels(err.code).inc()
        body = ErrorResponse(error=ErrorDetail(code=err.code, message=err.message, details=err.details))
        return JSONResponse(body.model_dump(), status_code=err.status, headers=err.headers)

    app.add_middleware(_Guard, settings=settings, metrics=metrics, error_response=error_response)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError):
        return error_response(_validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {err.detail}"
        return error_response(ApiError(err.status_code, code, message, headers=getattr(err, "headers", None)))

    @app.post("/v1/classify", response_model=Classification, summary="Star rating and probabilities per review")
    async def classify(body: ClassifyRequest) -> Classification:
        if (body.texts is None) == (body.text is None):
            raise ApiError(422, "invalid_request", "send either 'texts' (a list of strings) or 'text' (one string)")
        texts = body.texts if body.texts is not None else [body.text]
        try:
            check_texts(texts, max_texts=settings.max_texts, max_chars=settings.max_chars)
            future = batcher.submit(texts)
        except InputError as err:
            raise ApiError(INPUT_ERROR_STATUS.get(err.code, 422), err.code, str(err)) from None
        except ServiceClosed as err:
            raise ApiError(503, "shutting_down", str(err)) from None
        try:
            predictions: list[Prediction] = await asyncio.wrap_future(future)
        except Exception as err:  # the model itself failed: say so, in the service's error format
            raise ApiError(500, "model_error", f"the model failed on this request: {type(err).__name__}: {err}") from None
        return classification(predictor.info, predictions)

    @app.get("/v1/model", response_model=ModelResponse, summary="Which model answers: manifest, metrics, limits")
    async def model_info() -> ModelResponse:
        return ModelResponse(
            model=predictor.info,
            manifest=predictor.manifest,
            adapter_meta=predictor.meta,
            limits={
                "max_texts_per_request": settings.max_texts,
                "max_chars_per_text": settings.max_chars,
                "max_tokens_per_text": predictor.max_length,
                "max_batch_texts": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                "max_body_bytes": settings.max_body_bytes,
            },
        )

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and the batch worker runs", responses={503: {"model": ErrorResponse}})
    async def readyz():
        if not batcher.running:
            raise ApiError(503, "not_ready", "the model worker is not running (starting or shutting down)")
        return {"status": "ready", "model": predictor.info}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.state.batcher = batcher
    app.state.metrics = metrics
    return app


def serve(predictor: Predictor, *, host: str, port: int, settings: ServeSettings, graceful_s: float = 30.0) -> None:
    """Run until SIGINT/SIGTERM; uvicorn then stops accepting, answers in-flight requests, and exits."""
    import uvicorn

    uvicorn.run(
        create_app(predictor, settings), host=host, port=port, log_level="info",
        timeout_graceful_shutdown=graceful_s,
    )

