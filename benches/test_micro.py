"""pytest-benchmark micro-benchmarks of the Python API (not part of ``make test``).

    pytest benches/test_micro.py --benchmark-only
    pytest benches/test_micro.py --benchmark-only --benchmark-autosave   # keep for comparison
    pytest-benchmark compare                                           # over commits

Groups: ``compile`` (define_audience on a fresh engine), ``track`` (one event),
``is_member_many`` (a batch of membership lookups) and ``bitmap`` (roaring export).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from benches.workload import WorkloadSpec, generate_audiences, generate_events, iter_segment_json

pytest.importorskip("pytest_benchmark")

import segmint

SPEC = WorkloadSpec(users=20_000, events=100_000, audiences=100, seed=42)
RULES = {
    "simple": 'did("Order Completed", 30d)',
    "vip": 'sum("Order Completed", revenue, 365d) > 300',
    "micro": (
        'trait.country == "US" and count("Product Viewed" where category == "shoes" '
        'and context.device.type == "ios", 7d) >= 2 and not did("Order Completed", 7d)'
    ),
}


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@pytest.fixture(scope="module")
def loaded() -> tuple[segmint.Engine, list[str], list[str]]:
    """An engine holding the workload (manual clock at its end) and its user ids."""
    events = generate_events(SPEC)
    engine = segmint.Engine(clock="manual", now=_dt(SPEC.end_ms))
    auds = generate_audiences(SPEC)
    engine.define_audiences([(k, text) for k, text, _ in auds])
    for batch in iter_segment_json(events, chunk_rows=10_000):
        engine.ingest(batch)
    users = sorted(set(events.column("user_id").to_pylist()))
    return engine, users, [k for k, _, _ in auds]


@pytest.mark.benchmark(group="compile")
@pytest.mark.parametrize("name", sorted(RULES))
def test_compile_rule(benchmark: Any, name: str) -> None:
    """define_audience on a fresh, empty engine: parse, type-check, compile."""
    counter = iter(range(10**9))

    def setup() -> tuple[tuple[segmint.Engine, str], dict[str, Any]]:
        return (segmint.Engine(clock="manual", now=_dt(SPEC.end_ms)), f"a{next(counter)}"), {}

    def define(engine: segmint.Engine, key: str) -> int:
        return engine.define_audience(key, RULES[name])

    assert benchmark.pedantic(define, setup=setup, rounds=200) == 0


@pytest.mark.benchmark(group="track")
def test_track_one_event(
    benchmark: Any, loaded: tuple[segmint.Engine, list[str], list[str]]
) -> None:
    """One Engine.track call on a loaded engine (100 audiences)."""
    engine, users, _ = loaded
    rng = random.Random(1)
    props = {"category": "shoes", "channel": "ads"}
    ctx = {"device": {"type": "ios"}}

    def one() -> None:
        engine.track(users[rng.randrange(len(users))], "Product Viewed", props, context=ctx)

    benchmark(one)


@pytest.mark.benchmark(group="track")
def test_ingest_batch_of_100(
    benchmark: Any, loaded: tuple[segmint.Engine, list[str], list[str]]
) -> None:
    """Engine.ingest of 100 JSON events (for the per-event cost of batching)."""
    engine, users, _ = loaded
    rng = random.Random(2)
    picks = [users[rng.randrange(len(users))] for _ in range(100)]
    payload = json.dumps(
        [
            {"type": "track", "userId": u, "event": "Added to Cart", "properties": {"x": 1}}
            for u in picks
        ]
    ).encode()
    benchmark(engine.ingest, payload)


@pytest.mark.benchmark(group="is_member_many")
@pytest.mark.parametrize("n", [100, 10_000])
def test_is_member_many(
    benchmark: Any, loaded: tuple[segmint.Engine, list[str], list[str]], n: int
) -> None:
    """is_member_many of ``n`` users in one audience."""
    engine, users, keys = loaded
    ids = random.Random(3).sample(users, min(n, len(users)))
    result = benchmark(engine.is_member_many, ids, keys[3])
    assert len(result) == len(ids)


@pytest.mark.benchmark(group="bitmap")
@pytest.mark.parametrize("key_index", [2, 3])
def test_bitmap_export(
    benchmark: Any, loaded: tuple[segmint.Engine, list[str], list[str]], key_index: int
) -> None:
    """Roaring bitmap export (portable serialization + lazy id map) of one audience."""
    engine, _, keys = loaded
    bm, ids = benchmark(engine.bitmap_with_ids, keys[key_index])
    assert len(ids) == len(bm) == engine.size(keys[key_index])
