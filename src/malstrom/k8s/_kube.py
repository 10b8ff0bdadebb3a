"""The operator's :class:`~malstrom.k8s._runner.ClusterApi` on a real Kubernetes API server
(the official ``kubernetes`` client; ``pip install 'malstrom[k8s]'``).

Children are written with server-side apply (field manager ``malstrom-operator``), scaled
through the ``scale`` subresource, and found by the label ``app.kubernetes.io/instance``.
This module is the one part of the operator that only runs against a cluster: the tests
cover everything up to it (rendering, reconcile, the runner on local processes).
"""

from __future__ import annotations

import base64
from typing import Any

from malstrom.k8s._spec import API_VERSION, COORDINATOR_PORT, KIND, JobSpec

__all__ = ["FIELD_MANAGER", "KubeApi"]

FIELD_MANAGER = "malstrom-operator"


class KubeApi:
    """Talks to the cluster the operator runs in (or the current kubeconfig context).

    Everything goes through the client's ``DynamicClient`` with plain dicts (the same shapes
    as ``kubectl get -o json``), so what it reads is what the tests' recorded objects are.
    """

    def __init__(self, client: Any = None) -> None:
        import kubernetes
        from kubernetes.dynamic import DynamicClient
        from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

        if client is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            client = kubernetes.client.ApiClient()
        self._dynamic: Any = DynamicClient(client)
        self._not_found = NotFoundError
        self._conflict = ConflictError

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._dynamic.resources.get(api_version=api_version, kind=kind)

    def _list(self, api_version: str, kind: str, spec: JobSpec) -> list[dict[str, Any]]:
        found = self._resource(api_version, kind).get(
            namespace=spec.namespace, label_selector=f"app.kubernetes.io/instance={spec.name}"
        )
        items: list[dict[str, Any]] = found.to_dict().get("items") or []
        for item in items:  # list items come without their kind
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        return items

    def list_children(self, spec: JobSpec) -> list[dict[str, Any]]:
        return [
            *self._list("v1", "ConfigMap", spec),
            *self._list("v1", "Service", spec),
            *self._list("apps/v1", "Deployment", spec),
            *self._list("apps/v1", "StatefulSet", spec),
        ]

    def list_pods(self, spec: JobSpec) -> list[dict[str, Any]]:
        return self._list("v1", "Pod", spec)

    def read_token(self, namespace: str, name: str) -> str | None:
        try:
            secret = self._resource("v1", "Secret").get(name=name, namespace=namespace)
        except self._not_found:
            return None
        data = secret.to_dict().get("data") or {}
        return base64.b64decode(data["token"]).decode() if "token" in data else None

    def apply(self, obj: dict[str, Any]) -> None:
        self._resource(obj["apiVersion"], obj["kind"]).server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"]["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )

    def create_secret(self, obj: dict[str, Any]) -> None:
        try:
            self._resource("v1", "Secret").create(body=obj, namespace=obj["metadata"]["namespace"])
        except self._conflict:  # it exists: keep its token
            pass

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        if kind not in ("Deployment", "StatefulSet"):
            raise ValueError(f"cannot scale a {kind}")
        self._resource("apps/v1", kind).patch(
            body={"spec": {"replicas": replicas}},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def patch_status(self, resource: dict[str, Any], status: dict[str, Any]) -> None:
        meta = resource["metadata"]
        try:
            self._resource(API_VERSION, KIND).status.patch(
                body={"status": status},
                name=meta["name"],
                namespace=meta["namespace"],
                content_type="application/merge-patch+json",
            )
        except self._not_found:  # deleted meanwhile
            pass

    def coordinator_address(self, spec: JobSpec) -> str:
        return f"{spec.coordinator_host}:{COORDINATOR_PORT}"
