"""Packaging: one version, the license, the extras, a lean core install, and the range of
grpcio/protobuf releases malstrom runs on (installed and run here, not assumed)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import malstrom
from malstrom.transport._grpc_codegen import GRPCIO_FLOOR, PROTOBUF_FLOOR

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: Optional packages: importing malstrom (and its command) must load none of them.
OPTIONAL_MODULES = (
    "confluent_kafka",
    "psycopg",
    "pyarrow",
    "obstore",
    "slatedb",
    "kopf",
    "kubernetes",
    "yaml",
    "pytest",
    "hypothesis",
)


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def lower_bound(name: str) -> str:
    for req in PROJECT["dependencies"]:
        if requirement_name(req) == name:
            m = re.search(r">=\s*([\w.]+)", req)
            assert m, f"{req!r} has no lower bound"
            return m.group(1)
    raise AssertionError(f"{name} is not a dependency")


# ----- metadata -----------------------------------------------------------------------------------
def test_version_has_one_source() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "malstrom.__version__"
    assert importlib.metadata.version("malstrom") == malstrom.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{malstrom.__version__}]" in changelog


def test_license_is_the_apache_license() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in text
    assert PROJECT["license-files"] == ["LICENSE"]


def test_extras_and_all() -> None:
    extras = PROJECT["optional-dependencies"]
    for name, package in {
        "kafka": "confluent-kafka",
        "postgres": "psycopg",
        "parquet": "pyarrow",
        "objectstore": "obstore",
        "slatedb": "slatedb",
        "k8s": "kopf",
    }.items():
        assert package in {requirement_name(r) for r in extras[name]}, name
    (everything,) = extras["all"]
    m = re.fullmatch(r"malstrom\[(.*)\]", everything)
    assert m is not None
    covered = set(m.group(1).split(","))
    assert covered == set(extras) - {"all", "dev"}
    assert "malstrom[all]" in extras["dev"]


def test_the_core_needs_only_its_own_dependencies() -> None:
    names = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert names == {
        "msgpack",
        "xxhash",
        "grpcio",
        "grpcio-health-checking",
        "protobuf",
        "prometheus-client",  # /metrics of the coordinator
    }
    # Importing the library, its runtimes and its command loads no optional package.
    code = (
        "import sys, malstrom, malstrom.cli, malstrom.runtime._multi, malstrom.snapshot, "
        "malstrom.sources, malstrom.sinks, malstrom.windows, malstrom.transport._grpc_control, "
        "malstrom.transport._grpc_data\n"
        "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert loaded.isdisjoint(OPTIONAL_MODULES), loaded & set(OPTIONAL_MODULES)


def test_dependency_floors_match_the_generated_code() -> None:
    assert GRPCIO_FLOOR.startswith(lower_bound("grpcio"))
    assert ".".join(map(str, PROTOBUF_FLOOR)).startswith(lower_bound("protobuf"))


# ----- grpcio / protobuf range --------------------------------------------------------------------
#: (grpcio, protobuf, grpcio-health-checking) combinations the transport is run on.
FLOOR = (GRPCIO_FLOOR, ".".join(map(str, PROTOBUF_FLOOR)), GRPCIO_FLOOR)
PYFLINK_2 = ("1.65.5", "5.29.6", "1.65.5")  # what pip picks beside apache-flink 2.3
PROTOBUF_6 = ("1.75.1", "6.31.1", "1.75.1")  # protobuf 6.30-6.32 warn about 5.x gencode


def pinned_site(versions: tuple[str, str, str]) -> Path:
    """A directory with exactly these grpcio/protobuf/health releases (cached in .venv)."""
    grpcio, protobuf, health = versions
    site = ROOT / ".venv" / ".malstrom-compat" / f"grpcio-{grpcio}-protobuf-{protobuf}"
    if (site / ".complete").exists():
        return site
    tmp = site.with_name(site.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--target",
            str(tmp),
            f"grpcio=={grpcio}",
            f"protobuf=={protobuf}",
            f"grpcio-health-checking=={health}",
        ],
        check=True,
        timeout=600,
    )
    (tmp / ".complete").touch()
    shutil.rmtree(site, ignore_errors=True)
    tmp.rename(site)
    return site


def run_on(site: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "src")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def check_transport_on(versions: tuple[str, str, str], tests: list[str]) -> None:
    site = pinned_site(versions)
    probe = run_on(
        site,
        "-W",
        "error",
        "-c",
        "import grpc, google.protobuf, grpc_health.v1.health, malstrom.transport._grpc_control;"
        "print(grpc.__version__, google.protobuf.__version__)",
    )
    # -W error: importing our modules raises no warning (protobuf 6.30-6.32 would warn).
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [versions[0], versions[1]]
    r = run_on(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


@pytest.mark.timeout(900)
def test_transport_runs_on_the_oldest_supported_grpcio_and_protobuf() -> None:
    check_transport_on(
        FLOOR,
        [
            "tests/test_transport.py",
            "tests/test_cli.py::test_cluster_admin_snapshot_status_stop_then_resume",
        ],
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("versions", [PYFLINK_2, PROTOBUF_6], ids=["pyflink-2", "protobuf-6"])
def test_transport_runs_on_other_grpcio_and_protobuf_releases(versions: Any) -> None:
    check_transport_on(versions, ["tests/test_transport.py", "tests/test_cli.py"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_installs_beside_pyflink_2_and_quix_streams_3(tmp_path: Path) -> None:
    """pip's resolver finds one environment with malstrom, PyFlink 2 and Quix Streams 3."""
    report = tmp_path / "report.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            str(ROOT),
            "apache-flink>=2,<3",
            "quixstreams>=3,<4",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["malstrom"] == malstrom.__version__
    assert chosen["apache-flink"].startswith("2.")
    assert chosen["quixstreams"].startswith("3.")


# ----- the README's first command on a fresh checkout ---------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_installs_the_library_only_and_runs(tmp_path: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    checkout = tmp_path / "malstrom"
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    demo = ["bash", "scripts/demo.sh", "--workdir", str(tmp_path / "out")]
    first = subprocess.run(demo, cwd=checkout, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "counted 800,000 words" in first.stdout
    assert "installing the library into .venv" in first.stderr
    assert "Installing collected packages" in first.stderr  # pip's progress is shown
    venv_python = str(checkout / ".venv" / "bin" / "python")
    for dev_only in ("pytest", "ruff", "mypy", "kopf", "pyarrow"):
        r = subprocess.run([venv_python, "-c", f"import {dev_only}"], capture_output=True)
        assert r.returncode != 0, f"the demo installed {dev_only}"
    again = subprocess.run(demo, cwd=checkout, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "installing" not in again.stderr  # nothing to install the second time
    assert again.stdout.startswith("resumed from snapshot version")
