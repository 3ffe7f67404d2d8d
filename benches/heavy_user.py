"""One heavy buyer: does the cost of an event grow with the user's history?

Exports one user's ``Order Completed`` events (``--orders`` of them, spread
evenly over the workload's days, seeded categories and revenues) followed by
``--probes`` more, and runs ``segmint-bench`` on them with the standard
audiences: the orders go in as batches (events/s), then the probes one per
call (``--probe-tail``: p50/p99 of an order on a profile with the whole
history behind it). Windows of ``sum``/``min``/``max``/``avg`` over
``revenue`` hold up to all of the orders.

    python benches/heavy_user.py --orders 1000,10000,100000
    python benches/heavy_user.py --before /tmp/old-segmint-bench   # two builds
    python benches/heavy_user.py --write BENCHMARKS.md --note "..."

No timing is asserted anywhere; BENCHMARKS.md records a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.engine_bench import BIN, build_bench
from benches.sections import patch_section
from benches.workload import CATEGORIES, DAY_MS, WorkloadSpec, export_audiences


def iso_millis(ms: int) -> str:
    """``2026-05-31T12:00:05.123Z`` for milliseconds since the epoch."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


#: Title of the section this script writes into BENCHMARKS.md.
HEAVY_TITLE = "Heavy users"


def export_orders(orders: int, probes: int, spec: WorkloadSpec, out: Path) -> Path:
    """The heavy user's orders and probes as NDJSON, in time order (cached)."""
    path = out / f"heavy-{orders}-{probes}-{spec.days}-{spec.seed}.ndjson"
    if path.exists():
        return path
    rng = random.Random(spec.seed)
    total = orders + probes
    step = spec.days * DAY_MS / total
    lines = []
    for i in range(total):
        event = {
            "type": "track",
            "userId": "heavy-buyer",
            "event": "Order Completed",
            "properties": {
                "category": rng.choice(CATEGORIES),
                "revenue": round(rng.uniform(5.0, 300.0), 2),
            },
            "timestamp": iso_millis(spec.start_ms + int(i * step)),
            "messageId": f"heavy-{i}",
        }
        lines.append(json.dumps(event, separators=(",", ":")))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def run(binary: Path, events: Path, audiences: Path, probes: int) -> dict[str, Any]:
    """One segmint-bench run on one core; its JSON result."""
    cmd = [str(binary), str(events), str(audiences), "--threads", "1"]
    cmd += ["--probe-tail", str(probes), "--backfills", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", default="1000,10000,100000", help="comma-separated history sizes")
    p.add_argument("--probes", type=int, default=500, help="orders then sent one per call")
    p.add_argument("--audiences", type=int, default=1000)
    p.add_argument("--before", type=Path, help="another segmint-bench build to run first")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--write", type=Path, help="patch this BENCHMARKS.md")
    p.add_argument("--note", action="append", default=[], help="a paragraph to add (repeatable)")
    args = p.parse_args(argv)
    if (reason := build_bench()) is not None:
        print(f"segmint-bench not built: {reason}", file=sys.stderr)
        return 1
    spec = WorkloadSpec(audiences=args.audiences)
    audiences = export_audiences(spec, args.out)
    builds = ([("before", args.before)] if args.before else []) + [("this build", BIN)]
    lines = [
        f"`python benches/heavy_user.py` (one core, runs one after the other): one buyer's "
        f"orders in batches, then {args.probes} more one per call, "
        f"{args.audiences:,} audiences.",
        "",
        "| orders before | build | batch events/s | one per call p50 µs | p99 µs |",
        "|---:|---|---:|---:|---:|",
    ]
    print("\n".join(lines[-2:]), flush=True)
    for orders in (int(n) for n in args.orders.split(",")):
        events = export_orders(orders, args.probes, spec, args.out)
        for name, binary in builds:
            r = run(binary, events, audiences, args.probes)
            lines.append(
                f"| {orders:,} | {name} | {r['events_per_s']:,.0f} "
                f"| {r['latency_us_p50']:.1f} | {r['latency_us_p99']:.1f} |"
            )
            print(lines[-1], flush=True)
    if args.write:
        for note in args.note:
            lines += ["", note]
        patch_section(args.write, "heavy", HEAVY_TITLE, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
