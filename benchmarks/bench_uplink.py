"""Where does the uplink's drain time go? One drain per cloud, with py-spy on the edge node.

Fills a backlog at an edgemq edge node while the cloud is down, starts the cloud
(edgemq's amqtt cloud, or Debian's Mosquitto), and measures the drain at a cloud
subscriber: messages/s, edge-process CPU µs per message (psutil), and a py-spy
profile of the edge process during the drain (collapsed stacks, top functions
printed; raw file under benchmarks/results/).

Run: ``.venv/bin/python benchmarks/bench_uplink.py [--messages 30000] [--cloud mosquitto,amqtt]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import scenarios as sc
from profile_edge import analyse

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--cloud", default="mosquitto,amqtt")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--inflight", type=int, default=None, help="the bridge's in-flight window")
    ap.add_argument("--protocol", default="3.1.1", help="MQTT version upstream: 3.1.1 or 5")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = sc.Params(drain_messages=args.messages)
    out = {}
    for cloud in args.cloud.split(","):
        kind = "edgemq-mosq" if cloud == "mosquitto" else "edgemq"
        work = harness.new_workdir()
        raw = None if args.no_profile else RESULTS / f"uplink-drain-{cloud}{args.tag}.txt"
        try:
            load0 = os.getloadavg()
            res = sc.run_drain(
                kind, work / kind, p=p, profile=raw, topo_kw={"inflight": args.inflight, "protocol": args.protocol}
            )
            res.pop("timeline", None)
            res["loadavg"] = [load0, os.getloadavg()]
            res["inflight"], res["protocol"] = args.inflight, args.protocol
        finally:
            harness.stop_all()
            shutil.rmtree(work, ignore_errors=True)
        out[cloud] = res
        print(
            f"{cloud}: received {res.get('received')}/{res.get('filled')} "
            f"drain {res.get('drain_msg_per_s', 0):,.0f} msg/s, "
            f"edge CPU {res.get('edge_cpu_us_per_msg', 0):,.0f} us/msg, load {res['loadavg']}"
        )
        if raw is not None and raw.exists():
            summary = analyse(raw, top=25)
            res["profile"] = summary
            for title in ("inclusive_pct", "self_pct"):
                print(f"--- {title}")
                for f, pct in summary[title]:  # type: ignore[union-attr]
                    print(f"{pct:5.1f}%  {f}")
    (RESULTS / f"uplink-drain{args.tag}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
