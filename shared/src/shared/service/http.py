"""The HTTP shell shared by every service: correlation ids, body limits, JSON errors,
health, readiness, metrics and the dead-letter admin API; services add their own routers."""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.observability.correlation import correlated, new_id
from shared.observability.tracing import setup_tracing
from shared.persistence.db import LOST_RACE_ERRORS, TRANSIENT_DATABASE_ERRORS
from shared.service.admin import router as admin_router
from shared.service.runtime import Runtime, ServiceDefinition
from shared.writing.aggregate import DomainError, NotFoundError
from shared.writing.uow import UnitOfWork

log = logging.getLogger(__name__)

CORRELATION_HEADER = "x-correlation-id"
_VALID_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

U = TypeVar("U", bound=UnitOfWork)
T = TypeVar("T")


class ErrorCode(enum.StrEnum):
    """The ``error`` of every error answer, with its HTTP status: what went wrong, for a
    program to act on (the ``message`` is for people). No answer carries any other code;
    docs/api.md lists each one, and a unit test fails when one is missing there."""

    status: int

    def __new__(cls, code: str, status: int) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        return member

    BAD_REQUEST = "bad_request", 400
    UNAUTHORIZED = "unauthorized", 401
    FORBIDDEN = "forbidden", 403
    NOT_FOUND = "not_found", 404
    METHOD_NOT_ALLOWED = "method_not_allowed", 405
    CONFLICT = "conflict", 409  # the state of what it names refuses the request
    IDEMPOTENCY_KEY_CONFLICT = "idempotency_key_conflict", 409
    PAYLOAD_TOO_LARGE = "payload_too_large", 413
    VALIDATION_ERROR = "validation_error", 422
    STOCK_LIMIT_EXCEEDED = "stock_limit_exceeded", 422
    RATE_LIMITED = "rate_limited", 429
    INTERNAL_ERROR = "internal_error", 500
    BAD_GATEWAY = "bad_gateway", 502
    UNAVAILABLE = "unavailable", 503


# The code of an HTTPException, which carries only a status (FastAPI and Starlette raise them
# for an unknown path or a wrong method; the admin API and the flow view raise them too): the
# first code listed with that status, its most general.
_CODE_OF_STATUS = {code.status: code for code in reversed(ErrorCode)}


def code_of_status(status: int) -> ErrorCode:
    """The code of an error answer that has only a status. A status no code has is still
    named by a code, never a generic ``error``: a client's mistake or ours."""
    if status in _CODE_OF_STATUS:
        return _CODE_OF_STATUS[status]
    return ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL_ERROR


class ApiError(Exception):
    """An error answer a route raises: its code decides the status; ``extra`` joins the body
    and ``headers`` the response."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def error_body(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def error_response(
    code: ErrorCode, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, **extra), status_code=code.status, headers=headers
    )


class CorrelationMiddleware:
    """Takes ``X-Correlation-ID`` (or makes one), sets it for the request's logs, spans and
    events, and echoes it on the response. Each request is the cause of what it writes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(CORRELATION_HEADER.encode(), b"").decode("latin-1")
        correlation_id = given if _VALID_CORRELATION_ID.match(given) else new_id()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((CORRELATION_HEADER.encode(), correlation_id.encode()))
                message["headers"] = headers
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_header(message)

        # The server span was opened by the OpenTelemetry middleware, outside this one.
        trace.get_current_span().set_attribute("correlation_id", correlation_id)
        with correlated(correlation_id, f"request:{new_id()}"):
            try:
                await self.app(scope, receive, send_tracked)
            except Exception:
                # Starlette's own last-resort handler sits outside this middleware and would
                # answer in plain text without the correlation id: answer here instead.
                log.exception("unhandled error")
                if started:
                    raise
                response = error_response(
                    ErrorCode.INTERNAL_ERROR, "unexpected error; the log has the details"
                )
                await response(scope, receive, send_with_header)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before anything reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"request body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            ErrorCode.PAYLOAD_TOO_LARGE, f"request body larger than {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{location or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(definition: ServiceDefinition[Any]) -> FastAPI:
    settings = definition.settings
    provider = setup_tracing(settings)
    runtime = Runtime(definition)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            provider.shutdown()

    app = FastAPI(
        title=definition.title,
        description=definition.description,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            ErrorCode.VALIDATION_ERROR,
            _validation_message(exc),
            details=jsonable_encoder(exc.errors()),
        )

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, headers=exc.headers, **exc.extra)

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(code_of_status(exc.status_code), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        return error_response(
            ErrorCode.UNAVAILABLE,
            f"the database is unavailable ({type(exc).__name__})",
            headers={"Retry-After": "2"},
        )

    for error in TRANSIENT_DATABASE_ERRORS:
        app.add_exception_handler(error, on_database_unavailable)

    async def on_lost_race(_: Request, exc: Exception) -> JSONResponse:
        # A deadlock's or serialization conflict's victim: rolled back, nothing changed.
        return error_response(
            ErrorCode.UNAVAILABLE,
            f"the transaction lost a race with a concurrent one and changed nothing"
            f" ({type(exc).__name__}); send it again",
            headers={"Retry-After": "1"},
        )

    for error in LOST_RACE_ERRORS:
        app.add_exception_handler(error, on_lost_race)

    @app.exception_handler(DomainError)
    async def on_domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(ErrorCode.CONFLICT, str(exc))

    @app.exception_handler(NotFoundError)
    async def on_not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(ErrorCode.NOT_FOUND, str(exc))

    @app.get("/health", tags=["operations"], summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/ready", tags=["operations"], summary="Its database and Kafka are reachable")
    async def ready() -> JSONResponse:
        checks = await runtime.ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in definition.api_routers:
        app.include_router(router)
    app.include_router(admin_router)

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="health,ready,metrics",
        exclude_spans=["receive", "send"],  # two inner spans per request that say nothing
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CorrelationMiddleware)
    return app


async def unit_of_work(request: Request) -> AsyncIterator[Any]:
    """FastAPI dependency: a unit of work for the request, rolled back unless committed."""
    async with request.app.state.runtime.new_http_uow() as uow:
        yield uow


async def with_idempotency_key(
    new_uow: Callable[[], U],
    write: Callable[[U, bool], Awaitable[T]],
    *,
    lost_race: type[Exception],
    conflict: type[Exception],
) -> T:
    """Run ``write(uow, look_first)`` (a command that honours an ``Idempotency-Key``) in a
    unit of work of its own, and answer for the key.

    The first attempt passes ``look_first=False``: a command may then skip reading the key's
    record and let the key's unique index decide, since most keys are new (one statement
    less per request). A request whose key is taken, a client's retry or one that raced
    past another's check, finds out when it inserts the key's record: that raises
    ``lost_race``, and it runs once more, in a new unit of work, with ``look_first=True``,
    where it finds the record and answers as a retry. ``conflict`` (the key was used with
    another body) answers 409 ``idempotency_key_conflict``."""
    try:
        try:
            async with new_uow() as uow:
                return await write(uow, False)
        except lost_race:
            async with new_uow() as uow:
                return await write(uow, True)
    except conflict as exc:
        raise ApiError(ErrorCode.IDEMPOTENCY_KEY_CONFLICT, str(exc)) from exc
