"""`yelp-lora serve`: the adapter behind an HTTP API (FastAPI on uvicorn) with dynamic micro-batching
(`batcher`): worker threads own the model (one per ONNX Runtime one-thread session, else one);
requests are gathered into their batches (`max_wait_ms` 0, the default, measured better than 10 ms
at 1, 8 and 32 clients: docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
import secrets
import socket
import sys
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from yelp_lora import __version__
from yelp_lora.config import ServeSettings
from yelp_lora.errors import UserError
from yelp_lora.inference.predictor import Prediction, Predictor
from yelp_lora.serving.batcher import DeadlineExceeded, MicroBatcher, ServiceBusy, ServiceClosed
from yelp_lora.serving.http import header_deadline_protocol
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

log = logging.getLogger("yelp_lora.serving")
STATIC_DIR = importlib.resources.files("yelp_lora.serving") / "static"
PROTECTED_PREFIX = "/v1/"
# Metric labels come from these fixed sets, never from what a client sends.
KNOWN_PATHS = {"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/classify", "/v1/model"}
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
RETRY_AFTER_S = 1
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
        408: "The request's body did not arrive within the read time-out",
        413: "Too many texts, a text over the character limit, or a body over the size limit",
        415: "A body that is not sent as JSON",
        422: "Empty, non-string or missing text",
        500: "An internal error; the body names the request id to find in the log",
        503: "Overloaded (Retry-After), shutting down, or the model worker stopped",
        504: "Not started within the request time-out",
    }.items()
}


def _field(loc: tuple) -> str:
    """('body', 'texts', 2) -> 'texts[2]'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _unreadable(cause: BaseException) -> str:
    """Why a body that is not malformed JSON text still could not be read as JSON."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8: byte {cause.start} cannot be decoded"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    return str(cause)  # e.g. Python's limit on the digits of an integer


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


def metric_path(path: str) -> str:
    """The route a path belongs to, from a fixed set: unknown paths never add a series."""
    if path in KNOWN_PATHS:
        return path
    return "/static/*" if path.startswith("/static/") else "other"


def _host_name(value: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def overloaded(why: str) -> ApiError:
    return ApiError(503, "overloaded", f"{why}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})


def key_problem(scope, key: str | None) -> ApiError | None:
    """Why a request does not carry `key` (as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'), or None."""
    if not key:
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


def error_json(err: ApiError) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=err.code, message=err.message, details=err.details))
    return JSONResponse(body.model_dump(), status_code=err.status, headers=err.headers)


class _Guard:
    """Plain ASGI middleware: a request id and metrics for every request, then the Host allow-list,
    API key, content type, and a body read within its size limit and read time-out.

    Runs before routing and body parsing, so a request without the key is refused (401)
    whatever its body, and an oversized or trickled body is never waited for or read whole.
    """

    def __init__(self, app, settings: ServeSettings, metrics: ServiceMetrics, error_response, batcher: MicroBatcher):
        self.app, self.settings, self.metrics, self.error_response = app, settings, metrics, error_response
        self.batcher = batcher

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = metric_path(scope["path"])
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        started = time.perf_counter()

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            problem = self._check_host(scope) or self._check_key(scope) or self._check_content_type(scope)
            if problem is None and scope["method"] in ("POST", "PUT", "PATCH"):
                problem, receive = await self._read_body(scope, receive, started)
            # After the body is read (a connection closed on unread bytes resets, losing the answer), before it is parsed.
            problem = problem or self._check_queue(scope)
            if problem is not None:
                await self.error_response(problem)(scope, receive, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        except _ClientLeft:
            status["code"] = 499  # nginx's "client closed request": nobody to answer
        finally:
            self.metrics.requests.labels(method, path, str(status["code"])).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)

    def _check_host(self, scope) -> ApiError | None:
        """The Host header must name this service (DNS rebinding: a page elsewhere may resolve its own name to us)."""
        allowed = self.settings.hosts
        if allowed is None:
            return None
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if _host_name(host).lower() in allowed:
            return None
        return ApiError(400, "host_not_allowed", f"Host {host!r} is not served here (allowed: {', '.join(allowed)})")

    def _check_key(self, scope) -> ApiError | None:
        if not scope["path"].startswith(PROTECTED_PREFIX):
            return None
        return key_problem(scope, self.settings.api_key)

    def _check_queue(self, scope) -> ApiError | None:
        """A full queue refuses a classify request before its body is parsed or checked: under a flood the
        refusals stay cheap (the queue's own check in `submit` still holds for requests let through)."""
        if scope["method"] != "POST" or scope["path"] != "/v1/classify" or not self.batcher.full:
            return None
        self.metrics.dropped.labels("queue_full").inc()
        return overloaded(f"{self.batcher.max_queue} texts are already waiting for the model")

    @staticmethod
    def _check_content_type(scope) -> ApiError | None:
        if scope["method"] != "POST" or not scope["path"].startswith(PROTECTED_PREFIX):
            return None
        declared = dict(scope["headers"]).get(b"content-type", b"application/json").decode("latin-1")
        media_type = declared.split(";")[0].strip().lower()
        if media_type == "application/json" or media_type.endswith("+json"):
            return None
        return ApiError(415, "unsupported_media_type", f"send the body as JSON with 'Content-Type: application/json' (got '{declared}')")

    async def _read_body(self, scope, receive, started: float):
        """(problem, replaying receive): the body read up to the size limit and within the read time-out,
        then handed on unchanged."""
        limit = self.settings.max_body_bytes
        too_big = ApiError(413, "body_too_large", f"request body over the limit of {limit:,} bytes")
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return ApiError(400, "bad_content_length", "the Content-Length header is not a number"), receive
            if int(declared) > limit:
                return too_big, receive
        deadline = started + self.settings.read_timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                return ApiError(
                    408, "request_timeout", f"the request body did not arrive within {self.settings.read_timeout:g} s",
                    headers={"Connection": "close"},
                ), receive
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
        predictor, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.queue_limit,
        timeout_s=settings.request_timeout, metrics=metrics,
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
        # FastAPI's /docs and /redoc pages load their scripts from a CDN, which an offline deployment
        # cannot reach; /openapi.json gives the same schema to any OpenAPI tool.
        docs_url=None,
        redoc_url=None,

    )

    def error_response(err: ApiError) -> JSONResponse:
        metrics.errors.labels(err.code).inc()
        return error_json(err)

    app.add_middleware(_Guard, settings=settings, metrics=metrics, error_response=error_response, batcher=batcher)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError):
        return error_response(_validation_error(err))

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, err: Exception):
        # The text stays in the log, with the id the client is given: internals are never sent.
        request_id = request.scope.get("state", {}).get("request_id", "unknown")
        log.error("request %s: %s %s failed", request_id, request.method, request.url.path, exc_info=err)
        return error_response(ApiError(500, "internal_error", f"internal error; request id {request_id} (see the service log)"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 400 and err.__cause__ is not None:  # FastAPI could not read the body as JSON
            return error_response(ApiError(400, "malformed_json", f"the request body is not valid JSON ({_unreadable(err.__cause__)})"))
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {err.detail}"
        return error_response(ApiError(err.status_code, code, message, headers=getattr(err, "headers", None)))

    @app.post("/v1/classify", response_model=Classification, summary="Star rating and probabilities per review")
    async def classify(body: ClassifyRequest, request: Request) -> Classification:
        if (body.texts is None) == (body.text is None):
            raise ApiError(422, "invalid_request", "send either 'texts' (a list of strings) or 'text' (one string)")
        texts = body.texts if body.texts is not None else [body.text]
        try:
            check_texts(texts, max_texts=settings.max_texts, max_chars=settings.max_chars, single=body.text is not None)
            future = batcher.submit(texts)
        except InputError as err:
            raise ApiError(INPUT_ERROR_STATUS.get(err.code, 422), err.code, str(err)) from None
        except ServiceBusy as err:
            raise overloaded(str(err)) from None
        except ServiceClosed as err:
            raise ApiError(503, "unavailable", str(err)) from None
        try:
            predictions: list[Prediction] = await asyncio.wrap_future(future)
        except DeadlineExceeded as err:
            raise ApiError(504, "timeout", f"the service was too busy: {err}") from None
        except Exception as err:  # the model itself failed: logged with the request id, not sent
            request_id = request.scope["state"]["request_id"]
            log.error("request %s: the model failed", request_id, exc_info=err)
            raise ApiError(500, "model_error", f"the model failed on this request; request id {request_id}") from None
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
                # A text's model work: this many windows of max_tokens_per_text at most.
                "max_windows_per_text": predictor.max_windows,
                "max_batch_texts": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                "max_body_bytes": settings.max_body_bytes,
                "max_queued_texts": settings.queue_limit,
                "request_timeout_s": settings.request_timeout,
                "read_timeout_s": settings.read_timeout,
            },
        )

    # HEAD too: uptime monitors and load balancers often probe with it.
    @app.api_route("/healthz", methods=["GET", "HEAD"], summary="The process is alive and its model worker runs",
                   responses={503: {"model": ErrorResponse}})
    async def healthz() -> dict:
        if not batcher.worker_alive:  # an orchestrator restarts the process on this
            raise ApiError(503, "worker_stopped", "the model worker has stopped")
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], summary="The model is loaded and the batch worker runs",
                   responses={503: {"model": ErrorResponse}})
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


def listen(settings: ServeSettings) -> socket.socket:
    """The service's socket, bound before the model loads: an address in use or not this machine's
    fails at once, in one line, instead of after the load in uvicorn's own words."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP named, as getaddrinfo names it when uvicorn binds: asyncio turns Nagle off on accepted
    # connections only then, and with Nagle on each response's body waited 40 ms for the client's ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart need not wait out TIME_WAIT
        sock.bind((settings.host, settings.port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {err.strerror}") from None
    return sock


def announce(command: str, settings: ServeSettings, sock: socket.socket, path: str) -> None:
    """Say where the service answers (uvicorn does not for a socket it is given), and warn when
    anyone who can reach it can use it."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"yelp-lora {command}: listening on http://{host}:{sock.getsockname()[1]}{path}", file=sys.stderr)
    if not settings.loopback and not settings.api_key:
        print(f"yelp-lora {command}: warning: listening on {settings.host} beyond loopback without an API key: "
              "anyone who can reach it can use it (set --api-key-file or $YELP_LORA_API_KEY)", file=sys.stderr)


def serve(predictor: Predictor, settings: ServeSettings, sock: socket.socket, *, graceful_s: float = 30.0) -> None:
    """Run on `sock` (from `listen`) until SIGINT/SIGTERM; uvicorn then stops accepting, answers
    in-flight requests, and exits."""
    import uvicorn

    announce("serve", settings, sock, "/")
    config = uvicorn.Config(
        create_app(predictor, settings), host=settings.host, port=settings.port, log_level="info",
        timeout_graceful_shutdown=graceful_s, limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=math.ceil(settings.keep_alive), http=header_deadline_protocol(settings.read_timeout, settings.http),
    )
    uvicorn.Server(config).run(sockets=[sock])
