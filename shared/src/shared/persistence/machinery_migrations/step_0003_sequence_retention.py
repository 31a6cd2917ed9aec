"""When each producer-side sequence row was last used, so an idle one can be purged.

``outbox_sequences`` had no timestamp: retention (``shared.persistence.maintenance``) needs to
know how long an aggregate has been quiet. Existing rows count as used when the step runs.
"""

from __future__ import annotations

from shared.persistence.machinery_migrations._step import Step

MACHINERY_0003 = Step(
    name="0003_sequence_retention",
    upgrade="""
ALTER TABLE outbox_sequences ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()
""",
    downgrade="""
ALTER TABLE outbox_sequences DROP COLUMN updated_at
""",
)
