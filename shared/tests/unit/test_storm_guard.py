"""The storm guard: the fan-out of each request or event is measured, and past the
threshold a warning names the correlation id."""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest

from shared.contracts.catalog import OrderRejected
from shared.observability.correlation import correlated
from shared.observability.metrics import EVENTS_PER_CAUSE, FANOUT_WARNINGS
from shared.pitfalls.no_debounce import published_at_once
from shared.testing.fakes import InMemoryState, InMemoryUnitOfWork
from shared.testing.worker import AddressEdited, Item
from shared.writing.storm import FanOutGuard, current_cause
from shared.writing.uow import debounced


async def write(guard: FanOutGuard, events: int, *, debounce: bool = True) -> None:
    async with InMemoryUnitOfWork(
        InMemoryState(), "svc", coarse=debounced if debounce else published_at_once, fanout=guard
    ) as uow:
        item = Item("agg")
        for _ in range(events):
            item.record(OrderRejected(order_id=uuid4(), reason="r"))
        uow.track(item)
        await uow.commit()


def observed(service: str, cause: str) -> tuple[float, float]:
    """(how many observations, their sum) of the fan-out histogram."""
    count = sum_ = 0.0
    for metric in EVENTS_PER_CAUSE.collect():
        for sample in metric.samples:
            if sample.labels.get("service") == service and sample.labels.get("cause") == cause:
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    sum_ = sample.value
    return count, sum_


def test_the_cause_is_read_from_the_causation_id() -> None:
    causes = []
    for causation in ("request:1", str(uuid4()), "dispatch:o-1", None):
        with correlated("flow", causation):
            causes.append(current_cause())
    assert causes == ["http", "event", "timer", "background"]


async def test_a_fan_out_past_the_threshold_warns_with_the_correlation_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = FanOutGuard("storm-svc", threshold=3)
    with correlated("flow-storm", "request:42"), caplog.at_level(logging.WARNING):
        await write(guard, 2)
        await write(guard, 5)
    assert observed("storm-svc", "http") == (2, 7)
    assert FANOUT_WARNINGS.labels("storm-svc", "http")._value.get() == 1
    (warning,) = [r for r in caplog.records if "storm guard" in r.getMessage()]
    assert "caused 5 integration events" in warning.getMessage()
    assert "correlation_id=flow-storm" in warning.getMessage()


async def test_a_debounced_burst_is_no_fan_out_and_without_debounce_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = FanOutGuard("burst-svc", threshold=3)

    async def burst(debounce: bool) -> None:
        async with InMemoryUnitOfWork(
            InMemoryState(),
            "svc",
            coarse=debounced if debounce else published_at_once,
            fanout=guard,
        ) as uow:
            item = Item("agg")
            for n in range(10):
                item.record(AddressEdited(order_id=uuid4(), line1=f"street {n}"))
            uow.track(item)
            await uow.commit()

    with correlated("flow-burst", "request:7"), caplog.at_level(logging.WARNING):
        await burst(debounce=True)
        assert observed("burst-svc", "http") == (1, 0)
        await burst(debounce=False)
        assert observed("burst-svc", "http") == (2, 10)
    assert FANOUT_WARNINGS.labels("burst-svc", "http")._value.get() == 1
