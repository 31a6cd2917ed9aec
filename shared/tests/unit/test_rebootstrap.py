"""A client that no known node answers asks its bootstrap list again (KIP-1102 for aiokafka).
The live case, a node killed right after the whole cluster restarted, is in
tests/e2e/test_recovery.py."""

from __future__ import annotations

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaConnectionError

from shared.kafka import rebootstrapping


class Client:
    """An aiokafka client whose known nodes answer (or not) and whose bootstrap is recorded."""

    def __init__(self, *, known_nodes_answer: bool, bootstrap_answers: bool = True) -> None:
        self.client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1,127.0.0.1:2")
        self.bootstraps = 0

        async def from_known_nodes(cluster: ClusterMetadata, topics: object) -> bool:
            return known_nodes_answer

        async def bootstrap() -> None:
            self.bootstraps += 1
            if not bootstrap_answers:
                raise KafkaConnectionError("nothing on the list answers")

        self.client._metadata_update = from_known_nodes
        self.client.bootstrap = bootstrap
        rebootstrapping(self.client)

    async def update(self, cluster: ClusterMetadata | None = None) -> bool:
        result: bool = await self.client._metadata_update(cluster or self.client.cluster, set())
        return result


async def test_when_no_known_node_answers_the_client_bootstraps_again() -> None:
    client = Client(known_nodes_answer=False)
    assert await client.update()
    assert client.bootstraps == 1


async def test_while_a_known_node_answers_the_bootstrap_list_is_left_alone() -> None:
    client = Client(known_nodes_answer=True)
    assert await client.update()
    assert client.bootstraps == 0


@pytest.mark.parametrize("other_cluster", [False, True])
async def test_a_failed_bootstrap_or_a_private_lookup_stays_a_failure(other_cluster: bool) -> None:
    client = Client(known_nodes_answer=False, bootstrap_answers=False)
    assert not await client.update(ClusterMetadata() if other_cluster else None)
    assert client.bootstraps == (0 if other_cluster else 1)
