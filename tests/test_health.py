"""What Kubernetes sees of the processes: `malstrom coordinator` and `malstrom worker` (the
worker on a fixed data port) answer `grpc.health.v1.Health/Check` while the job runs, and the
coordinator leaves the job's final status in its termination log."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import APP, MALSTROM, Cluster, check, free_port
from test_transport import health_check

pytestmark = pytest.mark.timeout(240)


def test_coordinator_and_workers_on_fixed_ports_answer_health_probes(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2

    c = Cluster(tmp_path, workers=2, delay=0.05)
    ports: list[int] = []
    while len(ports) < 2:  # a port just closed can come back: three distinct ones
        port = free_port()
        if port != c.port and port not in ports:
            ports.append(port)
    try:
        c.coord = c._spawn(
            "coordinator", APP, "-w", "2", "--listen", c.addr,
            "--persistence", str(tmp_path / "snap"), "--snapshot-interval", "0.2",
            "--termination-log", str(tmp_path / "termination-log"),
        )  # fmt: skip
        for port in ports:
            c._spawn("worker", *c.worker_args(), "--listen", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            st = c.admin("status")
            if st.returncode == 0 and json.loads(st.stdout)["phase"] == "running":
                break
            if c.coord.poll() is not None:  # it exited: say why, not only "cannot reach"
                err = c.coord.stderr.read() if c.coord.stderr else ""
                raise AssertionError(f"coordinator exited {c.coord.returncode}: {err}")
            assert time.monotonic() < deadline, st.stderr
            time.sleep(0.1)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health_check(c.addr) == serving
        for port in ports:
            assert health_check(f"127.0.0.1:{port}") == serving
        assert c.wait() == [0, 0, 0]
    finally:
        c.close()
    check(tmp_path)
    final = json.loads((tmp_path / "termination-log").read_text())
    assert final["phase"] == "finished" and isinstance(final["last_committed"], int)


def test_a_bad_worker_listen_port_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [*MALSTROM, "worker", APP, "--coordinator", "127.0.0.1:1", "--listen", "0.0.0.0:http"],
        env=dict(os.environ, MALSTROM_JOB="j", MALSTROM_TOKEN="t"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "--listen '0.0.0.0:http': the port must be a number" in r.stderr
