"""The operator without Kubernetes: the job's objects run as local processes.

:class:`LocalCluster` stands where the API server and the kubelets would be. It stores the
objects the operator applies, and a kubelet thread keeps one process per pod of each
Deployment and StatefulSet, built from the pod template exactly as rendered for Kubernetes:

- the container's ``args`` run as ``python -m malstrom.cli ARGS`` (the image's entrypoint is
  the ``malstrom`` command), with its ``env`` resolved (values, Secret and ConfigMap keys,
  the pod's name, index and IP) and ``$(VAR)`` references expanded;
- container ports become loopback ports: a Service's port gets one stable local port (its
  "cluster IP"), and a ``0.0.0.0:PORT`` or ``SERVICE:PORT`` in the arguments is rewritten to
  it; ConfigMap, emptyDir and PersistentVolumeClaim volumes become directories, and mount
  paths in arguments and environment values are rewritten to them;
- ``restartPolicy: Always``: a process that exits is started again after a backoff (exit 0
  too), its exit code and the tail of its log kept as the last termination state;
- scaling down or deleting sends SIGTERM, then SIGKILL after the grace period; readiness is
  the container's real gRPC readiness probe (the health service of the process).

What it does not emulate: scheduling, images (the local Python environment is the image),
resource limits, security contexts, network policies, the probes' timing details. The
operator's own logic (observe -> reconcile -> act) is the same code that runs under kopf.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malstrom.k8s._resources import POD_INDEX_LABEL, TERMINATION_LOG
from malstrom.k8s._runner import Operator
from malstrom.k8s._spec import JobSpec

__all__ = ["LocalCluster", "run_operator"]

log = logging.getLogger("malstrom.k8s.local")

_CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "StatefulSet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Pod:
    name: str
    namespace: str
    owner: tuple[str, str, str]  # (kind, namespace, name) of the workload
    template_hash: str
    template: dict[str, Any]
    index: int | None  # StatefulSet ordinal
    ports: dict[int, int]  # container port -> local port
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_exit: int | None = None
    last_message: str | None = None
    restart_at: float = 0.0
    terminating_since: float | None = None
    ready: bool = False
    next_probe: float = 0.0
    log_path: Path = field(init=False)
    termination_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.dir / "log"
        self.termination_log = self.dir / "termination-log"

    @property
    def labels(self) -> dict[str, str]:
        labels = dict((self.template.get("metadata") or {}).get("labels") or {})
        if self.index is not None:
            labels[POD_INDEX_LABEL] = str(self.index)
        return labels

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.template["spec"]["containers"][0])

    @property
    def grace(self) -> float:
        return float(self.template["spec"].get("terminationGracePeriodSeconds", 30))


class LocalCluster:
    """Runs MalstromJobs' children as local processes (see the module docs).

    ``root`` holds the volumes, each pod's working directory and its log. ``python`` is
    the interpreter the pods run. ``restart_backoff`` is the first restart delay (doubling up
    to ``max_backoff``, like the kubelet's 10 s to 5 min, shortened for tests).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        restart_backoff: float = 1.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.base_env = dict(os.environ if env is None else env)
        self.restart_backoff = restart_backoff
        self.max_backoff = max_backoff
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[str, _Pod] = {}
        self._service_ports: dict[tuple[str, str, int], int] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._kubelet = threading.Thread(
            target=self._kubelet_loop, name="local-kubelet", daemon=True
        )
        self._kubelet.start()

    # ----- the MalstromJob API (what kubectl would do) -----------------------------------------
    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create a MalstromJob; returns it as stored (uid, generation)."""
        job = copy.deepcopy(resource)
        meta = job.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        with self._lock:
            key = (meta["namespace"], meta["name"])
            if key in self._jobs:
                raise ValueError(f"MalstromJob {key[0]}/{key[1]} already exists")
            self._jobs[key] = job
            return copy.deepcopy(job)

    def patch_spec(self, namespace: str, name: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into a MalstromJob's spec (a new generation, like kubectl patch)."""
        with self._lock:
            job = self._jobs[(namespace, name)]
            job["spec"].update(copy.deepcopy(changes))
            job["metadata"]["generation"] += 1

    def delete(self, namespace: str, name: str) -> None:
        """Ask to delete a MalstromJob: it goes once the operator finalized it."""
        with self._lock:
            job = self._jobs[(namespace, name)]
            job["metadata"].setdefault("deletionTimestamp", _now())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MalstromJob as stored now (None once it is gone)."""
        with self._lock:
            job = self._jobs.get((namespace, name))
            return copy.deepcopy(job) if job is not None else None

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(j) for j in self._jobs.values()]

    def finalize(self, namespace: str, name: str) -> None:
        """Remove a deleted MalstromJob and (garbage collection) the objects it owns."""
        with self._lock:
            job = self._jobs.pop((namespace, name), None)
            if job is None:
                return
            uid = job["metadata"]["uid"]
            for key, obj in list(self._objects.items()):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    del self._objects[key]

    # ----- ClusterApi -----------------------------------------------------------------------------
    def list_children(self, spec: JobSpec) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for (kind, ns, _), obj in self._objects.items():
                labels = obj["metadata"].get("labels") or {}
                if (
                    kind in _CHILD_KINDS
                    and ns == spec.namespace
                    and labels.get("app.kubernetes.io/instance") == spec.name
                ):
                    obj = copy.deepcopy(obj)
                    if kind in ("Deployment", "StatefulSet"):
                        pods = self._pods_of((kind, ns, obj["metadata"]["name"]))
                        obj["status"] = {
                            "replicas": len(pods),
                            "readyReplicas": sum(p.ready for p in pods),
                        }
                    out.append(obj)
            return out

    def list_pods(self, spec: JobSpec) -> list[dict[str, Any]]:
        with self._lock:
            pods = [
                p
                for p in self._pods.values()
                if p.namespace == spec.namespace
                and p.labels.get("app.kubernetes.io/instance") == spec.name
            ]
            return [self._pod_object(p) for p in pods]

    def read_token(self, namespace: str, name: str) -> str | None:
        with self._lock:
            secret = self._objects.get(("Secret", namespace, name))
            return None if secret is None else _secret_data(secret).get("token")

    def apply(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._objects[(obj["kind"], meta.get("namespace", "default"), meta["name"])] = (
                copy.deepcopy(obj)
            )

    def create_secret(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._objects.setdefault(
                ("Secret", meta.get("namespace", "default"), meta["name"]), copy.deepcopy(obj)
            )

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        with self._lock:
            self._objects[(kind, namespace, name)]["spec"]["replicas"] = replicas

    def patch_status(self, resource: dict[str, Any], status: dict[str, Any]) -> None:
        meta = resource["metadata"]
        with self._lock:
            job = self._jobs.get((meta.get("namespace", "default"), meta["name"]))
            if job is not None:
                job.setdefault("status", {}).update(copy.deepcopy(status))

    def coordinator_address(self, spec: JobSpec) -> str:
        from malstrom.k8s._spec import COORDINATOR_PORT

        with self._lock:
            port = self._service_port(spec.namespace, spec.coordinator_name, COORDINATOR_PORT)
        return f"127.0.0.1:{port}"

    # ----- for tests and tools ------------------------------------------------------------------
    def service_address(self, namespace: str, service: str, port: int) -> str:
        """Where a Service's port answers on this machine (its stand-in for a cluster IP)."""
        with self._lock:
            return f"127.0.0.1:{self._service_port(namespace, service, port)}"

    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def pids(self, prefix: str = "") -> dict[str, int]:
        """Running pod processes by pod name."""
        with self._lock:
            return {
                name: p.proc.pid
                for name, p in sorted(self._pods.items())
                if name.startswith(prefix) and p.proc is not None and p.proc.poll() is None
            }

    def pod_log(self, name: str) -> str:
        with self._lock:
            pod = self._pods.get(name)
        return pod.log_path.read_text(errors="replace") if pod is not None else ""

    def close(self) -> None:
        """Stop the kubelet and kill every pod process."""
        self._closed.set()
        self._kubelet.join(10)
        with self._lock:
            pods = list(self._pods.values())
            self._pods.clear()
        for pod in pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- the kubelet ---------------------------------------------------------------------------
    def _kubelet_loop(self) -> None:
        while not self._closed.wait(0.05):
            try:
                with self._lock:
                    self._sync_pods()
                self._probe()
            except Exception:
                log.exception("local kubelet")

    def _pods_of(self, owner: tuple[str, str, str]) -> list[_Pod]:
        return [p for p in self._pods.values() if p.owner == owner]

    def _sync_pods(self) -> None:
        now = time.monotonic()
        wanted: dict[str, tuple[tuple[str, str, str], dict[str, Any], int | None]] = {}
        for (kind, ns, name), obj in self._objects.items():
            if kind not in ("Deployment", "StatefulSet"):
                continue
            replicas = int(obj["spec"].get("replicas") or 0)
            template = obj["spec"]["template"]
            for i in range(replicas):
                pod_name = f"{name}-{i}"
                wanted[pod_name] = (
                    (kind, ns, name),
                    template,
                    i if kind == "StatefulSet" else None,
                )
        for pod in list(self._pods.values()):
            want = wanted.get(pod.name)
            stale = want is None or _hash(want[1]) != pod.template_hash
            if stale and pod.terminating_since is None:
                self._terminate(pod, now)
            if pod.terminating_since is not None:
                if pod.proc is None or pod.proc.poll() is not None:
                    del self._pods[pod.name]  # gone: a new one may take its name
                elif now - pod.terminating_since > pod.grace:
                    pod.proc.kill()
        for pod_name, (owner, template, index) in wanted.items():
            if pod_name not in self._pods:
                self._pods[pod_name] = self._new_pod(pod_name, owner, template, index)
        for pod in self._pods.values():
            if pod.terminating_since is not None:
                continue
            if pod.proc is not None and pod.proc.poll() is not None:
                self._exited(pod, now)
            if pod.proc is None and now >= pod.restart_at:
                self._start(pod)

    def _terminate(self, pod: _Pod, now: float) -> None:
        pod.terminating_since = now
        pod.ready = False
        if pod.proc is not None and pod.proc.poll() is None:
            pod.proc.send_signal(signal.SIGTERM)

    def _exited(self, pod: _Pod, now: float) -> None:
        assert pod.proc is not None
        code = pod.proc.returncode
        pod.last_exit = code if code >= 0 else 128 - code  # a signal as the kubelet shows it
        # The termination message: what the container wrote to its termination log, else
        # (FallbackToLogsOnError) the tail of its log when it failed.
        written = pod.termination_log.read_text(errors="replace").strip()
        pod.last_message = written or (_tail(pod.log_path) if code != 0 else None)
        pod.proc = None
        pod.ready = False
        pod.restarts += 1
        delay = min(self.restart_backoff * 2 ** (pod.restarts - 1), self.max_backoff)
        pod.restart_at = now + delay

    def _new_pod(
        self,
        name: str,
        owner: tuple[str, str, str],
        template: dict[str, Any],
        index: int | None,
    ) -> _Pod:
        pod_dir = self.root / "pods" / name
        shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True)
        template = copy.deepcopy(template)
        pod = _Pod(
            name=name,
            namespace=owner[1],
            owner=owner,
            template_hash=_hash(template),
            template=template,
            index=index,
            ports={},
            dir=pod_dir,
        )
        for port in pod.container.get("ports") or []:
            number = int(port["containerPort"])
            pod.ports[number] = self._port_for(pod, number, port.get("name"))
        return pod

    def _port_for(self, pod: _Pod, number: int, port_name: str | None) -> int:
        """A Service selecting this pod on this port gives its stable port; else a fresh one."""
        for (kind, ns, svc_name), svc in self._objects.items():
            if kind != "Service" or ns != pod.namespace:
                continue
            spec = svc["spec"]
            if spec.get("clusterIP") == "None" or not _selects(spec.get("selector"), pod.labels):
                continue
            for sp in spec.get("ports") or []:
                target = sp.get("targetPort", sp["port"])
                if target in (number, port_name):
                    return self._service_port(ns, svc_name, int(sp["port"]))
        return _free_port()

    def _service_port(self, namespace: str, service: str, port: int) -> int:
        key = (namespace, service, port)
        if key not in self._service_ports:
            self._service_ports[key] = _free_port()
        return self._service_ports[key]

    def _start(self, pod: _Pod) -> None:
        container = pod.container
        env = self._env(pod, container)
        mounts = self._mounts(pod)
        path = container.get("terminationMessagePath", TERMINATION_LOG)
        mounts.append((path, str(pod.termination_log)))
        pod.termination_log.write_text("")
        args = [_expand(a, env) for a in container.get("args") or []]
        args = [self._rewrite(pod, a, mounts) for a in args]
        env = {k: _remap_paths(v, mounts) for k, v in env.items()}
        command = [self.python, "-m", "malstrom.cli", *args]
        log.info("pod %s: %s", pod.name, " ".join(command[3:]))
        with open(pod.log_path, "ab") as out:
            out.write(f"--- start {' '.join(args)}\n".encode())
            out.flush()
            pod.proc = subprocess.Popen(
                command,
                cwd=pod.dir,
                env={**self.base_env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.next_probe = time.monotonic() + 0.2

    def _env(self, pod: _Pod, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                ref = self._objects.get(("Secret", pod.namespace, source["secretRef"]["name"]))
                env.update(_secret_data(ref) if ref else {})
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                ref = self._objects.get(("ConfigMap", pod.namespace, name))
                env.update((ref or {}).get("data") or {})
        for var in container.get("env") or []:
            value = self._env_value(pod, var, env)
            if value is not None:
                env[var["name"]] = value
        return env

    def _env_value(self, pod: _Pod, var: dict[str, Any], env: dict[str, str]) -> str | None:
        if "value" in var:
            return _expand(str(var["value"]), env)
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = self._objects.get(("Secret", pod.namespace, ref["name"]))
            return _secret_data(secret).get(ref["key"]) if secret else None
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = self._objects.get(("ConfigMap", pod.namespace, ref["name"]))
            return ((cm or {}).get("data") or {}).get(ref["key"])
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": pod.name,
                "metadata.namespace": pod.namespace,
                "status.podIP": "127.0.0.1",
            }
            m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
            return pod.labels.get(m.group(1)) if m else fields.get(path)
        return None

    def _mounts(self, pod: _Pod) -> list[tuple[str, str]]:
        """(mount path, local directory) pairs, longest mount path first."""
        volumes = {v["name"]: v for v in pod.template["spec"].get("volumes") or []}
        out = []
        for mount in pod.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            if "persistentVolumeClaim" in volume:
                local = self.root / "pvc" / volume["persistentVolumeClaim"]["claimName"]
            elif "configMap" in volume:
                local = pod.dir / "volumes" / mount["name"]
                cm = self._objects.get(("ConfigMap", pod.namespace, volume["configMap"]["name"]))
                local.mkdir(parents=True, exist_ok=True)
                for key, text in ((cm or {}).get("data") or {}).items():
                    (local / key).write_text(text)
            elif "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
            else:  # emptyDir and anything else: a directory of the pod
                local = pod.dir / "volumes" / mount["name"]
            if mount.get("subPath"):
                local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            out.append((mount["mountPath"].rstrip("/"), str(local)))
        return sorted(out, key=lambda m: -len(m[0]))

    def _rewrite(self, pod: _Pod, arg: str, mounts: list[tuple[str, str]]) -> str:
        m = re.fullmatch(r"0\.0\.0\.0:(\d+)", arg)
        if m and int(m.group(1)) in pod.ports:
            return f"127.0.0.1:{pod.ports[int(m.group(1))]}"
        m = _SERVICE_ADDRESS.fullmatch(arg)
        if m:
            ns = m.group(2) or pod.namespace
            if ("Service", ns, m.group(1)) in self._objects:
                return f"127.0.0.1:{self._service_port(ns, m.group(1), int(m.group(3)))}"
        return _remap_paths(arg, mounts)

    def _probe(self) -> None:
        """Run each running pod's readiness probe (gRPC health check) once a second."""
        now = time.monotonic()
        with self._lock:
            due = [
                p
                for p in self._pods.values()
                if p.proc is not None and p.terminating_since is None and now >= p.next_probe
            ]
        for pod in due:
            probe = (pod.container.get("readinessProbe") or {}).get("grpc")
            ok = True
            if probe is not None:
                ok = _grpc_serving(f"127.0.0.1:{pod.ports.get(int(probe['port']), 0)}")
            with self._lock:
                pod.ready = ok and pod.proc is not None and pod.proc.poll() is None
                pod.next_probe = time.monotonic() + (1.0 if ok else 0.3)

    def _pod_object(self, pod: _Pod) -> dict[str, Any]:
        running = pod.proc is not None and pod.proc.poll() is None
        status: dict[str, Any] = {
            "name": "malstrom",
            "ready": pod.ready,
            "restartCount": pod.restarts,
            "state": {"running": {}} if running else {"waiting": {"reason": "CrashLoopBackOff"}},
        }
        if pod.last_exit is not None:
            terminated: dict[str, Any] = {"exitCode": pod.last_exit}
            if pod.last_message:
                terminated["message"] = pod.last_message
            status["lastState"] = {"terminated": terminated}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "status": {
                "phase": "Running" if running else "Pending",
                "podIP": "127.0.0.1",
                "containerStatuses": [status],
            },
        }


def run_operator(
    cluster: LocalCluster,
    operator: Operator | None = None,
    *,
    stop: threading.Event,
    interval: float = 1.0,
    on_round: Callable[[dict[str, Any], Any], None] | None = None,
) -> None:
    """The operator's loop over the local cluster's MalstromJobs until ``stop`` is set: what
    kopf's event handlers and timer do on a real cluster (one job after the other here)."""
    operator = operator or Operator(cluster)
    while not stop.is_set():
        wait = interval
        for job in cluster.jobs():
            meta = job["metadata"]
            plan = operator.reconcile_once(job)
            if on_round is not None:
                on_round(job, plan)
            if meta.get("deletionTimestamp") and plan.finalized:
                cluster.finalize(meta["namespace"], meta["name"])
            if plan.requeue is not None:
                wait = min(wait, plan.requeue)
        stop.wait(wait)


# ----- helpers ------------------------------------------------------------------------------------
#: ``SERVICE[.NAMESPACE[.svc[.cluster.local]]]:PORT``
_SERVICE_ADDRESS = re.compile(
    r"([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)"
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _hash(template: dict[str, Any]) -> str:
    return json.dumps(template, sort_keys=True)


def _selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (``$$`` escapes; unknown names stay as they are)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


def _remap_paths(text: str, mounts: list[tuple[str, str]]) -> str:
    for mount, local in mounts:
        if text == mount or text.startswith(mount + "/") or text.startswith(mount + ":"):
            return local + text[len(mount) :]
        for prefix in ("file://", "slatedb://"):
            if text.startswith(prefix + mount):
                return prefix + local + text[len(prefix) + len(mount) :]
    return text


def _tail(path: Path, lines: int = 20) -> str | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:]) or None


def _grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=0.5
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
