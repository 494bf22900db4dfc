"""Faust's partition assignor as adstream runs it, set in the app's settings
(`faust.App(PartitionAssignor=...)`), for static group membership.

With `ADSTREAM_INSTANCE_ID` (Kafka's `group.instance.id`, KIP-345; faust-streaming 0.15.3
passes its `consumer_group_instance_id` to aiokafka 0.14's consumer, which joins with it and
sends no LeaveGroup on close) a worker restarted within the session timeout is handed back the
assignment the group's leader made for its previous start, without a rebalance. Faust's
assignor stores the worker's web URL in that assignment and asserts, on receiving one, that it
is the worker's URL now: a worker restarted on another port or address failed in its
consumer's coordination and never got its partitions back. `PartitionAssignor` takes such an
assignment as its own, with its current URL in place of the old one.
"""

from __future__ import annotations

import logging

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from faust.assignor import PartitionAssignor as FaustPartitionAssignor
from faust.assignor.client_assignment import ClientMetadata
from faust.types.assignor import HostToPartitionMap
from typing_extensions import override

log = logging.getLogger(__name__)


class PartitionAssignor(FaustPartitionAssignor):
    @override
    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        metadata: ClientMetadata = ClientMetadata.loads(self._decompress(assignment.user_data))
        old, url = metadata.url, str(self._url)
        if old != url:
            log.info("taking back this worker's assignment of an earlier start, made for %s", old)

            def moved(distribution: HostToPartitionMap) -> HostToPartitionMap:
                return {url if host == old else host: tps for host, tps in distribution.items()}

            metadata = metadata.derive(
                url=url,
                changelog_distribution=moved(metadata.changelog_distribution),
                external_topic_distribution=moved(metadata.external_topic_distribution),
            )
            assignment = ConsumerProtocolMemberAssignment(
                assignment.version, assignment.assignment, self._compress(metadata.dumps())
            )
        super().on_assignment(assignment)
