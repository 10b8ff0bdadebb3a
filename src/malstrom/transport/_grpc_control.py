"""Coordinator <-> worker control links and the coordinator's admin service, over gRPC.

Each worker holds one bidirectional ``Control.Connect`` stream to the coordinator. Both sides
see it as an :class:`~malstrom.transport._local.Endpoint` (``send``/``recv``, non-blocking)
carrying pickled Python objects (the dataclasses of ``malstrom.coordinator._messages``). The
worker's first message is its ``hello``, kept apart (``ControlServer.hellos()``). Both sides
send an empty frame (a heartbeat) after every second without traffic, so a stuck or vanished
peer is noticed even when TCP is not.

The worker names its id in the call metadata, or lets the coordinator assign the next free
one (cluster mode); the coordinator answers with the id and a proof that it knows the job
token in its initial metadata, and the worker checks that proof before unpickling anything.

``Admin.Call`` (rescale, snapshot, stop, status, ... as opaque bytes) is served by the same
gRPC server; :class:`AdminClient` calls it from the CLI and runtime handles.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from malstrom.transport import malstrom_pb2 as pb
from malstrom.transport import malstrom_pb2_grpc as pb_grpc
from malstrom.transport._exchange import TransportError
from malstrom.transport._grpc_auth import (
    JobAuth,
    Rejections,
    TlsConfig,
    is_refusal,
    make_channel,
    make_server,
    new_nonce,
    rpc_error,
    server_proof,
    verify_server,
)

__all__ = [
    "AdminClient",
    "AdminError",
    "AdminHandler",
    "ControlClient",
    "ControlServer",
    "WorkerLink",
    "connect_control",
    "serve_admin",
]

log = logging.getLogger(__name__)

MD_WORKER = "x-malstrom-worker"
_PICKLE_PROTOCOL = 5
_STOP = object()

#: ``handler(command, payload) -> reply payload``; raising makes the call fail with its message.
AdminHandler = Callable[[str, bytes], bytes]


class AdminError(RuntimeError):
    """The coordinator refused or failed an admin command (its message says why)."""


def _dumps(msg: Any) -> bytes:
    return pickle.dumps(msg, _PICKLE_PROTOCOL)


# ================================ coordinator side ===========================================
class WorkerLink:
    """The coordinator's end of one worker's control stream (an ``Endpoint``)."""

    def __init__(self, worker_id: int, peer: str) -> None:
        self.worker_id = worker_id
        #: The worker's network address as gRPC sees it (for messages and logs).
        self.peer = peer
        self.last_seen = time.monotonic()
        #: The worker's first message (its hello); None until it arrived.
        self.hello: Any = None
        #: Set once the hello arrived: the link then counts as connected.
        self.ready = threading.Event()
        #: Set when the stream broke (not by a goodbye); the reason.
        self.broken: str | None = None
        #: Set when the worker ended its stream on purpose.
        self.closed = False
        self._inbox: deque[Any] = deque()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def send(self, msg: Any) -> None:
        """Queue ``msg`` for the worker. Raises TransportError if its stream is gone."""
        if self.broken is not None or self.closed:
            raise TransportError(
                f"worker {self.worker_id} ({self.peer}) is gone: {self.broken or 'it closed'}"
            )
        self._outbox.put(_dumps(msg))

    def recv(self) -> Any | None:
        """The next message from the worker, or None. Never blocks."""
        return self._inbox.popleft() if self._inbox else None

    def _end(self) -> None:
        self._outbox.put(_STOP)


class _ControlService(pb_grpc.ControlServicer):
    def __init__(self, owner: ControlServer) -> None:
        self.owner = owner

    def Connect(self, request_iterator: Iterator[pb.ControlFrame], context: Any) -> Any:
        owner = self.owner
        md = dict(context.invocation_metadata() or ())
        link = owner._register(md.get(MD_WORKER, ""), context)  # aborts on a conflict
        nonce = md.get("x-malstrom-nonce")
        initial: list[tuple[str, str]] = [(MD_WORKER, str(link.worker_id))]
        if nonce is not None:
            initial.append(("x-malstrom-proof", owner.auth.proof(nonce)))
        context.send_initial_metadata(tuple(initial))
        context.add_callback(link._end)
        reader = threading.Thread(
            target=self._read,
            args=(link, request_iterator),
            name=f"malstrom-control-read-{link.worker_id}",
            daemon=True,
        )
        reader.start()
        return self._write(link, context)

    def _read(self, link: WorkerLink, requests: Iterator[pb.ControlFrame]) -> None:
        inbox = link._inbox
        try:
            for frame in requests:
                link.last_seen = time.monotonic()
                if not frame.payload:
                    continue
                msg = pickle.loads(frame.payload)
                if link.ready.is_set():
                    inbox.append(msg)
                    self.owner.wake()
                else:
                    link.hello = msg
                    link.ready.set()
                    self.owner._changed()
            link.closed = True
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            link.broken = f"control stream broke ({code.name if code else 'cancelled'})"
        except Exception as e:  # an unpicklable message: the link is unusable
            link.broken = f"bad message from worker {link.worker_id}: {e!r}"
            log.error("%s", link.broken)
        finally:
            if link.broken is not None:
                log.warning("worker %d (%s): %s", link.worker_id, link.peer, link.broken)
            link._end()
            self.owner.wake()

    def _write(self, link: WorkerLink, context: Any) -> Iterator[pb.ControlFrame]:
        interval = self.owner.heartbeat_interval
        outbox = link._outbox
        heartbeat = pb.ControlFrame()
        while True:
            try:
                item = outbox.get(timeout=interval)
            except queue.Empty:
                if not context.is_active():
                    return
                yield heartbeat
                continue
            if item is _STOP:
                return
            yield pb.ControlFrame(payload=item)


class _AdminService(pb_grpc.AdminServicer):
    def __init__(self, owner: ControlServer) -> None:
        self.owner = owner

    def Call(self, request: pb.AdminRequest, context: Any) -> pb.AdminReply:
        server_proof(self.owner.auth, context)
        handler = self.owner._admin
        if handler is None:
            return pb.AdminReply(ok=False, error="this coordinator serves no admin commands")
        try:
            return pb.AdminReply(ok=True, payload=handler(request.command, request.payload))
        except Exception as e:
            log.warning("admin command %r failed: %s", request.command, e)
            return pb.AdminReply(ok=False, error=str(e) or type(e).__name__)


class ControlServer:
    """The coordinator's gRPC server: workers' control streams plus the admin service.

    ``endpoints()`` maps the ids of connected, live workers to their :class:`WorkerLink`
    (whose ``recv`` yields what the worker sent after its hello; ``hellos()`` has the hellos);
    ``lost()`` names the workers whose stream broke or who sent nothing (not even a heartbeat)
    for ``heartbeat_timeout`` seconds.
    """

    def __init__(
        self,
        auth: JobAuth,
        tls: TlsConfig | None = None,
        listen: str = "127.0.0.1:0",
        *,
        heartbeat_timeout: float = 10.0,
        heartbeat_interval: float = 1.0,
        admin: AdminHandler | None = None,
    ) -> None:
        self.auth = auth
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_interval = heartbeat_interval
        #: Called (from gRPC threads) when a worker's message arrives or its link ends: the
        #: coordinator's loop sets it to wake itself from its idle wait.
        self.wake: Callable[[], None] = _nothing
        #: Refusals of clients that presented another job, token or version.
        self.rejections = Rejections()
        self._admin = admin
        self._links: dict[int, WorkerLink] = {}
        self._lock = threading.Condition()
        self._server, self.address = make_server(auth, tls, listen, rejections=self.rejections)
        pb_grpc.add_ControlServicer_to_server(_ControlService(self), self._server)
        pb_grpc.add_AdminServicer_to_server(_AdminService(self), self._server)
        self._server.start()

    def set_admin_handler(self, handler: AdminHandler | None) -> None:
        """Serve admin commands with ``handler`` (None: refuse them)."""
        self._admin = handler

    def endpoints(self) -> dict[int, WorkerLink]:
        """The connected workers (hello received) that are neither lost nor closed, by id."""
        with self._lock:
            links = dict(self._links)
        dead = self.lost()
        return {
            w: link
            for w, link in sorted(links.items())
            if link.ready.is_set() and w not in dead and not link.closed
        }

    def hellos(self) -> dict[int, Any]:
        """The hello message of every worker in :meth:`endpoints`, by worker id."""
        return {w: link.hello for w, link in self.endpoints().items()}

    def wait_for(self, n: int, timeout: float | None = None) -> dict[int, WorkerLink]:
        """Block until ``n`` workers are connected; their endpoints. TransportError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            live = self.endpoints()
            if len(live) >= n:
                return live
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TransportError(
                    f"only {len(live)} of {n} workers connected to {self.address} "
                    f"within {timeout:g} s"
                )
            with self._lock:
                self._lock.wait(0.1 if left is None else min(0.1, left))

    def lost(self) -> set[int]:
        """Workers whose stream broke, or who sent nothing for ``heartbeat_timeout`` seconds."""
        now = time.monotonic()
        limit = self.heartbeat_timeout
        with self._lock:
            links = list(self._links.values())
        return {
            link.worker_id
            for link in links
            if not link.closed and (link.broken is not None or now - link.last_seen > limit)
        }

    def _changed(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def forget(self, worker_id: int) -> None:
        """Drop a worker's link (after a restart or scale-down); its id becomes free."""
        with self._lock:
            link = self._links.pop(worker_id, None)
        if link is not None:
            link._end()

    def forget_all(self) -> None:
        """Drop every worker's link, live or lost (between job attempts)."""
        with self._lock:
            ids = list(self._links)
        for w in ids:
            self.forget(w)

    def close(self, grace: float = 0.0) -> None:
        """End every worker stream and stop the server; calls still running (an admin
        command's answer) get ``grace`` seconds to finish."""
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link._end()
        self._server.stop(grace).wait(grace + 2.0)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- gRPC threads ----------------------------------------------------------------------
    def _register(self, wanted: str, context: Any) -> WorkerLink:
        dead = self.lost()
        with self._lock:
            if wanted:
                try:
                    wid = int(wanted)
                except ValueError:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad worker id {wanted!r}")
                old = self._links.get(wid)
                if old is not None and wid not in dead and not old.closed:
                    context.abort(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"worker {wid} is already connected (from {old.peer})",
                    )
            else:
                wid = 0
                while wid in self._links and wid not in dead and not self._links[wid].closed:
                    wid += 1
            old = self._links.get(wid)
            if old is not None:
                old._end()
            link = self._links[wid] = WorkerLink(wid, context.peer())
            self._lock.notify_all()
        log.info("worker %d connected from %s", wid, link.peer)
        return link


def serve_admin(server: ControlServer, handler: AdminHandler) -> None:
    """Serve admin commands on ``server``'s gRPC server with ``handler``."""
    server.set_admin_handler(handler)


# ================================ worker side ================================================
def _nothing() -> None:
    pass


class ControlClient:
    """A worker's end of its control stream to the coordinator (an ``Endpoint``).

    ``send`` raises TransportError once the coordinator is gone (stream broken, or nothing
    heard for ``heartbeat_timeout`` seconds); ``recv`` still returns what arrived before.
    """

    def __init__(
        self,
        address: str,
        worker_id: int | None,
        hello: Any,
        auth: JobAuth,
        tls: TlsConfig | None = None,
        *,
        connect_timeout: float = 30.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._auth = auth
        self._inbox: deque[Any] = deque()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: str | None = None
        self._closing = False
        self._heartbeats = True
        self._last_heard = time.monotonic()
        #: Called (from the reader thread) when a message arrives or the link ends: the worker
        #: loop sets it to wake itself from an idle sleep.
        self.wake: Callable[[], None] = _nothing
        self._channel = make_channel(address, auth, tls)
        self._stub = pb_grpc.ControlStub(self._channel)
        self.worker_id: int = self._open(worker_id, hello, connect_timeout)
        self._reader = threading.Thread(
            target=self._read, name=f"malstrom-control-{self.worker_id}", daemon=True
        )
        self._reader.start()

    # ----- Endpoint ----------------------------------------------------------------------------
    def send(self, msg: Any) -> None:
        """Queue ``msg`` for the coordinator. Raises TransportError if it is gone."""
        if self.closed:
            raise TransportError(self._error or "control link closed")
        self._outbox.put(_dumps(msg))

    def recv(self) -> Any | None:
        """The next message from the coordinator, or None. Never blocks."""
        return self._inbox.popleft() if self._inbox else None

    @property
    def closed(self) -> bool:
        """True once the coordinator is gone or :meth:`close` was called."""
        if self._error is None and not self._closing:
            silent = time.monotonic() - self._last_heard
            if silent > self.heartbeat_timeout:
                self._error = (
                    f"coordinator at {self.address} sent nothing for {silent:.1f} s "
                    "(not even a heartbeat)"
                )
        return self._error is not None or self._closing

    def close(self) -> None:
        """End the stream politely (the coordinator sees a goodbye, not a loss)."""
        if self._closing:
            return
        self._closing = True
        self._outbox.put(_STOP)
        self._reader.join(2.0)
        self._call.cancel()
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- internals -----------------------------------------------------------------------------
    def _requests(self, hello: bytes, outbox: queue.SimpleQueue[Any]) -> Iterator[pb.ControlFrame]:
        yield pb.ControlFrame(payload=hello)
        heartbeat = pb.ControlFrame()
        while True:
            try:
                item = outbox.get(timeout=self.heartbeat_interval)
            except queue.Empty:
                if self.closed:
                    return
                if self._heartbeats:
                    yield heartbeat
                continue
            if item is _STOP:
                return
            yield pb.ControlFrame(payload=item)

    def _open(self, worker_id: int | None, hello: Any, timeout: float) -> int:
        hello_bytes = _dumps(hello)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            nonce = new_nonce()
            wanted = "" if worker_id is None else str(worker_id)
            md = (("x-malstrom-nonce", nonce), (MD_WORKER, wanted))
            # A fresh queue per attempt: a failed attempt's stream never takes our messages.
            outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
            call = self._stub.Connect(self._requests(hello_bytes, outbox), metadata=md)
            initial = _initial_metadata(call, max(0.5, deadline - time.monotonic()))
            if initial is not None and MD_WORKER in dict(initial):  # accepted
                try:
                    verify_server(self._auth, nonce, initial, self.address)
                except TransportError:
                    call.cancel()
                    raise
                self._call = call
                self._outbox = outbox
                return int(dict(initial)[MD_WORKER])
            if initial is None and not call.done():
                call.cancel()
                raise TransportError(f"coordinator at {self.address} did not answer in time")
            code = call.code()  # the call ended without accepting us: why?
            err = _CallError(code, call.details())
            if is_refusal(err) or code != grpc.StatusCode.UNAVAILABLE:
                raise rpc_error(err, self.address, "control")
            if time.monotonic() + delay >= deadline:
                raise rpc_error(err, self.address, f"control (gave up after {timeout:g} s)")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _read(self) -> None:
        inbox = self._inbox
        try:
            for frame in self._call:
                self._last_heard = time.monotonic()
                if frame.payload:
                    inbox.append(pickle.loads(frame.payload))
                    self.wake()
            if not self._closing:
                self._error = f"coordinator at {self.address} ended the control stream"
        except grpc.RpcError as e:
            if not self._closing:
                self._error = str(rpc_error(e, self.address, "control stream"))
        except Exception as e:
            self._error = f"bad message from coordinator at {self.address}: {e!r}"
        if self._error is not None and not self._closing:
            log.warning("%s", self._error)
        self.wake()  # the worker loop sees the link closed

    def _stop_heartbeats(self) -> None:
        """Testing aid: keep the stream open but stop sending heartbeats."""
        self._heartbeats = False


class _CallError(grpc.RpcError):
    """An RpcError built from a finished call's code and details."""

    def __init__(self, code: Any, details: Any) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> Any:
        return self._code

    def details(self) -> Any:
        return self._details


def _initial_metadata(call: Any, timeout: float) -> Any | None:
    """``call.initial_metadata()`` (empty if the call failed), or None after ``timeout`` s."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(call.initial_metadata() or ()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


def connect_control(
    address: str,
    worker_id: int | None,
    hello: object,
    auth: JobAuth,
    tls: TlsConfig | None = None,
    *,
    connect_timeout: float = 30.0,
    heartbeat_interval: float = 1.0,
    heartbeat_timeout: float = 10.0,
) -> ControlClient:
    """Open the worker's control stream to the coordinator at ``address`` (see ControlClient).

    ``worker_id=None`` lets the coordinator assign the next free id (``client.worker_id``).
    Retries while the coordinator is not up yet, for ``connect_timeout`` seconds (default 30).
    """
    return ControlClient(
        address,
        worker_id,
        hello,
        auth,
        tls,
        connect_timeout=connect_timeout,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
    )


class AdminClient:
    """Calls the coordinator's admin service (CLI, runtime handles)."""

    def __init__(self, address: str, auth: JobAuth, tls: TlsConfig | None = None) -> None:
        self.address = address
        self._auth = auth
        self._channel = make_channel(address, auth, tls)
        self._stub = pb_grpc.AdminStub(self._channel)

    def call(self, command: str, payload: bytes = b"", timeout: float = 30.0) -> bytes:
        """Run ``command``; its reply payload. AdminError if the coordinator refuses it."""
        nonce = new_nonce()
        try:
            reply, call = self._stub.Call.with_call(
                pb.AdminRequest(command=command, payload=payload),
                timeout=timeout,
                metadata=(("x-malstrom-nonce", nonce),),
            )
        except grpc.RpcError as e:
            raise rpc_error(e, self.address, f"admin {command!r}") from None
        verify_server(self._auth, nonce, call.initial_metadata(), self.address)
        if not reply.ok:
            raise AdminError(f"{command}: {reply.error}")
        return bytes(reply.payload)

    def close(self) -> None:
        """Close the channel."""
        with contextlib.suppress(Exception):
            self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
