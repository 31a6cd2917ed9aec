"""Every dead letter its own identity, and the stream it belongs to.

``dead_letters`` was unique per source offset, so a second letter at an offset already seen
was dropped: offsets repeat when the broker is reformatted and the database kept. Each letter
now has a ``letter_id`` (also in its ``dlq.letter_id`` header), and the source offset is only
indexed. The stream and sequence of the letter's event (null for a record that is not an
envelope) let a whole stream be replayed in order, and gap expiry leave a parked successor
waiting while its predecessor is a pending letter. ``on_topic`` says what reached the
dead-letter topic: ``whole``, a ``stub`` (the record was too large), or ``none``.

Rows from before this step get a random ``letter_id`` and no stream. The downgrade fails
rather than deleting letters if two now share a source offset.
"""

from __future__ import annotations

from shared.persistence.machinery_migrations._step import Step

MACHINERY_0002 = Step(
    name="0002_dead_letter_identity",
    upgrade="""
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_consumer_topic_partition_offset_key;
ALTER TABLE dead_letters ADD COLUMN letter_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_letter_id_key UNIQUE (letter_id);
ALTER TABLE dead_letters ADD COLUMN source text;
ALTER TABLE dead_letters ADD COLUMN aggregate_type text;
ALTER TABLE dead_letters ADD COLUMN aggregate_id text;
ALTER TABLE dead_letters ADD COLUMN sequence bigint;
ALTER TABLE dead_letters ADD COLUMN on_topic text NOT NULL DEFAULT 'whole';
CREATE INDEX dead_letters_source_offset ON dead_letters (consumer, topic, partition, "offset");
CREATE INDEX dead_letters_stream
    ON dead_letters (consumer, aggregate_id, source, aggregate_type, sequence);
""",
    downgrade="""
DROP INDEX dead_letters_stream;
DROP INDEX dead_letters_source_offset;
ALTER TABLE dead_letters DROP COLUMN on_topic;
ALTER TABLE dead_letters DROP COLUMN sequence;
ALTER TABLE dead_letters DROP COLUMN aggregate_id;
ALTER TABLE dead_letters DROP COLUMN aggregate_type;
ALTER TABLE dead_letters DROP COLUMN source;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_letter_id_key;
ALTER TABLE dead_letters DROP COLUMN letter_id;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_consumer_topic_partition_offset_key
    UNIQUE (consumer, topic, partition, "offset");
""",
)
