"""Fuzz the broker with generated malformed and random packet sequences.

After every sequence a separate, well-behaved client must still get a PINGRESP and a
pub/sub round trip promptly, and at the end the broker's RSS must not have grown
without bound. The default run is short; ``-m slow`` runs the long one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, start_broker, uid

RSS_GROWTH_LIMIT = 64 * 1024 * 1024

topics = st.one_of(
    st.text(min_size=0, max_size=30),
    st.binary(max_size=30),
    st.sampled_from(["a/b", "#", "+", "a/#/b", "$SYS/x", "a\x00b", "/", "//"]),
)
valid_packets = st.one_of(
    st.builds(
        P.connect,
        st.text(max_size=20),
        clean=st.booleans(),
        keepalive=st.integers(0, 65535),
        level=st.sampled_from([3, 4, 5, 6]),
        flags_extra=st.integers(0, 255),
    ),
    st.builds(
        P.publish, topics, st.binary(max_size=200), qos=st.integers(0, 3), retain=st.booleans(),
        pid=st.integers(0, 65535), dup=st.booleans(),
    ),
    st.builds(P.subscribe, st.integers(0, 65535), st.lists(st.tuples(topics, st.integers(0, 255)), max_size=4),
              flags=st.integers(0, 15)),
    st.builds(P.unsubscribe, st.integers(0, 65535), st.lists(st.text(max_size=10), max_size=3)),
    st.builds(P.puback, st.integers(0, 65535)),
    st.just(P.pingreq()),
    st.just(P.disconnect()),
    st.builds(P.raw, st.integers(0, 255), st.binary(max_size=64)),
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_packets))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    if data and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


chunks = st.lists(st.one_of(valid_packets, mutated(), st.binary(min_size=1, max_size=256)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    proc = start_broker("edgemq", tmp, limits={"connect_timeout_s": 2.0, "max_packet_size": 256 * 1024})
    yield proc
    proc.stop()


def _one_sequence(broker: BrokerProc, with_connect: bool, seq: list[bytes], reset: bool) -> None:
    w = P.Wire(broker.port)
    if with_connect:
        w.send(P.connect(uid("fuzz")))
    for chunk in seq:
        if not w.send(chunk):
            break
    if reset:
        w.reset()
    else:
        w.close()


def _still_serves(broker: BrokerProc) -> None:
    probe = P.Wire(broker.port)
    rc, _ = probe.connect(uid("probe"))
    assert rc == 0, broker.log_tail()
    assert probe.ping(5), f"no PINGRESP within 5 s\n{broker.log_tail()}"
    topic = uid("probe")
    probe.subscribe(topic, 0)
    probe.send(P.publish(topic, b"echo"))
    assert probe.recv_type(P.PUBLISH, 5).publish_fields()[2] == b"echo"
    probe.close()


def _fuzz(broker: BrokerProc, examples: int) -> None:
    rss_start = broker.rss()
    log_start = broker.log.stat().st_size
    bystander = P.Wire(broker.port)
    assert bystander.connect(uid("bystander"), keepalive=0)[0] == 0

    @settings(
        max_examples=examples, deadline=None, derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip
    @given(with_connect=st.booleans(), seq=chunks, reset=st.booleans())
    def run(with_connect: bool, seq: list[bytes], reset: bool) -> None:
        _one_sequence(broker, with_connect, seq, reset)
        assert broker.alive(), broker.log_tail()
        assert bystander.ping(5), f"bystander got no PINGRESP within 5 s\n{broker.log_tail()}"

    run()
    bystander.close()
    _still_serves(broker)
    assert broker.alive(), broker.log_tail()
    grown = broker.rss() - rss_start
    assert grown < RSS_GROWTH_LIMIT, f"RSS grew {grown / 1e6:.1f} MB over {examples} sequences"
    with open(broker.log, "rb") as fh:
        fh.seek(log_start)
        assert b"Traceback" not in fh.read(), broker.log_tail()


def test_fuzz_broker_stays_up_and_answers(fuzz_broker: BrokerProc) -> None:
    _fuzz(fuzz_broker, examples=400)


@pytest.mark.slow
def test_fuzz_long(fuzz_broker: BrokerProc) -> None:
    _fuzz(fuzz_broker, examples=3000)
