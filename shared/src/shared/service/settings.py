"""Configuration shared by every service, read from environment variables.

Each service subclasses :class:`ServiceSettings`, fixing its name and defaults; nothing else
reads the environment. Every field is one upper-case environment variable of the same name.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Tokens that read as "fill me in": a service started with one would guard its admin API with
# a value anyone can guess. Compared case-insensitively.
PLACEHOLDER_TOKENS = frozenset(
    {"change-me", "changeme", "change_me", "changeit", "secret", "password", "admin", "token"}
)


class ServiceSettings(BaseSettings):
    """Every field is one environment variable (its name in upper case); its description is
    the documentation (``make docs`` renders the configuration table from it)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str = Field(
        description="the logical name: outbox source, consumer group `<name>-service`, DLQ"
        " topic `<name>.dlq`, OpenTelemetry `service.name` `<name>-service`"
    )
    http_host: str = Field("127.0.0.1", description="bind address")
    http_port: int = Field(description="HTTP port")
    database_url: str = Field(description="the service's own database")
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112",
        description="the brokers to bootstrap from, comma-separated (one that answers is enough)",
    )
    kafka_topic_partitions: int = Field(
        6, description="read, but topics are created by the launcher or compose's `kafka-init`"
    )

    otel_exporter_otlp_endpoint: str = Field(
        "http://127.0.0.1:4318", description="OTLP/HTTP collector (`/v1/traces` is appended)"
    )
    otel_sdk_disabled: bool = Field(False, description="`true`: no span export")
    log_level: str = Field("INFO", description="root log level")
    admin_token: str = Field(
        "",
        validate_default=True,
        description="the token of the dead-letter admin API (`Bearer <token>`); required, and"
        " not a placeholder such as `change-me` (the native launcher generates one in"
        " `.state/admin-token`)",
    )
    max_body_bytes: int = Field(64 * 1024, description="larger request bodies get 413")

    db_pool_size: int = Field(
        8,
        description="database connections for the consumer (CONSUMER_CONCURRENCY of them),"
        " relay, dispatcher and maintenance",
    )
    db_http_pool_size: int = Field(
        10, description="database connections for HTTP requests (a pool of their own)"
    )
    db_acquire_timeout_seconds: float = Field(
        5.0, description="wait for a free connection; then 503 (HTTP) or a retry (events)"
    )

    relay_batch_size: int = Field(200, description="outbox rows per publish batch")
    relay_poll_interval_seconds: float = Field(
        1.0, description="the relay's longest wait between polls while idle"
    )
    relay_poll_min_seconds: float = Field(
        0.05,
        description="the relay's wait between polls while rows keep coming (its own process's"
        " commits wake it at once; this catches rows other processes commit)",
    )
    relay_linger_seconds: float = Field(
        0.005,
        ge=0,
        description="woken while rows keep coming, the relay waits this long before reading, so"
        " rows of concurrent commits share one produce request (never after an idle pass or a"
        " full batch; 0: never)",
    )
    consumer_batch: bool = Field(
        True,
        description="apply the records partitions have in hand together, in one transaction"
        " (group commit; each partition's run on its own, then one record at a time, when that"
        " fails)",
    )
    consumer_max_poll_records: int = Field(200, description="records fetched per poll, at most")
    consumer_fetch_max_wait_ms: int = Field(
        500,
        ge=0,
        description="how long the broker may hold a fetch to gather consumer_fetch_min_bytes",
    )
    consumer_fetch_min_bytes: int = Field(
        1, ge=1, description="bytes the broker gathers before answering a fetch (1: at once)"
    )
    consumer_ignored_linger_seconds: float = Field(
        0.2,
        ge=0,
        description="records the service has no handler for wait this long for a record it "
        "handles, to be applied in that one's transaction instead of one of their own (0: never"
        " wait)",
    )
    consumer_commit_interval_seconds: float = Field(
        0.5,
        ge=0,
        description="offsets of applied records are committed to Kafka at most this often (and "
        "on every rebalance and shutdown); after a crash, what was applied since is redelivered "
        "and dropped as duplicates",
    )
    consumer_concurrency: int = Field(
        3,
        ge=1,
        description="consumer transactions at once: the group commit's and those of"
        " partitions applying on their own (1: one at a time); a transaction chosen as a"
        " deadlock's victim is run again",
    )
    consumer_rate_limit_per_second: float = Field(
        0.0,
        ge=0,
        description="events a second this service's consumer applies at most (a token bucket"
        " of one second's worth); while it waits for tokens its partitions are paused, so the"
        " backlog stays in Kafka. 0: no limit",
    )
    consumer_max_attempts: int = Field(
        5,
        description="attempts before an event is dead-lettered (ordinary errors), counted per"
        " record in the database: a rebalance or a restart does not start the count again",
    )
    consumer_retry_backoff_seconds: float = Field(
        0.2, description="the first retry delay, doubled for each attempt"
    )
    parked_gap_timeout_seconds: float = Field(
        60.0, description="how long a parked event waits for its gap to fill"
    )
    dedup_retention_hours: float = Field(
        24.0 * 7,
        gt=0,
        description="age after which dedup rows are purged (at least the topics' retention:"
        " Kafka can no longer redeliver those events)",
    )
    consumer_sequence_retention_days: float = Field(
        30.0,
        ge=0,
        description="a stream's consumer-side sequence row is purged once the stream has been"
        " idle this long, with nothing parked and no pending dead letter for it (0: never);"
        " keep it well past the topics' retention, see docs/operations.md",
    )
    outbox_sequence_retention_days: float = Field(
        60.0,
        ge=0,
        description="an aggregate's outbox sequence row is purged once it has published nothing"
        " this long (0: never); longer than consumer_sequence_retention_days, so consumers have"
        " forgotten the stream before it restarts at sequence 1",
    )
    dead_letter_retention_days: float = Field(
        30.0,
        ge=0,
        description="a replayed dead letter's row is purged this long after its replay (0:"
        " never); pending ones are kept",
    )
    retention_batch_size: int = Field(
        1000, ge=1, description="rows deleted per statement by the retention purges"
    )
    retention_interval_seconds: float = Field(
        600.0, gt=0, description="how often the retention purges run"
    )

    debounce_quiet_seconds: float = Field(
        1.0,
        gt=0,
        description="a debounced event (an order's address, a SKU's stock level) goes out once"
        " its aggregate has had no change for this long",
    )
    debounce_max_wait_seconds: float = Field(
        5.0,
        gt=0,
        description="... or once the first change it holds is this old, so a burst that never"
        " ends still emits",
    )
    debounce_poll_seconds: float = Field(
        0.2, gt=0, description="how often the debounce emitter looks for due events"
    )

    storm_fanout_warn_threshold: int = Field(
        20,
        ge=0,
        description="the storm guard: one request or event that writes more integration"
        " events than this logs a warning with its correlation id (0: never); the flow's own"
        " steps write one or two",
    )

    # Pitfall modes: each switch turns one protection off, to show the pitfall happening.
    pitfall_naive_dual_write: bool = Field(
        False, description="pitfall mode: publish after commit, no outbox"
    )
    pitfall_no_dedup: bool = Field(False, description="pitfall mode: no dedup row check")
    pitfall_no_sequence_check: bool = Field(
        False, description="pitfall mode: no per-stream sequence check"
    )
    pitfall_auto_commit: bool = Field(
        False, description="pitfall mode: Kafka auto-commits offsets before the work is done"
    )
    pitfall_no_debounce: bool = Field(
        False,
        description="pitfall mode: no debounce, every address edit and stock movement crosses"
        " Kafka as its own event",
    )
    pitfall_unkeyed: bool = Field(
        False,
        description="pitfall mode: the relay publishes without a key, so one aggregate's events"
        " spread over partitions",
    )

    @field_validator("admin_token")
    @classmethod
    def _a_real_admin_token(cls, token: str) -> str:
        # Refused here, so a service never starts with its admin API open to a guess.
        if not token.strip():
            raise ValueError(
                "ADMIN_TOKEN is not set: set it to a random secret (e.g. `openssl rand -hex 32`);"
                " `make start` generates one in .state/admin-token"
            )
        if token.strip().lower() in PLACEHOLDER_TOKENS:
            raise ValueError(
                f"ADMIN_TOKEN is the placeholder {token.strip()!r}: set it to a random secret"
                " (e.g. `openssl rand -hex 32`)"
            )
        return token

    @model_validator(mode="after")
    def _sequence_rows_outlive_what_can_still_arrive(self) -> ServiceSettings:
        consumer = self.consumer_sequence_retention_days
        outbox = self.outbox_sequence_retention_days
        if consumer and consumer * 24 <= self.dedup_retention_hours:
            raise ValueError(
                "consumer_sequence_retention_days must exceed dedup_retention_hours (the topics'"
                " retention): a redelivered event must still meet its stream's row"
            )
        if outbox and (not consumer or outbox <= consumer):
            raise ValueError(
                "outbox_sequence_retention_days must exceed consumer_sequence_retention_days"
                " (and needs it on): a stream restarts at sequence 1 only after its consumers"
                " have forgotten it"
            )
        return self

    @property
    def consumer_group(self) -> str:
        return f"{self.service_name}-service"

    @property
    def dlq_topic(self) -> str:
        return f"{self.service_name}.dlq"
