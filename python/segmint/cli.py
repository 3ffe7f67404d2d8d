"""The ``segmint`` command line."""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


def _serve(args: argparse.Namespace) -> int:
    """Runs the gRPC sidecar (see docs/operations.md)."""
    import msgspec

    from segmint.config import ConfigError, load_config, validate
    from segmint.server import serve

    try:
        config = load_config(args.config)
        server, engine = config.server, config.engine
        if args.listen is not None:
            server = msgspec.structs.replace(server, listen=args.listen)
        if args.metrics_port is not None:
            server = msgspec.structs.replace(server, metrics_port=args.metrics_port)
        if args.grace is not None:
            server = msgspec.structs.replace(server, grace_seconds=args.grace)
        if args.log_level is not None:
            server = msgspec.structs.replace(server, log_level=args.log_level)
        if args.clock is not None:
            engine = msgspec.structs.replace(engine, clock=args.clock)
        config = msgspec.structs.replace(config, server=server, engine=engine)
        if args.no_examples:
            config = msgspec.structs.replace(config, examples=False)
        validate(config)
        token = config.resolved_token()
    except ConfigError as e:
        print(f"segmint serve: {e}", file=sys.stderr)
        return 2
    return serve(config, token=token)


def _load(args: argparse.Namespace) -> int:
    """Streams a generated workload into a running sidecar."""
    from segmint.client import run_load

    return run_load(args)


def _find_bench_runner() -> Path | None:
    """``benches/run.py`` of a source checkout (it is not part of the installed
    package): next to this package's source tree, or under the working directory."""
    here = Path(__file__).resolve()
    for root in (here.parents[2], Path.cwd()):
        candidate = root / "benches" / "run.py"
        if candidate.is_file():
            return candidate
    return None


def _bench(args: argparse.Namespace) -> int:
    """Runs the benchmark suite of a source checkout and writes BENCHMARKS.md."""
    runner = _find_bench_runner()
    if runner is None:
        print(
            "segmint bench: benches/run.py not found; the benchmark suite lives in the "
            "source repository (run this from a checkout, or `make bench` there)",
            file=sys.stderr,
        )
        return 2
    cmd = [sys.executable, str(runner), "--size", args.size]
    cmd += ["--command", f"segmint bench --size {args.size}", *args.extra]
    return subprocess.call(cmd, cwd=runner.parent.parent)


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
    serve = sub.add_parser("serve", help="run the gRPC sidecar (docs/operations.md)")
    serve.add_argument("--config", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--listen", help="HOST:PORT or unix:///path (default 127.0.0.1:50051)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port on loopback (0 = off)")
    serve.add_argument("--clock", choices=["wall", "manual"], help="engine clock (default wall)")
    serve.add_argument("--grace", type=float, help="shutdown grace period in seconds")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--no-examples", action="store_true", help="do not define the bundled example audiences"
    )
    serve.set_defaults(func=_serve)
    load = sub.add_parser("load", help="stream a generated workload into a running sidecar")
    load.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT or unix:///path")
    load.add_argument("--rate", type=float, default=100_000, help="events per second (0 = max)")
    load.add_argument("--events", type=int, default=1_000_000, help="events to send in all")
    load.add_argument("--batch", type=int, default=1000, help="events per batch")
    load.add_argument("--users", type=int, default=100_000)
    load.add_argument("--window", type=int, default=8, help="unacknowledged batches in flight")
    load.add_argument("--seed", type=int, default=7)
    load.add_argument("--token", help="bearer token (default: $SEGMINT_TOKEN)")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(func=_load)
    bench = sub.add_parser(
        "bench", help="run the benchmark suite of a source checkout and write BENCHMARKS.md"
    )
    bench.add_argument("--size", choices=["smoke", "small", "full"], default="small")
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="passed on to benches/run.py")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
