"""Structured logs: one line per event, ``key=value``, the component and its site/broker on every line.

    ts=2026-11-27T04:01:35.593Z level=INFO component=plant-1.a1 site=plant-1 broker=a1
    logger=bridge.link msg="uplink plant-1/a1 connected to 127.0.0.1:18830"      (one line)

Values with spaces, quotes or ``=`` are double-quoted with JSON escapes, so a line
splits on spaces outside quotes (logfmt, as read by Loki, Vector, ``grep``). A
traceback stays on the same line (``exc="...\\n..."``). Extra fields go in with
``log.info("...", extra={"kv": {"seq": 12}})``.

Handlers are set up only by entry points (``setup_logging``); supervisord captures
each process's stderr into ``<run>/logs/<component>.log`` and rotates it
(20 MB x 3 backups per component, see edgemq.cluster).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["KeyValueFormatter", "format_kv", "setup_logging"]

NOISY = ("amqtt", "transitions", "bridge.paho", "edgemq.dashboard.paho", "uvicorn.access")


def _value(v: Any) -> str:
    s = str(v)
    if s and not any(ch in s for ch in ' "=\n\r\t\\') and s.isprintable():
        return s
    return json.dumps(s, ensure_ascii=False)


def format_kv(fields: Mapping[str, Any]) -> str:
    """``k=v k2="v 2"``; None values are left out."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)


class KeyValueFormatter(logging.Formatter):
    """Formats a record as one logfmt line with fixed identity fields first."""

    def __init__(self, identity: Mapping[str, str | None]) -> None:
        super().__init__()
        self.identity = dict(identity)

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname,
            **self.identity,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "kv", None)
        if isinstance(extra, Mapping):
            fields.update({k: v for k, v in extra.items() if k not in fields})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return format_kv(fields)


class RepeatFilter(logging.Filter):
    """Rate-limits repeated third-party log lines (amqtt logs every broken connection at
    ERROR): the same logger and message template passes at most once per ``interval_s``,
    then once more with how many were suppressed. A flood of bad connections must not
    grow the log many times the size of what the attacker sent."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("amqtt", "transitions")) or record.levelno >= logging.CRITICAL:
            return True
        # Client addresses and ids vary; the template is what repeats.
        key = (record.name, _DIGITS.sub("#", str(record.msg))[:120])
        now = record.created
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            record.msg = f"{record.msg} ({n} similar suppressed)"
        if len(self._last) > 10_000:
            self._last.clear()
        return True


_DIGITS = re.compile(r"\d+")


def setup_logging(component: str, level: str = "INFO", *, site: str | None = None, broker: str | None = None) -> None:
    """Log to stderr in key=value lines; ``component`` e.g. 'cloud', 'plant-1.a1', 'dashboard'."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter({"component": component, "site": site, "broker": broker}))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
