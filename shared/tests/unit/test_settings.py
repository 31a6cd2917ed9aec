"""Settings refuse what would start a service in an unsafe state."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.service.settings import ServiceSettings


def settings(**overrides: object) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {"service_name": "s", "http_port": 0, "database_url": "postgresql://nowhere/s"} | overrides
    )


def test_a_service_without_an_admin_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="ADMIN_TOKEN is not set"):
        ServiceSettings(service_name="s", http_port=0, database_url="postgresql://nowhere/s")


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN is not set"):
        settings(admin_token=token)


@pytest.mark.parametrize("token", ["change-me", "CHANGE-ME", "changeme", "secret", " admin "])
def test_a_placeholder_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN is the placeholder"):
        settings(admin_token=token)


def test_a_real_admin_token_is_kept() -> None:
    assert settings(admin_token="Zq8-3kR1vWm0").admin_token == "Zq8-3kR1vWm0"


def test_the_admin_token_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-environment")
    assert settings().admin_token == "from-the-environment"
