"""Where an idle connection's memory goes in ``EdgeBroker``: tracemalloc and tasks per connection.

The broker runs in this process (``EdgeBroker`` with the cloud broker's plugins: the
default ``SecurityConfig``, anonymous access, our auth and ACL plugins); the clients run in
a child process (raw sockets: CONNECT, CONNACK read, then silent), so nothing of theirs is
traced here. After a warm-up of ``--warm`` connections, ``n`` more connect; the difference
of two tracemalloc snapshots (after ``gc.collect``) divided by ``n`` is the traced Python
memory per idle connection, and ``len(asyncio.all_tasks())`` before and after gives the
tasks per connection.

    .venv/bin/python benchmarks/idle_probe.py [-n 1000] [--persistent] [--keepalive 60] [--top 25]
    .venv/bin/python benchmarks/idle_probe.py -n 10000 --rss       # RSS only, tracemalloc off

Allocations are grouped two ways: by the line that allocated (innermost frame), and by
the innermost frame in amqtt or edgemq's ``broker/`` (who asked for it). ``measure`` is
also used by ``tests/integration/test_idle_memory.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import socket
import sys
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from broker.config import SecurityConfig  # noqa: E402
from broker.limits import BrokerLimits  # noqa: E402
from broker.security import security_plugins  # noqa: E402
from broker.server import EdgeBroker, amqtt_config  # noqa: E402

# The client side, run by ``sys.executable -c``: open N raw MQTT connections
# (``conformance_bench.open_idle``), print "ready" once every CONNACK is in, keep them open
# until stdin closes.
_CLIENTS = r"""
import sys
sys.path[:0] = [sys.argv[6], sys.argv[6] + "/benchmarks"]
from conformance_bench import open_idle
port, n, clean, keepalive, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5]
socks = open_idle(port, n, tag, 200, clean=clean, keepalive=keepalive)
print("ready", flush=True)
sys.stdin.read()
"""

_OURS = str(ROOT / "broker") + os.sep


@dataclass
class ProbeResult:
    n: int
    clean: bool
    keepalive: int
    traced_per_conn: float  # bytes of Python allocations per idle connection (tracemalloc)
    tasks_per_conn: float
    rss_per_conn: float  # bytes; inflated by tracemalloc's own bookkeeping when tracing
    by_line: list[tuple[str, float]] = field(default_factory=list)  # (file:line, bytes/conn)
    by_caller: list[tuple[str, float]] = field(default_factory=list)
    by_file: list[tuple[str, float]] = field(default_factory=list)
    task_names: list[tuple[str, float]] = field(default_factory=list)  # coroutine name, tasks/conn
    offline: bool = False

    def report(self, top: int = 25) -> str:
        kind = "clean session" if self.clean else "persistent session"
        what = "sessions of disconnected clients" if self.offline else "idle connections"
        out = [
            f"{self.n} {what} ({kind}, keep-alive {self.keepalive}):",
            f"  traced Python memory {self.traced_per_conn / 1024:.2f} KiB/conn, "
            f"tasks {self.tasks_per_conn:.2f}/conn, RSS {self.rss_per_conn / 1024:.2f} KiB/conn",
        ]
        for title, rows in (
            ("by file", self.by_file),
            ("by allocating line", self.by_line),
            ("by caller in amqtt or broker/", self.by_caller),
        ):
            if rows:
                out.append(f"  -- {title}")
                out += [f"  {v:8.0f} B/conn  {k}" for k, v in rows[:top]]
        if self.task_names:
            out.append("  -- tasks by coroutine")
            out += [f"  {v:8.2f} /conn  {k}" for k, v in self.task_names]
        return "\n".join(out)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", str(ROOT) + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _caller(tb: tracemalloc.Traceback) -> str:
    # tracemalloc tracebacks run from the oldest frame to the most recent.
    for frame in reversed(tb):
        if frame.filename.startswith(_OURS) or "/amqtt/" in frame.filename:
            return f"{_short(frame.filename)}:{frame.lineno}"
    return f"{_short(tb[-1].filename)}:{tb[-1].lineno}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _open(port: int, n: int, clean: bool, keepalive: int, tag: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLIENTS,
        str(port),
        str(n),
        "1" if clean else "0",
        str(keepalive),
        tag,
        str(ROOT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60 + n / 50)
    if line.strip() != b"ready":
        await _close(proc)
        raise RuntimeError(f"client process failed ({proc.returncode}): {line!r}")
    return proc


async def _close(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _settle(broker: EdgeBroker, want: int) -> None:
    """Until the broker has ``want`` sessions connected (CONNACK is sent before the client loop starts)."""
    for _ in range(600):
        if broker.connected_clients() >= want:
            break
        await asyncio.sleep(0.05)
    for _ in range(5):  # a few loop turns for the handlers to reach their idle state
        await asyncio.sleep(0.05)


async def measure_async(
    n: int, *, clean: bool = True, keepalive: int = 0, warm: int = 50, trace: bool = True, offline: bool = False
) -> ProbeResult:
    port = _free_port()
    config = amqtt_config("127.0.0.1", port)
    config["plugins"] = security_plugins(SecurityConfig(), site=None)
    broker = EdgeBroker(config, limits=BrokerLimits(max_connections=n + warm + 100))
    await broker.start()
    me = psutil.Process()
    clients: list[asyncio.subprocess.Process] = []
    try:
        clients.append(await _open(port, warm, clean, keepalive, "warm"))
        await _settle(broker, warm)
        gc.collect()
        tasks0 = {id(t) for t in asyncio.all_tasks()}
        if trace:
            tracemalloc.start(16)
        snap0 = tracemalloc.take_snapshot() if trace else None
        rss0 = me.memory_info().rss
        clients.append(await _open(port, n, clean, keepalive, "idle"))
        await _settle(broker, warm + n)
        if offline:  # the n clients send DISCONNECT and close; what do their sessions keep?
            await _close(clients.pop())
            for _ in range(600):
                if broker.connected_clients() <= warm:
                    break
                await asyncio.sleep(0.05)
            await _settle(broker, warm)
        gc.collect()
        snap1 = tracemalloc.take_snapshot() if trace else None
        rss1 = me.memory_info().rss
        new_tasks = [t for t in asyncio.all_tasks() if id(t) not in tasks0]
        names: Counter[str] = Counter()
        for t in new_tasks:
            coro: Any = t.get_coro()
            names[getattr(coro, "__qualname__", repr(coro))] += 1
        result = ProbeResult(
            n,
            clean,
            keepalive,
            0.0,
            len(new_tasks) / n,
            (rss1 - rss0) / n,
            task_names=[(k, v / n) for k, v in names.most_common()],
            offline=offline,
        )
        if snap0 is not None and snap1 is not None:
            tracemalloc.stop()
            diff = snap1.compare_to(snap0, "traceback")
            result.traced_per_conn = sum(s.size_diff for s in diff) / n
            by_line: Counter[str] = Counter()
            by_caller: Counter[str] = Counter()
            by_file: Counter[str] = Counter()
            for s in diff:
                tb = s.traceback
                by_line[f"{_short(tb[-1].filename)}:{tb[-1].lineno}"] += s.size_diff
                by_file[_short(tb[-1].filename)] += s.size_diff
                by_caller[_caller(tb)] += s.size_diff
            result.by_line = [(k, v / n) for k, v in by_line.most_common()]
            result.by_caller = [(k, v / n) for k, v in by_caller.most_common()]
            result.by_file = [(k, v / n) for k, v in by_file.most_common()]
        return result
    finally:
        for c in clients:
            await _close(c)
        await broker.shutdown()


def measure(n: int, **kwargs: Any) -> ProbeResult:
    return asyncio.run(measure_async(n, **kwargs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="idle connections measured (after the warm-up)")
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--persistent", action="store_true", help="clean session off")
    ap.add_argument("--keepalive", type=int, default=0)
    ap.add_argument(
        "--offline",
        action="store_true",
        help="measure after the n clients disconnected (what persistent sessions keep)",
    )
    ap.add_argument("--rss", action="store_true", help="no tracemalloc: RSS and tasks only")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    r = measure(
        args.n,
        clean=not args.persistent,
        keepalive=args.keepalive,
        warm=args.warm,
        trace=not args.rss,
        offline=args.offline,
    )
    print(r.report(args.top))


if __name__ == "__main__":
    main()
