"""The machinery tables' migrations, written once for every service and frozen.

Every service database holds the same machinery tables (see :mod:`shared.persistence.schema`
for what each one is for). Their DDL lives here as numbered, immutable steps, and each service's
Alembic chain applies them by name: a revision calls ``apply(MACHINERY_0001)``, never a
module that describes "the current schema", so a database that applied a revision keeps
meaning the same thing forever.

The rules:

- **Never edit a step that has shipped.** A database that ran it will not run it again, so
  an edit would only split the fleet into databases that differ. ``shared/tests/unit/
  test_migrations_frozen.py`` pins a hash of every shipped step and every service revision
  and fails on any change.
- **To change a machinery table, add a step**: a new module ``step_NNNN_<what>.py`` holding
  ``MACHINERY_NNNN = Step(...)`` with its upgrade and its downgrade (the exact inverse),
  appended to :data:`STEPS`; then **a new revision in every service** whose ``upgrade``
  calls ``apply(MACHINERY_NNNN)`` and whose ``downgrade`` calls ``revert(MACHINERY_NNNN)``.
  Pin the new hashes in the freeze test (it prints them).
- Steps run through :func:`shared.persistence.migrations.execute_script`, which splits on
  ``;``: keep semicolons out of string literals.
"""

from __future__ import annotations

from shared.persistence.machinery_migrations._step import Step
from shared.persistence.machinery_migrations.step_0001_initial import MACHINERY_0001
from shared.persistence.machinery_migrations.step_0002_dead_letter_identity import MACHINERY_0002
from shared.persistence.machinery_migrations.step_0003_sequence_retention import MACHINERY_0003
from shared.persistence.machinery_migrations.step_0004_debounced_events import MACHINERY_0004
from shared.persistence.machinery_migrations.step_0005_consumer_attempts import MACHINERY_0005
from shared.persistence.machinery_migrations.step_0006_parked_count import MACHINERY_0006

# Every step, oldest first: a new database (see ``shared.testing.infra.create_database``)
# applies them in this order, as each service's revision chain does.
STEPS: tuple[Step, ...] = (
    MACHINERY_0001,
    MACHINERY_0002,
    MACHINERY_0003,
    MACHINERY_0004,
    MACHINERY_0005,
    MACHINERY_0006,
)

__all__ = [
    "MACHINERY_0001",
    "MACHINERY_0002",
    "MACHINERY_0003",
    "MACHINERY_0004",
    "MACHINERY_0005",
    "MACHINERY_0006",
    "STEPS",
    "Step",
]
