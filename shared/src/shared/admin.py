"""The dead-letter admin API every service serves under ``/admin`` (token required).

- ``GET /admin/dlq``: dead letters, newest first, with the reason; filters below.
- ``GET /admin/dlq/{id}``: one, with its original value.
- ``POST /admin/dlq/{id}/replay``: re-inject it into its original topic, once. The replay is
  an outbox row written in the same transaction that marks the letter replayed, so it is
  published exactly when the mark commits; a second replay answers 409.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from datetime import datetime
from typing import Annotated, Any
from uuid import uuid4

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel

from shared.text import Text


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
    consumer: str
    topic: str
    partition: int
    offset: int
    key: str | None
    event_type: str | None
    event_id: str | None
    correlation_id: str | None
    error: str
    attempts: int
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
            consumer=row["consumer"],
            topic=row["topic"],
            partition=row["partition"],
            offset=row["offset"],
            key=row["message_key"].decode(errors="replace") if row["message_key"] else None,
            event_type=headers.get("event_type"),
            event_id=event_id,
            correlation_id=headers.get("correlation_id"),
            error=row["error"],
            attempts=row["attempts"],
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


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.runtime.http_pool
    return pool


@router.get("/dlq", response_model=DeadLetterPage, summary="Dead letters with their reason")
async def list_dead_letters(
    request: Request,
    pending: Annotated[bool, Query(description="only those not replayed yet")] = False,
    correlation_id: Annotated[Text | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeadLetterPage:
    pool = _pool(request)
    rows = await pool.fetch(
        """
        SELECT * FROM dead_letters
        WHERE (NOT $1 OR replayed_at IS NULL)
          AND ($2::text IS NULL OR headers ->> 'correlation_id' = $2)
        ORDER BY id DESC LIMIT $3
        """,
        pending,
        correlation_id,
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
        headers = {k: v for k, v in json.loads(row["headers"]).items() if not k.startswith("dlq.")}
        headers["replayed_from_dlq"] = str(letter_id)
        await conn.execute(
            "INSERT INTO outbox (event_id, topic, message_key, value, headers)"
            " VALUES ($1, $2, $3, $4, $5)",
            uuid4(),
            row["topic"],
            (row["message_key"] or b"").decode(errors="replace"),
            row["value"] or b"",
            json.dumps(headers),
        )
    runtime.relay.wake()
    return Replayed(id=letter_id, topic=row["topic"], replayed_at=row["replayed_at"])
