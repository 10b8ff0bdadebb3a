"""Kafka source and sink (``pip install 'malstrom[kafka]'``, confluent-kafka).

``KafkaSource`` reads topics (one part per partition, the next offset in each snapshot,
partitions added while running picked up); ``KafkaSink`` writes a topic exactly-once (Kafka
transactions committed when the job's snapshot commits) or at-least-once. ``MockCluster``
starts librdkafka's mock Kafka cluster on loopback, for tests and examples.
"""

from malstrom.connectors.kafka._message import KafkaMessage
from malstrom.connectors.kafka._mock import MockCluster
from malstrom.connectors.kafka._sink import KafkaSink
from malstrom.connectors.kafka._source import KafkaSource

__all__ = ["KafkaMessage", "KafkaSink", "KafkaSource", "MockCluster"]
