"""How the store reports trouble: SQLite/OS errors as edgemq errors, warnings rate-limited."""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from broker.errors import StoreCorrupt, StoreError, StoreFull

__all__ = ["RateLimitedLog", "store_error"]

log = logging.getLogger("bridge.store")

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR = 5, 6, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26


def store_error(exc: BaseException, path: str) -> StoreError:
    """Translate a foreign exception from the buffer into an edgemq store error."""
    if isinstance(exc, StoreError):
        return exc
    err: StoreError
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code == _SQLITE_FULL:
            err = StoreFull(
                f"disk full writing the buffer: {exc}",
                hint="free disk space or lower max_bytes; the batch was counted as dropped 'error'",
                path=path,
            )
        elif code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            err = StoreCorrupt(
                f"buffer file is corrupt: {exc}",
                hint="restart the broker: the file is moved aside and a fresh buffer started",
                path=path,
            )
        else:
            err = StoreError(
                f"SQLite error in the buffer: {exc}",
                hint="check the disk and file permissions",
                recoverable=code in (_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR),
                path=path,
            )
    elif isinstance(exc, OSError):
        err = StoreError(f"cannot use the buffer file: {exc}", hint="check the path and permissions", path=path)
    else:
        err = StoreError(f"buffer failed: {exc!r}", hint="this is a bug; please report it", path=path)
    err.__cause__ = exc
    return err



class RateLimitedLog:
    """At most one warning per ``every_s`` per kind; the rest are counted and reported."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, float("-inf")) < self.every_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        log.warning(msg + (" (%d similar suppressed)" if skipped else ""), *args, *([skipped] if skipped else []))
