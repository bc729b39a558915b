"""devices.payload: the JSON telemetry model round-trips and refuses what it is not."""

from __future__ import annotations

import json

import pytest

from broker.errors import EdgeMQError
from devices.payload import PayloadError, Telemetry


def sample(**kw: object) -> Telemetry:
    fields: dict[str, object] = {
        "device": "dev-0001",
        "site": "plant-1",
        "seq": 7,
        "ts": 1718000000.25,
        "readings": {"temp": 21.5, "humidity": 40.0},
    }
    fields.update(kw)
    return Telemetry.model_validate(fields)


def test_round_trip_is_exact() -> None:
    t = sample(readings={"temp": 0.1 + 0.2, "x": -1e-300})
    data = t.encode()
    assert isinstance(data, bytes)
    assert Telemetry.decode(data) == t
    assert Telemetry.decode(data.decode()) == t
    assert Telemetry.decode(data).encode() == data


def test_wire_format_is_compact_json_with_the_documented_fields() -> None:
    data = sample().encode()
    assert b" " not in data
    assert json.loads(data) == {
        "device": "dev-0001",
        "site": "plant-1",
        "seq": 7,
        "ts": 1718000000.25,
        "readings": {"temp": 21.5, "humidity": 40.0},
    }


def test_integers_in_readings_become_floats() -> None:
    t = Telemetry.decode(b'{"device":"d","site":"s","seq":1,"ts":1,"readings":{"n":3}}')
    assert t.readings == {"n": 3.0}
    assert isinstance(t.readings["n"], float)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"21.5",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"device":"d","site":"s","seq":1,"ts":1}',  # no readings
        b'{"device":"d","site":"s","seq":-1,"ts":1,"readings":{}}',
        b'{"device":"","site":"s","seq":1,"ts":1,"readings":{}}',
        b'{"device":"d","site":"s","seq":1,"ts":1,"readings":{"t":"hot"}}',
        b'{"device":"d","site":"s","seq":1,"ts":1,"readings":{"t":NaN}}',
        b'{"device":"d","site":"s","seq":1,"ts":1,"readings":{},"extra":1}',
    ],
)
def test_decode_refuses_with_a_payload_error(data: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        Telemetry.decode(data)
    assert isinstance(info.value, EdgeMQError)
    assert "not a telemetry payload" in str(info.value)


def test_non_finite_readings_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        sample(readings={"t": float("inf")})


def test_model_is_frozen() -> None:
    t = sample()
    with pytest.raises(ValueError):
        t.seq = 8  # type: ignore[misc]
