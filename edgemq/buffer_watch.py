"""``edgemq buffer stats --watch``: a backlog draining, live, until it is empty or the watch ends.

Every ``period`` seconds each selected buffer file is read read-only; the arithmetic is
``bridge.inspection.drain_progress`` (pure), against the first read of the watch and the
read ``WINDOW_S`` ago (rates over a sliding window, so one slow second does not swing the
time remaining). Shown as a rich ``Progress`` per broker and per site on a terminal, one
plain line per site and refresh otherwise, one JSON object per refresh with ``--json``.

A broker without a buffer file has nothing to drain and counts as empty; a file that
cannot be read (corrupt, foreign) is shown with its error and never counts as empty.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bridge.inspection import DrainProgress, FileSnapshot, drain_progress, site_progress
from broker.errors import StoreError

__all__ = ["WINDOW_S", "Reader", "progress_row", "watch"]

WINDOW_S = 10.0

Ref = tuple[str, str]
# A read of one broker's buffer at ``now``: the snapshot, the error, or None when it has no file.
Reader = Callable[[Ref, float], FileSnapshot | StoreError | None]


def _clock_text(s: float) -> str:
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _eta_text(p: DrainProgress) -> str:
    if p.empty:
        return "empty"
    if p.stalled:
        return "stalled"
    return "-" if p.eta_s is None else f"{_clock_text(p.eta_s)} left"


def _rate_text(p: DrainProgress) -> str:
    return "- msg/s" if p.rate is None else f"{p.rate:,.1f} msg/s"


def progress_row(ref: str, p: DrainProgress | None, error: str | None = None) -> dict[str, Any]:
    """One broker's or site's figures as a JSON-able dict (``--json``, and the plain line)."""
    if p is None:
        return {"ref": ref, "error": error or "no buffer", "empty": error is None}
    return {
        "ref": ref,
        "total": p.total,
        "completed": p.completed,
        "depth": p.depth,
        "forwarded": p.forwarded,
        "rate": p.rate,
        "net_rate": p.net_rate,
        "eta_s": p.eta_s,
        "stalled": p.stalled,
        "empty": p.empty,
    }


class _Tracker:
    """The start of the watch and the recent reads of one buffer file."""

    def __init__(self) -> None:
        self.start: FileSnapshot | None = None
        self.recent: deque[FileSnapshot] = deque()

    def add(self, snap: FileSnapshot) -> DrainProgress:
        if self.start is None:
            self.start = snap
        self.recent.append(snap)
        while len(self.recent) > 1 and self.recent[1].taken_at <= snap.taken_at - WINDOW_S:
            self.recent.popleft()
        got = drain_progress(self.start, self.recent[0], snap)
        if got is None:  # file replaced or clock went back: this read is the new start
            self.start, self.recent = snap, deque([snap])
            got = drain_progress(snap, snap, snap)
            assert got is not None
        return got


class _View:
    """Rich progress bars on a terminal; plain lines or JSON lines otherwise."""

    def __init__(self, console: Console, as_json: bool) -> None:
        self.console = console
        self.as_json = as_json
        self.bars: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if console.is_terminal and not as_json:
            self.bars = Progress(
                TextColumn("{task.description:<18}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>14}"),
                TextColumn("{task.fields[eta]:>14}"),
                TimeElapsedColumn(),
                console=console,
            )

    def __enter__(self) -> _View:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def show(
        self,
        elapsed: float,
        groups: list[tuple[str, list[dict[str, Any]], dict[str, Any]]],
        progress: dict[str, DrainProgress | None],
    ) -> None:
        if self.as_json:
            print(
                json.dumps(
                    {"elapsed_s": round(elapsed, 3), "sites": [{**total, "brokers": rows} for _, rows, total in groups]}
                ),
                flush=True,
            )
        elif self.bars is None:
            for _, rows, total in groups:
                parts = [_plain(r) for r in ([total, *rows] if len(rows) > 1 else rows)]  # a lone broker is its site
                print(f"+{elapsed:.0f}s " + " | ".join(parts), flush=True)
        else:
            for _, rows, total in groups:
                for r in [*rows, total]:
                    self._bar(r["ref"], progress.get(r["ref"]), r.get("error"))

    def _bar(self, ref: str, p: DrainProgress | None, error: str | None) -> None:
        assert self.bars is not None
        if p is None:
            fields: dict[str, Any] = {"total": 0, "completed": 0, "rate": "", "eta": error or "no buffer"}
        else:
            fields = {"total": p.total, "completed": p.completed, "rate": _rate_text(p), "eta": _eta_text(p)}
        if ref not in self.tasks:
            self.tasks[ref] = self.bars.add_task(ref, **fields)
        else:
            self.bars.update(self.tasks[ref], **fields)


def _plain(r: dict[str, Any]) -> str:
    if "total" not in r:
        return f"{r['ref']} {r['error']}"
    pct = 100.0 * r["completed"] / r["total"] if r["total"] else 100.0
    rate = "-" if r["rate"] is None else f"{r['rate']:.1f}/s"
    if r["empty"] or r["stalled"]:
        left = "empty" if r["empty"] else "stalled"
    else:
        left = "-" if r["eta_s"] is None else _clock_text(r["eta_s"])
    return f"{r['ref']} {r['completed']}/{r['total']} ({pct:.0f}%) depth {r['depth']} {rate} eta {left}"


def watch(
    refs: list[Ref],
    read: Reader,
    *,
    period_s: float,
    until_empty: bool,
    timeout_s: float | None,
    console: Console,
    as_json: bool = False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh every ``period_s`` until interrupted, ``timeout_s`` passes, or (``until_empty``)
    every buffer is empty. The exit code: 0; with ``until_empty``, 1 on timeout, 130 on Ctrl-C."""
    try:
        return _loop(refs, read, period_s, until_empty, timeout_s, _View(console, as_json), clock, sleep)
    except KeyboardInterrupt:  # the usual way to end a plain --watch
        return 130 if until_empty else 0


def _loop(
    refs: list[Ref],
    read: Reader,
    period_s: float,
    until_empty: bool,
    timeout_s: float | None,
    view_: _View,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int:
    trackers = {ref: _Tracker() for ref in refs}
    sites = list(dict.fromkeys(site for site, _ in refs))
    t0 = clock()
    with view_ as view:
        while True:
            now = clock()
            progress: dict[str, DrainProgress | None] = {}
            groups = []
            all_empty = True
            for site in sites:
                rows, parts = [], []
                for ref in (r for r in refs if r[0] == site):
                    name = f"{ref[0]}/{ref[1]}"
                    got = read(ref, now)
                    if isinstance(got, FileSnapshot):
                        p = trackers[ref].add(got)
                        parts.append(p)
                        progress[name] = p
                        rows.append(progress_row(name, p))
                    else:
                        progress[name] = None
                        rows.append(progress_row(name, None, None if got is None else got.message))
                    all_empty = all_empty and rows[-1]["empty"]
                total_p = site_progress(parts)
                total = progress_row(f"{site} (total)", total_p)
                progress[total["ref"]] = total_p
                groups.append((site, rows, total))
            view.show(now - t0, groups, progress)
            if until_empty and all_empty:
                return 0
            if timeout_s is not None and now - t0 >= timeout_s:
                return 1 if until_empty else 0
            sleep(period_s)
