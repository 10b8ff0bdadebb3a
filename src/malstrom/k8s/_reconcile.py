"""The operator's decisions: a pure function of (MalstromJob, observed state) -> a plan.

:func:`observe` reads what the cluster reports (the job's child objects and pods as the
Kubernetes API returns them, and the coordinator's ``status`` answer) into an
:class:`Observed`; :func:`reconcile` turns the resource and that observation into a
:class:`Plan`: the actions to take in order, the status to write before they start and the
one to write once they all succeeded, and when to look again. Neither touches the network,
so both are tested table-driven against recorded API objects, and the same plan runs on a
real cluster (kopf) or on local processes (``malstrom.k8s._local``).

The job's life, in status phases:

- ``Pending``: children created (or scaled up again), the coordinator not yet running.
- ``Running``: the coordinator reports the job running; ``workers`` is its worker count.
- ``Rescaling``: ``spec.parallelism`` changed: workers are added (StatefulSet scaled up
  first, then the coordinator's live rescale) or released (rescale first, then scaled down).
- ``Suspending`` / ``Suspended``: ``spec.suspend: true`` stops the job with a final snapshot
  (``status.lastSnapshot``) and scales everything to zero; clearing it resumes from there.
- ``Restarting``: the coordinator does not answer and its container last exited with an
  error (Kubernetes restarts it; the job resumes from its last snapshot).
- ``Finished``: a bounded job completed; everything is scaled to zero.
- ``Failed``: the spec cannot run, or the coordinator reports the job failed.
- ``Deleting``: the resource is being deleted: stop with a final snapshot, then let go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from malstrom.k8s._resources import SPEC_HASH, config_map, render
from malstrom.k8s._spec import JobSpec, SpecError

__all__ = [
    "Action",
    "Admin",
    "Apply",
    "ChildState",
    "CreateSecret",
    "Observed",
    "Plan",
    "PodState",
    "Scale",
    "observe",
    "reconcile",
]

#: Coordinator phases of a job that no longer runs.
_ENDED = {"finished", "stopped", "failed", "killed"}
#: How long to wait before looking again while something is in progress (seconds).
_SOON = 2.0
_LATER = 10.0


# ----- actions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Apply:
    """Create or update a child object (server-side apply)."""

    obj: dict[str, Any]

    def __str__(self) -> str:
        return f"apply {self.obj['kind']} {self.obj['metadata']['name']}"


@dataclass(frozen=True)
class CreateSecret:
    """Create the job's token Secret with a fresh random token (never updated)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"create Secret {self.name}"


@dataclass(frozen=True)
class Scale:
    """Set the replicas of a Deployment or StatefulSet."""

    kind: str
    namespace: str
    name: str
    replicas: int

    def __str__(self) -> str:
        return f"scale {self.kind} {self.name} to {self.replicas}"


@dataclass(frozen=True)
class Admin:
    """Call the coordinator's admin API: ``rescale`` (to ``workers``) or ``stop``."""

    command: str
    workers: int | None = None

    def __str__(self) -> str:
        return f"{self.command} {self.workers}" if self.workers is not None else self.command


Action = Apply | CreateSecret | Scale | Admin


@dataclass
class Plan:
    """What to do about a job now."""

    actions: list[Action] = field(default_factory=list)
    #: The status once every action succeeded (merged into the resource's status).
    status: dict[str, Any] = field(default_factory=dict)
    #: The status to write before the first action (long operations show their phase).
    progress: dict[str, Any] | None = None
    #: Look again after this many seconds (None: on the next change or periodic check).
    requeue: float | None = None
    #: Deletion is complete: the operator may let the resource go.
    finalized: bool = False


# ----- observation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildState:
    """A child object as the cluster reports it."""

    kind: str
    name: str
    spec_hash: str | None
    replicas: int | None = None  # Deployment / StatefulSet: spec.replicas
    ready: int = 0  # status.readyReplicas
    data: dict[str, str] | None = None  # ConfigMap


@dataclass(frozen=True)
class PodState:
    """One pod of the job."""

    name: str
    component: str
    ready: bool
    restarts: int
    last_exit_code: int | None = None
    last_message: str | None = None


@dataclass(frozen=True)
class Observed:
    """Everything :func:`reconcile` knows about the cluster."""

    children: dict[tuple[str, str], ChildState] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()
    secret_exists: bool = False
    #: The coordinator's ``status`` answer (phase, workers, last_committed...), or None.
    job: dict[str, Any] | None = None
    #: Why the coordinator did not answer (when ``job`` is None).
    job_error: str | None = None

    def child(self, kind: str, name: str) -> ChildState | None:
        return self.children.get((kind, name))


def observe(
    objects: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    *,
    secret_exists: bool,
    job: dict[str, Any] | None = None,
    job_error: str | None = None,
) -> Observed:
    """Read API objects (as ``kubectl get -o json`` shows them) into an :class:`Observed`."""
    children = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        kind, name = obj.get("kind", ""), meta.get("name", "")
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        children[(kind, name)] = ChildState(
            kind=kind,
            name=name,
            spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH),
            replicas=spec.get("replicas") if kind in ("Deployment", "StatefulSet") else None,
            ready=int(status.get("readyReplicas") or 0),
            data=dict(obj.get("data") or {}) if kind == "ConfigMap" else None,
        )
    pod_states = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        main = next((s for s in statuses if s.get("name") == "malstrom"), None) or {}
        terminated = (main.get("lastState") or {}).get("terminated") or {}
        pod_states.append(
            PodState(
                name=meta.get("name", ""),
                component=(meta.get("labels") or {}).get("app.kubernetes.io/component", ""),
                ready=bool(main.get("ready")),
                restarts=int(main.get("restartCount") or 0),
                last_exit_code=terminated.get("exitCode"),
                last_message=(terminated.get("message") or "").strip() or None,
            )
        )
    return Observed(
        children=children,
        pods=tuple(sorted(pod_states, key=lambda p: p.name)),
        secret_exists=secret_exists,
        job=job,
        job_error=job_error,
    )


# ----- decisions -------------------------------------------------------------------------------
def reconcile(resource: dict[str, Any], observed: Observed) -> Plan:
    """The plan that moves the job toward what its resource asks for."""
    meta = resource.get("metadata") or {}
    old = dict(resource.get("status") or {})
    base: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    try:
        spec = JobSpec.from_resource(resource)
    except SpecError as e:
        return Plan(status={**base, "phase": "Failed", "message": str(e)})

    coord = observed.child("Deployment", spec.coordinator_name)
    workers = observed.child("StatefulSet", spec.workers_name)
    job = observed.job
    if job is not None:
        base["lastSnapshot"] = job.get("last_committed", old.get("lastSnapshot"))
        base["restoredFrom"] = job.get("restored_from")

    if meta.get("deletionTimestamp"):
        return _delete(spec, coord, workers, job, base)
    if old.get("phase") == "Finished":
        plan = Plan(status={**base, "phase": "Finished", "workers": 0})
        plan.actions += _scale_to_zero(spec, coord, workers)
        return plan

    plan = Plan()
    if not observed.secret_exists:
        if spec.token_secret is not None:
            message = f"the Secret {spec.token_secret!r} (spec.tokenSecret) does not exist"
            return Plan(status={**base, "phase": "Pending", "message": message}, requeue=_LATER)
        plan.actions.append(CreateSecret(spec.namespace, spec.token_secret_name))
    _ensure_children(spec, observed, plan)

    if spec.suspend:
        return _suspend(spec, coord, workers, job, observed, old, base, plan)
    if coord is None or workers is None:
        plan.status = {**base, "phase": "Pending", "parallelism": spec.parallelism, "workers": 0}
        plan.status["message"] = "starting"
        plan.requeue = _SOON
        return plan
    if coord.replicas == 0:
        return _resume(spec, observed, old, base, plan)
    if job is None:
        return _unreachable(spec, observed, old, base, plan)
    return _running(spec, observed, job, base, plan)


def _ensure_children(spec: JobSpec, observed: Observed, plan: Plan) -> None:
    """Create missing children and update drifted ones, without changing any replicas or
    the ConfigMap's worker count (those move only as the job's phase allows)."""
    cm = observed.child("ConfigMap", spec.config_name)
    cm_workers = _int((cm.data or {}).get("workers")) if cm is not None else None
    create_workers = 0 if spec.suspend else spec.parallelism
    for obj in render(
        spec,
        workers=cm_workers if cm_workers is not None else create_workers,
        coordinator=0 if spec.suspend else 1,
    ):
        kind, name = obj["kind"], obj["metadata"]["name"]
        seen = observed.child(kind, name)
        if seen is not None and seen.spec_hash == obj["metadata"]["annotations"][SPEC_HASH]:
            continue
        if seen is not None and seen.replicas is not None:
            obj["spec"]["replicas"] = seen.replicas  # an update never scales
        plan.actions.append(Apply(obj))


def _delete(
    spec: JobSpec,
    coord: ChildState | None,
    workers: ChildState | None,
    job: dict[str, Any] | None,
    base: dict[str, Any],
) -> Plan:
    plan = Plan(status={**base, "phase": "Deleting", "workers": 0}, finalized=True)
    if job is not None and job.get("phase") not in _ENDED:
        plan.actions.append(Admin("stop"))
        plan.progress = {"phase": "Deleting", "message": "stopping with a final snapshot"}
    plan.actions += _scale_to_zero(spec, coord, workers)
    return plan


def _scale_to_zero(
    spec: JobSpec, coord: ChildState | None, workers: ChildState | None
) -> list[Action]:
    out: list[Action] = []
    # The coordinator first: workers that outlive it wait for it; the reverse is a failure.
    if coord is not None and coord.replicas:
        out.append(Scale("Deployment", spec.namespace, spec.coordinator_name, 0))
    if workers is not None and workers.replicas:
        out.append(Scale("StatefulSet", spec.namespace, spec.workers_name, 0))
    return out


def _suspend(
    spec: JobSpec,
    coord: ChildState | None,
    workers: ChildState | None,
    job: dict[str, Any] | None,
    observed: Observed,
    old: dict[str, Any],
    base: dict[str, Any],
    plan: Plan,
) -> Plan:
    plan.status = {**base, "phase": "Suspended", "workers": 0, "message": "suspended"}
    scale = _scale_to_zero(spec, coord, workers)
    if not scale:
        return plan
    if job is not None and job.get("phase") not in _ENDED:
        # The final snapshot first; its version lands in status.lastSnapshot.
        plan.actions.append(Admin("stop"))
        plan.progress = {"phase": "Suspending", "message": "stopping with a final snapshot"}
        plan.status["message"] = "suspended with a final snapshot"
    elif old.get("phase") not in (None, "Pending", "Suspended"):
        why = observed.job_error or "it is not running"
        plan.status["message"] = (
            f"suspended without a final snapshot (the coordinator did not answer: {why}); "
            "the job resumes from its last committed snapshot"
        )
    plan.actions += scale
    return plan


def _resume(
    spec: JobSpec, observed: Observed, old: dict[str, Any], base: dict[str, Any], plan: Plan
) -> Plan:
    """Scaled to zero (suspended before): start again at spec.parallelism."""
    cm = observed.child("ConfigMap", spec.config_name)
    if cm is not None and (cm.data or {}).get("workers") != str(spec.parallelism):
        plan.actions.append(Apply(_with_hash(config_map(spec, spec.parallelism))))
    plan.actions.append(Scale("StatefulSet", spec.namespace, spec.workers_name, spec.parallelism))
    plan.actions.append(Scale("Deployment", spec.namespace, spec.coordinator_name, 1))
    last = old.get("lastSnapshot")
    message = f"resuming from snapshot {last}" if last is not None else "starting"
    plan.status = {
        **base,
        "phase": "Pending",
        "parallelism": spec.parallelism,
        "workers": 0,
        "message": message,
    }
    plan.requeue = _SOON
    return plan


def _unreachable(
    spec: JobSpec, observed: Observed, old: dict[str, Any], base: dict[str, Any], plan: Plan
) -> Plan:
    pod = next((p for p in observed.pods if p.component == "coordinator"), None)
    plan.requeue = _SOON
    final = _final_status(pod)
    if pod is not None and pod.last_exit_code == 0 and final.get("phase") == "finished":
        # A bounded job completed (and its coordinator, restarted, would only exit again).
        plan.actions += _scale_to_zero(
            spec,
            observed.child("Deployment", spec.coordinator_name),
            observed.child("StatefulSet", spec.workers_name),
        )
        plan.status = {**base, "phase": "Finished", "workers": 0, "message": "the job completed"}
        plan.status["lastSnapshot"] = final.get("last_committed", old.get("lastSnapshot"))
        plan.requeue = None
        return plan
    if pod is not None and pod.last_exit_code not in (None, 0) and not pod.ready:
        detail = f": {pod.last_message.splitlines()[-1]}" if pod.last_message else ""
        plan.status = {
            **base,
            "phase": "Restarting",
            "message": f"the coordinator exited with code {pod.last_exit_code}{detail} "
            f"(restarted {pod.restarts} times; the job resumes from its last snapshot)",
        }
        return plan
    if pod is not None and pod.ready and old.get("phase") in ("Running", "Rescaling"):
        # Its pod is up and ready: one status call that timed out (a busy coordinator) does
        # not make a running job pending.
        before = str(old.get("message") or "").split(" (the last status call failed")[0]
        failed = f"(the last status call failed: {observed.job_error})"
        plan.status = {**base, "phase": old["phase"], "message": f"{before} {failed}".strip()}
        return plan
    phase = old.get("phase") if old.get("phase") in ("Pending", "Restarting") else "Pending"
    plan.status = {
        **base,
        "phase": phase,
        "message": f"waiting for the coordinator: {observed.job_error or 'no answer'}",
    }
    return plan


_PHASES = {
    "starting": "Pending",
    "building": "Pending",
    "restarting": "Restarting",
    "joining": "Rescaling",
    "rescaling": "Rescaling",
    "stopping": "Suspending",
    "finishing": "Running",
    "stopped": "Pending",  # stopped by hand: Kubernetes restarts the coordinator, it resumes
    "killed": "Pending",
}


def _running(
    spec: JobSpec, observed: Observed, job: dict[str, Any], base: dict[str, Any], plan: Plan
) -> Plan:
    phase = str(job.get("phase"))
    current = len(job.get("workers") or [])
    workers = observed.child("StatefulSet", spec.workers_name)
    assert workers is not None
    sts = workers.replicas or 0
    want = spec.parallelism
    if phase == "finished":
        plan.actions += _scale_to_zero(
            spec, observed.child("Deployment", spec.coordinator_name), workers
        )
        plan.status = {**base, "phase": "Finished", "workers": 0, "message": "the job completed"}
        return plan
    if phase == "failed":
        failure = job.get("failure") or job.get("error") or "unknown cause"
        plan.status = {**base, "phase": "Failed", "message": str(failure)}
        plan.requeue = _LATER
        return plan
    if phase not in ("running", "snapshotting"):
        plan.status = {**base, "phase": _PHASES.get(phase, "Pending"), "workers": current}
        plan.status["message"] = f"the coordinator reports {phase}"
        plan.requeue = _SOON
        return plan

    running = {**base, "phase": "Running", "parallelism": current, "workers": current}
    running["message"] = f"running on {current} workers"
    if want > current:
        # New pods first (they wait for the coordinator's call), then the live rescale.
        if sts < want:
            plan.actions.append(Scale("StatefulSet", spec.namespace, spec.workers_name, want))
        if sts < want or workers.ready < want:
            plan.status = {**base, "phase": "Rescaling", "workers": current}
            plan.status["message"] = f"waiting for {want} worker pods to be ready"
            plan.requeue = _SOON
            return plan
        plan.progress = {"phase": "Rescaling", "message": f"rescaling {current} -> {want}"}
        plan.actions.append(Admin("rescale", want))
        plan.actions.append(Apply(_with_hash(config_map(spec, want))))
        plan.status = {**running, "parallelism": want, "workers": want}
        plan.status["message"] = f"rescaled {current} -> {want} without a restart"
        return plan
    if want < current:
        # The released workers hand their state over and exit; then their pods go.
        plan.progress = {"phase": "Rescaling", "message": f"rescaling {current} -> {want}"}
        plan.actions.append(Admin("rescale", want))
        plan.actions.append(Scale("StatefulSet", spec.namespace, spec.workers_name, want))
        plan.actions.append(Apply(_with_hash(config_map(spec, want))))
        plan.status = {**running, "parallelism": want, "workers": want}
        plan.status["message"] = f"rescaled {current} -> {want} without a restart"
        return plan
    if sts != current:  # e.g. pods left over after an abandoned rescale
        plan.actions.append(Scale("StatefulSet", spec.namespace, spec.workers_name, current))
    cm = observed.child("ConfigMap", spec.config_name)
    if cm is not None and (cm.data or {}).get("workers") != str(current):
        plan.actions.append(Apply(_with_hash(config_map(spec, current))))
    plan.status = running
    return plan


def _final_status(pod: PodState | None) -> dict[str, Any]:
    """The coordinator's final status from its termination message (JSON), if it left one."""
    if pod is None or not pod.last_message:
        return {}
    try:
        final = json.loads(pod.last_message)
    except ValueError:
        return {}
    return final if isinstance(final, dict) else {}


def _with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    from malstrom.k8s._resources import spec_hash

    obj["metadata"].setdefault("annotations", {})[SPEC_HASH] = spec_hash(obj)
    return obj


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
