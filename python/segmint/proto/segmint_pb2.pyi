import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Track(_message.Message):
    __slots__ = ("event", "properties", "properties_json", "context", "context_json")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    event: str
    properties: _struct_pb2.Struct
    properties_json: bytes
    context: _struct_pb2.Struct
    context_json: bytes
    def __init__(self, event: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., properties_json: _Optional[bytes] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context_json: _Optional[bytes] = ...) -> None: ...

class Identify(_message.Message):
    __slots__ = ("traits", "traits_json")
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    TRAITS_JSON_FIELD_NUMBER: _ClassVar[int]
    traits: _struct_pb2.Struct
    traits_json: bytes
    def __init__(self, traits: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., traits_json: _Optional[bytes] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("previous_id",)
    PREVIOUS_ID_FIELD_NUMBER: _ClassVar[int]
    previous_id: str
    def __init__(self, previous_id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "anonymous_id", "timestamp", "message_id", "track", "identify", "alias")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    anonymous_id: str
    timestamp: _timestamp_pb2.Timestamp
    message_id: str
    track: Track
    identify: Identify
    alias: Alias
    def __init__(self, user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message_id: _Optional[str] = ..., track: _Optional[_Union[Track, _Mapping]] = ..., identify: _Optional[_Union[Identify, _Mapping]] = ..., alias: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("batch_id", "events")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, batch_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class EventBatchHeader(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    def __init__(self, batch_id: _Optional[int] = ...) -> None: ...

class EventError(_message.Message):
    __slots__ = ("index", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: str
    message: str
    def __init__(self, index: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("batch_id", "seq", "accepted", "duplicates", "changes", "errors")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    seq: int
    accepted: int
    duplicates: int
    changes: int
    errors: _containers.RepeatedCompositeFieldContainer[EventError]
    def __init__(self, batch_id: _Optional[int] = ..., seq: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., changes: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[EventError, _Mapping]]] = ...) -> None: ...

class DefineAudienceRequest(_message.Message):
    __slots__ = ("key", "rule")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    key: str
    rule: str
    def __init__(self, key: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class DefineAudienceResponse(_message.Message):
    __slots__ = ("key", "size", "seq")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    seq: int
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class DefineAudiencesRequest(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[DefineAudienceRequest]
    def __init__(self, audiences: _Optional[_Iterable[_Union[DefineAudienceRequest, _Mapping]]] = ...) -> None: ...

class DefineAudiencesResponse(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[DefineAudienceResponse]
    def __init__(self, audiences: _Optional[_Iterable[_Union[DefineAudienceResponse, _Mapping]]] = ...) -> None: ...

class RemoveAudienceRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class RemoveAudienceResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ListAudiencesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Audience(_message.Message):
    __slots__ = ("key", "rule", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    rule: str
    size: int
    def __init__(self, key: _Optional[str] = ..., rule: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ListAudiencesResponse(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[Audience]
    def __init__(self, audiences: _Optional[_Iterable[_Union[Audience, _Mapping]]] = ...) -> None: ...

class GetAudienceRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DefineComputedTraitRequest(_message.Message):
    __slots__ = ("key", "expression")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    expression: str
    def __init__(self, key: _Optional[str] = ..., expression: _Optional[str] = ...) -> None: ...

class DefineComputedTraitResponse(_message.Message):
    __slots__ = ("key", "with_value", "seq", "type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WITH_VALUE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    with_value: int
    seq: int
    type: str
    def __init__(self, key: _Optional[str] = ..., with_value: _Optional[int] = ..., seq: _Optional[int] = ..., type: _Optional[str] = ...) -> None: ...

class RemoveComputedTraitRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class RemoveComputedTraitResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ListComputedTraitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ComputedTrait(_message.Message):
    __slots__ = ("key", "expression", "type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    expression: str
    type: str
    def __init__(self, key: _Optional[str] = ..., expression: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class ListComputedTraitsResponse(_message.Message):
    __slots__ = ("computed_traits",)
    COMPUTED_TRAITS_FIELD_NUMBER: _ClassVar[int]
    computed_traits: _containers.RepeatedCompositeFieldContainer[ComputedTrait]
    def __init__(self, computed_traits: _Optional[_Iterable[_Union[ComputedTrait, _Mapping]]] = ...) -> None: ...

class PreviewRequest(_message.Message):
    __slots__ = ("rule", "sample", "replacing")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REPLACING_FIELD_NUMBER: _ClassVar[int]
    rule: str
    sample: int
    replacing: str
    def __init__(self, rule: _Optional[str] = ..., sample: _Optional[int] = ..., replacing: _Optional[str] = ...) -> None: ...

class PreviewResponse(_message.Message):
    __slots__ = ("size", "sample", "entering", "exiting", "profiles")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    ENTERING_FIELD_NUMBER: _ClassVar[int]
    EXITING_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    size: int
    sample: _containers.RepeatedScalarFieldContainer[str]
    entering: _containers.RepeatedScalarFieldContainer[str]
    exiting: _containers.RepeatedScalarFieldContainer[str]
    profiles: int
    def __init__(self, size: _Optional[int] = ..., sample: _Optional[_Iterable[str]] = ..., entering: _Optional[_Iterable[str]] = ..., exiting: _Optional[_Iterable[str]] = ..., profiles: _Optional[int] = ...) -> None: ...

class IsMemberRequest(_message.Message):
    __slots__ = ("audience", "user_ids")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    audience: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audience: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class IsMemberResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, member: _Optional[_Iterable[bool]] = ...) -> None: ...

class AudiencesOfRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class AudiencesOfResponse(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audiences: _Optional[_Iterable[str]] = ...) -> None: ...

class SizeRequest(_message.Message):
    __slots__ = ("audience",)
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    audience: str
    def __init__(self, audience: _Optional[str] = ...) -> None: ...

class SizeResponse(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ("audience", "page_size")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    audience: str
    page_size: int
    def __init__(self, audience: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class MembersPage(_message.Message):
    __slots__ = ("user_ids", "last")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    last: bool
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., last: _Optional[bool] = ...) -> None: ...

class MembersBitmapRequest(_message.Message):
    __slots__ = ("audience",)
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    audience: str
    def __init__(self, audience: _Optional[str] = ...) -> None: ...

class MembersBitmapResponse(_message.Message):
    __slots__ = ("bitmap", "user_ids")
    BITMAP_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    bitmap: bytes
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bitmap: _Optional[bytes] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ProfileResponse(_message.Message):
    __slots__ = ("traits", "audiences", "computed")
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    traits: _struct_pb2.Struct
    audiences: _containers.RepeatedScalarFieldContainer[str]
    computed: _struct_pb2.Struct
    def __init__(self, traits: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., audiences: _Optional[_Iterable[str]] = ..., computed: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("user_id", "audience")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    audience: str
    def __init__(self, user_id: _Optional[str] = ..., audience: _Optional[str] = ...) -> None: ...

class ExplainNode(_message.Message):
    __slots__ = ("expr", "value", "holds", "needs", "children")
    EXPR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    NEEDS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    expr: str
    value: str
    holds: bool
    needs: str
    children: _containers.RepeatedCompositeFieldContainer[ExplainNode]
    def __init__(self, expr: _Optional[str] = ..., value: _Optional[str] = ..., holds: _Optional[bool] = ..., needs: _Optional[str] = ..., children: _Optional[_Iterable[_Union[ExplainNode, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("explanation", "member", "rule", "tree", "next_change", "entered_at")
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    ENTERED_AT_FIELD_NUMBER: _ClassVar[int]
    explanation: str
    member: bool
    rule: str
    tree: ExplainNode
    next_change: _timestamp_pb2.Timestamp
    entered_at: _timestamp_pb2.Timestamp
    def __init__(self, explanation: _Optional[str] = ..., member: _Optional[bool] = ..., rule: _Optional[str] = ..., tree: _Optional[_Union[ExplainNode, _Mapping]] = ..., next_change: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., entered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OverlapRequest(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audiences: _Optional[_Iterable[str]] = ...) -> None: ...

class OverlapResponse(_message.Message):
    __slots__ = ("size", "sizes", "pairwise")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    PAIRWISE_FIELD_NUMBER: _ClassVar[int]
    size: int
    sizes: _containers.RepeatedScalarFieldContainer[int]
    pairwise: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, size: _Optional[int] = ..., sizes: _Optional[_Iterable[int]] = ..., pairwise: _Optional[_Iterable[int]] = ...) -> None: ...

class SubscribeChangesRequest(_message.Message):
    __slots__ = ("from_seq", "audiences")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    audiences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_seq: _Optional[int] = ..., audiences: _Optional[_Iterable[str]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("seq", "audience", "user_id", "kind", "at", "reason", "computed_trait", "old_value", "new_value")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Change.Kind]
        ENTERED: _ClassVar[Change.Kind]
        EXITED: _ClassVar[Change.Kind]
        COMPUTED: _ClassVar[Change.Kind]
    KIND_UNSPECIFIED: Change.Kind
    ENTERED: Change.Kind
    EXITED: Change.Kind
    COMPUTED: Change.Kind
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_TRAIT_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    audience: str
    user_id: str
    kind: Change.Kind
    at: _timestamp_pb2.Timestamp
    reason: str
    computed_trait: str
    old_value: _struct_pb2.Value
    new_value: _struct_pb2.Value
    def __init__(self, seq: _Optional[int] = ..., audience: _Optional[str] = ..., user_id: _Optional[str] = ..., kind: _Optional[_Union[Change.Kind, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., computed_trait: _Optional[str] = ..., old_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ChangeBatch(_message.Message):
    __slots__ = ("changes", "seq")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    seq: int
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...
