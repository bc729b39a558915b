"""Structured logs: one key=value line per event, identity on every line, tracebacks kept on it."""

from __future__ import annotations

import logging
import shlex

from edgemq.logs import KeyValueFormatter, format_kv


def record(msg: str, exc: bool = False, **kv: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    rec = logging.LogRecord("bridge.link", logging.WARNING, __file__, 1, msg, (), exc_info)
    if kv:
        rec.kv = kv
    return rec


def test_one_line_with_identity_and_quoting() -> None:
    fmt = KeyValueFormatter({"component": "plant-1.a1", "site": "plant-1", "broker": "a1"})
    line = fmt.format(record('uplink down: "refused" a=b', exc=True, seq=12))
    assert "\n" not in line
    fields = dict(part.split("=", 1) for part in shlex.split(line))
    assert fields["component"] == "plant-1.a1" and fields["site"] == "plant-1" and fields["broker"] == "a1"
    assert fields["level"] == "WARNING" and fields["logger"] == "bridge.link" and fields["seq"] == "12"
    assert "ValueError" in fields["exc"]


def test_format_kv_leaves_out_none_and_quotes_only_when_needed() -> None:
    assert format_kv({"a": "x", "b": None, "c": "two words", "d": ""}) == 'a=x c="two words" d=""'
