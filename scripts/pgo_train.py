"""The training run of ``make pgo`` (scripts/pgo.sh).

``pgo_train.py export DIR`` writes the training workload for ``segmint-bench``;
``pgo_train.py python`` drives an instrumented extension through the Python
API. The workload is the standard one's generator with another seed and a
fifth of its users, so that the benchmarks never measure their own training
input.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import peers
from benches.workload import (
    AudienceSpec,
    WorkloadSpec,
    export,
    generate_audiences,
    generate_events,
    iter_segment_json,
)

TRAINING = WorkloadSpec(users=200_000, events=600_000, days=180, audiences=1_000, seed=7)


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def export_workload(out: Path) -> None:
    """Events as NDJSON with 1,000 and 10,000 audiences, for ``segmint-bench``."""
    for audiences in (1_000, 10_000):
        events, auds = export(replace(TRAINING, audiences=audiences), out)
        print(events, auds)


def train_python() -> None:
    """The paths the sidecar and the Python benchmarks take: JSON batches with
    clock advances, single calls, lookups and inspect, and a durable engine's
    log and replay."""
    import segmint

    events = generate_events(TRAINING)
    audiences: list[AudienceSpec] = [a for _, _, a in generate_audiences(TRAINING)]
    run = peers.run_segmint(
        events, audiences, TRAINING.start_ms, TRAINING.end_ms, chunk_rows=50_000
    )
    users = peers.sample_user_ids(events, 2_000)
    peers.python_event_latency(run.engine, users, 5_000)
    peers.inspect_figures(
        run.engine,
        events,
        audiences,
        TRAINING.start_ms,
        50_000,
        ingest_rows=100_000,
        explain_samples=500,
    )
    head = events.slice(0, 100_000)
    start = _instant(TRAINING.start_ms)
    with tempfile.TemporaryDirectory() as data_dir:
        durable = segmint.Engine(clock="manual", now=start, data_dir=data_dir, fsync="never")
        durable.define_audiences([(a.key, a.text) for a in audiences])
        ends = peers.batch_ends(head, 5_000)
        for data, last in zip(iter_segment_json(head, chunk_rows=5_000), ends, strict=True):
            durable.advance(_instant(max(last, durable._core.now_ms)))
            durable.ingest(data)
        durable.sync()
        # Dropped without close (no final snapshot), as a crash leaves it:
        # reopening replays the log, the recovery path.
        del durable
        gc.collect()
        again = segmint.Engine(clock="manual", now=start, data_dir=data_dir, fsync="never")
        if again.recovery.events_replayed != head.num_rows:
            raise SystemExit(f"the reopened engine replayed {again.recovery}")
        again.close()
    print(f"python training: {run.rows:,} events, {run.changes:,} changes")


def main(argv: list[str]) -> int:
    """``export DIR`` or ``python``."""
    if argv[:1] == ["export"] and len(argv) == 2:
        export_workload(Path(argv[1]))
    elif argv == ["python"]:
        train_python()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
