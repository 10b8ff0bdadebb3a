"""Runs the operator's plans: observe a job, reconcile, carry out the actions, write status.

The cluster is reached through a :class:`ClusterApi`: :class:`~malstrom.k8s._kube.KubeApi`
talks to a Kubernetes API server, :class:`~malstrom.k8s._local.LocalCluster` runs the same
objects as local processes. The coordinator's admin API is called the same way in both.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from typing import Any, Protocol

from malstrom.k8s._reconcile import (
    Admin,
    Apply,
    CreateSecret,
    Observed,
    Plan,
    Scale,
    observe,
    reconcile,
)
from malstrom.k8s._resources import token_secret
from malstrom.k8s._spec import JobSpec, SpecError

__all__ = ["ClusterApi", "Operator"]

log = logging.getLogger("malstrom.k8s")


class ClusterApi(Protocol):
    """What the operator needs from a cluster."""

    def list_children(self, spec: JobSpec) -> list[dict[str, Any]]:
        """The job's ConfigMap, Services, Deployment and StatefulSet (API objects)."""
        ...

    def list_pods(self, spec: JobSpec) -> list[dict[str, Any]]:
        """The job's pods (API objects)."""
        ...

    def read_token(self, namespace: str, name: str) -> str | None:
        """The ``token`` key of a Secret, or None if there is no such Secret."""
        ...

    def apply(self, obj: dict[str, Any]) -> None:
        """Create or update ``obj`` (server-side apply)."""
        ...

    def create_secret(self, obj: dict[str, Any]) -> None:
        """Create a Secret (an existing one is left as it is)."""
        ...

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Set the replicas of a Deployment or StatefulSet."""
        ...

    def patch_status(self, resource: dict[str, Any], status: dict[str, Any]) -> None:
        """Merge ``status`` into the MalstromJob's status subresource."""
        ...

    def coordinator_address(self, spec: JobSpec) -> str:
        """``host:port`` where the operator reaches the job's coordinator."""
        ...


class Operator:
    """Reconciles MalstromJobs on one cluster; one job at a time per job (a lock each)."""

    def __init__(
        self,
        api: ClusterApi,
        *,
        status_timeout: float = 5.0,
        rescale_timeout: float = 300.0,
        stop_timeout: float = 120.0,
    ) -> None:
        self.api = api
        self.status_timeout = status_timeout
        self.rescale_timeout = rescale_timeout
        self.stop_timeout = stop_timeout
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, resource: dict[str, Any]) -> threading.Lock:
        meta = resource.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # ----- observation --------------------------------------------------------------------------
    def observe(self, resource: dict[str, Any]) -> Observed:
        """What the cluster and the job's coordinator report now."""
        spec = JobSpec.from_resource(resource)
        token = self.api.read_token(spec.namespace, spec.token_secret_name)
        job, error = None, None
        children = self.api.list_children(spec)
        coordinator_up = any(
            c.get("kind") == "Deployment" and (c.get("spec") or {}).get("replicas")
            for c in children
        )
        if token is None:
            error = "no token Secret yet"
        elif not coordinator_up:
            error = "the coordinator is scaled to zero"
        else:
            try:
                job = json.loads(self._admin(spec, token, "status", {}, self.status_timeout))
            except Exception as e:
                error = str(e)
        return observe(
            children,
            self.api.list_pods(spec),
            secret_exists=token is not None,
            job=job,
            job_error=error,
        )

    # ----- one round ---------------------------------------------------------------------------
    def reconcile_once(self, resource: dict[str, Any]) -> Plan:
        """Observe, decide and act once; returns the plan (``requeue`` says when to look
        again). A failed action stops the round: its error goes to ``status.message`` and the
        next round decides again from what it observes then."""
        with self._lock(resource):
            try:
                observed = self.observe(resource)
            except SpecError:
                observed = Observed()
            plan = reconcile(resource, observed)
            if plan.actions:
                log.info("%s: %s", _name(resource), "; ".join(str(a) for a in plan.actions))
            if plan.progress is not None:
                self.api.patch_status(resource, plan.progress)
            try:
                for action in plan.actions:
                    self._run(resource, action, plan)
            except Exception as e:
                log.warning("%s: %s", _name(resource), e)
                failed = {"message": f"{e}"}
                if plan.progress is not None:  # the long operation did not happen
                    failed["phase"] = (resource.get("status") or {}).get("phase") or "Pending"
                self.api.patch_status(resource, failed)
                plan.requeue = min(plan.requeue or 5.0, 5.0)
                plan.finalized = False
                return plan
            self.api.patch_status(resource, plan.status)
            return plan

    def _run(self, resource: dict[str, Any], action: Any, plan: Plan) -> None:
        spec = JobSpec.from_resource(resource)
        if isinstance(action, Apply):
            self.api.apply(action.obj)
        elif isinstance(action, CreateSecret):
            self.api.create_secret(token_secret(spec, secrets.token_hex(32)))
        elif isinstance(action, Scale):
            self.api.scale(action.kind, action.namespace, action.name, action.replicas)
        elif isinstance(action, Admin):
            token = self.api.read_token(spec.namespace, spec.token_secret_name)
            if token is None:
                raise RuntimeError(f"{action}: the token Secret is gone")
            if action.command == "rescale":
                body = {"workers": action.workers, "timeout": self.rescale_timeout}
                self._admin(spec, token, "rescale", body, self.rescale_timeout + 10)
            elif action.command == "stop":
                body = {"timeout": self.stop_timeout}
                reply = self._admin(spec, token, "stop", body, self.stop_timeout + 10)
                version = json.loads(reply).get("version")
                if version is not None:
                    plan.status["lastSnapshot"] = version
            else:
                raise ValueError(f"unknown admin command {action.command!r}")
        else:
            raise TypeError(f"unknown action {action!r}")

    def _admin(
        self, spec: JobSpec, token: str, command: str, body: dict[str, Any], timeout: float
    ) -> bytes:
        from malstrom.transport._grpc_auth import JobAuth
        from malstrom.transport._grpc_control import AdminClient

        with AdminClient(self.api.coordinator_address(spec), JobAuth(spec.name, token)) as c:
            return c.call(command, json.dumps(body).encode(), timeout=timeout)


def _name(resource: dict[str, Any]) -> str:
    meta = resource.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
