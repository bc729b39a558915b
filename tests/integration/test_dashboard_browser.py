"""The dashboard end to end in a real headless browser (Debian's chromium, driven by Playwright).

Real processes: the cloud, three edge brokers of plant-1 behind a cuttable uplink, a device
fleet, and `python -m edgemq.dashboard`. The page loads with no console errors, shows the
three brokers online, the backlog chart rises while the uplink is cut, and a broker killed
with SIGKILL turns offline within seconds. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devices.fleet import FleetConfig, run_fleet
from tests.integration.conftest import ROOT, Harness, free_port, wait_for
from tests.integration.test_store_and_forward import setup_proxied

pytestmark = [pytest.mark.timeout(300)]

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if exe is None:
        if os.environ.get("EDGEMQ_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (EDGEMQ_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return exe


class Fleet:
    """A device fleet in its own thread and event loop that the test can stop."""

    def __init__(self, cfg: FleetConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self, cfg: FleetConfig) -> None:
        async def main() -> None:
            self._task = asyncio.current_task()
            self._ready.set()
            await run_fleet(cfg)

        with contextlib.suppress(asyncio.CancelledError, Exception):  # stopped by the test, or it ended
            self._loop.run_until_complete(main())

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)


def start_dashboard(h: Harness, cloud_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = h.tmp / "logs" / "dashboard.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgemq.dashboard",
                "--config",
                str(h.config_path),
                "--port",
                str(port),
                "--cloud-port",
                str(cloud_port),
                "--metrics-port",
                "0",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=str(h.tmp),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    h.extra_logs.append(log)
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(answers, 30, "dashboard answers")
    return proc, url


def test_dashboard_in_a_real_browser(harness: Any, tmp_path: Path) -> None:
    exe = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    h, proxy, real_port = setup_proxied(harness, brokers=3)
    fleet = Fleet(
        FleetConfig(
            site=h.cfg.sites[0], devices=24, rate=4, duration_s=240, seed=5, reconnect_min_s=0.2, reconnect_max_s=2.0
        )
    )
    dash, url = start_dashboard(h, real_port)
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    try:
        with sync_api.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=exe,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1600, "height": 1200},
            )
            try:
                page = ctx.new_page()
                page.on(
                    "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
                )
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.goto(url, wait_until="load")

                def health(broker: str) -> str | None:
                    el = page.query_selector(f'#brokers tr[data-broker="plant-1/{broker}"]')
                    return el.get_attribute("data-health") if el else None

                def poll(pred: Any, timeout: float, what: str) -> None:
                    # Poll from the test thread; page.wait_for_timeout lets the page's events run.
                    wait_for(lambda: (page.wait_for_timeout(200), pred())[1], timeout, what, interval=0.05)

                poll(lambda: all(health(b) == "online" for b in ("a1", "a2", "a3")), 60, "three brokers online")
                poll(lambda: page.evaluate("window.edgemq.charts()") == 3, 30, "three charts drawn")
                poll(
                    lambda: page.evaluate("window.edgemq.lastFrame().totals.devices") >= 20,
                    60,
                    "devices seen at the cloud",
                )
                assert page.locator("#tail li").count() > 0

                # The uplink is cut: the brokers are isolated (alive, buffering) and the backlog chart rises.
                proxy.cut()
                poll(lambda: all(health(b) == "isolated" for b in ("a1", "a2", "a3")), 60, "brokers isolated")
                depth = "['plant-1/a1','plant-1/a2','plant-1/a3'].reduce((s, k) => s + window.edgemq.maxDepth(k), 0)"
                poll(lambda: page.evaluate(depth) > 50, 60, "backlog chart rises while the uplink is down")
                page.screenshot(path=str(ARTIFACTS / "dashboard-outage.png"), full_page=True)
                proxy.restore()
                poll(lambda: all(health(b) == "online" for b in ("a1", "a2", "a3")), 60, "brokers back online")

                # A broker killed turns offline within seconds (its will at the cloud, its own feed gone).
                h.kill("plant-1.a3", signal.SIGKILL)
                poll(lambda: health("a3") == "offline", 20, "killed broker offline")
                assert health("a1") == "online" and health("a2") == "online"
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            finally:
                ctx.close()
        assert not problems, problems
    finally:
        fleet.stop()
        proxy.close()
        dash.terminate()
        try:
            dash.wait(20)
        except subprocess.TimeoutExpired:
            dash.kill()
