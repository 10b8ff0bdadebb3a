"""The Kubernetes objects that run one job: rendered from a :class:`JobSpec`, as plain dicts.

- ConfigMap ``NAME-config``: ``workers``, the size a (re)starting coordinator uses. Pods read
  it through an environment variable, so a rescale changes it without touching (and so
  restarting) any pod template.
- Service ``NAME-coordinator`` (ports ``grpc`` 7000 and ``http`` 8080) and Deployment
  ``NAME-coordinator`` (one pod, ``Recreate``: never two coordinators). The coordinator
  serves ``/metrics``, ``/healthz`` and the dashboard on ``http`` (``--http``); its pods
  carry the ``prometheus.io/scrape``, ``/port`` and ``/path`` annotations that Prometheus'
  usual Kubernetes pod discovery reads. The dashboard's actions need the job's token.
- Service ``NAME-worker`` (headless) and StatefulSet ``NAME-worker``: worker ``i`` is pod
  ``NAME-worker-i`` and joins with id ``i`` (its pod index), so scaling the StatefulSet down
  removes exactly the workers a rescale released.
- The token lives in a Secret (``spec.tokenSecret``, or ``NAME-token`` made by the operator).

Both containers are probed with Kubernetes' native gRPC probes against the standard health
service of the coordinator's and the worker's gRPC servers.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from malstrom.k8s._spec import (
    API_VERSION,
    COORDINATOR_PORT,
    HTTP_PORT,
    KIND,
    WORKER_PORT,
    JobSpec,
)

__all__ = ["SPEC_HASH", "render", "spec_hash", "token_secret"]

#: Annotation with a hash of everything the operator renders (replicas aside).
SPEC_HASH = "malstrom.io/spec-hash"
#: The label Kubernetes puts on a StatefulSet's pods with their index (1.28+).
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
#: Where Kubernetes reads a container's termination message (its default path).
TERMINATION_LOG = "/dev/termination-log"
#: The user id the image runs as.
IMAGE_UID = 10001
#: On the coordinator's pods: where Prometheus' Kubernetes pod discovery finds the metrics.
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(HTTP_PORT),
    "prometheus.io/path": "/metrics",
}


def labels(spec: JobSpec, component: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "malstrom",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/managed-by": "malstrom-operator",
    }
    if component is not None:
        out["app.kubernetes.io/component"] = component
    return out


def selector(spec: JobSpec, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": spec.name, "app.kubernetes.io/component": component}


def _metadata(spec: JobSpec, name: str, component: str | None, owned: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": spec.namespace,
        "labels": labels(spec, component),
    }
    if owned and spec.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": spec.name,
                "uid": spec.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _env(spec: JobSpec) -> list[dict[str, Any]]:
    return [
        {"name": "MALSTROM_JOB", "value": spec.name},
        {
            "name": "MALSTROM_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": spec.token_secret_name, "key": "token"}},
        },
        {"name": "MALSTROM_APP", "value": spec.app},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *spec.env,
    ]


def _probes(port: int) -> dict[str, Any]:
    grpc = {"port": port}
    return {
        "startupProbe": {"grpc": grpc, "periodSeconds": 2, "failureThreshold": 90},
        "readinessProbe": {"grpc": grpc, "periodSeconds": 5, "failureThreshold": 3},
        # A worker closes and reopens its server between job attempts: tolerate a minute.
        "livenessProbe": {"grpc": grpc, "periodSeconds": 10, "failureThreshold": 6},
    }


def _container(
    spec: JobSpec,
    args: list[str],
    env: list[dict[str, Any]],
    port: int,
    resources: Any,
    http: bool = False,
) -> dict[str, Any]:
    ports = [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    if http:
        ports.append({"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "malstrom",
        "image": spec.image,
        "args": args,
        "env": env,
        "ports": ports,
        "resources": copy.deepcopy(resources),
        **_probes(port),
        # The last lines of the log become the termination message when it fails: the
        # operator shows them in the job's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.env_from:
        container["envFrom"] = copy.deepcopy(spec.env_from)
    if spec.volume_mounts:
        container["volumeMounts"] = copy.deepcopy(spec.volume_mounts)
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _pod_spec(spec: JobSpec, container: dict[str, Any], grace: int) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
        },
    }
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.volumes:
        pod["volumes"] = copy.deepcopy(spec.volumes)
    return pod


def config_map(spec: JobSpec, workers: int, owned: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, spec.config_name, None, owned),
        "data": {"workers": str(workers)},
    }


def coordinator_service(spec: JobSpec, owned: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.coordinator_name, "coordinator", owned),
        "spec": {
            "selector": selector(spec, "coordinator"),
            "ports": [
                {"name": "grpc", "port": COORDINATOR_PORT, "targetPort": "grpc"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
            ],
        },
    }


def worker_service(spec: JobSpec, owned: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.workers_name, "worker", owned),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(spec, "worker"),
            "ports": [{"name": "grpc", "port": WORKER_PORT, "targetPort": "grpc"}],
        },
    }


def coordinator_deployment(spec: JobSpec, replicas: int, owned: bool = True) -> dict[str, Any]:
    args = [
        "coordinator",
        "$(MALSTROM_APP)",
        "--workers",
        "$(MALSTROM_WORKERS)",
        "--listen",
        f"0.0.0.0:{COORDINATOR_PORT}",
        "--http",
        f"0.0.0.0:{HTTP_PORT}",
        "--max-restarts",
        str(spec.max_restarts),
        "--heartbeat-timeout",
        f"{spec.heartbeat_timeout:g}",
        # How the job ended (finished, stopped) becomes the pod's termination message.
        "--termination-log",
        TERMINATION_LOG,
    ]
    if spec.persistence:
        args += ["--persistence", spec.persistence]
    if spec.snapshot_interval is not None:
        args += ["--snapshot-interval", f"{spec.snapshot_interval:g}"]
    env = [
        *_env(spec),
        {
            "name": "MALSTROM_WORKERS",
            "valueFrom": {"configMapKeyRef": {"name": spec.config_name, "key": "workers"}},
        },
    ]
    container = _container(spec, args, env, COORDINATOR_PORT, spec.coordinator_resources, http=True)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, spec.coordinator_name, "coordinator", owned),
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector(spec, "coordinator")},
            "template": {
                "metadata": {
                    "labels": labels(spec, "coordinator"),
                    "annotations": dict(SCRAPE_ANNOTATIONS),
                },
                # SIGTERM = stop with a final snapshot: give it time to commit.
                "spec": _pod_spec(spec, container, spec.stop_grace_seconds),
            },
        },
    }


def worker_statefulset(spec: JobSpec, replicas: int, owned: bool = True) -> dict[str, Any]:
    args = [
        "worker",
        "$(MALSTROM_APP)",
        "--coordinator",
        # The Service's short name: the workers are in its namespace.
        f"{spec.coordinator_name}:{COORDINATOR_PORT}",
        "--listen",
        f"0.0.0.0:{WORKER_PORT}",
        "--advertise",
        "$(POD_IP)",
        "--id",
        "$(MALSTROM_WORKER_ID)",
    ]
    env = [
        *_env(spec),
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "MALSTROM_WORKER_ID",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
        },
    ]
    container = _container(spec, args, env, WORKER_PORT, spec.worker_resources)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(spec, spec.workers_name, "worker", owned),
        "spec": {
            "replicas": replicas,
            "serviceName": spec.workers_name,
            # Workers start and leave together (a rescale adds or removes several at once).
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector(spec, "worker")},
            "template": {
                "metadata": {"labels": labels(spec, "worker")},
                "spec": _pod_spec(spec, container, 30),
            },
        },
    }


def token_secret(spec: JobSpec, token: str, owned: bool = True) -> dict[str, Any]:
    """The Secret with the job's token (the operator makes one when none is named)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, spec.token_secret_name, None, owned),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def spec_hash(obj: dict[str, Any]) -> str:
    """A hash of what was rendered, without replicas (scaled separately) or the hash itself."""
    body = copy.deepcopy(obj)
    body.get("spec", {}).pop("replicas", None)
    body.get("metadata", {}).get("annotations", {}).pop(SPEC_HASH, None)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render(
    spec: JobSpec, *, workers: int, coordinator: int = 1, owned: bool = True
) -> list[dict[str, Any]]:
    """Every object of the job except the token Secret, each with its spec hash."""
    objects = [
        config_map(spec, workers, owned),
        coordinator_service(spec, owned),
        worker_service(spec, owned),
        coordinator_deployment(spec, coordinator, owned),
        worker_statefulset(spec, workers, owned),
    ]
    for obj in objects:
        obj["metadata"].setdefault("annotations", {})[SPEC_HASH] = spec_hash(obj)
    return objects
