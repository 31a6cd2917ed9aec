"""``PITFALL_UNKEYED``: records published without a key.

Kafka orders records within a partition only, and the key picks the partition: with the
aggregate id as key, one aggregate's events share a partition and arrive in order. Without
one, they spread over partitions and consumers see them in any order: the sequence check
parks and resumes them; without it (``PITFALL_NO_SEQUENCE_CHECK``) they are applied out of
order.
"""

from __future__ import annotations


def no_key(message_key: str) -> str | None:
    return None
