"""Hot path, one build against another: runs two ``segmint-bench`` binaries
alternately on the same events and audiences, in memory, and writes the
"hotpath" section of BENCHMARKS.md (the full run keeps it as it is).

    git worktree add /tmp/before <commit>
    (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target scripts/with-pgo.sh \\
        cargo build --profile dist -p segmint-bench)
    scripts/with-pgo.sh cargo build --profile dist -p segmint-bench   # the --after default
    python benches/hotpath.py --before /tmp/before-target/dist/segmint-bench \\
        --before-label <commit> --after-label HEAD \\
        --events ev500k.ndjson --audiences benches/out/bench/audiences-1000-None-42.json

(A commit before 6fa26fa has neither the script nor the profile: build it
with ``cargo build --release`` and take ``/tmp/before-target/release/``.)
Each build carries the PGO profile committed with it, which goes stale as
the code changes: run ``make pgo`` before building the newer one.

Alternating runs spread any drift of a shared machine over both builds;
with ``--paired`` each round runs both builds at the same time (one core
each, ``--threads 1``), so that both see the same machine: on a shared
2-core machine whose speed drifts by 15% from one run to the next, a
difference of a few percent shows only in pairs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.run import BIN, HOTPATH_TITLE, ROOT
from benches.sections import patch_section

#: Single-event ingest calls per run (the latency columns).
LATENCY_SAMPLES = 2000

FIELDS = (
    ("events/s", "events_per_s", "{:,.0f}"),
    ("events/s with clock advances", "events_per_s_with_time", "{:,.0f}"),
    ("timers fired", "timers_fired", "{:,}"),
    ("latency p50 µs", "latency_us_p50", "{:.1f}"),
    ("latency p99 µs", "latency_us_p99", "{:.1f}"),
    ("heap B/user", "heap_bytes_per_user", "{:,.0f}"),
    ("RSS growth B/user", "rss_bytes_per_user", "{:,.0f}"),
    ("JSON decode events/s", "decode_events_per_s", "{:,.0f}"),
    ("backfill profiles/s", "backfill_profiles_per_s", "{:,.0f}"),
)


def bench_command(binary: Path, events: Path, audiences: Path, threads: int) -> list[str]:
    """The segmint-bench command line of one run."""
    return [
        str(binary),
        str(events),
        str(audiences),
        "--threads",
        str(threads),
        "--latency-samples",
        str(LATENCY_SAMPLES),
        # One backfill, as builds before `--backfills` (which ignore the
        # flag) time it: like for like.
        "--backfills",
        "1",
    ]


def parse_result(stdout: str) -> dict[str, Any]:
    """The JSON result a segmint-bench run printed last."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def run_once(binary: Path, events: Path, audiences: Path, threads: int) -> dict[str, Any]:
    """One segmint-bench run; its JSON result."""
    cmd = bench_command(binary, events, audiences, threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return parse_result(proc.stdout)


def run_pair(binaries: list[Path], events: Path, audiences: Path) -> list[dict[str, Any]]:
    """One run of each binary, all at the same time (one thread each)."""
    procs = [
        subprocess.Popen(
            bench_command(b, events, audiences, 1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in binaries
    ]
    results = []
    for binary, proc in zip(binaries, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{binary} failed: {stderr.strip()[-500:]}")
        results.append(parse_result(stdout))
    return results


def section(
    runs: dict[str, list[dict[str, Any]]],
    events: Path,
    audiences: Path,
    threads: int,
    paired: bool = False,
) -> list[str]:
    """The section's lines: one row per build, runs separated by ``/``."""
    first_build = next(iter(runs.values()))
    first = first_build[0]
    how = "both at the same time, one core each" if paired else "alternately"
    flags = " ".join(bench_command(Path("segmint-bench"), events, audiences, threads)[3:])
    lines = [
        f"`python benches/hotpath.py` ran `segmint-bench {events.name} {audiences.name} "
        f"{flags}` with each build, {how}, "
        f"{len(first_build)} runs each: {first['events']:,} events, "
        f"{first['users']:,} users, {first['audiences']:,} audiences, in memory. "
        "Events/s counts ingest of decoded events; with clock advances, also the "
        "`advance` before each batch that fires the timers due by then. JSON decoding "
        "is timed apart.",
        "",
        "| build | " + " | ".join(name for name, _, _ in FIELDS) + " |",
        "|---|" + "---|" * len(FIELDS),
    ]
    for label, results in runs.items():
        cells = [
            " / ".join(fmt.format(r[key]) if key in r else "—" for r in results)
            for _, key, fmt in FIELDS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measures both builds and patches BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="segmint-bench of the old build")
    ap.add_argument("--after", type=Path, default=BIN, help="segmint-bench of the new build")
    ap.add_argument("--before-label", required=True)
    ap.add_argument("--after-label", required=True)
    ap.add_argument("--events", type=Path, required=True)
    ap.add_argument("--audiences", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a sentence appended under the table")
    ap.add_argument(
        "--paired",
        action="store_true",
        help="run both builds at the same time in each round (one thread each)",
    )
    args = ap.parse_args(argv)
    builds = ((args.before_label, args.before), (args.after_label, args.after))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in builds}
    threads = 1 if args.paired else args.threads
    for _ in range(args.runs):
        if args.paired:
            results = run_pair([binary for _, binary in builds], args.events, args.audiences)
            for (label, _), result in zip(builds, results, strict=True):
                runs[label].append(result)
            continue
        for label, binary in builds:
            runs[label].append(run_once(binary, args.events, args.audiences, threads))
    lines = section(runs, args.events, args.audiences, threads, args.paired)
    if args.note:
        lines += ["", args.note]
    print("\n".join(lines))
    patch_section(args.report, "hotpath", HOTPATH_TITLE, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
