"""The ``segmint`` command line."""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta

from segmint.engine import Engine
from segmint.examples import EXAMPLE_AUDIENCES, generate_events


def _demo(args: argparse.Namespace) -> int:
    """Streams a generated e-commerce workload through the engine on a manual
    clock and prints audience sizes and changes as they happen."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    engine = Engine(clock="manual", now=start)
    for key, rule in EXAMPLE_AUDIENCES:
        engine.define_audience(key, rule)
        print(f"defined {key:<22} {rule}")
    rng = random.Random(args.seed)
    seen = 0
    t0 = time.perf_counter()
    total_events = 0
    for step in range(args.hours):
        now = start + timedelta(hours=step)
        engine.advance(now)
        batch = generate_events(rng, args.users, args.events_per_hour, now)
        result = engine.ingest(batch)
        total_events += result.accepted
        changes = engine.changes(seen)
        seen = engine.last_seq
        for change in changes[: args.show]:
            print(
                f"  #{change.seq:<6} {change.at:%Y-%m-%d %H:%M:%S}  {change.kind:<7} "
                f"{change.audience:<20} {change.user_id:<10} ({change.reason})"
            )
        if len(changes) > args.show:
            print(f"  … and {len(changes) - args.show} more changes")
        sizes = ", ".join(f"{k}={engine.size(k)}" for k, _ in EXAMPLE_AUDIENCES)
        print(f"{now:%Y-%m-%d %H:%M} hour {step + 1}/{args.hours}: {sizes}")
    elapsed = time.perf_counter() - t0
    print(
        f"done: {total_events} events, {engine.last_seq} changes, {engine.user_count} users "
        f"in {elapsed:.2f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segmint`` command."""
    parser = argparse.ArgumentParser(prog="segmint", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stream a generated workload and print audience changes")
    demo.add_argument("--users", type=int, default=2000)
    demo.add_argument("--events-per-hour", type=int, default=4000)
    demo.add_argument("--hours", type=int, default=72)
    demo.add_argument("--show", type=int, default=5, help="changes to print per hour")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
