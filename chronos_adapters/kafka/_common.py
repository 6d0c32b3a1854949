"""What the Kafka adapters share: topic creation and error translation."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from chronos_core.errors import StoreUnavailable

__all__ = ["TopicKeeper", "ensure_topics", "unavailable"]

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


class TopicKeeper:
    """Creates an adapter's topics again when the broker says one is missing: a broker restarted without
    its data (or a topic deleted) must not leave every send failing until the processes restart (topics
    are otherwise created at start only). At most once per ``every`` seconds."""

    def __init__(self, bootstrap: str, topics: Mapping[str, int], *, replication_factor: int = 1,
                 client_id: str = "chronos-admin", enabled: bool = True, every: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.topics = dict(topics)
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.enabled = enabled
        self.every = every
        self._last = float("-inf")
        self.recreated = 0

    @staticmethod
    def says_missing(exc: BaseException | None) -> bool:
        return isinstance(exc, UnknownTopicOrPartitionError)

    async def recreate_if_missing(self, exc: BaseException | None) -> bool:
        """If ``exc`` says a topic or partition is unknown, create the missing topics; whether it did
        (the caller then tries once more). Never raises: a broker still down fails the caller's retry."""
        if not self.enabled or not self.says_missing(exc):
            return False
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        try:
            await ensure_topics(self.bootstrap, self.topics, replication_factor=self.replication_factor,
                                client_id=self.client_id)
        except Exception as err:  # StoreUnavailable: the broker went again
            log.warning("a topic of %s is missing and could not be created again: %s",
                        ", ".join(self.topics), err)
            return False
        self.recreated += 1
        log.warning("the broker did not know topic(s) %s (restarted without its data?): created what was "
                    "missing again", ", ".join(self.topics))
        return True
