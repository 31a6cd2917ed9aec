"""How many events each consumer stream has parked, on the stream's own row.

The consumer learns whether a stream has parked events from the statement that locks the
stream's row: an upsert re-reads the latest committed version of a row it waited for, so a
count committed while it waited is seen, which a check of ``parked_events`` in that statement
(read from the snapshot taken before the wait) could miss. The count changes only while the
row is locked (parking, unparking, the gap expiry), in the statement that parks or removes
the event. Existing rows are backfilled from ``parked_events``.
"""

from __future__ import annotations

from shared.persistence.machinery_migrations._step import Step

MACHINERY_0006 = Step(
    name="0006_parked_count",
    upgrade="""
ALTER TABLE consumer_sequences ADD COLUMN parked integer NOT NULL DEFAULT 0;
UPDATE consumer_sequences s
SET parked = (
    SELECT count(*) FROM parked_events p
    WHERE p.consumer = s.consumer AND p.source = s.source
      AND p.aggregate_type = s.aggregate_type AND p.aggregate_id = s.aggregate_id
)
WHERE EXISTS (
    SELECT 1 FROM parked_events p
    WHERE p.consumer = s.consumer AND p.source = s.source
      AND p.aggregate_type = s.aggregate_type AND p.aggregate_id = s.aggregate_id
)
""",
    downgrade="""
ALTER TABLE consumer_sequences DROP COLUMN parked
""",
)
