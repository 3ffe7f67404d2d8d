"""Durability figures (issue 5): ingest events/s with fsync ``always`` /
``interval`` / ``never`` against in-memory, snapshot size and write/load time
for the whole workload's users, recovery replay events/s, and the time to
define the 10k-audience workload one call at a time and to replay those
definitions.

Every event figure comes from the ``segmint-bench`` Rust binary with
``--data-dir`` (see its header); the definitions go through the Python
extension, as a caller defining audiences one by one would.
``benches/run.py`` runs this as one of its steps; alone it re-measures only
these figures and rewrites the durability section of BENCHMARKS.md in
place:

    python benches/durability_bench.py --size full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.run import ROOT, SIZES, Size, build_bench, run_engine_bench
from benches.sections import markers, patch_section
from benches.workload import WorkloadSpec

START, END = markers("durability")
MODES = ("memory", "always", "interval", "never")
# Small batches, so that the fsync per batch shows (50k-event batches hide it).
POLICY_CHUNK = 1_000
# The manual clock's start for the definition replay (no event reads it).
START_INSTANT = "2026-06-01T00:00:00Z"


def measure(size: Size, out: Path, threads: int) -> dict[str, Any]:
    """Runs every durability experiment at ``size``; errors are recorded."""
    spec = WorkloadSpec(users=size.users, events=size.events, audiences=size.std_audiences[0])
    prefix = min(spec.events, size.durability_events)
    result: dict[str, Any] = {
        "threads": threads,
        "policy_events": prefix,
        "policy_chunk": POLICY_CHUNK,
        "modes": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="segmint-dur-") as tmp:
        for mode in MODES:
            extra = ["--chunk", str(POLICY_CHUNK), "--max-events", str(prefix)]
            if mode != "memory":
                extra += ["--data-dir", str(Path(tmp) / mode), "--fsync", mode]
            try:
                result["modes"][mode] = run_engine_bench(
                    spec, threads, out, size.bench_timeout_s * 2, extra
                )
            except (RuntimeError, OSError, ValueError) as e:
                result["errors"][mode] = str(e)
        try:
            result["whole"] = run_engine_bench(
                spec,
                threads,
                out,
                size.bench_timeout_s * 3,
                ["--data-dir", str(Path(tmp) / "whole"), "--fsync", "always"],
            )
        except (RuntimeError, OSError, ValueError) as e:
            result["errors"]["whole"] = str(e)
        try:
            result["definitions"] = definitions_replay(
                replace(spec, audiences=size.std_audiences[1]), Path(tmp) / "definitions"
            )
        except Exception as e:  # keep going: the report says what failed
            result["errors"]["definitions"] = str(e)
    return result


def definitions_replay(spec: WorkloadSpec, data_dir: Path) -> dict[str, Any]:
    """Defines the workload's audiences one call at a time in a new durable
    engine (no profile yet), abandons it as a crash would, and opens the
    directory again: the calls' time as the catalog grows, and recovery's."""
    import gc

    import segmint

    from benches.workload import generate_audiences

    rules = [(key, rule) for key, rule, _ in generate_audiences(spec)]
    eng = segmint.Engine(clock="manual", now=START_INSTANT, data_dir=data_dir, fsync="never")
    call_s = []
    for key, rule in rules:
        t = time.perf_counter()
        eng.define_audience(key, rule)
        call_s.append(time.perf_counter() - t)
    # Released without close(): no final snapshot, the log alone remains.
    del eng
    gc.collect()
    t = time.perf_counter()
    eng = segmint.Engine(clock="manual", now=START_INSTANT, data_dir=data_dir, fsync="never")
    open_s = time.perf_counter() - t
    recovery = eng.recovery
    restored = len(eng.audiences())
    eng.close()
    if restored != len(rules):
        raise RuntimeError(f"reopened with {restored} of {len(rules)} audiences")
    tenth = max(1, len(rules) // 10)
    return {
        "audiences": len(rules),
        "define_s": sum(call_s),
        "first_tenth_ms": 1e3 * sum(call_s[:tenth]) / tenth,
        "last_tenth_ms": 1e3 * sum(call_s[-tenth:]) / tenth,
        "records_replayed": recovery.records_replayed,
        "replay_s": recovery.replay_seconds,
        "open_s": open_s,
    }


def section(d: dict[str, Any]) -> list[str]:
    """The durability section of BENCHMARKS.md (markdown lines)."""
    if not d:
        return ["Not measured in this run (`python benches/durability_bench.py`)."]
    lines = [
        f"Ingest of the first {d['policy_events']:,} events of the workload in batches of "
        f"{d['policy_chunk']:,} on {d['threads']} threads, 1k audiences; every batch is "
        "one log record (one fsync under `always`). Per-event latency: one event per call.",
        "",
        "| mode | events/s | vs in-memory | latency p50 | latency p99 |",
        "|---|---|---|---|---|",
    ]
    modes = d.get("modes", {})
    base = modes.get("memory", {}).get("events_per_s")
    for mode in MODES:
        r = modes.get(mode)
        if r is None:
            lines.append(f"| {mode} | failed: {d['errors'].get(mode, '?')} | | | |")
            continue
        rate = r["events_per_s"]
        ratio = f"{rate / base:.2f}×" if base else "—"
        name = "in memory" if mode == "memory" else f"fsync `{mode}`"
        lines.append(
            f"| {name} | {rate:,.0f} | {ratio} | {r['latency_us_p50']:.1f} µs | "
            f"{r['latency_us_p99']:.1f} µs |"
        )
    w = d.get("whole")
    if w and w.get("durability"):
        x = w["durability"]
        users = w["users"]
        lines += [
            "",
            f"Whole workload with fsync `always` ({w['events']:,} events in batches of 50,000, "
            f"{users:,} users, {w['audiences']:,} audiences, {w['threads']} threads):",
            "",
            "| figure | value | goal |",
            "|---|---|---|",
            f"| ingest with the log | {w['events_per_s']:,.0f} events/s | |",
            f"| the same, clock advances included (the timers they fire) | "
            f"{w['events_per_s_with_time']:,.0f} events/s | |",
            f"| log written | {x['log_bytes'] / 2**20:,.0f} MiB | |",
            f"| recovery: log replay | {x['replay_events_per_s']:,.0f} events/s "
            f"({x['replay_events']:,} events in {x['replay_s']:.1f} s) | ≥ 1 M events/s "
            f"{'✅' if x['replay_events_per_s'] >= 1e6 else '❌'} |",
            f"| snapshot size | {x['snapshot_bytes'] / 2**20:,.0f} MiB "
            f"({x['snapshot_bytes'] / max(users, 1):,.0f} B/user) | |",
            f"| snapshot write (encode + fsync + rename) | {x['snapshot_write_s']:.2f} s | |",
            f"| snapshot load at start | {x['snapshot_load_s']:.2f} s "
            f"(open {x['snapshot_open_s']:.2f} s) | |",
        ]
    elif "whole" in d.get("errors", {}):
        lines += ["", f"Whole-workload durable run failed: {d['errors']['whole']}"]
    defs = d.get("definitions")
    if defs:
        lines += [
            "",
            f"{defs['audiences']:,} audiences defined one call at a time in a new durable engine "
            "(no profile yet), then released without `close()` as a crash would:",
            "",
            "| figure | value |",
            "|---|---|",
            f"| defining all of them | {defs['define_s']:.1f} s "
            f"({defs['first_tenth_ms']:.2f} ms per call for the first tenth, "
            f"{defs['last_tenth_ms']:.2f} ms for the last) |",
            f"| recovery: replaying their {defs['records_replayed']:,} log records | "
            f"{defs['replay_s']:.2f} s (open {defs['open_s']:.2f} s) |",
        ]
    elif "definitions" in d.get("errors", {}):
        lines += ["", f"Definition replay failed: {d['errors']['definitions']}"]
    if d.get("note"):
        lines += ["", d["note"]]
    lines += [
        "",
        "No acknowledged event is lost after `kill -9`: `tests/test_durability.py` kills the "
        "real server mid-stream and compares the recovered state with an engine fed exactly "
        "the acknowledged batches (a test, not a figure). Replay re-runs the engine on each "
        "logged batch and clock advance, so it runs at the speed of ingest with clock advances.",
    ]
    return lines


def patch_report(md: Path, lines: list[str]) -> None:
    """Replaces the durability section of an existing BENCHMARKS.md."""
    patch_section(md, "durability", "Durability", lines)


def main(argv: list[str] | None = None) -> int:
    """Measures the durability figures and patches them into BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    size = SIZES[args.size]
    if not size.rust:
        size = replace(size, rust=True)
    err = build_bench()
    if err:
        print(f"segmint-bench: {err}", file=sys.stderr)
    out = ROOT / "benches" / "out" / "bench"
    d = measure(size, out, args.threads)
    (ROOT / "benches" / "out" / f"durability-{size.name}.json").write_text(json.dumps(d, indent=1))
    lines = section(d)
    print("\n".join(lines))
    if args.report.exists():
        patch_report(args.report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
