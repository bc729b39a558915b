// edgemq dashboard: draws what the server aggregates (one "frame" event per second).
// The server does the counting; this page only keeps the last HISTORY points and draws.
"use strict";

(function () {
  const HISTORY = 300;
  const COLORS = ["#3b6fd8", "#d8543b", "#2e9d5b", "#9b59b6", "#e0a100", "#16a2b8", "#8a5a44", "#c2185b"];
  const hist = { t: [], telemetry_rate: [], rate: {}, depth: {}, age: {} };
  const charts = {};
  let chartKeys = "";
  let lastFrame = null;

  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits || 0));
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));

  function keys() {
    return Object.keys(hist.depth).sort();
  }

  function trim() {
    const extra = hist.t.length - HISTORY;
    if (extra <= 0) return;
    hist.t.splice(0, extra);
    hist.telemetry_rate.splice(0, extra);
    for (const kind of ["rate", "depth", "age"]) {
      for (const k of Object.keys(hist[kind])) hist[kind][k].splice(0, extra);
    }
  }

  function chartData(kind) {
    const ks = keys();
    const data = [hist.t.slice()];
    if (kind === "rate") data.push(hist.telemetry_rate.slice());
    for (const k of ks) data.push((hist[kind][k] || []).slice());
    return data;
  }

  function makeChart(id, kind) {
    const el = $(id);
    el.innerHTML = "";
    const series = [{}];
    if (kind === "rate") series.push({ label: "cloud telemetry", stroke: "#1d2433", width: 2 });
    keys().forEach((k, i) => series.push({ label: k, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false }));
    const opts = {
      width: Math.min(560, Math.max(320, (window.innerWidth - 140) / 3)),
      height: 220,
      series: series,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{}, { size: 60 }],
      legend: { live: false },
    };
    return new uPlot(opts, chartData(kind), el);
  }

  function drawCharts() {
    if (typeof uPlot === "undefined" || hist.t.length === 0) return;
    const ks = keys().join(",");
    if (ks !== chartKeys) {
      for (const c of Object.values(charts)) c.destroy();
      charts.rate = makeChart("chart-rate", "rate");
      charts.depth = makeChart("chart-depth", "depth");
      charts.age = makeChart("chart-age", "age");
      chartKeys = ks;
      return;
    }
    for (const kind of ["rate", "depth", "age"]) charts[kind].setData(chartData(kind));
  }

  function renderBrokers(frame) {
    const rows = frame.brokers.map((b) =>
      `<tr data-broker="${esc(b.key)}" data-health="${esc(b.health)}">` +
      `<td>${esc(b.site)}</td><td>${esc(b.broker)}</td>` +
      `<td><span class="badge ${esc(b.health)}">${esc(b.health)}</span></td>` +
      `<td>${esc(b.uplink || "-")}</td><td>${fmt(b.reconnects)}</td><td>${fmt(b.clients)}</td>` +
      `<td>${fmt(b.rate_in, 1)}</td><td>${fmt(b.drain_rate, 1)}</td>` +
      `<td data-depth="${b.depth === null || b.depth === undefined ? "" : b.depth}">${fmt(b.depth)}</td>` +
      `<td>${b.oldest_age_s ? fmt(b.oldest_age_s, 1) + " s" : "-"}</td><td>${fmt(b.dropped)}</td></tr>`);
    $("brokers").tBodies[0].innerHTML = rows.join("");
    const most = Math.max(1, ...frame.brokers.map((b) => Math.max(b.ring_devices || 0, (b.owned || 0) + (b.foreign || 0))));
    const px = (n) => Math.round(((n || 0) / most) * 160);
    $("devices-table").tBodies[0].innerHTML = frame.brokers.map((b) =>
      `<tr data-broker="${esc(b.key)}"><td>${esc(b.key)}</td><td>${fmt(b.ring_devices)}</td>` +
      `<td>${fmt(b.owned)}</td><td>${fmt(b.foreign)}</td>` +
      `<td style="text-align:left"><span class="bar" style="width:${px(b.owned)}px"></span>` +
      `<span class="bar foreign" style="width:${px(b.foreign)}px"></span></td></tr>`).join("");
  }

  function renderTail(tail) {
    const list = $("tail");
    if (document.activeElement !== $("tail-filter")) $("tail-filter").value = tail.filter;
    for (const m of tail.new || tail.recent || []) {
      const li = document.createElement("li");
      li.textContent = `${new Date(m.ts * 1000).toLocaleTimeString()}  ${m.topic}  ${m.payload}`;
      list.prepend(li);
    }
    while (list.children.length > 50) list.removeChild(list.lastChild);
    if (tail.skipped) $("tail-note").textContent = `sampled: ${tail.skipped} more in the last second not shown`;
  }

  function onHistory(h) {
    hist.t = h.t;
    hist.telemetry_rate = h.telemetry_rate;
    for (const kind of ["rate", "depth", "age"]) hist[kind] = h[kind];
    $("tail").innerHTML = "";
    renderTail({ filter: h.tail.filter, recent: h.tail.recent });
    chartKeys = "";
    drawCharts();
  }

  function onFrame(f) {
    lastFrame = f;
    const p = f.point;
    if (hist.t.length === 0 || hist.t[hist.t.length - 1] < p.t) {
      const n = hist.t.length;
      hist.t.push(p.t);
      hist.telemetry_rate.push(p.telemetry_rate);
      for (const kind of ["rate", "depth", "age"]) {
        for (const [k, v] of Object.entries(p[kind])) {
          if (!hist[kind][k]) hist[kind][k] = new Array(n).fill(null);
          hist[kind][k].push(v);
        }
      }
      trim();
    }
    renderBrokers(f);
    renderTail(f.tail);
    $("devices").textContent = f.totals.devices;
    $("tel-rate").textContent = fmt(f.totals.telemetry_rate, 1);
    $("updated").textContent = new Date(f.ts * 1000).toLocaleTimeString();
    drawCharts();
  }

  function connect() {
    const es = new EventSource("/events");
    es.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "badge online"; });
    es.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = "badge offline"; });
    es.addEventListener("history", (e) => onHistory(JSON.parse(e.data)));
    es.addEventListener("frame", (e) => onFrame(JSON.parse(e.data)));
  }

  $("tail-form").addEventListener("submit", (e) => {
    e.preventDefault();
    fetch("/api/tail", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ filter: $("tail-filter").value }),
    }).then((r) => r.json()).then((r) => {
      $("tail").innerHTML = "";
      $("tail-note").textContent = r.error ? r.error : "sampled: at most 10 messages per second";
    });
  });

  // For tests and the curious: what the charts hold.
  window.edgemq = {
    hist: hist,
    lastFrame: () => lastFrame,
    maxDepth: (key) => Math.max(0, ...(hist.depth[key] || []).filter((v) => v !== null)),
    charts: () => Object.keys(charts).length,
  };
  connect();
})();
