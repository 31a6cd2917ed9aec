"""Configuration shared by every service, read from environment variables.

Each service subclasses :class:`ServiceSettings`, fixing its name and defaults; nothing else
reads the environment. Every field is one upper-case environment variable of the same name.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str = Field(description="Logical name: consumer group, outbox source, DLQ topic")
    http_host: str = "127.0.0.1"
    http_port: int
    database_url: str
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_partitions: int = 6

    otel_exporter_otlp_endpoint: str = "http://127.0.0.1:4318"
    otel_sdk_disabled: bool = False
    log_level: str = "INFO"
    admin_token: str = "change-me"
    max_body_bytes: int = 64 * 1024

    relay_batch_size: int = 200
    relay_poll_interval_seconds: float = 1.0  # the longest idle wait between polls
    relay_poll_min_seconds: float = 0.05  # the wait while rows keep coming
    consumer_batch: bool = True  # apply the records of one poll of a partition in one commit
    consumer_max_poll_records: int = 200
    consumer_max_attempts: int = 5
    consumer_retry_backoff_seconds: float = 0.2
    parked_gap_timeout_seconds: float = 60.0
    dedup_retention_hours: float = 24.0 * 7

    # Pitfall modes: each switch turns one protection off, to show the pitfall happening.
    pitfall_naive_dual_write: bool = False
    pitfall_no_dedup: bool = False
    pitfall_no_sequence_check: bool = False
    pitfall_auto_commit: bool = False

    @property
    def consumer_group(self) -> str:
        return f"{self.service_name}-service"

    @property
    def dlq_topic(self) -> str:
        return f"{self.service_name}.dlq"
