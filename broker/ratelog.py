"""Rate-limited logging for repeated failures (a flapping link must not flood the log).

``RateLimitedLog.warning(key, msg)`` logs the first occurrence of ``key`` at once and
then at most once per ``interval_s``, saying how many were suppressed in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AmqttBrokerLog", "RateLimitedLog"]


class RateLimitedLog:
    """Wraps a logger; one entry per key per interval."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log unless ``key`` was logged less than ``interval_s`` ago; True if it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            msg += f" ({suppressed} similar suppressed)"
        self._logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """``log`` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args)


# What amqtt's ``Broker`` logs (WARNING/ERROR) for each connection that fails before or
# during its session: one line or two per bad connection, a flood under hostile input.
_PER_CONNECTION_FAILURES = (
    "Failed to initialize client session",
    "No data from",
    "Invalid connection from",
    "[MQTT-3.1.0-1]",
    "Error while handling client session",
)


class AmqttBrokerLog(logging.LoggerAdapter[logging.Logger]):
    """amqtt's broker logger with its per-connection failure lines through a ``RateLimitedLog``."""

    def __init__(self, logger: logging.Logger, ratelog: RateLimitedLog) -> None:
        super().__init__(logger, {})
        self._ratelog = ratelog

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and isinstance(msg, str):
            for prefix in _PER_CONNECTION_FAILURES:
                if msg.startswith(prefix):
                    self._ratelog.log(level, f"amqtt:{prefix}", "%s", msg)
                    return
        super().log(level, msg, *args, **kwargs)
