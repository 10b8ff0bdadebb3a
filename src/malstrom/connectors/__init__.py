"""Connectors to the systems streams live in, each behind an optional extra.

- :mod:`malstrom.connectors.kafka` (``pip install 'malstrom[kafka]'``): ``KafkaSource`` (one
  part per topic partition, offsets in snapshots, new partitions picked up while running) and
  ``KafkaSink`` (exactly-once through Kafka transactions committed with the job's snapshots,
  or at-least-once through the idempotent producer).
- :mod:`malstrom.connectors.postgres` (``pip install 'malstrom[postgres]'``): ``PostgresSink``
  (exactly-once through two-phase commit tied to the job's snapshots; inserts or upserts).

Each connector module imports its client library only when it is imported itself.
"""
