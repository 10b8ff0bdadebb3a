"""Worker <-> worker data pipes over gRPC: the :class:`Exchange` of multi-process runtimes.

Per ordered pair of workers there is one client-streaming ``DataPlane.Push`` RPC, fed by one
sender thread. Each message is pickled once, when it is sent; at :meth:`GrpcExchange.flush`
what has credit leaves in frames of about 256 KiB (Python gRPC costs ~100 us per message
whatever its size, so records never travel one per message, and a busy turn's output usually
leaves as one frame). Frames carry a per-pair sequence number: the receiver checks it, so
FIFO per (peer, operator) holds across frames and reconnections, and a lost frame is an
error, never silent. The gRPC thread that receives a frame only queues its bytes; the worker
thread unpickles it when ``recv`` reaches it, so the receive threads hardly ever hold the GIL
the worker loop needs. Frames of same-host links are read by the worker thread itself, at
each ``flush`` (once per loop turn); their threads only wake a sleeping loop
(:mod:`malstrom.transport._local_link`).

Fencing: every stream names the job attempt of its sender in its call metadata; a worker
refuses (``FAILED_PRECONDITION``) streams of any attempt but its own, and data frames that
arrive before it knows its attempt, so a worker of a failed attempt never delivers a record
to a worker of a later one (see ``malstrom.coordinator._messages``).

Flow control is per (sender, receiver, operator) pipe, with credits counted in pickled
message bytes (see :mod:`malstrom.transport._exchange`): a pipe has ``window_bytes`` in
flight at most, what has no credit waits pickled in the sender's queue, and the pipe is
saturated above ``send_buffer_bytes`` queued. Credit reports ride on the frames of the
opposite direction (``Frame.credits``, one frame per peer and flush at most, on a data frame
when there is one), and are applied when their frame is taken in (by the gRPC thread at
once, or at the worker's next flush). Because every pipe's window is bounded, frames are
always taken in, whatever the worker loop consumes: nothing a peer sends can wait behind a
message the worker loop is not taking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

import grpc

from malstrom.transport import malstrom_pb2 as pb
from malstrom.transport import malstrom_pb2_grpc as pb_grpc
from malstrom.transport._exchange import NOTHING, InPipe, OutPipe, TransportError
from malstrom.transport._grpc_auth import (
    MD_JOB,
    JobAuth,
    Rejections,
    TlsConfig,
    is_refusal,
    make_channel,
    make_server,
    rpc_error,
)
from malstrom.transport._local_link import (
    InboundLink,
    LinkError,
    LocalListener,
    connect_link,
    frame_bytes,
    join_address,
    send_frame,
    split_address,
)

__all__ = ["FRAME_BYTES", "GrpcExchange", "decode_frame", "encode_frames"]

log = logging.getLogger(__name__)

#: Target size of one data frame (a frame holding one huge message may be larger).
FRAME_BYTES = 256 * 1024
#: Payloads above this travel as several chunks (gRPC refuses messages above 8 MiB).
CHUNK_BYTES = 4 * 1024 * 1024
#: Per pipe: pickled bytes in flight (sent, not yet consumed by the receiver's worker loop).
WINDOW_BYTES = 2 * 1024 * 1024
#: Per pipe: pickled bytes waiting for credit above which the pipe is saturated.
SEND_BUFFER_BYTES = 1024 * 1024
_PICKLE_PROTOCOL = 5
MD_ATTEMPT = "x-malstrom-attempt"
#: ``grpc`` keeps every pipe on gRPC, even between workers of one host (default ``auto``).
DATA_PLANE_ENV = "MALSTROM_DATA_PLANE"


def encode_frames(box: list[tuple[str, Any]], limit: int = FRAME_BYTES) -> list[bytes]:
    """Pickle ``box`` (a list of (operator, message)) into payloads of about ``limit`` bytes.

    Each message is pickled once, on its own; a payload is a pickled list of those pickles,
    in order (cut when the next one would pass ``limit``; one huge message travels alone).
    """
    return _payloads([pickle.dumps(pair, _PICKLE_PROTOCOL) for pair in box], limit)


def _payloads(blobs: Iterable[bytes], limit: int) -> list[bytes]:
    """Pickled messages, in order, packed into payloads of about ``limit`` bytes."""
    frames: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for blob in blobs:
        if cur and size + len(blob) > limit:
            frames.append(pickle.dumps(cur, _PICKLE_PROTOCOL))
            cur, size = [], 0
        cur.append(blob)
        size += len(blob)
    if cur:
        frames.append(pickle.dumps(cur, _PICKLE_PROTOCOL))
    return frames


def decode_frame(payload: bytes) -> list[tuple[str, Any]]:
    """The (operator, message) pairs of one payload made by :func:`encode_frames`."""
    return [pickle.loads(blob) for blob in pickle.loads(payload)]


class _StreamEnded(grpc.RpcError):
    """The receiver ended a data stream we did not end (treated like a broken stream)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the receiver ended the stream"


class _Sender:
    """One peer's outbound side: a frame queue and the thread that streams it."""

    def __init__(self, owner: GrpcExchange, peer: int, address: str) -> None:
        self.owner = owner
        self.peer = peer
        self.address = address  # as advertised: the gRPC address, maybe a link name
        grpc_address, link = split_address(address)
        self.grpc_address = grpc_address
        #: The peer's same-host link, while we may use it (None: gRPC).
        self.link = link if owner.local_links else None
        self._sock: Any = None  # the open same-host link
        #: The link while its thread waits for frames (the worker thread may write then).
        self._idle_link: socket.socket | None = None
        self._link_up = False
        self.frames: deque[pb.Frame] = deque()
        self.cond = threading.Condition()
        self.generation = 0  # the stream allowed to take frames (bumped per stream)
        self.next_seq = 0  # written by the worker thread (flush)
        self.sent_seq = 0  # written by the stream's request generator
        self.bytes_in = 0  # written by the worker thread
        self.bytes_out = 0  # written by the request generator
        self.frames_sent = 0
        self.error: str | None = None
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._call: Any = None
        self._channel = make_channel(grpc_address, owner.auth, owner.tls)
        self._stub = pb_grpc.DataPlaneStub(self._channel)
        self._thread = threading.Thread(
            target=self._run, name=f"malstrom-send-{owner.worker_id}->{peer}", daemon=True
        )
        self._thread.start()

    # ----- worker thread ---------------------------------------------------------------------
    def enqueue(self, payload: bytes, credits: list[pb.Credit] | None = None) -> None:
        """Queue one encoded payload (split into chunks if it is too large for one message),
        carrying ``credits`` (a payload may be empty when only credits travel)."""
        me = self.owner.worker_id
        n = len(payload)
        if n <= CHUNK_BYTES:
            frames = [pb.Frame(from_worker=me, seq=self.next_seq, payload=payload, credits=credits)]
        else:
            frames = [
                pb.Frame(
                    from_worker=me,
                    seq=self.next_seq + i,
                    payload=payload[start : start + CHUNK_BYTES],
                    more=start + CHUNK_BYTES < n,
                    credits=credits if i == 0 else None,
                )
                for i, start in enumerate(range(0, n, CHUNK_BYTES))
            ]
        self.next_seq += len(frames)
        self.bytes_in += n
        with self.cond:
            idle = self._idle_link
            if idle is not None and not self.frames:
                # The link is up and its thread waits for work: write what the socket takes
                # now from here, and wake the thread only for the rest (a wake-up per flush
                # costs more than the write: a thread hand-off and a GIL round trip).
                rest = self._write_now(idle, frames)
                if not rest:
                    return
                frames = rest
            self.frames.extend(frames)
            # Wake every generator: a stale one (of a broken stream) must not eat the wake-up.
            self.cond.notify_all()

    def _write_now(self, sock: socket.socket, frames: list[pb.Frame]) -> list[Any]:
        """Write ``frames`` to the idle link without blocking (``cond`` held); what did not
        fit, in order: a written frame's tail as bytes, then the frames not started."""
        for i, frame in enumerate(frames):
            blob = frame_bytes(frame)
            try:
                n = sock.send(blob, socket.MSG_DONTWAIT)
            except OSError:  # full (BlockingIOError), or broken: the link thread takes over
                return frames[i:]
            # Once a byte is out, the frame belongs to the stream: the rest must follow it.
            self.sent_seq = frame.seq + 1
            self.bytes_out += len(frame.payload)
            self.frames_sent += 1
            if n < len(blob):
                return [blob[n:], *frames[i + 1 :]]
        return []

    @property
    def where(self) -> str:
        """The peer's address, as error messages name it."""
        return self.grpc_address if self.link is None else f"{self.grpc_address} (same host)"

    @property
    def queued_bytes(self) -> int:
        """Bytes handed to this sender and not yet taken by the gRPC stream."""
        return self.bytes_in - self.bytes_out

    def stop(self) -> None:
        """End the stream (queued frames are dropped) and the thread."""
        self._stopping.set()
        with self.cond:
            self.generation += 1
            self.cond.notify_all()
        call = self._call
        if call is not None:
            call.cancel()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._channel.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # ----- sender thread ---------------------------------------------------------------------
    def _request_frames(self, generation: int) -> Iterator[Any]:
        # Every stream starts by announcing the seq of its first frame, so the receiver sees a
        # gap at once if frames were lost with a previous stream.
        yield pb.Frame(from_worker=self.owner.worker_id, seq=self.sent_seq)
        frames = self.frames
        cond = self.cond
        link = self._sock
        while True:
            with cond:
                # Only the current stream takes frames: gRPC may still call next() on the
                # generator of a stream that already failed, and that frame would be lost.
                while not frames and self.generation == generation:
                    self._idle_link = link
                    cond.wait()
                    self._idle_link = None
                if self.generation != generation:
                    return
                frame = frames.popleft()
            if type(frame) is bytes:  # the tail of a frame written by the worker thread
                yield frame
                continue
            self.sent_seq = frame.seq + 1
            self.bytes_out += len(frame.payload)
            self.frames_sent += 1
            yield frame

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        attempt = self.owner.attempt
        return () if attempt is None else ((MD_ATTEMPT, str(attempt)),)

    def _probe(self, timeout: float) -> None:
        """One empty Push: fails fast (with the reason) unless the peer is up and accepts us.

        Over a same-host link, the probe is the link's handshake (the open link is kept). The
        first time no listener answers to the link's name, the peer lives in another network
        namespace: this sender uses gRPC from then on.
        """
        if self.link is not None:
            sock = connect_link(self.link, self.owner.auth, self.owner.attempt, timeout)
            if sock is not None:
                self._sock = sock
                return
            if not self.connected.is_set():
                self.link = None  # not reachable from here: another host or namespace
            else:
                raise LinkError(grpc.StatusCode.UNAVAILABLE, "no listener (the peer is gone)")
        self._stub.Push(iter(()), timeout=timeout, wait_for_ready=False, metadata=self._metadata())

    def _stream_link(self, generation: int) -> None:
        """Send frames over the open same-host link until stopped (raises LinkError if the
        link breaks or the peer ends it)."""
        sock = self._sock
        try:
            for frame in self._request_frames(generation):
                send_frame(sock, frame)
        finally:
            self._sock = None
            sock.close()

    def _run(self) -> None:
        timeout = self.owner.connect_timeout
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = "no attempt yet"
        while not self._stopping.is_set():
            try:
                self._probe(max(0.1, min(5.0, deadline - time.monotonic())))
                if not self.connected.is_set():
                    log.info(
                        "pipes to worker %d: %s",
                        self.peer,
                        "same-host link" if self.link is not None else f"gRPC to {self.where}",
                    )
                self.connected.set()
                with self.cond:
                    self.generation += 1
                    generation = self.generation
                    self.cond.notify_all()  # stale generators see the new generation and end
                if self._sock is not None:
                    self._link_up = True
                    self._stream_link(generation)
                else:
                    self._call = self._stub.Push.future(
                        self._request_frames(generation), metadata=self._metadata()
                    )
                    if self._stopping.is_set():
                        self._call.cancel()
                    self._call.result()
                if self._stopping.is_set():
                    return  # the stream ended because we stopped it
                raise _StreamEnded()
            except grpc.FutureCancelledError:
                return
            except grpc.RpcError as e:
                if self._stopping.is_set():
                    return
                if is_refusal(e):
                    self.error = str(rpc_error(e, self.where, f"worker {self.peer}"))
                    log.error("%s", self.error)
                    return
                if e.code() == grpc.StatusCode.DATA_LOSS:
                    self.error = f"pipe to worker {self.peer} at {self.where}: {e.details()}"
                    log.error("%s", self.error)
                    return
                if self.connected.is_set() and (self._call is not None or self._link_up):
                    # The stream was up and broke: allow a full timeout to re-establish it.
                    deadline = time.monotonic() + timeout
                    self._call = None
                    self._link_up = False
                    delay = 0.05
                last = str(rpc_error(e, self.where))
            now = time.monotonic()
            if now >= deadline:
                what = "lost" if self.connected.is_set() else "cannot reach"
                self.error = (
                    f"{what} worker {self.peer} at {self.where}: no connection within "
                    f"{timeout:g} s ({last})"
                )
                log.error("%s", self.error)
                return
            self._stopping.wait(min(delay, deadline - now))
            delay = min(delay * 2, 1.0)


class _Inbound:
    """One peer process's inbound side: expected seq, partial chunks, bytes received and
    consumed, and the receiving end of each of its pipes (a new process with the same worker
    id gets a new one, so credits never mix across processes)."""

    __slots__ = ("consumed", "expected", "partial", "pipes", "received")

    def __init__(self) -> None:
        self.expected = 0
        self.partial: list[bytes] = []
        self.received = 0  # written by the servicer thread
        self.consumed = 0  # framing bytes around messages (worker thread, at decode)
        self.pipes: dict[str, InPipe] = {}  # worker thread only


class _DataPlane(pb_grpc.DataPlaneServicer):
    def __init__(self, owner: GrpcExchange) -> None:
        self.owner = owner

    def Push(self, request_iterator: Iterator[pb.Frame], context: Any) -> pb.Ack:
        owner = self.owner
        theirs: int | None = None
        for key, value in context.invocation_metadata() or ():
            if key == MD_ATTEMPT:
                theirs = int(value)
        if owner.attempt is not None and theirs != owner.attempt:
            owner._refuse_attempt(theirs, context)
        try:
            n = owner._serve_stream(theirs, request_iterator, context)
        except grpc.RpcError:
            n = 0  # the sender went away; it reports (or restarts) on its side
        return pb.Ack(frames=n)


def _nothing() -> None:
    pass


class GrpcExchange:
    """One worker's side of every worker-to-worker pipe, over gRPC (see module docs).

    ``send``/``recv``/``flush``/``saturated``/``hold`` are called from the worker loop only;
    gRPC threads do the networking. ``window_bytes`` is each pipe's credit window (what may be
    in flight to the receiver's worker loop); a pipe with more than ``send_buffer_bytes``
    waiting for credit is saturated.

    ``local``: also accept same-host links, and use them to reach peers that offer one
    (:mod:`malstrom.transport._local_link`). Default: yes, unless TLS is configured (a job
    that asks for TLS gets it on every pipe) or ``MALSTROM_DATA_PLANE=grpc`` is set.
    Peers find both in :attr:`data_address`, the address to advertise.
    """

    def __init__(
        self,
        worker_id: int,
        auth: JobAuth,
        tls: TlsConfig | None = None,
        listen: str = "127.0.0.1:0",
        *,
        local: bool | None = None,
        connect_timeout: float = 30.0,
        frame_bytes: int = FRAME_BYTES,
        window_bytes: int = WINDOW_BYTES,
        send_buffer_bytes: int = SEND_BUFFER_BYTES,
    ) -> None:
        if window_bytes < 1 or send_buffer_bytes < 0:
            raise ValueError(
                f"window_bytes must be >= 1 and send_buffer_bytes >= 0, got {window_bytes}, "
                f"{send_buffer_bytes}"
            )
        self.worker_id = worker_id
        self.auth = auth
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.frame_bytes = frame_bytes
        self.window_bytes = window_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.report_bytes = max(1, window_bytes // 2)
        #: Refusals of peers that presented another job, token or version (server side).
        self.rejections = Rejections()
        self.frames_received = 0
        self.credit_frames = 0  # frames we sent that carried credit reports
        self._out: dict[tuple[int, str], OutPipe] = {}
        self._saturated: frozenset[str] = NOTHING
        self._held: AbstractSet[str] = NOTHING
        self._due: set[int] = set()  # peers owed a credit report
        self._senders: dict[int, _Sender] = {}
        # Per (peer, operator): (message, its pickled size, the pipe it is consumed from).
        self._inbox: dict[tuple[int, str], deque[tuple[Any, int, InPipe | None]]] = {}
        self._inbound: dict[int, _Inbound] = {}
        # Frames received and not decoded yet, per peer, with their seq and the inbound state
        # of the process that sent them: the gRPC thread that receives a frame only queues it;
        # the worker thread unpickles it in ``recv`` (doing it in the receive thread made the
        # worker loop wait for the GIL).
        self._undecoded: dict[int, deque[tuple[int, bytes, _Inbound]]] = {}
        self._broken: dict[int, str] = {}  # peer -> why a frame of it could not be decoded
        # Same-host links the worker thread reads (by fd), and links admitted by their threads
        # since the last flush (the worker adds them to its poll set).
        self._links: dict[int, InboundLink] = {}
        self._new_links: list[InboundLink] = []
        self._links_lock = threading.Lock()
        self._poller = select.poll()
        self._errors: list[str] = []
        self._closed = False
        #: The job attempt this worker runs (None until told): streams must carry it.
        self.attempt: int | None = None
        #: Called (from gRPC threads) when a frame arrives: the worker loop sets it to wake
        #: itself from an idle sleep.
        self.wake: Callable[[], None] = _nothing
        self._server, self.address = make_server(auth, tls, listen, rejections=self.rejections)
        pb_grpc.add_DataPlaneServicer_to_server(_DataPlane(self), self._server)
        self._server.start()
        if local is None:
            local = tls is None and os.environ.get(DATA_PLANE_ENV, "auto") != "grpc"
        #: Whether this exchange uses (and offers) same-host links.
        self.local_links = local
        self._listener = (
            LocalListener(auth, self._admit_link, self._serve_link, str(worker_id))
            if local
            else None
        )

    @property
    def data_address(self) -> str:
        """What peers connect to: the gRPC address, plus the same-host link's name if any."""
        return self.advertise(self.address.rpartition(":")[0])

    def advertise(self, host: str) -> str:
        """:attr:`data_address` with ``host`` as the gRPC host (a worker behind NAT or bound to
        all interfaces advertises the address its peers can reach)."""
        name = self._listener.name if self._listener is not None else None
        return join_address(f"{host}:{self.address.rpartition(':')[2]}", name)

    def peer_links(self) -> dict[int, bool]:
        """Per peer: True if its pipes run over a same-host link (False: gRPC)."""
        return {
            peer: s.link is not None and s.connected.is_set() for peer, s in self._senders.items()
        }

    # ----- Exchange protocol ---------------------------------------------------------------
    def set_attempt(self, attempt: int) -> None:
        """Run job attempt ``attempt``: our streams carry it, peers' streams must (fencing).
        Call it before :meth:`connect`."""
        self.attempt = attempt

    def connect(self, peers: dict[int, str]) -> None:
        """Set the peers' addresses (``worker id -> host:port``); returns at once.

        Each peer gets a sender thread that connects (retrying with backoff, peers may not be
        up yet) for up to ``connect_timeout`` seconds; after that ``flush()`` raises
        TransportError. Calling again (rescale) keeps unchanged peers, adds new ones and
        stops the pipes to peers that are gone.
        """
        for peer, sender in list(self._senders.items()):
            if peers.get(peer) != sender.address:
                sender.stop()
                del self._senders[peer]
                for key in [k for k in self._out if k[0] == peer]:
                    del self._out[key]  # its queue goes with the stream; a new one starts afresh
        for peer, address in peers.items():
            if peer != self.worker_id and peer not in self._senders:
                self._senders[peer] = _Sender(self, peer, address)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until every peer accepted a stream (or failed); True if all are connected."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for sender in list(self._senders.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            while not sender.connected.wait(0.02 if left is None else min(0.02, left)):
                if sender.error is not None:
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        return True

    def send(self, peer: int, operator: str, msg: Any) -> None:
        """Queue ``msg`` for ``operator`` on ``peer`` (pickled now; it leaves at a ``flush``
        once its pipe has credit)."""
        if peer == self.worker_id:
            self._deliver_local(operator, msg)
            return
        pipe = self._out.get((peer, operator))
        if pipe is None:
            pipe = self._out[(peer, operator)] = OutPipe()
        blob = pickle.dumps((operator, msg), _PICKLE_PROTOCOL)
        pipe.push(blob, len(blob))

    def recv(self, peer: int, operator: str) -> Any | None:
        """The next message ``peer`` sent to ``operator`` here, or None. Never blocks.

        Returns None while ``operator`` is held. Raises TransportError if a frame from
        ``peer`` cannot be decoded.
        """
        if operator in self._held:
            return None
        q = self._inbox.get((peer, operator))
        if not q:
            if not self._undecoded.get(peer):
                return None
            q = self._decode_until(peer, operator)
            if not q:
                return None
        msg, size, pipe = q.popleft()
        if pipe is not None:
            pipe.consumed += size
            if pipe.consumed - pipe.reported >= self.report_bytes:
                self._due.add(peer)
        return msg

    def flush(self) -> None:
        """Frame what has credit and hand it, with due credit reports, to the peers' streams.
        Never blocks.

        Also takes in what the same-host links brought since the last flush.

        Raises TransportError if a peer is lost, refused us, or frames were lost in transit.
        """
        if self._links or self._new_links:
            self._read_links()
        if self._errors:
            raise TransportError(self._errors[0])
        senders = self._senders
        for sender in senders.values():
            if sender.error is not None:
                raise TransportError(sender.error)
        window = self.window_bytes
        bound = self.send_buffer_bytes
        ready: dict[int, list[bytes]] = {}
        saturated: list[str] = []
        for (peer, operator), pipe in self._out.items():
            if not pipe.queue:
                continue
            blobs = pipe.release(window)
            if blobs:
                got = ready.get(peer)
                if got is None:
                    ready[peer] = blobs
                else:
                    got.extend(blobs)
            if pipe.queued > bound:
                saturated.append(operator)
        self._saturated = frozenset(saturated) if saturated else NOTHING
        due = self._due
        waiting: list[int] = []
        for peer in ready.keys() | due if due else ready:
            target = senders.get(peer)
            if target is None:
                if peer not in ready:
                    # A peer that sent before we learnt its address (it joined a rescale and
                    # started first): its credit report leaves once we connect to it.
                    waiting.append(peer)
                    continue
                raise TransportError(
                    f"worker {self.worker_id} has no address for worker {peer} (connect first)"
                )
            credits = self._credit_report(peer) if peer in due else None
            leaving = ready.get(peer)
            if leaving:
                for payload in _payloads(leaving, self.frame_bytes):
                    target.enqueue(payload, credits)
                    credits = None
            elif credits:
                target.enqueue(b"", credits)
        due.clear()
        due.update(waiting)
        # Let the gRPC threads run: a worker loop that never sleeps would otherwise keep the
        # GIL for whole switch intervals (5 ms) and starve them (throughput falls ~20x).
        time.sleep(0)

    def saturated(self) -> frozenset[str]:
        """Operators with a pipe holding more than ``send_buffer_bytes`` without credit (as of
        the last flush)."""
        return self._saturated

    def hold(self, operators: AbstractSet[str]) -> None:
        """Until the next call, ``recv`` returns None on these operators' pipes."""
        self._held = operators

    def arm_wake(self) -> None:
        """The worker loop is about to sleep: take in what the same-host links brought, and
        have them call :attr:`wake` when more arrives (while the loop is busy they do not: it
        reads them at each flush). Reading here too keeps a loop that does not flush (not
        running yet) from being woken again and again by frames it leaves unread."""
        if self._links or self._new_links:
            self._read_links()
        for link in self._links.values():
            link.arm()

    def _credit_report(self, peer: int) -> list[pb.Credit] | None:
        """Every pipe from ``peer`` with unreported consumption, marked reported."""
        state = self._inbound.get(peer)
        if state is None:
            return None
        out = []
        for operator, pipe in state.pipes.items():
            if pipe.consumed > pipe.reported:
                pipe.reported = pipe.consumed
                out.append(pb.Credit(operator=operator, consumed=pipe.consumed))
        if out:
            self.credit_frames += 1
        return out or None

    def close(self) -> None:
        """Stop the sender threads and the server (queued data is dropped)."""
        if self._closed:
            return
        self._closed = True
        for sender in self._senders.values():
            sender.stop()
        with self._links_lock:
            links = [*self._links.values(), *self._new_links]
            self._links.clear()
            self._new_links.clear()
        for link in links:
            link.end()
        if self._listener is not None:
            self._listener.close()
        event = self._server.stop(0)
        for sender in self._senders.values():
            sender.join(2.0)
        event.wait(2.0)

    def __enter__(self) -> GrpcExchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- introspection ---------------------------------------------------------------------
    def queued_bytes(self, peer: int, operator: str | None = None) -> int:
        """Bytes waiting for credit on our pipes to ``peer`` (one operator's, or all)."""
        return sum(
            p.queued
            for (w, op), p in self._out.items()
            if w == peer and (operator is None or op == operator)
        )

    def in_flight_bytes(self, peer: int, operator: str) -> int:
        """Bytes sent on our pipe to ``peer`` that it has not reported consumed."""
        pipe = self._out.get((peer, operator))
        return 0 if pipe is None else pipe.in_flight

    def wire_bytes(self, peer: int) -> int:
        """Bytes framed for ``peer`` and not yet taken by its gRPC stream."""
        sender = self._senders.get(peer)
        return 0 if sender is None else sender.queued_bytes

    def inbound_bytes(self, peer: int) -> int:
        """Bytes received from ``peer`` and not yet taken by ``recv``."""
        state = self._inbound.get(peer)
        if state is None:
            return 0
        taken = sum(p.consumed for p in list(state.pipes.values()))
        return state.received - state.consumed - taken

    def frames_sent(self, peer: int) -> int:
        """Data frames handed to ``peer``'s stream so far."""
        sender = self._senders.get(peer)
        return 0 if sender is None else sender.frames_sent

    # ----- worker thread: decoding ----------------------------------------------------------
    def _decode_until(self, peer: int, operator: str) -> deque[tuple[Any, int, InPipe | None]]:
        """Decode ``peer``'s queued frames, in order, until ``operator`` has a message."""
        broken = self._broken.get(peer)
        if broken is not None:  # never skip past a frame that could not be decoded
            raise TransportError(broken)
        inbox = self._inbox
        key = (peer, operator)
        frames = self._undecoded[peer]
        while frames:
            seq, payload, state = frames.popleft()
            try:
                blobs = pickle.loads(payload)
                pairs = [(pickle.loads(blob), len(blob)) for blob in blobs]
            except Exception as e:  # never drop a frame silently: fail the pipe, loudly
                error = (
                    f"undecodable frame #{seq} from worker {peer} to worker {self.worker_id}: "
                    f"{type(e).__name__}: {e}"
                )
                log.error("%s", error)
                self._errors.append(error)
                self._broken[peer] = error
                raise TransportError(error) from e
            # Each message's pickled size is what its pipe's credit counted on the sender.
            pipes = state.pipes
            overhead = len(payload)
            for (operator_, msg), size in pairs:
                k = (peer, operator_)
                q = inbox.get(k)
                if q is None:
                    q = inbox[k] = deque()
                pipe = pipes.get(operator_)
                if pipe is None:
                    pipe = pipes[operator_] = InPipe()
                q.append((msg, size, pipe))
                overhead -= size
            state.consumed += overhead  # the framing around the messages
            q = inbox.get(key)
            if q:
                return q
        return inbox.get(key) or deque()

    # ----- server side (gRPC and link threads) ---------------------------------------------
    def _serve_stream(self, theirs: int | None, frames: Iterable[pb.Frame], context: Any) -> int:
        """Take one stream's frames (of a sender of attempt ``theirs``); how many it sent."""
        n = 0
        for frame in frames:
            self._take(theirs, frame, context)
            n += 1
        return n

    def _take(self, theirs: int | None, frame: pb.Frame, context: Any) -> None:
        mine = self.attempt
        if theirs != mine and (mine is not None or frame.payload):
            self._refuse_attempt(theirs, context)
        self._on_frame(frame, context)

    def _serve_link(self, theirs: int | None, sock: socket.socket, context: Any) -> None:
        """An admitted same-host link (its thread): hand it to the worker thread, and wake
        the worker loop whenever it sleeps and the link has something for it."""
        link = InboundLink(sock, context, theirs)
        with self._links_lock:
            if self._closed:
                return
            self._new_links.append(link)
        self.wake()  # the loop takes the link in at its next flush
        link.watch(lambda: self.wake())  # the loop sets ``wake`` after we start

    # ----- worker thread: same-host links ----------------------------------------------------
    def _read_links(self) -> None:
        """Take in every frame the same-host links brought (never blocks)."""
        if self._new_links:
            with self._links_lock:
                new, self._new_links = self._new_links, []
            for link in new:
                self._links[link.fileno()] = link
                self._poller.register(link.fileno(), select.POLLIN)
        links = self._links
        for fd, _ in self._poller.poll(0):
            if fd not in links:
                continue
            link = links[fd]
            frames: list[pb.Frame] = []
            try:
                try:
                    open_ = link.read(frames)
                finally:
                    for frame in frames:  # every whole frame before a fault counts
                        self._take(link.attempt, frame, link.context)
            except LinkError as e:
                # The sender was told why (``abort``), or the link broke mid-frame: it
                # reconnects or reports on its side, as with a broken gRPC stream.
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    log.debug("link closed: %s", e.details())
                open_ = False
            except OSError as e:
                log.debug("link closed: %s", e)
                open_ = False
            if not open_:
                del links[fd]
                self._poller.unregister(fd)
                link.end()

    def _admit_link(self, md: dict[str, str], theirs: int | None, context: Any) -> None:
        """Refuse a same-host link (``context.abort``) for what gRPC's interceptor and the
        start of ``Push`` check: the job's identity, then the attempt."""
        refusal = self.auth.check(md)
        if refusal is not None:
            code, why = refusal
            self.rejections.refuse(
                f"refused a same-host link (job {md.get(MD_JOB)!r}): {why}", "unix"
            )
            context.abort(code, why)
        if self.attempt is not None and theirs != self.attempt:
            self._refuse_attempt(theirs, context)

    def _refuse_attempt(self, theirs: int | None, context: Any) -> None:
        text = (
            f"worker {self.worker_id} runs job attempt {self.attempt} and refuses a stream of "
            f"attempt {theirs}: a worker of another attempt (stale attempt)"
        )
        self.rejections.add(text)
        log.warning("%s (from %s)", text, context.peer())
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, text)

    def _deliver_local(self, operator: str, msg: Any) -> None:
        key = (self.worker_id, operator)
        q = self._inbox.get(key)
        if q is None:
            q = self._inbox.setdefault(key, deque())
        q.append((msg, 0, None))

    def _on_credits(self, peer: int, credits: Iterable[pb.Credit]) -> None:
        out = self._out
        for c in credits:
            pipe = out.get((peer, c.operator))
            if pipe is not None:
                pipe.grant(c.consumed)

    def _on_frame(self, frame: pb.Frame, context: Any) -> None:
        peer = frame.from_worker
        state = self._inbound.get(peer)
        if state is None:
            state = self._inbound.setdefault(peer, _Inbound())
        payload = frame.payload
        credits = frame.credits
        announce = not payload and not credits  # stream start: announces the next seq only
        if announce and frame.seq == 0 and state.expected:
            # A stream announcing seq 0 after frames were received: a new process has this
            # worker id (a rescale reused the id of a removed worker). Its pipes start afresh.
            state = self._inbound[peer] = _Inbound()
        if frame.seq != state.expected:
            error = (
                f"frames from worker {peer} to worker {self.worker_id} were lost or reordered: "
                f"expected #{state.expected}, got #{frame.seq}"
            )
            log.error("%s", error)
            self._errors.append(error)
            context.abort(grpc.StatusCode.DATA_LOSS, error)
        if announce:
            return
        state.expected += 1
        self.frames_received += 1
        if credits:
            self._on_credits(peer, credits)
            if not payload:
                self.wake()  # credit may release a saturated pipe
                return
        if frame.more:
            state.partial.append(payload)
            return
        if state.partial:
            state.partial.append(payload)
            payload = b"".join(state.partial)
            state.partial = []
        frames = self._undecoded.get(peer)
        if frames is None:
            frames = self._undecoded.setdefault(peer, deque())
        frames.append((frame.seq, payload, state))
        # Never wait here: what a peer may send is bounded by the credit we granted per pipe.
        state.received += len(payload)
        self.wake()
