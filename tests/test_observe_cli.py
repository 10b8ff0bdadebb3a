"""The command line's observability: a local run with an admin address and an HTTP endpoint,
``status`` as a table and as JSON, progress lines, JSON logs, ``MALSTROM_*`` environment
defaults, ``--version`` and ``python -m malstrom``, and jobs that cannot start failing at once
with one message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from malstrom import __version__
from malstrom.cli import _parser

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
JOB = f"{ROOT / 'tests' / 'jobs' / 'observe_job.py'}:build"
MALSTROM = [sys.executable, "-m", "malstrom"]


def test_version_and_python_dash_m() -> None:
    r = subprocess.run([*MALSTROM, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"malstrom {__version__}"


def test_every_option_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALSTROM_SNAPSHOT_INTERVAL", "2.5")
    monkeypatch.setenv("MALSTROM_FRESH_START", "yes")
    monkeypatch.setenv("MALSTROM_LOG_FORMAT", "json")
    monkeypatch.setenv("MALSTROM_HTTP", "127.0.0.1:0")
    monkeypatch.setenv("MALSTROM_COORDINATOR", "10.0.0.1:7000")
    args = _parser().parse_args(["run", "job.py"])
    assert args.snapshot_interval == 2.5 and args.fresh_start is True
    assert args.log_format == "json" and args.http == "127.0.0.1:0"
    # The command line wins; a required option may come from the environment alone.
    given = _parser().parse_args(["run", "job.py", "--snapshot-interval", "1"])
    assert given.snapshot_interval == 1
    assert _parser().parse_args(["status"]).coordinator == "10.0.0.1:7000"
    monkeypatch.setenv("MALSTROM_WORKERS", "many")
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "job.py"])


def _admin(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MALSTROM, *args], env=env, capture_output=True, text=True, timeout=120)


def test_run_admin_status_table_json_metrics_progress(tmp_path: Path) -> None:
    env = dict(os.environ, MALSTROM_JOB="obs-job", MALSTROM_TOKEN="obs-token")
    proc = subprocess.Popen(
        [*MALSTROM, "run", JOB, "-w", "2", "--admin", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--snapshot-interval", "0.5", "--log-format", "json", "--progress-interval", "0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        admin = url = None
        lines = []
        deadline = time.monotonic() + 60
        while (admin is None or url is None) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if m := re.search(r"job obs-job admin at (\S+) ", line):
                admin = m.group(1)
                assert "$MALSTROM_TOKEN" in line  # a token from the environment is not printed
            if m := re.search(r"dashboard and metrics at (http://\S+/)", line):
                url = m.group(1)
        assert admin and url, lines
        assert not admin.endswith(":0")
        # status as JSON, once the workers report, then as a table.
        while True:
            r = _admin("status", "--json", "--coordinator", admin, env=env)
            assert r.returncode == 0, r.stderr
            st = json.loads(r.stdout)
            ops = {o["name"]: o for o in st["metrics"]["operators"]}
            if ops["drop"]["records_in"] > 0 and st["metrics"]["last_snapshot"]:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.3)
        assert st["workers"] == [0, 1] and st["metrics"]["job"] == "obs-job"
        r = _admin("status", "--coordinator", admin, env=env)
        assert r.returncode == 0, r.stderr
        table = r.stdout.splitlines()
        # A snapshot every 0.5 s: the table may catch the job in one.
        assert re.match(r"job obs-job   phase (running|snapshotting)   workers 2", table[0]), table
        assert any(line.split()[:2] == ["count", "StatefulMapOp"] for line in table)
        assert "records/s" in r.stdout and "last snapshot v" in r.stdout
        with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'malstrom_records_out_total{job="obs-job",operator="trickle",worker="0"}' in text
        watch = subprocess.Popen(
            [*MALSTROM, "status", "--watch", "0.2", "--coordinator", admin],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.5)
        r = _admin("stop", "--coordinator", admin, env=env)
        assert r.returncode == 0, r.stderr
        _, err = proc.communicate(timeout=120)
        # The watcher redrew the table until the job was gone.
        watched, _ = watch.communicate(timeout=60)
        assert watch.returncode == 1
        assert watched.count("job obs-job   phase") >= 2
        assert proc.returncode == 0, err
        logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        progress = [x for x in logs if x["message"].startswith("progress: ")]
        assert progress, err
        # A warning from a user function names the job, the worker and the operator.
        seen = [x for x in logs if x["message"].startswith("record 3 of part")]
        assert seen and {x["operator"] for x in seen} == {"tag"}, err
        assert {x["job"] for x in seen} == {"obs-job"} and {x["worker"] for x in seen} <= {0, 1}
        assert re.search(r"rec/s \| [\d.k]+ records read \| lag ", progress[-1]["message"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_text_worker_logs_name_job_worker_and_operator() -> None:
    env = dict(os.environ, MALSTROM_JOB="txt-job", MALSTROM_TOKEN="t")
    proc = subprocess.Popen(
        [*MALSTROM, "run", JOB, "-w", "2", "--admin", "127.0.0.1:0", "--log-format", "text"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        admin = None
        found: dict[str, str] = {}
        lines = []
        deadline = time.monotonic() + 90
        while len(found) < 4 and time.monotonic() < deadline:  # 4 parts, each warns once
            line = proc.stderr.readline()
            lines.append(line)
            if m := re.search(r"job txt-job admin at (\S+) ", line):
                admin = m.group(1)
            if m := re.search(r"record 3 of part (\d+) seen", line):
                found[m.group(1)] = line
        assert len(found) == 4 and admin, lines
        named = r"\[job txt-job worker [01] operator tag\] WARNING record 3"
        assert all(re.match(named, line) for line in found.values()), found
        r = _admin("stop", "--coordinator", admin, env=env)
        assert r.returncode == 0, r.stderr
        proc.communicate(timeout=120)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


NO_GUARD = """
from malstrom import MultiProcessRuntime, StatelessSink
from malstrom.sources import IterSource


class Drop:
    def sink(self, record):
        pass


def build(provider):
    provider.new_stream().source("n", IterSource(range(10))).sink("out", StatelessSink(Drop()))


MultiProcessRuntime(build, parallelism=2).execute()
"""


def test_missing_main_guard_fails_at_once_with_one_message(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(NO_GUARD)
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode != 0
    assert 'if __name__ == "__main__":' in r.stderr
    assert "restart" not in r.stderr and r.stderr.count("Traceback") == 1, r.stderr
    assert time.monotonic() - t0 < 60


def test_build_that_raises_fails_at_once_with_one_message(tmp_path: Path) -> None:
    app = tmp_path / "bad.py"
    app.write_text("def build(provider):\n    raise RuntimeError('no config in /etc/job')\n")
    r = subprocess.run(
        [*MALSTROM, "run", f"{app}:build", "-w", "2"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "malstrom: the job's build function build raised RuntimeError: no config in /etc/job"
    ]
