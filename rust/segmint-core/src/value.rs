//! Runtime values of traits, properties and rule expressions.

use std::cmp::Ordering;
use std::sync::Arc;

use smol_str::SmolStr;

use crate::error::{Result, SegmintError};
use crate::time::Millis;

/// A dynamically typed value. Absence (null) is `Option::None` around it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A number (all JSON numbers are f64).
    Num(f64),
    /// A string: up to 23 bytes inline (a country, a plan, an ISO
    /// timestamp, most emails), a shared `Arc<str>` beyond, so a value is
    /// 24 bytes either way and short strings cost no allocation.
    Str(SmolStr),
    /// A list of strings (traits and properties only).
    List(Arc<[Arc<str>]>),
    /// A duration in milliseconds (`since`, `member_for`, duration literals).
    Dur(Millis),
}

impl Value {
    /// Heap bytes of a string or list that only this value holds, rounded
    /// as the allocator does. A shared list is not counted here; a long
    /// string is counted by each holder (pooled trait values share it, so
    /// this overstates them).
    pub fn unshared_heap_bytes(&self) -> usize {
        let round = |n: usize| n.div_ceil(16) * 16;
        match self {
            Value::Str(s) if s.is_heap_allocated() => round(s.len() + 16),
            Value::List(l) if Arc::strong_count(l) == 1 => {
                round(l.len() * 16 + 16) + l.iter().map(|s| round(s.len() + 16)).sum::<usize>()
            }
            _ => 0,
        }
    }

    /// The value as a number, if it is one (booleans are not numbers).
    pub fn as_num(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The total order used for ties (`most_frequent`) and sorting
    /// (`unique`): false < true < numbers < strings < lists < durations.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Bool(_) => 0,
                Value::Num(_) => 1,
                Value::Str(_) => 2,
                Value::List(_) => 3,
                Value::Dur(_) => 4,
            }
        }
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Num(a), Value::Num(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Dur(a), Value::Dur(b)) => a.cmp(b),
            _ => rank(self).cmp(&rank(other)),
        }
    }

    /// A hashable key with value equality (numbers by value, `-0 == 0`).
    pub fn key(&self) -> ValueKey {
        match self {
            Value::Bool(b) => ValueKey::Bool(*b),
            Value::Num(n) => ValueKey::Num(if *n == 0.0 { 0 } else { n.to_bits() }),
            Value::Str(s) => ValueKey::Str(s.clone()),
            Value::List(l) => ValueKey::List(l.clone()),
            Value::Dur(d) => ValueKey::Dur(*d),
        }
    }

    /// Converts to JSON for output (profiles, explain).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => (*b).into(),
            Value::Num(n) => {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Str(s) => s.as_str().into(),
            Value::List(l) => l
                .iter()
                .map(|s| serde_json::Value::from(s.as_ref()))
                .collect(),
            Value::Dur(d) => (*d).into(),
        }
    }
}

/// A hashable stand-in for a [`Value`], used in frequency maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ValueKey {
    /// A boolean.
    Bool(bool),
    /// A number's bits (with -0 folded into 0).
    Num(u64),
    /// A string.
    Str(SmolStr),
    /// A list.
    List(Arc<[Arc<str>]>),
    /// A duration.
    Dur(Millis),
}

impl ValueKey {
    /// Back to a value.
    pub fn value(&self) -> Value {
        match self {
            ValueKey::Bool(b) => Value::Bool(*b),
            ValueKey::Num(bits) => Value::Num(f64::from_bits(*bits)),
            ValueKey::Str(s) => Value::Str(s.clone()),
            ValueKey::List(l) => Value::List(l.clone()),
            ValueKey::Dur(d) => Value::Dur(*d),
        }
    }
}

/// A flattened object: dotted keys to values, `None` meaning "delete".
pub type Flat = Vec<(String, Option<Value>)>;

/// Puts member `k` of the object at the dotted path `key[..base]` in
/// `key`: `base.k`, or `k` at the top (`base` 0).
pub(crate) fn member_key(key: &mut String, base: usize, k: &str) {
    key.truncate(base);
    if base > 0 {
        key.push('.');
    }
    key.push_str(k);
}

fn json_scalar(key: &str, v: &serde_json::Value) -> Result<Option<Value>> {
    Ok(match v {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        serde_json::Value::Number(n) => Some(Value::Num(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => Some(Value::Str(SmolStr::from(s.as_str()))),
        serde_json::Value::Array(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => list.push(Arc::from(s.as_str())),
                    other => return Err(list_error(key, json_kind(other))),
                }
            }
            Some(Value::List(list.into()))
        }
        serde_json::Value::Object(_) => unreachable!("objects are flattened by the caller"),
    })
}

/// The error of a list under `key` holding a `kind` (not a string).
pub(crate) fn list_error(key: &str, kind: &str) -> SegmintError {
    SegmintError::InvalidEvent {
        message: format!("'{key}' is a list holding {kind}; lists may hold strings only"),
    }
}

/// A JSON object that flattens into dotted keys (`{"a": {"b": 1}}` →
/// `a.b = 1`): a `serde_json::Map`, or the [`crate::members::Members`] an
/// event's fast decoding parses. `null` becomes `None` (a deletion for
/// traits). Lists of strings are kept; a list holding anything else is an
/// error naming the key when `strict` (traits), and is left out otherwise
/// (event properties such as Segment's `products: [{..}]`, which rules
/// cannot address).
pub trait Flattens {
    /// Hands each dotted key (under `prefix`) and value to `leaf`, in key
    /// order level by level. The key is built in one buffer (a `format!`
    /// per key was most of a track event's flattening) and copied only by
    /// the caller, into the type it keeps.
    fn flatten_into(
        &self,
        prefix: &str,
        strict: bool,
        leaf: &mut impl FnMut(&str, Option<Value>),
    ) -> Result<()> {
        let mut key = String::with_capacity(prefix.len() + 32);
        key.push_str(prefix);
        self.flatten_level(&mut key, strict, leaf)
    }

    /// [`Flattens::flatten_into`] under the dotted path in `key` (empty at
    /// the top), leaving `key` as it found it (see [`member_key`]).
    fn flatten_level(
        &self,
        key: &mut String,
        strict: bool,
        leaf: &mut impl FnMut(&str, Option<Value>),
    ) -> Result<()>;
}

impl Flattens for serde_json::Map<String, serde_json::Value> {
    fn flatten_level(
        &self,
        key: &mut String,
        strict: bool,
        leaf: &mut impl FnMut(&str, Option<Value>),
    ) -> Result<()> {
        let base = key.len();
        for (k, v) in self {
            member_key(key, base, k);
            match v {
                serde_json::Value::Object(inner) if inner.is_empty() => leaf(key, None),
                serde_json::Value::Object(inner) => inner.flatten_level(key, strict, leaf)?,
                other => match json_scalar(key, other) {
                    Ok(value) => leaf(key, value),
                    Err(e) if strict => return Err(e),
                    Err(_) => {}
                },
            }
        }
        key.truncate(base);
        Ok(())
    }
}

/// A short name for a JSON value's kind, for error messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_objects() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": 1, "c": {"d": "x"}}, "e": null, "f": ["p", "q"]}"#)
                .unwrap();
        let mut out = Flat::new();
        flatten_object("", json.as_object().unwrap(), true, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert!(out.contains(&("a.b".into(), Some(Value::Num(1.0)))));
        assert!(out.contains(&("a.c.d".into(), Some(Value::Str("x".into())))));
        assert!(out.contains(&("e".into(), None)));
    }

    #[test]
    fn rejects_lists_of_non_strings() {
        let json: serde_json::Value = serde_json::from_str(r#"{"tags": [1, 2]}"#).unwrap();
        let err =
            flatten_object("", json.as_object().unwrap(), true, &mut Flat::new()).unwrap_err();
        assert!(err
            .to_string()
            .contains("'tags' is a list holding a number"));
    }

    /// The flattening as a list of owned keys.
    fn flatten_object(
        prefix: &str,
        object: &serde_json::Map<String, serde_json::Value>,
        strict: bool,
        out: &mut Flat,
    ) -> Result<()> {
        object.flatten_into(prefix, strict, &mut |key, value| {
            out.push((key.to_owned(), value))
        })
    }

    /// The dotted keys as the flattening made them with a `format!` per
    /// key (before it built them in one buffer).
    fn flatten_by_format(
        prefix: &str,
        object: &serde_json::Map<String, serde_json::Value>,
        out: &mut Flat,
    ) {
        for (k, v) in object {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                serde_json::Value::Object(inner) if inner.is_empty() => out.push((key, None)),
                serde_json::Value::Object(inner) => flatten_by_format(&key, inner, out),
                other => {
                    if let Ok(value) = json_scalar(&key, other) {
                        out.push((key, value));
                    }
                }
            }
        }
    }

    fn json_key() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![Just(String::new()), Just(".".to_owned()), "[a-cé.]{1,3}"]
    }

    fn json_tree() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-5i32..5).prop_map(serde_json::Value::from),
            "[a-z]{0,3}".prop_map(serde_json::Value::from),
            Just(serde_json::json!(["x", "y"])),
            Just(serde_json::json!([1])),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            proptest::collection::btree_map(json_key(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        })
    }

    proptest::proptest! {
        /// Keys built in one buffer are the keys a `format!` per level
        /// made, empty and dotted keys included, under a prefix or none.
        #[test]
        fn one_key_buffer_gives_the_formatted_keys(
            tree in proptest::collection::btree_map(json_key(), json_tree(), 0..5),
            prefix in proptest::prop_oneof![proptest::strategy::Just(""), proptest::strategy::Just("context")],
        ) {
            let object: serde_json::Map<String, serde_json::Value> = tree.into_iter().collect();
            let mut built = Flat::new();
            flatten_object(prefix, &object, false, &mut built).unwrap();
            let mut formatted = Flat::new();
            flatten_by_format(prefix, &object, &mut formatted);
            proptest::prop_assert_eq!(built, formatted);
        }
    }

    #[test]
    fn a_value_is_24_bytes_and_short_strings_are_inline() {
        assert_eq!(std::mem::size_of::<Value>(), 24);
        assert_eq!(std::mem::size_of::<Option<Value>>(), 24);
        let Some(Value::Str(created_at)) =
            json_scalar("k", &"2025-11-20T20:46:30Z".into()).unwrap()
        else {
            unreachable!()
        };
        assert!(!created_at.is_heap_allocated());
        assert_eq!(Value::Str(created_at).unshared_heap_bytes(), 0);
        let long = Value::Str("a value longer than twenty-three bytes".into());
        assert_eq!(long.unshared_heap_bytes(), 64);
    }

    #[test]
    fn total_order_puts_bools_numbers_strings() {
        let mut v = [
            Value::Str("a".into()),
            Value::Num(2.0),
            Value::Bool(true),
            Value::Num(-1.0),
        ];
        v.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(v[0], Value::Bool(true));
        assert_eq!(v[1], Value::Num(-1.0));
        assert_eq!(v[3], Value::Str("a".into()));
    }
}
