"""Coordinator side of the metrics: what every worker reported, summed up per operator, with
a few minutes of history, the snapshot history and the job's events (rescales, restarts).

Workers send cumulative counters with each heartbeat (see ``_collect``). A worker process
that restarts starts counting from zero again, so totals here grow by the difference between
two reports of the same process (or by the whole value when it went down): the Prometheus
counters served from them never go backwards.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from malstrom.observe._collect import OP_FIELDS

__all__ = ["JobObserver", "describe_graph"]

HISTORY = 600
"""Seconds of throughput and lag history kept (one point a second: ten minutes)."""

_IN, _OUT, _BATCHES, _BUSY, _LATE, _FRONTIER, _QUEUE, _KEYS, _HAS_FRONTIER = range(len(OP_FIELDS))
_SUMMED = (_IN, _OUT, _BATCHES, _BUSY, _LATE)


def describe_graph(graph: Any) -> dict[str, Any]:
    """Operators and edges of a built graph, as plain data (for the dashboard)."""
    nodes = []
    edges = []
    for node in graph.nodes:
        nodes.append({"name": node.name, "root": bool(node.is_root)})
        for src, port in node.inputs:
            edges.append({"from": src.name, "to": node.name, "port": port})
    return {"nodes": nodes, "edges": edges}


@dataclass
class _WorkerSeen:
    attempt: int
    last: dict[str, Any]
    received: float  # wall time of the last report
    pid: int | None = None


@dataclass
class _Sample:
    t: float
    totals: dict[str, list[float]]


@dataclass
class JobObserver:
    """Aggregates worker reports and job events; read by the HTTP server, ``status`` and the
    progress line (any thread)."""

    job: str
    graph: dict[str, Any] = field(default_factory=lambda: {"nodes": [], "edges": []})
    status: Callable[[], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[int, _WorkerSeen] = {}
        # (worker, operator) -> cumulative [in, out, batches, busy, late] over every attempt
        self._totals: dict[tuple[int, str], list[float]] = {}
        self._gauges: dict[tuple[int, str], list[Any]] = {}
        self._peers: dict[tuple[int, int], list[int]] = {}
        self._routed: dict[tuple[int, int], list[int]] = {}  # records sent, received
        self._backpressured: dict[int, float] = {}
        self._user: dict[tuple[str, int, str], float] = {}
        self._user_help: dict[str, str] = {}
        # (name, worker, operator) -> [bounds, buckets, sum, count] over every attempt
        self._hist: dict[tuple[str, int, str], list[Any]] = {}
        # worker -> operator -> [(part, lag)]: the latest report's, not summed
        self._source_lags: dict[int, dict[str, list[tuple[str, int]]]] = {}
        self._saturated: dict[int, int] = {}
        self.kinds: dict[str, str] = {}
        self.sizes: dict[str, int | None] = {}
        self._samples: deque[_Sample] = deque(maxlen=4)
        self.series: deque[tuple[float, float, float | None]] = deque(maxlen=HISTORY)
        self.rates: dict[str, float] = {}
        self.rates_out: dict[str, float] = {}
        self.lags: dict[str, float | None] = {}
        self.snapshots: deque[dict[str, Any]] = deque(maxlen=50)
        self.events: deque[dict[str, Any]] = deque(maxlen=100)
        self._snap_started: dict[int, float] = {}
        self._rescale_started: float | None = None
        self.rescales = 0
        self.rescale_seconds: float | None = None
        self.restarts = 0
        self.snapshots_taken = 0
        self.started = time.time()

    # ----- input (coordinator thread) ------------------------------------------------------
    def report(self, worker: int, attempt: int, rep: dict[str, Any]) -> None:
        """A heartbeat's metrics from ``worker`` of job attempt ``attempt``."""
        with self._lock:
            seen = self._workers.get(worker)
            prev = seen.last if seen is not None and seen.attempt == attempt else None
            self._workers[worker] = _WorkerSeen(attempt, rep, time.time(), rep.get("pid"))
            self.kinds.update(rep.get("kinds", {}))
            self.sizes.update(rep.get("sizes", {}))
            prev_ops = prev["ops"] if prev is not None else {}
            for name, vals in rep["ops"].items():
                tot = self._totals.setdefault((worker, name), [0, 0, 0, 0.0, 0])
                old = prev_ops.get(name)
                for i in _SUMMED:
                    base = old[i] if old is not None and old[i] <= vals[i] else 0
                    tot[i] += vals[i] - base
                self._gauges[(worker, name)] = vals
            prev_peers = prev["peers"] if prev is not None else {}
            for peer, (sent, recv) in rep.get("peers", {}).items():
                tot_p = self._peers.setdefault((worker, peer), [0, 0])
                old_p = prev_peers.get(peer, (0, 0))
                tot_p[0] += sent - (old_p[0] if old_p[0] <= sent else 0)
                tot_p[1] += recv - (old_p[1] if old_p[1] <= recv else 0)
            prev_routed = prev.get("routed", {}) if prev is not None else {}
            for peer, (sent, recv) in rep.get("routed", {}).items():
                tot_r = self._routed.setdefault((worker, peer), [0, 0])
                old_r = prev_routed.get(peer, (0, 0))
                tot_r[0] += sent - (old_r[0] if old_r[0] <= sent else 0)
                tot_r[1] += recv - (old_r[1] if old_r[1] <= recv else 0)
            bp = float(rep.get("backpressured", 0.0))
            old_bp = float(prev.get("backpressured", 0.0)) if prev is not None else 0.0
            self._backpressured[worker] = (
                self._backpressured.get(worker, 0.0) + bp - (old_bp if old_bp <= bp else 0.0)
            )
            prev_user = prev["user"] if prev is not None else {}
            for uname, entries in rep.get("user", {}).items():
                before = {op: v for op, v, _ in prev_user.get(uname, [])}
                for op, value, desc in entries:
                    key = (uname, worker, op)
                    old_v = before.get(op, 0.0)
                    self._user[key] = (
                        self._user.get(key, 0.0) + value - (old_v if old_v <= value else 0.0)
                    )
                    if desc:
                        self._user_help[uname] = desc
            prev_hist = prev.get("user_hist", {}) if prev is not None else {}
            for hname, hentries in rep.get("user_hist", {}).items():
                hbefore = {e[0]: e for e in prev_hist.get(hname, [])}
                for op, bounds, buckets, hsum, hcount, desc in hentries:
                    self._add_histogram(
                        (hname, worker, op), hbefore.get(op), bounds, buckets, hsum, hcount
                    )
                    if desc:
                        self._user_help[hname] = desc
            self._source_lags[worker] = {
                op: [(str(part), int(n)) for part, n in rows]
                for op, rows in rep.get("source_lag", {}).items()
            }
            self._saturated[worker] = int(rep.get("saturated", 0))
            self._sample()

    def _add_histogram(
        self,
        key: tuple[str, int, str],
        old: Any,
        bounds: list[float],
        buckets: list[int],
        hsum: float,
        hcount: int,
    ) -> None:
        """Add what a histogram observed since the worker's previous report (all of it after
        a restart, when its count went back)."""
        tot = self._hist.get(key)
        if tot is None or list(tot[0]) != list(bounds):
            tot = self._hist[key] = [list(bounds), [0] * len(buckets), 0.0, 0]
        if old is not None and old[4] <= hcount and len(old[2]) == len(buckets):
            buckets = [b - a for a, b in zip(old[2], buckets)]
            hsum, hcount = hsum - old[3], hcount - old[4]
        tot[1] = [a + b for a, b in zip(tot[1], buckets)]
        tot[2] += hsum
        tot[3] += hcount

    def event(self, kind: str, **data: Any) -> None:
        """A job event: ``snapshot_started``/``snapshot_committed`` (version, size),
        ``rescale_started``/``rescale_done`` (workers), ``failed`` (reason), ``restart``."""
        now = time.time()
        with self._lock:
            if kind == "snapshot_started":
                self._snap_started[data["version"]] = now
                return
            if kind == "snapshot_committed":
                started = self._snap_started.pop(data["version"], now)
                self.snapshots_taken += 1
                self.snapshots.append(
                    {
                        "version": data["version"],
                        "committed": now,
                        "duration": now - started,
                        "size": data.get("size", 0),
                        "final": bool(data.get("final", False)),
                    }
                )
                return
            if kind == "rescale_started":
                self._rescale_started = now
                text = f"rescale from {data.get('before')} to {data.get('workers')} workers"
            elif kind == "rescale_done":
                self.rescales += 1
                if self._rescale_started is not None:
                    self.rescale_seconds = now - self._rescale_started
                self._rescale_started = None
                text = f"rescaled to {data.get('workers')} workers"
                if self.rescale_seconds is not None:
                    text += f" in {self.rescale_seconds:.2f} s"
            elif kind == "restart":
                self.restarts += 1
                text = f"restart {data.get('number')}: {data.get('reason')}"
            elif kind == "failed":
                text = f"attempt failed: {data.get('reason')}"
            elif kind == "workers_gone":
                for w in data.get("workers", ()):
                    self._workers.pop(w, None)
                return
            else:
                text = str(data)
            self.events.append({"t": now, "kind": kind, "text": text})

    # ----- derived --------------------------------------------------------------------------
    def _op_totals(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for (_w, name), tot in self._totals.items():
            acc = out.setdefault(name, [0, 0, 0, 0.0, 0])
            for i in range(len(acc)):
                acc[i] += tot[i]
        return out

    def _sample(self) -> None:
        """One point of history a second: records/s per operator, throughput, lag."""
        now = time.time()
        if self._samples and now - self._samples[-1].t < 0.9:
            return
        totals = self._op_totals()
        self._samples.append(_Sample(now, totals))
        self.lags = self._lags(now)
        if len(self._samples) < 2:
            return
        first = self._samples[0]
        dt = now - first.t
        rates: dict[str, float] = {}
        rates_out: dict[str, float] = {}
        for name, tot in totals.items():
            before = first.totals.get(name, [0, 0])
            out_rate = max(0.0, (tot[_OUT] - before[_OUT]) / dt) if dt > 0 else 0.0
            # A source counts what it produces, any other operator what it takes in.
            in_rate = max(0.0, (tot[_IN] - before[_IN]) / dt) if dt > 0 else 0.0
            rates[name] = out_rate if self._is_root(name) else in_rate
            rates_out[name] = out_rate
        self.rates = rates
        self.rates_out = rates_out
        throughput = sum(r for n, r in rates.items() if self._is_root(n))
        lag_values = [v for v in self.lags.values() if v is not None]
        self.series.append((now, throughput, max(lag_values) if lag_values else None))

    def _is_root(self, name: str) -> bool:
        return any(n["name"] == name and n["root"] for n in self.graph["nodes"])

    def _lags(self, now: float) -> dict[str, float | None]:
        """Per operator: wall time minus the event-time frontier (the slowest worker's)."""
        lows: dict[str, float | None] = {}
        for (w, name), g in self._gauges.items():
            if w not in self._workers or not g[_HAS_FRONTIER]:
                continue
            f = g[_FRONTIER]
            cur = lows.get(name, float("inf"))
            if f is None or cur is None:
                lows[name] = None
            else:
                lows[name] = min(cur, f)
        return {n: (max(0.0, now - f) if f is not None else None) for n, f in lows.items()}

    def _done(self, totals: dict[str, list[float]]) -> float | None:
        """Fraction of the input read, when every source knows its size (bounded sources).
        Records replayed after a restart count again, so it is capped below 1 until the
        job finishes."""
        roots = [n["name"] for n in self.graph["nodes"] if n["root"]]
        sizes = [self.sizes.get(r) for r in roots]
        if not roots or any(s is None for s in sizes):
            return None
        total = sum(s for s in sizes if s is not None)
        if total == 0:
            return 1.0
        read = sum(totals.get(r, [0, 0])[_OUT] for r in roots)
        return min(read / total, 0.999)

    # ----- output (any thread) ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything the dashboard and ``malstrom status`` show, as JSON-able data."""
        status = self.status() if self.status is not None else {}
        with self._lock:
            totals = self._op_totals()
            now = time.time()
            ops = []
            for node in self.graph["nodes"]:
                name = node["name"]
                tot = totals.get(name, [0, 0, 0, 0.0, 0])
                keys = [
                    g[_KEYS]
                    for (w, n), g in self._gauges.items()
                    if n == name and g[_KEYS] is not None
                ]
                queue = sum(g[_QUEUE] for (w, n), g in self._gauges.items() if n == name)
                told = [
                    by_op[name]
                    for w, by_op in self._source_lags.items()
                    if w in self._workers and name in by_op
                ]
                ops.append(
                    {
                        "name": name,
                        "kind": self.kinds.get(name, ""),
                        "root": node["root"],
                        "records_in": tot[_IN],
                        "records_out": tot[_OUT],
                        "batches": tot[_BATCHES],
                        "busy_seconds": round(tot[_BUSY], 6),
                        "late": tot[_LATE],
                        "rate": round(self.rates.get(name, 0.0), 1),
                        "rate_out": round(self.rates_out.get(name, 0.0), 1),
                        "lag": self.lags.get(name),
                        "queue": queue,
                        "keys": sum(keys) if keys else None,
                        "source_lag": (
                            sum(lag for rows in told for _part, lag in rows) if told else None
                        ),
                    }
                )
            source_parts = [
                {"operator": op, "worker": w, "part": part, "lag": lag}
                for w, by_op in sorted(self._source_lags.items())
                if w in self._workers
                for op, rows in sorted(by_op.items())
                for part, lag in rows
            ]
            workers = [
                {
                    "id": w,
                    "attempt": s.attempt,
                    "last_report_age": round(now - s.received, 2),
                    "saturated_pipes": self._saturated.get(w, 0),
                    "backpressured_seconds": round(self._backpressured.get(w, 0.0), 3),
                }
                for w, s in sorted(self._workers.items())
                if "workers" not in status or w in status["workers"]
            ]
            last = self.snapshots[-1] if self.snapshots else None
            return {
                "job": self.job,
                "now": now,
                "uptime": now - self.started,
                "status": status,
                "graph": self.graph,
                "operators": ops,
                "source_parts": source_parts,
                "workers": workers,
                "series": [list(p) for p in self.series],
                "snapshots": list(self.snapshots),
                "last_snapshot": None if last is None else {**last, "age": now - last["committed"]},
                "events": list(self.events),
                "rescales": self.rescales,
                "rescale_seconds": self.rescale_seconds,
                "restarts": self.restarts,
                "done": self._done(totals),
                "throughput": self.series[-1][1] if self.series else 0.0,
                "lag": self.series[-1][2] if self.series else None,
            }

    def prometheus_families(self) -> list[Any]:
        """The metric families of ``/metrics`` (prometheus-client objects)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        job = self.job
        opl = ["job", "worker", "operator"]
        fams: dict[str, Any] = {}

        def fam(cls: Any, name: str, doc: str, labels: list[str]) -> Any:
            f = fams.get(name)
            if f is None:
                f = fams[name] = cls(name, doc, labels=labels)
            return f

        status = self.status() if self.status is not None else {}
        with self._lock:
            now = time.time()
            counters = (
                ("malstrom_records_in", "Records taken in by the operator", _IN),
                ("malstrom_records_out", "Records emitted by the operator", _OUT),
                ("malstrom_batches", "Batches taken in by the operator", _BATCHES),
                ("malstrom_busy_seconds", "Wall time the operator spent working", _BUSY),
                ("malstrom_late_records", "Records the operator found late", _LATE),
            )
            for (w, name), tot in sorted(self._totals.items()):
                lv = [job, str(w), name]
                for metric, doc, i in counters:
                    fam(CounterMetricFamily, metric, doc, opl).add_metric(lv, tot[i])
            for (w, name), g in sorted(self._gauges.items()):
                if w not in self._workers:
                    continue
                lv = [job, str(w), name]
                fam(
                    GaugeMetricFamily,
                    "malstrom_queue_depth",
                    "Messages waiting in the operator's input channels",
                    opl,
                ).add_metric(lv, g[_QUEUE])
                if g[_KEYS] is not None:
                    fam(
                        GaugeMetricFamily, "malstrom_keys", "Keys the operator holds state for", opl
                    ).add_metric(lv, g[_KEYS])
                if g[_FRONTIER] is not None:
                    fam(
                        GaugeMetricFamily,
                        "malstrom_event_time_frontier_seconds",
                        "The operator's event-time frontier (epoch), as Unix time",
                        opl,
                    ).add_metric(lv, g[_FRONTIER])
                    age = now - self._workers[w].received
                    fam(
                        GaugeMetricFamily,
                        "malstrom_event_time_lag_seconds",
                        "Wall time minus the operator's event-time frontier",
                        opl,
                    ).add_metric(lv, max(0.0, self._workers[w].last["t"] + age - g[_FRONTIER]))
            for w, by_op in sorted(self._source_lags.items()):
                if w not in self._workers:
                    continue
                for op_name, rows in sorted(by_op.items()):
                    for part, lag in rows:
                        fam(
                            GaugeMetricFamily,
                            "malstrom_source_lag",
                            "What the source part has not read yet (records or bytes, as the "
                            "source tells)",
                            ["job", "worker", "operator", "part"],
                        ).add_metric([job, str(w), op_name, part], lag)
            pl = ["job", "worker", "peer"]
            for (w, peer), (sent, recv) in sorted(self._peers.items()):
                lv = [job, str(w), str(peer)]
                fam(
                    CounterMetricFamily, "malstrom_bytes_sent", "Bytes sent to the peer", pl
                ).add_metric(lv, sent)
                fam(
                    CounterMetricFamily,
                    "malstrom_bytes_received",
                    "Bytes received from the peer",
                    pl,
                ).add_metric(lv, recv)
            for (w, peer), (sent, recv) in sorted(self._routed.items()):
                lv = [job, str(w), str(peer)]
                fam(
                    CounterMetricFamily,
                    "malstrom_records_routed",
                    "Records sent to the peer (key_distribute)",
                    pl,
                ).add_metric(lv, sent)
                fam(
                    CounterMetricFamily,
                    "malstrom_records_received",
                    "Records received from the peer (key_distribute)",
                    pl,
                ).add_metric(lv, recv)
            for w, secs in sorted(self._backpressured.items()):
                fam(
                    CounterMetricFamily,
                    "malstrom_backpressured_seconds",
                    "Time the worker held its intakes back: a pipe to a peer was saturated",
                    ["job", "worker"],
                ).add_metric([job, str(w)], secs)
            for w, n in sorted(self._saturated.items()):
                if w in self._workers:
                    fam(
                        GaugeMetricFamily,
                        "malstrom_backpressured_pipes",
                        "Pipes to peers that are out of credit (the worker holds its intake)",
                        ["job", "worker"],
                    ).add_metric([job, str(w)], n)
            for (uname, w, op), value in sorted(self._user.items()):
                fam(
                    CounterMetricFamily,
                    f"malstrom_user_{uname}",
                    self._user_help.get(uname) or f"User counter {uname}",
                    opl,
                ).add_metric([job, str(w), op], value)
            for (hname, w, op), (bounds, buckets, hsum, _count) in sorted(self._hist.items()):
                cumulative = []
                acc = 0
                for bound, n in zip([*bounds, float("inf")], buckets):
                    acc += n
                    cumulative.append(("+Inf" if bound == float("inf") else repr(bound), acc))
                fam(
                    HistogramMetricFamily,
                    f"malstrom_user_{hname}",
                    self._user_help.get(hname) or f"User histogram {hname}",
                    opl,
                ).add_metric([job, str(w), op], cumulative, sum_value=hsum)
            jl = ["job"]
            fam(GaugeMetricFamily, "malstrom_workers", "Workers of the job", jl).add_metric(
                [job], len(status.get("workers", self._workers))
            )
            fam(
                CounterMetricFamily, "malstrom_restarts", "Restarts of the job from a snapshot", jl
            ).add_metric([job], self.restarts)
            fam(CounterMetricFamily, "malstrom_rescales", "Rescales completed", jl).add_metric(
                [job], self.rescales
            )
            if self.rescale_seconds is not None:
                fam(
                    GaugeMetricFamily,
                    "malstrom_rescale_last_duration_seconds",
                    "Duration of the last rescale",
                    jl,
                ).add_metric([job], self.rescale_seconds)
            fam(CounterMetricFamily, "malstrom_snapshots", "Snapshots committed", jl).add_metric(
                [job], self.snapshots_taken
            )
            if self.snapshots:
                last = self.snapshots[-1]
                for metric, doc, value in (
                    (
                        "malstrom_snapshot_last_version",
                        "Version of the last committed snapshot",
                        last["version"],
                    ),
                    (
                        "malstrom_snapshot_last_duration_seconds",
                        "Barrier injection to commit of the last snapshot",
                        last["duration"],
                    ),
                    (
                        "malstrom_snapshot_last_size_bytes",
                        "Bytes stored by the last snapshot",
                        last["size"],
                    ),
                    (
                        "malstrom_snapshot_last_age_seconds",
                        "Seconds since the last commit",
                        now - last["committed"],
                    ),
                ):
                    fam(GaugeMetricFamily, metric, doc, jl).add_metric([job], value)
            phase = str(status.get("phase", "running"))
            fam(
                GaugeMetricFamily,
                "malstrom_job_phase",
                "1 for the job's current phase",
                ["job", "phase"],
            ).add_metric([job, phase], 1)
        return list(fams.values())
