"""The open-model load: orders sent at their scheduled moments, whatever the latency.

A closed loop (send, wait for the answer, send the next) slows down with the system it
measures and hides its queues (coordinated omission). Here the moments are fixed in
advance from a seeded Poisson process; each request is sent at its moment on its own task,
and its latency is counted from the moment it was due, so a stall shows in full.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID, uuid4

from load.bench.httpclient import Client, HttpError

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


def schedule(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Send moments (seconds from the start) of a Poisson process of ``rate`` per second."""
    moments, moment = [], rng.expovariate(rate)
    while moment < seconds:
        moments.append(moment)
        moment += rng.expovariate(rate)
    return moments


def order_body(skus: list[str], rng: random.Random) -> bytes:
    """One order of one line, a seeded pick over the catalog."""
    line = {"sku": rng.choice(skus), "quantity": rng.randint(1, 3)}
    body = {"customer_id": f"bench-{rng.randrange(1000)}", "items": [line]}
    return json.dumps(body | {"shipping_address": ADDRESS}).encode()


@dataclass(frozen=True)
class Sent:
    """One ``POST /orders``: when it was due, how long until its answer, and the outcome."""

    due: float
    latency: float
    status: int  # 0: no answer (connection error)
    order_id: UUID | None


async def offer(
    clients: Sequence[Client], rate: float, seconds: float, skus: list[str], rng: random.Random
) -> list[Sent]:
    """Send orders at ``rate`` per second for ``seconds``, taking turns over ``clients`` (one
    per order service instance); every answer, in send order."""
    moments = schedule(rate, seconds, rng)
    bodies = [order_body(skus, rng) for _ in moments]
    start = time.perf_counter()

    async def send(due: float, body: bytes, client: Client) -> Sent:
        headers = {"Idempotency-Key": str(uuid4()), "X-Correlation-ID": f"bench-{uuid4()}"}
        try:
            response = await client.request("POST", "/orders", body, headers)
        except HttpError:
            return Sent(due, time.perf_counter() - start - due, 0, None)
        latency = time.perf_counter() - start - due
        order_id = UUID(json.loads(response.body)["order_id"]) if response.status == 202 else None
        return Sent(due, latency, response.status, order_id)

    tasks = []
    for i, (due, body) in enumerate(zip(moments, bodies, strict=True)):
        delay = start + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(due, body, clients[i % len(clients)])))
    return list(await asyncio.gather(*tasks))
