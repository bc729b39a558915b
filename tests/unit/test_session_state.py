"""SessionState behaves like the transitions.Machine amqtt builds per session (amqtt 0.12.1)."""

from __future__ import annotations

import itertools

import pytest
from amqtt.session import Session
from transitions import MachineError

from broker.session_state import SessionState, lighten

TRIGGERS = ("connect", "disconnect")


def outcome(machine: object, trigger: str) -> str:
    try:
        getattr(machine, trigger)()
    except MachineError:
        return "error"
    return str(machine.state)  # type: ignore[attr-defined]


@pytest.mark.parametrize("steps", [p for n in range(1, 5) for p in itertools.product(TRIGGERS, repeat=n)])
def test_every_sequence_of_triggers_matches_the_machine(steps: tuple[str, ...]) -> None:
    stock, light = Session(), Session()
    lighten(light)
    assert isinstance(light.transitions, SessionState) and not isinstance(stock.transitions, SessionState)
    for trigger in steps:
        assert outcome(light.transitions, trigger) == outcome(stock.transitions, trigger), steps
        assert light.transitions.state == stock.transitions.state
        for q in ("is_new", "is_connected", "is_disconnected"):
            assert getattr(light.transitions, q)() == getattr(stock.transitions, q)()
        # the enter-callbacks ran the same way
        assert (light.last_connect_time is None) == (stock.last_connect_time is None)
        assert (light.last_disconnect_time is None) == (stock.last_disconnect_time is None)


def test_lighten_keeps_the_current_state_and_is_idempotent() -> None:
    s = Session()
    s.transitions.connect()
    lighten(s)
    lighten(s)
    assert s.transitions.state == "connected"
    with pytest.raises(MachineError):
        s.transitions.connect()


def test_it_is_much_smaller_than_a_machine() -> None:
    import gc
    import tracemalloc

    tracemalloc.start()
    a = tracemalloc.take_snapshot()
    sessions = [Session() for _ in range(200)]
    b = tracemalloc.take_snapshot()
    for s in sessions:
        lighten(s)
    gc.collect()  # a Machine and its session reference each other
    c = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stock = sum(x.size_diff for x in b.compare_to(a, "filename"))
    light = sum(x.size_diff for x in c.compare_to(a, "filename"))
    assert light < stock * 0.5, (stock / 200, light / 200)  # measured: 23.5 KB -> 7.6 KB per session
