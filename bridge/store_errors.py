"""How the store reports trouble: SQLite and OS errors as edgemq errors."""

from __future__ import annotations

import sqlite3

from broker.errors import StoreCorrupt, StoreError, StoreFull

__all__ = ["store_error"]


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
