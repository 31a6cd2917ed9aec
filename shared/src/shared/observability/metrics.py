"""Prometheus metrics of the machinery, labelled by service (and topic where it applies)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter(
    "outbox_events_published_total", "Events the relay published", ["service", "topic"]
)
RELAY_PUBLISH_SECONDS = Histogram(
    "outbox_relay_publish_seconds", "Time to publish one relay batch until acked", ["service"]
)
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", ["service"]
)
EVENTS_CONSUMED = Counter(
    "consumer_events_total",
    "Events seen by the consumer, by outcome (applied, duplicate, parked, ignored, dead_lettered)",
    ["service", "topic", "outcome"],
)
DEDUP_HITS = Counter(
    "consumer_dedup_hits_total", "Events skipped as already applied", ["service", "topic"]
)
HANDLER_SECONDS = Histogram(
    "consumer_handler_seconds", "Time to apply one event, commit included", ["service", "topic"]
)
CONSUMER_TRANSACTION_EVENTS = Histogram(
    "consumer_transaction_events",
    "Events applied per consumer transaction (a batch commits many in one)",
    ["service"],
    buckets=(1, 2, 3, 5, 10, 20, 50, 100, 200),
)
CONSUMER_FETCHES = Counter(
    "consumer_fetches_total",
    "Fetches (getmany calls) that returned records: the benchmark counts them per order",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "consumer_lag",
    "Records behind the partition's high watermark",
    ["service", "topic", "partition"],
)
PARKED_EVENTS = Gauge("consumer_parked_events", "Events parked ahead of a gap", ["service"])
DEAD_LETTERS = Counter(
    "consumer_dead_letters_total", "Events sent to the dead-letter topic", ["service", "topic"]
)
DLQ_DEPTH = Gauge("dlq_depth", "Dead letters not replayed yet", ["service"])

# Fine buckets from 5 ms to 60 s: the benchmark reads percentiles of one step from them.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip
OUTBOX_TO_ACK_SECONDS = Histogram(
    "outbox_write_to_ack_seconds",
    "From an outbox row's write (its transaction's last statement, just before the commit) to"
    " the broker's ack of its record",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
AGGREGATE_AGE_SECONDS = Histogram(
    "aggregate_status_age_seconds",
    "Age of an aggregate (since it was created) when it reached a status",
    ["service", "aggregate_type", "status"],
    buckets=LATENCY_BUCKETS,
)

# Event storms: debounce at the source, rate-limited consumers, the fan-out guard.
DEBOUNCE_HELD = Counter(
    "debounce_changes_held_total",
    "Changes held for debounce (each rewrites its aggregate's pending event)",
    ["service", "event_type"],
)
DEBOUNCE_EMITTED = Counter(
    "debounce_events_emitted_total",
    "Debounced events moved to the outbox (one per burst)",
    ["service", "event_type"],
)
DEBOUNCE_PENDING = Gauge("debounce_pending", "Debounced events waiting to be emitted", ["service"])
CONSUMER_THROTTLED = Gauge(
    "consumer_throttled",
    "1 while the rate limit holds the consumer's partitions paused",
    ["service"],
)
CONSUMER_THROTTLED_SECONDS = Counter(
    "consumer_throttled_seconds_total",
    "Time the rate limit held the consumer's partitions paused",
    ["service"],
)
FANOUT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
EVENTS_PER_CAUSE = Histogram(
    "integration_events_per_cause",
    "Integration events written to the outbox per incoming request or event (fan-out)",
    ["service", "cause"],
    buckets=FANOUT_BUCKETS,
)
FANOUT_WARNINGS = Counter(
    "storm_fanout_warnings_total",
    "Requests or events whose fan-out passed STORM_FANOUT_WARN_THRESHOLD",
    ["service", "cause"],
)
CHANGES_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
AGGREGATE_CHANGES_IN_WINDOW = Histogram(
    "aggregate_changes_in_window",
    "Change requests of one aggregate in the storm guard's sliding window, observed at each"
    " request (itself included)",
    ["service", "aggregate_type", "change"],
    buckets=CHANGES_BUCKETS,
)
AGGREGATE_CHANGE_STORMS = Counter(
    "aggregate_change_storms_total",
    "Aggregates whose change rate passed the storm guard's threshold (one per storm)",
    ["service", "aggregate_type", "change"],
)
AGGREGATE_CHANGES_REFUSED = Counter(
    "aggregate_changes_refused_total",
    "Change requests refused (HTTP 429) by the per-aggregate rate limit",
    ["service", "aggregate_type", "change"],
)
