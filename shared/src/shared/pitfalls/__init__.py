"""The pitfall modes: each swaps one protection for the naive strategy it replaces, chosen
at the composition root (:func:`strategies`, called by :mod:`shared.service.runtime`).

The production modules carry no pitfall conditionals: they are written against the
protections (:class:`~shared.consuming.processing.Dedup`, ...), and each module here
holds the naive version and says what goes wrong with it. ``make pitfalls`` shows it
happen, docs/pitfalls.md explains each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.consuming.offsets import CommitWhatIsDone, OffsetPolicy
from shared.consuming.processing import Dedup, SequenceCheck
from shared.persistence.postgres import OutboxFactory, PostgresOutbox
from shared.pitfalls.auto_commit import KafkaAutoCommits
from shared.pitfalls.naive_dual_write import Publish, publishing_after_commit
from shared.pitfalls.no_debounce import published_at_once
from shared.pitfalls.no_dedup import NoDedup
from shared.pitfalls.no_sequence_check import NoSequenceCheck
from shared.pitfalls.unkeyed import no_key
from shared.service.settings import ServiceSettings
from shared.writing.relay import aggregate_key
from shared.writing.uow import Coarse, debounced


@dataclass(frozen=True)
class Strategies:
    """What a service is built with: the protections, or the pitfalls switched on."""

    new_outbox: OutboxFactory
    coarse: Coarse
    dedup: Dedup
    sequence_check: SequenceCheck
    key_of: Callable[[str], str | None]
    new_offsets: Callable[[], OffsetPolicy]  # one per consumer: it keeps what is done


def strategies(settings: ServiceSettings, publish: Publish) -> Strategies:
    """The strategies ``settings`` ask for; ``publish`` is the producer's, for the naive
    dual write."""
    return Strategies(
        new_outbox=(
            publishing_after_commit(publish)
            if settings.pitfall_naive_dual_write
            else PostgresOutbox
        ),
        coarse=published_at_once if settings.pitfall_no_debounce else debounced,
        dedup=NoDedup() if settings.pitfall_no_dedup else Dedup(),
        sequence_check=(
            NoSequenceCheck() if settings.pitfall_no_sequence_check else SequenceCheck()
        ),
        key_of=no_key if settings.pitfall_unkeyed else aggregate_key,
        new_offsets=KafkaAutoCommits if settings.pitfall_auto_commit else CommitWhatIsDone,
    )
