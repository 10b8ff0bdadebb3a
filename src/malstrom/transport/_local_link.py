"""Same-host data links: the frames of :mod:`malstrom.transport._grpc_data` over Unix sockets.

Workers on one host (one kernel, one network namespace) exchange their data frames over a
Unix stream socket instead of gRPC over loopback. gRPC's Python layer costs about half a
millisecond of GIL-holding work per message on each side (request generators, completion
queue polling, thread pool hand-offs); a Unix socket costs one ``sendall`` on the sending
thread and one buffered ``read`` on the receiving thread, both of which release the GIL while
the kernel copies. Everything above the carrier (credits, sequence numbers, fencing, decoding
in the worker thread) is the gRPC data plane's, unchanged: the frames are the same
``Frame`` messages, each preceded by its length.

The receiving worker reads its links itself (:class:`InboundLink`), once per loop turn,
without blocking. A thread per link that read each frame as it came would take the GIL from
the busy worker loop for every frame, and wake up on a CPU the workers need; here the link's
thread only waits for the socket to become readable while the worker loop sleeps
(:meth:`InboundLink.arm`), to wake it. A busy worker so never hands the GIL to a link thread.

The sockets live in Linux's *abstract* namespace: no file to clean up after a crash, and the
name is only visible inside the listener's network namespace. A worker in another namespace
(another host, another pod, a simulated host of the tests) gets "connection refused" and
uses gRPC; a worker that can connect is on the same kernel, so nothing crosses a network.

A link starts with a handshake that carries what gRPC call metadata carries (job, token,
protocol version, attempt) and a nonce the listener signs, so both ends prove they belong to
the job. Refusals use the gRPC status names, and the sender treats them exactly like gRPC's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import secrets
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import grpc

from malstrom.transport import malstrom_pb2 as pb
from malstrom.transport._grpc_auth import MD_NONCE, JobAuth

__all__ = [
    "InboundLink",
    "LinkError",
    "LocalListener",
    "connect_link",
    "frame_bytes",
    "local_name",
    "send_frame",
    "split_address",
]

log = logging.getLogger(__name__)

#: Separates the gRPC address from the same-host link's name in an advertised data address.
_LOCAL = ";local="
_LEN = struct.Struct("<I")
#: Largest handshake or frame accepted (a frame is at most one gRPC-sized chunk).
_MAX_BYTES = 64 * 1024 * 1024
_READ_BUFFER = 1024 * 1024
_SEND_BUFFER = 1024 * 1024


class LinkError(grpc.RpcError):
    """A failed or refused same-host link, with a gRPC status code (the sender handles both
    carriers' failures the same way)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def local_name() -> str:
    """A fresh abstract socket name (unique per exchange: a restarted worker gets a new one)."""
    return f"malstrom-{secrets.token_hex(8)}"


def split_address(address: str) -> tuple[str, str | None]:
    """``(grpc host:port, same-host link name or None)`` of an advertised data address."""
    grpc_address, sep, name = address.partition(_LOCAL)
    return grpc_address, (name or None) if sep else None


def join_address(grpc_address: str, name: str | None) -> str:
    """The data address a worker advertises: its gRPC address, plus its link name if any."""
    return grpc_address if name is None else f"{grpc_address}{_LOCAL}{name}"


def _abstract(name: str) -> bytes:
    return b"\0" + name.encode()


def _send_blob(sock: socket.socket, blob: bytes) -> None:
    sock.sendall(_LEN.pack(len(blob)))
    sock.sendall(blob)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes of a socket, or None if it ended before the first (nothing is read ahead:
    what follows belongs to whoever reads the link next)."""
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            if out:
                raise LinkError(grpc.StatusCode.UNAVAILABLE, "the link broke inside a message")
            return None
        out += chunk
    return bytes(out)


def _recv_blob(sock: socket.socket) -> bytes | None:
    """The next length-prefixed blob of a socket (a handshake, an answer, a refusal), or None
    at a clean end."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > _MAX_BYTES:
        raise LinkError(grpc.StatusCode.DATA_LOSS, f"a message of {n} bytes is too large")
    blob = _recv_exact(sock, n)
    if blob is None:
        raise LinkError(grpc.StatusCode.UNAVAILABLE, "the link broke inside a message")
    return blob


def _refusal(blob: bytes) -> LinkError:
    """The error a listener's answer (``{"code": ..., "details": ...}``) describes."""
    try:
        msg = json.loads(blob)
        return LinkError(grpc.StatusCode[msg["code"]], str(msg["details"]))
    except (ValueError, KeyError, TypeError):
        return LinkError(grpc.StatusCode.UNKNOWN, "the peer answered something unreadable")


# ----- sending side ------------------------------------------------------------------------------
def connect_link(
    name: str, auth: JobAuth, attempt: int | None, timeout: float
) -> socket.socket | None:
    """Open a link to the listener ``name`` and pass its handshake.

    Returns None if no listener of that name exists in this network namespace (the peer is
    elsewhere, or gone); raises :class:`LinkError` if the listener refused us or did not prove
    it knows the job's token.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(_abstract(name))
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
                sock.close()
                return None
            raise
        nonce = secrets.token_hex(16)
        hello = {"md": dict(auth.metadata(nonce)), "attempt": attempt}
        _send_blob(sock, json.dumps(hello).encode())
        answer = _recv_blob(sock)
        if answer is None:
            raise LinkError(grpc.StatusCode.UNAVAILABLE, "the peer closed the link at once")
        msg = json.loads(answer)
        if "code" in msg:
            raise _refusal(answer)
        if not secrets.compare_digest(str(msg.get("proof", "")), auth.proof(nonce)):
            raise LinkError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the peer did not prove it belongs to job {auth.job_id!r} (wrong token or not "
                "a malstrom worker); refusing to talk to it",
            )
        sock.settimeout(None)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        return sock
    except OSError as e:
        sock.close()
        raise LinkError(grpc.StatusCode.UNAVAILABLE, f"link handshake failed: {e}") from e
    except BaseException:
        sock.close()
        raise


def frame_bytes(frame: pb.Frame) -> bytes:
    """One frame as it travels on a link: its length, then the frame."""
    blob = frame.SerializeToString()
    return _LEN.pack(len(blob)) + blob


def send_frame(sock: socket.socket, frame: pb.Frame | bytes) -> None:
    """Write one frame, or the tail of one (raises :class:`LinkError` with the peer's reason
    if it hung up)."""
    try:
        sock.sendall(frame if type(frame) is bytes else frame_bytes(frame))  # type: ignore[arg-type]
    except OSError as e:
        raise _why_closed(sock, e) from e


def _why_closed(sock: socket.socket, err: OSError) -> LinkError:
    """The listener's reason for closing the link, if it sent one before it did."""
    try:
        sock.setblocking(False)
        blob = _recv_blob(sock)
        if blob:
            return _refusal(blob)
    except (OSError, LinkError, ValueError):
        pass
    return LinkError(grpc.StatusCode.UNAVAILABLE, f"the link broke: {err}")


# ----- receiving side ----------------------------------------------------------------------------
class _Context:
    """What a frame handler needs of its stream (the gRPC servicer context's ``peer`` and
    ``abort``, for a link)."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self._name = name

    def peer(self) -> str:
        return f"unix:{self._name}"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        """Tell the sender why, and end the link (raises, as gRPC's ``abort`` does)."""
        with contextlib.suppress(OSError):
            _send_blob(self._sock, json.dumps({"code": code.name, "details": details}).encode())
        raise LinkError(code, details)


class InboundLink:
    """The receiving end of one admitted link: read by the worker thread, watched by the
    link's own thread.

    The worker calls :meth:`read` once per loop turn (never blocks) and :meth:`arm` before
    its loop sleeps; the link's thread runs :meth:`watch`, which waits until armed, then
    until the socket is readable (or ends), and then calls ``wake`` once. While the worker is
    busy nothing arms the watch, so its thread sleeps and never takes the GIL.
    """

    def __init__(self, sock: socket.socket, context: Any, attempt: int | None) -> None:
        self.sock = sock
        #: What the frame handler aborts through (the listener's reason goes to the sender).
        self.context = context
        #: The sender's job attempt, from the handshake.
        self.attempt = attempt
        self._buf = bytearray(_READ_BUFFER)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of the bytes read
        self._armed = threading.Event()
        self._done = False
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    # ----- worker thread -------------------------------------------------------------------
    def read(self, out: list[pb.Frame]) -> bool:
        """Append the complete frames that arrived to ``out``, in order; False once the sender
        ended the link. Never blocks. Raises :class:`LinkError` if the bytes are not frames
        or the link ended inside one, OSError if it broke (``out`` then holds every complete
        frame before the fault)."""
        while True:
            if self._end == len(self._buf):
                self._make_room()
            space = len(self._buf) - self._end
            with memoryview(self._buf) as view:
                try:
                    n = self.sock.recv_into(view[self._end :])
                except (BlockingIOError, InterruptedError):
                    return True
            if n == 0:
                if self._end > self._start:
                    raise LinkError(grpc.StatusCode.UNAVAILABLE, "the link broke inside a frame")
                return False
            self._end += n
            self._parse(out)
            if n < space:
                return True  # a short read: the socket held no more (saves a syscall a turn)

    def _parse(self, out: list[pb.Frame]) -> None:
        buf = self._buf
        start, end = self._start, self._end
        with memoryview(buf) as view:
            while end - start >= 4:
                (n,) = _LEN.unpack_from(buf, start)
                if n > _MAX_BYTES:
                    raise LinkError(grpc.StatusCode.DATA_LOSS, f"a frame of {n} bytes is too large")
                if end - start - 4 < n:
                    break
                out.append(pb.Frame.FromString(view[start + 4 : start + 4 + n]))
                start += 4 + n
        if start == end:
            start = end = 0
        self._start, self._end = start, end

    def _make_room(self) -> None:
        """Move the unparsed tail to the front, and grow for a frame larger than the buffer."""
        buf = self._buf
        live = self._end - self._start
        need = live + 1
        if live >= 4:
            need = max(need, 4 + _LEN.unpack_from(buf, self._start)[0])
        if self._start:
            buf[:live] = buf[self._start : self._end]
            self._start, self._end = 0, live
        if need > len(buf):
            buf.extend(bytes(need - len(buf)))

    def arm(self) -> None:
        """The worker loop is about to sleep: wake it when the link has something to read."""
        if not self._armed.is_set():
            self._armed.set()

    def end(self) -> None:
        """The worker is done with the link: hang up (the sender sees it break) and let the
        watch return."""
        self._done = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._armed.set()

    # ----- the link's thread ---------------------------------------------------------------
    def watch(self, wake: Callable[[], None]) -> None:
        """Until :meth:`end`: each time the worker arms the watch, wait for the socket to be
        readable (a frame, the sender's end, or a break) and call ``wake`` once."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            self._armed.wait()
            if self._done:
                return
            try:
                poller.poll()
            except OSError:
                return  # closed under us: the exchange is closing
            if self._done:
                return
            # Cleared before waking: the worker arms again before its next sleep, after this
            # wake-up, so no readiness goes unnoticed.
            self._armed.clear()
            wake()


#: ``serve(hello_attempt, sock, context)``: takes one admitted link, and returns when the
#: link is over (it runs in the link's thread; see GrpcExchange).
Serve = Callable[[int | None, socket.socket, Any], object]
#: ``admit(metadata, attempt, context)``: returns if the link may pass, else refuses it with
#: ``context.abort`` (see GrpcExchange).
Admit = Callable[[dict[str, str], int | None, Any], None]


class LocalListener:
    """Accepts same-host links on an abstract Unix socket; one thread per link passes its
    handshake and hands the socket to ``serve``."""

    def __init__(self, auth: JobAuth, admit: Admit, serve: Serve, owner: str) -> None:
        self.name = local_name()
        self._auth = auth
        self._admit = admit
        self._serve = serve
        self._owner = owner
        self._closed = False
        self._lock = threading.Lock()
        self._links: set[socket.socket] = set()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(_abstract(self.name))
        self._sock.listen(64)
        self._thread = threading.Thread(
            target=self._accept, name=f"malstrom-link-accept-{owner}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and end every link (their senders see the link break)."""
        with self._lock:
            self._closed = True
            links = list(self._links)
            self._links.clear()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for s in links:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._thread.join(2.0)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._links.add(conn)
            threading.Thread(
                target=self._link, args=(conn,), name=f"malstrom-link-{self._owner}", daemon=True
            ).start()

    def _link(self, conn: socket.socket) -> None:
        ctx = _Context(conn, self.name)
        try:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _READ_BUFFER)
            hello_blob = _recv_blob(conn)
            if hello_blob is None:
                return
            try:
                hello = json.loads(hello_blob)
                md = {str(k): str(v) for k, v in dict(hello["md"]).items()}
                attempt = hello.get("attempt")
                attempt = None if attempt is None else int(attempt)
            except (ValueError, KeyError, TypeError, AttributeError):
                ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "not a malstrom link handshake")
                return
            self._admit(md, attempt, ctx)
            nonce = md.get(MD_NONCE, "")
            _send_blob(conn, json.dumps({"proof": self._auth.proof(nonce)}).encode())
            self._serve(attempt, conn, ctx)
        except LinkError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE,):
                log.debug("link closed: %s", e.details())
        except (OSError, ValueError) as e:
            log.debug("link closed: %s", e)
        finally:
            with self._lock:
                self._links.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
