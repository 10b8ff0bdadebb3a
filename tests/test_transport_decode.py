"""Data plane: frames are decoded by the worker thread (in ``recv``), in order, and a frame
that cannot be decoded fails the pipe loudly instead of being dropped."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from malstrom.engine.batch import Batch
from malstrom.engine.messages import Epoch
from malstrom.transport import malstrom_pb2 as pb
from malstrom.transport import malstrom_pb2_grpc as pb_grpc
from malstrom.transport._exchange import TransportError
from malstrom.transport._grpc_auth import JobAuth, make_channel, new_token
from malstrom.transport._grpc_data import GrpcExchange, decode_frame, encode_frames

pytestmark = pytest.mark.timeout(20)

AUTH = JobAuth("job-decode", new_token())


def push(x: GrpcExchange, payloads: list[bytes], sender: int = 7) -> None:
    """Push raw frames to ``x`` as worker ``sender`` would (seq 0, 1, ...)."""
    channel = make_channel(x.address, AUTH)
    try:
        stub = pb_grpc.DataPlaneStub(channel)
        frames = [pb.Frame(from_worker=sender, seq=i, payload=p) for i, p in enumerate(payloads)]
        stub.Push(iter(frames), timeout=3)
    finally:
        channel.close()


def wait_frames(x: GrpcExchange, n: int) -> None:
    deadline = time.monotonic() + 3
    while x.frames_received < n:
        assert time.monotonic() < deadline, "frames did not arrive"
        time.sleep(0.005)


def test_frames_wait_undecoded_until_recv_and_keep_fifo_per_operator() -> None:
    with GrpcExchange(1, AUTH) as x1:
        batch = Batch(["a", "b"], [1, 2], [10, 11])
        push(
            x1,
            [
                encode_frames([("op", "m0"), ("other", Epoch(3)), ("op", batch)])[0],
                encode_frames([("other", "o1"), ("op", "m2")])[0],
            ],
        )
        wait_frames(x1, 2)
        assert x1.inbound_bytes(7) > 0
        # Reading one operator decodes only as far as needed; the other's messages wait.
        assert x1.recv(7, "op") == "m0"
        got = x1.recv(7, "op")
        assert type(got) is Batch and (got.keys, got.values, got.timestamps) == (
            ["a", "b"],
            [1, 2],
            [10, 11],
        )
        assert x1.recv(7, "op") == "m2"
        assert x1.recv(7, "op") is None
        e = x1.recv(7, "other")
        assert type(e) is Epoch and e.ts == 3
        assert x1.recv(7, "other") == "o1"
        assert x1.recv(7, "other") is None
        # Every byte received was accounted as consumed once all messages were taken.
        assert x1.inbound_bytes(7) == 0


def test_undecodable_frame_fails_recv_and_flush() -> None:
    with GrpcExchange(1, AUTH) as x1:
        push(
            x1,
            [
                encode_frames([("op", "ok")])[0],
                b"\x80\x05not a pickle",
                encode_frames([("op", "after")])[0],
            ],
        )
        wait_frames(x1, 3)
        assert x1.recv(7, "op") == "ok"
        with pytest.raises(TransportError, match=r"undecodable frame #1 from worker 7"):
            x1.recv(7, "op")
        with pytest.raises(TransportError, match="undecodable frame"):
            x1.flush()
        # The pipe stays failed: nothing after the bad frame is delivered as if it were next.
        with pytest.raises(TransportError, match="undecodable frame #1"):
            x1.recv(7, "op")


def test_encode_decode_round_trip_cuts_frames() -> None:
    box: list[tuple[str, Any]] = [("op", bytes(40_000)) for _ in range(10)]
    box.append(("op", Batch(["k"], ["v"], [1])))
    payloads = encode_frames(box, limit=64 * 1024)
    assert len(payloads) > 1
    pairs = [p for payload in payloads for p in decode_frame(payload)]
    assert [op for op, _ in pairs] == ["op"] * 11
    assert all(m == bytes(40_000) for _, m in pairs[:10])
    last = pairs[-1][1]
    assert (last.keys, last.values, last.timestamps) == (["k"], ["v"], [1])


def test_a_closed_stream_is_not_an_error_for_queued_frames() -> None:
    with GrpcExchange(1, AUTH) as x1:
        push(x1, [encode_frames([("op", i)])[0] for i in range(5)])
        wait_frames(x1, 5)
        assert [x1.recv(7, "op") for _ in range(6)] == [0, 1, 2, 3, 4, None]
        x1.flush()  # no error: the sender ended its stream normally


def test_stub_push_without_auth_is_refused() -> None:
    with GrpcExchange(1, AUTH) as x1:
        channel = make_channel(x1.address, JobAuth("job-decode", "wrong-token"))
        try:
            stub = pb_grpc.DataPlaneStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.Push(iter([pb.Frame(from_worker=7, seq=0, payload=b"x")]), timeout=3)
        finally:
            channel.close()
        assert x1.recv(7, "op") is None
