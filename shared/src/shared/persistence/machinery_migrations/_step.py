from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One immutable change to the machinery tables.

    ``upgrade`` and ``downgrade`` are plain PostgreSQL statements separated by ``;``;
    ``downgrade`` undoes ``upgrade`` exactly, so a service revision can be rolled back.
    """

    name: str
    upgrade: str
    downgrade: str
