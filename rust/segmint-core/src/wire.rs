//! Protobuf ingest batches (`segmint.v1.EventBatch` of
//! proto/segmint/v1/segmint.proto) decoded straight into [`Event`]s.
//!
//! The messages are hand-derived prost structs mirroring the `.proto` field
//! by field (no protoc at build time); the Python tests encode batches with
//! the generated Python code and check them against this decoder.
//!
//! The batch's outer message is walked by hand so that each event decodes on
//! its own: a malformed or oversized event is an error at its index and does
//! not stop the others, like a bad item of a JSON batch.

use std::sync::Arc;

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use serde_json::{Map, Number, Value as Json};

use crate::error::{Result, SegmintError};
use crate::event::{flatten_properties, flatten_traits, Event, EventBody, Properties};
use crate::limits::Limits;
use crate::members::Members;
use crate::time::Millis;
use crate::value::Flat;

/// `segmint.v1.Track`.
#[derive(Clone, PartialEq, Message)]
pub struct Track {
    /// The event name.
    #[prost(string, tag = "1")]
    pub event: String,
    /// Properties, as a Struct or JSON bytes.
    #[prost(oneof = "Payload", tags = "2, 3")]
    pub properties: Option<Payload>,
    /// Context, as a Struct or JSON bytes (`oneof context_value`, tags 4 and 5).
    #[prost(oneof = "ContextPayload", tags = "4, 5")]
    pub context: Option<ContextPayload>,
}

/// `Track.properties_value` (and `Identify.traits_value`, with tags 1 and 2).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Payload {
    /// A `google.protobuf.Struct`.
    #[prost(message, tag = "2")]
    Struct(prost_types::Struct),
    /// A JSON object.
    #[prost(bytes, tag = "3")]
    Json(Vec<u8>),
}

/// `Track.context_value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ContextPayload {
    /// A `google.protobuf.Struct`.
    #[prost(message, tag = "4")]
    Struct(prost_types::Struct),
    /// A JSON object.
    #[prost(bytes, tag = "5")]
    Json(Vec<u8>),
}

/// `Identify.traits_value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TraitsPayload {
    /// A `google.protobuf.Struct`.
    #[prost(message, tag = "1")]
    Struct(prost_types::Struct),
    /// A JSON object.
    #[prost(bytes, tag = "2")]
    Json(Vec<u8>),
}

/// `segmint.v1.Identify`.
#[derive(Clone, PartialEq, Message)]
pub struct Identify {
    /// Traits, as a Struct or JSON bytes.
    #[prost(oneof = "TraitsPayload", tags = "1, 2")]
    pub traits: Option<TraitsPayload>,
}

/// `segmint.v1.Alias`.
#[derive(Clone, PartialEq, Message)]
pub struct Alias {
    /// The id merged into the event's user.
    #[prost(string, tag = "1")]
    pub previous_id: String,
}

/// `segmint.v1.Event.body`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// A track call.
    #[prost(message, tag = "10")]
    Track(Track),
    /// An identify call.
    #[prost(message, tag = "11")]
    Identify(Identify),
    /// An alias call.
    #[prost(message, tag = "12")]
    Alias(Alias),
}

/// `segmint.v1.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct WireEvent {
    /// The user id (wins over `anonymous_id`).
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// The anonymous id.
    #[prost(string, tag = "2")]
    pub anonymous_id: String,
    /// Event time; absent means now.
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<prost_types::Timestamp>,
    /// De-duplication id (empty = none).
    #[prost(string, tag = "4")]
    pub message_id: String,
    /// The payload.
    #[prost(oneof = "Body", tags = "10, 11, 12")]
    pub body: Option<Body>,
}

/// `segmint.v1.EventBatch` (for encoding in tests and clients; decoding goes
/// through [`decode_proto_batch`]).
#[derive(Clone, PartialEq, Message)]
pub struct EventBatch {
    /// Client-chosen id echoed in the ack.
    #[prost(uint64, tag = "1")]
    pub batch_id: u64,
    /// The events.
    #[prost(message, repeated, tag = "2")]
    pub events: Vec<WireEvent>,
}

fn invalid(message: impl Into<String>) -> SegmintError {
    SegmintError::InvalidEvent {
        message: message.into(),
    }
}

fn malformed(e: impl std::fmt::Display) -> SegmintError {
    invalid(format!("malformed protobuf batch: {e}"))
}

/// Decodes a serialized `EventBatch`: its `batch_id` and one result per event.
/// A batch whose outer message is not valid protobuf is an error as a whole.
pub fn decode_proto_batch(bytes: &[u8], limits: &Limits) -> Result<(u64, Vec<Result<Event>>)> {
    let (batch_id, items) = proto_batch_items(bytes, limits)?;
    let events = items
        .into_iter()
        .map(|item| decode_event(item, limits))
        .collect();
    Ok((batch_id, events))
}

/// A serialized `EventBatch`'s `batch_id` and the bytes of each event, in
/// order (see [`decode_proto_batch`]), for decoding one by one or on many
/// threads.
pub fn proto_batch_items<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(u64, Vec<&'a [u8]>)> {
    if bytes.len() > limits.max_batch_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "batch".into(),
            limit: limits.max_batch_bytes,
            actual: bytes.len(),
        });
    }
    let mut buf = bytes;
    let mut batch_id = 0;
    let mut items = Vec::new();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(malformed)?;
        match (tag, wire_type) {
            (1, WireType::Varint) => batch_id = decode_varint(&mut buf).map_err(malformed)?,
            (2, WireType::LengthDelimited) => items.push(take_len(&mut buf)?),
            _ => skip(&mut buf, wire_type)?,
        }
    }
    Ok((batch_id, items))
}

fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = decode_varint(buf).map_err(malformed)?;
    let len = usize::try_from(len).map_err(malformed)?;
    if len > buf.len() {
        return Err(malformed("a field runs past the end of the batch"));
    }
    let (item, rest) = buf.split_at(len);
    *buf = rest;
    Ok(item)
}

fn skip(buf: &mut &[u8], wire_type: WireType) -> Result<()> {
    let n = match wire_type {
        WireType::Varint => {
            decode_varint(buf).map_err(malformed)?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => {
            take_len(buf)?;
            0
        }
        WireType::StartGroup | WireType::EndGroup => {
            return Err(malformed("groups are not supported"))
        }
    };
    if n > buf.len() {
        return Err(malformed("a field runs past the end of the batch"));
    }
    buf.advance(n);
    Ok(())
}

/// Decodes one serialized `segmint.v1.Event`.
pub fn decode_event(bytes: &[u8], limits: &Limits) -> Result<Event> {
    if bytes.len() > limits.max_event_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "event".into(),
            limit: limits.max_event_bytes,
            actual: bytes.len(),
        });
    }
    let wire = WireEvent::decode(bytes).map_err(|e| invalid(format!("malformed event: {e}")))?;
    event_from_wire(wire, limits)
}

/// Converts a decoded wire event, with the same checks as the JSON path.
pub fn event_from_wire(wire: WireEvent, limits: &Limits) -> Result<Event> {
    let user_id = if !wire.user_id.is_empty() {
        wire.user_id
    } else if !wire.anonymous_id.is_empty() {
        wire.anonymous_id
    } else {
        return Err(invalid(
            "the event has no user id: set 'user_id' or 'anonymous_id'",
        ));
    };
    limits.check_key("user id", &user_id)?;
    let timestamp = wire.timestamp.map(timestamp_ms).transpose()?;
    let message_id = (!wire.message_id.is_empty()).then_some(wire.message_id);
    let body = match wire.body {
        None => {
            return Err(invalid(
                "the event has no body: set 'track', 'identify' or 'alias'",
            ))
        }
        Some(Body::Alias(a)) => {
            crate::event::alias_body(Some(&a.previous_id), "'previous_id'", limits)?
        }
        Some(Body::Track(t)) => {
            if t.event.is_empty() {
                return Err(invalid("a track event needs an 'event' name"));
            }
            limits.check_key("event name", &t.event)?;
            let fast = json_or_absent(&t.properties)
                .zip(json_or_absent(&t.context))
                .and_then(|(p, c)| flatten_json_members(p, c, limits));
            let properties = match fast {
                Some(flat) => flat?,
                None => {
                    let properties = t.properties.map(|p| p.into_map("properties")).transpose()?;
                    let context = t.context.map(|c| c.into_map("context")).transpose()?;
                    flatten_properties(properties.as_ref(), context.as_ref(), limits)?
                }
            };
            EventBody::Track {
                name: Arc::from(t.event.as_str()),
                properties,
            }
        }
        Some(Body::Identify(i)) => {
            let traits = match i.traits {
                None => Flat::new(),
                Some(t) => {
                    let fast = t
                        .json()
                        .and_then(json_members)
                        .map(|members| flatten_traits(&members, limits));
                    match fast {
                        Some(flat) => flat?,
                        None => flatten_traits(&t.into_map("traits")?, limits)?,
                    }
                }
            };
            EventBody::Identify { traits }
        }
    };
    Ok(Event {
        user_id,
        timestamp,
        message_id,
        body,
    })
}

fn timestamp_ms(t: prost_types::Timestamp) -> Result<Millis> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(format!(
            "'timestamp': nanos {} out of range 0..1e9",
            t.nanos
        )));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .ok_or_else(|| {
            invalid(format!(
                "'timestamp': {} seconds is out of range",
                t.seconds
            ))
        })
}

/// A payload oneof: a `Struct`, or the JSON text of an object.
trait ObjectPayload {
    /// The JSON text, when it is one.
    fn json(&self) -> Option<&[u8]>;
    /// The object as a map (`what`: the field, named in the errors).
    fn into_map(self, what: &str) -> Result<Map<String, Json>>;
}

macro_rules! object_payload {
    ($($payload:ty),*) => {$(
        impl ObjectPayload for $payload {
            fn json(&self) -> Option<&[u8]> {
                match self {
                    Self::Json(j) => Some(j),
                    Self::Struct(_) => None,
                }
            }

            fn into_map(self, what: &str) -> Result<Map<String, Json>> {
                match self {
                    Self::Struct(s) => struct_to_json(s, what),
                    Self::Json(j) => json_object(&j, what),
                }
            }
        }
    )*};
}

object_payload!(Payload, ContextPayload, TraitsPayload);

/// A payload's JSON text (`Some(None)` when it is absent); `None` for a
/// `Struct`.
fn json_or_absent<P: ObjectPayload>(payload: &Option<P>) -> Option<Option<&[u8]>> {
    match payload {
        None => Some(None),
        Some(p) => p.json().map(Some),
    }
}

/// A JSON payload parsed straight into its members, as the JSON batch path
/// parses `properties` and `traits` (see [`crate::members`]: the same
/// flattened list, and the same errors, as through a `serde_json::Map`,
/// without building one). `None` when it is not a JSON object (`null`,
/// another value, not JSON at all): [`json_object`] decides those, with
/// its messages.
fn json_members(bytes: &[u8]) -> Option<Members<'_>> {
    serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()
}

/// A track event's flattened JSON `properties` and `context` (either may
/// be absent) through [`json_members`]; `None` when either is not a JSON
/// object.
fn flatten_json_members<'a>(
    properties: Option<&'a [u8]>,
    context: Option<&'a [u8]>,
    limits: &Limits,
) -> Option<Result<Properties>> {
    // `Some(None)` when absent, `None` when not an object.
    let members = |bytes: Option<&'a [u8]>| match bytes {
        None => Some(None),
        Some(bytes) => json_members(bytes).map(Some),
    };
    let (properties, context) = (members(properties)?, members(context)?);
    Some(flatten_properties(
        properties.as_ref(),
        context.as_ref(),
        limits,
    ))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Json>> {
    // Checked as UTF-8 in bulk, as event.rs does; from bytes when not, so
    // that the error names the bad byte.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    match parsed {
        Ok(Json::Object(o)) => Ok(o),
        Ok(Json::Null) => Ok(Map::new()),
        Ok(_) => Err(invalid(format!("'{what}_json' must be a JSON object"))),
        Err(e) => Err(invalid(format!("'{what}_json' is not valid JSON: {e}"))),
    }
}

fn struct_to_json(s: prost_types::Struct, what: &str) -> Result<Map<String, Json>> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, value_to_json(v, what)?)))
        .collect()
}

fn value_to_json(v: prost_types::Value, what: &str) -> Result<Json> {
    use prost_types::value::Kind;
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => Json::Number(
            Number::from_f64(n)
                .ok_or_else(|| invalid(format!("'{what}': {n} is not a finite number")))?,
        ),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s, what)?),
        Some(Kind::ListValue(l)) => Json::Array(
            l.values
                .into_iter()
                .map(|v| value_to_json(v, what))
                .collect::<Result<_>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use prost_types::value::Kind;

    fn s(pairs: &[(&str, Kind)]) -> prost_types::Struct {
        prost_types::Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        prost_types::Value {
                            kind: Some(v.clone()),
                        },
                    )
                })
                .collect(),
        }
    }

    fn track(user: &str, name: &str) -> WireEvent {
        WireEvent {
            user_id: user.into(),
            body: Some(Body::Track(Track {
                event: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_struct_and_json_payloads() {
        let mut a = track("u1", "Order Completed");
        a.timestamp = Some(prost_types::Timestamp {
            seconds: 2,
            nanos: 500_000_000,
        });
        if let Some(Body::Track(t)) = &mut a.body {
            t.properties = Some(Payload::Struct(s(&[("revenue", Kind::NumberValue(10.0))])));
            t.context = Some(ContextPayload::Json(
                br#"{"device":{"type":"ios"}}"#.to_vec(),
            ));
        }
        let b = WireEvent {
            anonymous_id: "a1".into(),
            message_id: "m".into(),
            body: Some(Body::Identify(Identify {
                traits: Some(TraitsPayload::Struct(s(&[
                    ("plan", Kind::StringValue("pro".into())),
                    ("old", Kind::NullValue(0)),
                ]))),
            })),
            ..Default::default()
        };
        let batch = EventBatch {
            batch_id: 42,
            events: vec![a, b],
        };
        let (id, events) = decode_proto_batch(&batch.encode_to_vec(), &Limits::default()).unwrap();
        assert_eq!(id, 42);
        let a = events[0].as_ref().unwrap();
        assert_eq!(a.timestamp, Some(2500));
        match &a.body {
            EventBody::Track { name, properties } => {
                assert_eq!(&**name, "Order Completed");
                assert!(properties.contains(&(Arc::from("revenue"), Value::Num(10.0))));
                assert!(properties
                    .contains(&(Arc::from("context.device.type"), Value::Str("ios".into()))));
            }
            other => panic!("{other:?}"),
        }
        let b = events[1].as_ref().unwrap();
        assert_eq!(b.user_id, "a1");
        assert_eq!(b.message_id.as_deref(), Some("m"));
        match &b.body {
            EventBody::Identify { traits } => {
                assert!(traits.contains(&("old".to_owned(), None)));
                assert!(traits.contains(&("plan".to_owned(), Some(Value::Str("pro".into())))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_events_fail_alone() {
        let mut no_user = track("", "X");
        no_user.anonymous_id.clear();
        let alias = WireEvent {
            user_id: "u".into(),
            body: Some(Body::Alias(Alias {
                previous_id: String::new(),
            })),
            ..Default::default()
        };
        let mut bad_json = track("u", "X");
        if let Some(Body::Track(t)) = &mut bad_json.body {
            t.properties = Some(Payload::Json(b"[1]".to_vec()));
        }
        let batch = EventBatch {
            batch_id: 0,
            events: vec![no_user, alias, bad_json, track("u", ""), track("u", "ok")],
        };
        let mut bytes = batch.encode_to_vec();
        // A malformed event (field 2 holding garbage) and an unknown field.
        bytes.extend_from_slice(&[0x12, 0x02, 0xff, 0xff, 0x48, 0x01]);
        let (_, events) = decode_proto_batch(&bytes, &Limits::default()).unwrap();
        let msgs: Vec<String> = events
            .iter()
            .map(|e| e.as_ref().err().map(|e| e.to_string()).unwrap_or_default())
            .collect();
        assert!(msgs[0].contains("no user id"), "{}", msgs[0]);
        assert!(msgs[1].contains("alias"), "{}", msgs[1]);
        assert!(msgs[2].contains("JSON object"), "{}", msgs[2]);
        assert!(msgs[3].contains("'event' name"), "{}", msgs[3]);
        assert!(events[4].is_ok());
        assert!(msgs[5].contains("malformed event"), "{}", msgs[5]);
        assert_eq!(events.len(), 6);
    }

    /// The JSON payloads' fast path (straight into members) flattens as the
    /// path through a `serde_json::Map` does, errors included, and leaves
    /// what is not an object to that path.
    #[test]
    fn json_payloads_flatten_as_through_a_map() {
        let texts: &[&[u8]] = &[
            br#"{}"#,
            br#"{"revenue":12.5,"category":"shoes","n":null}"#,
            br#"{"b":1,"a":{"y":true,"x":[1,2]},"a":{"z":"last"}}"#,
            br#"{"tags":["a","b"],"items":[{"sku":"x"}],"deep":{"er":{"est":0}}}"#,
            br#"{"k\u00e9y":"v\n","e":{},"big":1e300}"#,
            br#"{"device":{"type":"ios","model":null},"ip":"127.0.0.1"}"#,
            br#"null"#,
            br#"[1]"#,
            br#"{"unclosed":"#,
            b"{\"bad\":\"\xff\"}",
        ];
        let limits = Limits::default();
        let tight = Limits {
            max_properties: 2,
            ..Limits::default()
        };
        let as_text = |r: Result<Properties>| r.map_err(|e| e.to_string());
        // The objects among them take the fast path.
        for &p in &texts[..6] {
            assert!(json_members(p).is_some(), "{}", String::from_utf8_lossy(p));
        }
        for limits in [&limits, &tight] {
            for &p in texts {
                for c in [None, Some(texts[5]), Some(texts[2])] {
                    let Some(fast) = flatten_json_members(Some(p), c, limits) else {
                        assert!(json_members(p).is_none());
                        continue;
                    };
                    let slow = (|| {
                        let p = json_object(p, "properties")?;
                        let c = c.map(|c| json_object(c, "context")).transpose()?;
                        flatten_properties(Some(&p), c.as_ref(), limits)
                    })();
                    assert_eq!(
                        as_text(fast),
                        as_text(slow),
                        "{}",
                        String::from_utf8_lossy(p)
                    );
                }
                if let Some(members) = json_members(p) {
                    let fast = flatten_traits(&members, limits).map_err(|e| e.to_string());
                    let slow = json_object(p, "traits")
                        .and_then(|m| flatten_traits(&m, limits))
                        .map_err(|e| e.to_string());
                    assert_eq!(fast, slow, "{}", String::from_utf8_lossy(p));
                }
            }
        }
        // Not objects: left to the map path and its messages.
        for text in [&b"null"[..], b"[1]", b"{\"unclosed\":", b"\xff"] {
            assert!(json_members(text).is_none());
        }
    }

    /// Through `event_from_wire`: JSON payloads (the members parse), either
    /// alone, give the event the same payloads as `Struct`s (the map path)
    /// give; a bad context after good properties is the context's error.
    #[test]
    fn json_payloads_decode_as_struct_payloads_do() {
        let limits = Limits::default();
        let with = |p: Option<Payload>, c: Option<ContextPayload>| {
            let mut e = track("u", "Order Completed");
            if let Some(Body::Track(t)) = &mut e.body {
                t.properties = p;
                t.context = c;
            }
            event_from_wire(e, &limits).map_err(|e| e.to_string())
        };
        let props = || {
            Payload::Struct(s(&[
                ("revenue", Kind::NumberValue(12.5)),
                ("category", Kind::StringValue("shoes".into())),
            ]))
        };
        let props_json = || Payload::Json(br#"{"category":"shoes","revenue":12.5}"#.to_vec());
        let context = || ContextPayload::Struct(s(&[("ip", Kind::StringValue("::1".into()))]));
        let context_json = || ContextPayload::Json(br#"{"ip":"::1"}"#.to_vec());
        let both = with(Some(props()), Some(context())).unwrap();
        assert_eq!(
            with(Some(props_json()), Some(context_json())).unwrap(),
            both
        );
        assert_eq!(with(Some(props_json()), Some(context())).unwrap(), both);
        assert_eq!(with(Some(props()), Some(context_json())).unwrap(), both);
        assert_eq!(with(Some(props_json()), None), with(Some(props()), None));
        assert_eq!(
            with(None, Some(context_json())),
            with(None, Some(context()))
        );
        let bad_context = with(
            Some(props_json()),
            Some(ContextPayload::Json(b"[1]".to_vec())),
        );
        assert!(bad_context.unwrap_err().contains("'context_json'"));
        let traits = |t: TraitsPayload| {
            let e = WireEvent {
                user_id: "u".into(),
                body: Some(Body::Identify(Identify { traits: Some(t) })),
                ..Default::default()
            };
            event_from_wire(e, &limits).map_err(|e| e.to_string())
        };
        assert_eq!(
            traits(TraitsPayload::Json(
                br#"{"plan":"pro","old":null}"#.to_vec()
            )),
            traits(TraitsPayload::Struct(s(&[
                ("plan", Kind::StringValue("pro".into())),
                ("old", Kind::NullValue(0)),
            ])))
        );
    }

    #[test]
    fn truncated_batch_is_an_error() {
        let batch = EventBatch {
            batch_id: 1,
            events: vec![track("u", "X")],
        };
        let bytes = batch.encode_to_vec();
        assert!(decode_proto_batch(&bytes[..bytes.len() - 1], &Limits::default()).is_err());
        let limits = Limits {
            max_event_bytes: 4,
            ..Limits::default()
        };
        let (_, events) = decode_proto_batch(&bytes, &limits).unwrap();
        assert!(matches!(events[0], Err(SegmintError::LimitExceeded { .. })));
    }
}
