"""Turn ``benchmarks/results/latest.json`` into tables, PNG plots and the BENCHMARKS.md section.

Run alone to re-render from the saved JSON: ``.venv/bin/python benchmarks/report.py``.
The section between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is replaced;
the rest of BENCHMARKS.md is left as it is. ``benchmarks/profile_notes.md`` (the
profile findings, written by hand from py-spy output) is included verbatim.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MD = HERE.parent / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
NOTES = HERE / "profile_notes.md"


# ---- helpers ----------------------------------------------------------------------------------
def get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def med(vals: list[Any]) -> float | None:
    vals = [v for v in vals if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return float(statistics.median(vals))


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if v == math.inf:
        return "not arrived"
    if isinstance(v, int):
        return f"{v:,}" + unit
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isinf(a) or math.isinf(b):
        return "—"
    return f"{a / b:.2f}"


def one_line(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return "ERROR " + rec["error"][:120]
    r = rec.get("result") or {}
    s = rec["scenario"]
    if s in ("loadgen", "passthrough", "ingest", "e2e", "calibrate"):
        return (
            f"{r.get('msg_per_s', 0):,.0f} msg/s (accepted {fmt(r.get('accepted_msg_per_s'))}), "
            f"received {r.get('received')}, edge {r.get('edge_cpu_us_per_msg', 0):.0f} us/msg"
        )
    if s in ("latency", "cpu", "cpualone"):
        parts = [
            f"{at} p50 {fmt(get(r, at + '.p50_ms'))} p99 {fmt(get(r, at + '.p99_ms'))} ms "
            f"miss {get(r, at + '.missing')}"
            for at in ("edge", "cloud")
            if at in r
        ]
        return "; ".join(parts) + f"; edge {r.get('edge_cpu_us_per_msg', 0):.0f} us/msg"
    if s == "drain":
        return (
            f"{r.get('received')}/{r.get('filled')} in {fmt(r.get('drain_s_from_cloud_start'))} s, "
            f"{fmt(r.get('drain_msg_per_s'))} msg/s"
        )
    if s == "kill":
        return (
            f"acked {r.get('acked_before_kill')}, at cloud {r.get('acked_arrived')}, lost {r.get('acked_lost')}, "
            f"dup {r.get('duplicates')}"
        )
    if s == "overload":
        return (
            f"sent {r.get('sent')}, cloud rx {get(r, 'cloud.received')}, "
            f"edge rss max {fmt(r.get('edge_rss_mb_max'))} MB"
        )
    if s == "idle":
        return f"{r.get('connections')} conns, {fmt(r.get('kb_per_connection'))} kB/conn"
    return ""


def grouped(data: dict[str, Any]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in data.get("runs", []):
        if rec.get("result") is not None:
            out[(rec["scenario"], rec["case"], rec["kind"])].append(rec["result"])
    return out


def cases_of(data: dict[str, Any], scenario: str) -> list[str]:
    seen: list[str] = []
    for rec in data.get("runs", []):
        if rec["scenario"] == scenario and rec["case"] not in seen:
            seen.append(rec["case"])
    return seen


Groups = dict[tuple[str, str, str], list[dict[str, Any]]]


def m(g: Groups, scenario: str, case: str, kind: str, path: str) -> float | None:
    return med([get(r, path) for r in g.get((scenario, case, kind), [])])


def n_reps(g: Groups, scenario: str, case: str, kind: str) -> int:
    return len(g.get((scenario, case, kind), []))


# ---- tables -----------------------------------------------------------------------------------
def table(g: Any, scenario: str, cases: list[str], metrics: list[tuple[str, str, str]]) -> list[str]:
    """Rows: case x metric; columns edgemq, Mosquitto, ratio (and "edgemq → Mosquitto cloud" if measured)."""
    mosq_cloud = any(k[0] == scenario and k[2] == "edgemq-mosq" for k in g)
    if mosq_cloud:
        lines = [
            "| case | metric | edgemq | edgemq edge → Mosquitto cloud | Mosquitto | edgemq/Mosquitto | "
            "(edgemq → Mosquitto cloud)/Mosquitto | reps |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    else:
        lines = [
            "| case | metric | edgemq | Mosquitto | edgemq/Mosquitto | reps |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
    for case in cases:
        for label, path, unit in metrics:
            e = m(g, scenario, case, "edgemq", path)
            q = m(g, scenario, case, "mosquitto", path)
            x = m(g, scenario, case, "edgemq-mosq", path)
            if e is None and q is None and x is None:
                continue
            if mosq_cloud:
                reps = "/".join(str(n_reps(g, scenario, case, k)) for k in ("edgemq", "edgemq-mosq", "mosquitto"))
                lines.append(
                    f"| {case} | {label} | {fmt(e, unit)} | {fmt(x, unit)} | {fmt(q, unit)} | "
                    f"{ratio(e, q)} | {ratio(x, q)} | {reps} |"
                )
            else:
                reps = f"{n_reps(g, scenario, case, 'edgemq')}/{n_reps(g, scenario, case, 'mosquitto')}"
                lines.append(f"| {case} | {label} | {fmt(e, unit)} | {fmt(q, unit)} | {ratio(e, q)} | {reps} |")
    return lines


def kill_table(g: Groups, cases: list[str]) -> list[str]:
    """Scenario "kill": acknowledged messages that survive a kill -9 of the edge broker."""
    kinds = (
        ("edgemq", "edgemq"),
        ("mosquitto", "Mosquitto bridge, persistence false"),
        ("mosquitto-persist", "Mosquitto bridge, persistence true"),
    )
    lines = [
        "| case | edge | sent | acknowledged before the kill | of those at the cloud | lost | lost % | duplicates |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        for kind, label in kinds:
            if not g.get(("kill", case, kind)):
                continue
            v = [
                m(g, "kill", case, kind, k)
                for k in ("sent", "acked_before_kill", "acked_arrived", "acked_lost", "lost_pct", "duplicates")
            ]
            cells = [fmt(None if x is None else int(x) if float(x).is_integer() else x) for x in v]
            lines.append(f"| {case} | {label} | " + " | ".join(cells) + " |")
    return lines


def section(data: dict[str, Any]) -> str:
    g = grouped(data)
    mc = data["machine"]
    p = data["params"]
    la0, la1 = data.get("loadavg_start", [0, 0, 0]), data.get("loadavg_end", [0, 0, 0])
    if data.get("merged_from"):
        la0 = data["merged_from"].get("loadavg_start") or la0
    loads = [rec["loadavg_start"][0] for rec in data.get("runs", [])]
    total_min = (data.get("total_s", 0) + (data.get("merged_from") or {}).get("total_s", 0)) / 60
    out = [
        "## edgemq against Mosquitto, side by side (issue 9, `make bench`)",
        "",
        f"Run {data['started']} on a shared machine (other engineers' test suites may run at the same time: "
        f"1-min load average {la0[0]:.2f} at start, {la1[0]:.2f} at the end, "
        f"{min(loads, default=0):.2f}–{max(loads, default=0):.2f} at the start of individual runs, on "
        f"{mc['nproc']} CPUs). The numbers are kept as measured; both brokers saw the same conditions "
        "(runs alternate), and absolute figures are lower bounds.",
        "",
        f"Machine: {mc['nproc']} CPUs, {mc['cpu_model']}, {mc['mem_total_gb']} GB; CPython {mc['python']}; "
        f"{mc['platform']}; Mosquitto {mc['mosquitto']}. edgemq code measured: {mc.get('git', '?')}. "
        f"Repetitions per case: {data['args']['reps']} (median shown); "
        f"total run time {total_min:.1f} min. Raw data: `benchmarks/results/latest.json`; "
        "plots beside it." + merged_note(data),
        "",
        "### Method",
        "",
        "- **Topologies** (fresh processes for every run, all on 127.0.0.1, free ports): *edgemq* = "
        "`python -m edgemq broker cloud` + `python -m edgemq broker edge` (amqtt broker + SQLite buffer, "
        "durability `os`, 2 ms group commit + edgemq's own MQTT uplink client (bridge/wire.py + bridge/upstream.py; "
        "aiomqtt/paho before 2026-11-27), in-flight 1,000 (100 in runs before 2026-11-27 07:30)). "
        "*edgemq edge → Mosquitto cloud* (e2e and drain): the same "
        "edge node with Debian's Mosquitto as the cloud, the cloud of the Mosquitto topology, so it measures our "
        "edge node against Mosquitto's bridge without amqtt's cloud broker (~560 µs CPU per message) in the way. "
        "*Mosquitto* = an edge Mosquitto "
        "bridged to a cloud Mosquitto (`connection cloud`, `address`, `topic telemetry/# out 1`, "
        "`cleansession false`, `persistence false`, `max_inflight_messages 100`, `max_queued_messages 2000000`): "
        "its bridge queue is in memory, not durable.",
        "- **Load generator**: Debian's C clients. Publishers: `mosquitto_pub -l` (in-flight 20), one line "
        "= one 100-byte message, one topic `telemetry/plant-1/dev-NNN/t` per publisher; flat-out runs pipe a "
        "pre-built file, fixed-rate runs are fed by a pacing thread that writes the send time (ns) into each "
        "payload. Subscribers: `mosquitto_sub -F '%U %p'` stamps every arrival; files are parsed after the run. "
        "Publisher and subscribers share the machine with the brokers (2 CPUs: client CPU competes with "
        "broker CPU; the *load generator ceiling* table shows how far the clients alone go).",
        f"- **Throughput** (ingest, e2e, ceiling): publishers flat out with a budget of {p['max_messages']:,} "
        f"messages; rate = messages arriving at the subscriber in the {p['window_s']:.0f} s after the first "
        "arrival (or all of them over their span if they all came sooner). *Ingest* subscribes at the edge "
        "broker (same QoS as the publisher), *e2e* at the cloud broker (QoS 1). The bridge runs in both.",
        f"- **Latency**: one publisher at a fixed offered rate for {p['latency_s']:.0f} s, QoS 1, subscribers at "
        f"the edge and at the cloud at once; the first {p['warmup_s']:.0f} s are skipped; a message that has not "
        "arrived by the end of the grace period counts as infinitely late (shown as *not arrived*), so a broker "
        "that falls behind cannot look good by losing its slowest messages. Nearest-rank percentiles of all samples.",
        "- **CPU per message**: psutil user+system CPU of the broker processes over the run divided by the "
        "messages delivered to the cloud subscriber; offered rate fixed, QoS 1, cloud subscriber only. "
        "edgemq's *edge node* is broker + buffer + bridge in one process; Mosquitto's edge and cloud are "
        "reported separately and summed.",
        f"- **Drain**: 100,000 QoS 1 messages (1,000,000 with `--big`) from {p['drain_publishers']} publishers while "
        "the cloud broker is not running (filled = edgemq's buffer depth / for Mosquitto a local subscriber has "
        "them all; the fill stops when that stalls for 30 s), then the cloud starts "
        "(a cloud subscriber retries every 20 ms until it connects); drain time is from cloud process start to "
        "the last arrival; drain rate from first to last arrival. One repetition. The 1,000,000-message "
        "drain (`--big`) writes edgemq's backlog straight into the edge node's buffer file before it starts "
        "(filling it through the broker would take minutes more per run; its fill rate is then the "
        "file write), and is run for *edgemq edge → Mosquitto cloud* and *Mosquitto* only (`--drain-kinds`).",
        "- **Kill -9** (`benchmarks/bench_kill.py`): 4 paho publishers at 1,000 QoS 1 msg/s in total for 6 s, "
        "then SIGKILL of the edge broker; *acknowledged* = the ids whose PUBACK the publishers had received before "
        "the kill. The edge is restarted (with *cloud down*, the cloud was not running during the load and starts "
        "after the edge restart, so every acknowledged message was still queued at the edge); a cloud subscriber "
        "counts the acknowledged ids that arrive (until all have, or nothing new for 15 s). Mosquitto persistence "
        "true uses its default `autosave_interval` (1800 s). One repetition.",
        f"- **Overload**: QoS 0 offered by one publisher at 2× edgemq's measured QoS 0 single-publisher "
        f"ingest rate for {p['overload_s']:.0f} s (same offered rate for Mosquitto, for which it is not an "
        f"overload), edge subscriber QoS 0 + cloud subscriber QoS 1, then up to {p['overload_grace_s']:.0f} s "
        "for the backlog to arrive; RSS sampled every 0.5 s. The loaded publisher's latency counts the time its "
        "messages wait in its own client and socket while the broker pushes back; *admitted latency* is that of a "
        f"second, light publisher ({p.get('probe_rate', 50):.0f} QoS 0 msg/s on its own connection and a topic no "
        "other client uses, with its own edge subscriber) whose socket is never backed up, so its send → delivery "
        "time is what the overloaded broker adds to a message it has read. One repetition.",
        f"- **Idle connections**: {p['idle_connections']:,} raw MQTT 3.1.1 CONNECTs (keep-alive 0) held open to "
        "the edge broker; RSS of the edge process before and 3 s after. One repetition.",
        "",
    ]
    out += targets(data, g)
    if any(r["scenario"] == "loadgen" for r in data["runs"]):
        out += [
            "### Load generator ceiling (one Mosquitto, no bridge, subscriber on the same broker)",
            "",
            "| case | msg/s | reps |",
            "| --- | ---: | ---: |",
        ]
        for case in cases_of(data, "loadgen"):
            out.append(
                f"| {case} | {fmt(m(g, 'loadgen', case, 'loadgen', 'msg_per_s'))} | "
                f"{n_reps(g, 'loadgen', case, 'loadgen')} |"
            )
        out += ["", "A broker figure close to this ceiling is limited by the clients, not by the broker.", ""]
    if any(r["scenario"] == "passthrough" for r in data["runs"]):
        out += [
            "### amqtt 0.12.1 pass-through, stock and ours (one broker, subscriber on the same broker)",
            "",
            "| case | configuration | msg/s | broker CPU µs/msg | reps |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for case in cases_of(data, "passthrough"):
            for kind, how in (
                ("amqtt-default", "stock, packaged defaults (`amqtt -c default_broker.yaml`)"),
                ("amqtt-stock", "stock, our minimal plugins (`tests/protocol/stock_amqtt.py`)"),
                ("edgemq-alone", "edgemq's broker alone (`edgemq broker cloud`: no buffer, no bridge)"),
            ):
                if m(g, "passthrough", case, kind, "msg_per_s") is None:
                    continue
                out.append(
                    f"| {case} | {how} | {fmt(m(g, 'passthrough', case, kind, 'msg_per_s'))} | "
                    f"{fmt(m(g, 'passthrough', case, kind, 'edge_cpu_us_per_msg'))} | "
                    f"{n_reps(g, 'passthrough', case, kind)} |"
                )
        out += [
            "",
            "Stock `amqtt.broker.Broker`, none of our overrides: with amqtt's own `default_broker.yaml` "
            "(event and packet logger plugins, anonymous access, `$SYS` every 20 s; bound to 127.0.0.1) as "
            "issue 9 measured it, and with our listener and plugin settings (anonymous access only); "
            "`mosquitto_pub -l` → broker → `mosquitto_sub`, QoS 1, measured as *ingest*.",
            "",
        ]
    blocks = [
        (
            "ingest",
            "1. Edge ingest (publisher → edge broker → local subscriber)",
            [
                ("msg/s delivered to the local subscriber", "msg_per_s", ""),
                ("msg/s accepted (broker's own counter)", "accepted_msg_per_s", ""),
                ("edge CPU µs per delivered msg (saturated)", "edge_cpu_us_per_msg", ""),
                ("edge CPU µs per accepted msg (saturated)", "edge_cpu_us_per_accepted", ""),
                ("messages received in the run", "received", ""),
            ],
        ),
        (
            "e2e",
            "2. End to end edge → cloud, QoS 1, durable buffer on (edgemq)",
            [
                ("msg/s at cloud", "msg_per_s", ""),
                ("msg/s accepted at the edge (broker's own counter)", "accepted_msg_per_s", ""),
                ("edge CPU µs per msg at cloud (saturated)", "edge_cpu_us_per_msg", ""),
                ("cloud CPU µs per msg at cloud (saturated)", "cloud_cpu_us_per_msg", ""),
            ],
        ),
        (
            "latency",
            "3. Latency at fixed offered rates (ms)",
            [
                ("edge p50", "edge.p50_ms", ""),
                ("edge p99", "edge.p99_ms", ""),
                ("edge p99.9", "edge.p999_ms", ""),
                ("cloud p50", "cloud.p50_ms", ""),
                ("cloud p99", "cloud.p99_ms", ""),
                ("cloud p99.9", "cloud.p999_ms", ""),
                ("not arrived (cloud)", "cloud.missing", ""),
            ],
        ),
        (
            "cpu",
            "CPU per delivered message (µs of process CPU)",
            [
                ("edge broker", "edge_cpu_us_per_msg", ""),
                ("cloud broker", "cloud_cpu_us_per_msg", ""),
                ("messages delivered", "cloud.received", ""),
            ],
        ),
        (
            "drain",
            "4. Backlog drain after an outage",
            [
                ("fill rate (msg/s, QoS 1 accepted)", "fill_msg_per_s", ""),
                ("drain rate (msg/s)", "drain_msg_per_s", ""),
                ("drain time from cloud start (s)", "drain_s_from_cloud_start", ""),
                ("first message after cloud start (s)", "first_after_start_s", ""),
                ("backlog filled (messages)", "filled", ""),
                ("received at the cloud", "received", ""),
                ("distinct messages received", "unique", ""),
                ("edge RSS holding the backlog (MB)", "edge_rss_mb_with_backlog", ""),
            ],
        ),
        (
            "overload",
            "5. Overload",
            [
                ("sent", "sent", ""),
                ("received at edge subscriber during load", "edge.received_during_load", ""),
                ("received at edge subscriber", "edge.received", ""),
                ("received at cloud (after grace)", "cloud.received", ""),
                ("edge latency p50 (ms)", "edge.p50_ms", ""),
                ("edge latency p99 (ms)", "edge.p99_ms", ""),
                ("cloud latency p50 (ms)", "cloud.p50_ms", ""),
                ("cloud latency p99 (ms)", "cloud.p99_ms", ""),
                ("admitted latency p50 (ms, probe publisher)", "probe.p50_ms", ""),
                ("admitted latency p99 (ms, probe publisher)", "probe.p99_ms", ""),
                ("admitted latency max (ms, probe publisher)", "probe.max_ms", ""),
                ("probe messages missing", "probe.missing", ""),
                ("edge RSS start (MB)", "edge_rss_mb_start", ""),
                ("edge RSS max (MB)", "edge_rss_mb_max", ""),
                ("publisher RSS max (MB)", "pub_rss_mb_max", ""),
                ("publisher blocked on its pipe (s)", "publisher_blocked_s", ""),
                ("edgemq buffer dropped at end", "edgemq_buffer.dropped", ""),
                ("edgemq buffer depth at end", "edgemq_buffer.depth_messages", ""),
            ],
        ),
        (
            "idle",
            "6. Idle connections",
            [
                ("connections held", "connections", ""),
                ("failed", "failed", ""),
                ("kB RSS per connection", "kb_per_connection", ""),
                ("RSS before (MB)", "rss_before_mb", ""),
                ("RSS after (MB)", "rss_after_mb", ""),
                ("time to connect all (s)", "connect_s", ""),
            ],
        ),
    ]
    for scenario, title, metrics in blocks:
        cs = cases_of(data, scenario)
        if not cs:
            continue
        out += [f"### {title}", "", *table(g, scenario, cs, metrics), ""]
        if scenario == "cpu":
            out += cpu_sum(g, cs)
            alone = cases_of(data, "cpualone")
            if alone:
                out += [
                    "CPU per message of **one broker alone** at the same fixed rate (publisher → broker → "
                    "local QoS 1 subscriber; no buffer, no bridge, no cloud): what the broker part of the "
                    "edge node costs by itself.",
                    "",
                    "| case | edgemq broker alone | Mosquitto alone | stock amqtt 0.12.1 | reps |",
                    "| --- | ---: | ---: | ---: | ---: |",
                ]
                for case in alone:
                    vals = [
                        m(g, "cpualone", case, k, "edge_cpu_us_per_msg")
                        for k in ("edgemq-alone", "loadgen", "amqtt-stock")
                    ]
                    reps = "/".join(
                        str(n_reps(g, "cpualone", case, k)) for k in ("edgemq-alone", "loadgen", "amqtt-stock")
                    )
                    out.append(f"| {case} | {' | '.join(fmt(v, ' µs') for v in vals)} | {reps} |")
                out.append("")
        if scenario == "drain":
            kc = cases_of(data, "kill")
            if kc:
                out += ["### 4b. kill -9 of the edge broker under QoS 1 load", "", *kill_table(g, kc), ""]
        if scenario == "overload" and data.get("overload_basis"):
            b = data["overload_basis"]
            out += [
                f"Offered rate = {b['factor']:.0f} × {b['edgemq_qos0_ingest_msg_per_s']:,.0f} msg/s, edgemq's "
                f"QoS 0 single-publisher ingest ({b.get('from', 'ingest runs')} of this benchmark).",
                "",
            ]
    errors = [r for r in data["runs"] if "error" in r]
    if errors:
        out += ["### Runs that failed", ""]
        out += [f"- {r['scenario']} / {r['case']} / {r['kind']} rep {r['rep']}: `{r['error'][:200]}`" for r in errors]
        out.append("")
    out += ["Plots: " + ", ".join(f"`benchmarks/results/{p}`" for p in PLOTS), ""]
    if NOTES.exists():
        out += [NOTES.read_text().rstrip(), ""]
    return "\n".join(out)


def merged_note(data: dict[str, Any]) -> str:
    """Which scenarios come from which run, when results were merged (``--merge``), newest first."""
    mf = data.get("merged_from")
    if not mf:
        return ""
    parts = [
        (
            data.get("args", {}).get("only") or [],
            data["started"],
            data["loadavg_start"],
            data["machine"].get("git", "?"),
        )
    ]
    node = mf
    while node:
        if node.get("previous"):
            parts.append(
                (
                    node.get("only") or [],
                    node["started"],
                    node.get("loadavg_start") or [0],
                    (node.get("machine") or {}).get("git", "?"),
                )
            )
        else:
            parts.append(
                (None, node["started"], node.get("loadavg_start") or [0], (node.get("machine") or {}).get("git", "?"))
            )
        node = node.get("previous")
    text = []
    for only, started, la, git in parts:
        what = f"scenarios {', '.join(only)}" if only is not None else "the other scenarios"
        text.append(f"{what}: run at {started} (load average {la[0]:.2f} at start; edgemq code {git})")
    return (
        " Merged results, newest first (a later run of a scenario replaces the earlier one, except a drain "
        "of another size) — " + "; ".join(text) + "."
    )


def _first(data: dict[str, Any], scenario: str, needle: str) -> str | None:
    return next((c for c in cases_of(data, scenario) if needle in c), None)


def targets(data: dict[str, Any], g: Groups) -> list[str]:
    """Issue 9's targets for the edge node against this run's medians."""
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**not met**")

    c = _first(data, "cpu", "1,000")
    if c:
        e = m(g, "cpu", c, "edgemq", "edge_cpu_us_per_msg")
        rows.append(
            (
                "edge node CPU per message, QoS 1 at 1,000 msg/s: ≤ 100 µs",
                fmt(e, " µs"),
                verdict(None if e is None else e <= 100),
            )
        )
    for needle in ("1 publisher", "100 publishers"):
        c = _first(data, "e2e", needle)
        if c:
            e, q = m(g, "e2e", c, "edgemq", "msg_per_s"), m(g, "e2e", c, "mosquitto", "msg_per_s")
            rows.append(
                (
                    f"e2e QoS 1 edge→cloud ({needle}): ≥ 0.5 × Mosquitto bridge",
                    f"{fmt(e)} vs {fmt(q)} msg/s = {ratio(e, q)} ×",
                    verdict(None if e is None or not q else e / q >= 0.5),
                )
            )
    c, s1 = _first(data, "e2e", "1 publisher"), _first(data, "passthrough", "1 publisher")
    for kind, how in (
        ("amqtt-default", "its packaged defaults, as a new user runs it"),
        ("amqtt-stock", "our minimal plugin settings"),
    ):
        a = m(g, "passthrough", s1, kind, "msg_per_s") if s1 else None
        if c and a is not None:
            e = m(g, "e2e", c, "edgemq", "msg_per_s")
            q = m(g, "e2e", c, "mosquitto", "msg_per_s")
            rows.append(
                (
                    f"e2e QoS 1 edge→cloud (1 publisher): ≥ 10 × stock amqtt 0.12.1 pass-through ({how})",
                    f"{fmt(e)} vs {fmt(a)} msg/s = {ratio(e, a)} × (Mosquitto's bridge: {ratio(q, a)} ×)",
                    verdict(None if e is None or not a else e / a >= 10),
                )
            )
    c = _first(data, "latency", "1,000")
    if c:
        e = m(g, "latency", c, "edgemq", "edge.p99_ms")
        rows.append(
            ("p99 at 1,000 msg/s at the edge broker: < 10 ms", fmt(e, " ms"), verdict(None if e is None else e < 10))
        )
    # the drain case edgemq ran (a --big drain may exist for other topologies only)
    c = next((c for c in cases_of(data, "drain") if m(g, "drain", c, "edgemq", "drain_msg_per_s") is not None), None)
    live = m(g, "e2e", _first(data, "e2e", "1 publisher") or "", "edgemq", "msg_per_s")
    if c:
        d = m(g, "drain", c, "edgemq", "drain_msg_per_s")
        rows.append(
            (
                "backlog drain ≥ live ingest (e2e, 1 publisher)",
                f"{fmt(d)} vs {fmt(live)} msg/s",
                verdict(None if d is None or live is None else d >= live),
            )
        )
    c = _first(data, "overload", "QoS 0")
    if c:
        r0, r1 = m(g, "overload", c, "edgemq", "edge_rss_mb_start"), m(g, "overload", c, "edgemq", "edge_rss_mb_max")
        a50, a99 = m(g, "overload", c, "edgemq", "probe.p50_ms"), m(g, "overload", c, "edgemq", "probe.p99_ms")
        amax = m(g, "overload", c, "edgemq", "probe.max_ms")
        blocked = m(g, "overload", c, "edgemq", "publisher_blocked_s")
        if a99 is None:  # results from before the probe publisher existed
            p99 = m(g, "overload", c, "edgemq", "cloud.p99_ms")
            rows.append(
                (
                    "overload: memory and admitted latency bounded, excess pushed back or dropped and counted",
                    f"RSS {fmt(r0)} → {fmt(r1)} MB; cloud p99 {fmt(p99, ' ms')}",
                    "see §5",
                )
            )
        else:
            # Bounded: the broker's memory grows by less than 50 MB, and no admitted message waits
            # 1 s (the load lasts 30 s: a queue in front of admitted messages would grow through it).
            ok = None if r0 is None or r1 is None or amax is None else (r1 - r0 < 50 and amax < 1000)
            rows.append(
                (
                    "overload: memory and admitted latency bounded, excess pushed back or dropped and counted",
                    f"RSS {fmt(r0)} → {fmt(r1)} MB; admitted (probe publisher) p50 {fmt(a50)} / p99 "
                    f"{fmt(a99)} / max {fmt(amax, ' ms')}; load publisher pushed back {fmt(blocked, ' s')}",
                    verdict(ok),
                )
            )
    c = _first(data, "idle", "connections")
    if c:
        kb = m(g, "idle", c, "edgemq", "kb_per_connection")
        base = m(g, "idle", c, "edgemq", "rss_before_mb")
        est = None if kb is None or base is None else base + kb * 10_000 / 1000
        rows.append(
            (
                "10,000 idle connections < 250 MB",
                f"≈ {fmt(est)} MB (extrapolated from {c})",
                verdict(None if est is None else est < 250),
            )
        )
    if not rows:
        return []

    def load(scenario: str) -> str:
        vals = [r["loadavg_start"][0] for r in data["runs"] if r["scenario"] == scenario and r["kind"] == "edgemq"]
        return fmt(med(vals))

    # each row's scenario, by its wording (rows are only there when their scenario ran)
    scen = {
        "CPU per message": "cpu",
        "e2e QoS 1": "e2e",
        "p99 at": "latency",
        "backlog drain": "drain",
        "overload": "overload",
        "idle connections": "idle",
    }
    loads = {
        label: load(next(sc for key, sc in scen.items() if key in label))
        for label, _, _ in rows
        if any(key in label for key in scen)
    }
    lines = [
        "### Issue 9 targets for the edge node, against this run",
        "",
        "| target | measured (median) | result | load avg at run start |",
        "| --- | --- | --- | ---: |",
    ]
    lines += [f"| {a} | {b} | {v} | {loads.get(a, '—')} |" for a, b, v in rows]
    lines += [
        "",
        "The machine's load differed between scenarios (last column: 1-minute load average on 2 CPUs "
        "when edgemq's runs started), so rows that compare two scenarios (drain vs live e2e) compare "
        "different conditions; on this shared machine every edgemq figure is a lower bound.",
    ]
    return [*lines, ""]


def cpu_sum(g: Any, cases: list[str]) -> list[str]:
    lines = [
        "| case | edgemq edge node | Mosquitto edge + cloud | ratio | Mosquitto edge alone | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        e = m(g, "cpu", case, "edgemq", "edge_cpu_us_per_msg")
        qe = m(g, "cpu", case, "mosquitto", "edge_cpu_us_per_msg")
        qc = m(g, "cpu", case, "mosquitto", "cloud_cpu_us_per_msg")
        qs = (qe or 0) + (qc or 0) if qe is not None else None
        lines.append(f"| {case} | {fmt(e)} | {fmt(qs)} | {ratio(e, qs)} | {fmt(qe)} | {ratio(e, qe)} |")
    return [*lines, ""]


# ---- plots ------------------------------------------------------------------------------------
PLOTS = ["throughput.png", "latency.png", "drain.png", "overload.png"]


def plots(data: dict[str, Any], outdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = grouped(data)
    colors = {
        "edgemq": "tab:blue",
        "mosquitto": "tab:orange",
        "loadgen": "tab:gray",
        "edgemq-mosq": "tab:green",
        "mosquitto-persist": "tab:red",
    }

    labels, vals = [], defaultdict(list)
    for scenario in ("ingest", "e2e"):
        for case in cases_of(data, scenario):
            labels.append(f"{scenario}\n{case}")
            for kind in ("edgemq", "mosquitto"):
                vals[kind].append(m(g, scenario, case, kind, "msg_per_s") or 0)
            lg = m(g, "loadgen", case, "loadgen", "msg_per_s")
            vals["loadgen"].append(lg or 0)
    if labels:
        fig, ax = plt.subplots(figsize=(11, 4.5))
        w = 0.27
        for i, kind in enumerate(("edgemq", "mosquitto", "loadgen")):
            ax.bar(
                [x + (i - 1) * w for x in range(len(labels))],
                vals[kind],
                w,
                label={"loadgen": "load generator ceiling"}.get(kind, kind),
                color=colors[kind],
            )
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("messages/s (median)")
        ax.set_title("Throughput: edge ingest and edge→cloud (QoS 1)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(outdir / "throughput.png", dpi=110)
        plt.close(fig)

    cs = cases_of(data, "latency")
    if cs:
        fig, axes = plt.subplots(1, len(cs), figsize=(5.5 * len(cs), 4), squeeze=False)
        for ax, case in zip(axes[0], cs, strict=False):
            keys = [f"{at}.{q}" for at in ("edge", "cloud") for q in ("p50_ms", "p99_ms", "p999_ms")]
            for i, kind in enumerate(("edgemq", "mosquitto")):
                ys = [m(g, "latency", case, kind, k) for k in keys]
                ys = [y if y is not None and not math.isinf(y) else float("nan") for y in ys]
                ax.bar([x + (i - 0.5) * 0.4 for x in range(len(keys))], ys, 0.4, label=kind, color=colors[kind])
            ax.set_xticks(range(len(keys)), [k.replace("_ms", "").replace(".", "\n") for k in keys], fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms")
            ax.set_title(f"Latency at {case} (missing bar = not arrived)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(outdir / "latency.png", dpi=110)
        plt.close(fig)

    drains = [r for r in data["runs"] if r["scenario"] == "drain" and get(r, "result.timeline")]
    if drains:
        fig, ax = plt.subplots(figsize=(7, 4))
        sizes = sorted({r["case"] for r in drains})
        for r in drains:
            xs, ys = zip(*r["result"]["timeline"], strict=True)
            ax.plot(
                xs,
                ys,
                ["-", "--", ":"][sizes.index(r["case"]) % 3],
                label=f"{r['kind']}, {r['case']}",
                color=colors.get(r["kind"], "black"),
            )
        ax.set_yscale("log")
        ax.set_xlabel("s since the cloud broker was started")
        ax.set_ylabel("messages arrived at the cloud subscriber")
        ax.set_title("Backlog drain after an outage")
        ax.legend()
        fig.tight_layout()
        fig.savefig(outdir / "drain.png", dpi=110)
        plt.close(fig)

    ovs = [r for r in data["runs"] if r["scenario"] == "overload" and get(r, "result.samples")]
    if ovs:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for r in ovs:
            s = r["result"]["samples"]
            t = [x["t"] for x in s]
            a1.plot(t, [x["edge_rss_mb"] for x in s], label=f"{r['kind']} edge RSS", color=colors[r["kind"]])
            a2.plot(t, [x["sent"] for x in s], ":", color=colors[r["kind"]], label=f"{r['kind']} sent")
            a2.plot(t, [x["edge_rx"] for x in s], "--", color=colors[r["kind"]], label=f"{r['kind']} edge sub")
            a2.plot(t, [x["cloud_rx"] for x in s], "-", color=colors[r["kind"]], label=f"{r['kind']} cloud sub")
        a1.set_xlabel("s")
        a1.set_ylabel("MB")
        a1.set_title("Overload: edge broker RSS")
        a1.legend()
        a2.set_xlabel("s")
        a2.set_ylabel("messages (cumulative)")
        a2.set_title("Overload: sent vs received")
        a2.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(outdir / "overload.png", dpi=110)
        plt.close(fig)


# ---- entry ------------------------------------------------------------------------------------
def replace_section(text: str) -> None:
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    md = MD.read_text() if MD.exists() else "# edgemq benchmarks\n"
    if BEGIN in md and END in md:
        head, rest = md.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        md = head + block.rstrip("\n") + tail
    else:
        md = md.rstrip("\n") + "\n\n" + block
    MD.write_text(md)


def write_all(data: dict[str, Any], outdir: Path, *, update_md: bool = True) -> str:
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        plots(data, outdir)
    except Exception as exc:  # plots are a convenience; the tables still get written
        print(f"plots failed: {type(exc).__name__}: {exc}")
    text = section(data)
    if update_md:
        replace_section(text)
    return text


if __name__ == "__main__":
    d = json.loads((HERE / "results" / "latest.json").read_text())
    print(write_all(d, HERE / "results"))
