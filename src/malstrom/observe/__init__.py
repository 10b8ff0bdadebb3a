"""Seeing a running job: per-operator metrics, a Prometheus endpoint, a live dashboard.

Workers count records, batches and busy time per operator (once per batch, never per
record) and send the counts to the coordinator with each heartbeat. The coordinator sums
them up; with ``http="HOST:PORT"`` on a runtime (``--http`` on the command line) it serves

- ``/metrics``: Prometheus text format, labelled ``job``, ``worker``, ``operator``;
- ``/``: a live dashboard (job graph with records/s, workers, throughput and event-time lag,
  snapshots, rescales and restarts; snapshot / rescale / stop with the job's admin token);
- ``/healthz``: 200 while the job runs or ended well, 503 once it failed.

User functions may count things of their own::

    from malstrom.observe import counter

    def parse(line):
        if not line:
            counter("empty_lines", "lines without content").inc()
        ...

which ``/metrics`` serves as ``malstrom_user_empty_lines_total{operator="parse", ...}``.
"""

from malstrom.observe._user import Counter, counter

__all__ = ["Counter", "counter"]
