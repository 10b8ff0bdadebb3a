"""The operator end to end, without a cluster: MalstromJobs on a LocalCluster, whose kubelet
runs the rendered pods as real `malstrom coordinator` / `malstrom worker` processes, and the
operator's own loop (observe -> reconcile -> act, the code kopf runs in a cluster).

Create -> Running; parallelism 2 -> 3 is a live rescale (the same processes keep running, no
restart); suspend -> everything stops with a final snapshot; resume -> restored from it; the
job completes with every record counted exactly once; delete -> gone. Deleting a running
job stops it with a snapshot that a new job resumes from."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs import mp_sums

from malstrom.k8s._local import LocalCluster, run_operator
from malstrom.k8s._runner import Operator
from malstrom.k8s._spec import HTTP_PORT

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
NS = "default"


def job_resource(name: str, parallelism: int, delay: float) -> dict[str, Any]:
    """A MalstromJob as a user writes it: the test job's code from a volume, snapshots and
    outputs on a shared volume (a PersistentVolumeClaim)."""
    return {
        "apiVersion": "malstrom.io/v1",
        "kind": "MalstromJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": "malstrom:test",
            "app": "/opt/tests/jobs/cluster_app.py:build",
            "parallelism": parallelism,
            "persistence": "/var/lib/malstrom/snapshots",
            "snapshotInterval": 0.5,
            "env": [
                {"name": "MALSTROM_TEST_OUT", "value": "/var/lib/malstrom/out"},
                {"name": "MALSTROM_TEST_DELAY", "value": str(delay)},
            ],
            "volumes": [
                {"name": "code", "hostPath": {"path": str(ROOT / "tests")}},
                {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}},
            ],
            "volumeMounts": [
                {"name": "code", "mountPath": "/opt/tests", "readOnly": True},
                {"name": "data", "mountPath": "/var/lib/malstrom"},
            ],
        },
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # The kubelet restarts an exited container at once the first time, then after 10 s,
    # 20 s...; 2 s here keeps the tests short.
    with LocalCluster(tmp_path / "cluster", restart_backoff=2.0, max_backoff=4.0) as c:
        stop = threading.Event()
        loop = threading.Thread(
            target=run_operator,
            args=(c, Operator(c, status_timeout=3.0)),
            kwargs={"stop": stop, "interval": 0.5},
            daemon=True,
        )
        loop.start()
        try:
            yield c
        finally:
            stop.set()
            loop.join(60)


def wait_for(
    cluster: LocalCluster,
    name: str,
    cond: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        job = cluster.get(NS, name)
        status = (job or {}).get("status") or {}
        if not seen or seen[-1] != (status.get("phase"), status.get("message")):
            seen.append((status.get("phase"), status.get("message")))
        if job is not None and cond(status):
            return status
        if time.monotonic() > deadline:
            logs = {p: cluster.pod_log(p)[-1500:] for p in cluster.pids()}
            raise AssertionError(f"{what}: not within {timeout} s; statuses {seen}; logs {logs}")
        time.sleep(0.1)


def coordinator_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    job = cluster.get(NS, name)
    assert job is not None
    observed = Operator(cluster).observe(job)
    assert observed.job is not None, observed.job_error
    return observed.job


def outputs(cluster: LocalCluster, name: str) -> Path:
    return cluster.root / "pvc" / f"{name}-data" / "out"


def check_metrics(cluster: LocalCluster, name: str) -> None:
    """The coordinator's Service serves the job's metrics on its http port; its actions take
    the token."""
    base = f"http://{cluster.service_address(NS, f'{name}-coordinator', HTTP_PORT)}/"
    deadline = time.monotonic() + 60
    text = ""
    while f'malstrom_records_out_total{{job="{name}",operator=' not in text:
        assert time.monotonic() < deadline, text
        try:
            with urllib.request.urlopen(base + "metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            pass
        time.sleep(0.3)
    assert f'malstrom_workers{{job="{name}"}} 2.0' in text
    with urllib.request.urlopen(base + "healthz", timeout=10) as r:
        assert r.status == 200
    req = urllib.request.Request(base + "api/snapshot", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401


def test_create_rescale_live_suspend_resume_finish_delete(cluster: LocalCluster) -> None:
    cluster.create(job_resource("sums", parallelism=2, delay=0.3))
    status = wait_for(cluster, "sums", lambda s: s.get("phase") == "Running", "running")
    assert status["workers"] == 2 and status["parallelism"] == 2
    check_metrics(cluster, "sums")
    before = cluster.pids("sums-")
    assert set(before) == {"sums-coordinator-0", "sums-worker-0", "sums-worker-1"}

    # parallelism 2 -> 3: a live rescale through the coordinator, not a restart.
    cluster.patch_spec(NS, "sums", {"parallelism": 3})
    status = wait_for(
        cluster, "sums", lambda s: s.get("workers") == 3 and s["phase"] == "Running", "rescaled"
    )
    assert status["message"] == "rescaled 2 -> 3 without a restart"
    after = cluster.pids("sums-")
    assert {k: after[k] for k in before} == before  # the same processes kept running
    assert "sums-worker-2" in after
    job = coordinator_status(cluster, "sums")
    assert job["workers"] == [0, 1, 2] and job["restarts"] == 0
    config = cluster.get_object("ConfigMap", NS, "sums-config")
    assert config is not None and config["data"]["workers"] == "3"  # a restart keeps 3

    # suspend: stop with a final snapshot, scale everything to zero.
    cluster.patch_spec(NS, "sums", {"suspend": True})
    status = wait_for(cluster, "sums", lambda s: s.get("phase") == "Suspended", "suspended")
    assert isinstance(status["lastSnapshot"], int)
    assert status["message"] == "suspended with a final snapshot"
    deadline = time.monotonic() + 60
    while cluster.pids("sums-"):
        assert time.monotonic() < deadline, cluster.pids("sums-")
        time.sleep(0.1)
    snapshot = status["lastSnapshot"]

    # resume: from that snapshot, at parallelism 3.
    cluster.patch_spec(NS, "sums", {"suspend": False})
    status = wait_for(
        cluster, "sums", lambda s: s.get("phase") == "Running" and s.get("workers") == 3, "resumed"
    )
    assert status["restoredFrom"] == snapshot

    # The bounded job completes: scaled to zero, every record counted exactly once.
    status = wait_for(cluster, "sums", lambda s: s.get("phase") == "Finished", "finished", 240)
    totals, updates = mp_sums.read_results(str(outputs(cluster, "sums")))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART
    deadline = time.monotonic() + 60
    while cluster.pids("sums-"):
        assert time.monotonic() < deadline, cluster.pids("sums-")
        time.sleep(0.1)

    cluster.delete(NS, "sums")
    deadline = time.monotonic() + 60
    while cluster.get(NS, "sums") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert cluster.get_object("StatefulSet", NS, "sums-worker") is None  # owned: collected


def test_scale_down_then_delete_stops_with_a_snapshot_a_new_job_resumes(
    cluster: LocalCluster,
) -> None:
    cluster.create(job_resource("down", parallelism=3, delay=0.3))
    wait_for(cluster, "down", lambda s: s.get("phase") == "Running", "running")
    kept = {k: v for k, v in cluster.pids("down-").items() if k != "down-worker-2"}

    cluster.patch_spec(NS, "down", {"parallelism": 2})  # workers 2 hands over and leaves
    wait_for(cluster, "down", lambda s: s.get("workers") == 2, "scaled down")
    statefulset = cluster.get_object("StatefulSet", NS, "down-worker")
    assert statefulset is not None and statefulset["spec"]["replicas"] == 2
    assert coordinator_status(cluster, "down")["restarts"] == 0
    deadline = time.monotonic() + 60
    while set(cluster.pids("down-")) != set(kept):
        assert time.monotonic() < deadline, cluster.pids("down-")
        time.sleep(0.1)
    assert cluster.pids("down-") == kept

    cluster.delete(NS, "down")  # = stop with a final snapshot
    deadline = time.monotonic() + 120
    while cluster.get(NS, "down") is not None or cluster.pids("down-"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    out = outputs(cluster, "down")
    totals, _ = mp_sums.read_results(str(out))
    assert totals == {}  # it had not finished

    # A new MalstromJob on the same volume resumes from the stop's snapshot and completes.
    again = job_resource("down", parallelism=2, delay=0.0)
    cluster.create(again)
    status = wait_for(cluster, "down", lambda s: s.get("phase") == "Finished", "finished", 240)
    assert status["lastSnapshot"] is not None
    totals, updates = mp_sums.read_results(str(out))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART
    log = json.dumps(status)
    assert "Failed" not in log


def test_the_kopf_handlers_run_the_same_rounds(tmp_path: Path) -> None:
    """kopf needs an API server to run its event loop, so its handlers are called here as
    kopf calls them (with the resource body), against the local cluster."""
    kopf = pytest.importorskip("kopf")
    from malstrom.k8s import _kopf as adapter

    registry = kopf.get_default_registry()
    changing = {(h.id, h.reason) for h in registry._changing.get_all_handlers()}
    assert ("_on_change", kopf.Reason.CREATE) in changing
    assert ("_on_change/spec", kopf.Reason.UPDATE) in changing
    assert ("_on_delete", kopf.Reason.DELETE) in changing
    assert [h.id for h in registry._spawning.get_all_handlers()] == ["_on_timer"]

    with LocalCluster(tmp_path / "cluster", restart_backoff=0.5) as cluster:
        adapter._operator = Operator(cluster, status_timeout=3.0)
        try:
            cluster.create(job_resource("kopf", parallelism=2, delay=0.3))
            deadline = time.monotonic() + 120
            while (cluster.get(NS, "kopf") or {}).get("status", {}).get("phase") != "Running":
                assert time.monotonic() < deadline, cluster.get(NS, "kopf")
                adapter._on_timer(body=cluster.get(NS, "kopf"))  # kopf's timer, and...
                time.sleep(0.5)
            cluster.patch_spec(NS, "kopf", {"parallelism": 3})
            while (cluster.get(NS, "kopf") or {}).get("status", {}).get("workers") != 3:
                assert time.monotonic() < deadline, cluster.get(NS, "kopf")
                adapter._on_change(body=cluster.get(NS, "kopf"))  # ...its update handler
                time.sleep(0.5)
            cluster.delete(NS, "kopf")
            adapter._on_delete(body=cluster.get(NS, "kopf"))  # stops with a snapshot
            status = (cluster.get(NS, "kopf") or {})["status"]
            assert status["phase"] == "Deleting" and isinstance(status["lastSnapshot"], int)
            while cluster.pids("kopf-"):
                assert time.monotonic() < deadline, cluster.pids("kopf-")
                time.sleep(0.1)
        finally:
            adapter._operator = None
