"""The operator's decisions, table-driven: a MalstromJob and what the cluster reports (API
objects as served, in tests/k8s_fixtures/, and the coordinator's `status` answer) -> the
actions, in order, and the status written."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from malstrom.k8s import JobSpec, Plan, observe, reconcile, render
from malstrom.k8s._resources import SPEC_HASH

FIXTURES = Path(__file__).resolve().parent / "k8s_fixtures"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if d]


JOB = load("job.yaml")[0]
CHILDREN = load("children.yaml")
PODS = load("pods.yaml")

#: `malstrom status` of the fixtures' job: running on workers 0 and 1.
RUNNING: dict[str, Any] = {
    "phase": "running",
    "workers": [0, 1],
    "drained": [],
    "last_committed": 41,
    "restored_from": None,
    "error": None,
    "restarts": 0,
    "pids": {"0": 7, "1": 7},
    "parallelism": 2,
    "failure": None,
    "address": "0.0.0.0:7000",
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def child(kind: str) -> dict[str, Any]:
    return next(c for c in CHILDREN if c["kind"] == kind)


def children(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixtures' children with some changed, by kind (e.g. StatefulSet={...})."""
    return [merge(c, changes.get(c["kind"], {})) for c in CHILDREN]


def replicas(n: int, ready: int | None = None) -> dict[str, Any]:
    ready = n if ready is None else ready
    return {"spec": {"replicas": n}, "status": {"replicas": n, "readyReplicas": ready}}


def coordinator_pod(last_state: dict[str, Any], ready: bool = False) -> list[dict[str, Any]]:
    pods = copy.deepcopy(PODS)
    status = pods[0]["status"]["containerStatuses"][0]
    status.update(
        lastState={"terminated": last_state},
        ready=ready,
        restartCount=4,
        state={"waiting": {"reason": "CrashLoopBackOff"}},
    )
    return pods


@dataclass
class Case:
    name: str
    job: dict[str, Any] = field(default_factory=dict)  # merged into JOB
    objects: list[dict[str, Any]] | None = None  # default: the fixtures' children
    pods: list[dict[str, Any]] | None = None
    secret: bool = True
    status: dict[str, Any] | None = None  # the coordinator's answer (None: no answer)
    actions: list[str] = field(default_factory=list)
    expect: dict[str, Any] = field(default_factory=dict)  # subset of the status written
    progress: str | None = None  # phase written before the actions
    finalized: bool = False


CASES = [
    Case(
        "new job: everything is created",
        job={"status": None},
        objects=[],
        pods=[],
        secret=False,
        actions=[
            "create Secret wordcount-token",
            "apply ConfigMap wordcount-config",
            "apply Service wordcount-coordinator",
            "apply Service wordcount-worker",
            "apply Deployment wordcount-coordinator",
            "apply StatefulSet wordcount-worker",
        ],
        expect={"phase": "Pending", "parallelism": 2},
    ),
    Case(
        "created, coordinator not answering yet",
        job={"status": {"phase": "Pending"}},
        expect={"phase": "Pending", "message": "waiting for the coordinator: connection refused"},
    ),
    Case(
        "running, one status call failed, coordinator pod ready: still running",
        expect={
            "phase": "Running",
            "message": "running on 2 workers (the last status call failed: connection refused)",
        },
    ),
    Case(
        "running as asked: nothing to do",
        status=RUNNING,
        expect={"phase": "Running", "workers": 2, "lastSnapshot": 41},
    ),
    Case(
        "parallelism 2 -> 3: new worker pod first",
        job={"spec": {"parallelism": 3}},
        status=RUNNING,
        actions=["scale StatefulSet wordcount-worker to 3"],
        expect={"phase": "Rescaling", "message": "waiting for 3 worker pods to be ready"},
    ),
    Case(
        "parallelism 3: pod not ready yet",
        job={"spec": {"parallelism": 3}},
        objects=children(StatefulSet=replicas(3, ready=2)),
        status=RUNNING,
        expect={"phase": "Rescaling", "workers": 2},
    ),
    Case(
        "parallelism 3: pods ready -> live rescale, then the restart size",
        job={"spec": {"parallelism": 3}},
        objects=children(StatefulSet=replicas(3)),
        status=RUNNING,
        actions=["rescale 3", "apply ConfigMap wordcount-config"],
        progress="Rescaling",
        expect={"phase": "Running", "workers": 3, "parallelism": 3},
    ),
    Case(
        "parallelism 2 -> 1: rescale first, then the pod goes",
        job={"spec": {"parallelism": 1}},
        status=RUNNING,
        actions=[
            "rescale 1",
            "scale StatefulSet wordcount-worker to 1",
            "apply ConfigMap wordcount-config",
        ],
        progress="Rescaling",
        expect={"phase": "Running", "workers": 1},
    ),
    Case(
        "suspend: stop with a final snapshot, then scale to zero",
        job={"spec": {"suspend": True}},
        status=RUNNING,
        actions=[
            "stop",
            "scale Deployment wordcount-coordinator to 0",
            "scale StatefulSet wordcount-worker to 0",
        ],
        progress="Suspending",
        expect={"phase": "Suspended", "workers": 0, "message": "suspended with a final snapshot"},
    ),
    Case(
        "suspended and at zero: nothing to do",
        job={"spec": {"suspend": True}, "status": {"phase": "Suspended", "lastSnapshot": 44}},
        objects=children(Deployment=replicas(0), StatefulSet=replicas(0)),
        pods=[],
        expect={"phase": "Suspended"},
    ),
    Case(
        "resume: workers and coordinator scale up again",
        job={"status": {"phase": "Suspended", "lastSnapshot": 44}},
        objects=children(Deployment=replicas(0), StatefulSet=replicas(0)),
        pods=[],
        actions=[
            "scale StatefulSet wordcount-worker to 2",
            "scale Deployment wordcount-coordinator to 1",
        ],
        expect={"phase": "Pending", "message": "resuming from snapshot 44"},
    ),
    Case(
        "resume at another parallelism: the coordinator starts at 4",
        job={"spec": {"parallelism": 4}, "status": {"phase": "Suspended", "lastSnapshot": 44}},
        objects=children(Deployment=replicas(0), StatefulSet=replicas(0)),
        pods=[],
        actions=[
            "apply ConfigMap wordcount-config",
            "scale StatefulSet wordcount-worker to 4",
            "scale Deployment wordcount-coordinator to 1",
        ],
        expect={"phase": "Pending", "parallelism": 4},
    ),
    Case(
        "coordinator crash-looping",
        pods=coordinator_pod(
            {
                "exitCode": 1,
                "reason": "Error",
                "message": "2026-11-30 09:20:01 malstrom.runtime WARNING job attempt failed\n"
                "malstrom: job failed after 3 restarts; last cause: worker 1 died (SIGKILL)",
            }
        ),
        expect={
            "phase": "Restarting",
            "message": "the coordinator exited with code 1: malstrom: job failed after 3 "
            "restarts; last cause: worker 1 died (SIGKILL) (restarted 4 times; the job "
            "resumes from its last snapshot)",
        },
    ),
    Case(
        "bounded job completed (the coordinator's termination message says so)",
        pods=coordinator_pod(
            {
                "exitCode": 0,
                "reason": "Completed",
                "message": json.dumps({"phase": "finished", "last_committed": 57}),
            }
        ),
        actions=[
            "scale Deployment wordcount-coordinator to 0",
            "scale StatefulSet wordcount-worker to 0",
        ],
        expect={"phase": "Finished", "lastSnapshot": 57},
    ),
    Case(
        "the coordinator reports finished",
        status={**RUNNING, "phase": "finished", "last_committed": 57},
        actions=[
            "scale Deployment wordcount-coordinator to 0",
            "scale StatefulSet wordcount-worker to 0",
        ],
        expect={"phase": "Finished", "lastSnapshot": 57},
    ),
    Case(
        "finished stays finished",
        job={"status": {"phase": "Finished", "lastSnapshot": 57}},
        objects=children(Deployment=replicas(0), StatefulSet=replicas(0)),
        pods=[],
        expect={"phase": "Finished"},
    ),
    Case(
        "the coordinator reports failed",
        status={**RUNNING, "phase": "failed", "failure": "OperatorError in 'split': ..."},
        expect={"phase": "Failed", "message": "OperatorError in 'split': ..."},
    ),
    Case(
        "the coordinator is restarting the job",
        status={**RUNNING, "phase": "restarting", "restarts": 1},
        expect={"phase": "Restarting"},
    ),
    Case(
        "new workers joining a rescale",
        status={**RUNNING, "phase": "joining"},
        expect={"phase": "Rescaling"},
    ),
    Case(
        "image changed: templates updated, replicas untouched",
        job={"spec": {"image": "registry.example.com/analytics/wordcount:1.5.0"}},
        status=RUNNING,
        actions=["apply Deployment wordcount-coordinator", "apply StatefulSet wordcount-worker"],
        expect={"phase": "Running"},
    ),
    Case(
        "deleted while running: stop with a final snapshot, then let go",
        job={"metadata": {"deletionTimestamp": "2026-11-30T10:00:00Z"}},
        status=RUNNING,
        actions=[
            "stop",
            "scale Deployment wordcount-coordinator to 0",
            "scale StatefulSet wordcount-worker to 0",
        ],
        progress="Deleting",
        expect={"phase": "Deleting"},
        finalized=True,
    ),
    Case(
        "deleted while suspended",
        job={
            "metadata": {"deletionTimestamp": "2026-11-30T10:00:00Z"},
            "spec": {"suspend": True},
        },
        objects=children(Deployment=replicas(0), StatefulSet=replicas(0)),
        pods=[],
        finalized=True,
        expect={"phase": "Deleting"},
    ),
    Case(
        "invalid spec",
        job={"spec": {"parallelism": 0}},
        expect={
            "phase": "Failed",
            "message": "spec.parallelism must be >= 1, not 0 (to stop: spec.suspend)",
        },
    ),
    Case(
        "named token Secret missing",
        job={"spec": {"tokenSecret": "wordcount-shared-token"}},
        secret=False,
        expect={
            "phase": "Pending",
            "message": "the Secret 'wordcount-shared-token' (spec.tokenSecret) does not exist",
        },
    ),
]


def plan_for(case: Case) -> Plan:
    resource = merge(JOB, case.job)
    if case.job.get("status", 1) is None:
        resource.pop("status")
    observed = observe(
        CHILDREN if case.objects is None else case.objects,
        PODS if case.pods is None else case.pods,
        secret_exists=case.secret,
        job=case.status,
        job_error=None if case.status is not None else "connection refused",
    )
    return reconcile(resource, observed)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reconcile(case: Case) -> None:
    plan = plan_for(case)
    assert [str(a) for a in plan.actions] == case.actions
    assert {k: plan.status.get(k) for k in case.expect} == case.expect
    assert (plan.progress or {}).get("phase") == case.progress
    assert plan.finalized is case.finalized


def test_fixtures_match_what_the_operator_renders() -> None:
    """Stale fixtures would look like drift: re-run tests/k8s_fixtures/make_fixtures.py."""
    spec = JobSpec.from_resource(JOB)
    hashes = {
        o["kind"] + o["metadata"]["name"]: o["metadata"]["annotations"][SPEC_HASH]
        for o in render(spec, workers=2)
    }
    assert {
        c["kind"] + c["metadata"]["name"]: c["metadata"]["annotations"][SPEC_HASH] for c in CHILDREN
    } == hashes


def test_updates_never_scale_and_creations_start_at_the_asked_size() -> None:
    drift = plan_for(next(c for c in CASES if c.name.startswith("image changed")))
    scaled = {a.obj["kind"]: a.obj["spec"]["replicas"] for a in drift.actions}  # type: ignore[union-attr]
    assert scaled == {"Deployment": 1, "StatefulSet": 2}
    new = {a.obj["kind"]: a.obj for a in plan_for(CASES[0]).actions[1:]}  # type: ignore[union-attr]
    assert new["Deployment"]["spec"]["replicas"] == 1
    assert new["StatefulSet"]["spec"]["replicas"] == 2
    assert new["ConfigMap"]["data"] == {"workers": "2"}
