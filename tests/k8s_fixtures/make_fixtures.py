"""Write the API objects the reconcile tests read (run after changing what the operator
renders: `python tests/k8s_fixtures/make_fixtures.py`).

They have the shape `kubectl get -o yaml` shows for a MalstromJob `wordcount` with 2 workers
in namespace `streaming`: what the operator applied plus what the API server adds (uid,
resourceVersion, managedFields, defaulted fields, status). No cluster runs where these tests
run, so they are written here, field by field, after objects of a Kubernetes 1.31 cluster.
"""

from __future__ import annotations

import copy
import zlib
from pathlib import Path
from typing import Any

import yaml

from malstrom.k8s import JobSpec, render
from malstrom.k8s._resources import token_secret

HERE = Path(__file__).resolve().parent
UID = "6f1c2a9e-4b1d-4c57-9e7a-2f5d8c3b1a40"
CREATED = "2026-11-30T09:12:44Z"

JOB: dict[str, Any] = {
    "apiVersion": "malstrom.io/v1",
    "kind": "MalstromJob",
    "metadata": {
        "annotations": {
            "kopf.zalando.org/last-handled-configuration": (
                '{"spec":{"app":"/opt/jobs/wordcount.py:build","image":'
                '"registry.example.com/analytics/wordcount:1.4.2","parallelism":2,'
                '"persistence":"s3://analytics-snapshots/wordcount","snapshotInterval":10,'
                '"suspend":false}}'
            )
        },
        "creationTimestamp": CREATED,
        "finalizers": ["malstrom.io/finalizer"],
        "generation": 1,
        "managedFields": [
            {
                "apiVersion": "malstrom.io/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {".": {}, "f:app": {}, "f:image": {}, "f:parallelism": {}}},
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "time": CREATED,
            }
        ],
        "name": "wordcount",
        "namespace": "streaming",
        "resourceVersion": "918273",
        "uid": UID,
    },
    "spec": {
        "app": "/opt/jobs/wordcount.py:build",
        "envFrom": [{"secretRef": {"name": "snapshot-store-credentials"}}],
        "image": "registry.example.com/analytics/wordcount:1.4.2",
        "parallelism": 2,
        "persistence": "s3://analytics-snapshots/wordcount",
        "snapshotInterval": 10,
        "suspend": False,
    },
    "status": {
        "kopf": {"progress": {}},
        "lastSnapshot": 41,
        "message": "running on 2 workers",
        "observedGeneration": 1,
        "parallelism": 2,
        "phase": "Running",
        "restoredFrom": None,
        "workers": 2,
    },
}


def server_side(obj: dict[str, Any], rv: int) -> dict[str, Any]:
    """What the API server adds to an applied object."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    meta.update(
        creationTimestamp=CREATED,
        resourceVersion=str(rv),
        uid=f"{rv:08x}-6a2c-4f0e-8d55-3c1e9a7b2f{rv % 100:02d}",
        managedFields=[
            {
                "apiVersion": obj["apiVersion"],
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}, "f:ownerReferences": {}}},
                "manager": "malstrom-operator",
                "operation": "Apply",
                "time": CREATED,
            }
        ],
    )
    if obj["kind"] == "Service":
        spec = out["spec"]
        if spec.get("clusterIP") != "None":
            spec["clusterIP"] = "10.96.41.17"
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.update(
            internalTrafficPolicy="Cluster",
            ipFamilies=["IPv4"],
            ipFamilyPolicy="SingleStack",
            sessionAffinity="None",
            type="ClusterIP",
        )
        for port in spec["ports"]:
            port["protocol"] = "TCP"
        out["status"] = {"loadBalancer": {}}
    if obj["kind"] in ("Deployment", "StatefulSet"):
        spec = out["spec"]
        spec["revisionHistoryLimit"] = 10
        pod = spec["template"]["spec"]
        pod.update(
            dnsPolicy="ClusterFirst",
            restartPolicy="Always",
            schedulerName="default-scheduler",
        )
        container = pod["containers"][0]
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container["terminationMessagePath"] = "/dev/termination-log"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            container[probe].setdefault("successThreshold", 1)
            container[probe].setdefault("timeoutSeconds", 1)
            container[probe]["grpc"].setdefault("service", "")
        replicas = spec["replicas"]
        if obj["kind"] == "Deployment":
            spec["progressDeadlineSeconds"] = 600
            out["status"] = {
                "availableReplicas": replicas,
                "conditions": [
                    {
                        "lastTransitionTime": CREATED,
                        "lastUpdateTime": CREATED,
                        "message": "Deployment has minimum availability.",
                        "reason": "MinimumReplicasAvailable",
                        "status": "True",
                        "type": "Available",
                    }
                ],
                "observedGeneration": 1,
                "readyReplicas": replicas,
                "replicas": replicas,
                "updatedReplicas": replicas,
            }
        else:
            spec["persistentVolumeClaimRetentionPolicy"] = {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            }
            out["status"] = {
                "availableReplicas": replicas,
                "collisionCount": 0,
                "currentReplicas": replicas,
                "currentRevision": "wordcount-worker-7c9d5f6b8d",
                "observedGeneration": 1,
                "readyReplicas": replicas,
                "replicas": replicas,
                "updateRevision": "wordcount-worker-7c9d5f6b8d",
                "updatedReplicas": replicas,
            }
    return out


def pod(name: str, component: str, index: int | None, ip: str) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": "wordcount",
        "app.kubernetes.io/managed-by": "malstrom-operator",
        "app.kubernetes.io/name": "malstrom",
    }
    if index is not None:
        labels["apps.kubernetes.io/pod-index"] = str(index)
        labels["statefulset.kubernetes.io/pod-name"] = name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": CREATED,
            "labels": labels,
            "name": name,
            "namespace": "streaming",
            "resourceVersion": "918400",
            "uid": f"{zlib.crc32(name.encode()):08x}-1c2b-4e5f-8a9b-0c1d2e3f4a5b",
        },
        "spec": {"containers": [{"name": "malstrom"}], "nodeName": "node-pool-a-2"},
        "status": {
            "conditions": [
                {"lastTransitionTime": CREATED, "status": "True", "type": "Ready"},
                {"lastTransitionTime": CREATED, "status": "True", "type": "ContainersReady"},
            ],
            "containerStatuses": [
                {
                    "containerID": "containerd://4f2a9c1e7b3d",
                    "image": "registry.example.com/analytics/wordcount:1.4.2",
                    "imageID": "registry.example.com/analytics/wordcount@sha256:8c1e4a",
                    "lastState": {},
                    "name": "malstrom",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": CREATED}},
                }
            ],
            "hostIP": "10.0.3.14",
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "Burstable",
            "startTime": CREATED,
        },
    }


def main() -> None:
    spec = JobSpec.from_resource(JOB)
    children = [server_side(o, 918200 + i) for i, o in enumerate(render(spec, workers=2))]
    secret = server_side(token_secret(spec, "x"), 918190)
    secret.pop("stringData")
    secret["data"] = {"token": "NmQ0ZjFhOWMyZTdiM2Q1YThmMGMxZTRiOWEyZDdmNmM="}
    pods = [
        pod("wordcount-coordinator-5d8f7c9b6-x2kqp", "coordinator", None, "10.244.1.23"),
        pod("wordcount-worker-0", "worker", 0, "10.244.2.41"),
        pod("wordcount-worker-1", "worker", 1, "10.244.3.18"),
    ]
    files = {
        "job.yaml": [JOB],
        "children.yaml": children,
        "secret.yaml": [secret],
        "pods.yaml": pods,
    }
    for name, docs in files.items():
        text = yaml.safe_dump_all(docs, sort_keys=True)
        (HERE / name).write_text(f"# Written by make_fixtures.py: API objects as served.\n{text}")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
