"""A session's connection state without a ``transitions.Machine`` per session.

amqtt 0.12.1 builds a ``transitions.Machine`` for every ``Session``
(``amqtt/session.py``, ``Session._init_states``): three states, five transitions and
two callbacks cost about 16 KB per session, a quarter of an idle connection's
memory (docs/amqtt-notes.md). :class:`SessionState` keeps the same surface amqtt
and edgemq use — ``state``, ``connect()``, ``disconnect()``, ``is_new()``,
``is_connected()``, ``is_disconnected()`` — and the same rules: ``connect`` from
``connected`` raises ``transitions.MachineError`` (amqtt catches exactly that),
``disconnect`` is allowed from every state, and entering ``connected`` or
``disconnected`` calls the session's ``_on_enter_connected`` /
``_on_enter_disconnected`` as the Machine did (a reflexive ``disconnect`` too).

What it does not do: anything else of ``transitions`` (no other triggers, no
``add_transition``); it is for ``amqtt.session.Session`` only.
"""

from __future__ import annotations

from typing import Any

from transitions import MachineError

from broker.lazy_queue import LazyQueue

__all__ = ["SessionState", "lighten"]

STATES = ("new", "connected", "disconnected")


class SessionState:
    __slots__ = ("_session", "state")

    def __init__(self, session: Any, state: str = "new") -> None:
        if state not in STATES:
            raise ValueError(f"unknown session state {state!r}")
        self._session = session
        self.state = state

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError(f"Can't trigger event connect from state {self.state}!")
        self.state = "connected"
        self._session._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"
        self._session._on_enter_disconnected()
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    def __repr__(self) -> str:
        return f"SessionState({self.state!r})"


def lighten(session: Any) -> None:
    """Replace a session's ``transitions.Machine`` by a :class:`SessionState` in the same state,
    and its two ``asyncio.Queue``s by ``LazyQueue``s holding the same messages (entry 70)."""
    if not isinstance(session.transitions, SessionState):
        session.transitions = SessionState(session, str(session.transitions.state))
    for name in ("retained_messages", "delivered_message_queue"):
        queue = getattr(session, name)
        if not isinstance(queue, LazyQueue):
            items = []
            while not queue.empty():
                items.append(queue.get_nowait())
            setattr(session, name, LazyQueue(items))
