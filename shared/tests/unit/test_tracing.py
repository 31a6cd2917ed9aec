"""Tracing samples every trace by default and follows the standard OpenTelemetry sampler
variables when they are set (docs/observability.md)."""

from __future__ import annotations

import pytest

from shared.observability.tracing import new_tracer_provider
from shared.service.settings import ServiceSettings


def _settings() -> ServiceSettings:
    return ServiceSettings(
        service_name="s",
        http_port=0,
        database_url="postgresql://nowhere/s",
        admin_token="a-real-token",
        otel_sdk_disabled=True,
    )


def test_every_trace_is_sampled_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    sampler = new_tracer_provider(_settings()).sampler
    assert sampler.get_description().startswith("ParentBased{root:AlwaysOnSampler")


def test_the_sampler_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    sampler = new_tracer_provider(_settings()).sampler
    assert sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.1}")
