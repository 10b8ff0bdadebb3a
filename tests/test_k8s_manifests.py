"""Everything shipped for Kubernetes, validated offline: every manifest against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors), MalstromJobs
against the CRD's own schema, what the operator renders for several jobs, and the container
image definition (installed by the script CI runs, entrypoint the `malstrom` command)."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from malstrom.k8s import JobSpec, render
from malstrom.k8s.__main__ import main as k8s_main
from malstrom.k8s._resources import IMAGE_UID, token_secret
from malstrom.k8s._spec import COORDINATOR_PORT, HTTP_PORT, WORKER_PORT

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes the manifests are for (the pod-index label came in 1.28), and the
#: newest whose schemas kubernetes-validate ships.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRD = yaml.safe_load((ROOT / "src" / "malstrom" / "k8s" / "crd.yaml").read_text())


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def shipped() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.relative_to(DEPLOY)}:{d['kind']}/{d['metadata']['name']}", d)
        for p in sorted(DEPLOY.rglob("*.yaml"))
        for d in documents(p)
    ]


def validate_k8s(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def crd_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema as JSON Schema (draft 4; ``nullable`` made explicit)."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
            if out.pop("nullable", False):
                out["type"] = [out["type"], "null"]
            return out
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    converted: dict[str, Any] = convert(schema)
    return converted


def validate_job(obj: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(crd_schema()).validate(obj)


@pytest.mark.parametrize("version", VERSIONS)
def test_shipped_manifests_are_valid_kubernetes(version: str) -> None:
    checked = 0
    for name, obj in shipped():
        if obj["kind"] == "MalstromJob":
            validate_job(obj)
        else:
            try:
                validate_k8s(obj, version)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{name}: {e.message}") from e
        checked += 1
    assert checked >= 12


def test_the_validation_catches_mistakes() -> None:
    deployment = next(d for _, d in shipped() if d["kind"] == "Deployment")
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(wrong, VERSIONS[-1])
    job = documents(DEPLOY / "example" / "events-job.yaml")[0]
    with pytest.raises(jsonschema.ValidationError):
        validate_job({**job, "spec": {**job["spec"], "parallelism": 0}})
    with pytest.raises(jsonschema.ValidationError):
        validate_job({**job, "spec": {k: v for k, v in job["spec"].items() if k != "image"}})


def job(**spec: Any) -> dict[str, Any]:
    base = {"image": "malstrom:0.1.0", "app": "/opt/jobs/job.py:build", "parallelism": 2}
    return {
        "apiVersion": "malstrom.io/v1",
        "kind": "MalstromJob",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "a1b2c3d4-0000-4000-8000-1"},
        "spec": {**base, **spec},
    }


RENDERED = {
    "minimal": job(),
    "everything": job(
        parallelism=8,
        persistence="s3://snapshots/orders",
        snapshotInterval=2.5,
        maxRestarts=10,
        heartbeatTimeout=60,
        tokenSecret="orders-token-v2",
        imagePullPolicy="Always",
        serviceAccountName="orders",
        stopGracePeriodSeconds=300,
        env=[{"name": "KAFKA_BOOTSTRAP", "value": "kafka:9092"}],
        envFrom=[{"secretRef": {"name": "s3-credentials"}}],
        volumes=[{"name": "code", "configMap": {"name": "orders-code"}}],
        volumeMounts=[{"name": "code", "mountPath": "/opt/jobs"}],
        coordinator={"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
        worker={
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
        },
    ),
    "suspended": job(suspend=True),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", list(RENDERED))
def test_what_the_operator_renders_is_valid(name: str, version: str) -> None:
    resource = RENDERED[name]
    validate_job(resource)
    spec = JobSpec.from_resource(resource)
    objects = [*render(spec, workers=spec.parallelism), token_secret(spec, "t0k3n")]
    for obj in objects:
        validate_k8s(obj, version)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Service", "Service", "StatefulSet"]


def test_pods_are_probed_on_their_grpc_health_service_and_request_resources() -> None:
    spec = JobSpec.from_resource(RENDERED["minimal"])
    workloads = {o["kind"]: o for o in render(spec, workers=2)}
    for kind, port in (("Deployment", COORDINATOR_PORT), ("StatefulSet", WORKER_PORT)):
        pod = workloads[kind]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (kind, probe)
        assert container["ports"][0] == {"name": "grpc", "containerPort": port, "protocol": "TCP"}
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID
        env = {e["name"]: e for e in container["env"]}
        assert env["MALSTROM_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "orders-token", "key": "token"}
        }
    coordinator = workloads["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert coordinator["args"][:2] == ["coordinator", "$(MALSTROM_APP)"]
    assert "--listen" in coordinator["args"]
    worker = workloads["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][worker["args"].index("--listen") + 1] == f"0.0.0.0:{WORKER_PORT}"
    assert worker["args"][worker["args"].index("--coordinator") + 1] == "orders-coordinator:7000"


def test_the_coordinator_serves_metrics_for_prometheus() -> None:
    spec = JobSpec.from_resource(RENDERED["minimal"])
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(spec, workers=2)}
    deployment = objects[("Deployment", "orders-coordinator")]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--http") + 1] == f"0.0.0.0:{HTTP_PORT}"
    assert {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"} in container["ports"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }
    service = objects[("Service", "orders-coordinator")]
    assert {"name": "http", "port": HTTP_PORT, "targetPort": "http"} in service["spec"]["ports"]
    # Workers serve no HTTP: the coordinator has the whole job's metrics.
    worker = objects[("StatefulSet", "orders-worker")]["spec"]["template"]
    assert "--http" not in worker["spec"]["containers"][0]["args"]
    assert "annotations" not in worker["metadata"]
    # The ServiceMonitor of docs/deployment.md selects this Service and its http port.
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = next(b for b in text.split("```yaml\n")[1:] if "ServiceMonitor" in b)
    monitor = yaml.safe_load(block.split("```", 1)[0])
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    assert not wanted.items() <= objects[("Service", "orders-worker")]["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_shipped_crd_and_plain_manifests_are_current() -> None:
    """deploy/kubernetes/ holds copies: the CRD, the example's code, and the plain
    manifests `python -m malstrom.k8s render example/events-job.yaml` prints."""
    assert (DEPLOY / "crd.yaml").read_text() == (
        ROOT / "src" / "malstrom" / "k8s" / "crd.yaml"
    ).read_text()
    code = documents(DEPLOY / "example" / "events-code.yaml")[0]
    assert code["data"]["events.py"] == (ROOT / "examples" / "events.py").read_text()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert k8s_main(["render", "deploy/kubernetes/example/events-job.yaml"]) == 0
    assert out.getvalue() == (DEPLOY / "plain" / "events.yaml").read_text(), (
        "run: python -m malstrom.k8s render deploy/kubernetes/example/events-job.yaml "
        "> deploy/kubernetes/plain/events.yaml"
    )


def test_crd_matches_the_operator() -> None:
    from malstrom.k8s._spec import GROUP, KIND, PLURAL, VERSION

    assert CRD["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert CRD["spec"]["names"]["kind"] == KIND
    (version,) = CRD["spec"]["versions"]
    assert version["name"] == VERSION and version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.parallelism"
    spec_fields = set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])
    # Every field the operator reads is declared (the API server drops undeclared ones).
    source = (ROOT / "src" / "malstrom" / "k8s" / "_spec.py").read_text()
    read = set(re.findall(r'(?:need|typed)\("(\w+)"', source)) | {"coordinator", "worker"}
    assert read == spec_fields


# ----- the container image ----------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_image_installs_with_the_script_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert "bash scripts/setup.sh" in (ROOT / "scripts" / "test.sh").read_text()
    runs = [arg for op, arg in dockerfile() if op == "RUN"]
    assert runs
    # One RUN: a compiler for the C router, the script, the compiler removed again.
    install = runs[0].split(" && ")
    assert "bash scripts/setup.sh --lib" in " ".join(install), runs[0]
    setup = next(i for i, step in enumerate(install) if "scripts/setup.sh" in step)
    assert any("install" in step and "gcc" in step for step in install[:setup]), runs[0]
    assert any("purge" in step and "gcc" in step for step in install[setup:]), runs[0]
    # What it copies is in the build context (.dockerignore lets it through).
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for op, arg in dockerfile():
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert f"!{source.rstrip('/')}" in ignore or f"!{source}" in ignore, source
                assert (ROOT / source).exists(), source


def test_the_image_runs_the_malstrom_command_as_the_manifests_expect() -> None:
    ops = dict(dockerfile())
    assert ops["ENTRYPOINT"] == '["malstrom"]'
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["malstrom"] == "malstrom.cli:main"
    assert ops["USER"] == str(IMAGE_UID)
    assert set(ops["EXPOSE"].split()) == {str(COORDINATOR_PORT), str(WORKER_PORT)}
    assert "/opt/malstrom/.venv/bin" in ops["ENV"]
    assert ops["FROM"].startswith("python:3.11")
