"""Engine figures on the standard workload: batch ingest events/s on one core
and on all cores at 1k and 10k audiences (and 10k with only 1k hot, the
fan-out control), per-event latency, bytes per user and backfill profiles/s.

It exports the workload of ``benches/workload.py`` (NDJSON events in time
order, audiences as JSON) and runs the ``segmint-bench`` Rust binary on it, so
the figures measure the engine, not Python.

    python benches/engine_bench.py --users 1000000 --events 3000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.workload import WorkloadSpec, export

ROOT = Path(__file__).resolve().parent.parent
# The `dist` profile (fat LTO, the committed PGO profile): what users run.
BIN = ROOT / "target" / "dist" / "segmint-bench"


def build_bench() -> str | None:
    """Builds ``segmint-bench`` as ``make build`` builds the extension
    (``scripts/with-pgo.sh cargo build --profile dist``); None on success,
    else the reason."""
    try:
        done = subprocess.run(
            [
                str(ROOT / "scripts" / "with-pgo.sh"),
                "cargo",
                "build",
                "--profile",
                "dist",
                "-q",
                "-p",
                "segmint-bench",
                "--bin",
                "segmint-bench",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode != 0:
        return "cargo build failed: " + " / ".join(done.stderr.strip().splitlines()[-3:])
    return None


def run(
    events: Path,
    audiences: Path,
    threads: int,
    hot: int | None = None,
    binary: Path = BIN,
    latency_samples: int | None = None,
) -> dict[str, Any]:
    """Runs the Rust benchmark once and returns its figures."""
    cmd = [str(binary), str(events), str(audiences), "--threads", str(threads)]
    if hot is not None:
        cmd += ["--hot", str(hot)]
    if latency_samples is not None:
        cmd += ["--latency-samples", str(latency_samples)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    """Builds the binary, exports the workload, runs every configuration."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=3_000_000)
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=ROOT / "benches" / "out")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    args = p.parse_args(argv)
    err = build_bench()
    if err:
        raise SystemExit(f"segmint-bench: {err}")
    results = []
    configs: list[tuple[int, int | None]] = [(1_000, None), (10_000, None), (10_000, 1_000)]
    for n_aud, hot in configs:
        spec = WorkloadSpec(
            users=args.users,
            events=args.events,
            days=args.days,
            audiences=n_aud,
            hot_audiences=hot,
            seed=args.seed,
        )
        t = time.perf_counter()
        events, audiences = export(spec, args.out)
        print(f"workload {n_aud} audiences (hot {hot}): {time.perf_counter() - t:.1f}s", flush=True)
        for threads in sorted({1, args.threads}):
            r = run(events, audiences, threads, hot)
            r["config"] = f"{n_aud} audiences" + (f", {hot} hot" if hot else "")
            results.append(r)
            print(
                f"  {threads} thread(s): {r['events_per_s'] / 1e6:.2f} M events/s, "
                f"p50 {r['latency_us_p50']:.1f} us, p99 {r['latency_us_p99']:.1f} us, "
                f"{r['heap_bytes_per_user']:.0f} B/user, "
                f"backfill {r['backfill_profiles_per_s'] / 1e6:.1f} M profiles/s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
