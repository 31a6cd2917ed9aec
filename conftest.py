"""Test tiers: a test under an ``integration`` or ``e2e`` folder gets that marker, so
``pytest -m "not integration and not e2e"`` is the unit tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The folder shared/ (the project's part) and the package shared (its src/) share a name. In
# importlib mode pytest may register the folder as a namespace package named "shared" when a
# test under it is imported first; importing the real package here, first, prevents that.
import shared.contracts  # noqa: F401
from shared.observability.correlation import correlation_id_var


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        if "integration" in parts or "faults" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _a_correlation_in_effect() -> Iterator[None]:
    """Every edge of a service (HTTP middleware, consumer, scheduler) sets the correlation in
    effect before work writes events, and writing without one raises. A test plays the edge:
    its code runs as in one flow, ``test-flow``. Tests of the edges set their own."""
    token = correlation_id_var.set("test-flow")
    try:
        yield
    finally:
        correlation_id_var.reset(token)
