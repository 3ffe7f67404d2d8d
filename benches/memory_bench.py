"""Memory as a deployment sees it: the workload streamed through
``Engine.ingest`` in JSON batches of 10,000 events, read from the file a
batch at a time (the clock moved to each batch's latest instant first), so
that the process holds little besides the engine. Prints one JSON object:
the process's RSS growth, the engine's heap (profiles, memberships, timers,
ids) and the in-memory change log's bytes, per user.

``segmint-bench`` reports the engine's heap exactly, but its RSS growth
includes what the allocator kept of the input it decoded up front; this is
the figure to size a machine by. ``benches/run.py`` runs it in a process of
its own; alone:

    python -m benches.memory_bench EVENTS.ndjson AUDIENCES.json
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benches.machine import rss_bytes

BATCH = 10_000
TIMESTAMP = re.compile(rb'"timestamp":"([^"]+)"')


def _instant(line: bytes) -> str:
    found = TIMESTAMP.search(line)
    if found is None:
        raise ValueError(f"an event without a timestamp: {line[:120]!r}")
    return found.group(1).decode()


def _ms(instant: str) -> int:
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() * 1000)


def measure(events: Path, audiences: Path) -> dict[str, Any]:
    """Streams ``events`` (NDJSON in time order) into a new one-shard engine
    with ``audiences`` defined; the figures after the last batch."""
    import segmint

    rules = [(key, rule) for key, rule in json.loads(audiences.read_text())]
    with events.open("rb") as f:
        start = _instant(f.readline())
    gc.collect()
    before = rss_bytes()
    eng = segmint.Engine(clock="manual", now=start, shards=1, threads=1)
    eng.define_audiences(rules)
    count = 0
    t = time.perf_counter()
    with events.open("rb") as f:
        while True:
            lines = [line.rstrip(b"\n") for _, line in zip(range(BATCH), f, strict=False)]
            if not lines:
                break
            # The batch's latest instant (a late event can come last).
            last = max((_instant(line) for line in lines), key=_ms)
            if _ms(last) > eng._core.now_ms:
                eng.advance(last)
            report = eng.ingest(b"[" + b",".join(lines) + b"]")
            if report.errors:
                raise RuntimeError(f"rejected events, the first: {report.errors[0]}")
            count += len(lines)
    seconds = time.perf_counter() - t
    gc.collect()
    stats = eng.stats()
    users = max(stats["users"], 1)
    rss = rss_bytes() - before
    return {
        "events": count,
        "users": stats["users"],
        "audiences": len(rules),
        "seconds": seconds,
        "rss_growth_bytes": rss,
        "rss_bytes_per_user": rss / users,
        "heap_bytes_per_user": stats["heap_bytes"] / users,
        "change_log_bytes": stats["change_log_bytes"],
        "changes": stats["last_seq"],
    }


def main(argv: list[str] | None = None) -> int:
    """Prints the figures of one streamed run as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events", type=Path)
    ap.add_argument("audiences", type=Path)
    args = ap.parse_args(argv)
    json.dump(measure(args.events, args.audiences), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
