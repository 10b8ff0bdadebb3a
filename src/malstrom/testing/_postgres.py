"""A throw-away PostgreSQL server for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a
temporary directory on a free loopback port (as the ``postgres`` system user when running as
root, since the server refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["find_postgres_bindir", "temporary_postgres"]


def find_postgres_bindir() -> str | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest installed version), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    dirs = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> float:
        try:
            return float(path.split("/")[4])
        except ValueError:
            return 0.0

    return os.path.dirname(max(dirs, key=version)) if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def temporary_postgres(*, durable: bool = False, max_prepared: int = 64) -> Iterator[str]:
    """Start a server, yield its DSN (user ``postgres``, database ``postgres``), stop it.

    ``durable=False`` turns off fsync (fast tests; the server itself is never killed).
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )
    root = tempfile.mkdtemp(prefix="malstrom-pg-")
    data = os.path.join(root, "data")
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = pwd.getpwnam("nobody")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def run(*args: str) -> None:
        proc = subprocess.run(
            [os.path.join(bindir, args[0]), *args[1:]],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            **run_as,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{proc.stdout}{proc.stderr}")

    started = False
    try:
        run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={root}",
            f"-c max_prepared_transactions={max_prepared}",
            "-c max_connections=200",
        ]
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        last: Exception | None = None
        for _ in range(5):  # another process may take the port between pick and bind
            port = _free_port()
            try:
                run(
                    "pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
                    "-o", " ".join([f"-p {port}", *options]), "start",
                )  # fmt: skip
            except RuntimeError as e:
                last = e
                continue
            started = True
            break
        if not started:
            log = os.path.join(root, "log")
            tail = ""
            if os.path.exists(log):
                with open(log) as f:
                    tail = f.read()[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {last}\n{tail}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            try:
                run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        shutil.rmtree(root, ignore_errors=True)
