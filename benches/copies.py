"""Defining and removing a copy of a large audience, through the Python API.

A copy is an audience given the rule of one already defined (the standard
workload's 1,000 audiences hold 524 rules): it shares its lead's members
(docs/architecture.md, "Per-user state", on rule classes). This script gives ``--users``
profiles a country (four in five ``US``), defines ``trait.country == "US"``,
then defines and removes a copy of it ``--rounds`` times, and prints the
fastest and the median of each, in milliseconds, as JSON.

    python benches/copies.py --users 400000 --rounds 12

Run it with each checkout's ``.venv/bin/python`` (the extension built
there), one after the other, to compare builds. No timing is asserted
anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from segmint import Engine

RULE = 'trait.country == "US"'


def main() -> None:
    """Times the copies' definitions and removals; prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400_000)
    # Each round logs a change per member twice: 12 rounds of 320,000
    # members stay within the log's default 10 M changes, which trimming
    # would otherwise add to the later rounds.
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    eng = Engine(clock="manual", now="2026-01-01T00:00:00Z", shards=args.shards)
    for start in range(0, args.users, 50_000):
        lines = (
            json.dumps(
                {
                    "type": "identify",
                    "userId": f"u{i}",
                    "traits": {"country": "US" if i % 5 else "FR"},
                }
            )
            for i in range(start, min(args.users, start + 50_000))
        )
        result = eng.ingest("\n".join(lines).encode())
        if result.errors:
            raise SystemExit(f"ingest refused events: {result.errors[:3]}")
    t = time.perf_counter()
    members = eng.define_audience("us", RULE)
    lead_ms = (time.perf_counter() - t) * 1e3
    define_ms, remove_ms = [], []
    for k in range(args.rounds):
        t = time.perf_counter()
        eng.define_audience(f"us_copy_{k}", RULE)
        define_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        eng.remove_audience(f"us_copy_{k}")
        remove_ms.append((time.perf_counter() - t) * 1e3)
    figures = {
        "members": members,
        "shards": args.shards,
        "rounds": args.rounds,
        "lead_define_ms": round(lead_ms, 1),
        "copy_define_ms_min": round(min(define_ms), 1),
        "copy_define_ms_median": round(statistics.median(define_ms), 1),
        "copy_remove_ms_min": round(min(remove_ms), 1),
        "copy_remove_ms_median": round(statistics.median(remove_ms), 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
