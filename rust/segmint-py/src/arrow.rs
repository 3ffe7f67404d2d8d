//! Arrow record batches (imported through the Arrow C stream interface) to
//! the core's events. Type conversion only: each row's fields go to
//! [`segmint_core::event::event_from_fields`], which applies the same rules
//! (user id, timestamp, type, limits, flattening) as a JSON event. The events
//! schema is documented in docs/interop.md.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Decimal256Type, Decimal32Type, Decimal64Type,
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema, TimeUnit};
use serde_json::{Map, Number, Value as Json};

use segmint_core::decoder::Decoder;
use segmint_core::event::{event_from_fields, EventFields, ObjectField, TimestampField};
use segmint_core::limits::Limits;
use segmint_core::time::{format_date, format_timestamp, Millis};
use segmint_core::{Event, SegmintError};

type Result<T> = std::result::Result<T, SegmintError>;

/// The event columns, by name; any other column is ignored.
const TEXT_COLUMNS: [&str; 6] = [
    "type",
    "user_id",
    "anonymous_id",
    "event",
    "message_id",
    "previous_id",
];
const PAYLOAD_COLUMNS: [&str; 3] = ["properties", "context", "traits"];

fn schema_error(message: String) -> SegmintError {
    SegmintError::InvalidArgument { message }
}

fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text(v),
        _ => false,
    }
}

/// Checks the events schema: `user_id` present, each event column of a
/// supported type (nested payload types included). The error names the
/// column (or field path), its type and what was expected.
pub fn check_schema(schema: &Schema) -> Result<()> {
    if schema.index_of("user_id").is_err() {
        return Err(schema_error(
            "events table has no 'user_id' column; expected columns: type, user_id, \
             anonymous_id, event, timestamp, message_id, properties, context, traits, \
             previous_id"
                .into(),
        ));
    }
    for field in schema.fields() {
        let (name, t) = (field.name().as_str(), field.data_type());
        if TEXT_COLUMNS.contains(&name) && !(is_text(t) || t == &DataType::Null) {
            return Err(schema_error(format!(
                "column '{name}' has type {t}; expected a string column"
            )));
        }
        if name == "timestamp" {
            match t {
                DataType::Timestamp(_, None) => {
                    return Err(schema_error(format!(
                        "column 'timestamp' has type {t} without a timezone, which is ambiguous"
                    )))
                }
                DataType::Timestamp(..) | DataType::Null => {}
                t if t.is_integer() || is_text(t) => {}
                t => {
                    return Err(schema_error(format!(
                        "column 'timestamp' has type {t}; expected a timestamp with a \
                         timezone, integer epoch milliseconds or ISO-8601 strings"
                    )))
                }
            }
        }
        if PAYLOAD_COLUMNS.contains(&name) {
            match t {
                DataType::Struct(_) | DataType::Map(..) => check_value_type(t, name)?,
                DataType::Null => {}
                t if is_text(t) => {}
                t => {
                    return Err(schema_error(format!(
                        "column '{name}' has type {t}; expected JSON object text, a struct \
                         or a map<string, ...>"
                    )))
                }
            }
        }
    }
    Ok(())
}

/// Checks that values of type `t` (at `path`) have a JSON form.
fn check_value_type(t: &DataType, path: &str) -> Result<()> {
    match t {
        DataType::Null | DataType::Boolean => Ok(()),
        t if t.is_integer() || t.is_floating() || is_text(t) => Ok(()),
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..)
        | DataType::Date32
        | DataType::Date64 => Ok(()),
        DataType::Timestamp(_, Some(_)) => Ok(()),
        DataType::Timestamp(_, None) => Err(schema_error(format!(
            "'{path}' has type {t} without a timezone, which is ambiguous"
        ))),
        DataType::Dictionary(_, v) => check_value_type(v, path),
        DataType::Struct(fields) => fields
            .iter()
            .try_for_each(|f| check_value_type(f.data_type(), &format!("{path}.{}", f.name()))),
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(schema_error(format!("'{path}' is a malformed map")));
            };
            if kv.len() != 2 || !is_text(kv[0].data_type()) {
                return Err(schema_error(format!(
                    "'{path}' is a map without string keys; JSON objects need string keys"
                )));
            }
            check_value_type(kv[1].data_type(), &format!("{path}.<value>"))
        }
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            check_value_type(item.data_type(), &format!("{path}[]"))
        }
        t => Err(schema_error(format!(
            "'{path}' has type {t}, which has no JSON form; supported: string, bool, \
             integer, float, decimal, timestamp with a timezone, date, struct, map, list"
        ))),
    }
}

/// A text column's value at a row (`None` for null).
type Text<'a> = Box<dyn Fn(usize) -> Option<&'a str> + Sync + 'a>;

fn text<'a>(arr: &'a dyn Array) -> Option<Text<'a>> {
    match arr.data_type() {
        DataType::Utf8 => {
            let a = arr.as_string::<i32>();
            Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
        }
        DataType::LargeUtf8 => {
            let a = arr.as_string::<i64>();
            Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
        }
        DataType::Utf8View => {
            let a = arr.as_string_view();
            Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
        }
        DataType::Dictionary(..) => {
            let d = arr.as_any_dictionary();
            let values = text(d.values().as_ref())?;
            let index = d.normalized_keys();
            let keys = d.keys();
            Some(Box::new(move |i| {
                if keys.is_null(i) {
                    None
                } else {
                    values(index[i])
                }
            }))
        }
        _ => None,
    }
}

/// A value at a row as JSON: `Ok(None)` for null, an error for a row whose
/// value has no JSON form (a non-finite number).
type JsonAt<'a> = Box<dyn Fn(usize) -> Result<Option<Json>> + Sync + 'a>;

fn not_finite(path: &str) -> SegmintError {
    SegmintError::InvalidEvent {
        message: format!(
            "'{path}' is not a finite number (NaN or infinity); numbers must be finite"
        ),
    }
}

fn number<'a>(
    arr: &'a dyn Array,
    path: String,
    f: impl Fn(usize) -> f64 + Sync + 'a,
) -> JsonAt<'a> {
    Box::new(move |i| {
        if arr.is_null(i) {
            return Ok(None);
        }
        match Number::from_f64(f(i)) {
            Some(n) => Ok(Some(Json::Number(n))),
            None => Err(not_finite(&path)),
        }
    })
}

fn string<'a>(arr: &'a dyn Array, f: impl Fn(usize) -> String + Sync + 'a) -> JsonAt<'a> {
    Box::new(move |i| Ok(arr.is_valid(i).then(|| Json::String(f(i)))))
}

fn millis(unit: TimeUnit, v: i64) -> Millis {
    match unit {
        TimeUnit::Second => v.saturating_mul(1000),
        TimeUnit::Millisecond => v,
        TimeUnit::Microsecond => v.div_euclid(1_000),
        TimeUnit::Nanosecond => v.div_euclid(1_000_000),
    }
}

/// An epoch-milliseconds reader of an integer or timezone-aware timestamp column.
fn epoch_ms<'a>(arr: &'a dyn Array) -> Option<Box<dyn Fn(usize) -> i64 + Sync + 'a>> {
    macro_rules! prim {
        ($t:ty, $conv:expr) => {{
            let a = arr.as_primitive::<$t>();
            let conv = $conv;
            Some(Box::new(move |i| conv(a.value(i))))
        }};
    }
    match arr.data_type() {
        DataType::Int8 => prim!(Int8Type, i64::from),
        DataType::Int16 => prim!(Int16Type, i64::from),
        DataType::Int32 => prim!(Int32Type, i64::from),
        DataType::Int64 => prim!(Int64Type, |v: i64| v),
        DataType::UInt8 => prim!(UInt8Type, i64::from),
        DataType::UInt16 => prim!(UInt16Type, i64::from),
        DataType::UInt32 => prim!(UInt32Type, i64::from),
        DataType::UInt64 => prim!(UInt64Type, |v: u64| i64::try_from(v).unwrap_or(i64::MAX)),
        DataType::Timestamp(TimeUnit::Second, _) => {
            prim!(TimestampSecondType, |v| millis(TimeUnit::Second, v))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            prim!(TimestampMillisecondType, |v: i64| v)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            prim!(TimestampMicrosecondType, |v| millis(
                TimeUnit::Microsecond,
                v
            ))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            prim!(TimestampNanosecondType, |v| millis(TimeUnit::Nanosecond, v))
        }
        _ => None,
    }
}

/// The JSON reader of a column (or nested field) at `path`; types without a
/// JSON form are refused (the schema check refuses them first).
fn json_at<'a>(arr: &'a dyn Array, path: String) -> Result<JsonAt<'a>> {
    macro_rules! num {
        ($t:ty) => {{
            let a = arr.as_primitive::<$t>();
            number(arr, path, move |i| a.value(i) as f64)
        }};
    }
    macro_rules! decimal {
        ($t:ty) => {{
            let a = arr.as_primitive::<$t>();
            number(arr, path, move |i| {
                a.value_as_string(i).parse::<f64>().unwrap_or(f64::NAN)
            })
        }};
    }
    Ok(match arr.data_type() {
        DataType::Null => Box::new(|_| Ok(None)),
        DataType::Boolean => {
            let a = arr.as_boolean();
            Box::new(move |i| Ok(a.is_valid(i).then(|| Json::Bool(a.value(i)))))
        }
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float16 => {
            let a = arr.as_primitive::<Float16Type>();
            number(arr, path, move |i| a.value(i).to_f64())
        }
        DataType::Float32 => {
            let a = arr.as_primitive::<Float32Type>();
            number(arr, path, move |i| f64::from(a.value(i)))
        }
        DataType::Float64 => {
            let a = arr.as_primitive::<Float64Type>();
            number(arr, path, move |i| a.value(i))
        }
        DataType::Decimal32(..) => decimal!(Decimal32Type),
        DataType::Decimal64(..) => decimal!(Decimal64Type),
        DataType::Decimal128(..) => decimal!(Decimal128Type),
        DataType::Decimal256(..) => decimal!(Decimal256Type),
        DataType::Timestamp(_, Some(_)) => {
            let ms = epoch_ms(arr).expect("a timestamp column");
            string(arr, move |i| format_timestamp(ms(i)))
        }
        DataType::Date32 => {
            let a = arr.as_primitive::<Date32Type>();
            string(arr, move |i| {
                format_date(i64::from(a.value(i)).saturating_mul(86_400_000))
            })
        }
        DataType::Date64 => {
            let a = arr.as_primitive::<Date64Type>();
            string(arr, move |i| format_date(a.value(i)))
        }
        t if is_text(t) && !matches!(t, DataType::Dictionary(..)) => {
            let t = text(arr).expect("a text column");
            Box::new(move |i| Ok(t(i).map(|s| Json::String(s.to_owned()))))
        }
        DataType::Dictionary(..) => {
            let d = arr.as_any_dictionary();
            let values = json_at(d.values().as_ref(), path)?;
            let index = d.normalized_keys();
            let keys = d.keys();
            Box::new(move |i| {
                if keys.is_null(i) {
                    Ok(None)
                } else {
                    values(index[i])
                }
            })
        }
        DataType::Struct(_) => {
            let s = arr.as_struct();
            let fields = s
                .fields()
                .iter()
                .zip(s.columns())
                .map(|(f, c)| {
                    Ok((
                        f.name().clone(),
                        json_at(c.as_ref(), format!("{path}.{}", f.name()))?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            // A null field is left out of its object (a sparse struct does
            // not delete traits).
            Box::new(move |i| {
                if s.is_null(i) {
                    return Ok(None);
                }
                let mut obj = Map::new();
                for (name, value) in &fields {
                    if let Some(v) = value(i)? {
                        obj.insert(name.clone(), v);
                    }
                }
                Ok(Some(Json::Object(obj)))
            })
        }
        DataType::Map(..) => {
            let m = arr.as_map();
            let keys = text(m.keys().as_ref()).ok_or_else(|| {
                schema_error(format!(
                    "'{path}' is a map without string keys; JSON objects need string keys"
                ))
            })?;
            let values = json_at(m.values().as_ref(), format!("{path}.<value>"))?;
            Box::new(move |i| {
                if m.is_null(i) {
                    return Ok(None);
                }
                let offsets = m.value_offsets();
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                let mut obj = Map::new();
                for j in start..end {
                    let Some(k) = keys(j) else { continue };
                    obj.insert(k.to_owned(), values(j)?.unwrap_or(Json::Null));
                }
                Ok(Some(Json::Object(obj)))
            })
        }
        DataType::List(_) => {
            let l = arr.as_list::<i32>();
            let items = json_at(l.values().as_ref(), format!("{path}[]"))?;
            list(arr, items, move |i| {
                let o = l.value_offsets();
                (o[i] as usize, o[i + 1] as usize)
            })
        }
        DataType::LargeList(_) => {
            let l = arr.as_list::<i64>();
            let items = json_at(l.values().as_ref(), format!("{path}[]"))?;
            list(arr, items, move |i| {
                let o = l.value_offsets();
                (o[i] as usize, o[i + 1] as usize)
            })
        }
        DataType::FixedSizeList(..) => {
            let l = arr.as_fixed_size_list();
            let items = json_at(l.values().as_ref(), format!("{path}[]"))?;
            list(arr, items, move |i| {
                let start = l.value_offset_at(i);
                (start, start + l.value_length() as usize)
            })
        }
        _ => {
            check_value_type(arr.data_type(), &path)?;
            return Err(schema_error(format!(
                "'{path}' has type {}, which has no JSON form",
                arr.data_type()
            )));
        }
    })
}

fn list<'a>(
    arr: &'a dyn Array,
    items: JsonAt<'a>,
    range: impl Fn(usize) -> (usize, usize) + Sync + 'a,
) -> JsonAt<'a> {
    Box::new(move |i| {
        if arr.is_null(i) {
            return Ok(None);
        }
        let (start, end) = range(i);
        let values = (start..end)
            .map(|j| Ok(items(j)?.unwrap_or(Json::Null)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Json::Array(values)))
    })
}

/// A payload column: JSON object text, or a struct / map column.
enum Payload<'a> {
    Text(Text<'a>),
    Object(JsonAt<'a>),
}

impl<'a> Payload<'a> {
    fn new(arr: &'a dyn Array, name: &str) -> Result<Option<Payload<'a>>> {
        if arr.data_type() == &DataType::Null {
            return Ok(None);
        }
        if let Some(t) = text(arr) {
            return Ok(Some(Payload::Text(t)));
        }
        Ok(Some(Payload::Object(json_at(arr, name.to_owned())?)))
    }
}

/// The event columns of one record batch.
struct Columns<'a> {
    kind: Option<Text<'a>>,
    user_id: Option<Text<'a>>,
    anonymous_id: Option<Text<'a>>,
    event: Option<Text<'a>>,
    message_id: Option<Text<'a>>,
    previous_id: Option<Text<'a>>,
    timestamp: Option<Box<dyn Fn(usize) -> Option<TimestampField<'a>> + Sync + 'a>>,
    properties: Option<Payload<'a>>,
    context: Option<Payload<'a>>,
    traits: Option<Payload<'a>>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a dyn Array> {
    let i = batch.schema_ref().index_of(name).ok()?;
    Some(batch.column(i).as_ref())
}

impl<'a> Columns<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Columns<'a>> {
        let text_col = |name: &str| column(batch, name).and_then(text);
        let timestamp = match column(batch, "timestamp") {
            None => None,
            Some(arr) if arr.data_type() == &DataType::Null => None,
            Some(arr) => {
                let read: Box<dyn Fn(usize) -> Option<TimestampField<'a>> + Sync + 'a> =
                    if let Some(t) = text(arr) {
                        Box::new(move |i| t(i).map(TimestampField::Text))
                    } else if let Some(ms) = epoch_ms(arr) {
                        Box::new(move |i| arr.is_valid(i).then(|| TimestampField::Millis(ms(i))))
                    } else {
                        return Err(schema_error(format!(
                            "column 'timestamp' has type {}; expected a timestamp with a \
                             timezone, integer epoch milliseconds or ISO-8601 strings",
                            arr.data_type()
                        )));
                    };
                Some(read)
            }
        };
        let payload = |name: &str| match column(batch, name) {
            None => Ok(None),
            Some(arr) => Payload::new(arr, name),
        };
        Ok(Columns {
            kind: text_col("type"),
            user_id: text_col("user_id"),
            anonymous_id: text_col("anonymous_id"),
            event: text_col("event"),
            message_id: text_col("message_id"),
            previous_id: text_col("previous_id"),
            timestamp,
            properties: payload("properties")?,
            context: payload("context")?,
            traits: payload("traits")?,
        })
    }

    /// The fields of row `i`; struct and map payloads are read from `built`.
    fn fields<'b>(
        &'b self,
        i: usize,
        built: &'b [Option<Map<String, Json>>; 3],
    ) -> EventFields<'b> {
        let get = |c: &'b Option<Text<'a>>| c.as_ref().and_then(|t| t(i));
        let payload = |p: &'b Option<Payload<'a>>, b: &'b Option<Map<String, Json>>| match p {
            None => None,
            Some(Payload::Text(t)) => t(i).map(ObjectField::Text),
            Some(Payload::Object(_)) => b.as_ref().map(ObjectField::Object),
        };
        EventFields {
            kind: get(&self.kind),
            user_id: get(&self.user_id),
            anonymous_id: get(&self.anonymous_id),
            event: get(&self.event),
            timestamp: self.timestamp.as_ref().and_then(|t| t(i)),
            message_id: get(&self.message_id),
            properties: payload(&self.properties, &built[0]),
            context: payload(&self.context, &built[1]),
            traits: payload(&self.traits, &built[2]),
            previous_id: get(&self.previous_id),
        }
    }

    /// Row `i` as an event.
    fn event(&self, i: usize, limits: &Limits) -> Result<Event> {
        let mut built: [Option<Map<String, Json>>; 3] = [None, None, None];
        for (slot, p) in built
            .iter_mut()
            .zip([&self.properties, &self.context, &self.traits])
        {
            if let Some(Payload::Object(f)) = p {
                if let Some(Json::Object(o)) = f(i)? {
                    *slot = Some(o);
                }
            }
        }
        event_from_fields(&self.fields(i, &built), limits)
    }
}

/// The events of a record batch, one result per row (converted on the
/// engine's threads and under its limits by `decoder`): a row that cannot be an event is an
/// error at its own index.
pub fn batch_events(batch: &RecordBatch, decoder: &Decoder) -> Result<Vec<Result<Event>>> {
    let columns = Columns::new(batch)?;
    let limits = decoder.limits();
    Ok(decoder.decode_each(batch.num_rows(), |i| columns.event(i, limits)))
}
