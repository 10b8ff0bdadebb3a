"""Same-host links: the worker thread's non-blocking frame reader (``InboundLink.read``)
returns every frame whole and in order, however the bytes are cut on the way, and a link
that ends inside a frame or announces a frame too large is an error, never a silent loss."""

from __future__ import annotations

import itertools
import select
import socket
import threading
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from malstrom.transport import malstrom_pb2 as pb
from malstrom.transport._local_link import InboundLink, LinkError, frame_bytes

pytestmark = pytest.mark.timeout(60)

#: The reader's buffer starts at 1 MiB: frames above it make it grow.
BIG = 1024 * 1024 + 12345


def frames_of(sizes: list[int]) -> list[pb.Frame]:
    return [
        pb.Frame(from_worker=3, seq=i, payload=bytes([i % 251]) * n) for i, n in enumerate(sizes)
    ]


def write_in_pieces(sock: socket.socket, data: bytes, cuts: list[float]) -> threading.Thread:
    """Send ``data`` cut at the given fractions of its length (one ``sendall`` per piece),
    then hang up."""
    points = sorted({0, len(data), *(int(c * len(data)) for c in cuts)})

    def run() -> None:
        with sock:
            for a, b in itertools.pairwise(points):
                sock.sendall(data[a:b])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def read_all(link: InboundLink) -> tuple[list[pb.Frame], BaseException | None]:
    """What the worker thread would take in: read whenever readable, until the link ends."""
    out: list[pb.Frame] = []
    poller = select.poll()
    poller.register(link.sock, select.POLLIN)
    while True:
        poller.poll(5000)
        try:
            if not link.read(out):
                return out, None
        except (LinkError, OSError) as e:
            return out, e


def pair() -> tuple[socket.socket, InboundLink]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, InboundLink(b, context=None, attempt=None)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 3000), st.integers(60_000, 300_000), st.just(BIG)),
        min_size=1,
        max_size=12,
    ),
    cuts=st.lists(st.floats(0, 1), max_size=24),
)
def test_frames_arrive_whole_and_in_order_however_the_bytes_are_cut(
    sizes: list[int], cuts: list[float]
) -> None:
    frames = frames_of(sizes)
    writer, link = pair()
    try:
        t = write_in_pieces(writer, b"".join(frame_bytes(f) for f in frames), cuts)
        got, error = read_all(link)
        t.join(10)
        assert error is None
        assert [(f.seq, f.payload) for f in got] == [(f.seq, f.payload) for f in frames]
    finally:
        link.sock.close()


def test_a_link_that_ends_inside_a_frame_is_an_error_after_the_whole_frames() -> None:
    frames = frames_of([10, 20_000, 30])
    data = b"".join(frame_bytes(f) for f in frames)
    writer, link = pair()
    try:
        t = write_in_pieces(writer, data[:-7], [0.3, 0.5])  # the last frame loses its tail
        got, error = read_all(link)
        t.join(10)
        assert isinstance(error, LinkError) and error.code() == grpc.StatusCode.UNAVAILABLE
        assert "inside a frame" in error.details()
        assert [f.seq for f in got] == [0, 1]
    finally:
        link.sock.close()


def test_a_frame_announced_too_large_is_refused() -> None:
    writer, link = pair()
    try:
        head = (1 << 30).to_bytes(4, "little")  # 1 GiB: above any frame a peer may send
        t = write_in_pieces(writer, frame_bytes(frames_of([5])[0]) + head + b"x" * 100, [0.5])
        got, error = read_all(link)
        t.join(10)
        assert isinstance(error, LinkError) and error.code() == grpc.StatusCode.DATA_LOSS
        assert [f.seq for f in got] == [0]
    finally:
        link.sock.close()


def test_end_wakes_the_watch_and_hangs_up() -> None:
    writer, link = pair()
    woken: list[Any] = []
    t = threading.Thread(target=link.watch, args=(lambda: woken.append(1),), daemon=True)
    t.start()
    link.arm()
    writer.sendall(frame_bytes(frames_of([1])[0]))
    for _ in range(200):
        if woken:
            break
        threading.Event().wait(0.01)
    assert woken == [1]  # readable while armed: one wake-up
    link.end()
    t.join(5)
    assert not t.is_alive()
    assert writer.recv(10) == b""  # the sender sees the link closed
    writer.close()
    link.sock.close()
