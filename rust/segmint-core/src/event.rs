//! Input events (Segment's spec: track, identify, alias) and their decoding
//! from JSON, one error per bad event.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value as Json;

use crate::error::{Result, SegmintError};
use crate::limits::Limits;
use crate::members::Members;
use crate::time::{parse_timestamp, Millis};
use crate::value::{json_kind, Flat, Flattens, Value};

/// What an event does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum EventBody {
    /// A track call: an event name and flattened properties; context keys
    /// are stored under `context.` in the same list.
    Track {
        /// The event name.
        name: Arc<str>,
        /// Flattened properties and `context.*` values (no deletions).
        properties: Properties,
    },
    /// An identify call: flattened traits, `None` deleting the key.
    Identify {
        /// The traits to set or delete.
        traits: Flat,
    },
    /// An alias call: `previous_id` names the event's user from now on,
    /// and its profile, if it has one, is merged into the user's (see
    /// docs/semantics.md, "Aliases").
    Alias {
        /// The other id (an anonymous id, an earlier user id).
        previous_id: String,
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
        properties: Properties,
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

/// A track event's flattened properties and `context.*` values.
pub type Properties = Vec<(Arc<str>, Value)>;

/// Flattens properties (and context under `context.`) for a track event,
/// dropping nulls.
pub fn flatten_properties<O: Flattens>(
    properties: Option<&O>,
    context: Option<&O>,
    limits: &Limits,
) -> Result<Properties> {
    // Keys are made `Arc<str>` straight from the flattening's buffer; nulls
    // count against the limit like any property, and are left out.
    let mut flat = Vec::new();
    let mut count = 0;
    let mut leaf = |key: &str, value: Option<Value>| {
        count += 1;
        if let Some(value) = value {
            flat.push((Arc::from(key), value));
        }
    };
    if let Some(p) = properties {
        p.flatten_into("", false, &mut leaf)?;
    }
    if let Some(c) = context {
        c.flatten_into("context", false, &mut leaf)?;
    }
    if count > limits.max_properties {
        return Err(SegmintError::LimitExceeded {
            what: "number of properties".into(),
            limit: limits.max_properties,
            actual: count,
        });
    }
    Ok(flat)
}

/// Flattens identify traits, checking the limits.
pub fn flatten_traits<O: Flattens>(traits: &O, limits: &Limits) -> Result<Flat> {
    let mut flat = Flat::new();
    traits.flatten_into("", true, &mut |key, value| {
        flat.push((key.to_owned(), value))
    })?;
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

/// The user id of an event: `user_id` unless it is empty, else
/// `anonymous_id`; `names` says which fields to set in the error.
fn choose_user_id<'a>(
    user_id: Option<&'a str>,
    anonymous_id: Option<&'a str>,
    names: &str,
    limits: &Limits,
) -> Result<&'a str> {
    let id = match (user_id, anonymous_id) {
        (Some(u), _) if !u.is_empty() => u,
        (_, Some(a)) if !a.is_empty() => a,
        _ => return Err(invalid(format!("the event has no user id: set {names}"))),
    };
    limits.check_key("user id", id)?;
    Ok(id)
}

fn event_timestamp(text: &str) -> Result<Millis> {
    parse_timestamp(text).map_err(|e| invalid(format!("'timestamp': {}", strip_prefix(&e))))
}

fn track_body<O: Flattens>(
    name: Option<&str>,
    properties: Option<&O>,
    context: Option<&O>,
    limits: &Limits,
) -> Result<EventBody> {
    let name = name.ok_or_else(|| invalid("a track event needs an 'event' name"))?;
    if name.is_empty() {
        return Err(invalid("the 'event' name is empty"));
    }
    limits.check_key("event name", name)?;
    let properties = flatten_properties(properties, context, limits)?;
    Ok(EventBody::Track {
        name: Arc::from(name),
        properties,
    })
}

fn identify_body<O: Flattens>(traits: Option<&O>, limits: &Limits) -> Result<EventBody> {
    let traits = match traits {
        Some(t) => flatten_traits(t, limits)?,
        None => Flat::new(),
    };
    Ok(EventBody::Identify { traits })
}

/// An alias call's body; `what` names the field to set in the error.
pub(crate) fn alias_body(
    previous_id: Option<&str>,
    what: &str,
    limits: &Limits,
) -> Result<EventBody> {
    let previous_id = previous_id
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid(format!("an alias call needs a non-empty {what}")))?;
    limits.check_key("previous id", previous_id)?;
    Ok(EventBody::Alias {
        previous_id: previous_id.to_owned(),
    })
}

fn unsupported_type(kind: &str) -> SegmintError {
    invalid(format!(
        "unsupported event type {kind:?}; expected \"track\", \"identify\" or \"alias\""
    ))
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
    #[serde(default, borrow)]
    properties: Option<Members<'a>>,
    #[serde(default, borrow)]
    context: Option<Members<'a>>,
    #[serde(default, borrow)]
    traits: Option<Members<'a>>,
    #[serde(rename = "previousId", default, borrow)]
    previous_id: Option<Cow<'a, str>>,
}

/// Decodes one event from its JSON text (the fast path, with the generic
/// one as fallback). Both give the same event from the same fields; the
/// fast path does not check fields it does not read (`integrations`, say),
/// which the generic one parses as JSON values.
pub fn event_from_slice(text: &[u8], limits: &Limits) -> Result<Event> {
    if text.len() > limits.max_event_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "event".into(),
            limit: limits.max_event_bytes,
            actual: text.len(),
        });
    }
    // Checked as UTF-8 once, in bulk (ASCII goes a word at a time): parsed
    // from bytes, serde_json checks each string on its own, an eighth of
    // the decoding. Text that is not UTF-8 throughout is parsed from bytes,
    // which checks only the strings it reads (a bad byte in a field that
    // is not read, such as `integrations`, is let through, as the parse
    // from bytes always did).
    let typed = match std::str::from_utf8(text) {
        Ok(text) => serde_json::from_str::<TypedEvent<'_>>(text),
        Err(_) => serde_json::from_slice::<TypedEvent<'_>>(text),
    };
    if let Ok(typed) = typed {
        return event_from_typed(&typed, limits);
    }
    let json: Json =
        serde_json::from_slice(text).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
    event_from_json(&json, limits)
}

/// The fast path's event, with the rules (and messages) of
/// [`event_from_json`].
fn event_from_typed(t: &TypedEvent<'_>, limits: &Limits) -> Result<Event> {
    let user_id = choose_user_id(
        t.user_id.as_deref(),
        t.anonymous_id.as_deref(),
        "'userId' or 'anonymousId'",
        limits,
    )?;
    let timestamp = t.timestamp.as_deref().map(event_timestamp).transpose()?;
    let body = match &*t.kind {
        "track" => track_body(
            t.event.as_deref(),
            t.properties.as_ref(),
            t.context.as_ref(),
            limits,
        )?,
        "identify" => identify_body(t.traits.as_ref(), limits)?,
        "alias" => alias_body(t.previous_id.as_deref(), "'previousId'", limits)?,
        other => return Err(unsupported_type(other)),
    };
    Ok(Event {
        user_id: user_id.to_owned(),
        timestamp,
        message_id: t.message_id.as_deref().map(str::to_owned),
        body,
    })
}

/// Decodes one Segment-spec event object.
pub fn event_from_json(json: &Json, limits: &Limits) -> Result<Event> {
    let obj = json.as_object().ok_or_else(|| {
        invalid(format!(
            "an event must be an object, found {}",
            json_kind(json)
        ))
    })?;
    let user_id = choose_user_id(
        string_field(obj, "userId")?,
        string_field(obj, "anonymousId")?,
        "'userId' or 'anonymousId'",
        limits,
    )?;
    let timestamp = string_field(obj, "timestamp")?
        .map(event_timestamp)
        .transpose()?;
    let message_id = string_field(obj, "messageId")?.map(str::to_owned);
    let kind = string_field(obj, "type")?.unwrap_or(if obj.contains_key("event") {
        "track"
    } else {
        "identify"
    });
    let body = match kind {
        "track" => track_body(
            string_field(obj, "event")?,
            object_field(obj, "properties")?,
            object_field(obj, "context")?,
            limits,
        )?,
        "identify" => identify_body(object_field(obj, "traits")?, limits)?,
        "alias" => alias_body(string_field(obj, "previousId")?, "'previousId'", limits)?,
        other => return Err(unsupported_type(other)),
    };
    Ok(Event {
        user_id: user_id.to_owned(),
        timestamp,
        message_id,
        body,
    })
}

/// An event's timestamp as a columnar source (an Arrow column) holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimestampField<'a> {
    /// Milliseconds since the Unix epoch.
    Millis(Millis),
    /// ISO-8601 text with an offset, as in Segment's JSON.
    Text(&'a str),
}

/// A `properties`, `context` or `traits` payload as a columnar source holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObjectField<'a> {
    /// JSON object text. Blank text or `null` means none; malformed text or
    /// a value that is not an object is an error for the event.
    Text(&'a str),
    /// An object already built (from a struct or map column).
    Object(&'a serde_json::Map<String, Json>),
}

/// The fields of one event as a columnar source (a row of an Arrow table)
/// gives them, each `None` when absent or null. [`event_from_fields`] turns
/// them into an [`Event`] with the rules of [`event_from_json`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventFields<'a> {
    /// `"track"`, `"identify"` or `"alias"`; `None`: a track call if
    /// `event` is set, otherwise an identify call.
    pub kind: Option<&'a str>,
    /// The user id (wins over `anonymous_id` unless empty).
    pub user_id: Option<&'a str>,
    /// The anonymous id.
    pub anonymous_id: Option<&'a str>,
    /// The event name (track).
    pub event: Option<&'a str>,
    /// Event time; `None` means the engine's now.
    pub timestamp: Option<TimestampField<'a>>,
    /// De-duplication id.
    pub message_id: Option<&'a str>,
    /// Track properties.
    pub properties: Option<ObjectField<'a>>,
    /// Track context (rules read it as `context.…`).
    pub context: Option<ObjectField<'a>>,
    /// Identify traits (a `null` value deletes the trait).
    pub traits: Option<ObjectField<'a>>,
    /// Alias: the id merged into the user's.
    pub previous_id: Option<&'a str>,
}

/// The JSON text of a payload parsed to an object (`None` for blank text or
/// `null`), or the object given.
fn object_of<'a>(
    field: Option<ObjectField<'a>>,
    what: &str,
    parsed: &'a mut Option<serde_json::Map<String, Json>>,
) -> Result<Option<&'a serde_json::Map<String, Json>>> {
    match field {
        None => Ok(None),
        Some(ObjectField::Object(o)) => Ok(Some(o)),
        Some(ObjectField::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(ObjectField::Text(text)) => match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(o)) => Ok(Some(parsed.insert(o))),
            Ok(Json::Null) => Ok(None),
            Ok(other) => Err(invalid(format!(
                "'{what}' must be an object, found {}",
                json_kind(&other)
            ))),
            Err(e) => Err(invalid(format!("'{what}' is not valid JSON: {e}"))),
        },
    }
}

/// About the serialized size of a JSON value (string escapes not counted).
fn json_size(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) => 5,
        Json::Number(_) => 24,
        Json::String(s) => s.len() + 2,
        Json::Array(items) => 2 + items.iter().map(|x| json_size(x) + 1).sum::<usize>(),
        Json::Object(o) => object_size(o),
    }
}

fn object_size(o: &serde_json::Map<String, Json>) -> usize {
    2 + o
        .iter()
        .map(|(k, v)| k.len() + 4 + json_size(v))
        .sum::<usize>()
}

/// Decodes one event from its fields (see [`EventFields`]) with the rules and
/// errors of a JSON event: the user id, the timestamp, the type, the event
/// name, the limits (an event larger than `max_event_bytes` as JSON is
/// refused), and the flattening of properties, context and traits. Only the
/// payloads of the event's type are read.
pub fn event_from_fields(fields: &EventFields<'_>, limits: &Limits) -> Result<Event> {
    let user_id = choose_user_id(
        fields.user_id,
        fields.anonymous_id,
        "'user_id' or 'anonymous_id'",
        limits,
    )?;
    let size = [
        fields.user_id,
        fields.anonymous_id,
        fields.event,
        fields.message_id,
        fields.previous_id,
    ]
    .iter()
    .map(|s| s.map_or(0, |s| s.len() + 16))
    .sum::<usize>()
        + [fields.properties, fields.context, fields.traits]
            .iter()
            .map(|p| match p {
                None => 0,
                Some(ObjectField::Text(t)) => t.len() + 16,
                Some(ObjectField::Object(o)) => object_size(o) + 16,
            })
            .sum::<usize>();
    if size > limits.max_event_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "event".into(),
            limit: limits.max_event_bytes,
            actual: size,
        });
    }
    let timestamp = match fields.timestamp {
        None => None,
        Some(TimestampField::Millis(ms)) => Some(ms),
        Some(TimestampField::Text(text)) => Some(event_timestamp(text)?),
    };
    let kind = fields.kind.unwrap_or(if fields.event.is_some() {
        "track"
    } else {
        "identify"
    });
    let body = match kind {
        "track" => {
            let (mut p, mut c) = (None, None);
            let properties = object_of(fields.properties, "properties", &mut p)?;
            let context = object_of(fields.context, "context", &mut c)?;
            track_body(fields.event, properties, context, limits)?
        }
        "identify" => {
            let mut t = None;
            identify_body(object_of(fields.traits, "traits", &mut t)?, limits)?
        }
        "alias" => alias_body(fields.previous_id, "'previous_id'", limits)?,
        other => return Err(unsupported_type(other)),
    };
    Ok(Event {
        user_id: user_id.to_owned(),
        timestamp,
        message_id: fields.message_id.map(str::to_owned),
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
    Ok(json_batch_items(bytes, limits)?
        .into_iter()
        .map(|text| event_from_slice(text, limits))
        .collect())
}

/// The text of each event of a JSON batch (see [`decode_json_batch`]), in
/// order, for decoding one by one or on many threads.
pub fn json_batch_items<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Vec<&'a [u8]>> {
    if bytes.len() > limits.max_batch_bytes {
        return Err(SegmintError::LimitExceeded {
            what: "batch".into(),
            limit: limits.max_batch_bytes,
            actual: bytes.len(),
        });
    }
    let raw_texts =
        |items: Vec<&'a RawValue>| items.into_iter().map(|raw| raw.get().as_bytes()).collect();
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    Ok(match first {
        None => Vec::new(),
        Some(b'[') => raw_texts(parse_array(bytes)?),
        Some(b'{') => match serde_json::from_slice::<BTreeMap<Cow<'_, str>, &RawValue>>(bytes) {
            Ok(obj) => match obj.get("batch") {
                Some(batch) => raw_texts(
                    parse_array(batch.get().as_bytes())
                        .map_err(|_| invalid("'batch' must be a list of events"))?,
                ),
                None => vec![bytes.trim_ascii()],
            },
            // Not a single object: newline-delimited JSON, one event a line.
            Err(_) => bytes
                .split(|&b| b == b'\n')
                .map(<[u8]>::trim_ascii)
                .filter(|line| !line.is_empty())
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
    fn fields_decode_like_json() {
        let limits = Limits::default();
        let props: serde_json::Map<String, Json> =
            serde_json::from_str(r#"{"revenue": 10, "device": {"type": "ios"}}"#).unwrap();
        let from_object = event_from_fields(
            &EventFields {
                user_id: Some(""),
                anonymous_id: Some("a1"),
                event: Some("Order Completed"),
                timestamp: Some(TimestampField::Millis(2000)),
                message_id: Some("m"),
                properties: Some(ObjectField::Object(&props)),
                traits: Some(ObjectField::Text("not even JSON")), // not read for a track call
                ..Default::default()
            },
            &limits,
        )
        .unwrap();
        let from_text = event_from_fields(
            &EventFields {
                kind: Some("track"),
                anonymous_id: Some("a1"),
                event: Some("Order Completed"),
                timestamp: Some(TimestampField::Text("1970-01-01T00:00:02Z")),
                message_id: Some("m"),
                properties: Some(ObjectField::Text(
                    r#"{"revenue": 10, "device": {"type": "ios"}}"#,
                )),
                ..Default::default()
            },
            &limits,
        )
        .unwrap();
        let from_json = decode(
            r#"[{"type":"track","anonymousId":"a1","event":"Order Completed","messageId":"m",
                "properties":{"revenue":10,"device":{"type":"ios"}},"timestamp":"1970-01-01T00:00:02Z"}]"#,
        )
        .remove(0)
        .unwrap();
        assert_eq!(from_object, from_json);
        assert_eq!(from_text, from_json);
        // Without a kind and an event name: an identify call; blank text is none.
        let identify = event_from_fields(
            &EventFields {
                user_id: Some("u"),
                traits: Some(ObjectField::Text("  ")),
                ..Default::default()
            },
            &limits,
        )
        .unwrap();
        assert_eq!(
            identify.body,
            EventBody::Identify {
                traits: Flat::new()
            }
        );
    }

    #[test]
    fn bad_fields_fail_with_json_messages() {
        let limits = Limits::default();
        let err = |f: EventFields<'_>| event_from_fields(&f, &limits).unwrap_err().to_string();
        let track = EventFields {
            user_id: Some("u"),
            event: Some("X"),
            ..Default::default()
        };
        assert!(err(EventFields {
            user_id: None,
            ..track
        })
        .contains("no user id: set 'user_id' or 'anonymous_id'"));
        assert!(err(EventFields {
            timestamp: Some(TimestampField::Text("soon")),
            ..track
        })
        .contains("'timestamp'"));
        assert!(err(EventFields {
            kind: Some("page"),
            ..track
        })
        .contains("unsupported event type"));
        assert!(err(EventFields {
            properties: Some(ObjectField::Text("[1]")),
            ..track
        })
        .contains("'properties' must be an object, found a list"));
        assert!(err(EventFields {
            context: Some(ObjectField::Text("{oops")),
            ..track
        })
        .contains("'context' is not valid JSON"));
        assert!(err(EventFields {
            kind: Some("track"),
            event: None,
            ..track
        })
        .contains("needs an 'event' name"));
        let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(40_000));
        assert!(err(EventFields {
            properties: Some(ObjectField::Text(&big)),
            ..track
        })
        .contains("event"));
        assert!(err(EventFields {
            kind: Some("identify"),
            traits: Some(ObjectField::Text(r#"{"tags": [1]}"#)),
            ..track
        })
        .contains("'tags' is a list holding a number"));
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
