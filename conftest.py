"""Test tiers: a test under an ``integration`` or ``e2e`` folder gets that marker, so
``pytest -m "not integration and not e2e"`` is the unit tier."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        if "integration" in parts or "faults" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
