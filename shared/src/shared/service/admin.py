"""The dead-letter admin API every service serves under ``/admin`` (token required).

- ``GET /admin/dlq``: dead letters, newest first, with the reason; filters below.
- ``GET /admin/dlq/{id}``: one, with its original value.
- ``POST /admin/dlq/{id}/replay``: re-inject it into its original topic, once. The replay is
  an outbox row written in the same transaction that marks the letter replayed, so it is
  published exactly when the mark commits; a second replay answers 409.
- ``POST /admin/dlq/streams/replay``: the same for every pending letter of one stream
  (aggregate), in sequence order, in one transaction: a stream whose first event was
  dead-lettered, then a later one, is restored in order.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from datetime import datetime
from typing import Annotated, Any, cast
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel

from shared.service.text import Text


def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_admin_token: Annotated[str | None, Header()] = None,
) -> None:
    """``Authorization: Bearer <ADMIN_TOKEN>`` or ``X-Admin-Token: <ADMIN_TOKEN>``."""
    given = x_admin_token
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:]
    if not given:
        raise HTTPException(401, "admin token required (Authorization: Bearer <ADMIN_TOKEN>)")
    expected: str = request.app.state.runtime.settings.admin_token
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "wrong admin token")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class DeadLetterView(BaseModel):
    id: int
    letter_id: UUID
    consumer: str
    topic: str
    partition: int
    offset: int
    key: str | None
    event_type: str | None
    event_id: str | None
    correlation_id: str | None
    source: str | None
    aggregate_type: str | None
    aggregate_id: str | None
    sequence: int | None
    error: str
    attempts: int
    on_topic: str
    created_at: datetime
    replayed_at: datetime | None
    value: str | None = None

    @classmethod
    def of(cls, row: asyncpg.Record, *, with_value: bool = False) -> DeadLetterView:
        headers: dict[str, str] = json.loads(row["headers"])
        value = row["value"]
        event_id = None
        # A malformed value is often why it is here: no event id then.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event_id = str(json.loads(value)["event_id"]) if value else None
        return cls(
            id=row["id"],
            letter_id=row["letter_id"],
            consumer=row["consumer"],
            topic=row["topic"],
            partition=row["partition"],
            offset=row["offset"],
            key=row["message_key"].decode(errors="replace") if row["message_key"] else None,
            event_type=headers.get("event_type"),
            event_id=event_id,
            correlation_id=headers.get("correlation_id"),
            source=row["source"],
            aggregate_type=row["aggregate_type"],
            aggregate_id=row["aggregate_id"],
            sequence=row["sequence"],
            error=row["error"],
            attempts=row["attempts"],
            on_topic=row["on_topic"],
            created_at=row["created_at"],
            replayed_at=row["replayed_at"],
            value=bytes(value).decode(errors="replace") if with_value and value else None,
        )


class DeadLetterPage(BaseModel):
    items: list[DeadLetterView]
    depth: int


class Replayed(BaseModel):
    id: int
    topic: str
    replayed_at: datetime


class StreamReplay(BaseModel):
    """One stream, by its aggregate id; ``source`` and ``aggregate_type`` narrow it down
    when letters of several streams share the id."""

    aggregate_id: str
    source: str | None = None
    aggregate_type: str | None = None


class StreamReplayed(BaseModel):
    items: list[Replayed]  # in the order they were re-injected


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.runtime.http_pool
    return pool


@router.get("/dlq", response_model=DeadLetterPage, summary="Dead letters with their reason")
async def list_dead_letters(
    request: Request,
    pending: Annotated[bool, Query(description="only those not replayed yet")] = False,
    correlation_id: Annotated[Text | None, Query(max_length=200)] = None,
    aggregate_id: Annotated[
        Text | None, Query(max_length=200, description="only this aggregate's")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeadLetterPage:
    pool = _pool(request)
    rows = await pool.fetch(
        """
        SELECT * FROM dead_letters
        WHERE (NOT $1 OR replayed_at IS NULL)
          AND ($2::text IS NULL OR headers ->> 'correlation_id' = $2)
          AND ($3::text IS NULL OR aggregate_id = $3)
        ORDER BY id DESC LIMIT $4
        """,
        pending,
        correlation_id,
        aggregate_id,
        limit,
    )
    depth = await pool.fetchval("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")
    return DeadLetterPage(items=[DeadLetterView.of(r) for r in rows], depth=depth)


@router.get("/dlq/{letter_id}", response_model=DeadLetterView)
async def get_dead_letter(letter_id: int, request: Request) -> DeadLetterView:
    row = await _pool(request).fetchrow("SELECT * FROM dead_letters WHERE id = $1", letter_id)
    if row is None:
        raise HTTPException(404, f"no dead letter {letter_id}")
    return DeadLetterView.of(row, with_value=True)


@router.post("/dlq/streams/replay", status_code=202, response_model=StreamReplayed)
async def replay_stream(body: StreamReplay, request: Request) -> StreamReplayed:
    """Re-inject every pending letter of one stream, in sequence order, each once. The
    consumer applies them in that order (same key, same partition), and events of the
    stream parked behind them follow. 404 when the stream has no pending letter."""
    runtime: Any = request.app.state.runtime
    async with _pool(request).acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """
            UPDATE dead_letters SET replayed_at = now()
            WHERE replayed_at IS NULL AND aggregate_id = $1
              AND ($2::text IS NULL OR source = $2)
              AND ($3::text IS NULL OR aggregate_type = $3)
            RETURNING *
            """,
            body.aggregate_id,
            body.source,
            body.aggregate_type,
        )
        if not rows:
            raise HTTPException(404, f"no pending dead letters of {_stream_name(body)}")
        ordered = sorted(
            rows, key=lambda r: (r["source"], r["aggregate_type"], r["sequence"], r["id"])
        )
        for row in ordered:
            await _reinject(cast(asyncpg.Connection, conn), row)
    runtime.relay.wake()
    return StreamReplayed(
        items=[
            Replayed(id=r["id"], topic=r["topic"], replayed_at=r["replayed_at"]) for r in ordered
        ]
    )


@router.post("/dlq/{letter_id}/replay", status_code=202, response_model=Replayed)
async def replay_dead_letter(letter_id: int, request: Request) -> Replayed:
    """Re-inject the original record (same key, value and headers) into its topic."""
    runtime: Any = request.app.state.runtime
    async with _pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE dead_letters SET replayed_at = now() WHERE id = $1 AND replayed_at IS NULL"
            " RETURNING *",
            letter_id,
        )
        if row is None:
            existing = await conn.fetchrow("SELECT * FROM dead_letters WHERE id = $1", letter_id)
            if existing is None:
                raise HTTPException(404, f"no dead letter {letter_id}")
            raise HTTPException(
                409, f"dead letter {letter_id} was replayed at {existing['replayed_at']}"
            )
        await _reinject(cast(asyncpg.Connection, conn), row)
    runtime.relay.wake()
    return Replayed(id=letter_id, topic=row["topic"], replayed_at=row["replayed_at"])


async def _reinject(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """The letter's original record, as an outbox row: published once the caller commits."""
    headers = {k: v for k, v in json.loads(row["headers"]).items() if not k.startswith("dlq.")}
    headers["replayed_from_dlq"] = str(row["id"])
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, message_key, value, headers)"
        " VALUES ($1, $2, $3, $4, $5)",
        uuid4(),
        row["topic"],
        (row["message_key"] or b"").decode(errors="replace"),
        row["value"] or b"",
        json.dumps(headers),
    )


def _stream_name(body: StreamReplay) -> str:
    return "/".join(part or "*" for part in (body.source, body.aggregate_type, body.aggregate_id))
