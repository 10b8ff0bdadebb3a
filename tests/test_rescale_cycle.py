"""The rescale cycle's state machine, driven table by table without a cluster.

Each row: the events that bring a cycle (this worker 0, peers 1 and 2) to a phase, one more
event, and the phase and actions that must follow. Every transition of both protocols has a
row; every (phase, event) pair a protocol does not list raises a :class:`CycleError` that
names the operator, the rescale, the phase and the event.
"""

from __future__ import annotations

import itertools

import pytest

from malstrom.engine.rescale_cycle import (
    DISTRIBUTOR_CYCLE,
    SOURCE_CYCLE,
    Action,
    CycleError,
    Event,
    Phase,
    RescaleCycle,
    Table,
)
from malstrom.errors import OperatorError

A, E, P = Action, Event, Phase
PEERS = (1, 2)

# Events: (event, peer); a peer-less event is written alone.
R = (E.RESCALE, None)
M1, M2 = (E.MARKER, 1), (E.MARKER, 2)
T1, T2 = (E.TRANSFER, 1), (E.TRANSFER, 2)
L1, L2 = (E.LAST_TRANSFER, 1), (E.LAST_TRANSFER, 2)
KS = (E.KEYS_SORTED, None)
C = (E.COLLECTED, None)
LC = (E.LAST_COLLECTED, None)
S = (E.SETTLE, None)

# One path to every phase a protocol reaches.
DISTRIBUTOR_PATHS = {
    P.NEW: [],
    P.AWAITING_RESCALE: [M1],
    P.AWAITING_MARKERS: [R],
    P.AWAITING_KEYS: [R, M1, M2],
    P.HANDING_OVER: [R, M1, M2, KS],
    P.AWAITING_TRANSFERS: [R, M1, M2, KS, LC],
    P.RELEASING: [R, M1, M2, KS, LC, L1, L2],
    P.DONE: [R, M1, M2, KS, LC, L1, L2, S],
}
SOURCE_PATHS = {
    P.NEW: [],
    P.AWAITING_TRANSFERS: [R],
    P.RELEASING: [R, L1, L2],
    P.DONE: [R, L1, L2, S],
}

# (events so far, event) -> (phase, actions)
DISTRIBUTOR_ROWS = [
    ([], R, P.AWAITING_MARKERS, (A.INTERROGATE, A.SEND_MARKERS)),
    ([], M1, P.AWAITING_RESCALE, (A.INTERROGATE,)),
    ([M1], M2, P.AWAITING_RESCALE, ()),  # every marker in, but not our own Rescale
    ([M1], R, P.AWAITING_MARKERS, (A.SEND_MARKERS,)),
    ([M1, M2], R, P.AWAITING_KEYS, (A.SEND_MARKERS,)),
    ([R], M1, P.AWAITING_MARKERS, ()),
    ([R, M1], M2, P.AWAITING_KEYS, ()),
    ([R], T1, P.AWAITING_MARKERS, (A.ACQUIRE,)),  # peer 1 has every marker, we not yet
    ([R], L1, P.AWAITING_MARKERS, ()),
    ([R, M1, M2], T1, P.AWAITING_KEYS, (A.ACQUIRE,)),
    ([R, M1, M2], L1, P.AWAITING_KEYS, ()),
    ([R, M1, M2, L1], L2, P.AWAITING_KEYS, ()),  # all transfers in: still ours to hand over
    ([R, M1, M2], KS, P.HANDING_OVER, (A.EMIT_AGREED_EPOCH, A.HAND_OVER)),
    ([R, M1, M2, KS], C, P.HANDING_OVER, (A.SHIP, A.HAND_OVER)),
    ([R, M1, M2, KS], T2, P.HANDING_OVER, (A.ACQUIRE,)),
    ([R, M1, M2, KS], L2, P.HANDING_OVER, ()),
    ([R, M1, M2, KS], LC, P.AWAITING_TRANSFERS, (A.SHIP_LAST,)),
    ([R, M1, M2, KS, L1, L2], LC, P.RELEASING, (A.SHIP_LAST,)),
    ([R, M1, M2, KS, LC], T1, P.AWAITING_TRANSFERS, (A.ACQUIRE,)),
    ([R, M1, M2, KS, LC], L1, P.AWAITING_TRANSFERS, ()),
    ([R, M1, M2, KS, LC, L1], L2, P.RELEASING, ()),
    ([R, M1, M2, KS, LC, L1, L2], S, P.DONE, (A.RELEASE,)),
]
SOURCE_ROWS = [
    ([], R, P.AWAITING_TRANSFERS, (A.SHIP_LAST,)),
    ([R], T1, P.AWAITING_TRANSFERS, (A.ACQUIRE,)),
    ([R], L1, P.AWAITING_TRANSFERS, ()),
    ([R, L1], L2, P.RELEASING, ()),
    ([R, L1, L2], S, P.DONE, (A.RELEASE,)),
]
PROTOCOLS = {
    "distributor": (DISTRIBUTOR_CYCLE, DISTRIBUTOR_PATHS, DISTRIBUTOR_ROWS),
    "source": (SOURCE_CYCLE, SOURCE_PATHS, SOURCE_ROWS),
}


def drive(table: Table, events: list[tuple[Event, int | None]], peers=PEERS) -> RescaleCycle:
    cycle = RescaleCycle(table, "op", 7, peers)
    for event, peer in events:
        cycle.fire(event, peer)
    return cycle


def _rows() -> list:
    return list(_each_row())


def _each_row():
    for name, (_, _, rows) in PROTOCOLS.items():
        for before, (event, peer), phase, actions in rows:
            yield pytest.param(name, before, event, peer, phase, actions, id=f"{name}-{event.name}")


@pytest.mark.parametrize(("protocol", "before", "event", "peer", "phase", "actions"), _rows())
def test_transition(protocol, before, event, peer, phase, actions) -> None:
    table = PROTOCOLS[protocol][0]
    cycle = drive(table, before)
    assert cycle.fire(event, peer) == actions
    assert cycle.phase is phase


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_transition_has_a_row(protocol: str) -> None:
    table, paths, rows = PROTOCOLS[protocol]
    covered = {(drive(table, before).phase, event) for before, (event, _), _, _ in rows}
    assert covered == set(table)
    reached = {step.to for step in table.values()}
    reached |= {step.once[1] for step in table.values() if step.once is not None}
    assert reached | {P.NEW} == set(paths)


def _illegal() -> list:
    return list(_each_illegal())


def _each_illegal():
    for name, (table, paths, _) in PROTOCOLS.items():
        for phase, event in itertools.product(paths, Event):
            if (phase, event) not in table:
                yield pytest.param(name, phase, event, id=f"{name}-{phase.name}-{event.name}")


@pytest.mark.parametrize(("protocol", "phase", "event"), _illegal())
def test_an_illegal_event_names_operator_phase_and_event(protocol, phase, event) -> None:
    table, paths, _ = PROTOCOLS[protocol]
    cycle = drive(table, paths[phase])
    assert cycle.phase is phase
    with pytest.raises(CycleError) as err:
        cycle.fire(event, 1)
    msg = str(err.value)
    assert "operator 'op'" in msg and "rescale 7" in msg
    assert phase.name in msg and event.name in msg and "worker 1" in msg
    assert isinstance(err.value, OperatorError) and err.value.operator == "op"
    assert cycle.phase is phase  # an illegal event changes nothing


def test_a_peer_sending_its_marker_twice_is_an_error() -> None:
    cycle = drive(DISTRIBUTOR_CYCLE, [R, M1])
    with pytest.raises(CycleError, match=r"event MARKER from worker 1 arrived twice"):
        cycle.fire(E.MARKER, 1)
    assert cycle.phase is P.AWAITING_MARKERS and cycle.markers.missing() == [2]


def test_a_last_message_from_no_peer_is_an_error() -> None:
    cycle = drive(SOURCE_CYCLE, [R])
    with pytest.raises(CycleError, match=r"from worker 9 comes from no peer .*\[1, 2\]"):
        cycle.fire(E.LAST_TRANSFER, 9)


def test_markers_keep_what_they_carry() -> None:
    cycle = RescaleCycle(DISTRIBUTOR_CYCLE, "op", 7, PEERS)
    cycle.fire(E.MARKER, 2, payload=41)
    cycle.fire(E.RESCALE)
    cycle.fire(E.MARKER, 1, payload=None)
    assert cycle.markers.arrived == {2: 41, 1: None} and cycle.markers.complete
    assert 2 in cycle.markers and 2 not in cycle.lasts


@pytest.mark.parametrize(
    ("table", "first"),
    [(DISTRIBUTOR_CYCLE, P.AWAITING_KEYS), (SOURCE_CYCLE, P.RELEASING)],
    ids=["distributor", "source"],
)
def test_with_no_peers_nothing_is_awaited(table: Table, first: Phase) -> None:
    cycle = RescaleCycle(table, "op", 1, ())
    cycle.fire(E.RESCALE)
    assert cycle.phase is first
