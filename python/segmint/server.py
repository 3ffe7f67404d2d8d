"""The gRPC sidecar (``segmint serve``): the ``segmint.v1.Segmint`` service
over one engine, with health checking, reflection, bearer-token auth,
Prometheus metrics and graceful shutdown. See docs/operations.md."""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from segmint._time import duration_ms
from segmint.config import Config, parse_listen
from segmint.engine import Engine
from segmint.errors import (
    CorruptDataError,
    InvalidArgumentError,
    LimitExceededError,
    RuleError,
    SegmintError,
    StorageError,
    UnknownAudienceError,
    UnknownComputedTraitError,
    UnknownUserError,
)
from segmint.inspect import ExplainNode
from segmint.proto import segmint_pb2 as pb

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Segmint"].full_name
"""Full name of the gRPC service (``segmint.v1.Segmint``)."""

HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"

log = logging.getLogger("segmint.server")

_Report = tuple[int, int, list[tuple[int, str, str]], int, int]
_ChangeRow = tuple[int, str, str, bool, int, str, tuple[str, str | None, str | None] | None]
_T = TypeVar("_T")
_Req = TypeVar("_Req")


class _ProtoIngest(Protocol):
    def ingest_proto(self, data: bytes) -> _Report: ...


# ------------------------------------------------------------------ errors


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for an exception of the engine."""
    message = str(exc)
    if isinstance(exc, RuleError):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    if isinstance(exc, UnknownAudienceError | UnknownComputedTraitError | UnknownUserError):
        return grpc.StatusCode.NOT_FOUND, message
    if isinstance(exc, LimitExceededError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, message
    if isinstance(exc, InvalidArgumentError):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    if isinstance(exc, CorruptDataError):
        return grpc.StatusCode.DATA_LOSS, message
    if isinstance(exc, StorageError):
        # The data directory failed (disk full, I/O error): not acknowledged.
        return grpc.StatusCode.UNAVAILABLE, message
    if isinstance(exc, SegmintError):
        code = getattr(exc, "code", "")
        if code in ("audience_cycle", "in_use"):
            return grpc.StatusCode.FAILED_PRECONDITION, message
        return grpc.StatusCode.INVALID_ARGUMENT, message
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


_EVENT_CODE_STATUS = {"limit_exceeded": grpc.StatusCode.RESOURCE_EXHAUSTED}


# ----------------------------------------------------------------- metrics


class Metrics:
    """The Prometheus metrics of one server (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "segmint_events",
            "Events received, by result (accepted, duplicate, rejected).",
            ["result"],
            registry=self.registry,
        )
        self.event_errors = Counter(
            "segmint_event_errors",
            "Rejected events, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            "segmint_rpc_errors",
            "Failed calls, by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.batches = Counter("segmint_batches", "Ingest batches applied.", registry=self.registry)
        self.batch_seconds = Histogram(
            "segmint_batch_seconds",
            "Time to decode and apply one ingest batch.",
            buckets=(
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
            ),
            registry=self.registry,
        )
        self.subscribers = Gauge(
            "segmint_subscribers", "Open SubscribeChanges streams.", registry=self.registry
        )

    def record_report(self, report: _Report, seconds: float) -> None:
        """Counts one applied batch."""
        accepted, duplicates, errors, _, _ = report
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        self.events.labels("accepted").inc(accepted - duplicates)
        if duplicates:
            self.events.labels("duplicate").inc(duplicates)
        if errors:
            self.events.labels("rejected").inc(len(errors))
            for _, code, _ in errors:
                self.event_errors.labels(code).inc()


class _EngineCollector(Collector):
    """Scrape-time gauges: audiences, members per audience, users, seq, lag."""

    def __init__(self, service: SegmintService) -> None:
        self._service = service

    def collect(self) -> Iterable[GaugeMetricFamily]:
        engine = self._service.engine
        keys = engine.audiences()
        yield GaugeMetricFamily("segmint_audiences", "Defined audiences.", value=len(keys))
        members = GaugeMetricFamily(
            "segmint_audience_members", "Members per audience.", labels=["audience"]
        )
        for key in keys:
            try:
                members.add_metric([key], engine.size(key))
            except SegmintError:  # removed while scraping
                continue
        yield members
        yield GaugeMetricFamily("segmint_users", "Profiles.", value=engine.user_count)
        last = engine.last_seq
        yield GaugeMetricFamily("segmint_last_seq", "Last change seq.", value=last)
        positions = self._service.subscriber_positions()
        lag = max((last - p for p in positions), default=0)
        yield GaugeMetricFamily(
            "segmint_subscriber_lag",
            "Changes the slowest subscriber has yet to receive.",
            value=max(lag, 0),
        )


# ------------------------------------------------------------- change feed


class ChangeFeed:
    """Wakes subscribers when the change log grows: notified after every
    ingest or definition, and by a poller for the wall-clock ticker's changes."""

    def __init__(self, engine: Engine, poll_seconds: float = 0.05) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._seq = engine.last_seq
        self._closed = False
        self._poll = poll_seconds
        self._thread = threading.Thread(target=self._poller, name="segmint-feed", daemon=True)
        self._thread.start()

    def notify(self, seq: int | None = None) -> None:
        """Records that the log reached ``seq`` (default: read it) and wakes waiters."""
        seq = self._engine.visible_seq if seq is None else seq
        with self._cond:
            if seq > self._seq or self._closed:
                self._seq = max(seq, self._seq)
                self._cond.notify_all()

    def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Waits until the log passes ``seq`` or the feed closes; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._seq > seq or self._closed, timeout)

    def close(self) -> None:
        """Wakes every waiter for good (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _poller(self) -> None:
        while not self._closed:
            time.sleep(self._poll)
            try:
                self.notify()
            except Exception:  # pragma: no cover - never let the poller die
                log.exception("change feed poller")


# ----------------------------------------------------------------- service


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(ms, 1000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1_000_000)


def _batch_id(data: bytes) -> int:
    """The batch id of a serialized EventBatch without decoding its events."""
    if data[:1] == b"\x08":  # field 1, varint, first as every standard encoder writes it
        result = 0
        for shift, byte in zip(range(0, 70, 7), data[1:11], strict=False):
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
    if not data:
        return 0
    return int(pb.EventBatchHeader.FromString(data).batch_id)


def _json_value(text: str | None) -> struct_pb2.Value | None:
    """A JSON value (from the engine) as a protobuf Value; None stays unset."""
    if text is None:
        return None
    holder = struct_pb2.Struct()
    holder.update({"v": json.loads(text)})
    return holder.fields["v"]


def _change(row: _ChangeRow) -> pb.Change:
    """One row of the engine's change log as a protobuf Change."""
    seq, audience, user, entered, at, reason, computed = row
    if computed is None:
        return pb.Change(
            seq=seq,
            audience=audience,
            user_id=user,
            kind=pb.Change.ENTERED if entered else pb.Change.EXITED,
            at=_timestamp(at),
            reason=reason,
        )
    key, old, new = computed
    return pb.Change(
        seq=seq,
        user_id=user,
        kind=pb.Change.COMPUTED,
        at=_timestamp(at),
        reason=reason,
        computed_trait=key,
        old_value=_json_value(old),
        new_value=_json_value(new),
    )


def _ack(batch_id: int, report: _Report) -> pb.IngestAck:
    accepted, duplicates, errors, last_seq, changes = report
    return pb.IngestAck(
        batch_id=batch_id,
        seq=last_seq,
        accepted=accepted,
        duplicates=duplicates,
        changes=changes,
        errors=[pb.EventError(index=i, code=c, message=m) for i, c, m in errors],
    )


class SegmintService:
    """The handlers of ``segmint.v1.Segmint`` over one engine."""

    def __init__(self, engine: Engine, config: Config, metrics: Metrics) -> None:
        self.engine = engine
        self._core = engine._core
        self._ingest_proto = cast(_ProtoIngest, engine._core).ingest_proto
        self.config = config
        self.metrics = metrics
        self.feed = ChangeFeed(engine)
        self.stopping = threading.Event()
        self._subs: dict[int, int] = {}
        self._subs_lock = threading.Lock()
        self._sub_ids = itertools.count(1)

    # ------------------------------------------------------------ plumbing

    def subscriber_positions(self) -> list[int]:
        """The seq each open subscription has delivered up to."""
        with self._subs_lock:
            return list(self._subs.values())

    def _fail(self, context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
        code, message = status_for(exc)
        self.metrics.rpc_errors.labels(method, code.name).inc()
        if code is grpc.StatusCode.INTERNAL:
            log.exception("internal error in %s", method)
        else:
            log.debug("%s: %s: %s", method, code.name, message)
        context.abort(code, message)

    def _abort(
        self, context: grpc.ServicerContext, method: str, code: grpc.StatusCode, message: str
    ) -> None:
        self.metrics.rpc_errors.labels(method, code.name).inc()
        context.abort(code, message)

    def _unary(
        self, method: str, fn: Callable[[_Req, grpc.ServicerContext], _T]
    ) -> Callable[[_Req, grpc.ServicerContext], _T]:
        def handler(request: _Req, context: grpc.ServicerContext) -> _T:
            try:
                return fn(request, context)
            except Exception as exc:
                if _is_abort(exc, context):
                    raise
                self._fail(context, method, exc)
                raise

        return handler

    def _streaming(
        self, method: str, fn: Callable[[_Req, grpc.ServicerContext], Iterator[_T]]
    ) -> Callable[[_Req, grpc.ServicerContext], Iterator[_T]]:
        def handler(request: _Req, context: grpc.ServicerContext) -> Iterator[_T]:
            try:
                yield from fn(request, context)
            except Exception as exc:
                if _is_abort(exc, context):
                    raise
                self._fail(context, method, exc)
                raise

        return handler

    # -------------------------------------------------------------- ingest

    def ingest(
        self, batches: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[pb.IngestAck]:
        """Bidi stream: applies each serialized EventBatch (decoded in Rust)
        and acknowledges it, in order."""
        for data in batches:
            if self.stopping.is_set():
                self._abort(
                    context,
                    "Ingest",
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down; this batch was not applied",
                )
            t0 = time.perf_counter()
            report = self._ingest_proto(data)
            self.metrics.record_report(report, time.perf_counter() - t0)
            if report[4]:
                self.feed.notify(report[3])
            yield _ack(_batch_id(data), report)

    def _one(self, request: pb.Event, context: grpc.ServicerContext, kind: str) -> pb.IngestAck:
        method = kind.capitalize()
        body = request.WhichOneof("body")
        if body != kind:
            self._abort(
                context,
                method,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method} needs an event with a '{kind}' body, got {body or 'none'}",
            )
        data = pb.EventBatch(events=[request]).SerializeToString()
        t0 = time.perf_counter()
        report = self._ingest_proto(data)
        self.metrics.record_report(report, time.perf_counter() - t0)
        if report[4]:
            self.feed.notify(report[3])
        errors = report[2]
        if errors:
            _, code, message = errors[0]
            status = _EVENT_CODE_STATUS.get(code, grpc.StatusCode.INVALID_ARGUMENT)
            self._abort(context, method, status, message)
        return _ack(0, report)

    def track(self, request: pb.Event, context: grpc.ServicerContext) -> pb.IngestAck:
        """Unary track call."""
        return self._one(request, context, "track")

    def identify(self, request: pb.Event, context: grpc.ServicerContext) -> pb.IngestAck:
        """Unary identify call."""
        return self._one(request, context, "identify")

    def alias(self, request: pb.Event, context: grpc.ServicerContext) -> pb.IngestAck:
        """Unary alias call: merges ``previous_id`` into the event's user."""
        return self._one(request, context, "alias")

    # --------------------------------------------------------- definitions

    def define_audience(
        self, request: pb.DefineAudienceRequest, context: grpc.ServicerContext
    ) -> pb.DefineAudienceResponse:
        """Defines or replaces an audience; returns its size after backfill."""
        size = self.engine.define_audience(request.key, request.rule)
        seq = self.engine.last_seq
        self.feed.notify(seq)
        log.info("defined audience %s (size %d)", request.key, size)
        return pb.DefineAudienceResponse(key=request.key, size=size, seq=seq)

    def define_audiences(
        self, request: pb.DefineAudiencesRequest, context: grpc.ServicerContext
    ) -> pb.DefineAudiencesResponse:
        """Defines or replaces many audiences at once, all or nothing; returns
        each one's size after the one backfill pass."""
        items = [(a.key, a.rule) for a in request.audiences]
        sizes = self.engine.define_audiences(items)
        seq = self.engine.last_seq
        self.feed.notify(seq)
        log.info("defined %d audiences", len(items))
        return pb.DefineAudiencesResponse(
            audiences=[
                pb.DefineAudienceResponse(key=key, size=size, seq=seq)
                for (key, _), size in zip(items, sizes, strict=True)
            ]
        )

    def remove_audience(
        self, request: pb.RemoveAudienceRequest, context: grpc.ServicerContext
    ) -> pb.RemoveAudienceResponse:
        """Removes an audience (its members exit with reason ``delete``)."""
        self.engine.remove_audience(request.key)
        seq = self.engine.last_seq
        self.feed.notify(seq)
        log.info("removed audience %s", request.key)
        return pb.RemoveAudienceResponse(seq=seq)

    def define_computed_trait(
        self, request: pb.DefineComputedTraitRequest, context: grpc.ServicerContext
    ) -> pb.DefineComputedTraitResponse:
        """Defines or replaces a computed trait; backfills it over every profile."""
        with_value = self.engine.define_computed_trait(request.key, request.expression)
        seq = self.engine.last_seq
        self.feed.notify(seq)
        ty = next((c.type for c in self.engine.computed_traits() if c.key == request.key), "")
        log.info("defined computed trait %s (%d with a value)", request.key, with_value)
        return pb.DefineComputedTraitResponse(
            key=request.key, with_value=with_value, seq=seq, type=ty
        )

    def remove_computed_trait(
        self, request: pb.RemoveComputedTraitRequest, context: grpc.ServicerContext
    ) -> pb.RemoveComputedTraitResponse:
        """Removes a computed trait (FAILED_PRECONDITION while a rule reads it)."""
        self.engine.remove_computed_trait(request.key)
        seq = self.engine.last_seq
        self.feed.notify(seq)
        log.info("removed computed trait %s", request.key)
        return pb.RemoveComputedTraitResponse(seq=seq)

    def list_computed_traits(
        self, request: pb.ListComputedTraitsRequest, context: grpc.ServicerContext
    ) -> pb.ListComputedTraitsResponse:
        """Every computed trait with its expression and type, in definition order."""
        return pb.ListComputedTraitsResponse(
            computed_traits=[
                pb.ComputedTrait(key=c.key, expression=c.expression, type=c.type)
                for c in self.engine.computed_traits()
            ]
        )

    def _audience(self, key: str) -> pb.Audience:
        return pb.Audience(key=key, rule=self.engine.rule(key), size=self.engine.size(key))

    def list_audiences(
        self, request: pb.ListAudiencesRequest, context: grpc.ServicerContext
    ) -> pb.ListAudiencesResponse:
        """Every audience with its rule and size, in definition order."""
        out = []
        for key in self.engine.audiences():
            try:
                out.append(self._audience(key))
            except UnknownAudienceError:  # removed meanwhile
                continue
        return pb.ListAudiencesResponse(audiences=out)

    def get_audience(
        self, request: pb.GetAudienceRequest, context: grpc.ServicerContext
    ) -> pb.Audience:
        """One audience's rule and size."""
        return self._audience(request.key)

    # ------------------------------------------------------------- queries

    def is_member(
        self, request: pb.IsMemberRequest, context: grpc.ServicerContext
    ) -> pb.IsMemberResponse:
        """Membership of many users in one audience."""
        if len(request.user_ids) == 1:
            return pb.IsMemberResponse(
                member=[self._core.is_member(request.user_ids[0], request.audience)]
            )
        return pb.IsMemberResponse(
            member=self._core.is_member_many(list(request.user_ids), request.audience)
        )

    def audiences_of(
        self, request: pb.AudiencesOfRequest, context: grpc.ServicerContext
    ) -> pb.AudiencesOfResponse:
        """The audiences a user is in, sorted."""
        return pb.AudiencesOfResponse(audiences=self.engine.audiences_of(request.user_id))

    def size(self, request: pb.SizeRequest, context: grpc.ServicerContext) -> pb.SizeResponse:
        """Number of members of an audience."""
        return pb.SizeResponse(size=self.engine.size(request.audience))

    def members(
        self, request: pb.MembersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.MembersPage]:
        """Members in pages of sorted external ids."""
        page = min(request.page_size or 10_000, 100_000)
        ids = self.engine.members(request.audience)
        if not ids:
            yield pb.MembersPage(user_ids=[], last=True)
            return
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            yield pb.MembersPage(user_ids=chunk, last=start + page >= len(ids))

    def members_bitmap(
        self, request: pb.MembersBitmapRequest, context: grpc.ServicerContext
    ) -> pb.MembersBitmapResponse:
        """Members as a portable roaring bitmap plus the id table."""
        bitmap, ids = self._core.bitmap_with_ids(request.audience)
        return pb.MembersBitmapResponse(bitmap=bitmap, user_ids=ids)

    def profile(
        self, request: pb.ProfileRequest, context: grpc.ServicerContext
    ) -> pb.ProfileResponse:
        """A user's traits, computed traits and audiences."""
        p = self.engine.profile(request.user_id)
        traits = struct_pb2.Struct()
        traits.update(p.traits)
        computed = struct_pb2.Struct()
        computed.update(p.computed)
        return pb.ProfileResponse(traits=traits, audiences=sorted(p.audiences), computed=computed)

    def preview(
        self, request: pb.PreviewRequest, context: grpc.ServicerContext
    ) -> pb.PreviewResponse:
        """Who a rule would select (and, replacing an audience, who would
        enter and exit) against live state, without saving anything."""
        p = self.engine.preview(
            request.rule, replacing=request.replacing or None, limit=request.sample or 100
        )
        return pb.PreviewResponse(
            size=p.size,
            sample=p.sample,
            entering=p.entering,
            exiting=p.exiting,
            profiles=p.profiles,
        )

    def explain(
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        """The rule as a tree of values for the user now, and when time alone
        changes the result."""
        x = self.engine.explain(request.user_id, request.audience)

        def node(n: ExplainNode) -> pb.ExplainNode:
            out = pb.ExplainNode(
                expr=n.expr,
                value=n.value,
                needs=n.needs or "",
                children=[node(c) for c in n.children],
            )
            if n.holds is not None:
                out.holds = n.holds
            return out

        resp = pb.ExplainResponse(
            explanation=x.tree.render(), member=x.member, rule=x.rule, tree=node(x.tree)
        )
        if x.next_change is not None:
            resp.next_change.FromDatetime(x.next_change)
        if x.entered_at is not None:
            resp.entered_at.FromDatetime(x.entered_at)
        return resp

    def overlap(
        self, request: pb.OverlapRequest, context: grpc.ServicerContext
    ) -> pb.OverlapResponse:
        """Exact sizes of audiences and their intersections."""
        o = self.engine.overlap(*request.audiences)
        return pb.OverlapResponse(
            size=o.all, sizes=o.sizes, pairwise=[n for row in o.pairwise for n in row]
        )

    # ------------------------------------------------------------- changes

    def subscribe_changes(
        self, request: pb.SubscribeChangesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ChangeBatch]:
        """Changes after ``from_seq`` in pages, then new ones as they happen.
        One page is in memory at a time: gRPC flow control holds a slow
        subscriber's handler before it reads the next page."""
        wanted = frozenset(request.audiences)
        for key in wanted:
            self.engine.size(key)  # NOT_FOUND for an unknown audience
        seq = request.from_seq
        page = self.config.server.subscriber_page
        sub = next(self._sub_ids)
        with self._subs_lock:
            self._subs[sub] = seq
        self.metrics.subscribers.inc()
        try:
            while True:
                rows = self._core.changes(seq, page)
                if rows:
                    seq = rows[-1][0]
                    changes = [
                        _change(row) for row in rows if not wanted or (row[1] and row[1] in wanted)
                    ]
                    with self._subs_lock:
                        self._subs[sub] = seq
                    if changes or len(rows) == page:
                        yield pb.ChangeBatch(changes=changes, seq=seq)
                    continue
                if self.stopping.is_set() or not context.is_active():
                    return
                self.feed.wait_beyond(seq, timeout=0.5)
        finally:
            with self._subs_lock:
                self._subs.pop(sub, None)
            self.metrics.subscribers.dec()

    # ------------------------------------------------------------ handlers

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The method handlers; Ingest takes raw bytes so that batches are
        decoded in Rust, never as Python objects."""
        u = grpc.unary_unary_rpc_method_handler
        s = grpc.unary_stream_rpc_method_handler

        def unary(name: str, fn: Callable[[Any, Any], Any], req: Any, resp: Any) -> Any:
            return u(
                self._unary(name, fn),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        def stream(name: str, fn: Callable[[Any, Any], Any], req: Any, resp: Any) -> Any:
            return s(
                self._streaming(name, fn),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        handlers = {
            "Ingest": grpc.stream_stream_rpc_method_handler(
                self._streaming("Ingest", self.ingest),
                request_deserializer=None,  # raw bytes, decoded in Rust
                response_serializer=pb.IngestAck.SerializeToString,
            ),
            "Track": unary("Track", self.track, pb.Event, pb.IngestAck),
            "Identify": unary("Identify", self.identify, pb.Event, pb.IngestAck),
            "Alias": unary("Alias", self.alias, pb.Event, pb.IngestAck),
            "DefineAudience": unary(
                "DefineAudience",
                self.define_audience,
                pb.DefineAudienceRequest,
                pb.DefineAudienceResponse,
            ),
            "DefineAudiences": unary(
                "DefineAudiences",
                self.define_audiences,
                pb.DefineAudiencesRequest,
                pb.DefineAudiencesResponse,
            ),
            "RemoveAudience": unary(
                "RemoveAudience",
                self.remove_audience,
                pb.RemoveAudienceRequest,
                pb.RemoveAudienceResponse,
            ),
            "ListAudiences": unary(
                "ListAudiences",
                self.list_audiences,
                pb.ListAudiencesRequest,
                pb.ListAudiencesResponse,
            ),
            "GetAudience": unary(
                "GetAudience", self.get_audience, pb.GetAudienceRequest, pb.Audience
            ),
            "IsMember": unary("IsMember", self.is_member, pb.IsMemberRequest, pb.IsMemberResponse),
            "AudiencesOf": unary(
                "AudiencesOf", self.audiences_of, pb.AudiencesOfRequest, pb.AudiencesOfResponse
            ),
            "Size": unary("Size", self.size, pb.SizeRequest, pb.SizeResponse),
            "Members": stream("Members", self.members, pb.MembersRequest, pb.MembersPage),
            "MembersBitmap": unary(
                "MembersBitmap",
                self.members_bitmap,
                pb.MembersBitmapRequest,
                pb.MembersBitmapResponse,
            ),
            "Profile": unary("Profile", self.profile, pb.ProfileRequest, pb.ProfileResponse),
            "SubscribeChanges": stream(
                "SubscribeChanges",
                self.subscribe_changes,
                pb.SubscribeChangesRequest,
                pb.ChangeBatch,
            ),
            "DefineComputedTrait": unary(
                "DefineComputedTrait",
                self.define_computed_trait,
                pb.DefineComputedTraitRequest,
                pb.DefineComputedTraitResponse,
            ),
            "RemoveComputedTrait": unary(
                "RemoveComputedTrait",
                self.remove_computed_trait,
                pb.RemoveComputedTraitRequest,
                pb.RemoveComputedTraitResponse,
            ),
            "ListComputedTraits": unary(
                "ListComputedTraits",
                self.list_computed_traits,
                pb.ListComputedTraitsRequest,
                pb.ListComputedTraitsResponse,
            ),
            "Preview": unary("Preview", self.preview, pb.PreviewRequest, pb.PreviewResponse),
            "Explain": unary("Explain", self.explain, pb.ExplainRequest, pb.ExplainResponse),
            "Overlap": unary("Overlap", self.overlap, pb.OverlapRequest, pb.OverlapResponse),
        }
        missing = set(pb.DESCRIPTOR.services_by_name["Segmint"].methods_by_name) - set(handlers)
        assert not missing, f"unhandled methods: {missing}"
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    """Whether ``exc`` is the exception ``context.abort`` raised."""
    code = getattr(context, "code", None)
    return callable(code) and code() is not None and not isinstance(exc, SegmintError)


# -------------------------------------------------------------------- auth


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` metadata with
    UNAUTHENTICATED; the health service stays open for probes."""

    def __init__(self, token: str, metrics: Metrics) -> None:
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Passes authorized calls on; answers the others UNAUTHENTICATED."""
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if method.startswith(HEALTH_SERVICE_PREFIX) or handler is None:
            return handler
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
                if hmac.compare_digest(given, self._expected):
                    return handler
        short = method.rsplit("/", 1)[-1]
        metrics = self._metrics

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            metrics.rpc_errors.labels(short, "UNAUTHENTICATED").inc()
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token (metadata 'authorization: Bearer <token>')",
            )

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


# ------------------------------------------------------------------ server


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        """Formats ``record`` as a JSON line."""
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class Sidecar:
    """A configured server: engine, service, health, reflection, metrics."""

    def __init__(self, config: Config, *, token: str | None = None) -> None:
        self.config = config
        s = config.server
        address, local = parse_listen(s.listen)
        self.token = token
        if not local and not token:
            raise PermissionError(
                f"refusing to listen on {s.listen}: it is not loopback or a unix socket, "
                "so a bearer token is required (server.token, server.token_file or "
                "SEGMINT_TOKEN)"
            )
        e = config.engine
        st = config.storage
        self.engine = Engine(
            clock=e.clock,
            now=e.now,
            granularity=e.granularity,
            future_skew=e.future_skew,
            shards=e.shards or None,
            threads=e.threads or None,
            tick=e.tick,
            dedup_window=e.dedup_window,
            data_dir=st.data_dir,
            fsync=st.fsync,
            fsync_interval=st.fsync_interval,
            snapshot_log_bytes=st.snapshot_log_mb << 20,
            change_log_capacity=e.change_log_capacity,
        )
        if self.engine.durable:
            r = self.engine.recovery
            log.info(
                "recovered %s: snapshot %d, %d log records (%d events) replayed, "
                "%d torn bytes cut, now at seq %d",
                st.data_dir,
                r.snapshot_generation,
                r.records_replayed,
                r.events_replayed,
                r.torn_bytes,
                self.engine.last_seq,
            )
        # Definitions recovered from the data directory keep their state (members,
        # entry times, values): only missing or changed start-up ones are defined.
        defined = {c.key: c.expression for c in self.engine.computed_traits()}
        for ct in config.computed_traits:
            if defined.get(ct.key) != ct.expression:
                self.engine.define_computed_trait(ct.key, ct.expression)
        existing = {key: self.engine.rule(key) for key in self.engine.audiences()}
        audiences = [(k, r) for k, r in config.startup_audiences() if existing.get(k) != r]
        if audiences:
            self.engine.define_audiences(audiences)
        self._snapshots_stop = threading.Event()
        self._snapshotter: threading.Thread | None = None
        self.metrics = Metrics()
        self.service = SegmintService(self.engine, config, self.metrics)
        self.metrics.registry.register(_EngineCollector(self.service))
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        interceptors: list[grpc.ServerInterceptor] = (
            [BearerTokenInterceptor(token, self.metrics)] if token else []
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="segmint-rpc"),
            handlers=[self.service.generic_handler()],
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=s.workers - 1,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        port = self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {s.listen}")
        if address.startswith("unix:"):
            self.address = address
        else:
            self.address = f"{address.rpartition(':')[0]}:{port}"
        self._metrics_httpd: Any = None

    def start(self, metrics_port: int | None = None) -> None:
        """Starts serving (and the metrics endpoint when a port is given)."""
        port = self.config.server.metrics_port if metrics_port is None else metrics_port
        if port:
            from prometheus_client import start_http_server

            self._metrics_httpd, _ = start_http_server(
                port, addr=self.config.server.metrics_host, registry=self.metrics.registry
            )
        self.server.start()
        period = duration_ms(self.config.storage.snapshot_interval, "storage.snapshot_interval")
        if self.engine.durable and period > 0:
            self._snapshotter = threading.Thread(
                target=self._snapshot_loop, args=(period / 1000,), name="segmint-snapshot"
            )
            self._snapshotter.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health goes NOT_SERVING, new calls are refused,
        subscribers get every change up to now and end, in-flight batches finish
        (for up to ``grace`` seconds)."""
        grace = self.config.server.grace_seconds if grace is None else grace
        self.service.stopping.set()
        self.health.enter_graceful_shutdown()
        self.service.feed.close()
        self.server.stop(grace).wait()
        self._snapshots_stop.set()
        if self._snapshotter is not None:
            self._snapshotter.join()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
        # With a data directory: the final snapshot, so the next start loads it
        # instead of replaying the log.
        self.engine.close()

    def _snapshot_loop(self, period: float) -> None:
        """Periodic snapshots, taken only when the log has grown since the last."""
        while not self._snapshots_stop.wait(period):
            try:
                if self.engine.log_bytes > 0:
                    info = self.engine.snapshot()
                    log.info(
                        "snapshot %d written (%d bytes, %.2fs)",
                        info.generation,
                        info.bytes,
                        info.seconds,
                    )
            except SegmintError:
                log.exception("periodic snapshot failed; the log keeps every change")


def serve(config: Config, *, token: str | None = None, metrics_port: int | None = None) -> int:
    """Runs the sidecar until SIGTERM or SIGINT; returns the exit status."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("segmint")
    root.handlers[:] = [handler]
    root.setLevel(config.server.log_level.upper())
    root.propagate = False
    try:
        sidecar = Sidecar(config, token=token)
    except (PermissionError, OSError, SegmintError) as e:
        log.error("%s", e)
        print(f"segmint serve: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sidecar.start(metrics_port)
    log.info(
        "serving %s on %s (%d audiences, auth %s)",
        SERVICE_NAME,
        sidecar.address,
        len(sidecar.engine.audiences()),
        "on" if token else "off",
    )
    print(f"segmint: serving on {sidecar.address}", flush=True)
    while not done.wait(1.0):
        pass
    log.info("signal %d: shutting down (grace %.1fs)", received[0], config.server.grace_seconds)
    sidecar.stop()
    log.info("stopped at seq %d", sidecar.engine.last_seq)
    print("segmint: stopped", flush=True)
    return 0


__all__ = [
    "SERVICE_NAME",
    "BearerTokenInterceptor",
    "ChangeFeed",
    "Metrics",
    "SegmintService",
    "Sidecar",
    "serve",
    "status_for",
]
