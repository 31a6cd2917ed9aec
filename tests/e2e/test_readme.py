"""The README's first order, run as typed: its shell commands are read from the README and run
with curl. Only the SKU and the Idempotency-Key are new ones (so the SKU is one the order
service has not heard of, as on a fresh start, and each run places its own order), and the
suite's addresses stand for the default ones."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from shared.testing.infra import eventually
from tests.e2e.conftest import Suite, new_sku

README = Path(__file__).resolve().parents[2] / "README.md"
README_SKU, README_KEY = "MUG-RED", "first-order"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the README uses curl")


@dataclass(frozen=True)
class Step:
    command: str
    expected: str | None  # the answer the README shows on the comment line under the command


def first_order_steps() -> list[Step]:
    """The commands of the README's "A first order" block, each with the answer it shows."""
    section = README.read_text().split("\n## A first order\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no sh block under 'A first order'"
    steps = []
    for text in re.split(r"\n(?=curl )", block[1].strip()):
        lines = text.splitlines()
        shown = [line.removeprefix("# ") for line in lines if line.startswith("# ")]
        command = "\n".join(line for line in lines if not line.startswith("#"))
        steps.append(Step(command, shown[0] if shown else None))
    return steps


def for_this_run(step: Step, suite: Suite, sku: str, key: str) -> Step:
    def replaced(text: str) -> str:
        for default, url in (
            ("http://127.0.0.1:8001", suite.order),
            ("http://127.0.0.1:8002", suite.inventory),
            ("http://127.0.0.1:8003", suite.shipping),
        ):
            text = text.replace(default, url)
        return text.replace(README_SKU, sku).replace(README_KEY, key)

    return Step(replaced(step.command), step.expected and replaced(step.expected))


async def run(command: str) -> Any:
    """Runs ``command`` in bash; its output, read as JSON."""
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_the_readme_s_first_order_works_as_typed(suite: Suite) -> None:
    sku, key = new_sku(), f"first-order-{uuid4()}"
    steps = [for_this_run(step, suite, sku, key) for step in first_order_steps()]
    put, post, get_order, get_shipment, get_stock = steps
    assert put.expected is not None
    assert post.expected is not None

    assert await run(put.command) == json.loads(put.expected)
    # At once: the order service has not heard of the SKU from the stock topic yet.
    accepted = await run(post.command)
    shown = json.loads(post.expected)
    assert set(accepted) == set(shown)
    assert accepted["status"] == shown["status"] == "PENDING"
    order_id = str(UUID(accepted["order_id"]))
    assert (await run(post.command))["order_id"] == order_id  # the same key: the same order

    def read(step: Step) -> Any:
        return run(step.command.replace("<order_id>", order_id))

    # What the README's comments on the reads say: SHIPPED, DISPATCHED, 8 available and 2
    # shipped.
    order = await eventually(
        lambda: read(get_order), lambda o: o["status"] == "SHIPPED", 45, interval=0.5
    )
    assert order["items"] == [{"sku": sku, "quantity": 2}]
    shipment = await eventually(
        lambda: read(get_shipment), lambda s: s.get("status") == "DISPATCHED", 30
    )
    assert shipment["order_id"] == order_id
    stock = await read(get_stock)
    assert (stock["available"], stock["reserved"], stock["shipped"]) == (8, 0, 2)
