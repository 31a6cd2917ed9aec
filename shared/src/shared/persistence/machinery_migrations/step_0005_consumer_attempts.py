"""The failed attempts at each record a consumer is retrying, kept in its database.

Counted in memory, the attempts started again at 1 whenever a rebalance or a restart handed
the record to a member (or back): under frequent rebalances a record that always fails
would never reach ``CONSUMER_MAX_ATTEMPTS`` and never be dead-lettered. One row per record
(``consumer``, ``topic``, ``partition``, ``offset``) counts them wherever they were made; it
is written in a short transaction of its own on each failure and deleted once the record is
applied or dead-lettered (a row left behind is purged with the dedup rows).
"""

from __future__ import annotations

from shared.persistence.machinery_migrations._step import Step

MACHINERY_0005 = Step(
    name="0005_consumer_attempts",
    upgrade="""
CREATE TABLE consumer_attempts (
    consumer   text        NOT NULL,
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    "offset"   bigint      NOT NULL,
    attempts   integer     NOT NULL,
    last_error text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition, "offset")
)
""",
    downgrade="""
DROP TABLE consumer_attempts
""",
)
