"""Process plumbing for ``benchmarks/run_bench.py``: brokers, clients, cleanup.

How it works
------------
Every process the benchmark starts goes through :func:`spawn` and is recorded;
:func:`stop_all` (registered with ``atexit`` and called from ``finally`` blocks,
so also on Ctrl-C and exceptions) terminates the survivors, then kills them.

* ``EdgemqTopology``: ``python -m edgemq broker cloud`` and ``... broker edge`` (one
  site, one broker) on free 127.0.0.1 ports, config built from the pydantic models.
* ``MosquittoTopology``: an edge Mosquitto bridged to a cloud Mosquitto at QoS 1
  (``connection`` / ``address`` / ``topic telemetry/# out 1`` in mosquitto.conf);
  with ``bridged=False`` a single Mosquitto, used to measure the load generator's
  own ceiling.
* Load generator: Debian's C clients. Publishers are ``mosquitto_pub -l`` reading
  lines (one line = one 100-byte message) from ``cat file`` (blast) or from a
  pacing thread here (fixed rate, send timestamp in the payload). Subscribers are
  ``mosquitto_sub -F '%U %p'``, which stamps each arrival (ns, CLOCK_REALTIME) and
  writes it to a file; the files are parsed after the run, so Python does no
  per-message work while a broker is measured.

Caveat found while building this: ``mosquitto_pub -l`` 2.0.11 disconnects at EOF
of stdin without waiting for queued QoS 1 messages, so stdin is kept open until
the subscriber has everything (``exec sleep`` after ``cat``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.config import ClusterConfig  # noqa: E402

HOST = "127.0.0.1"
PAYLOAD = 100  # bytes per message, the line without its newline
LINE = PAYLOAD + 1
SUB_LINE = 21 + LINE  # "%U " is 20 chars + space, then payload and newline
TOPIC_FILTER = "telemetry/#"
PROBE_TOPIC = "bench/probe/plant-1/t"
"""A light publisher's topic during overload: outside ``TOPIC_FILTER``, so the loaded subscribers'
counts and sequence numbers see none of it (and neither bridge forwards it)."""
READY_TOPIC = "bench/ready"

_PROCS: list[subprocess.Popen[bytes]] = []
_GROUPS: list[subprocess.Popen[bytes]] = []


# ---- processes ------------------------------------------------------------------------------
def spawn(
    args: list[str],
    *,
    log: Path | None = None,
    stdout: Any = None,
    stdin: Any = None,
    env: dict[str, str] | None = None,
    group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a process and remember it for :func:`stop_all`."""
    out = stdout
    fh = None
    if out is None and log is not None:
        fh = open(log, "ab")  # noqa: SIM115 - owned by the child
        out = fh
    p = subprocess.Popen(
        args,
        stdout=out if out is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if fh is not None else subprocess.DEVNULL,
        stdin=stdin,
        env={**os.environ, **(env or {})},
        start_new_session=group,
    )
    if fh is not None:
        fh.close()
    (_GROUPS if group else _PROCS).append(p)
    return p


def stop(p: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Terminate one process (its whole group if it leads one), then kill it if it lingers."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if p in _GROUPS:
                os.killpg(p.pid, signal.SIGTERM)
            else:
                p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if p in _GROUPS:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.kill()
            p.wait(timeout=5)
    if p in _GROUPS:
        # The group leader (sh) is gone; a child that handles SIGTERM itself (mosquitto_sub
        # does, and can hang disconnecting from a broker that is gone) must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
    if p.stdin is not None:
        with contextlib.suppress(OSError):
            p.stdin.close()
    for reg in (_PROCS, _GROUPS):
        if p in reg:
            reg.remove(p)


def stop_all() -> None:
    """Stop every process this benchmark started and that is still running."""
    for p in list(reversed(_GROUPS)) + list(reversed(_PROCS)):
        with contextlib.suppress(Exception):
            stop(p, timeout=5)


atexit.register(stop_all)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _sigterm)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return True
        time.sleep(0.02)
    return False


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 1e6


# ---- topologies -----------------------------------------------------------------------------
@dataclass
class Topology:
    """An edge broker bridged to a cloud broker; both local processes."""

    kind: str
    work: Path
    edge_port: int = field(default_factory=free_port)
    cloud_port: int = field(default_factory=free_port)
    edge: subprocess.Popen[bytes] | None = None
    cloud: subprocess.Popen[bytes] | None = None

    def edge_procs(self) -> list[psutil.Process]:
        return [psutil.Process(self.edge.pid)] if self.edge and self.edge.poll() is None else []

    def cloud_procs(self) -> list[psutil.Process]:
        return [psutil.Process(self.cloud.pid)] if self.cloud and self.cloud.poll() is None else []

    def start(self, cloud: bool = True) -> Topology:
        if cloud:
            self.start_cloud()
        self.start_edge()
        return self

    def start_cloud(self) -> None:
        raise NotImplementedError

    def start_edge(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        for p in (self.edge, self.cloud):
            if p is not None:
                stop(p)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_toml(cfg: ClusterConfig) -> str:
    """The cluster file for a one-site, one-broker config (same format as cluster.toml)."""
    data = cfg.model_dump(mode="json", exclude_none=True)

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"run_dir = {val(data['run_dir'])}"]
    for section in ("cloud", "bridge", "buffer"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {val(v)}" for k, v in data[section].items()]
    for site in data["sites"]:
        lines += ["[[sites]]", f"id = {val(site['id'])}"]
        for b in site["brokers"]:
            lines.append("[[sites.brokers]]")
            lines += [f"{k} = {val(v)}" for k, v in b.items()]
    return "\n".join(lines) + "\n"


@dataclass
class EdgemqTopology(Topology):
    """edgemq: one edge node (broker + SQLite buffer + bridge) and a cloud broker.

    ``cloud="amqtt"``: edgemq's embedded cloud broker (``python -m edgemq broker cloud``).
    ``cloud="mosquitto"``: Debian's Mosquitto as the cloud, the same cloud as in the
    Mosquitto-bridge topology, so the edge node is compared with Mosquitto's bridge alone.
    """

    log_level: str = "INFO"
    cloud_kind: str = "amqtt"
    protocol: str = "3.1.1"
    inflight: int | None = None  # the bridge's in-flight window (None: the config default)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        embedded = self.cloud_kind == "amqtt"
        cfg = ClusterConfig.model_validate(
            {
                "run_dir": str(self.work / "run"),
                "cloud": {"embedded": embedded, "host": HOST, "port": self.cloud_port, "protocol": self.protocol},
                "sites": [{"id": "plant-1", "brokers": [{"id": "a1", "host": HOST, "port": self.edge_port}]}],
                "bridge": {
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    **({"inflight": self.inflight} if self.inflight else {}),
                },
            }
        )
        self.config = self.work / "cluster.toml"
        self.config.write_text(cluster_toml(cfg))
        self.stats_file = self.work / "run" / "stats" / "plant-1.a1.json"

    def _edgemq(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        # The same per-client limits as the Mosquitto brokers of the comparison (MOSQ_COMMON;
        # Mosquitto's max_queued_bytes is unbounded by default, edgemq's 16 MiB):
        # with the defaults (a queue of 1,000) a QoS 1 subscriber that falls behind loses the
        # oldest messages, counted as dropped_out, and the figures would compare unlike setups.
        limits = json.dumps({"max_queued_messages": MOSQ_QUEUE, "max_inflight_messages": 100, "max_queued_bytes": 0})
        return spawn(
            [
                sys.executable,
                "-m",
                "edgemq",
                "broker",
                *args,
                "--config",
                str(self.config),
                "--log-level",
                self.log_level,
            ],
            log=self.work / f"{name}.log",
            env={"PYTHONUNBUFFERED": "1", "EDGEMQ_BROKER_LIMITS": limits},
        )

    def start_cloud(self) -> None:
        if self.cloud_kind == "mosquitto":
            conf = self.work / "cloud.conf"
            conf.write_text(f"listener {self.cloud_port} {HOST}\n" + MOSQ_COMMON.format(queue=MOSQ_QUEUE))
            exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            self.cloud = spawn([exe, "-c", str(conf)], log=self.work / "cloud.log")
            if not wait_port(self.cloud_port):
                raise RuntimeError("mosquitto cloud did not start")
            return
        self.cloud = self._edgemq("cloud", "cloud")
        if not wait_port(self.cloud_port):
            raise RuntimeError(f"edgemq cloud did not start: {self.work / 'cloud.log'}")

    def start_edge(self) -> None:
        self.edge = self._edgemq("edge", "edge", "--broker", "plant-1/a1")
        if not wait_port(self.edge_port):
            raise RuntimeError(f"edgemq edge did not start: {self.work / 'edge.log'}")

    def stats(self) -> dict[str, Any]:
        import json

        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.stats_file.read_text()))
        return {}


MOSQ_QUEUE = 2_000_000
MOSQ_COMMON = (
    "allow_anonymous true\npersistence false\nsys_interval 1\nmax_queued_messages {queue}\nmax_inflight_messages 100\n"
)


@dataclass
class MosquittoTopology(Topology):
    """Mosquitto: edge Mosquitto bridged (QoS 1) to a cloud Mosquitto; or one broker alone."""

    bridged: bool = True
    queue: int = 2_000_000
    #: ``persistence true`` on the edge (Mosquitto's default autosave_interval, 1800 s).
    persist_edge: bool = False

    def _conf(self, name: str, port: int, extra: str = "") -> Path:
        path = self.work / f"{name}.conf"
        common = MOSQ_COMMON.format(queue=self.queue)
        if name == "edge" and self.persist_edge:
            common = common.replace("persistence false", f"persistence true\npersistence_location {self.work}/")
        path.write_text(f"listener {port} {HOST}\n" + common + extra)
        return path

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def start(self, cloud: bool = True) -> Topology:
        if self.bridged and cloud:
            self.start_cloud()
        self.start_edge()
        return self

    def start_cloud(self) -> None:
        conf = self._conf("cloud", self.cloud_port)
        self.cloud = spawn([self.exe, "-c", str(conf)], log=self.work / "cloud.log")
        if not wait_port(self.cloud_port):
            raise RuntimeError("mosquitto cloud did not start")

    def start_edge(self) -> None:
        bridge = ""
        if self.bridged:
            bridge = (
                f"connection cloud\naddress {HOST}:{self.cloud_port}\ntopic telemetry/# out 1\n"
                "cleansession false\nrestart_timeout 1 2\nbridge_protocol_version mqttv311\n"
            )
        else:
            self.cloud_port = self.edge_port
        conf = self._conf("edge", self.edge_port, bridge)
        self.edge = spawn([self.exe, "-c", str(conf)], log=self.work / "edge.log")
        if not wait_port(self.edge_port):
            raise RuntimeError("mosquitto edge did not start")
        if not self.bridged:
            self.cloud = None


@dataclass
class EdgemqAloneTopology(EdgemqTopology):
    """edgemq's broker alone: ``edgemq broker cloud`` (amqtt with our broker layer; no buffer, no
    bridge), the subscriber on the same broker, to set beside stock amqtt's pass-through."""

    def start(self, cloud: bool = True) -> Topology:
        self.start_cloud()
        self.edge, self.cloud, self.edge_port = self.cloud, None, self.cloud_port
        return self


@dataclass
class StockAmqttTopology(Topology):
    """Stock amqtt 0.12.1 alone (``tests/protocol/stock_amqtt.py``: ``amqtt.broker.Broker``, none of
    our overrides), the subscriber on the same broker: the pass-through issue 9 compares against."""

    #: ``True``: amqtt's own ``amqtt`` command with its packaged ``default_broker.yaml`` (event and
    #: packet logger plugins, ``$SYS`` every 20 s), as a new user runs it, bound to 127.0.0.1.
    defaults: bool = False

    def start(self, cloud: bool = True) -> Topology:
        self.work.mkdir(parents=True, exist_ok=True)
        self.cloud_port = self.edge_port
        if self.defaults:
            import amqtt.scripts

            conf = (Path(amqtt.scripts.__file__).parent / "default_broker.yaml").read_text()
            assert "bind: 0.0.0.0:1883" in conf, "amqtt's default_broker.yaml changed"
            path = self.work / "amqtt-default.yaml"
            path.write_text(conf.replace("bind: 0.0.0.0:1883", f"bind: {HOST}:{self.edge_port}"))
            cmd = [str(Path(sys.executable).parent / "amqtt"), "-c", str(path)]
        else:
            cmd = [sys.executable, "-m", "tests.protocol.stock_amqtt", str(self.edge_port)]
        self.edge = spawn(cmd, log=self.work / "edge.log", env={"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        if not wait_port(self.edge_port):
            raise RuntimeError("stock amqtt did not start")
        return self


def make_topology(kind: str, work: Path, **kw: Any) -> Topology:
    if kind == "edgemq":
        return EdgemqTopology(kind, work, **kw)
    if kind == "edgemq-mosq":  # our edge node, Mosquitto as the cloud (same cloud as Mosquitto's bridge)
        return EdgemqTopology(kind, work, cloud_kind="mosquitto", **kw)
    if kind == "mosquitto":
        return MosquittoTopology(kind, work, **kw)
    if kind == "mosquitto-persist":
        return MosquittoTopology(kind, work, persist_edge=True, **kw)
    if kind == "loadgen":
        return MosquittoTopology(kind, work, bridged=False, **kw)
    if kind == "amqtt-stock":
        return StockAmqttTopology(kind, work, **kw)
    if kind == "edgemq-alone":
        return EdgemqAloneTopology(kind, work, **kw)
    if kind == "amqtt-default":
        return StockAmqttTopology(kind, work, defaults=True, **kw)
    raise ValueError(kind)


# ---- subscribers -----------------------------------------------------------------------------
class Sub:
    """``mosquitto_sub`` writing '<arrival ns> <payload>' per message to a file."""

    def __init__(
        self,
        work: Path,
        name: str,
        port: int,
        qos: int,
        *,
        retry: bool = False,
        ready: bool = True,
        topic: str = TOPIC_FILTER,
    ) -> None:
        self.path = work / f"sub-{name}.txt"
        self.port = port
        cid = f"bench-sub-{name}-{os.getpid()}"
        cmd = f"mosquitto_sub -h {HOST} -p {port} -q {qos} -i {cid} -t '{topic}' -t '{READY_TOPIC}' -F '%U %p'"
        if retry:  # the broker is not up yet: retry every 20 ms until it answers
            cmd = f"until {cmd}; do sleep 0.02; done"
        self.proc = spawn(["sh", "-c", f"exec > '{self.path}'; {cmd if retry else 'exec ' + cmd}"], group=True)
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            subprocess.run(
                ["mosquitto_pub", "-h", HOST, "-p", str(self.port), "-t", READY_TOPIC, "-m", "ready", "-q", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
            time.sleep(0.1)
            if self.path.exists() and b"ready" in self.path.read_bytes()[:4096]:
                return
        raise RuntimeError(f"subscriber on port {self.port} not ready")

    def count(self) -> int:
        """Telemetry messages received so far (by file size; lines have a fixed length)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return 0
        return max(0, (size - self._ready_bytes()) // SUB_LINE)

    def _ready_bytes(self) -> int:
        try:
            with open(self.path, "rb") as f:
                head = f.read(4096)
        except OSError:
            return 0
        return sum(len(line) + 1 for line in head.split(b"\n") if line.endswith(b" ready"))

    def close(self) -> None:
        stop(self.proc)

    def arrivals(self) -> list[tuple[int, int, int]]:
        """(arrival ns, seq, send ns) of every telemetry message, in arrival order."""
        out = []
        with open(self.path, "rb") as f:
            for line in f:
                parts = line.split(b" ", 3)
                if len(parts) < 3 or parts[1] == b"ready":
                    continue
                with contextlib.suppress(ValueError):
                    sec, _, frac = parts[0].partition(b".")
                    out.append((int(sec) * 1_000_000_000 + int(frac.ljust(9, b"0")[:9]), int(parts[1]), int(parts[2])))
        return out


class Accepted:
    """The edge broker's own count of PUBLISH packets received, sampled over time.

    edgemq: ``messages_in`` from the edge node's stats file (written every second).
    Mosquitto: ``$SYS/broker/publish/messages/received`` (``sys_interval 1``).
    Both are updated about once a second, so a rate over a few seconds is +-1 s / window.
    """

    def __init__(self, topo: Topology, work: Path) -> None:
        self.topo = topo
        self.samples: list[tuple[float, int]] = []
        self.proc = None
        self.path = work / "sys-received.txt"
        if isinstance(topo, MosquittoTopology):
            cmd = f"mosquitto_sub -h {HOST} -p {topo.edge_port} -t '$SYS/broker/publish/messages/received' -F '%U %p'"
            self.proc = spawn(["sh", "-c", f"exec > '{self.path}'; {cmd}"], group=True)

    def sample(self) -> None:
        if self.proc is None:
            st = self.topo.stats()
            if "messages_in" in st:
                pt = (float(st["ts"]), int(st["messages_in"]))
                if not self.samples or self.samples[-1] != pt:
                    self.samples.append(pt)

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            with contextlib.suppress(OSError):
                for ln in self.path.read_text().splitlines():
                    t, _, v = ln.partition(" ")
                    with contextlib.suppress(ValueError):
                        self.samples.append((float(t), int(v)))

    def total(self) -> int | None:
        """Messages the broker counted over the whole run."""
        vals = [v for _, v in self.samples]
        return max(vals) - min(vals) if len(vals) >= 2 else None

    def rate(self, window_s: float) -> float | None:
        """Counter slope from its first increase over ``window_s`` (or until it stops growing)."""
        pts = sorted(set(self.samples))
        if len(pts) < 2:
            return None
        base = pts[0][1]
        start = next((i for i, (_, v) in enumerate(pts) if v > base), None)
        if start is None:
            return 0.0
        start = max(0, start - 1)
        t0, v0 = pts[start]
        inside = [(t, v) for t, v in pts[start:] if t <= t0 + window_s + 1.0]
        top = max(v for _, v in inside)
        t1 = min(t for t, v in inside if v == top)
        return (top - v0) / (t1 - t0) if t1 > t0 else None


# ---- publishers ------------------------------------------------------------------------------
def line(seq: int, send_ns: int = 0) -> bytes:
    head = b"%010d %019d " % (seq, send_ns)
    return head + b"x" * (PAYLOAD - len(head)) + b"\n"


def topic_of(i: int) -> str:
    return f"telemetry/plant-1/dev-{i:03d}/t"


class Blast:
    """``n_pubs`` ``mosquitto_pub -l`` processes, each sending its own file as fast as it can."""

    def __init__(self, files: list[Path], port: int, qos: int, hold_s: float) -> None:
        self.pubs: list[subprocess.Popen[bytes]] = []
        for i, path in enumerate(files):
            cmd = (
                f"(cat '{path}'; exec sleep {hold_s:.0f}) | "
                f"mosquitto_pub -h {HOST} -p {port} -q {qos} -l -i bench-pub-{i}-{os.getpid()} -t {topic_of(i)}"
            )
            self.pubs.append(spawn(["sh", "-c", cmd], group=True))

    def close(self) -> None:
        for p in self.pubs:
            stop(p, timeout=5)


def blast_files(work: Path, n_pubs: int, per_pub: int) -> list[Path]:
    """One file per publisher, seqs unique across publishers (publisher i owns i*per_pub...)."""
    files = []
    for i in range(n_pubs):
        path = work / f"pub-{n_pubs}-{per_pub}-{i}.txt"
        if not path.exists():
            base = i * per_pub
            path.write_bytes(b"".join(line(base + k) for k in range(per_pub)))
        files.append(path)
    return files


class Paced:
    """One ``mosquitto_pub -l`` fed at a fixed rate by a thread; the send time is in each payload."""

    def __init__(
        self, port: int, qos: int, rate: float, duration_s: float, *, pub_index: int = 0, topic: str | None = None
    ) -> None:
        self.rate, self.duration = rate, duration_s
        self.proc = spawn(
            [
                "mosquitto_pub",
                "-h",
                HOST,
                "-p",
                str(port),
                "-q",
                str(qos),
                "-l",
                "-i",
                f"bench-paced-{os.getpid()}-{pub_index}",
                "-t",
                topic or topic_of(pub_index),
            ],
            stdin=subprocess.PIPE,
        )
        self.sent = 0
        self.behind_max = 0
        self.blocked_s = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="paced-publisher", daemon=True)
        self.started = time.time()
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stdin is not None
        out = self.proc.stdin
        t0 = time.perf_counter()
        total = int(self.rate * self.duration)
        try:
            while self.sent < total:
                now = time.perf_counter()
                due = min(total, int((now - t0) * self.rate) + 1)
                if due > self.sent:
                    ns = time.time_ns()
                    out.write(b"".join(line(s, ns) for s in range(self.sent, due)))
                    out.flush()
                    spent = time.perf_counter() - now
                    if spent > 0.005:  # the pipe was full: the client (or broker) pushed back
                        self.blocked_s += spent
                    self.sent = due
                    self.behind_max = max(self.behind_max, int((time.perf_counter() - t0) * self.rate) - due)
                time.sleep(0.0005)
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            self.elapsed = time.perf_counter() - t0
            self.done.set()

    def close(self) -> None:
        stop(self.proc, timeout=5)


# ---- idle connections -----------------------------------------------------------------------
async def open_idle(port: int, n: int, concurrency: int = 200) -> tuple[list[Any], float, int]:
    """Open ``n`` MQTT 3.1.1 connections (keep-alive 0: no pings) and return them still open."""
    import asyncio

    sem = asyncio.Semaphore(concurrency)
    conns: list[Any] = []
    failed = 0

    def connect_packet(cid: bytes) -> bytes:
        var = b"\x00\x04MQTT\x04\x02\x00\x00"  # level 4, clean session, keep-alive 0
        body = var + len(cid).to_bytes(2, "big") + cid
        return bytes([0x10, len(body)]) + body

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
                w.write(connect_packet(b"idle-%06d" % i))
                ack = await asyncio.wait_for(r.readexactly(4), 30)
                if ack[0] != 0x20 or ack[3] != 0:
                    raise OSError(f"CONNACK {ack!r}")
                conns.append((r, w))
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return conns, time.perf_counter() - t0, failed


# ---- machine --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    mosq = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
        mosq = out.splitlines()[0].replace("mosquitto version ", "")
    git = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "broker", "bridge", "edgemq"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        files = [f for f in dirty if "/" in f]
        git = f"commit {head}" + (f" plus uncommitted changes in {', '.join(files)}" if files else "")
    return {
        "git": git,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mosquitto": mosq,
        "mem_total_gb": round(psutil.virtual_memory().total / 1e9, 1),
    }


def new_workdir(root: Path | None = None) -> Path:
    return Path(tempfile.mkdtemp(prefix="edgemq-bench-", dir=root))
