"""A ``MalstromJob`` resource read into a typed spec (with clear errors for bad fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from malstrom.errors import MalstromError

__all__ = [
    "API_VERSION",
    "COORDINATOR_PORT",
    "GROUP",
    "HTTP_PORT",
    "KIND",
    "PLURAL",
    "VERSION",
    "WORKER_PORT",
    "JobSpec",
    "SpecError",
]

GROUP = "malstrom.io"
"""The API group of the ``MalstromJob`` resource."""
VERSION = "v1"
"""The version of the ``MalstromJob`` resource."""
API_VERSION = f"{GROUP}/{VERSION}"
"""``apiVersion`` of a ``MalstromJob``."""
KIND = "MalstromJob"
"""``kind`` of the resource."""
PLURAL = "malstromjobs"
"""The resource's plural name (its path in the API)."""
#: The coordinator's gRPC port (workers' control streams, admin calls, health checks).
COORDINATOR_PORT = 7000
#: A worker's gRPC port (data plane and health checks).
WORKER_PORT = 7001
#: The coordinator's HTTP port (``--http``): ``/metrics`` for Prometheus, ``/healthz``, the
#: dashboard at ``/``; its POST actions take the job's token.
HTTP_PORT = 8080

_DEFAULT_COORDINATOR_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}
_DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}}


class SpecError(MalstromError, ValueError):
    """A ``MalstromJob`` whose spec cannot run (the message names the field)."""


@dataclass(frozen=True)
class JobSpec:
    """What a ``MalstromJob`` asks for (``spec`` plus the identity from ``metadata``)."""

    name: str
    namespace: str
    uid: str | None
    image: str
    app: str
    parallelism: int
    suspend: bool = False
    persistence: str | None = None
    snapshot_interval: float | None = None
    max_restarts: int = 3
    heartbeat_timeout: float = 30.0
    token_secret: str | None = None
    image_pull_policy: str | None = None
    service_account: str | None = None
    env: list[dict[str, Any]] = field(default_factory=list)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    coordinator_resources: dict[str, Any] = field(
        default_factory=lambda: dict(_DEFAULT_COORDINATOR_RESOURCES)
    )
    worker_resources: dict[str, Any] = field(
        default_factory=lambda: dict(_DEFAULT_WORKER_RESOURCES)
    )
    stop_grace_seconds: int = 120

    @property
    def token_secret_name(self) -> str:
        """The Secret holding the job's token (key ``token``)."""
        return self.token_secret or f"{self.name}-token"

    @property
    def coordinator_name(self) -> str:
        return f"{self.name}-coordinator"

    @property
    def workers_name(self) -> str:
        return f"{self.name}-worker"

    @property
    def config_name(self) -> str:
        return f"{self.name}-config"

    @property
    def coordinator_host(self) -> str:
        """The coordinator Service's DNS name from anywhere in the cluster (the operator)."""
        return f"{self.coordinator_name}.{self.namespace}.svc"

    @staticmethod
    def from_resource(resource: dict[str, Any]) -> JobSpec:
        """Read a ``MalstromJob`` (as the API returns it). Raises :class:`SpecError`."""
        meta = resource.get("metadata") or {}
        spec = resource.get("spec") or {}
        name = meta.get("name")
        if not name:
            raise SpecError("metadata.name is missing")
        # Child names add up to "-coordinator" (12 characters) to the job's name, and pod
        # names must stay valid DNS labels (63).
        if len(name) > 40:
            raise SpecError(f"metadata.name {name!r} is longer than 40 characters")

        def need(key: str, kind: type) -> Any:
            if key not in spec:
                raise SpecError(f"spec.{key} is required")
            return typed(key, kind)

        def typed(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = spec.get(key, default)
            if value is None:
                return default
            if isinstance(value, bool) and kind is not bool:
                raise SpecError(f"spec.{key} must be {_kind_name(kind)}, not {value!r}")
            if not isinstance(value, kind):
                raise SpecError(f"spec.{key} must be {_kind_name(kind)}, not {value!r}")
            return value

        parallelism = need("parallelism", int)
        if parallelism < 1:
            raise SpecError(
                f"spec.parallelism must be >= 1, not {parallelism} (to stop: spec.suspend)"
            )
        interval = typed("snapshotInterval", (int, float))
        if interval is not None and interval <= 0:
            raise SpecError(f"spec.snapshotInterval must be > 0 seconds, not {interval}")
        coordinator = typed("coordinator", dict, {})
        worker = typed("worker", dict, {})
        return JobSpec(
            name=name,
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid"),
            image=need("image", str),
            app=need("app", str),
            parallelism=parallelism,
            suspend=typed("suspend", bool, False),
            persistence=typed("persistence", str),
            snapshot_interval=float(interval) if interval is not None else None,
            max_restarts=typed("maxRestarts", int, 3),
            heartbeat_timeout=float(typed("heartbeatTimeout", (int, float), 30.0)),
            token_secret=typed("tokenSecret", str),
            image_pull_policy=typed("imagePullPolicy", str),
            service_account=typed("serviceAccountName", str),
            env=list(typed("env", list, [])),
            env_from=list(typed("envFrom", list, [])),
            volumes=list(typed("volumes", list, [])),
            volume_mounts=list(typed("volumeMounts", list, [])),
            coordinator_resources=coordinator.get("resources")
            or dict(_DEFAULT_COORDINATOR_RESOURCES),
            worker_resources=worker.get("resources") or dict(_DEFAULT_WORKER_RESOURCES),
            stop_grace_seconds=typed("stopGracePeriodSeconds", int, 120),
        )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({dict: "an object", list: "a list"})
    if isinstance(kind, tuple):
        return "a number" if set(kind) == {int, float} else " or ".join(map(_kind_name, kind))
    return names.get(kind, kind.__name__)
