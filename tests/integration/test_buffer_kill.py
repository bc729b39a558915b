"""kill -9 mid-append: every seq whose ``await append`` returned survives, in order, balanced.

A child process appends through the real ``Store`` from 20 concurrent producers
and prints each seq once its append has resolved (that is, committed). The parent
SIGKILLs it mid-stream, reopens the file, and checks every printed seq.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.buffer import Buffer, Record

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, sys
from bridge.buffer import Record
from bridge.store import Store

async def main(path: str, durability: str) -> None:
    async with Store.open(path, max_messages=10**9, max_bytes=10**12, durability=durability) as s:
        async def producer(dev: str) -> None:
            i = 0
            while True:
                seq = await s.append(Record(f"telemetry/s/{dev}/t", b"%d" % i, device=dev))
                sys.stdout.write(f"{seq} {dev} {i}\n")
                sys.stdout.flush()
                i += 1
        await asyncio.gather(*(producer(f"d{k}") for k in range(20)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["os", "relaxed"])
def test_sigkill_mid_append_loses_nothing_committed(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "buf.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), durability],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        for line in child.stdout:
            lines.append(line)
            if len(lines) >= 3000:
                break
        assert len(lines) >= 3000, child.stderr.read() if child.stderr else ""
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, err
    lines += rest.splitlines()  # printed before the kill, so committed too
    printed = [(int(seq), dev, int(i)) for seq, dev, i in (ln.split() for ln in lines if ln.strip())]

    buf = Buffer.open(path, max_messages=10**9, max_bytes=10**12)
    try:
        assert buf.recovered_from is None
        rows = {m.seq: m for m in buf.read(0, 10**7, now=0.0)}
        missing = [seq for seq, _, _ in printed if seq not in rows]
        assert not missing, f"{len(missing)} committed seqs lost, e.g. {missing[:5]}"
        for seq, dev, i in printed:
            assert (rows[seq].device, rows[seq].payload) == (dev, b"%d" % i)
        # Per-device order: seq order is production order for every device.
        by_device: dict[str, list[int]] = {}
        for m in sorted(rows.values(), key=lambda m: m.seq):
            by_device.setdefault(m.device, []).append(int(m.payload))
        for dev, counters in by_device.items():
            assert counters == list(range(len(counters))), dev
        s = buf.statistics(0.0)
        assert s.accepted == s.forwarded + sum(s.dropped.values()) + s.depth_messages
        assert s.depth_messages == len(rows) >= len(printed)
        (new_seq,) = buf.append_many([Record("t/x", b"after")], now=0.0).seqs
        assert new_seq is not None and new_seq > max(rows)
    finally:
        buf.close()
