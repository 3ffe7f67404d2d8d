//! Input events (Segment's spec: track, identify, alias) and their decoding
//! from JSON, one error per bad event.

use std::sync::Arc;

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

/// Decodes one Segment-spec event object.
pub fn event_from_json(json: &Json, limits: &Limits) -> Result<Event> {
    let obj = json.as_object().ok_or_else(|| {
        invalid(format!(
            "an event must be an object, found {}",
            json_kind(json)
        ))
    })?;
    let user_id = match (
        string_field(obj, "userId")?,
        string_field(obj, "anonymousId")?,
    ) {
        (Some(u), _) if !u.is_empty() => u,
        (_, Some(a)) if !a.is_empty() => a,
        _ => {
            return Err(invalid(
                "the event has no user id: set 'userId' or 'anonymousId'",
            ))
        }
    };
    limits.check_key("user id", user_id)?;
    let timestamp = string_field(obj, "timestamp")?
        .map(|t| {
            parse_timestamp(t).map_err(|e| invalid(format!("'timestamp': {}", strip_prefix(&e))))
        })
        .transpose()?;
    let message_id = string_field(obj, "messageId")?.map(str::to_owned);
    let kind = string_field(obj, "type")?.unwrap_or(if obj.contains_key("event") {
        "track"
    } else {
        "identify"
    });
    let body = match kind {
        "track" => {
            let name = string_field(obj, "event")?
                .ok_or_else(|| invalid("a track event needs an 'event' name"))?;
            if name.is_empty() {
                return Err(invalid("the 'event' name is empty"));
            }
            limits.check_key("event name", name)?;
            let properties = flatten_properties(
                object_field(obj, "properties")?,
                object_field(obj, "context")?,
                limits,
            )?;
            EventBody::Track {
                name: Arc::from(name),
                properties,
            }
        }
        "identify" => {
            let traits = match object_field(obj, "traits")? {
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
        message_id,
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
/// bad item is an error at its index and does not stop the others.
pub fn decode_json_batch(bytes: &[u8], limits: &Limits) -> Result<Vec<Result<Event>>> {
    if bytes.len() > limits.max_batch_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "batch".into(),
            limit: limits.max_batch_bytes,
            actual: bytes.len(),
        });
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let items: Vec<Result<Json>> = match first {
        None => Vec::new(),
        Some(b'[') => parse_array(bytes)?,
        Some(b'{') => match serde_json::from_slice::<Json>(bytes) {
            Ok(Json::Object(mut obj)) if obj.contains_key("batch") => match obj.remove("batch") {
                Some(Json::Array(items)) => items.into_iter().map(Ok).collect(),
                _ => return Err(invalid("'batch' must be a list of events")),
            },
            Ok(single) => vec![Ok(single)],
            // Not a single object: newline-delimited JSON, one event a line.
            Err(_) => bytes
                .split(|&b| b == b'\n')
                .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
                .map(|line| serde_json::from_slice::<Json>(line).map_err(|e| invalid(format!("malformed JSON: {e}"))))
                .collect(),
        },
        Some(_) => return Err(invalid("a batch must be a JSON list of events, {\"batch\": [...]}, or one JSON object per line")),
    };
    Ok(items
        .into_iter()
        .map(|item| {
            let json = item?;
            if let Some(size) = approx_size(&json, limits.max_event_bytes) {
                return Err(SegmintError::LimitExceeded {
                    what: "event".into(),
                    limit: limits.max_event_bytes,
                    actual: size,
                });
            }
            event_from_json(&json, limits)
        })
        .collect())
}

fn parse_array(bytes: &[u8]) -> Result<Vec<Result<Json>>> {
    let items: Vec<Json> =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("malformed JSON batch: {e}")))?;
    Ok(items.into_iter().map(Ok).collect())
}

/// Returns the serialized size when it exceeds `limit`, else `None`.
fn approx_size(json: &Json, limit: usize) -> Option<usize> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, json).ok()?;
    (counter.0 > limit).then_some(counter.0)
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
