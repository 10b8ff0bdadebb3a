"""Seeing a running job: per-operator metrics, a Prometheus endpoint, a live dashboard.

Workers count records, batches and busy time per operator (once per batch, never per
record) and send the counts to the coordinator with each heartbeat. The coordinator sums
them up; with ``http="HOST:PORT"`` on a runtime (``--http`` on the command line) it serves

- ``/metrics``: Prometheus text format, labelled ``job``, ``worker``, ``operator``;
- ``/``: a live dashboard (job graph with records/s, workers, throughput and event-time lag,
  snapshots, rescales and restarts; snapshot / rescale / stop with the job's admin token);
- ``/healthz``: 200 while the job runs or ended well, 503 once it failed.

User functions may count and measure things of their own::

    from malstrom.observe import counter, histogram

    def parse(line):
        if not line:
            counter("empty_lines", "lines without content").inc()
        histogram("line_bytes", "line sizes", buckets=(10, 100, 1000)).observe(len(line))
        ...

which ``/metrics`` serves as ``malstrom_user_empty_lines_total{operator="parse", ...}`` and
the histogram ``malstrom_user_line_bytes`` (``_bucket{le=...}``, ``_sum``, ``_count``).
"""

from malstrom.observe._user import DEFAULT_BUCKETS, Counter, Histogram, counter, histogram

__all__ = ["DEFAULT_BUCKETS", "Counter", "Histogram", "counter", "histogram"]
