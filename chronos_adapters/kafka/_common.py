"""What the Kafka adapters share: topic creation and error translation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from chronos_core.errors import BrokerUnavailable

__all__ = ["TopicKeeper", "ensure_topics", "unavailable"]

log = logging.getLogger("chronos.kafka")

_TOPIC_ALREADY_EXISTS = 36


def unavailable(what: str, exc: BaseException) -> BrokerUnavailable:
    """The core's "broker unreachable" error for a Kafka failure (the message names no credentials)."""
    return BrokerUnavailable(f"kafka {what}: {type(exc).__name__}: {exc}")


async def ensure_topics(bootstrap: str, topics: Mapping[str, int], *, replication_factor: int = 1,
                        client_id: str = "chronos-admin") -> list[str]:
    """Create the topics that do not exist yet, with the given partition counts; the names of those it
    created. An existing topic is left as it is (its partition count is not changed).
    :class:`BrokerUnavailable` if the broker cannot be reached or refuses."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, num_partitions=n, replication_factor=replication_factor)
                   for name, n in topics.items() if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        created = []
        for err in response.topic_errors:
            name, code = err[0], err[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise BrokerUnavailable(f"kafka refused to create topic {name!r}: error {code} {err[2]}")
            if code == 0:
                log.info("created topic %s (%d partitions)", name, topics[name])
                created.append(name)
        return created
    except KafkaError as exc:
        raise unavailable("topic creation", exc) from exc
    finally:
        await admin.close()


class TopicKeeper:
    """Creates an adapter's topics again when the broker lost them: a broker restarted without its data
    (or a topic deleted) must not leave the processes sending into nothing and committing offsets for
    ever until they restart (topics are otherwise created at start only). Two ways, both at most once per
    ``every`` seconds: when a send says the topic or partition is unknown
    (:meth:`recreate_if_missing`), and by looking every ``every`` seconds (:meth:`start`): a broker may
    also accept records for a topic it does not have, and the clients retry unknown-partition errors of
    fetches and offset commits among themselves without a word to the caller."""

    def __init__(self, bootstrap: str, topics: Mapping[str, int], *, replication_factor: int = 1,
                 client_id: str = "chronos-admin", enabled: bool = True, every: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topics = dict(topics)
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.enabled = enabled
        self.every = every
        self._last = float("-inf")
        self.recreated = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Look for lost topics every ``every`` seconds, in a background task."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="chronos-kafka-topics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if time.monotonic() - self._last >= self.every:
                await self._recreate()

    async def _recreate(self) -> bool:
        self._last = time.monotonic()
        try:
            created = await ensure_topics(self.bootstrap, self.topics,
                                          replication_factor=self.replication_factor,
                                          client_id=self.client_id)
        except Exception as err:  # BrokerUnavailable: the broker is down; the next look tries again
            log.debug("looking for lost topics of %s: %s", ", ".join(self.topics), err)
            return False
        if created:
            self.recreated += 1
            log.warning("the broker did not have topic(s) %s any more (restarted without its data?): "
                        "created them again", ", ".join(created))
        return True

    @staticmethod
    def says_missing(exc: BaseException | None) -> bool:
        return isinstance(exc, UnknownTopicOrPartitionError)

    async def recreate_if_missing(self, exc: BaseException | None) -> bool:
        """If ``exc`` says a topic or partition is unknown, create the missing topics; whether it did
        (the caller then tries once more). Never raises: a broker still down fails the caller's retry."""
        if not self.enabled or not self.says_missing(exc):
            return False
        if time.monotonic() - self._last < self.every:
            return False
        return await self._recreate()
