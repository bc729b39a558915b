"""``make bench-tls``: what TLS costs, for edgemq's edge broker and for Mosquitto, in one run.

For each broker (edgemq's edge node, Debian's Mosquitto), with the same certificates
(a CA and a server certificate for 127.0.0.1 generated with trustme), plaintext vs TLS:

  connect  connection set-up rate: N sequential CONNECT -> CONNACK -> DISCONNECT from one
           thread, and the same from 8 threads at once (TCP + TLS handshake + MQTT CONNECT);
           broker CPU per connection from psutil
  qos1     QoS 1 throughput: one ``mosquitto_pub -l -q 1`` sends M 100-byte messages as fast
           as the broker acknowledges them (wall time until it exits: every PUBACK received);
           broker CPU per 1,000 messages
  password TLS + username/password, each connection a different user (first login)

Anonymous clients are allowed (only TLS differs in connect/qos1); the topic
(``bench/tls``) is outside the bridge's uplink rules, so edgemq's number is its broker
path without the SQLite buffer. Fresh broker processes per repetition, the two brokers
alternate, medians of ``--reps``. The machine is shared: the load average before and
after is recorded. Writes benchmarks/results/tls.json and the ``<!-- tls:begin -->``
section at the end of BENCHMARKS.md.

Run: ``.venv/bin/python benchmarks/tls_bench.py [--reps 3] [--connects 200] [--messages 20000] [--no-report]``
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import HOST, free_port, machine, new_workdir, spawn, stop, wait_port

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS_MD = harness.ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- tls:begin -->", "<!-- tls:end -->"
THREADS = 8
TOPIC = "bench/tls"


class Certs:
    """A throwaway CA and a server certificate for 127.0.0.1 (trustme), as files."""

    def __init__(self, work: Path) -> None:
        ca = trustme.CA()
        server = ca.issue_cert(HOST, "localhost")
        self.ca, self.cert, self.key = work / "ca.pem", work / "server.pem", work / "server.key"
        ca.cert_pem.write_to_path(str(self.ca))
        server.private_key_pem.write_to_path(str(self.key))
        server.cert_chain_pems[0].write_to_path(str(self.cert))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


class Users:
    """``n`` users with random passwords, as edgemq's credentials file (Argon2id, the real parameters)
    and as a Mosquitto password file (``mosquitto_passwd -U``: its default PBKDF2-SHA512)."""

    def __init__(self, work: Path, n: int) -> None:
        from broker.credentials import CredentialStore

        self.passwords = {f"user-{i:04d}": secrets.token_urlsafe(18) for i in range(n)}
        self.edgemq = work / "users.json"
        store = CredentialStore(self.edgemq)
        for name, pw in self.passwords.items():  # one file write per user; fine for a few hundred
            store.add(name, "demo", password=pw)
        self.mosquitto = work / "mosquitto.passwd"
        self.mosquitto.write_text("".join(f"{u}:{p}\n" for u, p in self.passwords.items()))
        subprocess.run(["mosquitto_passwd", "-U", str(self.mosquitto)], check=True, capture_output=True)


class Broker:
    """One broker process listening in plaintext on ``port`` and with TLS on ``tls_port``.

    Anonymous clients are allowed; a client that sends a username is checked against ``users``.
    """

    def __init__(self, kind: str, work: Path, certs: Certs, users: Users) -> None:
        self.kind, self.work, self.certs, self.users = kind, work, certs, users
        self.port, self.tls_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            conf = self.work / "mosquitto.conf"
            conf.write_text(
                # Started as root, mosquitto drops to user 'mosquitto', who cannot read the private
                # work directory; 'user' is ignored when not started as root.
                f"user {getpass.getuser()}\n"
                # Without it Mosquitto's CONNACK after a TLS 1.3 handshake waits ~40 ms for a delayed ACK
                # (Nagle behind the session tickets): 22 connects/s sequential instead of hundreds.
                "set_tcp_nodelay true\n"
                "allow_anonymous true\npersistence false\nmax_inflight_messages 100\n"
                f"password_file {self.users.mosquitto}\n"
                f"listener {self.port} {HOST}\n"
                f"listener {self.tls_port} {HOST}\n"
                f"cafile {self.certs.ca}\ncertfile {self.certs.cert}\nkeyfile {self.certs.key}\n"
            )
            self.proc = spawn(["mosquitto", "-c", str(conf)], log=self.work / "mosquitto.log")
        else:
            conf = self.work / "cluster.toml"
            conf.write_text(
                f'run_dir = "{self.work / "run"}"\n'
                f'[security]\ncredentials_file = "{self.users.edgemq}"\n'
                f'[cloud]\nembedded = false\nhost = "{HOST}"\nport = {free_port()}\n'
                f'[security.tls]\ncert_file = "{self.certs.cert}"\nkey_file = "{self.certs.key}"\n'
                f'[[sites]]\nid = "plant-1"\n[[sites.brokers]]\nid = "a1"\nport = {self.port}\n'
                f"tls_port = {self.tls_port}\n"
            )
            self.proc = spawn(
                [
                    sys.executable,
                    "-m",
                    "edgemq",
                    "broker",
                    "edge",
                    "--config",
                    str(conf),
                    "--broker",
                    "plant-1/a1",
                    "--log-level",
                    "WARNING",
                ],
                log=self.work / "edge.log",
                env={"EDGEMQ_METRICS_PORT": "-1"},
            )
        if not (wait_port(self.port) and wait_port(self.tls_port)):
            raise RuntimeError(f"{self.kind} did not start; see {self.work}")

    def cpu(self) -> float:
        assert self.proc is not None
        return harness.cpu_seconds([psutil.Process(self.proc.pid)])

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def _connect_packet(client_id: str, login: tuple[str, str] | None = None) -> bytes:
    def utf8(v: str) -> bytes:
        return len(v.encode()).to_bytes(2, "big") + v.encode()

    flags, payload = 0x02, utf8(client_id)
    if login is not None:
        flags |= 0xC0
        payload += utf8(login[0]) + utf8(login[1])
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + payload
    assert len(body) < 128
    return b"\x10" + bytes([len(body)]) + body


def one_connect(port: int, ctx: ssl.SSLContext | None, client_id: str, login: tuple[str, str] | None = None) -> None:
    """TCP (+ TLS handshake) + CONNECT -> CONNACK 0 -> DISCONNECT; raises if refused."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        # Without it the CONNECT written right after the handshake waits for a delayed ACK (~40 ms).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ctx.wrap_socket(raw, server_hostname=HOST) if ctx is not None else raw
        sock.sendall(_connect_packet(client_id, login))
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                raise ConnectionError("closed before CONNACK")
            data += chunk
        if data[0] != 0x20 or data[3] != 0:
            raise ConnectionError(f"CONNACK {data!r}")
        sock.sendall(b"\xe0\x00")


def connect_rate(broker: Broker, tls: bool, n: int, threads: int, *, passwords: bool = False) -> dict[str, float]:
    """Connections per second (n in total, from ``threads`` threads) and broker CPU per connection.

    ``passwords``: each connection logs in as a different user (first login of each: no cache).
    """
    port = broker.tls_port if tls else broker.port
    ctx = broker.certs.client_context() if tls else None
    errors: list[BaseException] = []
    per = max(1, n // threads)
    logins = list(broker.users.passwords.items())
    assert not passwords or len(logins) >= per * threads

    def worker(t: int) -> None:
        try:
            for i in range(per):
                login = logins[t * per + i] if passwords else None
                # A client id belongs to the first principal that used it (docs/security.md).
                prefix = "bench-pw" if passwords else "bench"
                one_connect(port, ctx, f"{prefix}-{os.getpid()}-{t}-{i}", login)
        except BaseException as exc:
            errors.append(exc)

    one_connect(port, ctx, "bench-warm-up")
    cpu0, t0 = broker.cpu(), time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed, cpu = time.perf_counter() - t0, broker.cpu() - cpu0
    if errors:
        raise RuntimeError(f"{broker.kind} connect failed: {errors[0]!r}")
    total = per * threads
    return {"connects_per_s": total / elapsed, "broker_cpu_ms_per_connect": 1000 * cpu / total}


def qos1_throughput(broker: Broker, tls: bool, messages: int, work: Path) -> dict[str, float]:
    """Messages per second acknowledged by the broker, one ``mosquitto_pub -l -q 1``, 100-byte payloads."""
    lines = work / f"lines-{messages}.txt"
    if not lines.exists():
        lines.write_bytes(b"".join(harness.line(i) for i in range(messages)))
    port = broker.tls_port if tls else broker.port
    cmd = ["mosquitto_pub", "-h", HOST, "-p", str(port), "-q", "1", "-l", "-t", TOPIC, "-i", f"bench-pub-{os.getpid()}"]
    if tls:
        cmd += ["--cafile", str(broker.certs.ca)]
    cpu0, t0 = broker.cpu(), time.perf_counter()
    with lines.open("rb") as stdin:
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=600, check=False)
    elapsed, cpu = time.perf_counter() - t0, broker.cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"mosquitto_pub against {broker.kind} failed: {proc.stderr.decode(errors='replace')}")
    return {"msgs_per_s": messages / elapsed, "broker_cpu_ms_per_1k": 1000 * cpu / messages * 1000}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = new_workdir()
    certs = Certs(work)
    say(f"creating {args.connects} users (Argon2id for edgemq, PBKDF2 for Mosquitto) ...")
    users = Users(work, args.connects)
    load_before = os.getloadavg()
    records: list[dict[str, Any]] = []
    kinds = ["edgemq", "mosquitto"]
    for rep in range(args.reps):
        for kind in kinds if rep % 2 == 0 else list(reversed(kinds)):
            broker = Broker(kind, work / f"{kind}-{rep}", certs, users)
            broker.start()
            try:
                for tls in (False, True):
                    rec: dict[str, Any] = {"kind": kind, "tls": tls, "rep": rep, "load1": os.getloadavg()[0]}
                    rec["sequential"] = connect_rate(broker, tls, args.connects, 1)
                    rec["parallel"] = connect_rate(broker, tls, args.connects, THREADS)
                    rec["qos1"] = qos1_throughput(broker, tls, args.messages, work)
                    if tls:
                        rec["password"] = connect_rate(broker, tls, args.connects, THREADS, passwords=True)
                    records.append(rec)
                    say(
                        f"rep {rep} {kind:<9} tls={tls!s:<5} seq {rec['sequential']['connects_per_s']:7.1f}/s  "
                        f"par {rec['parallel']['connects_per_s']:7.1f}/s  qos1 {rec['qos1']['msgs_per_s']:8.0f}/s"
                    )
            finally:
                broker.stop()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "params": {
            "reps": args.reps,
            "connects": args.connects,
            "threads": THREADS,
            "messages": args.messages,
            "payload_bytes": harness.PAYLOAD,
        },
        "records": records,
        "workdir": str(work) if args.keep else None,
    }


def say(msg: str) -> None:
    print(msg, flush=True)


def median(data: dict[str, Any], kind: str, tls: bool, pick: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(pick(r) for r in data["records"] if r["kind"] == kind and r["tls"] == tls)


def section(data: dict[str, Any]) -> str:
    p, m = data["params"], data["machine"]
    metrics: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
        ("connects/s, sequential", lambda r: r["sequential"]["connects_per_s"], "{:,.0f}"),
        (f"connects/s, {p['threads']} threads", lambda r: r["parallel"]["connects_per_s"], "{:,.0f}"),
        ("broker CPU ms per connect (threads)", lambda r: r["parallel"]["broker_cpu_ms_per_connect"], "{:.3f}"),
        ("QoS 1 msg/s (one publisher)", lambda r: r["qos1"]["msgs_per_s"], "{:,.0f}"),
        ("broker CPU ms per 1k QoS 1 msgs", lambda r: r["qos1"]["broker_cpu_ms_per_1k"], "{:.0f}"),
    ]
    pw_rows = []
    for kind in ("edgemq", "mosquitto"):
        pw = [r["password"] for r in data["records"] if r["kind"] == kind and "password" in r]
        if pw:
            pw_rows.append(
                (
                    kind,
                    statistics.median(x["connects_per_s"] for x in pw),
                    statistics.median(x["broker_cpu_ms_per_connect"] for x in pw),
                )
            )
    rows = [
        "| metric | edgemq plain | edgemq TLS | TLS/plain | Mosquitto plain | Mosquitto TLS | TLS/plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for title, pick, fmt in metrics:
        cells = [title]
        for kind in ("edgemq", "mosquitto"):
            plain, tls = median(data, kind, False, pick), median(data, kind, True, pick)
            cells += [fmt.format(plain), fmt.format(tls), f"{tls / plain:.2f}×" if plain else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    if pw_rows:
        rows += [
            "",
            f"TLS + a password check, {p['threads']} threads, each connection a different user (its first "
            "login: no cache):",
            "",
            "| broker | connects/s | broker CPU ms per connect |",
            "| --- | ---: | ---: |",
        ]
        rows += [f"| {kind} | {rate_:,.0f} | {cpu_:.2f} |" for kind, rate_, cpu_ in pw_rows]
    loads = [r["load1"] for r in data["records"]]

    def cpu(kind: str, tls: bool) -> float:
        return median(data, kind, tls, lambda r: r["parallel"]["broker_cpu_ms_per_connect"])

    def rate(kind: str, tls: bool) -> float:
        return median(data, kind, tls, lambda r: r["qos1"]["msgs_per_s"])

    reading = (
        f"Reading: a TLS handshake adds about {cpu('edgemq', True) - cpu('edgemq', False):.1f} ms of broker CPU per "
        f"connection to edgemq (amqtt on asyncio's ssl) and {cpu('mosquitto', True) - cpu('mosquitto', False):.1f} ms "
        "to Mosquitto. The password check costs far more than the handshake for edgemq: Argon2id (19 MiB, t=2) "
        "is deliberately slow, paid once per user per broker process (then a keyed-digest cache), whereas "
        "Mosquitto 2.0's password file (PBKDF2-SHA512, 101 iterations) is ~40× cheaper to check, and to "
        "brute-force if the file leaks; a reconnect storm of N "
        "devices after a broker restart costs edgemq about N × the per-connect CPU of the second table. "
        "With TLS the connect rates of both "
        "brokers are also bounded by the client (one Python process doing every handshake on the same 2 CPUs), "
        "so compare the CPU rows more than the rate rows. QoS 1 throughput with TLS is "
        f"{rate('edgemq', True) / rate('edgemq', False):.0%} of plaintext for edgemq and "
        f"{rate('mosquitto', True) / rate('mosquitto', False):.0%} for Mosquitto (each 100-byte PUBLISH and PUBACK "
        "becomes its own TLS record), while Mosquitto stays about "
        f"{rate('mosquitto', True) / rate('edgemq', True):.0f}× faster than edgemq either way. The machine was "
        f"shared (1-min load {min(loads):.1f}–{max(loads):.1f} on {data['machine']['nproc']} CPUs): absolute figures "
        "vary between repetitions by up to 2×; the ratios within one repetition are steadier (raw records in the "
        "JSON)."
    )
    lb, la = data["load_before"], data["load_after"]
    return "\n".join(
        [
            BEGIN,
            "## TLS: connection set-up and QoS 1 throughput, TLS on vs off (edgemq edge broker and Mosquitto)",
            "",
            "`make bench-tls` (benchmarks/tls_bench.py). Same machine, same run, same certificates (a trustme CA and "
            f"an ECDSA server certificate for 127.0.0.1); medians of {p['reps']} repetitions, fresh broker processes "
            "each, the two brokers alternating. In the first table both brokers take anonymous clients, so only TLS "
            "differs. Connect: "
            f"{p['connects']} × (TCP, TLS handshake if on, CONNECT → CONNACK 0 → DISCONNECT) from one thread, then "
            f"from {p['threads']} threads at once (client side Python `ssl`, the same for both brokers). QoS 1: one "
            f"`mosquitto_pub -l -q 1` sending {p['messages']:,} {p['payload_bytes']}-byte messages to `{TOPIC}` "
            "(outside the uplink rules: edgemq's broker path without the SQLite buffer), timed until it exits with "
            "every PUBACK in. Broker CPU from psutil (user + system of the broker process). Mosquitto runs with "
            "`set_tcp_nodelay true`: with its default (false) its CONNACK after a TLS 1.3 handshake waits for the "
            "client's delayed ACK, "
            "~42 ms per connection (measured: 22 connects/s sequential); asyncio sets TCP_NODELAY itself, so edgemq "
            "does not have that problem.",
            "",
            *rows,
            "",
            reading,
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, Mosquitto {m['mosquitto']}, "
            f"{m['git']}. Shared machine: load average (1/5/15 min) {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} before, "
            f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} after; 1-min load at each case {min(loads):.2f}–{max(loads):.2f}. "
            "Raw records: benchmarks/results/tls.json.",
            END,
        ]
    )


def write_section(text: str) -> None:
    md = BENCHMARKS_MD.read_text()
    if BEGIN in md and END in md:
        head, rest = md.split(BEGIN, 1)
        md = head + text + rest.split(END, 1)[1]
    else:
        md = md.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS_MD.write_text(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connects", type=int, default=200, help="connections per measurement")
    ap.add_argument("--messages", type=int, default=20_000, help="QoS 1 messages per measurement")
    ap.add_argument("--no-report", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, certificates)")
    args = ap.parse_args()
    try:
        data = run(args)
    finally:
        harness.stop_all()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("tls-quick.json" if args.no_report else "tls.json")).write_text(json.dumps(data, indent=2))
    text = section(data)
    print(text)
    if not args.no_report:
        write_section(text)


if __name__ == "__main__":
    main()
