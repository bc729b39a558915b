"""Run a whole cluster on this machine under supervisord: up, status, down.

Process supervision is supervisord's job (a well-kept library; we only write its
config): each component (the embedded cloud broker, every edge node, optionally a
device fleet) is its own OS process, restarted when it dies (a process that dies
again within ``startsecs`` is retried with supervisord's growing back-off), with
its log, pid and data under the one run directory. supervisord logs every exit and
restart in ``<run>/logs/supervisord.log``.

``up`` returns once every broker answers an MQTT CONNECT (and the dashboard, if
asked for, its HTTP health check), not after a fixed sleep; running it twice does
not start a second copy. The fleet and the dashboard start after the brokers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import provision
from broker.client_auth import cloud_login, probe_target
from broker.config import ClusterConfig
from broker.errors import ClusterError, EdgeMQError
from broker.probe import mqtt_answers, wait_until_answers
from edgemq.node import component_name, stats_path

__all__ = ["ClusterRunner", "Component", "default_dashboard_port"]

START_DEADLINE_S = 45.0
# Started by up() once every broker answers, not by supervisord at once.
LATE_KINDS = ("devices", "dashboard")

Step = Callable[[int, int, str], None]


def default_dashboard_port(cfg: ClusterConfig) -> int:
    """$EDGEMQ_DASHBOARD_PORT, else [dashboard] port, else the cloud's MQTT port + 50 (18880 by default)."""
    env = os.environ.get("EDGEMQ_DASHBOARD_PORT")
    return int(env) if env else cfg.dashboard_port()


def _http_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass(frozen=True)
class Component:
    """One supervised process of the cluster."""

    name: str
    kind: str  # cloud | edge | devices | dashboard
    host: str | None
    port: int | None
    argv: tuple[str, ...]
    # Set when the component is probed over TLS (its brokers listen in TLS only).
    ssl_context: Any = field(default=None, compare=False, repr=False)


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path

    def make_connection(self, host: Any) -> Any:
        import http.client
        import socket

        path = self.socket_path

        class _Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(10)
                self.sock.connect(path)

        return _Conn("localhost")


class ClusterRunner:
    """Writes supervisord's config for a cluster file and drives it."""

    def __init__(
        self,
        cfg: ClusterConfig,
        config_path: Path,
        *,
        devices: int = 0,
        device_rate: float = 1.0,
        dashboard: bool = False,
        dashboard_port: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path.resolve()
        self.run_dir = cfg.run_dir
        self.devices = devices
        self.device_rate = device_rate
        self.dashboard = dashboard
        self.dashboard_port = dashboard_port if dashboard_port is not None else default_dashboard_port(cfg)

    # ---- layout ---------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def sock_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def components(self) -> list[Component]:
        """Every process the cluster file asks for, in start order."""
        py = sys.executable
        cfgp = str(self.config_path)
        comps: list[Component] = []
        if self.cfg.cloud.embedded:
            cloud = self.cfg.cloud
            tls_only = self.cfg.security.tls is not None and not self.cfg.security.tls.plaintext and cloud.tls_port
            comps.append(
                Component(
                    "cloud",
                    "cloud",
                    cloud.host,
                    cloud.tls_port if tls_only else cloud.port,
                    (py, "-m", "edgemq", "broker", "cloud", "--config", cfgp),
                    _quietly(lambda: cloud_login(self.cfg, "dashboard").ssl_context()) if tls_only else None,
                )
            )
        for site in self.cfg.sites:
            for b in site.brokers:
                host, port, ctx = _quietly(functools.partial(probe_target, self.cfg, b)) or (b.host, b.port, None)
                comps.append(
                    Component(
                        component_name(site.id, b.id),
                        "edge",
                        host,
                        port,
                        (py, "-m", "edgemq", "broker", "edge", "--config", cfgp, "--broker", f"{site.id}/{b.id}"),
                        ctx,
                    )
                )
        if self.devices > 0:
            site = self.cfg.sites[0]
            comps.append(
                Component(
                    "devices",
                    "devices",
                    None,
                    None,
                    (
                        py,
                        "-m",
                        "edgemq",
                        "devices",
                        "simulate",
                        "--config",
                        cfgp,
                        "--site",
                        site.id,
                        "--count",
                        str(self.devices),
                        "--rate",
                        str(self.device_rate),
                    ),
                )
            )
        if self.dashboard:
            argv: tuple[str, ...] = (py, "-m", "edgemq.dashboard", "--config", cfgp, "--port", str(self.dashboard_port))
            if not self.cfg.security.anonymous:
                # The dashboard role may read telemetry/{site}/#: at the cloud, every site is '+'.
                argv += ("--telemetry", "telemetry/+/#")
            comps.append(Component("dashboard", "dashboard", "127.0.0.1", self.dashboard_port, argv))
        return comps

    def how_to_connect(self) -> list[str]:
        """Example client command lines for this cluster (with the generated CA and users, if any)."""
        cfg, site = self.cfg, self.cfg.sites[0]
        cloud, edge = cfg.cloud, site.brokers[0]
        lines: list[str] = []
        if cfg.security.anonymous:
            lines += [
                f"  mosquitto_sub -h {cloud.host} -p {cloud.port} -t 'telemetry/#' -v",
                f"  mosquitto_pub -h {edge.host} -p {edge.port} -q 1 -t telemetry/{site.id}/pump-7/temp -m 21.5",
            ]
        if not cfg.security.generate:
            return lines or [f"  anonymous access is off: add users with edgemq users add --config {self.config_path}"]
        lay = provision.Layout(self.run_dir)
        cfgp = _quote(str(self.config_path))
        exe = Path(sys.executable).parent / "edgemq"
        cli = _quote(str(exe)) if exe.exists() else "edgemq"  # works without an activated venv
        pw = f'"$({cli} users password {{}} --config {cfgp})"'
        refused = "anonymous clients are refused" if not cfg.security.anonymous else "anonymous also allowed (demo)"
        return [
            *lines,
            f"security: generated CA {lay.ca_cert}; users and passwords in {lay.passwords} (mode 0600,",
            f"  shown by `edgemq users password NAME`); {refused}; over TLS:",
            f"  mosquitto_sub -h {cloud.host} -p {cloud.tls_port} --cafile {lay.ca_cert} "
            f"-u dashboard -P {pw.format('dashboard')} -t 'telemetry/+/#' -v",
            f"  mosquitto_pub -h {edge.host} -p {edge.tls_port} --cafile {lay.ca_cert} -u operator "
            f"-P {pw.format('operator')} -q 1 -t commands/{site.id}/dev-0001/reboot -m now",
            f"  devices: edgemq devices simulate --config {cfgp} --count 5 (adds dev-0001... users)",
        ]

    def dashboard_url(self) -> str:
        """Where the dashboard of this cluster listens (when it runs)."""
        return f"http://127.0.0.1:{self.dashboard_port}/"

    def render_conf(self) -> str:
        """supervisord.conf for this cluster."""
        lines = [
            "; generated by `edgemq cluster up`; edits are overwritten",
            "[unix_http_server]",
            f"file={self.sock_path}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.log_dir / 'supervisord.log'}",
            "logfile_maxbytes=10MB",
            "logfile_backups=3",
            f"pidfile={self.pid_path}",
            f"childlogdir={self.log_dir}",
            f"directory={self.config_path.parent}",
            "loglevel=info",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock_path}",
            "",
        ]
        for i, c in enumerate(self.components()):
            lines += [
                f"[program:{c.name}]",
                "command=" + " ".join(_quote(a) for a in c.argv),
                f"priority={100 + i}",
                # Devices and the dashboard start after every broker answers (see up()), not with them.
                f"autostart={'false' if c.kind in LATE_KINDS else 'true'}",
                "autorestart=true",
                "startsecs=1",
                "startretries=20",
                "stopsignal=TERM",
                "stopwaitsecs=15",
                "redirect_stderr=true",
                f"stdout_logfile={self.log_dir / (c.name + '.log')}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=3",
                'environment=PYTHONUNBUFFERED="1"',
                "",
            ]
        return "\n".join(lines)

    # ---- supervisord ----------------------------------------------------------------------
    def _rpc(self) -> Any:
        return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(self.sock_path)))

    def running(self) -> bool:
        """True if this run directory's supervisord answers."""
        if not self.sock_path.exists():
            return False
        try:
            state = self._rpc().supervisor.getState()
        except (OSError, xmlrpc.client.Error):
            return False
        return bool(state.get("statename") == "RUNNING")

    def up(self, progress: Any = None, step: Step | None = None) -> list[dict[str, Any]]:
        """Start everything (unless already running) and wait until every broker answers.

        ``progress(msg)`` gets messages; ``step(done, total, what)`` is called as each
        component comes up (for a progress bar).
        """
        say = progress or (lambda _msg: None)
        advance = step or (lambda _done, _total, _what: None)
        if self.running():
            say(f"cluster already running (run directory {self.run_dir}); not starting a second copy")
            return self.status()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "stats").mkdir(parents=True, exist_ok=True)
        if self.cfg.security.generate:
            say(f"security: generating what is missing in {provision.Layout(self.run_dir).dir} ...")
            provision.ensure(self.cfg)
        for c in self.components():
            with contextlib.suppress(FileNotFoundError):
                stats_path(self.cfg, c.name).unlink()
        self.conf_path.write_text(self.render_conf())
        supervisord = Path(sys.executable).with_name("supervisord")
        exe = str(supervisord) if supervisord.exists() else "supervisord"
        proc = subprocess.run(
            [exe, "-c", str(self.conf_path)],
            capture_output=True,
            text=True,
            check=False,
            cwd=str(self.config_path.parent),
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"supervisord failed to start: {proc.stderr.strip() or proc.stdout.strip()}",
                hint=f"see {self.log_dir / 'supervisord.log'}",
            )
        deadline = time.monotonic() + 10
        while not self.running():
            if time.monotonic() > deadline:
                raise ClusterError("supervisord did not come up", hint=f"see {self.log_dir / 'supervisord.log'}")
            time.sleep(0.05)
        comps = self.components()
        total, done = len(comps), 0
        advance(done, total, "supervisord")
        for c in comps:
            if c.host is None or c.port is None or c.kind in LATE_KINDS:
                continue
            say(f"waiting for {c.name} on {c.host}:{c.port} ...")
            if not wait_until_answers(c.host, c.port, START_DEADLINE_S, c.ssl_context):
                self._fail_start(c)
            done += 1
            advance(done, total, c.name)
        for c in comps:
            if c.kind in LATE_KINDS:
                say(f"starting {c.name} ...")
                self._rpc().supervisor.startProcess(c.name, True)
                if c.kind == "dashboard" and c.host and c.port:
                    end = time.monotonic() + START_DEADLINE_S
                    while not _http_answers(c.host, c.port):
                        if time.monotonic() > end:
                            self._fail_start(c)
                        time.sleep(0.1)
                done += 1
                advance(done, total, c.name)
        # supervisord calls a process RUNNING once it has stayed up for startsecs.
        names = {c.name for c in self.components()}
        while True:
            states = {i["name"]: i["statename"] for i in self._rpc().supervisor.getAllProcessInfo()}
            if all(states.get(n) == "RUNNING" for n in names):
                break
            bad = {n: st for n, st in states.items() if st in ("FATAL", "EXITED", "BACKOFF")}
            if bad or time.monotonic() > deadline + START_DEADLINE_S:
                self.down()
                raise ClusterError(
                    f"components did not reach RUNNING: {bad or states}; cluster stopped",
                    hint=f"see the logs in {self.log_dir}",
                )
            time.sleep(0.1)
        return self.status()

    def _fail_start(self, c: Component) -> None:
        tail = _tail(self.log_dir / f"{c.name}.log", 15)
        self.down()
        raise ClusterError(
            f"{c.name} did not answer on {c.host}:{c.port} within {START_DEADLINE_S:.0f}s; cluster stopped",
            hint=f"last lines of its log:\n{tail}",
        )

    def down(self, progress: Any = None) -> bool:
        """Stop every component cleanly and supervisord itself. False if nothing was running."""
        say = progress or (lambda _msg: None)
        if not self.running():
            say("cluster is not running")
            return False
        pid = _read_pid(self.pid_path)
        self._rpc().supervisor.shutdown()
        deadline = time.monotonic() + 60
        while pid is not None and _alive(pid):
            if time.monotonic() > deadline:
                raise ClusterError(f"supervisord (pid {pid}) did not stop within 60s")
            time.sleep(0.1)
        return True

    @staticmethod
    def _answers(c: Component) -> bool:
        return _answers_impl(c)

    def status(self) -> list[dict[str, Any]]:
        """One row per component: supervisor state, pid, address, answers, counters."""
        infos: dict[str, dict[str, Any]] = {}
        if self.running():
            for info in self._rpc().supervisor.getAllProcessInfo():
                infos[info["name"]] = info
        rows: list[dict[str, Any]] = []
        comps = self.components()
        # A fleet started by `up --devices N` runs under supervisord even if this runner
        # was built without --devices (plain `cluster status`).
        known = {c.name for c in comps}
        # Likewise a dashboard started by `up --dashboard`.
        for name in infos:
            if name not in known:
                dash = name == "dashboard"
                comps.append(
                    Component(
                        name,
                        "dashboard" if dash else "devices",
                        "127.0.0.1" if dash else None,
                        self.dashboard_port if dash else None,
                        (),
                    )
                )
        for c in comps:
            info = infos.get(c.name, {})
            stats: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                stats = json.loads(stats_path(self.cfg, c.name).read_text())
            row: dict[str, Any] = {
                "component": c.name,
                "kind": c.kind,
                "state": info.get("statename", "STOPPED"),
                "pid": info.get("pid") or None,
                "address": f"{c.host}:{c.port}" if c.host else None,
                "answers": self._answers(c) if info else False,
                "log": str(self.log_dir / f"{c.name}.log"),
                "clients": stats.get("clients"),
                "messages_in": stats.get("messages_in"),
                "messages_out": stats.get("messages_out"),
            }
            if "uplink" in stats:
                row["uplink"] = stats["uplink"].get("state")
                row["forwarded"] = stats["uplink"].get("forwarded")
            if "buffer" in stats:
                row["backlog"] = stats["buffer"].get("depth_messages")
            if c.kind == "dashboard":
                row["url"] = stats.get("url") or f"http://{c.host}:{c.port}/"
                row["clients"] = (stats.get("dashboard") or {}).get("clients")
            row["metrics"] = stats.get("metrics")
            if "buffer" in stats:
                row["oldest_age_s"] = stats["buffer"].get("oldest_age_s")
                row["dropped"] = sum((stats["buffer"].get("dropped") or {}).values())
            if "uplink" in stats:
                row["reconnects"] = max(0, int(stats["uplink"].get("connects") or 0) - 1)
            row["ts"] = stats.get("ts")
            if c.kind == "devices" and stats:
                # Shown in the same columns: connected devices, messages published / acknowledged.
                row.update(
                    {
                        "clients": stats.get("connected"),
                        "messages_in": stats.get("acked"),
                        "messages_out": stats.get("published"),
                    }
                )
                row.update({k: stats.get(k) for k in ("connected", "published", "acked", "errors")})
            rows.append(row)
        return rows


def _answers_impl(c: Component) -> bool:
    if not c.host or not c.port:
        return False
    if c.kind == "dashboard":
        return _http_answers(c.host, c.port, 0.5)
    return mqtt_answers(c.host, c.port, 0.5, c.ssl_context)


def _quietly(make: Callable[[], Any]) -> Any:
    """``make()``, or None when the CA it reads is not there yet (status before the first ``up``)."""
    try:
        return make()
    except (OSError, EdgeMQError):
        return None


def _quote(arg: str) -> str:
    return '"' + arg.replace('"', '\\"') + '"' if any(ch in arg for ch in ' "%;') else arg


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
