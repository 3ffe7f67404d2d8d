"""The measurements of the benchmark suite that run in Python (DESIGN §7).

Each function runs one experiment on the standard workload and returns a
plain dataclass of figures; ``benches/run.py`` puts them in BENCHMARKS.md.

* :func:`run_segmint` streams a workload through :class:`segmint.Engine`
  (JSON bytes batches, the manual clock advanced to each batch's last instant,
  as ``segmint-bench`` does) and keeps the engine for membership checks;
* :func:`run_duckdb` computes every audience at the final instant in SQL
  (``benches/duckdb_peer.py``) and measures its table memory;
* :func:`run_reference` streams the same kind of workload through the naive
  incremental evaluator of ``tests/reference.py`` (slow: run it on a subsample);
* :func:`compare_memberships` diffs two ``{audience: {user ids}}`` maps;
* :func:`grpc_bench` starts ``segmint serve`` and measures batch ingest and
  event → subscriber latency over gRPC;
* :func:`time_exit_manual` / :func:`time_exit_wall` check that time-based
  exits happen at the exact instant (manual clock) and are observed within
  one tick of it (wall clock).
"""

from __future__ import annotations

import http.client
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benches.duckdb_peer import DuckDBPeer, PeerTiming
from benches.machine import rss_bytes
from benches.workload import AudienceSpec, iter_segment_json, segment_dicts

ROOT = Path(__file__).resolve().parent.parent

Members = dict[str, set[str]]
Progress = Callable[[], None]


def _noop() -> None:
    return None


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..1) of unsorted values; 0 when empty."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[round((len(s) - 1) * p)]


def batch_ends(events: pa.Table, chunk_rows: int) -> list[int]:
    """The largest timestamp of each ``chunk_rows`` slice, in order."""
    ts = events.column("timestamp").to_numpy()
    return [int(ts[i : i + chunk_rows].max()) for i in range(0, len(ts), chunk_rows)]


# --------------------------------------------------------------------------- segmint


@dataclass
class SegmintRun:
    """One stream of a workload through the Python API."""

    engine: Any
    rows: int
    ingest_s: float
    advance_s: float
    define_s: float
    heap_bytes: int
    users: int
    changes: int
    errors: int

    @property
    def total_s(self) -> float:
        """Ingest plus clock advances (the whole stream)."""
        return self.ingest_s + self.advance_s

    @property
    def events_per_s(self) -> float:
        """Rows per second of ``Engine.ingest`` alone."""
        return self.rows / max(self.ingest_s, 1e-12)

    def members(self, keys: Sequence[str]) -> Members:
        """Every audience's members (external ids)."""
        return {k: set(self.engine.members(k)) for k in keys}


def run_segmint(
    events: pa.Table,
    audiences: Sequence[AudienceSpec],
    start_ms: int,
    end_ms: int,
    *,
    chunk_rows: int = 10_000,
    threads: int | None = None,
    progress: Progress = _noop,
) -> SegmintRun:
    """Define the audiences, stream the events as JSON batches (advancing the
    manual clock to each batch's last instant first), then advance to ``end_ms``."""
    import segmint

    engine = segmint.Engine(clock="manual", now=_dt(start_ms), threads=threads, shards=threads)
    t = time.perf_counter()
    engine.define_audiences([(a.key, a.text) for a in audiences])
    define_s = time.perf_counter() - t
    batches = list(iter_segment_json(events, chunk_rows=chunk_rows))
    ends = batch_ends(events, chunk_rows)
    ingest_s = advance_s = 0.0
    errors = 0
    for data, last in zip(batches, ends, strict=True):
        t = time.perf_counter()
        if last > engine._core.now_ms:
            engine.advance(_dt(last))
        t1 = time.perf_counter()
        result = engine.ingest(data)
        t2 = time.perf_counter()
        advance_s += t1 - t
        ingest_s += t2 - t1
        errors += len(result.errors)
        progress()
    t = time.perf_counter()
    if end_ms > engine._core.now_ms:
        engine.advance(_dt(end_ms))
    advance_s += time.perf_counter() - t
    stats = engine.stats()
    return SegmintRun(
        engine=engine,
        rows=events.num_rows,
        ingest_s=ingest_s,
        advance_s=advance_s,
        define_s=define_s,
        heap_bytes=int(stats.get("heap_bytes", 0)),
        users=engine.user_count,
        changes=engine.last_seq,
        errors=errors,
    )


def python_event_latency(engine: Any, user_ids: Sequence[str], samples: int) -> list[float]:
    """Seconds of single ``Engine.track`` calls at the engine's now (existing users)."""
    rng = random.Random(7)
    names = ("Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
    out: list[float] = []
    for i in range(samples):
        user = user_ids[rng.randrange(len(user_ids))]
        name = names[i % len(names)]
        props = {"category": "shoes", "channel": "ads", "revenue": 80.0}
        t = time.perf_counter()
        engine.track(user, name, props, context={"device": {"type": "ios"}})
        out.append(time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------- DuckDB


@dataclass
class DuckRun:
    """The DuckDB peer: load, one full recompute at ``now``, memory of its tables."""

    members: Members
    timing: PeerTiming
    table_bytes: int


def run_duckdb(
    events: pa.Table,
    audiences: Sequence[AudienceSpec],
    now_ms: int,
    *,
    threads: int | None = None,
    batch_size: int = 64,
) -> DuckRun:
    """Load the events into DuckDB and compute every audience at ``now_ms`` (best of 1)."""
    peer = DuckDBPeer(events, audiences, threads=threads)
    rows = peer.con.sql(
        "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() "
        "WHERE tag = 'IN_MEMORY_TABLE'"
    ).fetchall()
    table_bytes = int(rows[0][0]) if rows else 0
    timing = PeerTiming(peer.load_s, 0.0, peer.rows, len(peer.user_names), len(audiences), 0)
    t = time.perf_counter()
    members = peer.memberships(now_ms, batch_size=batch_size, timing=timing)
    timing.compute_s = time.perf_counter() - t
    timing.members = sum(len(m) for m in members.values())
    peer.con.close()
    return DuckRun(members, timing, table_bytes)


# --------------------------------------------------------------------------- reference


def deep_sizeof(obj: object) -> int:
    """Bytes of Python objects reachable from ``obj`` (containers, dataclass and
    ``__slots__`` instances), each object counted once."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            stack.append(vars(o))
        elif hasattr(o, "__slots__") and not isinstance(o, type):
            stack.extend(getattr(o, a) for a in o.__slots__ if hasattr(o, a))
    return total


@dataclass
class ReferenceRun:
    """The naive incremental evaluator on a (small) workload."""

    rows: int
    total_s: float
    rss_growth_bytes: int
    state_bytes: int
    users: int
    event_latency_s: list[float]
    members: Members


def _load_reference() -> Any:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import reference

    return reference


def run_reference(
    events: pa.Table,
    audiences: Sequence[AudienceSpec],
    start_ms: int,
    end_ms: int,
    *,
    chunk_rows: int = 10_000,
    progress: Progress = _noop,
) -> ReferenceRun:
    """Stream the workload through ``tests/reference.py`` the way :func:`run_segmint`
    streams it through the engine (clock advanced to each chunk's last instant)."""
    reference = _load_reference()
    dicts = segment_dicts(events)
    ts = events.column("timestamp").to_pylist()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    ref = reference.Reference(now=start_ms)
    for a in audiences:
        ref.define_audience(a.key, a.text)
    lat: list[float] = []
    ends = batch_ends(events, chunk_rows)
    for c, last in enumerate(ends):
        if last > ref.now:
            ref.advance(last)
        for i in range(c * chunk_rows, min((c + 1) * chunk_rows, len(dicts))):
            d = dicts[i]
            t = time.perf_counter()
            if d["type"] == "identify":
                ref.identify(d["userId"], d["traits"])
            else:
                ref.track(
                    d["userId"],
                    d["event"],
                    d["properties"],
                    timestamp=ts[i],
                    context=d["context"],
                    message_id=d["messageId"],
                )
            lat.append(time.perf_counter() - t)
        progress()
    if end_ms > ref.now:
        ref.advance(end_ms)
    total = time.perf_counter() - t0
    members = {a.key: set(ref.members(a.key)) for a in audiences}
    rss_growth = max(0, rss_bytes() - rss0)
    return ReferenceRun(
        rows=len(dicts),
        total_s=total,
        rss_growth_bytes=rss_growth,
        state_bytes=deep_sizeof(ref.users) + deep_sizeof(ref.auds),
        users=len(ref.users),
        event_latency_s=lat,
        members=members,
    )


# --------------------------------------------------------------------------- equality


@dataclass
class Diff:
    """How one audience differs between segmint and a peer."""

    audience: str
    segmint: int
    peer: int
    only_segmint: list[str]
    only_peer: list[str]


def compare_memberships(
    segmint: Mapping[str, set[str]], peer: Mapping[str, set[str]]
) -> list[Diff]:
    """Audiences whose member sets differ (with up to 5 example ids each way)."""
    out = []
    for key in segmint.keys() | peer.keys():
        a, b = segmint.get(key, set()), peer.get(key, set())
        if a != b:
            out.append(
                Diff(key, len(a), len(b), sorted(a - b)[:5], sorted(b - a)[:5]),
            )
    return sorted(out, key=lambda d: d.audience)


# --------------------------------------------------------------------------- gRPC


@dataclass
class GrpcRun:
    """Figures of ``rounds`` fresh ``segmint serve`` processes fed the same batches."""

    events: int = 0
    batch_rows: int = 0
    rejected: int = 0
    rounds_s: list[float] = field(default_factory=list)
    engine_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    is_member_calls: int = 0
    is_member_s: float = 0.0
    error: str | None = None

    @property
    def ingest_s(self) -> float:
        """The median round's time, first batch sent to last ack (with an
        even count of rounds, the mean of the middle two)."""
        return statistics.median(self.rounds_s) if self.rounds_s else 0.0

    @property
    def rounds_events_per_s(self) -> list[float]:
        """Accepted events per second, round by round."""
        return [self.events / s for s in self.rounds_s if s]

    @property
    def events_per_s(self) -> float:
        """Accepted events per second in the median round."""
        return self.events / self.ingest_s if self.ingest_s else 0.0

    @property
    def engine_share(self) -> float:
        """Over all rounds, the share of the ingest time the server spent
        inside the engine's decode-and-apply call (``segmint_batch_seconds``);
        0.0 when its metrics could not be read."""
        wall = sum(self.rounds_s)
        return sum(self.engine_s) / wall if wall and self.engine_s else 0.0


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held until all are
    chosen, so that no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _iso(ms: int) -> str:
    return _dt(ms).isoformat().replace("+00:00", "Z")


class _Server:
    """One ``segmint serve --clock manual --no-examples`` child on free loopback
    ports (gRPC and metrics), stopped by its PID."""

    def __init__(self, tmp: Path, now_ms: int) -> None:
        import grpc
        from segmint.client import channel

        self.port, self.metrics_port = free_ports(2)
        cfg = tmp / "bench.toml"
        cfg.write_text(
            f'[engine]\nclock = "manual"\nnow = "{_iso(now_ms)}"\n'
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n'
            f'metrics_port = {self.metrics_port}\nlog_level = "warning"\n'
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("SEGMINT_TOKEN", None)
        cmd = [sys.executable, "-m", "segmint.cli", "serve", "--config", str(cfg)]
        cmd += ["--clock", "manual", "--no-examples"]
        self.log = open(tmp / "server.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Any = None
        try:
            proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
            self.proc = proc
            self.channel = channel(f"127.0.0.1:{self.port}")
            ready = grpc.channel_ready_future(self.channel)
            # Bounded: 30 s, and no longer than the child lives (a port
            # taken meanwhile makes it exit at once).
            deadline = time.monotonic() + 30
            while not ready.done():
                if proc.poll() is not None or time.monotonic() > deadline:
                    ready.cancel()
                    raise RuntimeError("server did not start: " + self._tail())
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    @classmethod
    def start(cls, tmp: Path, now_ms: int) -> _Server:
        """A started server, tried twice: a port may be taken between its
        choice and the child's bind."""
        try:
            return cls(tmp, now_ms)
        except RuntimeError:
            return cls(tmp, now_ms)

    def _tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-500:]

    def batch_seconds(self) -> float | None:
        """The server's ``segmint_batch_seconds_sum`` (time inside the engine's
        decode-and-apply call), or None when its metrics cannot be read."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if line.startswith("segmint_batch_seconds_sum "):
                    return float(line.split()[1])
        except (OSError, http.client.HTTPException, ValueError, IndexError):
            return None
        return None

    def stop(self) -> None:
        """Closes the channel and stops the child (SIGTERM, then SIGKILL)."""
        try:
            if self.channel is not None:
                self.channel.close()
        finally:
            if self.proc is not None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.log.close()


def grpc_bench(
    events: pa.Table,
    audiences: Sequence[AudienceSpec],
    now_ms: int,
    *,
    batch_rows: int = 5_000,
    probes: int = 200,
    rounds: int = 3,
    progress: Progress = _noop,
) -> GrpcRun:
    """In each of ``rounds`` fresh servers, define the audiences and stream the
    same pre-encoded batches over Ingest (the median round is the figure: one
    short stream on a shared machine swings by tens of percent). The last
    server then times ``probes`` single Track calls until their change reaches
    a SubscribeChanges stream, and unary IsMember calls."""
    import grpc
    from segmint.client import encode_batch
    from segmint.proto import segmint_pb2 as pb

    out = GrpcRun(batch_rows=batch_rows)
    payloads = [
        encode_batch(segment_dicts(events, s, min(s + batch_rows, events.num_rows)), i + 1)
        for i, s in enumerate(range(0, events.num_rows, batch_rows))
    ]
    rounds = max(1, rounds)
    engine_s: list[float | None] = []
    for round_no in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                server = _Server.start(Path(tmp), now_ms)
            except RuntimeError as e:
                out.error = str(e)
                return out
            try:
                last_seq = _ingest_round(server, pb, audiences, payloads, out, engine_s, progress)
                if round_no == rounds - 1:
                    ch = server.channel
                    out.latency_s = _subscriber_latency(ch, pb, last_seq, probes)
                    out.is_member_calls, out.is_member_s = _is_member_rate(
                        ch, pb, events, audiences
                    )
            except grpc.RpcError as e:
                out.error = f"{e.code()}: {e.details()}"
                return out
            finally:
                server.stop()
    # The share is left out unless every round's metrics were read.
    out.engine_s = [] if None in engine_s else [x for x in engine_s if x is not None]
    return out


def _ingest_round(
    server: _Server,
    pb: Any,
    audiences: Sequence[AudienceSpec],
    payloads: list[bytes],
    out: GrpcRun,
    engine_s: list[float | None],
    progress: Progress,
) -> int:
    """Defines the audiences in ``server`` and streams ``payloads`` over
    Ingest; records the round's time, counts and engine seconds (None when
    the metrics cannot be read) in ``out`` and ``engine_s``. Returns the
    last acknowledged seq."""
    ch = server.channel
    define = ch.unary_unary(
        "/segmint.v1.Segmint/DefineAudience",
        request_serializer=pb.DefineAudienceRequest.SerializeToString,
        response_deserializer=pb.DefineAudienceResponse.FromString,
    )
    for a in audiences:
        define(pb.DefineAudienceRequest(key=a.key, rule=a.text), timeout=60)
    define(pb.DefineAudienceRequest(key="bench_probe", rule='did("Bench Probe")'))
    ingest: Any = ch.stream_stream(
        "/segmint.v1.Segmint/Ingest",
        request_serializer=None,
        response_deserializer=pb.IngestAck.FromString,
    )
    before = server.batch_seconds()
    accepted = rejected = last_seq = 0
    t = time.perf_counter()
    for ack in ingest(iter(payloads), timeout=600):
        accepted += ack.accepted
        rejected += len(ack.errors)
        last_seq = ack.seq
        progress()
    out.rounds_s.append(time.perf_counter() - t)
    after = server.batch_seconds()
    engine_s.append(None if before is None or after is None else after - before)
    out.events, out.rejected = accepted, rejected
    return int(last_seq)


def _is_member_rate(
    ch: Any, pb: Any, events: pa.Table, audiences: Sequence[AudienceSpec], seconds: float = 2.0
) -> tuple[int, float]:
    """Unary IsMember calls (one user each) for about ``seconds``, one client thread."""
    is_member = ch.unary_unary(
        "/segmint.v1.Segmint/IsMember",
        request_serializer=pb.IsMemberRequest.SerializeToString,
        response_deserializer=pb.IsMemberResponse.FromString,
    )
    users = events.column("user_id").slice(0, 1000).to_pylist()
    key = audiences[0].key if audiences else "bench_probe"
    calls, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        is_member(pb.IsMemberRequest(audience=key, user_ids=[users[calls % len(users)]]))
        calls += 1
    return calls, time.perf_counter() - t


def _subscriber_latency(ch: Any, pb: Any, from_seq: int, probes: int) -> list[float]:
    subscribe = ch.unary_stream(
        "/segmint.v1.Segmint/SubscribeChanges",
        request_serializer=pb.SubscribeChangesRequest.SerializeToString,
        response_deserializer=pb.ChangeBatch.FromString,
    )
    track = ch.unary_unary(
        "/segmint.v1.Segmint/Track",
        request_serializer=pb.Event.SerializeToString,
        response_deserializer=pb.IngestAck.FromString,
    )
    arrivals: queue.Queue[tuple[str, float]] = queue.Queue()
    stream = subscribe(
        pb.SubscribeChangesRequest(from_seq=from_seq, audiences=["bench_probe"]), timeout=300
    )

    def reader() -> None:
        try:
            for page in stream:
                now = time.perf_counter()
                for c in page.changes:
                    arrivals.put((c.user_id, now))
        except Exception:  # the stream is cancelled at the end
            return

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    out: list[float] = []
    for i in range(probes):
        user = f"bench_probe_{i}"
        ev = pb.Event(user_id=user, message_id=f"probe-{i}")
        ev.track.event = "Bench Probe"
        t = time.perf_counter()
        track(ev, timeout=30)
        while True:
            got, when = arrivals.get(timeout=30)
            if got == user:
                out.append(when - t)
                break
    stream.cancel()
    return out


# --------------------------------------------------------------------------- time exits


@dataclass
class ExitCheck:
    """Time-based exits against their exact instants."""

    exits: int
    expected: int
    max_error_ms: int
    observed_late_ms: list[float] = field(default_factory=list)


def time_exit_manual(users: int = 200, seed: int = 3) -> ExitCheck:
    """Manual clock: events at random instants, windows of 10 s … 60 d; one big
    advance must emit every exit with ``at`` = floor(t) + W exactly."""
    import segmint

    t0 = 1_780_000_000_000
    windows = {"w10s": 10_000, "w2h": 7_200_000, "w1d": 86_400_000, "w60d": 60 * 86_400_000}
    engine = segmint.Engine(clock="manual", now=_dt(t0 + 3_600_000))
    for key, w in windows.items():
        engine.define_audience(key, f'did("Ping", {w // 1000}s)')
    rng = random.Random(seed)
    expected: dict[tuple[str, str], int] = {}
    for i in range(users):
        ts = t0 + rng.randrange(3_600_000)
        user = f"u{i}"
        engine.track(user, "Ping", timestamp=_dt(ts))
        for key, w in windows.items():
            exit_at = (ts - ts % 1000) + w
            if exit_at > t0 + 3_600_000:
                expected[(key, user)] = exit_at
    seq = engine.last_seq
    engine.advance(_dt(t0 + 90 * 86_400_000))
    errors = []
    exits = 0
    for c in engine.changes(seq):
        if c.kind != "exited":
            continue
        exits += 1
        want = expected.get((c.audience, c.user_id))
        got = int(c.at.timestamp() * 1000)
        errors.append(abs(got - want) if want is not None else 10**12)
    return ExitCheck(exits, len(expected), max(errors, default=0))


def time_exit_wall(users: int = 5, window_s: int = 2) -> ExitCheck:
    """Wall clock: ``did("Ping", 2s)``; how late after the exact instant the exit is
    observed through ``Engine.changes`` (polled every 5 ms) and how far ``at`` is off."""
    import segmint

    engine = segmint.Engine(clock="wall")
    engine.define_audience("w", f'did("Ping", {window_s}s)')
    expected: dict[str, int] = {}
    for i in range(users):
        now = int(time.time() * 1000)
        engine.track(f"u{i}", "Ping", timestamp=_dt(now))
        expected[f"u{i}"] = now - now % 1000 + window_s * 1000
        time.sleep(0.13)
    seq = engine.last_seq
    late: list[float] = []
    errors: list[int] = []
    deadline = time.time() + window_s + 5
    seen: set[str] = set()
    while len(seen) < users and time.time() < deadline:
        for c in engine.changes(seq):
            seq = c.seq
            if c.kind == "exited" and c.user_id in expected and c.user_id not in seen:
                seen.add(c.user_id)
                observed = time.time() * 1000
                late.append(observed - expected[c.user_id])
                errors.append(abs(int(c.at.timestamp() * 1000) - expected[c.user_id]))
        time.sleep(0.005)
    return ExitCheck(len(seen), users, max(errors, default=0), late)


# --------------------------------------------------------------------------- helpers


def sample_user_ids(events: pa.Table, n: int, seed: int = 1) -> list[str]:
    """Up to ``n`` distinct user ids of the workload."""
    ids = pc.unique(events.column("user_id")).to_pylist()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [ids[int(i)] for i in pick]


def mean(xs: Sequence[float]) -> float:
    """Arithmetic mean (0 when empty)."""
    return statistics.fmean(xs) if xs else 0.0


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` slices of ``range(n)``."""
    for s in range(0, n, size):
        yield s, min(s + size, n)


# --------------------------------------------------------------------------- issue 3


def inspect_figures(
    engine: Any,
    events: pa.Table,
    audiences: Sequence[AudienceSpec],
    start_ms: int,
    chunk_rows: int,
    ingest_rows: int = 200_000,
    explain_samples: int = 1_000,
) -> dict[str, Any]:
    """Issue 3's figures on an engine that holds the whole workload: explain and
    preview latency, batched lookups; and Arrow ingest against JSON bytes on the
    same slice of events into fresh engines, with the same audiences and with
    none (decoding dominates)."""
    import numpy as np
    from segmint import Engine

    from benches.workload import iter_segment_json

    keys = [a.key for a in audiences]
    ids = sample_user_ids(events, 100_000)
    out: dict[str, Any] = {"profiles": engine.user_count, "lookup_ids": len(ids)}
    arr = np.array(ids, dtype=object)
    t = time.perf_counter()
    engine.is_member_array(arr, keys[0])
    out["lookups_per_s"] = len(ids) / (time.perf_counter() - t)
    t = time.perf_counter()
    engine.preview(audiences[0].text + " or trait.ltv > 900", replacing=keys[0], limit=10)
    out["preview_s"] = time.perf_counter() - t
    lat = []
    for i in range(explain_samples):
        user, key = ids[(i * 7919) % len(ids)], keys[(i * 104729) % len(keys)]
        t = time.perf_counter()
        engine.explain(user, key)
        lat.append(time.perf_counter() - t)
    out["explain_samples"] = len(lat)
    out["explain_p50_us"] = percentile(lat, 0.5) * 1e6
    out["explain_p99_us"] = percentile(lat, 0.99) * 1e6
    part = events.slice(0, min(ingest_rows, events.num_rows))
    out["ingest_rows"] = part.num_rows
    end = int(max(part.column("timestamp").to_pylist() or [start_ms]))
    json_chunks = list(iter_segment_json(part, chunk_rows))
    # With the audiences (evaluation included) and without (decoding dominates).
    for suffix, auds in (("", audiences), ("_no_audiences", [])):
        for how in ("json", "arrow"):
            eng = Engine(clock="manual", now=_dt(end))
            if auds:
                eng.define_audiences((a.key, a.text) for a in auds)
            t = time.perf_counter()
            if how == "json":
                for chunk in json_chunks:
                    eng.ingest(chunk)
            else:
                eng.ingest_arrow(part, chunk_rows=chunk_rows)
            out[f"{how}_events_per_s{suffix}"] = part.num_rows / (time.perf_counter() - t)
    return out
