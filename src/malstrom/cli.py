"""The ``malstrom`` command: run jobs locally or as a cluster, and control running jobs.

    malstrom run APP [-w N] [--persistence URL] [--snapshot-interval S] [--fresh-start]
        [--source-turn-budget S]
    malstrom coordinator APP -w N --listen HOST:PORT [--persistence URL] [...]
    malstrom worker APP --coordinator HOST:PORT [--listen HOST] [--advertise HOST] [...]
    malstrom rescale N | snapshot | stop | status [--json] --coordinator HOST:PORT

``--http HOST:PORT`` (run, coordinator) serves ``/metrics``, ``/healthz`` and a live dashboard.
Every option also reads ``MALSTROM_<OPTION>`` from the environment (``--snapshot-interval``:
``MALSTROM_SNAPSHOT_INTERVAL``); the command line wins.

``APP`` is ``path/to/file.py:build`` or ``package.module:build``. Cluster processes share a job
id and token (``--job``/``--token``/``--token-file`` or ``MALSTROM_JOB``/``MALSTROM_TOKEN``/
``MALSTROM_TOKEN_FILE``); TLS is enabled with ``--tls-cert``, ``--tls-key`` and ``--tls-ca``
(mutual). SIGTERM to ``run`` or ``coordinator`` stops the job with a final snapshot (exit 0).
Expected failures (bad arguments, APP, wiring, addresses) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from malstrom import __version__
from malstrom.observe._cli import add_http, add_log_format, apply_env_defaults, print_status
from malstrom.observe._logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("malstrom.cli")


def _add_auth(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--job", default=os.environ.get("MALSTROM_JOB"), help="job id (default: $MALSTROM_JOB)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("MALSTROM_TOKEN"),
        help="shared secret of the job (default: $MALSTROM_TOKEN)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        default=os.environ.get("MALSTROM_TOKEN_FILE"),
        help="read the token from this file (keeps it out of `ps`; a mounted Secret); "
        "overrides --token (default: $MALSTROM_TOKEN_FILE)",
    )
    p.add_argument("--tls-cert", help="this process's certificate (PEM)")
    p.add_argument("--tls-key", help="this process's private key (PEM)")
    p.add_argument("--tls-ca", help="CA that signs every process of the job (PEM)")
    p.set_defaults(auth_required=required)


def _auth(args: argparse.Namespace) -> tuple[Any, Any]:
    from malstrom.transport._grpc_auth import JobAuth, TlsConfig

    if args.token_file:
        args.token = _read_token(args.token_file)
    if not args.job or not args.token:
        raise SystemExit(
            "error: give the job id and token (--job/--token or MALSTROM_JOB/MALSTROM_TOKEN)"
        )
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("error: --tls-cert and --tls-key go together")
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_ca)
    return JobAuth(args.job, args.token), tls


def _read_token(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise ValueError(f"--token-file: cannot read {path}: {e.strerror}") from None
    if not token:
        raise ValueError(f"--token-file: {path} is empty")
    return token


def _count(value: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _seconds(value: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value}")
    return x


def _add_job(p: argparse.ArgumentParser) -> None:
    from malstrom.runtime._multi import STOP_GRACE

    p.add_argument("app", metavar="APP", help="path/to/file.py:build or package.module:build")
    p.add_argument("-w", "--workers", type=int, default=1, help="number of workers")
    p.add_argument("--persistence", help="snapshot directory (or file://PATH); default none")
    p.add_argument("--snapshot-interval", type=float, help="seconds between snapshots")
    p.add_argument(
        "--max-restarts", type=_count, default=3, help="automatic restarts, >= 0 (default 3)"
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=30.0,
        help="seconds of silence after which a worker counts as hung",
    )
    add_http(p)
    p.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=STOP_GRACE,
        metavar="S",
        help="after SIGTERM or Ctrl-C, seconds the stop with a final snapshot may take "
        f"before the job is killed (default {STOP_GRACE:g}; keep it below the orchestrator's "
        "grace period)",
    )
    p.add_argument(
        "--fresh-start",
        action="store_true",
        help="ignore existing snapshots and run the job from the beginning (output files "
        "start empty); without it a job whose snapshots are all damaged refuses to start",
    )


def _add_budget(p: argparse.ArgumentParser) -> None:
    from malstrom.runtime._worker import SOURCE_TURN_BUDGET

    p.add_argument(
        "--source-turn-budget",
        type=float,
        default=SOURCE_TURN_BUDGET,
        metavar="S",
        help="seconds a worker's sources may read per loop turn, all parts together "
        f"(default {SOURCE_TURN_BUDGET:g}): a source that blocks delays records, snapshots "
        "and rescales by about this much",
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    add_log_format(common)
    ap = argparse.ArgumentParser(
        prog="malstrom", description=__doc__.splitlines()[0], parents=[common]
    )
    ap.add_argument("--version", action="version", version=f"malstrom {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run", parents=[common], help="run a job here: a coordinator and N worker processes"
    )
    _add_job(p)
    _add_budget(p)
    p.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="where the job answers status/snapshot/rescale/stop (default: any free port on "
        "127.0.0.1; printed at start with the job id)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        metavar="S",
        help="seconds between progress reports (default: 0.5 on a terminal, where one line "
        "is rewritten in place; 10 otherwise, as log lines)",
    )

    p = sub.add_parser(
        "coordinator", parents=[common], help="run a job's coordinator for a cluster"
    )
    _add_job(p)
    p.add_argument("--listen", required=True, help="HOST:PORT for workers and admin calls")
    p.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=120.0,
        metavar="S",
        help="seconds to wait for the workers to connect, per attempt (default 120); "
        "then the attempt fails and counts as a restart",
    )
    p.add_argument(
        "--termination-log",
        metavar="PATH",
        help="write the job's final status (JSON) there on exit; Kubernetes shows "
        "/dev/termination-log as the container's termination message",
    )
    _add_auth(p, True)

    p = sub.add_parser("worker", parents=[common], help="run one worker of a cluster job")
    p.add_argument("app", metavar="APP")
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    p.add_argument(
        "--listen",
        help="HOST or HOST:PORT to bind the data plane on (default: the local address on "
        "the route to the coordinator, any free port); a fixed port is what a Kubernetes "
        "probe checks",
    )
    p.add_argument(
        "--advertise",
        help="host peers reach this worker at (default: the local "
        "address on the route to the coordinator)",
    )
    p.add_argument("--id", type=int, help="worker id (default: assigned by the coordinator)")
    p.add_argument(
        "--reconnect-timeout",
        type=_seconds,
        default=300.0,
        metavar="S",
        help="give up (exit 1) after this many seconds without reaching the coordinator, "
        "counted from start or from the last time it was connected (default 300)",
    )
    _add_budget(p)
    _add_auth(p, True)

    for name, text in (
        ("rescale", "change the number of workers of the running job"),
        ("snapshot", "take a snapshot now"),
        ("stop", "stop with a final snapshot"),
        ("status", "show the job's status"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        if name == "rescale":
            p.add_argument("workers", type=int, help="the new number of workers (>= 1)")
        p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
        p.add_argument("--timeout", type=float, default=300.0 if name == "rescale" else 120.0)
        if name == "status":
            p.add_argument("--json", action="store_true", help="the status as JSON (scripts)")
            p.add_argument(
                "--watch",
                type=float,
                metavar="S",
                help="redraw the status every S seconds until Ctrl-C or the job ends (like top)",
            )
        _add_auth(p, True)
    apply_env_defaults(ap)
    return ap


def _run(args: argparse.Namespace) -> int:
    from malstrom.runtime._multi import JobFailed, MultiProcessRuntime, run_to_end
    from malstrom.snapshot._url import persistence_from_url

    # Loads APP and builds its graph once: a bad APP, a wiring error or a build() that
    # raises fails here, before any worker process starts (and is never retried).
    rt = MultiProcessRuntime(
        args.app,
        parallelism=args.workers,
        persistence=persistence_from_url(args.persistence),
        snapshot_interval=args.snapshot_interval,
        max_restarts=args.max_restarts,
        heartbeat_timeout=args.heartbeat_timeout,
        log_level=logging.INFO if args.verbose else logging.WARNING,
        fresh_start=args.fresh_start,
        source_turn_budget=args.source_turn_budget,
        http=args.http,
        admin=args.admin,
        job=os.environ.get("MALSTROM_JOB"),
        token=os.environ.get("MALSTROM_TOKEN"),
    )
    try:
        handle = rt.start()
        _announce(handle, rt, token_given="MALSTROM_TOKEN" in os.environ)
        from malstrom.observe._progress import start_progress

        state = handle.state
        if handle.state() is not None:
            start_progress(
                lambda: state() or {},
                handle._sup.done,
                sys.stderr,
                tty=sys.stderr.isatty(),
                interval=args.progress_interval,
            )
        run_to_end(handle, args.stop_timeout)
    except JobFailed as e:
        print(f"malstrom: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("malstrom: stopped (resumable from the last snapshot)", file=sys.stderr)
        return 130
    return 0


def _announce(handle: Any, rt: Any, token_given: bool) -> None:
    """Print where the job answers admin calls (the HTTP endpoint logs its own address)."""
    token = "$MALSTROM_TOKEN" if token_given else rt.token
    print(
        f"malstrom: job {handle.job} admin at {handle.address} (malstrom status --coordinator "
        f"{handle.address} --job {handle.job} --token {token})",
        file=sys.stderr,
        flush=True,
    )


def _coordinator(args: argparse.Namespace) -> int:
    from malstrom.runtime._app import load_app
    from malstrom.runtime._multi import ClusterLauncher, JobSettings, Supervisor, request_stop
    from malstrom.runtime._single import build_graph
    from malstrom.snapshot._url import persistence_from_url

    listen_port(args.listen)  # refuse a HOST without its port
    graph = build_graph(load_app(args.app))  # fail fast on a bad APP or wiring

    auth, tls = _auth(args)
    sup = Supervisor(
        JobSettings(
            parallelism=args.workers,
            persistence=persistence_from_url(args.persistence),
            snapshot_interval=args.snapshot_interval,
            max_restarts=args.max_restarts,
            heartbeat_timeout=args.heartbeat_timeout,
            auth=auth,
            tls=tls,
            listen=args.listen,
            connect_timeout=args.connect_timeout,
            pinned=graph.pinned(),
            fresh_start=args.fresh_start,
            http=args.http,
            graph=graph,
        ),
        ClusterLauncher(),
    )
    print(f"malstrom coordinator for job {auth.job_id!r} listening on {sup.address}", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stopping.is_set():
            sup.killed.set()
            return
        stopping.set()
        log.warning("stopping with a final snapshot (signal again to abort)")
        request_stop(sup, args.stop_timeout)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sup.start()
    while not sup.done.wait(0.2):
        pass
    if args.termination_log:
        _write_termination_log(args.termination_log, sup.status())
    if sup.failure is not None:
        print(f"malstrom: {sup.failure}", file=sys.stderr)
        return 1
    print(f"malstrom: job {sup.phase}", flush=True)
    return 0 if sup.phase in ("finished", "stopped") else 1


def _write_termination_log(path: str, status: dict[str, Any]) -> None:
    """The final status for an orchestrator (how the job ended, its last snapshot)."""
    keys = ("phase", "last_committed", "restored_from", "failure")
    try:
        with open(path, "w") as f:
            json.dump({k: status.get(k) for k in keys}, f)
    except OSError as e:
        log.warning("cannot write the termination log %s: %s", path, e)


def _host_port(value: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (IPv6 as ``[::]:PORT``); port 0 (any free one) if not given."""
    host, sep, port = value.rpartition(":")
    if not sep or (":" in host and not host.endswith("]")):  # a host alone, maybe bare IPv6
        return value, 0
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {value!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def listen_port(value: str) -> int:
    """The port of a coordinator's ``--listen HOST:PORT``; a HOST alone is refused (workers
    and admin commands must know where to call)."""
    _, port = _host_port(value)
    if port == 0 and not value.endswith(":0"):
        raise ValueError(f"--listen {value!r}: give HOST:PORT (e.g. 0.0.0.0:7000)")
    return port


def _worker(args: argparse.Namespace) -> int:
    from malstrom.runtime._process import cluster_worker_main
    from malstrom.runtime._worker import check_budget

    # No parent-death signal here (unlike the workers MultiProcessRuntime spawns): a worker
    # started by hand, a script or an orchestrator outlives whatever launched it.
    auth, tls = _auth(args)
    check_budget(args.source_turn_budget)
    host, port = _host_port(args.listen) if args.listen else (None, 0)
    return cluster_worker_main(
        args.app,
        args.coordinator,
        auth,
        tls,
        listen_host=host,
        listen_port=port,
        advertise=args.advertise,
        worker_id=args.id,
        reconnect_timeout=args.reconnect_timeout,
        source_turn_budget=args.source_turn_budget,
    )


def _admin(args: argparse.Namespace) -> int:
    from malstrom.transport._grpc_control import AdminClient

    auth, tls = _auth(args)
    if args.command == "status" and args.watch:
        from malstrom.observe._cli import watch_status

        return watch_status(AdminClient(args.coordinator, auth, tls), args.watch, args.timeout)
    client = AdminClient(args.coordinator, auth, tls)
    try:
        body: dict[str, Any] = {"timeout": args.timeout}
        if args.command == "rescale":
            if args.workers < 1:
                msg = "malstrom rescale: give at least 1 worker (to end a job: stop)"
                print(msg, file=sys.stderr)
                return 2
            body["workers"] = args.workers
        payload = json.dumps(body).encode()
        reply = client.call(args.command, payload, timeout=args.timeout + 5)
    except Exception as e:
        print(f"malstrom {args.command}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.command == "status":
        print_status(reply, args.json)
        return 0
    print(json.dumps(json.loads(reply), indent=2, sort_keys=True))
    return 0


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user causes (bad APP, wiring, address, file): one line, no traceback."""
    from malstrom.transport._exchange import TransportError

    return (OSError, ImportError, AttributeError, TypeError, ValueError, TransportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``malstrom`` command; returns the exit code."""
    # gRPC's C core prints connection chatter on stderr unless told otherwise.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = _parser().parse_args(argv)
    setup_logging(
        logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        args.log_format,
    )
    handlers = {
        "run": _run,
        "coordinator": _coordinator,
        "worker": _worker,
        "rescale": _admin,
        "snapshot": _admin,
        "stop": _admin,
        "status": _admin,
    }
    try:
        code = handlers[args.command](args)
    except _expected_errors() as e:
        print(f"malstrom: {e}", file=sys.stderr)
        code = 2
    if args.command in ("run", "coordinator", "worker"):
        # gRPC may keep non-daemon threads alive after the job ended; the job is over and
        # everything it wrote is flushed, so leave now rather than wait on them.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
