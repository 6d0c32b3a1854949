"""Kafka adapters (aiokafka): the dispatch queue (runs topic, worker consumer group, manual commits after
``ack``, dead letters) and the event bus (events topic read by every API instance). Needs the ``kafka``
extra."""

from .bus import KafkaEventBus, format_event_id, parse_event_id
from .queue import KafkaDispatchQueue

__all__ = ["KafkaDispatchQueue", "KafkaEventBus", "format_event_id", "parse_event_id"]
