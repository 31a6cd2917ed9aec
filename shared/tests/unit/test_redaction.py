"""No credential reaches a log line or an error message."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from shared.consuming.deadletter import DeadLetter
from shared.observability.logs import JsonFormatter, setup_logging
from shared.observability.redaction import redact
from shared.persistence.db import wait_for_database

PASSWORD = "hunter2-Pa55"
URL = f"postgresql://orders:{PASSWORD}@db.internal:5432/order"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (URL, "postgresql://orders:***@db.internal:5432/order"),
        (f"to {URL} failed", "to postgresql://orders:***@db.internal:5432/order failed"),
        (f"amqp://u:{PASSWORD}@h/v and http://a:b@c", "amqp://u:***@h/v and http://a:***@c"),
        (f"host=db user=u password={PASSWORD} dbname=x", "host=db user=u password=*** dbname=x"),
        (f"PASSWORD='{PASSWORD} x' sslmode=require", "PASSWORD=*** sslmode=require"),
        (f"{{'user': 'orders', 'password': '{PASSWORD}'}}", "{'user': 'orders', 'password': ***}"),
        (f"?sslmode=disable&password={PASSWORD}&x=1", "?sslmode=disable&password=***&x=1"),
        (f"Authorization: Bearer {PASSWORD}", "Authorization: Bearer ***"),
        (f"ADMIN_TOKEN={PASSWORD}", "ADMIN_TOKEN=***"),
    ],
)  # fmt: skip
def test_credentials_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://postgres@127.0.0.1:5432/order",
        "http://127.0.0.1:8001/orders?limit=5",
        "only 3 of SKU-1 available",
        "kafka 127.0.0.1:9092 unreachable",
    ],
)
def test_text_without_credentials_is_left_alone(text: str) -> None:
    assert redact(text) == text


def log_line(record: logging.LogRecord) -> str:
    return JsonFormatter("svc").format(record)


def test_a_log_line_never_shows_a_password_in_its_message_fields_or_exception() -> None:
    try:
        raise RuntimeError(f"cannot reach {URL}")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "database %s down", (URL,), exc_info
    )
    record.fields = {"url": URL, "attempts": 3}
    line = log_line(record)
    assert PASSWORD not in line
    parsed = json.loads(line)
    assert parsed["message"] == "database postgresql://orders:***@db.internal:5432/order down"
    assert parsed["url"] == "postgresql://orders:***@db.internal:5432/order"
    assert parsed["attempts"] == 3
    assert "RuntimeError: cannot reach postgresql://orders:***@" in parsed["exception"]


async def test_an_unreachable_database_is_reported_without_its_password() -> None:
    url = f"postgresql://orders:{PASSWORD}@127.0.0.1:1/order"  # nothing listens on port 1
    with pytest.raises(RuntimeError) as raised:
        await wait_for_database(url, timeout=0)
    assert "unreachable" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert "orders:***@127.0.0.1:1" in str(raised.value)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """A test may call setup_logging (inside its body, so it writes to the captured stdout);
    the test runner's logging and exception hooks come back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    try:
        yield
    finally:
        root.handlers[:], level, sys.excepthook, threading.excepthook = saved
        root.setLevel(level)


def test_an_uncaught_exception_is_logged_redacted(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("svc", "INFO")
    try:
        raise RuntimeError(f"database {URL} unreachable for 60s")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    line = json.loads(out.out.strip().splitlines()[-1])
    assert line["level"] == "CRITICAL"
    assert "orders:***@db.internal" in line["message"]


def test_an_uncaught_exception_in_a_thread_is_logged_redacted(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("svc", "INFO")

    def fail() -> None:
        raise RuntimeError(f"lost {URL}")

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    assert "orders:***@db.internal" in out.out


def test_a_dead_letter_keeps_no_credential_in_its_error() -> None:
    letter = DeadLetter("c", "t", 0, 1, None, None, {}, f"OSError: {URL}", 1)
    assert PASSWORD not in letter.error
    assert PASSWORD not in letter.dlq_headers()["dlq.error"]
