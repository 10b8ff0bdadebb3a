"""MultiProcessRuntime end to end: real worker processes over gRPC, failures, stop/resume,
restore at another parallelism, no orphan processes."""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from jobs import mp_sums

from malstrom.runtime._multi import JobFailed, MultiProcessRuntime
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence

pytestmark = pytest.mark.timeout(180)


def check_results(work: Path) -> None:
    totals, updates = mp_sums.read_results(str(work))
    assert totals == mp_sums.expected_totals()
    want = mp_sums.expected_updates()
    assert {k: sorted(v, key=int) for k, v in updates.items()} == {
        k: sorted(v, key=int) for k, v in want.items()
    }
    # Each file's running sums are the prefix sums of its values: no update applied twice.
    for f in (work / "updates").glob("*.txt"):
        total = 0
        for line in f.read_text().splitlines():
            _, v, s = line.split()
            total += int(v)
            assert int(s) == total, (f, line)


def runtime(work: Path, n: int, **kw: Any) -> MultiProcessRuntime:
    opts = {k: kw.pop(k) for k in ("delay", "fail_on") if k in kw}
    return MultiProcessRuntime(
        functools.partial(mp_sums.build, workdir=str(work), **opts), parallelism=n, **kw
    )


def children() -> set[int]:
    me = os.getpid()
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().split()
            except OSError:
                continue
            if int(stat[3]) == me and stat[2] != "Z":
                out.add(int(pid))
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_keyed_job_is_exact_on_n_processes(tmp_path: Path, n: int) -> None:
    runtime(tmp_path, n, persistence=LocalDiskPersistence(tmp_path / "snap")).execute()
    check_results(tmp_path)


def test_user_error_fails_the_job_naming_the_operator_after_restarts(tmp_path: Path) -> None:
    rt = runtime(tmp_path, 2, fail_on=12_345, max_restarts=1)
    with pytest.raises(JobFailed) as info:
        rt.execute()
    msg = str(info.value)
    assert "after 1 restarts" in msg
    assert "'check'" in msg and "12345" in msg and "bad record" in msg


def test_sigkill_random_workers_recovers_exactly_once(tmp_path: Path, carrier: str) -> None:
    rng = random.Random(4)
    rt = runtime(
        tmp_path,
        3,
        delay=0.02,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.05,
        max_restarts=10,
    )
    handle = rt.start()
    kills = 0
    deadline = time.monotonic() + 120
    while kills < 3 and handle.running and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 0.8))
        pids = handle.status().get("pids", {})
        if handle.status()["phase"] in ("running", "snapshotting") and pids:
            try:
                os.kill(pids[rng.choice(sorted(pids))], signal.SIGKILL)
            except ProcessLookupError:
                continue  # that attempt is already being torn down
            kills += 1
            # wait for the restart to begin before killing again
            start = handle.status()["restarts"]
            while handle.running and handle.status()["restarts"] == start:
                time.sleep(0.02)
    handle.wait(120)
    assert kills >= 1
    assert handle.status()["restarts"] == kills
    check_results(tmp_path)


def test_stop_then_resume_at_other_parallelism(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    for n in (2, 3):
        handle = runtime(tmp_path, n, delay=0.02, persistence=p).start()
        time.sleep(1.0)
        handle.stop(60)
        assert handle.status()["phase"] == "stopped"
        assert not (tmp_path / "totals").exists() or not any((tmp_path / "totals").iterdir())
    runtime(tmp_path, 1, persistence=p).execute()
    check_results(tmp_path)


def test_requested_snapshot_returns_committed_version(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    handle = runtime(tmp_path, 2, delay=0.004, persistence=p).start()
    time.sleep(0.3)
    v = handle.snapshot(60)
    assert v in p.committed_versions() or v < (p.last_committed() or -1)
    handle.wait(120)
    check_results(tmp_path)


def test_no_orphan_processes_after_kill(tmp_path: Path) -> None:
    before = children()
    handle = runtime(tmp_path, 2, delay=0.01).start()
    time.sleep(0.5)
    handle.kill()
    time.sleep(0.2)
    leftover = children() - before
    # multiprocessing's resource tracker may linger; no worker process may.
    for pid in leftover:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"resource_tracker" in cmd, cmd


def test_lambda_build_and_in_memory_persistence_are_refused() -> None:
    with pytest.raises(TypeError, match="module level"):
        MultiProcessRuntime(lambda p: None, parallelism=2)
    with pytest.raises(TypeError, match="InMemoryPersistence"):
        MultiProcessRuntime(mp_sums.build, parallelism=2, persistence=InMemoryPersistence())


def test_hung_worker_is_detected_by_heartbeat_and_job_recovers(tmp_path: Path) -> None:
    from jobs import hang_once

    rt = MultiProcessRuntime(
        functools.partial(hang_once.build, workdir=str(tmp_path)),
        parallelism=2,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.1,
        heartbeat_timeout=2.0,
    )
    handle = rt.start()
    handle.wait(150)
    assert (tmp_path / "hung-once").exists()
    assert handle.status()["restarts"] == 1
    check_results(tmp_path)


@pytest.mark.usefixtures("ctrl_c_reaches_children")
def test_sigint_stops_local_run_with_a_final_snapshot_then_resumes(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    app = f"{root / 'tests' / 'jobs' / 'cluster_app.py'}:build"
    env = dict(os.environ, MALSTROM_TEST_OUT=str(tmp_path), MALSTROM_TEST_DELAY="0.02")
    cmd = [
        sys.executable,
        "-m",
        "malstrom.cli",
        "run",
        app,
        "-w",
        "2",
        "--persistence",
        str(tmp_path / "snap"),
    ]
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        p = subprocess.Popen([*cmd, "-v"], env=env, stderr=out, text=True)
    # Once the workers run (a stop while they still connect ends at once, without a snapshot).
    deadline = time.monotonic() + 60
    while "the job attempt starts" not in log.read_text():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=90)
    err = log.read_text()
    assert p.returncode == 130, err
    snaps = LocalDiskPersistence(tmp_path / "snap")
    assert snaps.last_committed() is not None
    assert snaps.manifest(snaps.last_committed()).meta["final"] is False  # type: ignore[arg-type]
    # no worker process survived the parent
    out = subprocess.run(
        ["pgrep", "-f", "malstrom-worker|multiprocessing.spawn"], capture_output=True, text=True
    )
    assert str(p.pid) not in out.stdout
    env["MALSTROM_TEST_DELAY"] = "0"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    check_results(tmp_path)


def test_job_over_mutual_tls_is_exact(tmp_path: Path, tls: Any) -> None:
    runtime(tmp_path, 2, tls=tls).execute()
    check_results(tmp_path)


def test_committed_running_counts_never_go_backwards(tmp_path: Path) -> None:
    from malstrom.snapshot._layout import SnapshotReader

    p = LocalDiskPersistence(tmp_path / "snap", retain=10_000)
    handle = runtime(
        tmp_path, 2, delay=0.01, persistence=p, snapshot_interval=0.05, max_restarts=5
    ).start()
    time.sleep(1.0)
    deadline = time.monotonic() + 60
    while 0 not in (pids := handle.status()["pids"]):  # all connected (slow on a busy machine)
        assert time.monotonic() < deadline and handle.running
        time.sleep(0.05)
    os.kill(pids[0], signal.SIGKILL)
    handle.wait(120)
    assert handle.status()["restarts"] == 1
    check_results(tmp_path)
    last: dict[int, int] = {}
    versions = p.committed_versions()
    assert len(versions) > 3
    for v in versions:
        reader = SnapshotReader(p, p.manifest(v))
        workers = reader.manifest.meta["workers"]
        state: dict[int, int] = {}
        for w in workers:
            state.update(dict(reader.keyed("running", None, w, workers)))
        for k, s in state.items():
            assert s >= last.get(k, 0), (v, k, s, last.get(k))
            last[k] = s
    assert last == {int(k): int(t.split()[1]) for k, t in mp_sums.expected_totals().items()}


def _list_sink_build(provider: Any, sink: Any) -> None:
    from malstrom.sources import IterSource

    provider.new_stream().source("n", IterSource(range(10))).sink("list", sink)


def test_list_sink_in_worker_processes_is_an_error_not_a_silent_loss() -> None:
    from malstrom.sinks import ListSink

    rt = MultiProcessRuntime(
        functools.partial(_list_sink_build, sink=ListSink()), parallelism=1, max_restarts=0
    )
    with pytest.raises(JobFailed, match="ListSink"):
        rt.execute()
