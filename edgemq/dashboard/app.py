"""The dashboard's ASGI app (Starlette): the page, its assets, and one server-sent event stream.

Routes:
    GET  /                  the page (static/index.html)
    GET  /static/...        the page's own JS and CSS
    GET  /vendor/uplot/...  uPlot, served from node_modules (installed by `npm ci`; never a CDN)
    GET  /events            server-sent events: one ``history`` event, then a ``frame`` per tick
    GET  /api/summary       the current table as JSON (scripts, tests)
    POST /api/tail          {"filter": "telemetry/plant-1/#"}: what the live tail shows
    GET  /healthz           200 once the app runs

A ticker calls ``Aggregator.tick`` once a second and serialises the frame once; each
browser has a small queue (frames are dropped for a browser that does not keep up,
never queued without bound). With no browser connected the ticker still runs, so
history is there when one connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from broker.topics import TopicError, validate_filter
from edgemq.dashboard.aggregate import Aggregator

__all__ = ["Hub", "create_app", "find_uplot"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
TICK_S = 1.0
QUEUE_FRAMES = 5


def find_uplot() -> Path | None:
    """uPlot's dist folder: $EDGEMQ_NODE_MODULES, else a node_modules above this package or the cwd."""
    candidates: list[Path] = []
    if env := os.environ.get("EDGEMQ_NODE_MODULES"):
        candidates.append(Path(env))
    for base in (Path(__file__).resolve(), Path.cwd().resolve()):
        candidates += [p / "node_modules" for p in base.parents]
    for nm in candidates:
        dist = nm / "uplot" / "dist"
        if (dist / "uPlot.iife.min.js").is_file():
            return dist
    return None


class Hub:
    """The ticker and the fan-out to connected browsers."""

    def __init__(self, aggregator: Aggregator, clock: Callable[[], float] = time.time) -> None:
        self.agg = aggregator
        self.clock = clock
        self.clients: set[asyncio.Queue[str]] = set()
        self.frames = 0
        self.last_frame: dict[str, Any] | None = None

    async def run(self) -> None:
        """Tick once a second until cancelled."""
        while True:
            frame = self.agg.tick(self.clock())
            self.last_frame = frame
            self.frames += 1
            data = _sse("frame", frame)
            for q in list(self.clients):
                if q.full():  # a slow browser skips frames rather than growing a queue
                    with contextlib.suppress(asyncio.QueueEmpty):
                        q.get_nowait()
                q.put_nowait(data)
            await asyncio.sleep(TICK_S)

    async def stream(self) -> AsyncIterator[str]:
        """One browser's events (ends when Starlette cancels it on disconnect)."""
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_FRAMES)
        self.clients.add(q)
        try:
            yield "retry: 2000\n\n"
            yield _sse("history", self.agg.history())
            if self.last_frame is not None:
                yield _sse("frame", self.last_frame)
            while True:
                try:
                    yield await asyncio.wait_for(q.get(), timeout=15)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            self.clients.discard(q)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def create_app(aggregator: Aggregator, *, feed: Any = None, title: str = "edgemq") -> Starlette:
    """The app; ``feed`` (something with ``async run()``) runs for the app's lifetime."""
    hub = Hub(aggregator)
    uplot = find_uplot()
    if uplot is None:
        log.warning("uPlot not found (run `npm ci` in the repository): the dashboard shows tables without charts")

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def events(_: Request) -> Response:
        return StreamingResponse(
            hub.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def summary(_: Request) -> Response:
        return JSONResponse(aggregator.summary(time.time()) | {"clients": len(hub.clients), "title": title})

    async def tail(request: Request) -> Response:
        try:
            body = await request.json()
            topic_filter = validate_filter(str(body["filter"]))
        except (ValueError, KeyError, TypeError, TopicError) as exc:
            return JSONResponse({"error": f"bad filter: {exc}"}, status_code=400)
        aggregator.set_tail_filter(topic_filter)
        return JSONResponse({"filter": topic_filter})

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def vendor_missing(_: Request) -> Response:
        return PlainTextResponse("uPlot is not installed: run `npm ci`", status_code=404)

    routes: list[Any] = [
        Route("/", index),
        Route("/events", events),
        Route("/api/summary", summary),
        Route("/api/tail", tail, methods=["POST"]),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if uplot is not None:
        routes.append(Mount("/vendor/uplot", StaticFiles(directory=uplot), name="uplot"))
    else:
        routes.append(Route("/vendor/uplot/{path:path}", vendor_missing))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(hub.run(), name="dashboard-ticker")]
        if feed is not None:
            tasks.append(asyncio.create_task(feed.run(), name="dashboard-feed"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return app
