"""Events/s against cores: runs ``segmint-bench`` on the standard workload
(1,000,000 users, 1,000 audiences) with 1, 2, 4 ... threads (one shard per
thread) and writes the "cores" section of BENCHMARKS.md.

It needs only numpy and pyarrow (for the workload) and a built binary, so it
runs on a larger machine that has no Rust toolchain:

    python benches/cores.py --bin target/dist/segmint-bench --json cores.json
    python benches/cores.py --from-json cores.json --write BENCHMARKS.md

The first command measures (results are written after each run, so a run cut
short keeps what it finished); the second writes the section from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benches import engine_bench
from benches.machine import machine_info
from benches.sections import patch_section
from benches.workload import WorkloadSpec, export, generate_events

ROOT = Path(__file__).resolve().parent.parent
#: Title of the section this script writes.
CORES_TITLE = "Cores: events/s against threads"


def default_threads(cores: int) -> list[int]:
    """1, 2, 4 ... up to ``cores``, and ``cores`` itself."""
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return [*out, cores]


def busiest_shard_share(user_ids: np.ndarray, shards: int) -> float:
    """The share of the events whose user lands in the busiest of ``shards``
    shards, with dense ids given in order of first appearance as the engine
    gives them (a user lives in shard ``id % shards``). A user's events are
    applied one after the other, so ingest on ``shards`` threads is at most
    ``1 / share`` times one thread's speed."""
    _, first, inverse = np.unique(user_ids, return_index=True, return_inverse=True)
    dense = np.argsort(np.argsort(first))[inverse]
    loads = np.bincount(dense % shards, minlength=shards)
    return float(loads.max() / max(len(user_ids), 1))


def run_once(
    binary: Path, events: Path, audiences: Path, threads: int, latency_samples: int
) -> dict[str, Any]:
    """One ``segmint-bench`` run with ``threads`` threads and shards, with its
    wall time."""
    t = time.perf_counter()
    result = engine_bench.run(
        events, audiences, threads, binary=binary, latency_samples=latency_samples
    )
    result["wall_s"] = time.perf_counter() - t
    return result


def section(doc: dict[str, Any]) -> list[str]:
    """The lines of the "cores" section from a results document."""
    m = doc["machine"]
    runs = sorted(doc["runs"], key=lambda r: r["threads"])
    base = next((r for r in runs if r["threads"] == 1), None)
    lines = [
        f"`python benches/cores.py` at `{doc['label']}` on {m['cpu']}, {m['cores']} cores, "
        f"{m['ram_bytes'] / 2**30:.0f} GiB RAM ({m['os']}): the whole workload "
        f"({runs[0]['events']:,} events, {runs[0]['users']:,} users, "
        f"{runs[0]['audiences']:,} audiences) in memory, one shard per thread, batches of "
        "50,000. Events/s counts ingest of decoded events; with clock advances, also the "
        "`advance` before each batch that fires the timers due by then. Backfill defines one "
        "more audience over every profile on all the run's threads.",
        "",
        "| threads | events/s | speed-up | ceiling | serial s | events/s with clock advances "
        "| advance s | backfill profiles/s | heap B/user |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shares = doc.get("busiest_shard_share", {})
    for r in runs:
        speed_up = f"{r['events_per_s'] / base['events_per_s']:.2f}×" if base else "—"
        share = shares.get(str(r["shards"]))
        ceiling = f"{1 / share:.2f}×" if share else "—"
        serial = r.get("ingest_caller_cpu_s")
        serial_cell = f"{serial:.2f}" if serial is not None else "—"
        lines.append(
            f"| {r['threads']} | {r['events_per_s']:,.0f} | {speed_up} | {ceiling} | {serial_cell} "
            f"| {r['events_per_s_with_time']:,.0f} | {r['advance_s']:.2f} "
            f"| {r['backfill_profiles_per_s']:,.0f} | {r['heap_bytes_per_user']:,.0f} |"
        )
    changes = {r["changes"] for r in runs}
    timers = {r["timers_fired"] for r in runs}
    same = len(changes) == 1 and len(timers) == 1
    top = doc.get("top_user_share")
    if shares and top:
        lines += [
            "",
            "The ceiling is one over the share of the events whose users land in the busiest "
            "shard (a user lives in one shard, and a user's events are applied one after the "
            f"other): the workload's users are Zipf-distributed, and its busiest user alone sends "
            f"{top:.1%} of the events. Serial s is the calling thread's CPU time inside ingest "
            "(`ingest_caller_cpu_s`): the steps no other thread shares.",
        ]
    lines += [
        "",
        f"Every run made {'the same' if same else 'DIFFERENT'} membership changes and timer "
        f"firings ({', '.join(f'{c:,}' for c in sorted(changes))} changes, "
        f"{', '.join(f'{t:,}' for t in sorted(timers))} timers).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measures, or writes the section from earlier results."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--bin", type=Path, default=engine_bench.BIN)
    p.add_argument("--threads", help="comma-separated thread counts (default 1, 2, 4 ... cores)")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=3_000_000)
    p.add_argument("--audiences", type=int, default=1_000)
    p.add_argument("--latency-samples", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benches" / "out", help="workload cache")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--label", default="HEAD", help="the build's name in the report")
    p.add_argument("--from-json", type=Path, help="write the section from these results")
    p.add_argument("--write", type=Path, help="patch this BENCHMARKS.md")
    p.add_argument("--note", action="append", default=[], help="a paragraph to add (repeatable)")
    args = p.parse_args(argv)
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
    else:
        machine = machine_info()
        threads = (
            [int(t) for t in args.threads.split(",")]
            if args.threads
            else default_threads(machine["cores"])
        )
        spec = WorkloadSpec(
            users=args.users, events=args.events, days=180, seed=42, audiences=args.audiences
        )
        t = time.perf_counter()
        events, audiences = export(spec, args.out)
        print(f"workload: {time.perf_counter() - t:.1f} s", flush=True)
        user_ids = generate_events(spec).column("user_id").to_numpy(zero_copy_only=False)
        _, counts = np.unique(user_ids, return_counts=True)
        doc = {
            "label": args.label,
            "machine": machine,
            "runs": [],
            "top_user_share": float(counts.max() / len(user_ids)),
            "busiest_shard_share": {str(n): busiest_shard_share(user_ids, n) for n in threads},
        }
        print(f"busiest shard's share: {doc['busiest_shard_share']}", flush=True)
        for n in threads:
            r = run_once(args.bin, events, audiences, n, args.latency_samples)
            r.pop("latency_by_kind", None)
            doc["runs"].append(r)
            print(
                f"{n} threads: {r['events_per_s']:,.0f} events/s, "
                f"{r['events_per_s_with_time']:,.0f} with clock advances, "
                f"backfill {r['backfill_profiles_per_s']:,.0f} profiles/s, "
                f"run {r['wall_s']:.0f} s",
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(doc, indent=1))
    lines = section(doc)
    for note in args.note:
        lines += ["", note]
    print("\n".join(lines))
    if args.write:
        patch_section(args.write, "cores", CORES_TITLE, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
