"""What the tables of the event-driven machinery are for. Documentation only: their DDL is
the frozen, numbered steps in :mod:`shared.persistence.machinery_migrations`, which every service's
Alembic chain applies by name (``apply(MACHINERY_0001)``, ...). Change a table by adding a
step, never by editing one; see that package for how.

- ``outbox``: events waiting for the relay, written in the business transaction.
- ``outbox_sequences``: the last ``sequence`` given per aggregate (the row lock orders writers).
- ``processed_events``: the dedup row ``(consumer, event_id)`` of every event applied.
- ``consumer_sequences``: the last sequence applied per ``(consumer, source, aggregate)``,
  and how many events of the stream are ``parked`` (changed only under the row's lock).
- ``parked_events``: events that arrived ahead of a gap, applied when it fills.
- ``dead_letters``: what the consumer gave up on, whole, with the reason, its own
  ``letter_id`` and its stream, for ``/admin/dlq`` and replay.
- ``debounced_events``: the latest integration event per aggregate waiting for a quiet
  period (:mod:`shared.writing.debounce`); the emitter moves it to the outbox.
- ``consumer_attempts``: the failed attempts at each record the consumer is retrying, per
  ``(consumer, topic, partition, offset)``, so a rebalance does not start the count again.
"""
