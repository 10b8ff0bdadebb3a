"""Process lifetime and signals, with real processes: SIGTERM stops a job with a final
resumable snapshot (``malstrom run``, ``malstrom coordinator``, a MultiProcessRuntime
parent); a standalone worker outlives its launcher and gives up on an unreachable
coordinator after its deadline; expected CLI failures are one line; refusals of
unauthenticated calls are rate-limited in the log."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import APP, MALSTROM, check, env, free_port

from malstrom.snapshot._url import persistence_from_url

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
BAD_WIRING = f"{ROOT / 'tests' / 'jobs' / 'bad_wiring.py'}:build"


def spawn(*args: str, log: Path, environ: dict[str, str]) -> subprocess.Popen[str]:
    with open(log, "w") as out:
        return subprocess.Popen(
            [*MALSTROM, *args], env=environ, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def committed(path: Path) -> int | None:
    return persistence_from_url(str(path)).last_committed()


def worker_pids(parent: int) -> list[int]:
    """The worker processes MultiProcessRuntime spawned under ``parent``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie no longer does)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_sigkilled_worker_is_named_then_sigterm_stops_with_a_final_snapshot(
    tmp_path: Path,
) -> None:
    snap = tmp_path / "snap"
    # No periodic snapshots: the only snapshot is the one SIGTERM's stop takes.
    log = tmp_path / "run.log"
    run = spawn("run", APP, "-v", "-w", "2", "--persistence", str(snap),
                log=log, environ=env(tmp_path, delay=0.1))  # fmt: skip

    def attempts() -> int:
        return log.read_text().count("the job attempt starts")

    try:
        wait_for(lambda: attempts() == 1, 60, log.read_text())
        time.sleep(0.5)
        os.kill(worker_pids(run.pid)[0], signal.SIGKILL)
        wait_for(lambda: "died (SIGKILL)" in log.read_text(), 30, log.read_text())
        wait_for(lambda: attempts() == 2, 60, log.read_text())
        time.sleep(0.5)
        assert committed(snap) is None
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, log.read_text()
    finally:
        run.kill()
    assert "SIGTERM: stopping with a final snapshot" in log.read_text()
    assert committed(snap) is not None
    # Resumes from the final snapshot to an exactly-once result.
    r = subprocess.run([*MALSTROM, "run", APP, "-w", "2", "--persistence", str(snap)],
                       env=env(tmp_path), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    check(tmp_path)


PARENT = """
import sys
sys.path.insert(0, {tests!r})
from malstrom import MultiProcessRuntime
from malstrom.snapshot import LocalDiskPersistence
import logging
logging.basicConfig(level=logging.INFO)
MultiProcessRuntime({app!r}, parallelism=2, persistence=LocalDiskPersistence({snap!r})).execute()
print("execute returned", flush=True)
"""


def test_sigterm_to_a_multiprocess_runtime_parent_stops_with_a_final_snapshot(
    tmp_path: Path,
) -> None:
    snap = tmp_path / "snap"
    code = PARENT.format(tests=str(ROOT / "tests"), app=APP, snap=str(snap))
    log = tmp_path / "parent.log"
    with open(log, "w") as out:
        parent = subprocess.Popen([sys.executable, "-c", code], env=env(tmp_path, delay=0.1),
                                  stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: "the job attempt starts" in log.read_text(), 60, log.read_text())
        time.sleep(0.5)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0, log.read_text()
    finally:
        parent.kill()
    assert "execute returned" in log.read_text()
    assert committed(snap) is not None


def test_coordinator_sigterm_stops_the_cluster_with_a_final_snapshot(tmp_path: Path) -> None:
    """Also: --token-file, and a worker's data port bound to the interface on the route to
    the coordinator (loopback here), not to every interface."""
    token = tmp_path / "token"
    token.write_text("s3cret-from-a-file\n")
    environ = {k: v for k, v in env(tmp_path, delay=0.1).items() if k != "MALSTROM_TOKEN"}
    environ["MALSTROM_JOB"] = "lifetime"
    addr = f"127.0.0.1:{free_port()}"
    auth = ["--token-file", str(token)]
    snap = tmp_path / "snap"
    coord = spawn("coordinator", APP, "-w", "2", "--listen", addr, "--persistence", str(snap),
                  *auth, log=tmp_path / "coord.log", environ=environ)  # fmt: skip
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [spawn("worker", APP, "-v", "--coordinator", addr, *auth, log=p, environ=environ)
               for p in logs]  # fmt: skip
    procs = [coord, *workers]
    try:

        def running() -> bool:
            st = subprocess.run(
                [*MALSTROM, "status", "--json", "--coordinator", addr, *auth],
                env=environ,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return st.returncode == 0 and json.loads(st.stdout)["phase"] == "running"

        wait_for(running, 60, (tmp_path / "coord.log").read_text())
        for p in logs:
            line = next(x for x in p.read_text().splitlines() if "data plane on" in x)
            port = int(line.rpartition(":")[2].rstrip(")"))
            assert listening_on(port) == ["127.0.0.1"], line
        assert b"s3cret" not in Path(f"/proc/{coord.pid}/cmdline").read_bytes()
        coord.send_signal(signal.SIGTERM)
        assert [p.wait(60) for p in procs] == [0, 0, 0], (tmp_path / "coord.log").read_text()
    finally:
        for p in procs:
            p.kill()
    assert "job stopped" in (tmp_path / "coord.log").read_text()
    assert committed(snap) is not None


def listening_on(port: int) -> list[str]:
    """The local addresses with a listening TCP socket on ``port`` ("*": every interface;
    gRPC listens on IPv6 sockets, with IPv4 addresses mapped)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip, _, p = local.partition(":")
            if state != "0A" or int(p, 16) != port:
                continue
            if set(ip) == {"0"}:
                out.append("*")
            elif len(ip) == 8 or ip.startswith("0000000000000000FFFF0000"):
                out.append(socket.inet_ntoa(bytes.fromhex(ip[-8:])[::-1]))
            else:
                out.append(ip)
    return out


def test_coordinator_waiting_for_workers_obeys_the_first_sigterm(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    environ = env(tmp_path, MALSTROM_JOB="j", MALSTROM_TOKEN="t")
    log = tmp_path / "coord.log"
    coord = spawn("coordinator", APP, "-w", "2", "--listen", addr, log=log, environ=environ)
    try:
        wait_for(lambda: "listening on" in log.read_text(), 60, log.read_text())
        time.sleep(0.5)
        coord.send_signal(signal.SIGTERM)
        # Before: "stopping" and then ~7.5 minutes of waiting for workers that never came.
        assert coord.wait(30) == 0, log.read_text()
    finally:
        coord.kill()
    assert "job stopped" in log.read_text()


def test_a_standalone_worker_outlives_its_launcher_and_gives_up_after_its_deadline(
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    worker = [*MALSTROM, "worker", APP, "--coordinator", "127.0.0.1:1", "--reconnect-timeout", "4"]
    # A launcher (a shell, a script) that starts the worker and exits once it runs.
    launcher = f"""
import subprocess, sys, time
p = subprocess.Popen({worker!r}, stdout=open({str(log)!r}, "w"), stderr=subprocess.STDOUT)
print(p.pid, flush=True)
while "retrying" not in open({str(log)!r}).read():
    time.sleep(0.05)
"""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", launcher], env=env(tmp_path, MALSTROM_JOB="j",
                       MALSTROM_TOKEN="t"), capture_output=True, text=True, timeout=60)  # fmt: skip
    pid = int(r.stdout)
    time.sleep(0.3)
    assert alive(pid), log.read_text()  # before: SIGKILLed by its parent-death signal
    wait_for(lambda: not alive(pid), 30, log.read_text())
    # The deadline does not move forward on every retry (it used to: retries forever).
    assert time.monotonic() - t0 < 4 + 15
    text = log.read_text()
    assert "retrying in" in text
    assert "could not reach the coordinator at 127.0.0.1:1 for 4 s" in text


def test_reconnect_timeout_is_a_deadline(tmp_path: Path) -> None:
    r = subprocess.run(
        [*MALSTROM, "worker", APP, "--coordinator", "127.0.0.1:1", "--reconnect-timeout", "3"],
        env=env(tmp_path, MALSTROM_JOB="j", MALSTROM_TOKEN="t"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    assert "giving up" in r.stderr.splitlines()[-1]


def test_expected_cli_failures_are_one_line_without_traceback(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    environ = env(tmp_path, MALSTROM_JOB="j", MALSTROM_TOKEN="t")
    cases = {
        # Without a port it used to bind 443 (or fail obscurely).
        "give HOST:PORT": ["coordinator", APP, "--listen", "127.0.0.1"],
        "--max-restarts: must be 0 or more": ["run", APP, "--max-restarts", "-1"],
        "cannot listen on": ["coordinator", APP, "--listen", f"127.0.0.1:{port}"],
        # Checked once before any worker starts, never retried.
        "operator name 'twice' is used twice": ["run", BAD_WIRING, "-w", "2"],
        "is used twice": ["coordinator", BAD_WIRING, "--listen", "127.0.0.1:0"],
        "--token-file: cannot read": ["worker", APP, "--coordinator", "127.0.0.1:1",
                                      "--token-file", str(tmp_path / "missing")],
        "--reconnect-timeout: must be more than 0": ["worker", APP, "--coordinator", "h:1",
                                                    "--reconnect-timeout", "0"],
    }  # fmt: skip
    procs = {
        want: subprocess.Popen([*MALSTROM, *args], env=environ, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for want, args in cases.items()
    }  # fmt: skip
    try:
        for want, p in procs.items():
            _, err = p.communicate(timeout=60)
            assert p.returncode == 2, (want, err)
            lines = [line for line in err.splitlines() if line.strip()]
            assert "Traceback" not in err and "restart 1/" not in err, (want, err)
            assert want in lines[-1], (want, err)
    finally:
        busy.close()
        for p in procs.values():
            p.kill()


def test_refused_calls_are_rate_limited_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    from malstrom.transport._exchange import TransportError
    from malstrom.transport._grpc_auth import JobAuth
    from malstrom.transport._grpc_control import AdminClient, ControlServer

    caplog.set_level(logging.WARNING, logger="malstrom.transport._grpc_auth")
    with (
        ControlServer(JobAuth("job-a", "right")) as server,
        AdminClient(server.address, JobAuth("job-a", "wrong")) as intruder,
    ):
        for _ in range(30):
            with pytest.raises(TransportError):
                intruder.call("status", timeout=5)
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1  # one line, not thirty
        assert server.rejections.total == 30
        server.rejections._next_log.clear()  # as if log_every seconds had passed
        with pytest.raises(TransportError):
            intruder.call("status", timeout=5)
    last = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()][-1]
    assert "(29 more refused from this host, not logged)" in last


HUNG_PARENT = """
import functools, sys
sys.path.insert(0, {tests!r})
from jobs import hang_once
from malstrom import MultiProcessRuntime
rt = MultiProcessRuntime(functools.partial(hang_once.build, workdir={out!r}), parallelism=2,
                         heartbeat_timeout=120)
rt.execute(stop_timeout=1)
"""


def test_a_stop_that_cannot_complete_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    code = HUNG_PARENT.format(tests=str(ROOT / "tests"), out=str(tmp_path))
    log = tmp_path / "parent.log"
    with open(log, "w") as out:
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)
    try:
        # A worker hangs in user code: the final snapshot's barrier never passes it.
        wait_for(lambda: (tmp_path / "hung-once").exists(), 60, log.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 1, log.read_text()
    finally:
        parent.kill()
    assert "the stop did not complete within 1 s and the job was killed" in log.read_text()
    hung = int((tmp_path / "hung-once").read_text())
    wait_for(lambda: not alive(hung), 10, "the hung worker outlived the job")
