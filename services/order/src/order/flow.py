"""The event-flow view: given a correlation id (or an order id), the chain of events across
the three services on a timeline, built from the spans in Jaeger.

Every span carries ``correlation_id``, so Jaeger's trace search by that tag finds the whole
flow, including a flow that a poison message broke into several traces. Spans of interest:
the HTTP request, each relay ``publish <topic>``, each consumer ``process <EventType>`` (with
its outcome: applied, duplicate, parked, dead_lettered) and each shipment dispatch. An event a
service has no handler for is not traced (:func:`shared.consuming.middleware.traced`), so not shown.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any
from uuid import UUID

import httpx
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from shared.service.text import Text

SERVICES = ("order-service", "inventory-service", "shipping-service")
STEP_PREFIXES = ("process ", "publish ", "dispatch ", "POST ", "PUT ")
ASGI_INTERNAL = (" http receive", " http send")  # the ASGI instrumentation's inner spans

router = APIRouter(tags=["event flow"])


class Step(BaseModel):
    at: datetime
    offset_ms: float
    duration_ms: float
    service: str
    operation: str
    event_type: str | None
    outcome: str | None
    error: str | None
    trace_id: str
    trace_url: str


class Flow(BaseModel):
    correlation_id: str
    order_id: UUID | None
    order_status: str | None
    steps: list[Step]
    trace_ids: list[str]
    stopped_at: Step | None
    dead_lettered: list[Step]


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


async def fetch_traces(jaeger: str, correlation_id: str) -> list[dict[str, Any]]:
    """Every trace with a span tagged with this correlation id, from any service."""
    params = {
        "tags": json.dumps({"correlation_id": correlation_id}),
        "limit": "50",
        "lookback": "2d",
    }
    async with httpx.AsyncClient(base_url=jaeger, timeout=5) as client:
        responses = await asyncio.gather(
            *(client.get("/api/traces", params={**params, "service": s}) for s in SERVICES)
        )
    traces: dict[str, dict[str, Any]] = {}
    for response in responses:
        if response.status_code == 200:
            for trace in response.json().get("data") or []:
                traces[trace["traceID"]] = trace
    return list(traces.values())


def steps_of(traces: list[dict[str, Any]], ui: str) -> list[Step]:
    raw = []
    for trace in traces:
        processes = trace.get("processes", {})
        for span in trace.get("spans", []):
            operation: str = span["operationName"]
            if not operation.startswith(STEP_PREFIXES) or operation.endswith(ASGI_INTERNAL):
                continue
            tags = _tags(span)
            raw.append((span, processes.get(span["processID"], {}).get("serviceName", "?"), tags))
    if not raw:
        return []
    first = min(span["startTime"] for span, _, _ in raw)
    steps = []
    for span, service, tags in sorted(raw, key=lambda r: r[0]["startTime"]):
        steps.append(
            Step(
                at=datetime.fromtimestamp(span["startTime"] / 1e6, UTC),
                offset_ms=round((span["startTime"] - first) / 1000, 1),
                duration_ms=round(span["duration"] / 1000, 1),
                service=service,
                operation=span["operationName"],
                event_type=tags.get("event_type") or None,
                outcome=tags.get("outcome"),
                error=tags.get("dead_letter.error"),
                trace_id=span["traceID"],
                trace_url=f"{ui.rstrip('/')}/trace/{span['traceID']}",
            )
        )
    return steps


def _as_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None  # a correlation id, then


@router.get("/flow/api", response_model=Flow, summary="The chain of events of one flow")
async def flow_api(
    request: Request,
    q: Annotated[Text, Query(min_length=1, max_length=128, description="correlation or order id")],
) -> Flow:
    settings = request.app.state.runtime.settings
    order_id = _as_uuid(q)
    order = None
    if order_id is not None:
        # Read, then give the connection back before the (slow) calls to Jaeger.
        async with request.app.state.runtime.new_http_uow() as uow:
            order = await uow.orders.read(order_id)
    correlation_id = order.correlation_id if order is not None else q
    try:
        traces = await fetch_traces(settings.jaeger_query_url, correlation_id)
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"Jaeger query API unreachable: {exc}") from exc
    steps = steps_of(traces, settings.jaeger_ui_url)
    return Flow(
        correlation_id=correlation_id,
        order_id=order.order_id if order else None,
        order_status=order.status.value if order else None,
        steps=steps,
        trace_ids=sorted({s.trace_id for s in steps}),
        stopped_at=steps[-1] if steps else None,
        dead_lettered=[s for s in steps if s.outcome == "dead_lettered"],
    )


@router.get("/flow", response_class=HTMLResponse, include_in_schema=False)
async def flow_page() -> HTMLResponse:
    page = resources.files("order").joinpath("flow.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
