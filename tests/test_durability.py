"""Durability: library-mode persistence, damaged files, retries, and the real
server killed with SIGKILL mid-stream, restarted, and compared with an
in-process engine fed exactly the acknowledged batches."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import abandon, engine_available

pytestmark = pytest.mark.skipif(not engine_available(), reason="segmint._core not built")

import segmint  # noqa: E402
from segmint import CorruptDataError, Engine, StorageError  # noqa: E402
from segmint.examples import EXAMPLE_AUDIENCES  # noqa: E402

NOW = "2026-06-01T00:00:00Z"
NOW_S = 1_780_272_000  # NOW in seconds
SHARDS = 2


def make_engine(data_dir: Path | None = None, **kw: Any) -> Engine:
    return Engine(clock="manual", now=NOW, shards=SHARDS, threads=2, data_dir=data_dir, **kw)


COMPUTED = [
    ("revenue_30d", 'sum("Order Completed", revenue, 30d)'),
    ("categories", 'unique("Product Viewed", category)'),
]


def define_all(e: Engine) -> None:
    """The computed traits, then the bundled audiences (as the server does)."""
    for key, expr in COMPUTED:
        e.define_computed_trait(key, expr)
    e.define_audiences(EXAMPLE_AUDIENCES)


def events(rng: random.Random, n: int, users: int = 40) -> list[dict[str, Any]]:
    """Seed-taxonomy events with explicit timestamps in the last 30 days."""
    out: list[dict[str, Any]] = []
    for _ in range(n):
        user = f"user-{rng.randrange(users)}"
        ts = NOW_S - rng.randrange(30 * 86400)
        mid = f"m-{rng.getrandbits(48):x}"
        if rng.random() < 0.2:
            out.append(
                {
                    "type": "identify",
                    "userId": user,
                    "messageId": mid,
                    "traits": {
                        "plan": rng.choice(["free", "pro", "enterprise"]),
                        "country": rng.choice(["US", "DE", "FR"]),
                        "ltv": rng.randrange(600),
                    },
                }
            )
        else:
            name = rng.choice(
                ["Product Viewed", "Added to Cart", "Checkout Started", "Order Completed"]
            )
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": name,
                    "messageId": mid,
                    "timestamp": _iso(ts),
                    "properties": {
                        "category": rng.choice(["shoes", "hats", "bags"]),
                        "revenue": rng.randrange(1, 400),
                    },
                }
            )
    return out


def _iso(seconds: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def digest(e: Engine, users: list[str]) -> dict[str, Any]:
    """Everything observable that durability must keep."""
    out: dict[str, Any] = {"last_seq": e.last_seq, "now": e.now, "user_count": e.user_count}
    for key in e.audiences():
        out[f"rule {key}"] = e.rule(key)
        out[f"size {key}"] = e.size(key)
        out[f"members {key}"] = [(m, e.entered_at(m, key)) for m in e.members(key)]
    out["computed traits"] = e.computed_traits()
    for u in users:
        out[f"traits {u}"] = e.traits(u)
        out[f"computed {u}"] = {c.key: e.computed_value(u, c.key) for c in e.computed_traits()}
        out[f"audiences {u}"] = e.audiences_of(u)
    out["changes"] = e.changes(0)
    return out


# ------------------------------------------------------------ library mode


def test_close_and_reopen_keeps_everything(tmp_path: Path) -> None:
    rng = random.Random(1)
    users = [f"user-{i}" for i in range(40)]
    ref = make_engine()
    with make_engine(tmp_path) as eng:
        assert eng.durable and not ref.durable
        for e in (ref, eng):
            define_all(e)
            e.define_static_audience("uploaded", users[:5])
        for _ in range(10):
            batch = events(rng, 30)
            assert ref.ingest(batch) == eng.ingest(batch)
        assert ref.last_seq > 10
    again = make_engine(tmp_path)
    assert again.recovery.snapshot_generation > 0
    assert again.recovery.records_replayed == 0
    assert digest(again, users) == digest(ref, users)
    # Work goes on from the same seq, identically.
    batch = events(rng, 30)
    assert again.ingest(batch) == ref.ingest(batch)
    assert digest(again, users) == digest(ref, users)
    again.close()


def test_audiences_defined_and_removed_again_and_again_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    """A removed audience's members lose its list entries, and the states
    and timers no live rule reads leave the profiles: a long-running engine
    whose audiences come and go keeps a flat heap, through a restart too."""
    eng = make_engine(tmp_path, fsync="never")
    users = range(3_000)
    eng.ingest(
        [
            {"type": "identify", "userId": f"u{i}", "traits": {"n": i % 100}, "timestamp": NOW}
            for i in users
        ]
    )
    eng.define_audience("kept", "trait.n >= 50")

    def heap() -> int:
        return dict(eng.stats())["heap_bytes"]

    after_first = 0
    for k in range(12):
        # Rules of their own each time (a copy of another shares its
        # members), one with a state and a timer per member.
        assert eng.define_audience(f"traits_{k}", f"trait.n >= {k}") == 30 * (100 - k)
        eng.define_audience(f"views_{k}", f'did("Viewed" where v != {k}, 1d)')
        eng.ingest(
            [
                {"type": "track", "event": "Viewed", "userId": f"u{i}", "properties": {"v": -1}}
                for i in users
            ]
        )
        assert eng.size(f"views_{k}") == 3_000
        eng.remove_audience(f"traits_{k}")
        eng.remove_audience(f"views_{k}")
        if k == 0:
            after_first = heap()
    # Each round used to leave about 10 bytes per member of `traits_k` and,
    # for every user, a timer and a state that later events went on feeding.
    assert heap() <= after_first + 4096, (after_first, heap())
    assert dict(eng.stats())["pending_timers"] == 0
    eng.close()
    again = make_engine(tmp_path)
    assert again.size("kept") == 1_500
    assert again.audiences() == ["kept"]
    restored = dict(again.stats())
    assert restored["pending_timers"] == 0
    assert restored["heap_bytes"] <= after_first + 4096, (after_first, restored)
    again.close()


def test_reopen_without_close_replays_the_log(tmp_path: Path) -> None:
    rng = random.Random(2)
    users = [f"user-{i}" for i in range(40)]
    ref = make_engine()
    eng = make_engine(tmp_path, fsync="never")
    for e in (ref, eng):
        define_all(e)
    for _ in range(5):
        batch = events(rng, 20)
        ref.ingest(batch)
        eng.ingest(batch)
    eng.snapshot()
    for _ in range(5):
        batch = events(rng, 20)
        ref.ingest(batch)
        eng.ingest(batch)
    eng.sync()
    # A second engine cannot open the directory while this one holds it.
    with pytest.raises(StorageError, match="in use"):
        make_engine(tmp_path)
    # Abandon it like a crashed process would: no close, no final snapshot.
    abandon(eng)
    again = make_engine(tmp_path)
    assert again.recovery.records_replayed == 5
    assert again.recovery.events_replayed == 100
    assert digest(again, users) == digest(ref, users)
    again.close()


@pytest.mark.parametrize("reopen_now", ["2026-06-01T00:00:02Z", None])
def test_a_log_without_a_snapshot_replays_at_its_own_instants(
    tmp_path: Path, reopen_now: str | None
) -> None:
    """Reopened after a crash at a later instant (or, without ``now``, at the
    wall clock's), an engine that never took a snapshot applies its logged
    records at the instants they were made, as it does from a snapshot."""
    eng = make_engine(tmp_path, fsync="never")
    eng.define_audience("viewers", 'did("Product Viewed", 10s)')
    eng.track("u1", "Product Viewed", {})
    eng.advance("2026-06-01T00:00:01Z")
    eng.track("u2", "Product Viewed", {})
    before = [(c.audience, c.user_id, c.kind, c.at) for c in eng.changes()]
    entered = {u: eng.entered_at(u, "viewers") for u in ("u1", "u2")}
    eng.sync()
    abandon(eng)
    kw: dict[str, Any] = {} if reopen_now is None else {"now": reopen_now}
    again = Engine(clock="manual", shards=SHARDS, threads=2, data_dir=tmp_path, **kw)
    assert again.recovery.records_replayed == 4
    assert [(c.audience, c.user_id, c.kind, c.at) for c in again.changes()] == before
    assert {u: again.entered_at(u, "viewers") for u in ("u1", "u2")} == entered
    assert again.now.isoformat() == "2026-06-01T00:00:01+00:00"
    again.close()


def test_retried_message_ids_are_applied_once_across_restarts(tmp_path: Path) -> None:
    batch = events(random.Random(3), 25)
    with make_engine(tmp_path) as eng:
        eng.define_audiences(EXAMPLE_AUDIENCES)
        first = eng.ingest(batch)
        assert first.duplicates == 0
        seq = eng.last_seq
    with make_engine(tmp_path) as eng:
        retry = eng.ingest(batch)
        assert retry.duplicates == 25 and retry.changes == 0
        assert eng.last_seq == seq
    # Outside the window a messageId is forgotten and applies again.
    with make_engine(tmp_path, dedup_window="1s") as eng:
        eng.advance("2026-06-01T00:00:05Z")
        eng.track("late", "Order Completed", {"revenue": 5}, message_id="x1")
        assert eng.track("late", "Order Completed", message_id="x1").duplicates == 1
        eng.advance("2026-06-03T00:00:00Z")
        assert eng.track("late", "Order Completed", message_id="x1").duplicates == 0


def test_a_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    users = [f"user-{i}" for i in range(40)]
    ref = make_engine()
    eng = make_engine(tmp_path, fsync="never")
    rng = random.Random(4)
    batches = [events(rng, 10) for _ in range(4)]
    for e in (ref, eng):
        e.define_audiences(EXAMPLE_AUDIENCES)
    for b in batches[:3]:
        ref.ingest(b)
    for b in batches:
        eng.ingest(b)
    eng.sync()
    abandon(eng)
    log = next(tmp_path.glob("wal-*.log"))
    data = log.read_bytes()
    log.write_bytes(data[:-7])  # the last batch's record, cut mid-write
    again = make_engine(tmp_path)
    assert again.recovery.torn_bytes > 0
    assert digest(again, users) == digest(ref, users)
    # New records follow the last valid one.
    again.ingest(batches[3])
    ref.ingest(batches[3])
    again.close()
    assert digest(make_engine(tmp_path), users) == digest(ref, users)


def test_a_flipped_byte_in_the_log_stops_start_up_with_file_and_offset(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, fsync="never")
    eng.define_audiences(EXAMPLE_AUDIENCES)
    eng.snapshot()
    for seed in range(3):
        eng.ingest(events(random.Random(seed), 20))
    eng.sync()
    abandon(eng)
    log = next(tmp_path.glob("wal-*.log"))
    data = bytearray(log.read_bytes())
    data[40] ^= 0x55  # inside the first record, with valid records after it
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError) as info:
        make_engine(tmp_path)
    assert info.value.path.endswith(log.name)
    assert info.value.offset == 16
    assert log.name in str(info.value) and "offset 16" in str(info.value)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_snapshot_stops_start_up(tmp_path: Path, damage: str) -> None:
    with make_engine(tmp_path) as eng:
        eng.define_audiences(EXAMPLE_AUDIENCES)
        eng.ingest(events(random.Random(6), 50))
    snap = next(tmp_path.glob("snapshot-*.snap"))
    data = bytearray(snap.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) - 100 :]
    snap.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError) as info:
        make_engine(tmp_path)
    assert info.value.path.endswith(snap.name)
    assert info.value.code == "corrupt_data"


def test_snapshot_needs_a_data_dir_and_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(segmint.InvalidArgumentError, match="data directory"):
        make_engine().snapshot()
    with pytest.raises(segmint.InvalidArgumentError, match="fsync policy"):
        make_engine(tmp_path / "a", fsync="sometimes")  # type: ignore[arg-type]
    make_engine(tmp_path / "b", granularity="1s").close()
    with pytest.raises(StorageError, match="granularity"):
        make_engine(tmp_path / "b", granularity="1m")


def test_changes_are_visible_once_durable(tmp_path: Path) -> None:
    with make_engine(tmp_path, fsync="always") as eng:
        eng.define_audience("buyers", 'did("Order Completed", 7d)')
        result = eng.track("u1", "Order Completed")
        # ingest returns after its fsync, so its changes are visible at once.
        assert eng.visible_seq == result.last_seq == 1
        assert [c.user_id for c in eng.changes(0)] == ["u1"]


# ------------------------------------------------------------- the server

grpc = pytest.importorskip("grpc")

from segmint.client import encode_batch  # noqa: E402
from segmint.proto import segmint_pb2 as pb  # noqa: E402
from segmint.proto import segmint_pb2_grpc as pb_grpc  # noqa: E402
from test_server import CALL_TIMEOUT, Server, Subscriber, start_server  # noqa: E402


def _config(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "durable.toml"
    path.write_text(
        f"""
[engine]
clock = "manual"
now = "{NOW}"
shards = {SHARDS}
threads = 2

[storage]
data_dir = "{data_dir}"
fsync = "always"
snapshot_interval = "2s"
snapshot_log_mb = 1
"""
        + "".join(
            f"\n[[computed_traits]]\nkey = \"{k}\"\nexpression = '{x}'\n" for k, x in COMPUTED
        )
    )
    return path


class Streamer:
    """Streams batches over one Ingest call, one in flight at a time, recording
    which were acknowledged, until the stream breaks (the server is killed)."""

    def __init__(self, server: Server, batches: list[bytes]) -> None:
        self.batches = batches
        self.acked = 0
        self.sent = 0
        self._go = threading.Semaphore(1)
        self.stub = pb_grpc.SegmintStub(server.channel())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _requests(self) -> Iterator[pb.EventBatch]:
        for data in self.batches:
            self._go.acquire()
            self.sent += 1
            yield pb.EventBatch.FromString(data)

    def _run(self) -> None:
        try:
            for _ack in self.stub.Ingest(self._requests(), timeout=60):
                self.acked += 1
                self._go.release()
        except grpc.RpcError:
            pass


def _server_digest(stub: pb_grpc.SegmintStub, keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = stub.Size(pb.SizeRequest(audience=key), timeout=CALL_TIMEOUT).size
    return out


def test_kill_9_mid_stream_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = _config(tmp_path, data_dir)
    rng = random.Random(int(os.environ.get("SEGMINT_CRASH_SEED", "7")))
    plan = [events(rng, 40) for _ in range(400)]
    ref = make_engine()
    define_all(ref)
    applied = 0  # batches of `plan` the reference has
    users = [f"user-{i}" for i in range(40)]
    keys = [k for k, _ in EXAMPLE_AUDIENCES]
    for round_ in range(3):
        server = start_server("127.0.0.1:0", config=config)
        try:
            stub = pb_grpc.SegmintStub(server.channel())
            if round_ > 0:
                # Restarted: its state equals the reference, and a subscriber
                # resuming mid-log sees exactly the reference's changes.
                assert _server_digest(stub, keys) == {k: ref.size(k) for k in keys}
                resume = max(0, ref.last_seq - 25)
                sub = Subscriber(stub, resume)
                sub.wait_for_seq(ref.last_seq)
                got = [(c.seq, c.audience, c.user_id) for c in sub.changes]
                want = [(c.seq, c.audience, c.user_id) for c in ref.changes(resume)]
                assert got == want
                sub.cancel()
            todo = [encode_batch(b, batch_id=applied + i + 1) for i, b in enumerate(plan[applied:])]
            streamer = Streamer(server, todo)
            target = rng.randrange(5, 40)
            deadline = 30.0
            t0 = time.monotonic()
            while streamer.acked < target and time.monotonic() - t0 < deadline:
                time.sleep(0.002)
            assert streamer.acked >= target, "the server stopped acknowledging"
        finally:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
        acked = streamer.acked
        streamer.thread.join(10)
        for b in plan[applied : applied + acked]:
            ref.ingest(b)
        applied += acked
        # The directory now holds the acknowledged batches and at most the one
        # in flight (written before the kill but not acknowledged).
        with make_engine(data_dir) as recovered:
            got = digest(recovered, users)
        if got != digest(ref, users) and streamer.sent > acked:
            ref.ingest(plan[applied])
            applied += 1
        assert got == digest(ref, users), f"round {round_}: state differs after kill -9"
    # The rounds did stream real work (at least 5 acknowledged batches each).
    assert applied >= 15 and ref.last_seq > 100, (applied, ref.last_seq)
    # A last clean restart: retrying the last batch is recognised as a duplicate.
    server = start_server("127.0.0.1:0", config=config)
    try:
        stub = pb_grpc.SegmintStub(server.channel())
        acks = list(
            stub.Ingest(
                iter([pb.EventBatch.FromString(encode_batch(plan[applied - 1]))]),
                timeout=CALL_TIMEOUT,
            )
        )
        assert acks[0].duplicates == len(plan[applied - 1])
        assert acks[0].seq == ref.last_seq
    finally:
        assert server.stop() == 0
    with make_engine(data_dir) as final:
        assert digest(final, users) == digest(ref, users)
