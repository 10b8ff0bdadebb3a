"""MultiProcessRuntime: one coordinator in this process, N worker processes, gRPC between them.

A supervisor thread owns the job: it starts the worker processes, runs the coordinator loop,
serves snapshot/stop requests one at a time, and when anything fails (a worker dies, raises,
hangs, or a connection is lost) kills the attempt's processes and starts a new attempt from
the last committed snapshot, up to ``max_restarts`` times with exponential backoff.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from malstrom.coordinator._coordinator import (
    Coordinator,
    JobPhase,
    Operation,
    OperationRefused,
    completed_version,
)
from malstrom.errors import JobFailed
from malstrom.runtime._app import check_importable, load_app
from malstrom.runtime._process import worker_process_main
from malstrom.runtime._single import build_graph
from malstrom.runtime._worker import SOURCE_TURN_BUDGET, check_budget
from malstrom.snapshot._backend import Persistence, SnapshotCorruptError, SnapshotFormatError
from malstrom.snapshot._memory import InMemoryPersistence, NoPersistence
from malstrom.transport._exchange import TransportError

__all__ = [
    "ClusterLauncher",
    "JobFailed",
    "JobHandle",
    "JobSettings",
    "MultiProcessRuntime",
    "Supervisor",
]

log = logging.getLogger("malstrom.runtime")


class _AttemptFailed(Exception):
    pass


class _StoppedBeforeStart(Exception):
    """A stop arrived while no attempt was running (workers still connecting, or a restart
    waiting out its backoff): nothing new to snapshot, the last committed one stands."""


#: Seconds a SIGTERM-initiated stop may take (final snapshot included) before the job is
#: killed; below the 60 s a supervisor such as systemd or Kubernetes is usually configured for.
STOP_GRACE = 50.0


NO_MAIN_GUARD_EXIT = 87
"""Exit code of a worker process whose import of the job's main module started a job."""

_NO_MAIN_GUARD = (
    "the job's main module starts the job when imported: worker processes import it again "
    "(multiprocessing 'spawn') and would start jobs of their own. Put the runtime call under "
    '`if __name__ == "__main__":`'
)


def _refuse_in_worker_bootstrap() -> None:
    """In a worker process still importing the job's main module (no ``__main__`` guard),
    leave at once with :data:`NO_MAIN_GUARD_EXIT`: the supervisor names the cause once
    instead of restarting the job over N worker tracebacks."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(NO_MAIN_GUARD_EXIT)


def _build_once(build: Callable[[Any], None] | str) -> Any:
    """The job's graph, built in this process; the user's error says it came from build."""
    from malstrom.errors import BuildError

    fn = load_app(build) if isinstance(build, str) else build
    try:
        return build_graph(fn)
    except BuildError:
        raise
    except Exception as e:
        name = getattr(fn, "__qualname__", repr(fn))
        raise BuildError(f"the job's build function {name} raised {type(e).__name__}: {e}") from e


class JobHandle:
    """Controls a job started with :meth:`MultiProcessRuntime.start`."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def status(self) -> dict[str, Any]:
        """Phase, workers, restarts, last committed snapshot, error (plain data)."""
        return self._sup.status()

    def snapshot(self, timeout: float | None = 120) -> int:
        """Take a snapshot now; returns its version once committed."""
        return int(self._sup.request(Operation.SNAPSHOT).result(timeout))

    def rescale(self, workers: int, timeout: float | None = 300) -> None:
        """Change the number of worker processes while the job runs (no stop, no restart):
        new workers start, keys and source parts move, removed workers exit. Returns once
        the rescale is complete; ``workers`` must be >= 1 (to end a job, use :meth:`stop`)."""
        self._sup.request(Operation.RESCALE, workers).result(timeout)

    def stop(self, timeout: float | None = 120) -> None:
        """Take a final snapshot and shut down; a later start resumes from it."""
        self._sup.request(Operation.STOP).result(timeout)
        self.wait(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the job completes or stops; raises :class:`JobFailed` if it failed."""
        # An Event, not Thread.join: a Ctrl-C inside join() can leave the thread looking dead.
        if not self._sup.done.wait(timeout):
            raise TimeoutError(f"job still running after {timeout}s")
        if self._sup.failure is not None:
            raise JobFailed(self._sup.failure)

    def kill(self) -> None:
        """Stop at once without a snapshot (the next start resumes from the last one)."""
        self._sup.killed.set()
        self._sup.done.wait()

    @property
    def address(self) -> str:
        """Where the coordinator listens for workers and admin calls (HOST:PORT)."""
        return str(self._sup.address)

    @property
    def job(self) -> str:
        """The job id (admin calls give it with the token)."""
        return str(self._sup.settings.auth.job_id)

    def state(self) -> dict[str, Any] | None:
        """Metrics, snapshot history and events of the job (None with ``metrics=False``)."""
        obs = self._sup.observer
        return obs.state() if obs is not None else None

    @property
    def http_url(self) -> str | None:
        """Where the dashboard and ``/metrics`` are served (None without ``http``)."""
        obs = self._sup.observation
        return obs.url if obs is not None else None

    @property
    def running(self) -> bool:
        """True until the job has finished, stopped, failed or been killed."""
        return not self._sup.done.is_set()


class MultiProcessRuntime:
    """Runs a job on ``parallelism`` worker processes on this machine.

    ``build`` must be importable by the worker processes (a module-level function, or a
    ``functools.partial`` of one). Failures restart the job from the last committed snapshot
    automatically, up to ``max_restarts`` times with backoff, then :meth:`execute` raises
    :class:`JobFailed` naming the cause. If snapshots exist but every one is damaged the job
    does not start (:class:`JobFailed` names the versions); ``fresh_start=True`` ignores the
    snapshots that exist when it starts and runs the job from the beginning.

    ``source_turn_budget`` (seconds, default 5 ms) bounds how long each worker's sources read
    in one loop turn, all parts together: records, barriers, rescales and stops move at least
    that often even if a source's ``poll()`` blocks.

    ``http="HOST:PORT"`` serves ``/metrics``, ``/healthz`` and a live dashboard (port 0: any
    free port; :attr:`JobHandle.http_url` tells which); its actions take ``token``.
    ``metrics=False`` turns the per-operator counters off. ``admin="HOST:PORT"`` is where the
    coordinator listens for workers and admin calls (``malstrom status`` etc.; default: any
    free port on ``host``), ``job`` the job id they give (default: a random one).
    """

    def __init__(
        self,
        build: Callable[[Any], None] | str,
        *,
        parallelism: int,
        persistence: Persistence | None = None,
        snapshot_interval: float | None = None,
        max_restarts: int = 3,
        heartbeat_timeout: float = 30.0,
        host: str = "127.0.0.1",
        token: str | None = None,
        tls: Any = None,
        log_level: int = logging.WARNING,
        fresh_start: bool = False,
        source_turn_budget: float = SOURCE_TURN_BUDGET,
        http: str | None = None,
        metrics: bool = True,
        admin: str | None = None,
        job: str | None = None,
    ) -> None:
        if not isinstance(parallelism, int) or parallelism < 1:
            raise ValueError(f"parallelism must be an int >= 1, got {parallelism!r}")
        persistence = persistence if persistence is not None else NoPersistence()
        if isinstance(persistence, InMemoryPersistence):
            raise TypeError(
                "InMemoryPersistence lives in one process; worker processes cannot share it. "
                "Use LocalDiskPersistence(path) (or NoPersistence) with MultiProcessRuntime"
            )
        _refuse_in_worker_bootstrap()
        if not isinstance(build, str):
            check_importable(build)
        # Build once here: a wiring mistake or a build() that raises is one clear error now,
        # not N failed workers and restarts.
        self._graph = _build_once(build)
        self._pinned: list[str] = self._graph.pinned()
        if snapshot_interval is not None and snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be > 0 seconds, got {snapshot_interval!r}")
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        self.build = build
        self.parallelism = parallelism
        self.persistence = persistence
        self.snapshot_interval = snapshot_interval
        self.max_restarts = max_restarts
        self.heartbeat_timeout = heartbeat_timeout
        self.host = host
        self.token = token or secrets.token_hex(16)
        self.tls = tls
        self.log_level = log_level
        self.fresh_start = fresh_start
        self.source_turn_budget = check_budget(source_turn_budget)
        if http is not None:
            from malstrom.observe._http import parse_address

            parse_address(http)  # a malformed address fails here, not when the job starts
        self.http = http
        self.metrics = metrics or http is not None
        self.admin = admin
        self.job = job

    def start(self) -> JobHandle:
        """Start the job in the background and return its handle."""
        from malstrom.transport._grpc_auth import JobAuth

        settings = JobSettings(
            parallelism=self.parallelism,
            persistence=self.persistence,
            snapshot_interval=self.snapshot_interval,
            max_restarts=self.max_restarts,
            heartbeat_timeout=self.heartbeat_timeout,
            auth=JobAuth(job_id=self.job or f"local-{secrets.token_hex(4)}", token=self.token),
            tls=self.tls,
            listen=self.admin or f"{self.host}:0",
            pinned=self._pinned,
            fresh_start=self.fresh_start,
            http=self.http,
            metrics=self.metrics,
            graph=self._graph,
        )
        sup = Supervisor(settings, _LocalLauncher(self))
        sup.start()
        return JobHandle(sup)

    def execute(self, *, stop_timeout: float = STOP_GRACE) -> None:
        """Run the job to completion. Ctrl-C stops it with a final snapshot (twice: at once).

        SIGTERM (what ``docker stop`` and Kubernetes send) also stops it with a final snapshot
        and then returns normally; if that takes longer than ``stop_timeout`` seconds, or a
        second SIGTERM arrives, the job is killed (resumable from its last snapshot).
        """
        run_to_end(self.start(), stop_timeout)


def run_to_end(handle: JobHandle, stop_timeout: float = STOP_GRACE) -> None:
    """Wait for ``handle``'s job to end, with :meth:`MultiProcessRuntime.execute`'s signal
    handling: Ctrl-C or SIGTERM stop it with a final snapshot, a second one kills it."""
    restore = _stop_on_sigterm(handle._sup, stop_timeout)
    try:
        handle.wait()
    except KeyboardInterrupt:
        log.warning("interrupted: stopping with a final snapshot (Ctrl-C again to kill)")
        try:
            handle.stop(timeout=stop_timeout)
        except KeyboardInterrupt:
            handle.kill()
            raise
        except Exception:
            handle.kill()
            raise
        raise
    finally:
        restore()


def request_stop(sup: Supervisor, grace: float) -> None:
    """Ask ``sup`` to stop its job with a final snapshot; kill the job if it has not ended
    ``grace`` seconds later (it then resumes from its last committed snapshot)."""
    sup.request(Operation.STOP)
    timer = threading.Timer(grace, _kill_late, args=(sup, grace))
    timer.daemon = True
    timer.start()


def _kill_late(sup: Supervisor, grace: float) -> None:
    if not sup.done.is_set():
        log.error("the stop took longer than %g s: killing the job", grace)
        # A failure, not a stop: no final snapshot was taken.
        sup.failure = (
            f"the stop did not complete within {grace:g} s and the job was killed; it "
            "resumes from its last committed snapshot"
        )
        sup.killed.set()


def _stop_on_sigterm(sup: Supervisor, grace: float) -> Callable[[], None]:
    """Make SIGTERM stop ``sup``'s job with a final snapshot; returns the undo function.

    Only from the main thread (Python delivers signals there) and only if nobody else
    installed a handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None

    def on_sigterm(signum: int, frame: Any) -> None:
        if sup.stop_requested.is_set():
            log.warning("SIGTERM again: killing the job (resumable from its last snapshot)")
            sup.killed.set()
            return
        log.warning("SIGTERM: stopping with a final snapshot (again to kill)")
        request_stop(sup, grace)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


@dataclass
class JobSettings:
    """What a supervisor needs to run a job (shared by the local runtime and the cluster CLI)."""

    parallelism: int
    persistence: Persistence
    snapshot_interval: float | None
    max_restarts: int
    heartbeat_timeout: float
    auth: Any
    tls: Any = None
    listen: str = "127.0.0.1:0"
    connect_timeout: float = 120.0
    pinned: list[str] = field(default_factory=list)  # operators whose keyed state cannot move
    fresh_start: bool = False  # ignore the snapshots that exist when the job starts
    http: str | None = None  # HOST:PORT for /metrics, /healthz and the dashboard
    metrics: bool = True  # workers count per operator and report with their heartbeats
    graph: Any = None  # the built graph (for the dashboard's job graph)


class _LocalLauncher:
    """Spawns the worker processes of each attempt on this machine; kills them after it."""

    def __init__(self, rt: MultiProcessRuntime) -> None:
        self.rt = rt
        self.procs: dict[int, Any] = {}

    def start(self, address: str, auth: Any, workers: int) -> None:
        self.procs = {}
        self.address, self.auth = address, auth
        self.add(range(workers))

    def add(self, ids: Any) -> None:
        """Start worker processes with these ids (at start, and when a rescale asks)."""
        rt = self.rt
        ctx = multiprocessing.get_context("spawn")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # children inherit it before gRPC loads
        for i in ids:
            p = self.procs[i] = ctx.Process(
                target=worker_process_main,
                args=(
                    rt.build,
                    i,
                    self.address,
                    self.auth,
                    rt.tls,
                    rt.persistence,
                    rt.host,
                    rt.log_level,
                    rt.source_turn_budget,
                ),
                name=f"malstrom-worker-{i}",
            )
            p.start()

    def check(self, active: Any = None) -> None:
        for i, p in list(self.procs.items()):
            code = p.exitcode
            if code is None:
                continue
            if active is not None and i not in active and code == 0:
                p.join()
                del self.procs[i]  # removed by a rescale, exited cleanly
                continue
            if code == NO_MAIN_GUARD_EXIT:
                raise JobFailed(_NO_MAIN_GUARD)
            how = signal.Signals(-code).name if code < 0 else f"exit code {code}"
            raise _AttemptFailed(f"worker {i} died ({how})")

    def finish(self, server: Any, clean: bool) -> None:
        if clean:
            deadline = time.monotonic() + 30
            for p in self.procs.values():
                p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
        for p in self.procs.values():
            p.join(10)
        server.forget_all()


class ClusterLauncher:
    """Workers are started elsewhere (CLI, Kubernetes) and connect by themselves; after a
    failed attempt they are told to abort, and they reconnect for the next one."""

    def start(self, address: str, auth: Any, workers: int) -> None:
        log.info("waiting for %d workers to connect to %s", workers, address)

    def add(self, ids: Any) -> None:
        log.info("rescale: waiting for workers %s to connect", sorted(ids))

    def check(self, active: Any = None) -> None:
        pass

    def finish(self, server: Any, clean: bool) -> None:
        from malstrom.coordinator._messages import Abort

        for ep in server.endpoints().values():
            if not clean:
                try:
                    ep.send(Abort("the job restarts from its last snapshot"))
                except TransportError:
                    pass
        time.sleep(0.2 if not clean else 0.5)  # let Abort / Finish reach the workers
        server.forget_all()


class Supervisor(threading.Thread):
    """Owns a job: attempts, restarts with backoff, one operation at a time."""

    def __init__(self, settings: JobSettings, launcher: Any) -> None:
        super().__init__(name="malstrom-supervisor", daemon=True)
        self.settings = settings
        self.launcher = launcher
        self.requests: queue.Queue[tuple[Operation, Any, Future[Any]]] = queue.Queue()
        self.killed = threading.Event()
        #: Set once a stop was asked for (answered even if no attempt is running).
        self.stop_requested = threading.Event()
        #: Set when there may be something to do: a request, or a worker's message.
        self._woken = threading.Event()
        self.done = threading.Event()
        self.failure: str | None = None
        self.restarts = 0
        self.phase = "starting"
        self._stop_requested = False
        self._coord: Coordinator | None = None
        self._pids: dict[int, int] = {}
        # Rescales whose attempt failed midway: the restart runs at the new size, and they
        # complete when it runs.
        self._deferred: list[Future[Any]] = []
        self._last_build_failure: str | None = None  # the same one twice: no more restarts
        # Snapshots up to this version are not restored from (a fresh start ignores them).
        self._restore_after: int | None = None
        self._lock = threading.Lock()
        from malstrom.transport._grpc_control import ControlServer

        self.server = ControlServer(
            settings.auth,
            settings.tls,
            listen=settings.listen,
            heartbeat_timeout=settings.heartbeat_timeout,
            admin=self._admin,
        )
        self.address = self.server.address
        self.observation = self._observe()

    def _observe(self) -> Any:
        """Metrics and the HTTP endpoint, when asked for (see ``malstrom.observe``)."""
        if not self.settings.metrics and not self.settings.http:
            return None
        from malstrom.observe._job import observe

        def act(kind: str, arg: Any) -> Any:
            return self.request(kind, arg).result(300 if kind == "rescale" else 120)

        return observe(
            self.settings.auth.job_id,
            self.settings.graph,
            http=self.settings.http,
            token=self.settings.auth.token,
            act=act,
            status=self.status,
        )

    @property
    def observer(self) -> Any:
        return self.observation.observer if self.observation is not None else None

    # ----- API used by handles and the admin service (any thread) ------------------------------
    def request(self, op: Operation | str, arg: Any = None) -> Future[Any]:
        """Queue ``op`` (an :class:`Operation` or its name) for the running job."""
        op = Operation(op)
        fut: Future[Any] = Future()
        if self.done.is_set():
            fut.set_exception(OperationRefused(f"cannot {op.value}: the job is {self.phase}"))
        else:
            self.requests.put((op, arg, fut))
            if op is Operation.STOP:
                self.stop_requested.set()
            self._woken.set()
        return fut

    def status(self) -> dict[str, Any]:
        with self._lock:
            coord = self._coord
            out: dict[str, Any] = coord.status() if coord is not None else {}
            out.update(
                phase=self.phase if coord is None or self.done.is_set() else out["phase"],
                restarts=self.restarts,
                pids={w: p for w, p in self._pids.items() if coord is None or w in coord.workers},
                parallelism=self.settings.parallelism,
                failure=self.failure,
                address=self.address,
            )
            return out

    def _admin(self, command: str, payload: bytes) -> bytes:
        try:
            op = Operation(command)
        except ValueError:
            raise ValueError(f"unknown admin command {command!r}") from None
        match op:
            case Operation.STATUS:
                out = self.status()
                if self.observer is not None:
                    metrics = self.observer.state()
                    for bulky in ("series", "graph", "status"):
                        metrics.pop(bulky, None)
                    out["metrics"] = metrics
                return json.dumps(out, default=str).encode()
            case Operation.SNAPSHOT | Operation.STOP:
                timeout = float(json.loads(payload or b"{}").get("timeout", 120))
                result = self.request(op).result(timeout)
                return json.dumps({"version": result}).encode()
            case Operation.RESCALE:
                args = json.loads(payload or b"{}")
                workers = args.get("workers")
                self.request(op, workers).result(float(args.get("timeout", 300)))
                return json.dumps({"workers": workers}).encode()

    # ----- the supervisor loop ------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        finally:
            # Answer what is still waiting (e.g. a stop that arrived as the job finished)
            # while the server can still send the answers.
            self._fail_requests(OperationRefused(f"the job is {self.phase}"))
            self.server.close(grace=1.0)
            if self.observation is not None:
                self.observation.close()
            self.done.set()

    def _run(self) -> None:
        settings = self.settings
        if settings.fresh_start and settings.persistence.stores:
            self._restore_after = settings.persistence.last_committed()
            if self._restore_after is not None:
                log.warning(
                    "fresh start: ignoring the snapshots up to version %d", self._restore_after
                )
        while True:
            try:
                self.phase = self._attempt()
                return
            except _StoppedBeforeStart:
                self._stopped_before_start()
                return
            except (SnapshotCorruptError, SnapshotFormatError, JobFailed) as e:
                # Every snapshot damaged, or one in a foreign format: restarting cannot help.
                self.failure = str(e)
                self.phase = "failed"
                self._fail_requests(JobFailed(self.failure))
                log.error("%s", e)
                return
            except (_AttemptFailed, TransportError) as e:
                if self.killed.is_set():
                    self.phase = "killed"
                    return
                if self._same_build_failure(str(e)):
                    self.failure = f"the job fails the same way every start, building: {e}"
                    self.phase = "failed"
                    self._fail_requests(JobFailed(self.failure))
                    log.error("%s", self.failure)
                    return
                self.restarts += 1
                if self.observer is not None:
                    self.observer.event("restart", number=self.restarts, reason=str(e))
                if self.restarts > settings.max_restarts:
                    self.failure = (
                        f"job failed after {settings.max_restarts} restarts; last cause: {e}"
                    )
                    self.phase = "failed"
                    self._fail_requests(JobFailed(self.failure))
                    return
                delay = min(0.25 * 2 ** (self.restarts - 1), 10.0)
                log.warning(
                    "job attempt failed (%s); restart %d/%d from the last snapshot in %.2fs",
                    e,
                    self.restarts,
                    settings.max_restarts,
                    delay,
                )
                self.phase = "restarting"
                if self._sleep(delay):
                    self.phase = "killed"
                    return
                if self.stop_requested.is_set() and not self.killed.is_set():
                    self._stopped_before_start()
                    return
            except BaseException as e:  # a bug or an environment problem: fail loudly
                self.failure = f"{type(e).__name__}: {e}"
                self.phase = "failed"
                self._fail_requests(JobFailed(self.failure))
                log.exception("supervisor crashed")
                return

    def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds or until a stop or kill; True if killed."""
        deadline = time.monotonic() + delay
        while not self.stop_requested.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.killed.wait(min(left, 0.05)):
                return True
        return self.killed.is_set()

    def _stopped_before_start(self) -> None:
        """Answer a stop that came while no attempt ran: the last committed snapshot is the
        one a later start resumes from."""
        persistence = self.settings.persistence
        version = persistence.last_committed() if persistence.stores else None
        self.phase = "stopped"
        log.warning(
            "stopped before the workers ran this attempt; resumable from version %s", version
        )
        while True:
            try:
                op, _, fut = self.requests.get_nowait()
            except queue.Empty:
                break
            if fut.done():
                continue
            if op is Operation.STOP:
                fut.set_result(version)
            else:
                fut.set_exception(OperationRefused(f"cannot {op.value}: the job stopped"))

    def _same_build_failure(self, cause: str) -> bool:
        """Whether ``cause`` is a failure to build the graph, the same as the last attempt's
        (which worker reports it first does not matter)."""
        import re

        if "building failed" not in cause:
            self._last_build_failure = None
            return False
        key = re.sub(r"worker \d+", "worker", cause)
        same = key == self._last_build_failure
        self._last_build_failure = key
        return same

    def _fail_requests(self, err: BaseException) -> None:
        deferred, self._deferred = self._deferred, []
        for fut in deferred:
            if not fut.done():
                fut.set_exception(err)
        while True:
            try:
                _, _, fut = self.requests.get_nowait()
            except queue.Empty:
                return
            if not fut.done():
                fut.set_exception(err)

    def _attempt(self) -> str:
        settings, server, launcher = self.settings, self.server, self.launcher
        clean = False
        with self._lock:
            self._coord = None
        if completed_version(settings.persistence, self._restore_after) is not None:
            return JobPhase.FINISHED.value  # completed earlier: nothing to start
        launcher.start(server.address, settings.auth, settings.parallelism)
        try:
            deadline = time.monotonic() + settings.connect_timeout
            while len(server.endpoints()) < settings.parallelism:
                launcher.check()
                if self.killed.is_set():
                    raise _AttemptFailed("killed")
                if self.stop_requested.is_set():
                    raise _StoppedBeforeStart()
                if time.monotonic() > deadline:
                    raise _AttemptFailed(
                        f"only {len(server.endpoints())} of {settings.parallelism} workers "
                        f"connected to {server.address} within {settings.connect_timeout:g} s"
                    )
                time.sleep(0.01)
            endpoints = dict(sorted(server.endpoints().items())[: settings.parallelism])
            hellos = {w: h for w, h in server.hellos().items() if w in endpoints}
            peers = {w: h.data_address for w, h in hellos.items()}
            self._pids = {w: h.pid for w, h in hellos.items()}
            coord = Coordinator(
                settings.persistence,
                endpoints,
                settings.snapshot_interval,
                heartbeat_timeout=settings.heartbeat_timeout,
                peers=peers,
                pinned=settings.pinned,
                restore_after=self._restore_after,
                observer=self.observer,
            )
            with self._lock:
                self._coord = coord
            coord.start()
            log.info("all %d workers connected: the job attempt starts", len(endpoints))
            if self._stop_requested:
                coord.request_stop()
            joining: dict[int, float] = {}  # worker id -> deadline to connect
            server.wake = self._woken.set
            while True:
                self._woken.clear()  # before the work: what arrives during it wakes the wait
                if self.killed.is_set():
                    raise _AttemptFailed("killed")
                self._serve_requests(coord)
                coord.poll()
                if self._deferred and coord.phase is not JobPhase.BUILDING:
                    deferred, self._deferred = self._deferred, []
                    for fut in deferred:
                        fut.set_result(len(coord.workers))
                if coord.phase in (JobPhase.FINISHED, JobPhase.STOPPED):
                    clean = True
                    return coord.phase.value
                if coord.phase is JobPhase.FAILED:
                    raise _AttemptFailed(coord.error)
                self._join_workers(coord, joining)
                try:
                    launcher.check(set(coord.workers) | set(joining))
                except _AttemptFailed:
                    time.sleep(0.2)  # a dying worker reports its error first: prefer that cause
                    coord.poll()
                    if coord.phase is JobPhase.FAILED:
                        raise _AttemptFailed(coord.error) from None
                    raise
                # Lost (broken or silent) or closed: either way no longer an endpoint.
                gone = set(coord.workers) - set(server.endpoints())
                if gone:
                    raise _AttemptFailed(f"lost connection to worker(s) {sorted(gone)}")
                # Messages and requests wake the wait; timers (snapshot interval, heartbeat
                # timeouts, worker processes' exits) are looked at every 10 ms.
                self._woken.wait(0.01)
        except (_AttemptFailed, TransportError) as e:
            # A worker that died takes its connections with it: name the death (and its
            # signal), not the closed connection that was noticed first.
            died = self._death(launcher, e)
            if died is not None:
                e = died
            if self._coord is not None:
                self._coord.fail(str(e))  # answers the operations it was running
            if e is died:
                raise died from None
            raise
        finally:
            launcher.finish(server, clean)

    @staticmethod
    def _death(launcher: Any, err: BaseException) -> _AttemptFailed | None:
        """The death by a signal of a worker process behind ``err``, if seen within 0.5 s."""
        if "died (" in str(err):
            return None
        deadline = time.monotonic() + 0.5
        while True:
            try:
                launcher.check()
            except _AttemptFailed as died:
                # Only a signal: a worker that exited on its own reported its error first.
                if "died (SIG" in str(died):
                    return died
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _join_workers(self, coord: Coordinator, joining: dict[int, float]) -> None:
        """Start the workers a rescale asks for and hand them to the coordinator."""
        wanted = coord.wanted_workers()
        if not wanted:
            joining.clear()
            return
        new = wanted - set(joining)
        if new:
            deadline = time.monotonic() + self.settings.connect_timeout
            joining.update(dict.fromkeys(new, deadline))
            self.launcher.add(sorted(new))
        links = self.server.endpoints()
        hellos = self.server.hellos()
        for w in sorted(wanted):
            if w in links and w in hellos:
                self._pids[w] = hellos[w].pid
                coord.add_worker(w, links[w], hellos[w].data_address)
                joining.pop(w, None)
        late = [w for w, t in joining.items() if time.monotonic() > t]
        if late:
            coord.cancel_rescale(
                f"worker(s) {sorted(late)} did not connect to {self.server.address} within "
                f"{self.settings.connect_timeout:g} s"
            )
            joining.clear()
            self.settings.parallelism = len(coord.workers)

    def _serve_requests(self, coord: Coordinator) -> None:
        while True:
            try:
                op, arg, fut = self.requests.get_nowait()
            except queue.Empty:
                return
            if op is Operation.STOP:
                self._stop_requested = True

            def done(version: Any, err: BaseException | None, fut: Future[Any] = fut) -> None:
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(version)

            def rescaled(workers: Any, err: BaseException | None, fut: Future[Any] = fut) -> None:
                if err is not None and not isinstance(err, OperationRefused):
                    self._deferred.append(fut)  # the attempt failed: the restart has the new size
                else:
                    done(workers, err, fut)

            match op:
                case Operation.SNAPSHOT:
                    coord.request_snapshot(done)
                case Operation.RESCALE:
                    if isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1:
                        # A restart from now on (e.g. a failure mid-rescale) uses the new size.
                        self.settings.parallelism = arg
                    coord.request_rescale(arg, rescaled)
                case _:
                    coord.request_stop(done)
