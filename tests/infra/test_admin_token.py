"""The launcher's admin token: one random token per state folder, private to its owner, and
found by the services it starts and by the dead-letter CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from infra.services import admin_token, admin_token_path, service_env
from infra.settings import ports
from shared.service import dlq


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)


def test_the_first_start_generates_a_token_readable_by_its_owner_only(tmp_path: Path) -> None:
    state = tmp_path / ".state"
    token = admin_token(state)
    assert len(token) >= 32
    assert admin_token_path(state).read_text().strip() == token
    assert stat.S_IMODE(admin_token_path(state).stat().st_mode) == 0o600


def test_later_starts_reuse_the_token_of_their_state_folder(tmp_path: Path) -> None:
    first = admin_token(tmp_path / "a")
    assert admin_token(tmp_path / "a") == first
    assert admin_token(tmp_path / "b") != first


def test_a_token_in_the_environment_wins_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-environment")
    assert admin_token(tmp_path) == "from-the-environment"
    assert not admin_token_path(tmp_path).exists()


def test_every_service_the_launcher_starts_gets_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("infra.services.STATE", tmp_path)
    tokens = {service_env(name, ports())["ADMIN_TOKEN"] for name in ("order", "inventory")}
    assert tokens == {admin_token(tmp_path)}


def test_the_dead_letter_cli_finds_the_launchers_token_from_a_subfolder(tmp_path: Path) -> None:
    token = admin_token(tmp_path / ".state")
    (tmp_path / "docs").mkdir()
    assert dlq.admin_token(tmp_path / "docs") == token


def test_the_dead_letter_cli_refuses_to_run_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dlq.main(["list", "inventory"]) == 2
    assert "no admin token" in capsys.readouterr().err
