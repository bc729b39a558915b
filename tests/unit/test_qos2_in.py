"""The incoming QoS 2 table (``broker.qos2_in``): identifiers held until PUBREL, at most ``limit``."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from broker.qos2_in import AwaitingRelease, Verdict, awaiting_release


def test_new_resent_over_limit_and_release() -> None:
    held = AwaitingRelease()
    assert held.receive(1, 2) is Verdict.NEW
    assert held.receive(1, 2) is Verdict.RESENT
    assert held.receive(2, 2) is Verdict.NEW
    assert held.receive(3, 2) is Verdict.OVER_LIMIT
    assert held.receive(1, 2) is Verdict.RESENT  # a held one is still a resend at the limit
    assert 3 not in held and len(held) == 2
    assert held.release(1) and not held.release(1)
    assert not held.release(3)  # dropped: PUBCOMP anyway, nothing held
    assert held.receive(3, 2) is Verdict.NEW
    assert held.peak == 2


def test_forget_frees_the_identifier() -> None:
    held = AwaitingRelease()
    held.receive(7, 5)
    held.forget(7)
    held.forget(8)  # unknown: no error
    assert held.receive(7, 5) is Verdict.NEW


def test_kept_with_the_session() -> None:
    session = SimpleNamespace()
    awaiting_release(session).receive(4, 10)
    assert 4 in awaiting_release(session)
    assert 4 not in awaiting_release(SimpleNamespace())


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40)), max_size=300), st.integers(1, 10))
def test_agrees_with_a_set_model(ops: list[tuple[bool, int]], limit: int) -> None:
    held, model = AwaitingRelease(), set[int]()
    for is_publish, pid in ops:
        if is_publish:
            verdict = held.receive(pid, limit)
            if pid in model:
                assert verdict is Verdict.RESENT
            elif len(model) >= limit:
                assert verdict is Verdict.OVER_LIMIT
            else:
                assert verdict is Verdict.NEW
                model.add(pid)
        else:
            assert held.release(pid) == (pid in model)
            model.discard(pid)
        assert len(held) == len(model) <= limit
