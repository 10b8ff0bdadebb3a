"""The main function of a worker process (local runtime and cluster CLI alike)."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from malstrom.coordinator._messages import Hello, WorkerFailed
from malstrom.errors import AttemptFenced, OperatorError
from malstrom.runtime._app import load_app
from malstrom.runtime._single import build_graph
from malstrom.runtime._worker import SOURCE_TURN_BUDGET, Worker, WorkerPhase
from malstrom.snapshot._backend import Persistence

__all__ = ["describe_error", "die_with_parent", "run_worker_loop", "worker_process_main"]

log = logging.getLogger("malstrom.worker")


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies: no orphan workers, ever."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # not Linux: the supervisor's kill-on-exit still applies
        pass


def describe_error(e: BaseException) -> str:
    """One line naming the failure, then the innermost frames of where it happened."""
    head = f"{type(e).__name__}: {e}"
    cause = e.__cause__
    if isinstance(e, OperatorError) and cause is not None:
        tb = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)[-3:])
    else:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:])
    return f"{head}\n{tb.rstrip()}"


#: Idle turns before the loop sleeps until woken (about 40 ms of backing off).
_RAMP = 20
#: The longest idle sleep (the heartbeat deadline is usually sooner).
_MAX_SLEEP = 0.5


def run_worker_loop(worker: Worker) -> None:
    """Turn the worker until the coordinator says finish (or abort); sleep when idle.

    After a turn with nothing to do the loop backs off (0.2 ms more per idle turn, up to
    4 ms); after ``_RAMP`` idle turns in a row it sleeps until something wakes it: a command
    from the coordinator, a frame from a peer (both transports call ``wake``), or the time an
    operator or the heartbeat asks for (:meth:`Worker.wake_deadline`). An idle worker so
    costs next to nothing, while a busy one never waits.
    """
    # As in SingleThreadRuntime: batches make many short-lived containers, and the default
    # gen-0 threshold would run the cyclic GC every few hundred records.
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    woken = threading.Event()
    endpoint: Any = worker.endpoint
    exchange: Any = worker.exchange
    sides = [side for side in (endpoint, exchange) if side is not None]
    for side in sides:
        if hasattr(side, "wake"):
            side.wake = woken.set
    # Only links that wake the loop let it sleep past the ramp.
    ramp = _RAMP if all(hasattr(side, "wake") for side in sides) else None
    # Same-host data links wake the loop only once asked to, just before it sleeps: a busy
    # loop reads them itself (see malstrom.transport._local_link).
    arm: Callable[[], None] = getattr(exchange, "arm_wake", _nothing)
    try:
        idle = 0
        while worker.phase is not WorkerPhase.FINISHED:
            if getattr(endpoint, "closed", False):
                from malstrom.transport._exchange import TransportError

                raise TransportError("the coordinator closed the control stream")
            woken.clear()  # before the turn: what arrives during it wakes the next wait
            if worker.turn():
                idle = 0
                continue
            arm()
            if ramp is None or idle < ramp:
                idle = min(idle + 1, _RAMP)
                woken.wait(0.0002 * idle)
                continue
            pause = min(worker.wake_deadline() - time.monotonic(), _MAX_SLEEP)
            woken.wait(max(pause, 0.0002 * _RAMP))
    finally:
        for side in sides:
            if hasattr(side, "wake"):
                side.wake = _nothing
        gc.set_threshold(*threshold)


def _nothing() -> None:
    pass


def worker_process_main(
    build: Callable[[Any], None] | str,
    worker_id: int,
    coordinator: str,
    auth: Any,
    tls: Any,
    persistence: Persistence,
    host: str,
    log_level: int = logging.WARNING,
    source_turn_budget: float = SOURCE_TURN_BUDGET,
) -> None:
    """Entry point of one worker process of a MultiProcessRuntime job."""
    from malstrom.transport._grpc_control import connect_control
    from malstrom.transport._grpc_data import GrpcExchange

    die_with_parent()
    # The supervisor owns Ctrl-C and SIGTERM (sent to the whole process group, they would
    # otherwise kill the workers before the final snapshot the supervisor asks them for).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from malstrom.observe._logs import setup_logging

    setup_logging(log_level, job=getattr(auth, "job_id", None), worker=worker_id)
    exchange = GrpcExchange(worker_id, auth, tls, listen=f"{host}:0")
    control = connect_control(
        coordinator, worker_id, Hello(worker_id, exchange.data_address, os.getpid()), auth, tls
    )
    code = 0
    worker = None
    try:
        fn = load_app(build) if isinstance(build, str) else build
        worker = Worker(
            build_graph(fn),
            worker_id,
            control,
            persistence,
            exchange,
            source_turn_budget=source_turn_budget,
        )
        run_worker_loop(worker)
    except BaseException as e:  # report everything: the coordinator decides what happens next
        code = 1
        if worker is not None:
            worker.discard()  # nothing this attempt buffered may be written now
        try:
            attempt = worker.attempt if worker is not None else None
            control.send(WorkerFailed(worker_id, describe_error(e), attempt))
            time.sleep(0.2)  # let the report leave before the channel closes
        except Exception:
            log.exception("could not report failure to the coordinator")
    finally:
        try:
            exchange.close()
            control.close()
        finally:
            sys.stdout.flush()
            os._exit(code)  # no lingering gRPC threads


def _route_ip(address: str) -> str:
    """The local IP address on the route to ``address`` (what peers can reach us at)."""
    import socket

    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host.strip("[]"), int(port or 1)))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def cluster_worker_main(
    app: str,
    coordinator: str,
    auth: Any,
    tls: Any = None,
    *,
    listen_host: str | None = None,
    listen_port: int = 0,
    advertise: str | None = None,
    worker_id: int | None = None,
    reconnect_timeout: float = 300.0,
    source_turn_budget: float = SOURCE_TURN_BUDGET,
) -> int:
    """A worker started by hand or by an orchestrator: joins the coordinator, runs job
    attempts until the job finishes, and reconnects after aborts or lost connections.

    Unreachable coordinator: retries with backoff (logged) and gives up ``reconnect_timeout``
    seconds after it was last connected (or after start), exit code 1. The data plane binds
    ``listen_host`` (default: the local address on the route to the coordinator, the one
    peers are told). Returns the process exit code."""
    from malstrom.snapshot._memory import NoPersistence
    from malstrom.transport._exchange import TransportError
    from malstrom.transport._grpc_control import connect_control
    from malstrom.transport._grpc_data import GrpcExchange

    fn = load_app(app)
    local = _route_ip(coordinator)
    host = advertise or local
    bind = listen_host or local
    deadline = time.monotonic() + reconnect_timeout
    backoff = 0.2
    while True:
        exchange = GrpcExchange(
            worker_id if worker_id is not None else -1,
            auth,
            tls,
            listen=f"{bind}:{listen_port}",
        )
        control = None
        worker = None
        try:
            try:
                control = connect_control(
                    coordinator,
                    worker_id,
                    Hello(
                        worker_id if worker_id is not None else -1,
                        exchange.advertise(host),
                        os.getpid(),
                    ),
                    auth,
                    tls,
                    connect_timeout=max(0.5, min(5.0, deadline - time.monotonic())),
                )
            except TransportError as e:
                if "refused us" in str(e) or "did not prove" in str(e):  # never worth retrying
                    log.error("%s", e)
                    return 2
                raise
            exchange.worker_id = control.worker_id
            from malstrom.observe._logs import set_log_context

            set_log_context(job=getattr(auth, "job_id", None), worker=control.worker_id)
            log.info(
                "joined %s as worker %d (data plane on %s)",
                coordinator,
                control.worker_id,
                exchange.address,
            )
            # Rejoining after this attempt may take reconnect_timeout again, from its end.
            deadline = float("inf")
            backoff = 0.2
            # A fresh graph each attempt: user objects must not carry state across restarts.
            worker = Worker(
                build_graph(fn),
                control.worker_id,
                control,
                NoPersistence(),
                exchange,
                source_turn_budget=source_turn_budget,
            )
            run_worker_loop(worker)
            if worker.abort_reason is None:
                return 0  # the job finished or stopped
            log.warning("attempt aborted: %s", worker.abort_reason)
        except TransportError as e:
            log.warning("connection problem: %s", e)
        except AttemptFenced as e:
            log.warning("%s", e)
        except Exception as e:
            log.error("job attempt failed here: %s", describe_error(e))
            if control is not None:
                try:
                    attempt = worker.attempt if worker is not None else None
                    control.send(WorkerFailed(control.worker_id, describe_error(e), attempt))
                    time.sleep(0.2)
                except Exception:
                    pass
        finally:
            # The attempt is over for this worker: drop its sinks' buffered output unwritten
            # and every object of its graph, before anything of the next attempt is built.
            if worker is not None:
                worker.discard()
            worker = None
            exchange.close()
            if control is not None:
                control.close()
        if deadline == float("inf"):  # was connected: the deadline counts from now
            deadline = time.monotonic() + reconnect_timeout
        left = deadline - time.monotonic()
        if left <= 0:
            log.error(
                "could not reach the coordinator at %s for %g s (--reconnect-timeout); giving up",
                coordinator,
                reconnect_timeout,
            )
            return 1
        wait = min(backoff, left)
        log.warning("retrying in %.1f s (giving up in %.0f s)", wait, left)
        time.sleep(wait)
        backoff = min(backoff * 2, 5.0)
