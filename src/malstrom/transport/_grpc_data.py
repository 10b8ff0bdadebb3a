"""Worker <-> worker data pipes over gRPC: the :class:`Exchange` of multi-process runtimes.

Per ordered pair of workers there is one client-streaming ``DataPlane.Push`` RPC, fed by one
sender thread. Everything the worker loop sends to a peer during one turn is pickled at
:meth:`GrpcExchange.flush` into frames of about 256 KiB (Python gRPC costs ~100 us per
message whatever its size, so records never travel one per message, and a busy turn's output
usually leaves as one frame). Frames carry a per-pair sequence number: the receiver checks it,
so FIFO per (peer, operator) holds across frames and reconnections, and a lost frame is an
error, never silent (DESIGN invariant 1). The gRPC thread that receives a frame only queues
its bytes; the worker thread unpickles it when ``recv`` reaches it, so the receive threads
hardly ever hold the GIL the worker loop needs.

Fencing: every stream names the job attempt of its sender in its call metadata; a worker
refuses (``FAILED_PRECONDITION``) streams of any attempt but its own, and data frames that
arrive before it knows its attempt, so a worker of a failed attempt never delivers a record
to a worker of a later one (see ``malstrom.coordinator._messages``).

Backpressure (invariant 3): the sender's per-peer queue reports ``backlogged()`` above its
byte bound, and the worker stops its sources; the receiver stops reading a peer's stream
while more than its inbound bound is waiting for ``recv``, so gRPC flow control pushes back
on the sender. ``flush`` itself never blocks (two workers blocked on each other's buffers
would deadlock): the bounds hold as long as producers honour ``backlogged()``.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import deque
from collections.abc import Iterator
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
    rpc_error,
)

__all__ = ["FRAME_BYTES", "GrpcExchange", "decode_frame", "encode_frames"]

log = logging.getLogger(__name__)

#: Target size of one data frame (a frame holding one huge message may be larger).
FRAME_BYTES = 256 * 1024
#: Payloads above this travel as several chunks (gRPC refuses messages above 8 MiB).
CHUNK_BYTES = 4 * 1024 * 1024
_PICKLE_PROTOCOL = 5
MD_ATTEMPT = "x-malstrom-attempt"


def encode_frames(box: list[tuple[str, Any]], limit: int = FRAME_BYTES) -> list[bytes]:
    """Pickle ``box`` (a list of (operator, message)) into payloads of about ``limit`` bytes.

    Each message is pickled once, on its own; a payload is a pickled list of those pickles,
    in order (cut when the next one would pass ``limit``; one huge message travels alone).
    """
    frames: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for pair in box:
        blob = pickle.dumps(pair, _PICKLE_PROTOCOL)
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
        self.address = address
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
        self._channel = make_channel(address, owner.auth, owner.tls)
        self._stub = pb_grpc.DataPlaneStub(self._channel)
        self._thread = threading.Thread(
            target=self._run, name=f"malstrom-send-{owner.worker_id}->{peer}", daemon=True
        )
        self._thread.start()

    # ----- worker thread ---------------------------------------------------------------------
    def enqueue(self, payload: bytes) -> None:
        """Queue one encoded payload (split into chunks if it is too large for one message)."""
        me = self.owner.worker_id
        n = len(payload)
        if n <= CHUNK_BYTES:
            frames = [pb.Frame(from_worker=me, seq=self.next_seq, payload=payload)]
        else:
            frames = [
                pb.Frame(
                    from_worker=me,
                    seq=self.next_seq + i,
                    payload=payload[start : start + CHUNK_BYTES],
                    more=start + CHUNK_BYTES < n,
                )
                for i, start in enumerate(range(0, n, CHUNK_BYTES))
            ]
        self.next_seq += len(frames)
        self.bytes_in += n
        with self.cond:
            self.frames.extend(frames)
            # Wake every generator: a stale one (of a broken stream) must not eat the wake-up.
            self.cond.notify_all()

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
        self._channel.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # ----- sender thread ---------------------------------------------------------------------
    def _request_frames(self, generation: int) -> Iterator[pb.Frame]:
        # Every stream starts by announcing the seq of its first frame, so the receiver sees a
        # gap at once if frames were lost with a previous stream.
        yield pb.Frame(from_worker=self.owner.worker_id, seq=self.sent_seq)
        frames = self.frames
        cond = self.cond
        while True:
            with cond:
                # Only the current stream takes frames: gRPC may still call next() on the
                # generator of a stream that already failed, and that frame would be lost.
                while not frames and self.generation == generation:
                    cond.wait()
                if self.generation != generation:
                    return
                frame = frames.popleft()
            self.sent_seq = frame.seq + 1
            self.bytes_out += len(frame.payload)
            self.frames_sent += 1
            yield frame

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        attempt = self.owner.attempt
        return () if attempt is None else ((MD_ATTEMPT, str(attempt)),)

    def _probe(self, timeout: float) -> None:
        """One empty Push: fails fast (with the reason) unless the peer is up and accepts us."""
        self._stub.Push(iter(()), timeout=timeout, wait_for_ready=False, metadata=self._metadata())

    def _run(self) -> None:
        timeout = self.owner.connect_timeout
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = "no attempt yet"
        while not self._stopping.is_set():
            try:
                self._probe(max(0.1, min(5.0, deadline - time.monotonic())))
                self.connected.set()
                with self.cond:
                    self.generation += 1
                    generation = self.generation
                    self.cond.notify_all()  # stale generators see the new generation and end
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
                    self.error = str(rpc_error(e, self.address, f"worker {self.peer}"))
                    log.error("%s", self.error)
                    return
                if e.code() == grpc.StatusCode.DATA_LOSS:
                    self.error = f"pipe to worker {self.peer} at {self.address}: {e.details()}"
                    log.error("%s", self.error)
                    return
                if self.connected.is_set() and self._call is not None:
                    # The stream was up and broke: allow a full timeout to re-establish it.
                    deadline = time.monotonic() + timeout
                    self._call = None
                    delay = 0.05
                last = str(rpc_error(e, self.address))
            now = time.monotonic()
            if now >= deadline:
                what = "lost" if self.connected.is_set() else "cannot reach"
                self.error = (
                    f"{what} worker {self.peer} at {self.address}: no connection within "
                    f"{timeout:g} s ({last})"
                )
                log.error("%s", self.error)
                return
            self._stopping.wait(min(delay, deadline - now))
            delay = min(delay * 2, 1.0)


class _Inbound:
    """One peer's inbound side: expected seq, partial chunks, and the bytes awaiting recv."""

    __slots__ = ("cond", "consumed", "expected", "partial", "received", "waiting")

    def __init__(self) -> None:
        self.expected = 0
        self.partial: list[bytes] = []
        self.received = 0  # written by the servicer thread
        self.consumed = 0  # written by the worker thread (recv)
        self.waiting = False
        self.cond = threading.Condition()


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
        n = 0
        try:
            for frame in request_iterator:
                mine = owner.attempt
                if theirs != mine and (mine is not None or frame.payload):
                    owner._refuse_attempt(theirs, context)
                owner._on_frame(frame, context)
                n += 1
        except grpc.RpcError:
            pass  # the sender went away; it reports (or restarts) on its side
        return pb.Ack(frames=n)


class GrpcExchange:
    """One worker's side of every worker-to-worker pipe, over gRPC (see module docs).

    ``send``/``recv``/``flush``/``backlogged`` are called from the worker loop only; gRPC
    threads do the networking. ``send_buffer_bytes`` bounds what waits for one peer before
    ``backlogged()`` turns True; ``recv_buffer_bytes`` bounds what one peer may have waiting
    here for ``recv`` before we stop reading its stream.
    """

    def __init__(
        self,
        worker_id: int,
        auth: JobAuth,
        tls: TlsConfig | None = None,
        listen: str = "127.0.0.1:0",
        *,
        connect_timeout: float = 30.0,
        frame_bytes: int = FRAME_BYTES,
        send_buffer_bytes: int = 4 * 1024 * 1024,
        recv_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.worker_id = worker_id
        self.auth = auth
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.frame_bytes = frame_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.recv_buffer_bytes = recv_buffer_bytes
        #: Refusals of peers that presented another job, token or version (server side).
        self.rejections = Rejections()
        self.frames_received = 0
        self._outbox: dict[int, list[tuple[str, Any]]] = {}
        self._senders: dict[int, _Sender] = {}
        self._inbox: dict[tuple[int, str], deque[tuple[Any, int]]] = {}
        self._inbound: dict[int, _Inbound] = {}
        # Frames received and not decoded yet, per peer, with their seq: the gRPC thread that
        # receives a frame only queues it; the worker thread unpickles it in ``recv`` (doing
        # it in the receive thread made the worker loop wait for the GIL).
        self._undecoded: dict[int, deque[tuple[int, bytes]]] = {}
        self._broken: dict[int, str] = {}  # peer -> why a frame of it could not be decoded
        self._errors: list[str] = []
        self._closed = False
        #: The job attempt this worker runs (None until told): streams must carry it.
        self.attempt: int | None = None
        self._server, self.address = make_server(auth, tls, listen, rejections=self.rejections)
        pb_grpc.add_DataPlaneServicer_to_server(_DataPlane(self), self._server)
        self._server.start()

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
        """Queue ``msg`` for ``operator`` on ``peer`` (it leaves at the next ``flush``)."""
        if peer == self.worker_id:
            self._deliver_local(operator, msg)
            return
        box = self._outbox.get(peer)
        if box is None:
            box = self._outbox[peer] = []
        box.append((operator, msg))

    def recv(self, peer: int, operator: str) -> Any | None:
        """The next message ``peer`` sent to ``operator`` here, or None. Never blocks.

        Raises TransportError if a frame from ``peer`` cannot be decoded.
        """
        q = self._inbox.get((peer, operator))
        if not q:
            if not self._undecoded.get(peer):
                return None
            q = self._decode_until(peer, operator)
            if not q:
                return None
        msg, size = q.popleft()
        if size:
            state = self._inbound[peer]
            state.consumed += size
            if state.waiting and state.received - state.consumed <= self.recv_buffer_bytes:
                with state.cond:
                    state.cond.notify()
        return msg

    def flush(self) -> None:
        """Frame and hand every queued message to its peer's stream. Never blocks.

        Raises TransportError if a peer is lost, refused us, or frames were lost in transit.
        """
        if self._errors:
            raise TransportError(self._errors[0])
        senders = self._senders
        for sender in senders.values():
            if sender.error is not None:
                raise TransportError(sender.error)
        outbox = self._outbox
        for peer, box in outbox.items():
            if not box:
                continue
            target = senders.get(peer)
            if target is None:
                raise TransportError(
                    f"worker {self.worker_id} has no address for worker {peer} (connect first)"
                )
            outbox[peer] = []
            for payload in encode_frames(box, self.frame_bytes):
                target.enqueue(payload)
        # Let the gRPC threads run: a worker loop that never sleeps would otherwise keep the
        # GIL for whole switch intervals (5 ms) and starve them (throughput falls ~20x).
        time.sleep(0)

    def backlogged(self) -> bool:
        """True while any peer has more than ``send_buffer_bytes`` waiting to be sent."""
        bound = self.send_buffer_bytes
        return any(s.bytes_in - s.bytes_out > bound for s in self._senders.values())

    def close(self) -> None:
        """Stop the sender threads and the server (queued data is dropped)."""
        if self._closed:
            return
        self._closed = True
        for sender in self._senders.values():
            sender.stop()
        for state in list(self._inbound.values()):
            with state.cond:
                state.cond.notify_all()
        event = self._server.stop(0)
        for sender in self._senders.values():
            sender.join(2.0)
        event.wait(2.0)

    def __enter__(self) -> GrpcExchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- introspection ---------------------------------------------------------------------
    def queued_bytes(self, peer: int) -> int:
        """Bytes waiting in our queue for ``peer`` (not yet taken by its gRPC stream)."""
        sender = self._senders.get(peer)
        return 0 if sender is None else sender.queued_bytes

    def inbound_bytes(self, peer: int) -> int:
        """Bytes received from ``peer`` and not yet taken by ``recv``."""
        state = self._inbound.get(peer)
        return 0 if state is None else state.received - state.consumed

    def frames_sent(self, peer: int) -> int:
        """Data frames handed to ``peer``'s stream so far."""
        sender = self._senders.get(peer)
        return 0 if sender is None else sender.frames_sent

    # ----- worker thread: decoding ----------------------------------------------------------
    def _decode_until(self, peer: int, operator: str) -> deque[tuple[Any, int]]:
        """Decode ``peer``'s queued frames, in order, until ``operator`` has a message."""
        broken = self._broken.get(peer)
        if broken is not None:  # never skip past a frame that could not be decoded
            raise TransportError(broken)
        inbox = self._inbox
        key = (peer, operator)
        frames = self._undecoded[peer]
        while frames:
            seq, payload = frames.popleft()
            try:
                pairs = decode_frame(payload)
            except Exception as e:  # never drop a frame silently: fail the pipe, loudly
                error = (
                    f"undecodable frame #{seq} from worker {peer} to worker {self.worker_id}: "
                    f"{type(e).__name__}: {e}"
                )
                log.error("%s", error)
                self._errors.append(error)
                self._broken[peer] = error
                raise TransportError(error) from e
            # What each message holds of the frame's bytes until recv takes it (backpressure).
            n = len(pairs)
            size = len(payload) // n if n else 0
            extra = len(payload) - size * n  # the remainder goes to the first message
            for operator_, msg in pairs:
                k = (peer, operator_)
                q = inbox.get(k)
                if q is None:
                    q = inbox[k] = deque()
                q.append((msg, size + extra))
                extra = 0
            if not n:
                self._inbound[peer].consumed += len(payload)
            q = inbox.get(key)
            if q:
                return q
        return inbox.get(key) or deque()

    # ----- server side (gRPC threads) ------------------------------------------------------
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
        q.append((msg, 0))

    def _on_frame(self, frame: pb.Frame, context: Any) -> None:
        peer = frame.from_worker
        state = self._inbound.get(peer)
        if state is None:
            state = self._inbound.setdefault(peer, _Inbound())
        payload = frame.payload
        if not payload and frame.seq == 0 and state.expected:
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
        if not payload:
            return  # stream start: announces the next seq only
        state.expected += 1
        self.frames_received += 1
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
        frames.append((frame.seq, payload))
        state.received += len(payload)
        # Backpressure: do not read this peer's next frame while too much awaits recv().
        bound = self.recv_buffer_bytes
        if state.received - state.consumed > bound:
            with state.cond:
                state.waiting = True
                while (
                    state.received - state.consumed > bound
                    and not self._closed
                    and context.is_active()
                ):
                    state.cond.wait(0.05)
                state.waiting = False
