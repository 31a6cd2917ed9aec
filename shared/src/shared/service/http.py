"""The HTTP shell shared by every service: correlation ids, body limits, JSON errors,
health, readiness, metrics and the dead-letter admin API; services add their own routers."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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

log = logging.getLogger(__name__)

CORRELATION_HEADER = "x-correlation-id"
_VALID_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def error_body(error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "message": message, **extra}


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
                response = JSONResponse(
                    error_body("internal_error", "unexpected error; the log has the details"),
                    status_code=500,
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
        response = JSONResponse(
            error_body("payload_too_large", f"request body larger than {self.max_bytes} bytes"),
            status_code=413,
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
        return JSONResponse(
            error_body(
                "validation_error", _validation_message(exc), details=jsonable_encoder(exc.errors())
            ),
            status_code=422,
        )

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(_error_name(exc.status_code), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body("unavailable", f"the database is unavailable ({type(exc).__name__})"),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    for error in TRANSIENT_DATABASE_ERRORS:
        app.add_exception_handler(error, on_database_unavailable)

    async def on_lost_race(_: Request, exc: Exception) -> JSONResponse:
        # A deadlock's or serialization conflict's victim: rolled back, nothing changed.
        return JSONResponse(
            error_body(
                "unavailable",
                f"the transaction lost a race with a concurrent one and changed nothing"
                f" ({type(exc).__name__}); send it again",
            ),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    for error in LOST_RACE_ERRORS:
        app.add_exception_handler(error, on_lost_race)

    @app.exception_handler(DomainError)
    async def on_domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(error_body("conflict", str(exc)), status_code=409)

    @app.exception_handler(NotFoundError)
    async def on_not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(error_body("not_found", str(exc)), status_code=404)

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


def _error_name(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        422: "validation_error",
        429: "rate_limited",
    }.get(status, "error")


async def unit_of_work(request: Request) -> AsyncIterator[Any]:
    """FastAPI dependency: a unit of work for the request, rolled back unless committed."""
    async with request.app.state.runtime.new_http_uow() as uow:
        yield uow
