"""What the Kafka adapters share: topic creation and error translation."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from chronos_core.errors import StoreUnavailable

__all__ = ["ensure_topics", "unavailable"]

log = logging.getLogger("chronos.kafka")

_TOPIC_ALREADY_EXISTS = 36


def unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    """The core's "backend unreachable" error for a Kafka failure (the message names no credentials)."""
    return StoreUnavailable(f"kafka {what}: {type(exc).__name__}: {exc}")


async def ensure_topics(bootstrap: str, topics: Mapping[str, int], *, replication_factor: int = 1,
                        client_id: str = "chronos-admin") -> None:
    """Create the topics that do not exist yet, with the given partition counts. An existing topic is
    left as it is (its partition count is not changed). :class:`StoreUnavailable` if the broker cannot
    be reached or refuses."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, num_partitions=n, replication_factor=replication_factor)
                   for name, n in topics.items() if name not in existing]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for err in response.topic_errors:
            name, code = err[0], err[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise StoreUnavailable(f"kafka refused to create topic {name!r}: error {code} {err[2]}")
            if code == 0:
                log.info("created topic %s (%d partitions)", name, topics[name])
    except KafkaError as exc:
        raise unavailable("topic creation", exc) from exc
    finally:
        await admin.close()
