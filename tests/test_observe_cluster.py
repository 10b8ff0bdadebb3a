"""``malstrom coordinator --http`` end to end: a coordinator and two ``malstrom worker``
processes run a job with known counts; ``/metrics`` has every operator's records, the user
counter and histogram, and each source part's lag; ``/healthz`` answers; the stop action
takes the token; the workers' log lines name job, worker and operator."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from jobs import counted_app
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
APP = f"{ROOT / 'tests' / 'jobs' / 'counted_app.py'}:build"
MALSTROM = [sys.executable, "-m", "malstrom.cli"]
TOKEN = "e2e-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _scrape(url: str) -> dict[str, Any]:
    """Per metric family: its samples as ``{(sample name, labels...): value}``."""
    code, body = _call(url + "metrics")
    assert code == 200
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(body.decode()):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def _per_operator(fams: dict[str, Any], name: str) -> dict[str, float]:
    """A per-operator counter summed over the workers."""
    out: dict[str, float] = defaultdict(float)
    for (_, labels), value in fams.get(name, {}).items():
        out[dict(labels)["operator"]] += value
    return out


def _wait_for_line(path: Path, pattern: str, proc: subprocess.Popen[Any], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m := re.search(pattern, path.read_text()):
            return m.group(1)
        assert proc.poll() is None, path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in {path}: {path.read_text()}")


def test_coordinator_http_serves_the_cluster_metrics(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, MALSTROM_JOB="e2e-job", MALSTROM_TOKEN=TOKEN, MALSTROM_LOG_FORMAT="text")
    procs: list[subprocess.Popen[Any]] = []

    def spawn(name: str, *args: str) -> subprocess.Popen[Any]:
        err = open(tmp_path / f"{name}.err", "w")  # noqa: SIM115 - closed with the test
        p = subprocess.Popen([*MALSTROM, *args], env=env, stdout=err, stderr=err, text=True)
        procs.append(p)
        return p

    try:
        coord = spawn(
            "coordinator", "coordinator", APP, "-w", "2", "--listen", addr, "--http", "127.0.0.1:0"
        )
        url = _wait_for_line(
            tmp_path / "coordinator.err", r"dashboard and metrics at (http://\S+/)", coord, 60
        )
        assert not url.endswith(":0/")
        for i in range(2):
            spawn(f"worker{i}", "worker", APP, "--coordinator", addr, "-v")
        n = counted_app.PARTS * counted_app.PER_PART
        evens = n // 2
        deadline = time.monotonic() + 120
        while True:
            fams = _scrape(url)
            outs = _per_operator(fams, "malstrom_records_out")
            ins = _per_operator(fams, "malstrom_records_in")
            lags = fams.get("malstrom_source_lag", {})
            if ins.get("out") == evens and lags and not any(lags.values()):
                break
            assert time.monotonic() < deadline, (outs, ins, lags)
            time.sleep(0.3)
        # Every record counted once, per operator, summed over the two workers.
        assert outs["numbers"] == n
        assert ins["even"] == n and outs["even"] == evens
        assert ins["by-key"] == evens and outs["by-key"] == evens
        assert ins["sum"] == evens and outs["sum"] == evens
        workers = {dict(labels)["worker"] for _, labels in fams["malstrom_records_in"]}
        assert workers == {"0", "1"}
        # The exchange moved about half of the records between the workers, and both ends
        # of each move counted it.
        routed = sum(fams["malstrom_records_routed"].values())
        received = sum(fams["malstrom_records_received"].values())
        assert 0 < routed == received < evens
        # The user counter and histogram, summed over the workers.
        assert sum(fams["malstrom_user_evens"].values()) == evens
        hist = fams["malstrom_user_kept_values"]
        count = sum(v for (name, _), v in hist.items() if name.endswith("_count"))
        below_1000 = sum(
            v for (name, labels), v in hist.items() if dict(labels).get("le") == "1000.0"
        )
        assert count == evens and below_1000 == 501  # 0, 2, ..., 1000
        # One lag per source part, labelled with its worker, all read to the end.
        parts = {dict(labels)["part"] for _, labels in lags}
        assert parts == {str(p) for p in range(counted_app.PARTS)}
        code, body = _call(url + "healthz")
        assert code == 200 and json.loads(body) == {"ok": True, "phase": "running"}
        code, state = _call(url + "api/state")
        assert code == 200 and json.loads(state)["job"] == "e2e-job"
        # The actions take the job's token.
        assert _call(url + "api/stop", "POST")[0] == 401
        assert _call(url + "api/stop", "POST", token="wrong")[0] == 401
        code, _ = _call(url + "api/stop", "POST", token=TOKEN)
        assert code == 200
        assert coord.wait(120) == 0, (tmp_path / "coordinator.err").read_text()
        for p in procs:
            assert p.wait(60) == 0
        # The workers' lines name the job and the worker, and the operator they came from.
        logs = "".join((tmp_path / f"worker{i}.err").read_text() for i in range(2))
        assert re.search(r"INFO \[job e2e-job worker [01]\] joined ", logs), logs
        assert re.search(r"WARNING \[job e2e-job worker [01] operator even\] kept 10", logs), logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
