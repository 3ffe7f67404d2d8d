"""The segmint benchmark suite: every figure of DESIGN §7, peers side by side.

    python benches/run.py                 # size "small" (~1-2 min with a fast engine)
    python benches/run.py --size full     # 1M users, 1k and 10k audiences (by hand)
    make bench / segmint bench --size small|full

It writes BENCHMARKS.md (the figures with the machine, date, commit and
command), PNG plots under benches/plots/ and the raw results as JSON under
benches/out/. Engine figures come from the ``segmint-bench`` Rust binary
(``benches/engine_bench.py``); the Python API, gRPC, time-exit and peer
figures from ``benches/peers.py``. The DuckDB peer doubles as a correctness
check: its membership sets must equal segmint's, else the run says so loudly,
writes the report with the mismatch flagged and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "python") not in sys.path:
    sys.path.insert(1, str(ROOT / "python"))

from benches import peers  # noqa: E402
from benches.cores import CORES_TITLE  # noqa: E402
from benches.engine_bench import BIN, build_bench  # noqa: E402
from benches.heavy_user import HEAVY_TITLE  # noqa: E402
from benches.machine import machine_info  # noqa: E402
from benches.sections import markers, read_section  # noqa: E402
from benches.workload import (  # noqa: E402
    WorkloadSpec,
    export,
    generate_audiences,
    generate_events,
)

MIB = 1024 * 1024


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    """How big each experiment of one run is."""

    name: str
    users: int
    events: int
    std_audiences: tuple[int, int] = (1_000, 10_000)
    fanout_hot: int = 1_000
    peer_audiences: int = 1_000
    ref_users: int = 200
    ref_events: int = 1_000
    ref_audiences: int = 50
    grpc_events: int = 20_000
    grpc_batch: int = 5_000
    grpc_rounds: int = 3
    probes: int = 200
    py_latency_samples: int = 2_000
    scale_audiences: tuple[int, ...] = (100, 300, 1_000, 3_000, 10_000)
    scale_hot: int = 100
    scale_users: tuple[int, ...] = (10_000, 30_000, 100_000)
    scale_users_audiences: int = 1_000
    events_per_user: float = 2.0
    chunk_rows: int = 10_000
    rust: bool = True
    wall_exit: bool = True
    bench_timeout_s: float = 120.0
    durability_events: int = 100_000


SIZES: dict[str, Size] = {
    "smoke": Size(
        "smoke",
        users=300,
        events=2_000,
        std_audiences=(50, 100),
        fanout_hot=50,
        peer_audiences=50,
        ref_users=60,
        ref_events=200,
        ref_audiences=15,
        grpc_events=1_000,
        grpc_batch=250,
        grpc_rounds=2,
        probes=10,
        py_latency_samples=100,
        scale_audiences=(),
        scale_users=(),
        chunk_rows=500,
        rust=False,
        wall_exit=False,
    ),
    "small": Size("small", users=20_000, events=100_000),
    "full": Size(
        "full",
        users=1_000_000,
        events=3_000_000,
        ref_users=1_000,
        ref_events=4_000,
        ref_audiences=100,
        grpc_events=200_000,
        probes=500,
        py_latency_samples=10_000,
        scale_users=(100_000, 300_000, 1_000_000),
        events_per_user=3.0,
        chunk_rows=50_000,
        bench_timeout_s=900.0,  # 10k audiences on one core takes minutes
        durability_events=500_000,
    ),
}


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One row of the DESIGN §7 table."""

    name: str
    goal: str
    value: str
    status: str  # "meets", "below goal", "below floor", "not yet possible", "not measured"
    note: str = ""


@dataclass
class Results:
    """Everything one run measured (dumped as JSON next to the report)."""

    size: str
    started: str
    machine: dict[str, Any]
    commit: str
    command: str
    spec: dict[str, Any] = field(default_factory=dict)
    rust: dict[str, Any] = field(default_factory=dict)
    rust_errors: dict[str, str] = field(default_factory=dict)
    python_api: dict[str, Any] = field(default_factory=dict)
    duckdb: dict[str, Any] = field(default_factory=dict)
    duckdb_diffs: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    reference_diffs: list[dict[str, Any]] = field(default_factory=list)
    grpc: dict[str, Any] = field(default_factory=dict)
    inspect: dict[str, Any] = field(default_factory=dict)
    durability: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    time_exit: dict[str, Any] = field(default_factory=dict)
    scale_audiences: list[dict[str, Any]] = field(default_factory=list)
    scale_users: list[dict[str, Any]] = field(default_factory=list)
    latencies_us: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def duckdb_equal(self) -> bool | None:
        """True/False once checked, None when the check did not run."""
        if not self.duckdb:
            return None
        return not self.duckdb_diffs


def git_commit() -> str:
    """HEAD's short hash, with ``+dirty`` when the tree has changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- segmint-bench


def run_engine_bench(
    spec: WorkloadSpec,
    threads: int,
    out: Path,
    timeout_s: float,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """One run of ``segmint-bench`` (raises RuntimeError with the reason on failure);
    ``extra`` are more arguments (``--data-dir``, ``--fsync``, ``--chunk`` ...)."""
    events, auds = export(spec, out)
    cmd = [str(BIN), str(events), str(auds), "--threads", str(threads), *(extra or [])]
    cmd += ["--latency-samples", str(max(100, min(20_000, spec.events // 20)))]
    if spec.hot_audiences is not None:
        cmd += ["--hot", str(spec.hot_audiences)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"timed out after {timeout_s:.0f} s") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' / '.join(tail)}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["cmd"] = " ".join(shlex.quote(c) for c in cmd)
    return result


# --------------------------------------------------------------------------- the run


Step = tuple[str, Callable[[], None]]


def plan(size: Size, res: Results, out: Path, threads_all: int) -> list[Step]:
    """The experiments of one run, in order."""
    base = WorkloadSpec(users=size.users, events=size.events, audiences=size.peer_audiences)
    res.spec = base.to_dict()
    steps: list[Step] = []
    state: dict[str, Any] = {}

    def rust(label: str, spec: WorkloadSpec, threads: int) -> Callable[[], None]:
        def go() -> None:
            try:
                res.rust[label] = run_engine_bench(spec, threads, out, size.bench_timeout_s)
            except (RuntimeError, OSError, ValueError) as e:
                res.rust_errors[label] = str(e)

        return go

    if size.rust:

        def build() -> None:
            err = build_bench()
            if err and BIN.exists():
                res.notes.append(f"segmint-bench did not rebuild ({err}); used the existing binary")
            elif err:
                res.notes.append(f"segmint-bench unavailable: {err}")

        steps.append(("build segmint-bench", build))
        a1k, a10k = size.std_audiences
        std1 = replace(base, audiences=a1k)
        std10 = replace(base, audiences=a10k)
        hot10 = replace(base, audiences=a10k, hot_audiences=size.fanout_hot)
        steps.append((f"engine: {a1k} audiences, 1 core", rust("std1k_1", std1, 1)))
        steps.append((f"engine: {a10k} audiences, 1 core", rust("std10k_1", std10, 1)))
        steps.append(
            (f"engine: {a10k} audiences, {size.fanout_hot} hot", rust("hot10k_1", hot10, 1))
        )
        if threads_all > 1:
            steps.append(
                (
                    f"engine: {a1k} audiences, {threads_all} cores",
                    rust(f"std1k_{threads_all}", std1, threads_all),
                )
            )

        def durability() -> None:
            from benches.durability_bench import measure

            res.durability = measure(size, out, threads_all)

        steps.append(("durability: fsync policies, snapshot, recovery", durability))

        def memory() -> None:
            events, audiences = export(std1, out)
            done = subprocess.run(
                [sys.executable, "-m", "benches.memory_bench", str(events), str(audiences)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=size.bench_timeout_s,
            )
            if done.returncode != 0:
                last = done.stderr.strip().splitlines()[-1:]
                raise RuntimeError(last[0] if last else f"exit status {done.returncode}")
            res.memory = json.loads(done.stdout)

        steps.append((f"memory: streamed through Engine.ingest, {a1k} audiences", memory))
        for n in size.scale_audiences:
            spec = replace(base, audiences=n, hot_audiences=min(n, size.scale_hot))
            steps.append((f"scaling: {n} audiences", rust(f"aud_{n}", spec, 1)))
        for u in size.scale_users:
            spec = replace(
                base,
                users=u,
                events=int(u * size.events_per_user),
                audiences=size.scale_users_audiences,
                hot_audiences=size.scale_hot,
            )
            steps.append((f"scaling: {u:,} users", rust(f"users_{u}", spec, 1)))

    def workload() -> None:
        state["events"] = generate_events(base)
        state["auds"] = [a for _, _, a in generate_audiences(base)]

    def python_api() -> None:
        run = peers.run_segmint(
            state["events"], state["auds"], base.start_ms, base.end_ms, chunk_rows=size.chunk_rows
        )
        state["seg"] = run
        res.python_api = {
            "rows": run.rows,
            "audiences": len(state["auds"]),
            "ingest_s": run.ingest_s,
            "advance_s": run.advance_s,
            "define_s": run.define_s,
            "events_per_s": run.events_per_s,
            "heap_bytes": run.heap_bytes,
            "users": run.users,
            "changes": run.changes,
            "errors": run.errors,
        }

    def duck() -> None:
        d = peers.run_duckdb(state["events"], state["auds"], base.end_ms)
        seg = state["seg"].members([a.key for a in state["auds"]])
        diffs = peers.compare_memberships(seg, d.members)
        res.duckdb = {
            "load_s": d.timing.load_s,
            "compute_s": d.timing.compute_s,
            "queries": d.timing.queries,
            "members": d.timing.members,
            "segmint_members": sum(len(m) for m in seg.values()),
            "table_bytes": d.table_bytes,
            "users": d.timing.users,
            "audiences": d.timing.audiences,
        }
        res.duckdb_diffs = [asdict(x) for x in diffs]

    def inspect_figures() -> None:
        eng = state["seg"].engine
        res.inspect = peers.inspect_figures(
            eng, state["events"], state["auds"], base.start_ms, size.chunk_rows
        )

    def py_latency() -> None:
        ids = peers.sample_user_ids(state["events"], 5_000)
        lat = peers.python_event_latency(state["seg"].engine, ids, size.py_latency_samples)
        res.latencies_us["python_api_track"] = [x * 1e6 for x in lat]
        state.pop("seg", None)

    def reference() -> None:
        spec = WorkloadSpec(
            users=size.ref_users, events=size.ref_events, audiences=size.ref_audiences
        )
        events = generate_events(spec)
        auds = [a for _, _, a in generate_audiences(spec)]
        chunk = max(1, size.ref_events // 5)
        seg = peers.run_segmint(events, auds, spec.start_ms, spec.end_ms, chunk_rows=chunk)
        seg_members = seg.members([a.key for a in auds])
        seg_lat = peers.python_event_latency(seg.engine, peers.sample_user_ids(events, 500), 500)
        ref = peers.run_reference(events, auds, spec.start_ms, spec.end_ms, chunk_rows=chunk)
        res.reference = {
            "spec": spec.to_dict(),
            "rows": ref.rows,
            "total_s": ref.total_s,
            "segmint_total_s": seg.total_s,
            "segmint_heap_bytes": seg.heap_bytes,
            "rss_growth_bytes": ref.rss_growth_bytes,
            "state_bytes": ref.state_bytes,
            "segmint_event_p99_us": peers.percentile(seg_lat, 0.99) * 1e6,
            "users": ref.users,
            "event_p50_us": peers.percentile(ref.event_latency_s, 0.5) * 1e6,
            "event_p99_us": peers.percentile(ref.event_latency_s, 0.99) * 1e6,
        }
        res.reference_diffs = [
            asdict(x) for x in peers.compare_memberships(seg_members, ref.members)
        ]

    def grpc() -> None:
        events = state["events"].slice(0, min(size.grpc_events, state["events"].num_rows))
        g = peers.grpc_bench(
            events,
            state["auds"],
            base.end_ms,
            batch_rows=size.grpc_batch,
            probes=size.probes,
            rounds=size.grpc_rounds,
        )
        res.grpc = {
            "events": g.events,
            "rejected": g.rejected,
            "ingest_s": g.ingest_s,
            "events_per_s": g.events_per_s,
            "rounds_events_per_s": g.rounds_events_per_s,
            "engine_share": g.engine_share,
            "batch_rows": g.batch_rows,
            "audiences": len(state["auds"]),
            "p50_us": peers.percentile(g.latency_s, 0.5) * 1e6,
            "p99_us": peers.percentile(g.latency_s, 0.99) * 1e6,
            "probes": len(g.latency_s),
            "is_member_per_s": g.is_member_calls / g.is_member_s if g.is_member_s else 0.0,
            "error": g.error,
        }
        res.latencies_us["grpc_subscriber"] = [x * 1e6 for x in g.latency_s]

    def time_exit() -> None:
        m = peers.time_exit_manual()
        res.time_exit["manual"] = asdict(m)
        if size.wall_exit:
            w = peers.time_exit_wall()
            res.time_exit["wall"] = asdict(w)

    steps += [
        ("generate the peer workload", workload),
        ("segmint Python API ingest", python_api),
        ("DuckDB peer + membership check", duck),
        ("explain, preview, lookups, Arrow ingest (issue 3)", inspect_figures),
        ("in-process single-event latency", py_latency),
        ("pure-Python reference peer (subsample)", reference),
        ("gRPC sidecar ingest + subscriber latency", grpc),
        ("time-based exits", time_exit),
    ]
    return steps


def execute(size: Size, res: Results, out: Path, quiet: bool) -> None:
    """Run every step under a rich progress bar (errors are recorded, not raised)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    steps = plan(size, res, out, os.cpu_count() or 1)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=quiet,
    )
    with progress:
        task = progress.add_task("benchmarks", total=len(steps))
        for label, fn in steps:
            progress.update(task, description=label)
            t = time.perf_counter()
            try:
                fn()
            except Exception as e:  # keep going: the report says what failed
                res.notes.append(f"step '{label}' failed: {type(e).__name__}: {e}")
            if not quiet:
                progress.console.log(f"{label}: {time.perf_counter() - t:.1f} s")
            progress.advance(task)


# --------------------------------------------------------------------------- report


def _si(x: float, unit: str = "") -> str:
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _tail(run: dict[str, Any]) -> str:
    """The latency tail beyond p99 (p99.9 and the slowest call), where the
    bench reports it (builds before e795e54 did not)."""
    if "latency_us_p999" not in run:
        return ""
    return f"; p99.9 {_us(run['latency_us_p999'])}, slowest {_us(run['latency_us_max'])}"


def _us(x: float) -> str:
    if x >= 1_000:
        return f"{x / 1_000:.2f} ms"
    return f"{x:.1f} µs"


def _ratio(a: float, b: float) -> str:
    if not a or not b:
        return "—"
    r = a / b
    return f"{r:.3g}"


def _status(value: float, goal: float, floor: float | None = None, lower: bool = False) -> str:
    ok = value <= goal if lower else value >= goal
    if ok:
        return "✅ meets"
    if floor is not None and (value > floor if lower else value < floor):
        return "❌ below floor"
    return "⚠️ below goal"


def figures(res: Results, size: Size) -> list[Figure]:
    """The DESIGN §7 table from the results."""
    out: list[Figure] = []
    cores = res.machine["cores"]
    r = res.rust
    a1k, a10k = size.std_audiences

    def missing(key: str) -> str:
        if key in res.rust_errors:
            return f"not measured: segmint-bench {res.rust_errors[key]}"
        return "not measured (Rust figures off at this size)" if not size.rust else "not measured"

    def _fanout(x: dict[str, Any]) -> str:
        if "rule_evaluations_per_event" not in x:
            return "fan-out not recorded"
        return (
            f"per event: {x['changes_per_event']:.1f} membership changes, "
            f"{x['rule_evaluations_per_event']:.0f} rule and "
            f"{x['atom_evaluations_per_event']:.0f} predicate evaluations"
        )

    if "std1k_1" in r:
        v = r["std1k_1"]["events_per_s"]
        out.append(
            Figure(
                f"batch ingest, one core, {a1k:,} audiences",
                "≥ 5 M events/s (floor 1 M)",
                _si(v, "events/s"),
                _status(v, 5e6, 1e6),
                f"{r['std1k_1']['events']:,} events, {r['std1k_1']['users']:,} users; "
                f"{_si(r['std1k_1']['events_per_s_with_time'], 'events/s')} with clock advances; "
                + _fanout(r["std1k_1"]),
            )
        )
    else:
        out.append(
            Figure(
                f"batch ingest, one core, {a1k:,} audiences",
                "≥ 5 M events/s",
                "—",
                "not measured",
                missing("std1k_1"),
            )
        )
    if "std10k_1" in r:
        v = r["std10k_1"]["events_per_s"]
        out.append(
            Figure(
                f"batch ingest, one core, {a10k:,} audiences",
                "≥ 2 M events/s",
                _si(v, "events/s"),
                _status(v, 2e6),
                f"all {a10k} audiences hot (fan-out grows with the audience count); "
                + _fanout(r["std10k_1"]),
            )
        )
    else:
        out.append(
            Figure(
                f"batch ingest, one core, {a10k:,} audiences",
                "≥ 2 M events/s",
                "—",
                "not measured",
                missing("std10k_1"),
            )
        )
    if "hot10k_1" in r and "std1k_1" in r:
        slow = r["std1k_1"]["events_per_s"] / r["hot10k_1"]["events_per_s"]
        out.append(
            Figure(
                f"{a10k:,} vs {a1k:,} audiences at equal fan-out ({size.fanout_hot:,} hot)",
                "≤ 1.5× slower",
                f"{slow:.2f}× slower ({_si(r['hot10k_1']['events_per_s'], 'events/s')})",
                _status(slow, 1.5, lower=True),
                "fan-out control: only the first audiences reference occurring events",
            )
        )
    else:
        out.append(
            Figure(
                f"{a10k:,} vs {a1k:,} audiences at equal fan-out",
                "≤ 1.5× slower",
                "—",
                "not measured",
                missing("hot10k_1"),
            )
        )
    key_all = f"std1k_{cores}"
    if key_all in r:
        v = r[key_all]["events_per_s"]
        one = r.get("std1k_1", {}).get("events_per_s", 0.0)
        out.append(
            Figure(
                f"batch ingest, all cores ({cores}), {a1k:,} audiences",
                "(scales with cores)",
                _si(v, "events/s"),
                "measured",
                f"{v / one:.2f}× one core" if one else "",
            )
        )
    if "std1k_1" in r:
        p50, p99 = r["std1k_1"]["latency_us_p50"], r["std1k_1"]["latency_us_p99"]
        out.append(
            Figure(
                "event → membership change, in process",
                "p99 ≤ 20 µs",
                f"p50 {_us(p50)}, p99 {_us(p99)}",
                _status(p99, 20.0, lower=True),
                f"Rust API, one event per call, {r['std1k_1']['latency_samples']:,} samples"
                + _tail(r["std1k_1"]),
            )
        )
    else:
        out.append(
            Figure(
                "event → membership change, in process",
                "p99 ≤ 20 µs",
                "—",
                "not measured",
                missing("std1k_1"),
            )
        )
    g = res.grpc
    if g and not g.get("error") and g.get("probes"):
        out.append(
            Figure(
                "event → subscriber over gRPC",
                "p99 ≤ 5 ms",
                f"p50 {_us(g['p50_us'])}, p99 {_us(g['p99_us'])}",
                _status(g["p99_us"], 5_000.0, lower=True),
                f"unary Track → SubscribeChanges, {g['probes']} probes, Python client",
            )
        )
        out.append(
            Figure(
                "gRPC ingest, one server process",
                "≥ 1 M events/s",
                _si(g["events_per_s"], "events/s"),
                _status(g["events_per_s"], 1e6),
                _grpc_ingest_note(g),
            )
        )
        out.append(
            Figure(
                "IsMember calls over gRPC (issue 4)",
                "(no goal)",
                _si(g.get("is_member_per_s", 0.0), "calls/s"),
                "measured",
                "unary, one user per call, one Python client thread, 2 s",
            )
        )
    else:
        why = (g or {}).get("error") or "the gRPC step did not run"
        out.append(Figure("event → subscriber over gRPC", "p99 ≤ 5 ms", "—", "not measured", why))
        out.append(
            Figure("gRPC ingest, one server process", "≥ 1 M events/s", "—", "not measured", why)
        )
    if res.python_api:
        p = res.python_api
        out.append(
            Figure(
                "Python API ingest (Engine.ingest of JSON bytes)",
                "(no goal)",
                _si(p["events_per_s"], "events/s"),
                "measured",
                f"{p['rows']:,} events, {p['audiences']} audiences, batches of "
                f"{size.chunk_rows:,}, default threads",
            )
        )
    if res.inspect:
        i = res.inspect
        out += [
            Figure(
                "Arrow ingest vs JSON bytes (issue 3)",
                "as fast as the fastest batch path",
                f"{_si(i['arrow_events_per_s'], 'events/s')} vs "
                f"{_si(i['json_events_per_s'], 'events/s')}",
                "measured",
                f"same {i['ingest_rows']:,} events into a fresh engine with the same audiences",
            ),
        ]
        if "arrow_events_per_s_no_audiences" in i:
            out.append(
                Figure(
                    "Arrow ingest vs JSON bytes, no audiences (issue 3)",
                    "as fast as the fastest batch path",
                    f"{_si(i['arrow_events_per_s_no_audiences'], 'events/s')} vs "
                    f"{_si(i['json_events_per_s_no_audiences'], 'events/s')}",
                    "measured",
                    f"same {i['ingest_rows']:,} events into a fresh engine without "
                    "audiences: decoding dominates",
                )
            )
        out += [
            Figure(
                "batched is_member lookups (issue 3)",
                "(no goal)",
                _si(i["lookups_per_s"], "lookups/s"),
                "measured",
                f"is_member_array over {i['lookup_ids']:,} ids, numpy bool result",
            ),
            Figure(
                "preview latency (issue 3)",
                "(no goal)",
                f"{i['preview_s'] * 1e3:,.0f} ms",
                "measured",
                f"a new rule over all {i['profiles']:,} profiles, replacing an audience",
            ),
            Figure(
                "explain latency (issue 3)",
                "(no goal)",
                f"p50 {_us(i['explain_p50_us'])}, p99 {_us(i['explain_p99_us'])}",
                "measured",
                f"{i['explain_samples']:,} (user, audience) pairs",
            ),
        ]
    if "std1k_1" in r:
        v = r["std1k_1"]["heap_bytes_per_user"]
        out.append(
            Figure(
                "memory",
                "≤ 256 B per user",
                f"{v:,.0f} B/user",
                _status(v, 256.0, lower=True),
                f"engine heap (profiles, memberships, timers, ids), {a1k} audiences; "
                + _memory_note(res.memory),
            )
        )
        v = r["std1k_1"]["backfill_profiles_per_s"]
        best = r["std1k_1"].get("backfill_profiles_per_s_best", v)
        runs = r["std1k_1"].get("backfill_runs", 1)
        out.append(
            Figure(
                "new audience backfill",
                "≥ 20 M profiles/s per core",
                _si(v, "profiles/s"),
                _status(v, 20e6),
                f"one core, {r['std1k_1']['users']:,} profiles, median of {runs} "
                f"(best {_si(best, 'profiles/s')})",
            )
        )
    else:
        out.append(Figure("memory", "≤ 256 B per user", "—", "not measured", missing("std1k_1")))
        out.append(
            Figure(
                "new audience backfill",
                "≥ 20 M profiles/s per core",
                "—",
                "not measured",
                missing("std1k_1"),
            )
        )
    te = res.time_exit
    if "manual" in te:
        m = te["manual"]
        ok = m["exits"] == m["expected"] and m["max_error_ms"] == 0
        out.append(
            Figure(
                "time-based exit, manual clock",
                "at the exact instant",
                f"{m['exits']}/{m['expected']} exits, max error {m['max_error_ms']} ms",
                "✅ meets" if ok else "❌ misses",
                "windows 10 s … 60 d, one advance over 90 days",
            )
        )
    if "wall" in te:
        w = te["wall"]
        worst = max(w["observed_late_ms"], default=float("inf"))
        ok = w["exits"] == w["expected"] and w["max_error_ms"] == 0 and worst <= 1_000
        out.append(
            Figure(
                "time-based exit, wall clock",
                "within 1 tick (1 s)",
                f"observed ≤ {worst:.0f} ms late; `at` off by ≤ {w['max_error_ms']} ms",
                "✅ meets" if ok else "❌ misses",
                f'{w["exits"]}/{w["expected"]} exits of did("Ping", 2s), tick 1 s, polled '
                "every 5 ms",
            )
        )
    elif size.wall_exit is False:
        out.append(
            Figure(
                "time-based exit, wall clock",
                "within 1 tick (1 s)",
                "—",
                "not measured",
                "skipped at this size (takes seconds of wall time)",
            )
        )
    whole = res.durability.get("whole", {}).get("durability")
    if whole:
        rate = whole["replay_events_per_s"]
        out.append(
            Figure(
                "recovery after kill -9",
                "0 acknowledged events lost; ≥ 1 M events/s replay",
                f"0 lost (tests/test_durability.py); replay {_si(rate, ' events/s')}",
                _status(rate, 1e6),
                "see Durability below",
            )
        )
    else:
        out.append(
            Figure(
                "recovery after kill -9",
                "0 acknowledged events lost; ≥ 1 M events/s replay",
                "—",
                "not measured",
                "the durability step did not run at this size",
            )
        )
    return out


#: Title of the section benches/hotpath.py writes.
HOTPATH_TITLE = "Hot path: one build against another"

INSPECT_START = "<!-- inspect:start -->"
INSPECT_END = "<!-- inspect:end -->"


def inspect_engine_section(r: dict[str, Any]) -> list[str]:
    """Issue 3's preview and explain latency inside the engine, on the engine
    benchmark's state (every profile of the workload), from ``segmint-bench``."""
    if "preview_s" not in r:
        return ["Not measured in this run."]
    return [
        f"In the Rust engine after the whole workload ({r['users']:,} profiles, "
        f"{r['audiences']:,} audiences, {r['threads']} threads), by `segmint-bench`:",
        "",
        "| figure | value |",
        "|---|---|",
        f"| preview of a replacement rule over every profile | {r['preview_s'] * 1e3:,.0f} ms "
        f"({r['preview_size']:,} would match) |",
        f"| explain, 1,000 (user, audience) pairs | p50 {_us(r['explain_us_p50'])}, "
        f"p99 {_us(r['explain_us_p99'])} |",
    ] + (
        [
            f"| alias merging one profile into another, {r['alias_samples']:,} pairs "
            f"(one call each, afterwards) | p50 {_us(r['alias_us_p50'])}, "
            f"p99 {_us(r['alias_us_p99'])}; {r['alias_changes_per_call']:.1f} changes per merge |"
        ]
        if r.get("alias_samples")
        else []
    )


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _memory_note(m: dict[str, Any]) -> str:
    """What a process streaming the workload holds besides the engine's heap."""
    if not m:
        return "RSS while streaming not measured (benches/memory_bench.py)"
    return (
        f"streamed through Engine.ingest (benches/memory_bench.py), the process grew by "
        f"{m['rss_bytes_per_user']:,.0f} B/user of RSS: the heap, the change log's "
        f"{m['change_log_bytes'] / MIB:,.0f} MiB (16 B a membership change, at most 10 M, "
        f"however many users), and the allocator's and Python's own"
    )


def _grpc_ingest_note(g: dict[str, Any]) -> str:
    """The gRPC ingest figure's note: what was sent, the rounds' spread and
    where the server's time went."""
    parts = [
        f"{g['events']:,} events in batches of {g['batch_rows']:,}, "
        f"{g['audiences']} audiences, pre-encoded EventBatch bytes"
    ]
    rates = g.get("rounds_events_per_s") or []
    if len(rates) > 1:
        parts.append(
            f"median of {len(rates)} fresh servers "
            f"({_si(min(rates), 'events/s')} … {_si(max(rates), 'events/s')})"
        )
    if g.get("engine_share"):
        parts.append(
            f"the server spent {g['engine_share']:.0%} of the rounds' time inside the "
            "engine's decode-and-apply call"
        )
    return "; ".join(parts)


def report(res: Results, size: Size, plots: dict[str, Path], md_path: Path) -> str:
    """BENCHMARKS.md as text."""
    m = res.machine
    lines = [
        "# segmint benchmarks",
        "",
        "Generated by `benches/run.py` (DESIGN §7); do not edit by hand.",
        "",
        f"- **command**: `{res.command}` (size `{res.size}`)",
        f"- **date**: {res.started}",
        f"- **commit**: `{res.commit}`",
        f"- **machine**: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"{m['os']}, Python {m['python']}",
        f"- **workload**: {res.spec.get('users', 0):,} users, {res.spec.get('events', 0):,} "
        f"track events (+ identify calls), {res.spec.get('days')} days, seed "
        f"{res.spec.get('seed')} (benches/workload.py)",
        f"- **run time**: {res.elapsed_s:.0f} s",
        "",
    ]
    eq = res.duckdb_equal
    if eq is False:
        lines += [
            f"> **❌ MEMBERSHIP MISMATCH: DuckDB and segmint disagree on "
            f"{len(res.duckdb_diffs)} audiences.** See the diffs below; the figures of this run "
            "are suspect.",
            "",
        ]
    lines += ["## DESIGN §7 figures", ""]
    lines += _table(
        ["figure", "goal", "measured", "status", "notes"],
        [[f.name, f.goal, f.value, f.status, f.note] for f in figures(res, size)],
    )
    lines += ["", "## Peers (same events, same audiences)", ""]
    lines += peer_section(res)
    lines += ["", "## Scaling", ""]
    lines += scaling_section(res, size)
    from benches.durability_bench import END, START, section

    engine_run = next((v for k, v in res.rust.items() if k.startswith("std1k_")), {})
    lines += ["", "## Inspect in the engine (issue 3)", "", INSPECT_START]
    lines += [*inspect_engine_section(engine_run), INSPECT_END]

    lines += ["", "## Durability", "", START, *section(res.durability), END]
    # Written by benches/hotpath.py, cores.py and heavy_user.py, not by
    # this run: carried over as they are.
    sections = (("hotpath", HOTPATH_TITLE), ("heavy", HEAVY_TITLE), ("cores", CORES_TITLE))
    for name, title in sections:
        kept = read_section(md_path, name)
        if kept is not None:
            start, end = markers(name)
            lines += ["", f"## {title}", "", start, *kept, end]
    if plots:
        lines += ["", "## Plots", ""]
        for title, p in plots.items():
            rel = os.path.relpath(p, md_path.parent)
            lines.append(f"![{title}]({rel})")
            lines.append("")
    if res.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in res.notes]
    lines += [
        "",
        "## How to reproduce",
        "",
        "`make bench` (size small) or `python benches/run.py --size full` (1M users, by hand); "
        "raw results are written to `benches/out/results-<size>.json`, and engine figures "
        "come from `target/dist/segmint-bench` (commands in the JSON).",
        "",
    ]
    return "\n".join(lines)


def peer_section(res: Results) -> list[str]:
    """Ratio tables against DuckDB and the pure-Python reference."""
    lines: list[str] = []
    p, d = res.python_api, res.duckdb
    if p and d:
        eq = res.duckdb_equal
        verdict = (
            "✅ equal" if eq else f"❌ {len(res.duckdb_diffs)} of {d['audiences']} audiences differ"
        )
        lines += [
            f"**DuckDB** ({d['audiences']} audiences, {p['rows']:,} rows, {d['users']:,} users; "
            f"all cores for both). Membership sets at the final instant: **{verdict}** "
            f"({d['members']:,} memberships in DuckDB, {d['segmint_members']:,} in segmint).",
            "",
        ]
        seg_total = p["ingest_s"] + p["advance_s"]
        lat = res.latencies_us.get("python_api_track", [])
        p99 = peers.percentile(lat, 0.99) / 1e6 if lat else 0.0
        duck_total = d["load_s"] + d["compute_s"]
        rows = [
            [
                "ingest the whole stream",
                f"{seg_total:.2f} s (Engine.ingest + advance)",
                f"{duck_total:.2f} s (load {d['load_s']:.2f} + compute {d['compute_s']:.2f})",
                _ratio(seg_total, duck_total),
            ],
            [
                "freshness: up-to-date audiences after one event",
                f"{_us(p99 * 1e6)} (p99 Engine.track)",
                f"{d['compute_s']:.2f} s (recompute all, {d['queries']} queries)",
                _ratio(p99, d["compute_s"]),
            ],
            [
                "memory",
                f"{p['heap_bytes'] / MIB:.1f} MiB heap",
                f"{d['table_bytes'] / MIB:.1f} MiB in-memory tables",
                _ratio(p["heap_bytes"], d["table_bytes"]),
            ],
        ]
        lines += _table(["metric", "segmint", "DuckDB", "segmint / DuckDB"], rows)
        if res.duckdb_diffs:
            lines += ["", "Audiences that differ (first 20; up to 5 example ids each way):", ""]
            lines += _table(
                ["audience", "segmint size", "DuckDB size", "only in segmint", "only in DuckDB"],
                [
                    [
                        x["audience"],
                        str(x["segmint"]),
                        str(x["peer"]),
                        ", ".join(x["only_segmint"]),
                        ", ".join(x["only_peer"]),
                    ]
                    for x in res.duckdb_diffs[:20]
                ],
            )
    else:
        lines.append("DuckDB peer: not measured (see Notes).")
    ref = res.reference
    if ref:
        s = ref["spec"]
        same = (
            "✅ equal"
            if not res.reference_diffs
            else f"❌ {len(res.reference_diffs)} audiences differ"
        )
        lines += [
            "",
            f"**Pure-Python incremental evaluator** (tests/reference.py) on a subsample: "
            f"{s['users']:,} users, {ref['rows']:,} rows, {s['audiences']} audiences; segmint "
            f"measured on the same subsample. Memberships: {same}.",
            "",
        ]
        ref_mem = ref["state_bytes"]
        rows = [
            [
                "ingest the whole stream",
                f"{ref['segmint_total_s'] * 1e3:.1f} ms",
                f"{ref['total_s']:.2f} s",
                _ratio(ref["segmint_total_s"], ref["total_s"]),
            ],
            [
                "freshness: one event (p99)",
                _us(ref["segmint_event_p99_us"]) + " (Engine.track)",
                _us(ref["event_p99_us"]) + " (track, all audiences re-evaluated)",
                _ratio(ref["segmint_event_p99_us"], ref["event_p99_us"]),
            ],
            [
                "memory",
                f"{ref['segmint_heap_bytes'] / MIB:.2f} MiB heap",
                f"{ref_mem / MIB:.2f} MiB of Python objects "
                f"(RSS growth {ref['rss_growth_bytes'] / MIB:.2f} MiB)",
                _ratio(ref["segmint_heap_bytes"], ref_mem),
            ],
        ]
        lines += _table(["metric", "segmint", "Python reference", "segmint / reference"], rows)
        lines.append("")
        lines.append(
            "(The reference's cost grows with the history it keeps and the audiences it "
            "re-evaluates, so its ratios on a subsample understate the gap at full size.)"
        )
    return lines


def scaling_section(res: Results, size: Size) -> list[str]:
    """Events/s against audiences, users and cores."""
    r = res.rust
    lines: list[str] = []
    rows = []
    for n in size.scale_audiences:
        x = r.get(f"aud_{n}")
        if x:
            rows.append(
                [
                    f"{n:,}",
                    str(x["hot_audiences"]),
                    _si(x["events_per_s"], "events/s"),
                    f"{x['heap_bytes_per_user']:,.0f}",
                ]
            )
        else:
            rows.append([f"{n:,}", "—", res.rust_errors.get(f"aud_{n}", "not measured"), "—"])
    if rows:
        lines += [
            f"Events/s against audience count, one core, fixed fan-out ({size.scale_hot} "
            f"hot audiences), {size.users:,} users:",
            "",
        ]
        lines += _table(["audiences", "hot", "ingest", "heap B/user"], rows)
        lines.append("")
    rows = []
    for u in size.scale_users:
        x = r.get(f"users_{u}")
        if x:
            rows.append(
                [
                    f"{u:,}",
                    f"{x['events']:,}",
                    _si(x["events_per_s"], "events/s"),
                    f"{x['heap_bytes_per_user']:,.0f}",
                    f"{x['rss_bytes_per_user']:,.0f}",
                ]
            )
        else:
            rows.append(
                [f"{u:,}", "—", res.rust_errors.get(f"users_{u}", "not measured"), "—", "—"]
            )
    if rows:
        lines += [
            f"Events/s and memory against users, one core, {size.scale_users_audiences:,} "
            f"audiences ({size.scale_hot} hot), {size.events_per_user:g} track events per user:",
            "",
        ]
        lines += _table(["users", "events", "ingest", "heap B/user", "RSS B/user"], rows)
        lines += [
            "",
            "RSS here is `segmint-bench`'s growth, which includes what the allocator kept of the "
            "events it decoded up front; the memory row of the §7 table streams the input "
            "instead (benches/memory_bench.py), as a deployment would.",
            "",
        ]
    cores = res.machine["cores"]
    one = r.get("std1k_1")
    allc = r.get(f"std1k_{cores}")
    if one:
        cells = [_si(one["events_per_s"], "events/s")]
        cells.append(_si(allc["events_per_s"], "events/s") if allc and cores > 1 else "—")
        lines += [
            f"Events/s against cores ({size.std_audiences[0]:,} audiences, {size.users:,} users; "
            f"on a larger machine, see “{CORES_TITLE}” below):",
            "",
        ]
        lines += _table(["1 core", f"{cores} cores (all here)"], [cells])
    if not lines:
        lines.append("Not measured at this size.")
    return lines


# --------------------------------------------------------------------------- plots


def make_plots(res: Results, size: Size, plot_dir: Path) -> dict[str, Path]:
    """PNG plots; empty when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        res.notes.append("matplotlib is not installed: no plots (pip install matplotlib)")
        return {}
    plot_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    pts = [
        (n, res.rust[f"aud_{n}"]["events_per_s"])
        for n in size.scale_audiences
        if f"aud_{n}" in res.rust
    ]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("audiences")
        ax.set_ylabel("events/s (one core)")
        ax.set_title(f"Throughput vs audience count ({size.scale_hot} hot)")
        ax.grid(True, which="both", alpha=0.3)
        path = plot_dir / "throughput_vs_audiences.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out["throughput vs audience count"] = path
    lat = {k: v for k, v in res.latencies_us.items() if v}
    if lat:
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 4))
        lo = max(0.1, min(min(v) for v in lat.values()))
        hi = max(max(v) for v in lat.values())
        bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 60).tolist()
        labels = {
            "python_api_track": "Engine.track (in process)",
            "grpc_subscriber": "event → gRPC subscriber",
        }
        for k, v in lat.items():
            ax.hist(v, bins=bins, alpha=0.6, label=labels.get(k, k))
        one = res.rust.get("std1k_1")
        if one:
            ax.axvline(one["latency_us_p99"], color="k", linestyle="--", label="Rust API p99")
        ax.set_xscale("log")
        ax.set_xlabel("latency (µs)")
        ax.set_ylabel("events")
        ax.set_title("Latency distribution")
        ax.legend()
        path = plot_dir / "latency_distribution.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out["latency distribution"] = path
    mem = [(u, res.rust[f"users_{u}"]) for u in size.scale_users if f"users_{u}" in res.rust]
    if mem:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            [m[0] for m in mem],
            [m[1]["heap_bytes_per_user"] for m in mem],
            marker="o",
            label="engine heap",
        )
        ax.plot(
            [m[0] for m in mem],
            [m[1]["rss_bytes_per_user"] for m in mem],
            marker="s",
            label="process RSS",
        )
        ax.axhline(256, color="g", linestyle="--", label="goal 256 B")
        ax.set_xscale("log")
        ax.set_xlabel("users")
        ax.set_ylabel("bytes per user")
        ax.set_title("Memory vs users")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = plot_dir / "memory_vs_users.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out["memory vs users"] = path
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 on success, 1 when the DuckDB membership check fails."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--plots", type=Path, default=ROOT / "benches" / "plots")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "out", help="workload cache")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--command", help="the command to print in the report")
    args = ap.parse_args(argv)
    size = SIZES[args.size]
    shown = args.command or " ".join(
        ["python", "benches/run.py", *(sys.argv[1:] if argv is None else argv)]
    )
    res = Results(
        size=size.name,
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
        commit=git_commit(),
        command=shown,
    )
    t0 = time.perf_counter()
    execute(size, res, args.out / "bench", args.quiet)
    res.elapsed_s = time.perf_counter() - t0
    plots = make_plots(res, size, args.plots)
    args.output.write_text(report(res, size, plots, args.output))
    args.out.mkdir(parents=True, exist_ok=True)
    raw = asdict(res)
    raw["latencies_us"] = {k: sorted(v) for k, v in res.latencies_us.items()}
    (args.out / f"results-{size.name}.json").write_text(json.dumps(raw, indent=1))
    print(f"wrote {args.output} and {len(plots)} plots in {res.elapsed_s:.0f} s")
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    if res.duckdb_equal is False:
        print(
            f"MEMBERSHIP MISMATCH: DuckDB and segmint differ on {len(res.duckdb_diffs)} audiences:",
            file=sys.stderr,
        )
        for d in res.duckdb_diffs:
            print(
                f"  {d['audience']}: segmint {d['segmint']} vs DuckDB {d['peer']}; only segmint "
                f"{d['only_segmint']}, only DuckDB {d['only_peer']}",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
