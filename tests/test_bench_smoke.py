"""Smoke size of the benchmark suite (benches/run.py): the report generator works
and DuckDB computes the same memberships as segmint on a tiny workload.

No timing assertions: only that the pieces run and agree.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("duckdb")

from benches import peers, run  # noqa: E402
from benches.workload import WorkloadSpec, generate_audiences, generate_events  # noqa: E402


def test_duckdb_equals_segmint_on_a_tiny_workload() -> None:
    spec = WorkloadSpec(users=200, events=1_500, audiences=40, seed=5)
    events = generate_events(spec)
    auds = [a for _, _, a in generate_audiences(spec)]
    seg = peers.run_segmint(events, auds, spec.start_ms, spec.end_ms, chunk_rows=300)
    assert seg.errors == 0
    duck = peers.run_duckdb(events, auds, spec.end_ms, threads=1)
    diffs = peers.compare_memberships(seg.members([a.key for a in auds]), duck.members)
    assert diffs == [], diffs[:3]
    assert sum(len(m) for m in duck.members.values()) > 0


def test_compare_memberships_reports_differences() -> None:
    diffs = peers.compare_memberships({"a": {"u1", "u2"}, "b": {"u3"}}, {"a": {"u2", "u9"}})
    assert [d.audience for d in diffs] == ["a", "b"]
    assert diffs[0].only_segmint == ["u1"] and diffs[0].only_peer == ["u9"]
    assert diffs[1].segmint == 1 and diffs[1].peer == 0


def test_time_exit_manual_clock_is_exact() -> None:
    check = peers.time_exit_manual(users=20)
    assert check.exits == check.expected > 0
    assert check.max_error_ms == 0


def test_smoke_run_writes_the_report(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    code = run.main(
        [
            "--size",
            "smoke",
            "--quiet",
            "--output",
            str(md),
            "--plots",
            str(tmp_path / "plots"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    text = md.read_text()
    raw = json.loads((tmp_path / "out" / "results-smoke.json").read_text())
    assert code == 0, raw["duckdb_diffs"][:3]
    assert raw["duckdb"] and raw["duckdb_diffs"] == []
    assert not [n for n in raw["notes"] if "failed" in n], raw["notes"]
    grpc_run = raw["grpc"]
    assert grpc_run["error"] is None
    assert grpc_run["events"] > 0 and len(grpc_run["rounds_events_per_s"]) == 2
    assert 0 < grpc_run["engine_share"] <= 1
    assert grpc_run["probes"] > 0
    for needle in (
        "## DESIGN §7 figures",
        "recovery after kill -9",
        "## Durability",
        "event → subscriber over gRPC",
        "gRPC ingest, one server process",
        "median of 2 fresh servers",
        "of the rounds' time inside the engine's decode-and-apply call",
        "time-based exit, manual clock",
        "segmint / DuckDB",
        "segmint / reference",
        "**✅ equal**",
        "- **machine**:",
        "- **commit**:",
    ):
        assert needle in text, needle


def test_report_flags_a_membership_mismatch() -> None:
    size = run.SIZES["smoke"]
    res = run.Results("smoke", "now", run.machine_info(), "abc", "cmd")
    res.python_api = {
        "rows": 10,
        "audiences": 1,
        "ingest_s": 1.0,
        "advance_s": 0.0,
        "events_per_s": 10.0,
        "heap_bytes": 1,
    }
    res.duckdb = {
        "load_s": 1.0,
        "compute_s": 1.0,
        "queries": 1,
        "members": 3,
        "segmint_members": 2,
        "table_bytes": 1,
        "users": 3,
        "audiences": 1,
    }
    res.duckdb_diffs = [
        {"audience": "vip", "segmint": 2, "peer": 3, "only_segmint": [], "only_peer": ["u7"]}
    ]
    text = run.report(res, size, {}, Path("BENCHMARKS.md"))
    assert "MEMBERSHIP MISMATCH" in text
    assert "| vip | 2 | 3 |  | u7 |" in text


def test_heavy_user_orders_are_one_buyers_in_time_order(tmp_path: Path) -> None:
    from benches.heavy_user import export_orders
    from benches.workload import WorkloadSpec

    spec = WorkloadSpec()
    path = export_orders(50, 5, spec, tmp_path)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(events) == 55
    assert {e["userId"] for e in events} == {"heavy-buyer"}
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == 55
    import segmint

    end = dt.datetime.fromtimestamp(spec.end_ms / 1000, tz=dt.UTC)
    engine = segmint.Engine(clock="manual", now=end)
    engine.define_audience("big", 'sum("Order Completed", revenue) > 100')
    result = engine.ingest(("[" + ",".join(path.read_text().splitlines()) + "]").encode())
    assert list(result.errors) == []
    assert engine.is_member("heavy-buyer", "big")
