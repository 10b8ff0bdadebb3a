"""gRPC transport: data pipes, control links, admin calls, authentication and TLS.

Everything runs real gRPC on 127.0.0.1 inside this process, with short timeouts.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from malstrom.transport import malstrom_pb2 as pb
from malstrom.transport import malstrom_pb2_grpc as pb_grpc
from malstrom.transport._exchange import TransportError
from malstrom.transport._grpc_auth import (
    PROTOCOL_VERSION,
    JobAuth,
    TlsConfig,
    make_channel,
    new_token,
)
from malstrom.transport._grpc_codegen import (
    GENERATED,
    PROTO,
    generate,
    normalize_versions,
    stamp_floors,
)
from malstrom.transport._grpc_control import (
    AdminClient,
    AdminError,
    ControlServer,
    connect_control,
)
from malstrom.transport._grpc_data import GrpcExchange, encode_frames
from malstrom.transport._local_link import (
    LocalListener,
    connect_link,
    join_address,
    local_name,
    split_address,
)

pytestmark = pytest.mark.timeout(20)

AUTH = JobAuth("job-a", new_token())


def wait_until(cond: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(params=["link", "grpc"])
def exchanges(request: Any) -> Iterator[Callable[..., list[GrpcExchange]]]:
    """Exchanges connected to each other, over same-host links or (``grpc``) gRPC only: every
    data-plane test runs on both carriers."""
    made: list[GrpcExchange] = []

    def make(n: int, auth: JobAuth = AUTH, **kw: Any) -> list[GrpcExchange]:
        links = request.param == "link" and kw.get("tls") is None
        xs = [GrpcExchange(i, auth, local=links, **kw) for i in range(n)]
        made.extend(xs)
        addresses = {x.worker_id: x.data_address for x in xs}
        for x in xs:
            x.connect(addresses)
        for x in xs:
            assert x.wait_connected(3.0)
            assert set(x.peer_links().values()) == {links}
        return xs

    yield make
    for x in made:
        x.close()


def pump(
    receiver: GrpcExchange,
    senders: list[GrpcExchange],
    keys: list[tuple[int, str]],
    want: int,
    timeout: float = 4.0,
) -> dict[tuple[int, str], list[Any]]:
    got: dict[tuple[int, str], list[Any]] = {k: [] for k in keys}
    n = 0
    deadline = time.monotonic() + timeout
    while n < want:
        for (peer, op), out in got.items():
            while (m := receiver.recv(peer, op)) is not None:
                out.append(m)
                n += 1
        receiver.flush()  # credit reports leave with the receiver's flush
        for s in senders:
            s.flush()
        if time.monotonic() > deadline:
            raise AssertionError(f"received {n} of {want} messages")
    return got


# ----- generated code ---------------------------------------------------------------------------
def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    for fresh in generate(tmp_path):
        committed = PROTO.with_name(fresh.name).read_text()
        new = fresh.read_text()
        if new != committed:  # tolerate another grpcio-tools version, nothing else
            assert normalize_versions(new) == normalize_versions(committed), (
                f"{fresh.name} is stale: run python -m malstrom.transport._grpc_codegen"
            )
        # The committed modules ask for the oldest grpcio/protobuf they run on, not for the
        # generator's own version (which would exclude PyFlink's and others' pins).
        assert stamp_floors(committed) == committed, f"{fresh.name}: run the codegen module"
    assert {p.name for p in tmp_path.rglob("*_pb2*")} == set(GENERATED)


# ----- data plane ---------------------------------------------------------------------------
def test_fifo_per_peer_and_operator_in_few_frames(exchanges: Any) -> None:
    x0, x1, x2 = exchanges(3)
    ops = [f"op{i}" for i in range(10)]
    n = 100_000
    for i in range(n):
        x0.send(1, ops[i % 10], i)
        x2.send(1, ops[(i * 7) % 10], -i)
        if i % 5000 == 0:
            x0.flush()
            x2.flush()
    x0.send(0, "self", "loopback")
    keys = [(p, op) for p in (0, 2) for op in ops]
    got = pump(x1, [x0, x2], keys, 2 * n)
    for k, op in enumerate(ops):
        assert got[(0, op)] == list(range(k, n, 10))
        assert got[(2, op)] == [-i for i in range(n) if (i * 7) % 10 == k]
    assert x0.recv(0, "self") == "loopback"
    # 100k small messages travel in a few dozen ~64 KiB frames, not one message each.
    assert 0 < x0.frames_sent(1) < 100
    assert x1.frames_received < 200


def test_large_messages_and_chunking(exchanges: Any) -> None:
    x0, x1 = exchanges(2)
    huge = bytes(range(256)) * (20 * 1024 * 1024 // 256)  # 20 MiB: above gRPC's 8 MiB limit
    big = [bytes([i]) * (1024 * 1024) for i in range(5)]
    x0.send(1, "a", "first")
    x0.send(1, "b", big[0])
    x0.send(1, "a", huge)
    for b in big[1:]:
        x0.send(1, "b", b)
    x0.send(1, "a", "last")
    x0.flush()
    got = pump(x1, [x0], [(0, "a"), (0, "b")], 8)
    assert got[(0, "a")][0] == "first" and got[(0, "a")][2] == "last"
    assert got[(0, "a")][1] == huge
    assert got[(0, "b")] == big


def kib(i: int) -> tuple[int, bytes]:
    """A 1 KiB message numbered ``i`` (distinct bytes: pickle cannot share them)."""
    return (i, i.to_bytes(4, "big") * 256)


def test_credits_bound_each_pipe_on_both_sides(exchanges: Any) -> None:
    window = bound = 64 * 1024
    x0, x1 = exchanges(2, window_bytes=window, send_buffer_bytes=bound)
    sent = 0
    deadline = time.monotonic() + 1.5
    # A source that honours saturated(): 64 KiB per loop turn while the pipe is not saturated.
    while time.monotonic() < deadline:
        if "op" not in x0.saturated():
            for _ in range(64):
                x0.send(1, "op", kib(sent))
                sent += 1
        x0.flush()
        x1.flush()
        time.sleep(0.001)
    # x1 never consumed: x0 ran out of credit, queued, and stopped at the bound.
    assert x0.saturated() == {"op"}
    one = len(pickle.dumps(("op", kib(0)), 5))
    assert x0.in_flight_bytes(1, "op") <= window + one
    assert x0.queued_bytes(1, "op") <= bound + 64 * one
    assert x1.inbound_bytes(0) <= window + one + 1024  # plus frame overhead
    assert sent * one <= window + bound + 65 * one
    # Once x1 consumes, everything arrives in order and the pipe is no longer saturated.
    got = pump(x1, [x0], [(0, "op")], sent)[(0, "op")]
    assert [i for i, _ in got] == list(range(sent))
    x0.flush()
    wait_until(lambda: (x0.flush(), not x0.saturated())[1], what="saturation to clear")
    # What stays unreported is below the report threshold (half a window).
    wait_until(
        lambda: (x1.flush(), x0.in_flight_bytes(1, "op") < window // 2)[1], what="last credit"
    )


def test_a_pipe_not_consumed_does_not_block_another_pipe_between_the_same_workers(
    exchanges: Any,
) -> None:
    # 8 MiB for "stalled" (never read) sent before "live": per-pipe credit keeps the stream
    # flowing; a per-connection bound would leave "live" behind the stalled bytes forever.
    x0, x1 = exchanges(2, window_bytes=256 * 1024)
    for i in range(8 * 1024):
        x0.send(1, "stalled", kib(i))
    for i in range(1000):
        x0.send(1, "live", i)
    x0.flush()
    got = pump(x1, [x0], [(0, "live")], 1000)[(0, "live")]
    assert got == list(range(1000))
    assert x0.in_flight_bytes(1, "stalled") <= 256 * 1024 + 2048
    assert x0.queued_bytes(1, "stalled") > 7 * 1024 * 1024
    assert x0.saturated() == {"stalled"}
    # And it all arrives once the receiver takes it.
    got = pump(x1, [x0], [(0, "stalled")], 8 * 1024, timeout=10)[(0, "stalled")]
    assert [i for i, _ in got] == list(range(8 * 1024))


def test_held_operator_gets_no_credit_and_others_flow(exchanges: Any) -> None:
    x0, x1 = exchanges(2, window_bytes=32 * 1024)
    x1.hold(frozenset({"a"}))
    for i in range(200):
        x0.send(1, "a", kib(i))
        x0.send(1, "b", kib(i))
    x0.flush()
    got = pump(x1, [x0], [(0, "a"), (0, "b")], 200, timeout=4)
    assert got[(0, "a")] == [] and [i for i, _ in got[(0, "b")]] == list(range(200))
    assert x0.queued_bytes(1, "a") > 100 * 1024 and x0.queued_bytes(1, "b") == 0
    x1.hold(frozenset())
    got = pump(x1, [x0], [(0, "a")], 200, timeout=4)
    assert [i for i, _ in got[(0, "a")]] == list(range(200))


def test_credit_reports_are_batched(exchanges: Any) -> None:
    window = 256 * 1024
    x0, x1 = exchanges(2, window_bytes=window)
    n = 8 * 1024  # 8 MiB in 1 KiB messages, sent a little per turn (many small frames)
    sent = 0
    got = 0
    deadline = time.monotonic() + 10
    while got < n:
        if sent < n and x0.in_flight_bytes(1, "op") < window:
            for _ in range(16):
                x0.send(1, "op", kib(sent))
                sent += 1
        x0.flush()
        while x1.recv(0, "op") is not None:
            got += 1
        x1.flush()
        assert time.monotonic() < deadline, f"{got} of {n} arrived"
    # One report per half window consumed at most: 64 for 8 MiB, for ~500 data frames.
    assert x1.credit_frames <= 8 * 1024 * 1024 // (window // 2) + 1
    assert x0.frames_sent(1) > 5 * x1.credit_frames


def test_lost_peer_fails_flush(exchanges: Any) -> None:
    x0, x1 = exchanges(2, connect_timeout=0.5)
    x0.send(1, "op", 1)
    x0.flush()
    assert pump(x1, [x0], [(0, "op")], 1)[(0, "op")] == [1]
    x1.close()
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="worker 1"):
        while time.monotonic() - t0 < 4.0:
            x0.send(1, "op", 2)
            x0.flush()
            time.sleep(0.01)
    assert time.monotonic() - t0 < 3.0


def test_unreachable_peer_fails_flush_after_connect_timeout() -> None:
    with GrpcExchange(0, AUTH, connect_timeout=0.3) as x0:
        x0.connect({1: "127.0.0.1:1"})
        x0.send(1, "op", 1)
        t0 = time.monotonic()
        with pytest.raises(TransportError, match=r"cannot reach worker 1 at 127\.0\.0\.1:1"):
            while time.monotonic() - t0 < 4.0:
                x0.flush()
                time.sleep(0.01)


def test_sequence_gap_is_an_error_on_both_sides() -> None:
    with GrpcExchange(1, AUTH) as x1:
        channel = make_channel(x1.address, AUTH)
        stub = pb_grpc.DataPlaneStub(channel)
        frames = [
            pb.Frame(from_worker=7, seq=0, payload=encode_frames([("op", "a")])[0]),
            pb.Frame(from_worker=7, seq=2, payload=encode_frames([("op", "c")])[0]),
        ]
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(iter(frames), timeout=3)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert "expected #1, got #2" in err.value.details()
        assert x1.recv(7, "op") == "a"
        with pytest.raises(TransportError, match="lost or reordered"):
            x1.flush()
        channel.close()


# ----- authentication ---------------------------------------------------------------------------
REFUSALS = [
    (JobAuth("job-a", "wrong"), "bad token for job 'job-a'"),
    (JobAuth("job-b", AUTH.token), "this server runs job 'job-a', you are from job 'job-b'"),
    (
        JobAuth("job-a", AUTH.token, protocol_version=PROTOCOL_VERSION + 1),
        f"speaks version {PROTOCOL_VERSION}, the client sent version {PROTOCOL_VERSION + 1}",
    ),
]


@pytest.mark.parametrize("carrier", ["link", "grpc"])
@pytest.mark.parametrize(("intruder", "message"), REFUSALS)
def test_refused_peers_get_a_clear_message(intruder: JobAuth, message: str, carrier: str) -> None:
    with GrpcExchange(0, AUTH) as good, GrpcExchange(1, intruder, connect_timeout=2) as bad:
        bad.connect({0: good.data_address if carrier == "link" else good.address})
        bad.send(0, "op", "hello")
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="refused us") as err:
            while time.monotonic() - t0 < 3:
                bad.flush()
                time.sleep(0.01)
        assert message in str(err.value)
        assert any(message in r for r in good.rejections)
        assert good.recv(1, "op") is None

    with ControlServer(AUTH) as server:
        with pytest.raises(TransportError, match="refused us") as err:
            connect_control(server.address, 0, "hi", intruder, connect_timeout=2)
        assert message in str(err.value)
        with AdminClient(server.address, intruder) as admin, pytest.raises(TransportError) as err:
            admin.call("status", b"", timeout=2)
        assert message in str(err.value)
        assert sum(message in r for r in server.rejections) == 2
        assert server.endpoints() == {}


def test_link_refuses_a_listener_that_does_not_know_the_token() -> None:
    # A listener that admits everyone but signs with another token: the sender hangs up.
    impostor = LocalListener(JobAuth("job-a", "other"), lambda md, a, ctx: None, _drain, "impostor")
    try:
        with pytest.raises(grpc.RpcError, match="did not prove") as err:
            connect_link(impostor.name, AUTH, None, timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        impostor.close()


def _drain(attempt: int | None, sock: socket.socket, context: Any) -> None:
    while sock.recv(65536):
        pass


def test_link_listener_refuses_garbage_and_keeps_serving() -> None:
    with GrpcExchange(1, AUTH) as x1, GrpcExchange(0, AUTH) as x0:
        name = split_address(x1.data_address)[1]
        assert name is not None
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(b"\0" + name.encode())
        raw.sendall(b"\x05\x00\x00\x00hello")
        raw.settimeout(2)
        answer = b""
        while chunk := raw.recv(4096):  # the reason, then the listener hangs up
            answer += chunk
        raw.close()
        assert b"UNAUTHENTICATED" in answer and b"not a malstrom link handshake" in answer
        x0.connect({1: x1.data_address})
        x0.send(1, "op", "after garbage")
        x0.flush()
        assert pump(x1, [x0], [(0, "op")], 1)[(0, "op")] == ["after garbage"]
        assert x0.peer_links() == {1: True}


def test_a_link_wakes_the_worker_only_when_it_sleeps() -> None:
    # The receiving worker reads its same-host links itself, at each flush; the link's thread
    # wakes the worker loop only after ``arm_wake`` (called just before the loop sleeps), once.
    with GrpcExchange(0, AUTH) as x0, GrpcExchange(1, AUTH) as x1:
        x0.connect({1: x1.data_address})
        assert x0.wait_connected(3.0) and x0.peer_links() == {1: True}
        by_threads: list[str] = []
        me = threading.current_thread()

        def wake() -> None:
            if threading.current_thread() is not me:
                by_threads.append(threading.current_thread().name)

        x1.wake = wake
        x0.send(1, "op", -1)
        x0.flush()
        assert pump(x1, [x0], [(0, "op")], 1)[(0, "op")] == [-1]  # the link is taken in
        by_threads.clear()
        # Busy: frames arrive between flushes; no thread wakes the loop for them.
        for i in range(20):
            x0.send(1, "op", i)
            x0.flush()
        assert pump(x1, [x0], [(0, "op")], 20)[(0, "op")] == list(range(20))
        time.sleep(0.1)
        assert by_threads == []
        # Frames that came while the loop did not flush are taken in when it arms, without a
        # wake-up from the link (they would otherwise wake it again and again).
        x0.send(1, "op", 20)
        x0.flush()
        wait_until(lambda: x0.wire_bytes(1) == 0, what="the frame to leave")
        time.sleep(0.05)
        x1.arm_wake()
        assert x1.recv(0, "op") == 20
        time.sleep(0.1)
        assert by_threads == []
        # Asleep (armed): the next frame wakes the loop, once, however many follow.
        for i in range(21, 24):
            x0.send(1, "op", i)
            x0.flush()
        wait_until(lambda: len(by_threads) > 0, what="a wake-up")
        time.sleep(0.1)
        assert len(by_threads) == 1
        assert pump(x1, [x0], [(0, "op")], 3)[(0, "op")] == [21, 22, 23]


def test_peer_in_another_namespace_is_reached_over_grpc() -> None:
    # A link name nobody listens to here is what a peer in another network namespace (another
    # host, pod or simulated host) offers: the sender falls back to gRPC, and data flows.
    with GrpcExchange(1, AUTH) as x1, GrpcExchange(0, AUTH) as x0:
        x0.connect({1: join_address(x1.address, local_name())})
        x1.connect({0: x0.data_address})
        assert x0.wait_connected(3.0) and x1.wait_connected(3.0)
        assert x0.peer_links() == {1: False} and x1.peer_links() == {0: True}
        for i in range(1000):
            x0.send(1, "op", i)
            x1.send(0, "op", -i)
        x0.flush()
        x1.flush()
        assert pump(x1, [x0], [(0, "op")], 1000)[(0, "op")] == list(range(1000))
        assert pump(x0, [x1], [(1, "op")], 1000)[(1, "op")] == [-i for i in range(1000)]


def test_tls_or_env_keeps_every_pipe_on_grpc(tls: TlsConfig, monkeypatch: Any) -> None:
    with GrpcExchange(0, AUTH, tls) as secure:
        assert secure.data_address == secure.address and not secure.local_links
    monkeypatch.setenv("MALSTROM_DATA_PLANE", "grpc")
    with GrpcExchange(0, AUTH) as plain:
        assert plain.data_address == plain.address and not plain.local_links
    monkeypatch.delenv("MALSTROM_DATA_PLANE")
    with GrpcExchange(0, AUTH) as linked:
        assert linked.data_address.startswith(linked.address + ";local=malstrom-")


def test_client_refuses_a_server_that_does_not_know_the_token() -> None:
    # A server of "job-a" with another token: it refuses the client first, so fake one that
    # accepts everything by giving both the same job but checking the proof path directly.
    from malstrom.transport._grpc_auth import verify_server

    with pytest.raises(TransportError, match="did not prove"):
        verify_server(AUTH, "nonce", (("x-malstrom-proof", "forged"),), "127.0.0.1:9")
    verify_server(AUTH, "nonce", (("x-malstrom-proof", AUTH.proof("nonce")),), "x")


# ----- TLS --------------------------------------------------------------------------------------


def test_tls_pipes_control_and_admin(exchanges: Any, tls: TlsConfig) -> None:
    x0, x1 = exchanges(2, tls=tls)
    x0.send(1, "op", "secret")
    x0.flush()
    assert pump(x1, [x0], [(0, "op")], 1)[(0, "op")] == ["secret"]

    with ControlServer(AUTH, tls, admin=lambda c, p: c.encode() + p) as server:
        client = connect_control(server.address, None, "hi", AUTH, tls, connect_timeout=2)
        server.wait_for(1, timeout=2)
        client.send("over tls")
        wait_until(lambda: bool(server.endpoints()[0]._inbox), what="message")
        assert server.endpoints()[0].recv() == "over tls"
        with AdminClient(server.address, AUTH, tls) as admin:
            assert admin.call("status", b"!", timeout=2) == b"status!"
        # A plaintext client cannot talk to a TLS server, and is told so.
        with AdminClient(server.address, AUTH) as plain, pytest.raises(TransportError) as err:
            plain.call("status", timeout=2)
        assert "TLS" in str(err.value)
        client.close()


def test_plaintext_peer_cannot_feed_a_tls_exchange(tls: TlsConfig) -> None:
    with GrpcExchange(0, AUTH, tls) as secure, GrpcExchange(1, AUTH, connect_timeout=0.5) as plain:
        plain.connect({0: secure.address})
        plain.send(0, "op", 1)
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="cannot reach worker 0") as err:
            while time.monotonic() - t0 < 3:
                plain.flush()
                time.sleep(0.01)
        assert "TLS" in str(err.value)
        assert secure.recv(1, "op") is None


# ----- control ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ping:
    n: int
    payload: tuple[int, ...] = ()


def test_control_round_trips_and_assigned_ids() -> None:
    with ControlServer(AUTH) as server:
        c5 = connect_control(server.address, 5, Ping(-5), AUTH)
        ca = connect_control(server.address, None, Ping(-1), AUTH)
        cb = connect_control(server.address, None, Ping(-2), AUTH)
        assert (c5.worker_id, ca.worker_id, cb.worker_id) == (5, 0, 1)
        links = server.wait_for(3, timeout=2)
        assert sorted(links) == [0, 1, 5]
        assert server.hellos() == {0: Ping(-1), 1: Ping(-2), 5: Ping(-5)}
        for i in range(100):
            for w, link in links.items():
                link.send(Ping(i, (w,)))
            ca.send(Ping(i))
            c5.send(Ping(1000 + i))
        got: dict[int, list[Any]] = {0: [], 1: [], 5: []}
        back: dict[int, list[Any]] = {0: [], 5: []}

        def done() -> bool:
            for w, c in ((0, ca), (1, cb), (5, c5)):
                while (m := c.recv()) is not None:
                    got[w].append(m)
            for w in back:
                while (m := links[w].recv()) is not None:
                    back[w].append(m)
            return all(len(v) == 100 for v in (*got.values(), *back.values()))

        wait_until(done, what="control messages")
        assert got[1] == [Ping(i, (1,)) for i in range(100)]
        assert back[0] == [Ping(i) for i in range(100)]
        assert back[5] == [Ping(1000 + i) for i in range(100)]
        with pytest.raises(TransportError, match="already connected"):
            connect_control(server.address, 5, Ping(0), AUTH, connect_timeout=1)
        # A goodbye is not a loss.
        cb.close()
        wait_until(lambda: 1 not in server.endpoints(), what="goodbye")
        assert server.lost() == set()
        with pytest.raises(TransportError):
            cb.send(Ping(0))
        ca.close()
        c5.close()


def test_lost_workers_are_reported() -> None:
    # Generous timeouts: CI machines are shared, and a late heartbeat is not what is tested.
    with ControlServer(AUTH, heartbeat_timeout=1.5, heartbeat_interval=0.1) as server:
        opts: dict[str, Any] = {"heartbeat_interval": 0.1}
        silent = connect_control(server.address, 0, "a", AUTH, **opts)
        vanished = connect_control(server.address, 1, "b", AUTH, **opts)
        healthy = connect_control(server.address, 2, "c", AUTH, **opts)
        server.wait_for(3, timeout=5)
        time.sleep(1.8)
        assert server.lost() == set()  # heartbeats keep idle workers alive
        silent._stop_heartbeats()  # stuck: stream open, nothing sent
        vanished._channel.close()  # gone without a goodbye
        t0 = time.monotonic()
        # A closed channel may reach the server as a broken stream or as an end of stream
        # (then the link counts as closed, not lost): either way worker 1 is no endpoint.
        wait_until(
            lambda: 0 in server.lost() and 1 not in server.endpoints(),
            timeout=15.0,
            what="loss detection",
        )
        assert time.monotonic() - t0 < 15.0
        assert sorted(server.endpoints()) == [2]
        with pytest.raises(TransportError, match="worker 1"):
            server._links[1].send("anything")
        # The stuck worker may come back under its id once it is known lost.
        silent._call.cancel()
        again = connect_control(server.address, 0, "a2", AUTH, **opts)
        assert {0, 2} <= server.wait_for(2, timeout=5).keys()
        for c in (again, healthy):
            c.close()


def test_worker_sees_coordinator_gone() -> None:
    server = ControlServer(AUTH)
    client = connect_control(server.address, 0, "hi", AUTH)
    server.wait_for(1, timeout=2)
    server.endpoints()[0].send("bye")
    wait_until(lambda: len(client._inbox) == 1, what="message")
    server.close()
    wait_until(lambda: client.closed, what="coordinator loss")
    with pytest.raises(TransportError, match=r"coordinator|control"):
        client.send("anyone?")
    assert client.recv() == "bye"  # what arrived before stays readable
    client.close()


def test_worker_waits_for_a_coordinator_that_starts_late() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    with pytest.raises(TransportError, match="cannot reach"):
        connect_control(address, 0, "hi", AUTH, connect_timeout=0.3)

    import threading

    box: list[Any] = []
    t = threading.Thread(
        target=lambda: box.append(connect_control(address, 0, "hi", AUTH, connect_timeout=4))
    )
    t.start()
    time.sleep(0.3)
    with ControlServer(AUTH, listen=address) as server:
        t.join(4)
        assert box and box[0].worker_id == 0
        assert server.wait_for(1, timeout=2).keys() == {0}
        box[0].close()


# ----- admin ------------------------------------------------------------------------------------
def test_admin_round_trip_and_errors() -> None:
    def handler(command: str, payload: bytes) -> bytes:
        if command == "rescale":
            n = pickle.loads(payload)
            if n < 1:
                raise ValueError(f"cannot rescale to {n} workers")
            return pickle.dumps({"parallelism": n})
        raise KeyError(command)

    with ControlServer(AUTH) as server, AdminClient(server.address, AUTH) as admin:
        with pytest.raises(AdminError, match="no admin commands"):
            admin.call("status")
        server.set_admin_handler(handler)
        assert pickle.loads(admin.call("rescale", pickle.dumps(3))) == {"parallelism": 3}
        with pytest.raises(AdminError, match="rescale: cannot rescale to 0 workers"):
            admin.call("rescale", pickle.dumps(0))
        with pytest.raises(AdminError, match="frobnicate"):
            admin.call("frobnicate")
    with AdminClient(server.address, AUTH) as admin, pytest.raises(TransportError):
        admin.call("status", timeout=1)


# ----- health -----------------------------------------------------------------------------------
def health_check(address: str, timeout: float = 5.0) -> Any:
    """What a Kubernetes ``grpc`` probe asks: ``grpc.health.v1.Health/Check``, no metadata."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


def test_coordinator_and_worker_servers_answer_health_checks_without_a_token() -> None:
    from grpc_health.v1 import health_pb2

    serving = health_pb2.HealthCheckResponse.SERVING
    with ControlServer(AUTH) as server, GrpcExchange(0, AUTH) as worker:
        assert health_check(server.address) == serving
        assert health_check(worker.address) == serving
        # Only health checks go without a token: the job's own services still refuse.
        with grpc.insecure_channel(server.address) as channel:
            call = channel.unary_unary(
                "/malstrom.v1.Admin/Call",
                request_serializer=pb.AdminRequest.SerializeToString,
                response_deserializer=pb.AdminReply.FromString,
            )
            with pytest.raises(grpc.RpcError) as err:
                call(pb.AdminRequest(command="status"), timeout=5)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        address = server.address
    with pytest.raises(grpc.RpcError) as err:  # a stopped server fails the probe
        health_check(address, timeout=1)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
