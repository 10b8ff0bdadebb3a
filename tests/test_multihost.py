"""Several simulated hosts: network namespaces joined by a bridge, each running malstrom
processes started through the CLI. Checks exact results across hosts, then cuts one worker's
link mid-run and checks the job recovers (restart from the last snapshot) with exact results."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import mp_sums

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 to create network namespaces",
    ),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[1]
APP = f"{ROOT / 'tests' / 'jobs' / 'cluster_app.py'}:build"
SUBNET = "10.213.{}.{}"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class Hosts:
    """A bridge and one namespace (with a veth on the bridge) per simulated host."""

    made = 0

    def __init__(self, names: list[str]) -> None:
        # Unique per instance: a deleted namespace's veth can outlive it for a moment.
        Hosts.made += 1
        tag = f"{os.getpid() % 1000}{Hosts.made}"
        self.bridge = f"mbr{tag}"
        self.ns = {n: f"mal{tag}{n}" for n in names}
        self.veth = {n: f"mv{tag}{n}" for n in names}
        third = (os.getpid() + Hosts.made) % 200 + 10
        self.ip = {n: SUBNET.format(third, i + 1) for i, n in enumerate(names)}

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for n, ns in self.ns.items():
            sh("ip", "netns", "add", ns)
            sh(
                "ip",
                "link",
                "add",
                self.veth[n],
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "link", "set", self.veth[n], "master", self.bridge)
            sh("ip", "link", "set", self.veth[n], "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip[n]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)

    def link(self, host: str, state: str) -> None:
        sh("ip", "link", "set", self.veth[host], state)

    def run(self, host: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], sys.executable, "-m", "malstrom.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts(["c", "a", "b"])
    try:
        h.up()
    except subprocess.CalledProcessError as e:
        h.down()
        pytest.skip(f"cannot create network namespaces here: {e.stderr!r}")
    try:
        yield h
    finally:
        h.down()


def start_job(
    hosts: Hosts, out: Path, delay: float, on: tuple[str, ...] = ("a", "b")
) -> tuple[subprocess.Popen[str], list[subprocess.Popen[str]]]:
    env = dict(
        os.environ,
        MALSTROM_JOB="multihost",
        MALSTROM_TOKEN="t0ken",
        MALSTROM_TEST_OUT=str(out),
        MALSTROM_TEST_DELAY=str(delay),
    )
    addr = f"{hosts.ip['c']}:47000"
    coord = hosts.run(
        "c",
        "coordinator",
        APP,
        "-w",
        str(len(on)),
        "--listen",
        addr,
        "--persistence",
        str(out / "snap"),
        "--snapshot-interval",
        "0.2",
        "--heartbeat-timeout",
        "3",
        "--max-restarts",
        "5",
        "-v",
        env=env,
    )
    workers = [hosts.run(h, "worker", APP, "--coordinator", addr, "-v", env=env) for h in on]
    return coord, workers


def finish(procs: list[subprocess.Popen[str]], timeout: float = 200) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


def check(out: Path) -> None:
    totals, updates = mp_sums.read_results(str(out))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART


def test_job_across_hosts_is_exact(hosts: Hosts, tmp_path: Path) -> None:
    # Two workers on host b: they talk over a same-host link, and over gRPC to host a's.
    coord, workers = start_job(hosts, tmp_path, delay=0.0, on=("a", "b", "b"))
    results = finish([coord, *workers])
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    check(tmp_path)
    # The workers really talked across hosts: each advertised its own namespace's address.
    assert any(hosts.ip["a"] in err or hosts.ip["b"] in err for _, err in results)
    on_a, *on_b = (err for _, err in results[1:])
    assert on_a.count("same-host link") == 0 and on_a.count("gRPC to") == 2, on_a[-3000:]
    for err in on_b:
        assert err.count("same-host link") == 1 and err.count("gRPC to") == 1, err[-3000:]


def test_cut_link_mid_run_recovers_exactly_once(hosts: Hosts, tmp_path: Path) -> None:
    coord, workers = start_job(hosts, tmp_path, delay=0.05)
    time.sleep(2.5)
    assert coord.poll() is None, "job ended before the link was cut"
    hosts.link("b", "down")
    time.sleep(5)
    hosts.link("b", "up")
    results = finish([coord, *workers], timeout=float(os.environ.get("MH_TIMEOUT", "200")))
    assert [code for code, _ in results] == [0, 0, 0], results
    coord_log = results[0][1]
    assert "restart 1/5" in coord_log, coord_log[-3000:]
    check(tmp_path)
