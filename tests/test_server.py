"""The gRPC sidecar, end to end: the real ``segmint serve`` as a subprocess on
a free loopback port (and on a unix socket), driven by the generated client
and by grpcurl through reflection. Only 127.0.0.1 and unix sockets are used."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import engine_available

pytestmark = pytest.mark.skipif(not engine_available(), reason="segmint._core not built")

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_health.v1.health_pb2")

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from segmint.client import encode_batch  # noqa: E402
from segmint.proto import segmint_pb2 as pb  # noqa: E402
from segmint.proto import segmint_pb2_grpc as pb_grpc  # noqa: E402

START_TIMEOUT = 20.0
CALL_TIMEOUT = 10.0
TOKEN = "s3cret-token-for-tests"


@dataclass
class Server:
    """A running ``segmint serve`` subprocess."""

    proc: subprocess.Popen[str]
    address: str
    lines: queue.Queue[str]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self) -> pb_grpc.SegmintStub:
        return pb_grpc.SegmintStub(self.channel())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def output(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


def start_server(
    listen: str,
    *extra: str,
    env: dict[str, str] | None = None,
    config: Path | None = None,
) -> Server:
    """Starts the sidecar and waits (bounded) for its "serving on" line."""
    cmd = [sys.executable, "-m", "segmint.cli", "serve", "--listen", listen, "--grace", "3"]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += list(extra)
    full_env = {k: v for k, v in os.environ.items() if k != "SEGMINT_TOKEN"}
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.match(r"segmint: serving on (\S+)", line)
        if m:
            return Server(proc, m.group(1), lines)
    proc.kill()
    proc.wait(5)
    raise AssertionError(f"server did not start: {seen}")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "segmint.toml"
    path.write_text(
        """
examples = false

[server]
max_message_bytes = 1000000
subscriber_page = 50

[engine]
clock = "manual"
change_log_capacity = 1000000

[[audiences]]
key = "buyers"
rule = 'did("Buy", 7d)'
"""
    )
    return path


@pytest.fixture(scope="module")
def server(config_file: Path) -> Iterator[Server]:
    srv = start_server("127.0.0.1:0", config=config_file)
    yield srv
    srv.stop()


def track(user: str, name: str = "Buy", **props: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": name, "properties": props}


def identify(user: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "traits": traits}


def ingest(stub: pb_grpc.SegmintStub, batches: Sequence[bytes], **kw: Any) -> list[pb.IngestAck]:
    """Streams batches through the generated stub; returns the acks."""
    messages = [pb.EventBatch.FromString(b) for b in batches]
    return list(stub.Ingest(iter(messages), timeout=CALL_TIMEOUT, **kw))


def raw_ingest(server: Server) -> Any:
    """The Ingest method taking already serialized batches (as `segmint load` sends)."""
    return server.channel().stream_stream(
        "/segmint.v1.Segmint/Ingest",
        request_serializer=None,
        response_deserializer=pb.IngestAck.FromString,
    )


class Subscriber:
    """Reads a SubscribeChanges stream in a thread until told to stop."""

    def __init__(self, stub: pb_grpc.SegmintStub, from_seq: int, audiences: Sequence[str] = ()):
        self.call = stub.SubscribeChanges(
            pb.SubscribeChangesRequest(from_seq=from_seq, audiences=list(audiences)),
            timeout=30,
        )
        self.changes: list[pb.Change] = []
        self.pages: list[pb.ChangeBatch] = []
        self.error: Any = None
        self.ended = threading.Event()
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for page in self.call:
                with self._cond:
                    self.pages.append(page)
                    self.changes.extend(page.changes)
                    self._cond.notify_all()
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()
            with self._cond:
                self._cond.notify_all()

    def wait_for_seq(self, seq: int, timeout: float = CALL_TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (self.pages and self.pages[-1].seq >= seq) or self.ended.is_set(),
                timeout,
            )
        assert ok and self.pages and self.pages[-1].seq >= seq, (
            f"subscriber stuck at {self.pages[-1].seq if self.pages else None}, wanted {seq}; "
            f"error {self.error}"
        )

    def cancel(self) -> None:
        self.call.cancel()
        self.ended.wait(CALL_TIMEOUT)


def current_seq(stub: pb_grpc.SegmintStub) -> int:
    ack = stub.Identify(
        pb.Event(user_id="__probe__", identify=pb.Identify(traits_json=b"{}")),
        timeout=CALL_TIMEOUT,
    )
    return int(ack.seq)


# ------------------------------------------------------------------- tests


def test_health_serving(server: Server) -> None:
    stub = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", "segmint.v1.Segmint"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(server: Server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    db = ProtoReflectionDescriptorDatabase(server.channel())
    services = set(db.get_services())
    assert {"segmint.v1.Segmint", "grpc.health.v1.Health"} <= services
    desc = db.FindFileContainingSymbol("segmint.v1.Segmint")
    assert desc.name == "segmint/v1/segmint.proto"


def test_ingest_acks_and_subscriber_sees_every_change_in_order(server: Server) -> None:
    stub = server.stub()
    stub.DefineAudience(
        pb.DefineAudienceRequest(key="pro_t1", rule='trait.plan == "pro"'), timeout=CALL_TIMEOUT
    )
    start = current_seq(stub)
    sub = Subscriber(stub, start, audiences=["pro_t1"])
    users = [f"t1u{i}" for i in range(300)]
    batches = []
    for round_ in range(4):
        plan = "pro" if round_ % 2 == 0 else "free"
        events: list[dict[str, Any]] = [identify(u, plan=plan) for u in users]
        if round_ == 1:
            events.insert(7, {"type": "track", "event": "Buy"})  # no user id
        batches.append(encode_batch(events, batch_id=100 + round_))
    acks = ingest(stub, batches)
    assert [a.batch_id for a in acks] == [100, 101, 102, 103]
    assert [a.accepted for a in acks] == [300, 300, 300, 300]
    assert [(e.index, e.code) for e in acks[1].errors] == [(7, "invalid_event")]
    assert all(a.changes == 300 for a in acks)
    assert acks == sorted(acks, key=lambda a: a.seq)
    sub.wait_for_seq(acks[-1].seq)
    sub.cancel()
    seqs = [c.seq for c in sub.changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 1200
    assert all(c.audience == "pro_t1" for c in sub.changes)
    kinds = [c.kind for c in sub.changes]
    enter, exit_ = pb.Change.ENTERED, pb.Change.EXITED
    assert kinds == [enter] * 300 + [exit_] * 300 + [enter] * 300 + [exit_] * 300
    assert [c.user_id for c in sub.changes[:300]] == users
    assert all(c.reason == "event" for c in sub.changes)
    size = stub.Size(pb.SizeRequest(audience="pro_t1"), timeout=CALL_TIMEOUT).size
    assert size == 0


def test_resume_after_disconnect_loses_and_repeats_nothing(server: Server) -> None:
    stub = server.stub()
    start = current_seq(stub)
    ingest(stub, [encode_batch([track(f"r{i}") for i in range(120)], batch_id=1)])
    first = Subscriber(stub, start)
    ack = ingest(stub, [encode_batch([track(f"r{i}") for i in range(120, 200)], batch_id=2)])[0]
    first.wait_for_seq(ack.seq)
    first.cancel()
    # The client processed only part of what it got, then disconnected.
    processed = first.changes[:77]
    last = processed[-1].seq
    ack2 = ingest(stub, [encode_batch([track(f"r{i}") for i in range(200, 260)], batch_id=3)])[0]
    second = Subscriber(stub, last)
    second.wait_for_seq(ack2.seq)
    second.cancel()
    got = [c.seq for c in processed] + [c.seq for c in second.changes]
    assert got == list(range(start + 1, ack2.seq + 1))
    users = [c.user_id for c in processed + second.changes if c.audience == "buyers"]
    assert users == [f"r{i}" for i in range(260)]


def test_queries(server: Server) -> None:
    stub = server.stub()
    ingest(stub, [encode_batch([track("q1"), track("q2"), identify("q3", plan="x")])])
    resp = stub.IsMember(
        pb.IsMemberRequest(audience="buyers", user_ids=["q1", "q3", "nobody"]),
        timeout=CALL_TIMEOUT,
    )
    assert list(resp.member) == [True, False, False]
    assert "buyers" in stub.AudiencesOf(pb.AudiencesOfRequest(user_id="q1")).audiences
    pages = list(stub.Members(pb.MembersRequest(audience="buyers", page_size=7)))
    ids = [u for p in pages for u in p.user_ids]
    assert pages[-1].last and not any(p.last for p in pages[:-1])
    assert ids == sorted(ids) and {"q1", "q2"} <= set(ids) and "q3" not in ids
    size = stub.Size(pb.SizeRequest(audience="buyers")).size
    assert len(ids) == size
    bm = stub.MembersBitmap(pb.MembersBitmapRequest(audience="buyers"), timeout=CALL_TIMEOUT)
    assert sorted(bm.user_ids) == ids and len(bm.bitmap) > 0
    try:
        from pyroaring import BitMap
    except ImportError:
        pass
    else:
        assert len(BitMap.deserialize(bm.bitmap)) == size
    listed = stub.ListAudiences(pb.ListAudiencesRequest()).audiences
    assert listed[0].key == "buyers" and listed[0].rule == 'did("Buy", 7d)'
    profile = stub.Profile(pb.ProfileRequest(user_id="q3"), timeout=CALL_TIMEOUT)
    assert dict(profile.traits) == {"plan": "x"}
    ack = stub.Track(
        pb.Event(
            user_id="q4",
            track=pb.Track(event="Buy", properties=_struct({"revenue": 3, "tags": ["a"]})),
        ),
        timeout=CALL_TIMEOUT,
    )
    assert ack.accepted == 1 and ack.changes == 1
    # An alias: q4's profile (and its "Buy") is merged into q5's.
    ack = stub.Alias(pb.Event(user_id="q5", alias=pb.Alias(previous_id="q4")), timeout=CALL_TIMEOUT)
    assert ack.accepted == 1 and ack.changes == 2
    member = stub.IsMember(pb.IsMemberRequest(audience="buyers", user_ids=["q4", "q5"]))
    assert list(member.member) == [True, True]
    code, _ = _code(stub.Alias, pb.Event(user_id="q5", alias=pb.Alias()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def _struct(d: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(d)
    return s


def _code(fn: Any, *args: Any, **kw: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, timeout=CALL_TIMEOUT, **kw)
        if hasattr(result, "__iter__") and not isinstance(result, bytes | str):
            list(result)
    return info.value.code(), info.value.details()


def test_bad_requests_get_the_right_codes_and_the_server_keeps_serving(server: Server) -> None:
    stub = server.stub()
    code, details = _code(
        stub.DefineAudience, pb.DefineAudienceRequest(key="bad", rule='count("X", 7d) >= ')
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(r"\b1:\d+\b", details), details
    code, _ = _code(stub.DefineAudience, pb.DefineAudienceRequest(key="bad2", rule="trait.x +"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    for call, req in [
        (stub.Size, pb.SizeRequest(audience="nope")),
        (stub.GetAudience, pb.GetAudienceRequest(key="nope")),
        (stub.RemoveAudience, pb.RemoveAudienceRequest(key="nope")),
        (stub.IsMember, pb.IsMemberRequest(audience="nope", user_ids=["a", "b"])),
        (stub.Members, pb.MembersRequest(audience="nope")),
        (stub.SubscribeChanges, pb.SubscribeChangesRequest(audiences=["nope"])),
        (stub.Profile, pb.ProfileRequest(user_id="nobody-at-all")),
    ]:
        assert _code(call, req)[0] == grpc.StatusCode.NOT_FOUND, call
    code, _ = _code(stub.Track, pb.Event(user_id="u", identify=pb.Identify()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = _code(stub.Track, pb.Event(track=pb.Track(event="Buy")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "user id" in details
    code, _ = _code(
        stub.Track, pb.Event(user_id="u", track=pb.Track(event="X", properties_json=b"[1"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # An undecodable batch ends its stream with INVALID_ARGUMENT.
    code, _ = _code(raw_ingest(server), iter([b"\x12\x05\x01"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # An oversized message (the config sets max_message_bytes = 1 MB).
    big = encode_batch([track(f"big{i}", pad="x" * 1000) for i in range(1100)])
    code, _ = _code(raw_ingest(server), iter([big]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, details = _code(stub.DefineComputedTrait, pb.DefineComputedTraitRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "computed trait key" in details
    code, details = _code(
        stub.DefineComputedTrait,
        pb.DefineComputedTraitRequest(key="bad_ct", expression='sum("Buy", price, 30x)'),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1:" in details
    code, _ = _code(stub.RemoveComputedTrait, pb.RemoveComputedTraitRequest(key="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(stub.Preview, pb.PreviewRequest(rule='did("Buy", 1d'))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1:" in details
    code, _ = _code(stub.Explain, pb.ExplainRequest(user_id="nobody-at-all", audience="buyers"))
    assert code == grpc.StatusCode.NOT_FOUND
    # Still serving everyone.
    assert server.proc.poll() is None
    acks = ingest(stub, [encode_batch([track("still-here")], batch_id=9)])
    assert acks[0].batch_id == 9 and acks[0].accepted == 1
    assert stub.Size(pb.SizeRequest(audience="buyers")).size > 0


def test_preview_explain_overlap(server: Server) -> None:
    stub = server.stub()
    ingest(stub, [encode_batch([track("px1"), track("px2")])])
    size = stub.Size(pb.SizeRequest(audience="buyers")).size
    p = stub.Preview(pb.PreviewRequest(rule='did("Buy", 7d)', replacing="buyers", sample=5))
    assert p.size == size and not p.entering and not p.exiting and len(p.sample) <= 5
    x = stub.Explain(pb.ExplainRequest(user_id="px1", audience="buyers"))
    assert x.member and x.tree.holds and "Buy" in x.explanation
    assert x.HasField("entered_at")
    o = stub.Overlap(pb.OverlapRequest(audiences=["buyers", "buyers"]))
    assert o.size == size and list(o.sizes) == [size, size] and list(o.pairwise) == [size] * 4


def test_define_and_remove_audience_stream_changes(server: Server) -> None:
    stub = server.stub()
    start = current_seq(stub)
    sub = Subscriber(stub, start)
    resp = stub.DefineAudience(
        pb.DefineAudienceRequest(key="all_buyers_t2", rule='count("Buy") >= 1'),
        timeout=CALL_TIMEOUT,
    )
    assert resp.size > 0 and resp.seq == start + resp.size
    removed = stub.RemoveAudience(pb.RemoveAudienceRequest(key="all_buyers_t2"))
    assert removed.seq == resp.seq + resp.size
    sub.wait_for_seq(removed.seq)
    sub.cancel()
    reasons = [c.reason for c in sub.changes]
    assert reasons == ["definition"] * resp.size + ["delete"] * resp.size


def test_define_audiences_at_once_all_or_nothing(server: Server) -> None:
    stub = server.stub()
    ingest(stub, [encode_batch([track("dm1"), identify("dm2", plan="dm")])])
    start = current_seq(stub)
    resp = stub.DefineAudiences(
        pb.DefineAudiencesRequest(
            audiences=[
                pb.DefineAudienceRequest(key="many_buy", rule='count("Buy") >= 1'),
                pb.DefineAudienceRequest(key="many_other", rule='trait.plan == "dm"'),
                pb.DefineAudienceRequest(key="many_both", rule='in_audience("many_buy")'),
            ]
        ),
        timeout=CALL_TIMEOUT,
    )
    sizes = {a.key: a.size for a in resp.audiences}
    assert [a.key for a in resp.audiences] == ["many_buy", "many_other", "many_both"]
    for key, size in sizes.items():
        assert stub.Size(pb.SizeRequest(audience=key)).size == size > 0
    assert {a.seq for a in resp.audiences} == {start + sum(sizes.values())}
    # One bad item: the call fails naming it, and nothing is defined.
    code, details = _code(
        stub.DefineAudiences,
        pb.DefineAudiencesRequest(
            audiences=[
                pb.DefineAudienceRequest(key="many_new", rule='did("Buy")'),
                pb.DefineAudienceRequest(key="many_bad", rule='count("X", 7d) >= '),
            ]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith('item 1 ("many_bad"): ') and re.search(r"\b1:\d+\b", details)
    listed = stub.ListAudiences(pb.ListAudiencesRequest(), timeout=CALL_TIMEOUT)
    keys = {a.key for a in listed.audiences}
    assert {"many_buy", "many_other", "many_both"} <= keys and "many_new" not in keys
    assert current_seq(stub) == start + sum(sizes.values())
    # No items: nothing done.
    empty = stub.DefineAudiences(pb.DefineAudiencesRequest(), timeout=CALL_TIMEOUT)
    assert not empty.audiences and current_seq(stub) == start + sum(sizes.values())


def test_computed_traits_define_list_profile_changes_remove(server: Server) -> None:
    stub = server.stub()
    start = current_seq(stub)
    sub = Subscriber(stub, start)
    # Defined before the events: a state no earlier rule kept starts empty.
    resp = stub.DefineComputedTrait(
        pb.DefineComputedTraitRequest(key="ct_spend", expression='sum("Buy", price)'),
        timeout=CALL_TIMEOUT,
    )
    assert resp.key == "ct_spend" and resp.type == "number" and resp.with_value == 0
    listed = stub.ListComputedTraits(pb.ListComputedTraitsRequest(), timeout=CALL_TIMEOUT)
    assert list(listed.computed_traits) == [
        pb.ComputedTrait(key="ct_spend", expression='sum("Buy", price)', type="number"),
    ]
    stub.DefineAudience(
        pb.DefineAudienceRequest(key="ct_big", rule="computed.ct_spend > 10"), timeout=CALL_TIMEOUT
    )
    acks = ingest(stub, [encode_batch([track("ct_u1", price=5), track("ct_u1", price=7)])])
    sub.wait_for_seq(acks[-1].seq)
    sub.call.cancel()
    mine = [c for c in sub.changes if c.user_id == "ct_u1"]
    computed = [c for c in mine if c.kind == pb.Change.COMPUTED]
    assert [
        (
            c.computed_trait,
            c.HasField("old_value"),
            c.old_value.number_value,
            c.new_value.number_value,
        )
        for c in computed
    ] == [("ct_spend", False, 0.0, 5.0), ("ct_spend", True, 5.0, 12.0)]
    assert all(c.reason == "event" and not c.audience for c in computed)
    entered = [c for c in mine if c.kind == pb.Change.ENTERED and c.audience == "ct_big"]
    assert [c.seq > computed[-1].seq for c in entered] == [True]
    profile = stub.Profile(pb.ProfileRequest(user_id="ct_u1"), timeout=CALL_TIMEOUT)
    assert profile.computed["ct_spend"] == 12.0
    assert "ct_big" in profile.audiences
    code, details = _code(stub.RemoveComputedTrait, pb.RemoveComputedTraitRequest(key="ct_spend"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "ct_big" in details
    stub.RemoveAudience(pb.RemoveAudienceRequest(key="ct_big"), timeout=CALL_TIMEOUT)
    stub.RemoveComputedTrait(pb.RemoveComputedTraitRequest(key="ct_spend"), timeout=CALL_TIMEOUT)
    listed = stub.ListComputedTraits(pb.ListComputedTraitsRequest(), timeout=CALL_TIMEOUT)
    assert all(c.key != "ct_spend" for c in listed.computed_traits)


def test_computed_traits_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "segmint.toml"
    cfg.write_text(
        """
examples = false

[engine]
clock = "manual"

[[computed_traits]]
key = "buys_7d"
expression = 'count("Buy", 7d)'

[[audiences]]
key = "repeat_buyers"
rule = "computed.buys_7d >= 2"
"""
    )
    srv = start_server("127.0.0.1:0", config=cfg)
    try:
        stub = srv.stub()
        listed = stub.ListComputedTraits(pb.ListComputedTraitsRequest(), timeout=CALL_TIMEOUT)
        assert [(c.key, c.type) for c in listed.computed_traits] == [("buys_7d", "number")]
        ingest(stub, [encode_batch([track("cfg_u"), track("cfg_u")])])
        profile = stub.Profile(pb.ProfileRequest(user_id="cfg_u"), timeout=CALL_TIMEOUT)
        assert profile.computed["buys_7d"] == 2.0
        assert list(profile.audiences) == ["repeat_buyers"]
    finally:
        srv.stop()


def test_auth_rejects_calls_without_the_token() -> None:
    srv = start_server("127.0.0.1:0", "--no-examples", env={"SEGMINT_TOKEN": TOKEN})
    try:
        stub = srv.stub()
        good = (("authorization", f"Bearer {TOKEN}"),)
        bad = (("authorization", "Bearer nope"),)
        for metadata in [(), bad]:
            code, _ = _code(stub.ListAudiences, pb.ListAudiencesRequest(), metadata=metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = _code(raw_ingest(srv), iter([encode_batch([track("x")])]), metadata=metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = _code(stub.SubscribeChanges, pb.SubscribeChangesRequest(), metadata=metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListAudiences(pb.ListAudiencesRequest(), metadata=good).audiences == []
        acks = ingest(stub, [encode_batch([track("x")], batch_id=5)], metadata=good)
        assert acks[0].batch_id == 5 and acks[0].accepted == 1
        # Health stays open for probes.
        health = health_pb2_grpc.HealthStub(srv.channel())
        resp = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert srv.stop() == 0


def test_non_loopback_bind_without_token_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SEGMINT_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "segmint.cli", "serve", "--listen", "0.0.0.0:0", "--no-examples"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env=env,
    )
    assert proc.returncode == 2
    assert "bearer token is required" in proc.stderr


def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "segmint.sock"
    srv = start_server(f"unix://{sock}", "--clock", "manual")
    try:
        assert srv.address == f"unix://{sock}"
        stub = srv.stub()
        health = health_pb2_grpc.HealthStub(srv.channel())
        resp = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        keys = [a.key for a in stub.ListAudiences(pb.ListAudiencesRequest()).audiences]
        assert "vip" in keys  # the bundled example audiences
        batch = [track("v1", "Order Completed", revenue=500.0)]
        acks = ingest(stub, [encode_batch(batch)])
        assert acks[0].changes >= 1
        assert stub.IsMember(pb.IsMemberRequest(audience="vip", user_ids=["v1"])).member[0]
    finally:
        assert srv.stop() == 0


def test_graceful_shutdown_delivers_every_acknowledged_change(tmp_path: Path) -> None:
    srv = start_server("127.0.0.1:0", "--no-examples", "--clock", "manual")
    try:
        stub = srv.stub()
        stub.DefineAudience(pb.DefineAudienceRequest(key="b", rule='did("Buy", 7d)'))
        sub = Subscriber(stub, 0)
        batches = [
            encode_batch([track(f"g{b}_{i}") for i in range(250)], batch_id=b) for b in range(8)
        ]
        acks = ingest(stub, batches)
        assert [a.batch_id for a in acks] == list(range(8))
        last = acks[-1].seq
        assert last == 8 * 250
        sub.wait_for_seq(1)
        assert srv.stop(signal.SIGTERM) == 0
        assert sub.ended.wait(CALL_TIMEOUT)
        assert sub.error is None, sub.error
        assert [c.seq for c in sub.changes] == list(range(1, last + 1))
        out = srv.output()
        assert "segmint: stopped" in out
        logs = [json.loads(line) for line in out if line.startswith("{")]
        assert any("shutting down" in rec["msg"] for rec in logs)
    finally:
        srv.stop(signal.SIGKILL)


def test_shutdown_ends_open_ingest_streams_without_applying_new_batches() -> None:
    srv = start_server("127.0.0.1:0", "--no-examples", "--clock", "manual")
    try:
        pending: queue.Queue[bytes | None] = queue.Queue()

        def batches() -> Iterator[bytes]:
            while (item := pending.get(timeout=CALL_TIMEOUT)) is not None:
                yield item

        call = raw_ingest(srv)(batches(), timeout=CALL_TIMEOUT)
        pending.put(encode_batch([track("s1")], batch_id=1))
        assert next(call).batch_id == 1
        srv.proc.send_signal(signal.SIGINT)
        health = health_pb2_grpc.HealthStub(srv.channel())
        deadline = time.monotonic() + CALL_TIMEOUT
        while time.monotonic() < deadline:  # NOT_SERVING (or refused) once stopping
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            except grpc.RpcError:
                break
            if resp.status != health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.01)
        pending.put(encode_batch([track("s2")], batch_id=2))
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        pending.put(None)
        assert srv.proc.wait(CALL_TIMEOUT) == 0
        assert "segmint: stopped" in srv.output()
    finally:
        srv.stop(signal.SIGKILL)


def _grpcurl() -> str | None:
    beside = Path(sys.executable).parent / "grpcurl"
    return str(beside) if beside.exists() else shutil.which("grpcurl")


@pytest.mark.skipif(_grpcurl() is None, reason="grpcurl is not installed")
def test_grpcurl_through_reflection(server: Server) -> None:
    """An independent client (grpcurl) that knows the API only through reflection."""
    grpcurl = _grpcurl()
    assert grpcurl
    target = server.address
    out = subprocess.run(
        [grpcurl, "-plaintext", target, "list"],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    assert "segmint.v1.Segmint" in out.stdout.split()
    body = json.dumps(
        {
            "userId": "curl1",
            "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            "track": {"event": "Buy", "properties": {"revenue": 5, "category": "x"}},
        }
    )
    out = subprocess.run(
        [grpcurl, "-plaintext", "-d", body, target, "segmint.v1.Segmint/Track"],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accepted"] == 1
    out = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"audience": "buyers", "userIds": ["curl1"]}',
            target,
            "segmint.v1.Segmint/IsMember",
        ],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"member": [True]}


def test_config_reads_the_change_log_capacity(tmp_path: Path) -> None:
    from segmint.config import load_config

    cfg = tmp_path / "segmint.toml"
    cfg.write_text("[engine]\nchange_log_capacity = 2500\n")
    assert load_config(cfg).engine.change_log_capacity == 2500
    assert load_config(None).engine.change_log_capacity == 10_000_000
