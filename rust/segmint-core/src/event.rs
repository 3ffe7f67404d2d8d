//! Input events (Segment's spec: track, identify, alias) and their decoding
//! from JSON, one error per bad event.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value as Json;

use crate::error::{Result, SegmintError};
use crate::limits::Limits;
use crate::time::{parse_timestamp, Millis};
use crate::value::{flatten_object, json_kind, Flat, Value};

/// What an event does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum EventBody {
    /// A track call: an event name and flattened properties; context keys
    /// are stored under `context.` in the same list.
    Track {
        /// The event name.
        name: Arc<str>,
        /// Flattened properties and `context.*` values (no deletions).
        properties: Vec<(Arc<str>, Value)>,
    },
    /// An identify call: flattened traits, `None` deleting the key.
    Identify {
        /// The traits to set or delete.
        traits: Flat,
    },
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The external user id (`userId`, else `anonymousId`).
    pub user_id: String,
    /// Event time; `None` means "now".
    pub timestamp: Option<Millis>,
    /// De-duplication id, if given.
    pub message_id: Option<String>,
    /// The payload.
    pub body: EventBody,
}

impl Event {
    /// A track event built from already flattened parts.
    pub fn track(
        user_id: impl Into<String>,
        name: &str,
        properties: Vec<(Arc<str>, Value)>,
        timestamp: Option<Millis>,
    ) -> Event {
        Event {
            user_id: user_id.into(),
            timestamp,
            message_id: None,
            body: EventBody::Track {
                name: Arc::from(name),
                properties,
            },
        }
    }
}

fn invalid(message: impl Into<String>) -> SegmintError {
    SegmintError::InvalidEvent {
        message: message.into(),
    }
}

fn string_field<'a>(obj: &'a serde_json::Map<String, Json>, key: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!(
            "'{key}' must be a string, found {}",
            json_kind(other)
        ))),
    }
}

fn object_field<'a>(
    obj: &'a serde_json::Map<String, Json>,
    key: &str,
) -> Result<Option<&'a serde_json::Map<String, Json>>> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(o)) => Ok(Some(o)),
        Some(other) => Err(invalid(format!(
            "'{key}' must be an object, found {}",
            json_kind(other)
        ))),
    }
}

/// Flattens properties (and context under `context.`) for a track event,
/// dropping nulls.
pub fn flatten_properties(
    properties: Option<&serde_json::Map<String, Json>>,
    context: Option<&serde_json::Map<String, Json>>,
    limits: &Limits,
) -> Result<Vec<(Arc<str>, Value)>> {
    let mut flat = Flat::new();
    if let Some(p) = properties {
        flatten_object("", p, false, &mut flat)?;
    }
    if let Some(c) = context {
        flatten_object("context", c, false, &mut flat)?;
    }
    if flat.len() > limits.max_properties {
        return Err(SegmintError::LimitExceeded {
            what: "number of properties".into(),
            limit: limits.max_properties,
            actual: flat.len(),
        });
    }
    Ok(flat
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (Arc::from(k), v)))
        .collect())
}

/// Flattens identify traits, checking the limits.
pub fn flatten_traits(traits: &serde_json::Map<String, Json>, limits: &Limits) -> Result<Flat> {
    let mut flat = Flat::new();
    flatten_object("", traits, true, &mut flat)?;
    if flat.len() > limits.max_properties {
        return Err(SegmintError::LimitExceeded {
            what: "number of traits".into(),
            limit: limits.max_properties,
            actual: flat.len(),
        });
    }
    for (k, _) in &flat {
        limits.check_key("trait key", k)?;
    }
    Ok(flat)
}

/// The fields of an event object that decoding reads, borrowed from either
/// a typed parse (the fast path) or a generic JSON object (the fallback).
struct EventFields<'a> {
    user_id: Option<&'a str>,
    anonymous_id: Option<&'a str>,
    timestamp: Option<&'a str>,
    message_id: Option<&'a str>,
    kind: &'a str,
    event: Option<&'a str>,
    properties: Option<&'a serde_json::Map<String, Json>>,
    context: Option<&'a serde_json::Map<String, Json>>,
    traits: Option<&'a serde_json::Map<String, Json>>,
}

/// An event parsed straight into its fields. Any surprise (a field of the
/// wrong type, a duplicate key, no `type`) fails this parse, and the event
/// is decoded again through [`event_from_json`], which names the problem.
#[derive(serde::Deserialize)]
struct TypedEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "userId", default, borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(rename = "anonymousId", default, borrow)]
    anonymous_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", default, borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    context: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    traits: Option<serde_json::Map<String, Json>>,
}

/// Decodes one event from its JSON text (the fast path, with the generic
/// one as fallback; both give the same event).
pub fn event_from_slice(text: &[u8], limits: &Limits) -> Result<Event> {
    if text.len() > limits.max_event_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "event".into(),
            limit: limits.max_event_bytes,
            actual: text.len(),
        });
    }
    if let Ok(typed) = serde_json::from_slice::<TypedEvent<'_>>(text) {
        return event_from_fields(
            EventFields {
                user_id: typed.user_id.as_deref(),
                anonymous_id: typed.anonymous_id.as_deref(),
                timestamp: typed.timestamp.as_deref(),
                message_id: typed.message_id.as_deref(),
                kind: &typed.kind,
                event: typed.event.as_deref(),
                properties: typed.properties.as_ref(),
                context: typed.context.as_ref(),
                traits: typed.traits.as_ref(),
            },
            limits,
        );
    }
    let json: Json =
        serde_json::from_slice(text).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
    event_from_json(&json, limits)
}

/// Decodes one Segment-spec event object.
pub fn event_from_json(json: &Json, limits: &Limits) -> Result<Event> {
    let obj = json.as_object().ok_or_else(|| {
        invalid(format!(
            "an event must be an object, found {}",
            json_kind(json)
        ))
    })?;
    let kind = string_field(obj, "type")?.unwrap_or(if obj.contains_key("event") {
        "track"
    } else {
        "identify"
    });
    let fields = EventFields {
        user_id: string_field(obj, "userId")?,
        anonymous_id: string_field(obj, "anonymousId")?,
        timestamp: string_field(obj, "timestamp")?,
        message_id: string_field(obj, "messageId")?,
        kind,
        event: if kind == "track" {
            string_field(obj, "event")?
        } else {
            None
        },
        properties: if kind == "track" {
            object_field(obj, "properties")?
        } else {
            None
        },
        context: if kind == "track" {
            object_field(obj, "context")?
        } else {
            None
        },
        traits: if kind == "identify" {
            object_field(obj, "traits")?
        } else {
            None
        },
    };
    event_from_fields(fields, limits)
}

fn event_from_fields(f: EventFields<'_>, limits: &Limits) -> Result<Event> {
    let user_id = match (f.user_id, f.anonymous_id) {
        (Some(u), _) if !u.is_empty() => u,
        (_, Some(a)) if !a.is_empty() => a,
        _ => {
            return Err(invalid(
                "the event has no user id: set 'userId' or 'anonymousId'",
            ))
        }
    };
    limits.check_key("user id", user_id)?;
    let timestamp = f
        .timestamp
        .map(|t| {
            parse_timestamp(t).map_err(|e| invalid(format!("'timestamp': {}", strip_prefix(&e))))
        })
        .transpose()?;
    let body = match f.kind {
        "track" => {
            let name = f
                .event
                .ok_or_else(|| invalid("a track event needs an 'event' name"))?;
            if name.is_empty() {
                return Err(invalid("the 'event' name is empty"));
            }
            limits.check_key("event name", name)?;
            let properties = flatten_properties(f.properties, f.context, limits)?;
            EventBody::Track {
                name: Arc::from(name),
                properties,
            }
        }
        "identify" => {
            let traits = match f.traits {
                Some(t) => flatten_traits(t, limits)?,
                None => Flat::new(),
            };
            EventBody::Identify { traits }
        }
        other => {
            return Err(invalid(format!(
                "unsupported event type {other:?}; expected \"track\" or \"identify\""
            )))
        }
    };
    Ok(Event {
        user_id: user_id.to_owned(),
        timestamp,
        message_id: f.message_id.map(str::to_owned),
        body,
    })
}

fn strip_prefix(e: &SegmintError) -> String {
    match e {
        SegmintError::InvalidArgument { message } => message.clone(),
        other => other.to_string(),
    }
}

/// Decodes a batch: a JSON array of events, Segment's `{"batch": [...]}`, or
/// newline-delimited JSON. A batch that is not JSON at all is an error; a
/// bad item is an error at its index and does not stop the others. An
/// event's size is the length of its JSON text as received.
pub fn decode_json_batch(bytes: &[u8], limits: &Limits) -> Result<Vec<Result<Event>>> {
    if bytes.len() > limits.max_batch_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "batch".into(),
            limit: limits.max_batch_bytes,
            actual: bytes.len(),
        });
    }
    let decode = |raw: &RawValue| event_from_slice(raw.get().as_bytes(), limits);
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    Ok(match first {
        None => Vec::new(),
        Some(b'[') => parse_array(bytes)?.into_iter().map(decode).collect(),
        Some(b'{') => match serde_json::from_slice::<BTreeMap<Cow<'_, str>, &RawValue>>(bytes) {
            Ok(obj) => match obj.get("batch") {
                Some(batch) => parse_array(batch.get().as_bytes())
                    .map_err(|_| invalid("'batch' must be a list of events"))?
                    .into_iter()
                    .map(decode)
                    .collect(),
                None => vec![event_from_slice(bytes.trim_ascii(), limits)],
            },
            // Not a single object: newline-delimited JSON, one event a line;
            // each line is decoded and dropped before the next, so memory
            // stays hot.
            Err(_) => bytes
                .split(|&b| b == b'\n')
                .map(<[u8]>::trim_ascii)
                .filter(|line| !line.is_empty())
                .map(|line| event_from_slice(line, limits))
                .collect(),
        },
        Some(_) => return Err(invalid("a batch must be a JSON list of events, {\"batch\": [...]}, or one JSON object per line")),
    })
}

fn parse_array(bytes: &[u8]) -> Result<Vec<&RawValue>> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("malformed JSON batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Vec<Result<Event>> {
        decode_json_batch(text.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn decodes_track_and_identify() {
        let events = decode(
            r#"[{"type":"track","userId":"u1","event":"Order Completed","properties":{"revenue":10,"products":[{"sku":"a"}]},
                "context":{"device":{"type":"ios"}},"timestamp":"1970-01-01T00:00:02Z"},
               {"type":"identify","anonymousId":"a1","traits":{"plan":"pro","address":{"city":"Paris"}}}]"#,
        );
        let track = events[0].as_ref().unwrap();
        assert_eq!(track.timestamp, Some(2000));
        match &track.body {
            EventBody::Track { name, properties } => {
                assert_eq!(&**name, "Order Completed");
                assert!(properties
                    .contains(&(Arc::from("context.device.type"), Value::Str("ios".into()))));
                assert_eq!(properties.len(), 2, "list of objects is left out");
            }
            other => panic!("{other:?}"),
        }
        let identify = events[1].as_ref().unwrap();
        assert_eq!(identify.user_id, "a1");
    }

    #[test]
    fn bad_items_fail_alone() {
        let events = decode(
            r#"{"batch": [{"type":"track","event":"X"}, {"type":"track","userId":"u","event":"X","timestamp":"soon"},
                {"type":"track","userId":"u","event":5}, {"type":"page","userId":"u"}, {"userId":"u","event":"X"}]}"#,
        );
        let msgs: Vec<String> = events
            .iter()
            .map(|e| e.as_ref().err().map(|e| e.to_string()).unwrap_or_default())
            .collect();
        assert!(msgs[0].contains("no user id"), "{}", msgs[0]);
        assert!(msgs[1].contains("'timestamp'"), "{}", msgs[1]);
        assert!(msgs[2].contains("'event' must be a string"), "{}", msgs[2]);
        assert!(msgs[3].contains("unsupported event type"), "{}", msgs[3]);
        assert!(events[4].is_ok());
    }

    #[test]
    fn ndjson_and_malformed() {
        let events = decode("{\"userId\":\"u\",\"event\":\"X\"}\n{oops\n");
        assert!(events[0].is_ok());
        assert!(events[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("malformed JSON"));
        assert!(decode_json_batch(b"[1,", &Limits::default()).is_err());
    }
}
