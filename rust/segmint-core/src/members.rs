//! A JSON object parsed straight into what flattening reads: its members
//! by key, each a scalar value, a nested object, or a list that is not all
//! strings. Decoding an event built a `serde_json::Map` of `Value`s for its
//! properties and context, walked it once to flatten it, and dropped it:
//! about a third of a track event's decoding.
//!
//! The members are sorted by key and the last of equal keys is kept, as
//! `serde_json::Map` (a `BTreeMap`) keeps them, so that both give the same
//! flattened list in the same order, and the same errors (a list item
//! that is a list or an object is parsed as a value, not skipped, so what
//! a value parse turns down is turned down here too); a proptest holds
//! them to it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use smol_str::SmolStr;

use crate::error::Result;
use crate::value::{list_error, member_key, Flattens, Value};

/// An object's members, sorted by key, one per key.
#[derive(Debug, Default)]
pub struct Members<'de>(Vec<(Cow<'de, str>, Member<'de>)>);

/// One member's value.
#[derive(Debug)]
enum Member<'de> {
    /// A scalar, a list of strings, or `None` for `null`.
    Scalar(Option<Value>),
    /// A list holding something other than strings: the kind of the first
    /// such item (named in the error of a strict flattening).
    BadList(&'static str),
    /// A nested object.
    Object(Members<'de>),
}

/// Like the flattening of a `serde_json::Map` of the same object.
impl Flattens for Members<'_> {
    fn flatten_level(
        &self,
        key: &mut String,
        strict: bool,
        leaf: &mut impl FnMut(&str, Option<Value>),
    ) -> Result<()> {
        let base = key.len();
        for (k, member) in &self.0 {
            member_key(key, base, k);
            match member {
                Member::Scalar(value) => leaf(key, value.clone()),
                Member::Object(inner) if inner.0.is_empty() => leaf(key, None),
                Member::Object(inner) => inner.flatten_level(key, strict, leaf)?,
                Member::BadList(kind) if strict => return Err(list_error(key, kind)),
                Member::BadList(_) => {}
            }
        }
        key.truncate(base);
        Ok(())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(MembersVisitor(std::marker::PhantomData))
    }
}

/// Builds [`Members`] borrowing from text that lives for `'a`.
struct MembersVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
    type Value = Members<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Members<'a>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(key) = map.next_key::<Key<'a>>()? {
            members.push((key.0, map.next_value::<Member<'a>>()?));
        }
        // Stable: equal keys keep their order, and the last one stays.
        if !members.is_sorted_by(|a, b| a.0 < b.0) {
            members.sort_by(|a, b| a.0.cmp(&b.0));
            members.reverse();
            members.dedup_by(|later, earlier| later.0 == earlier.0);
            members.reverse();
        }
        Ok(Members(members))
    }
}

/// A member's key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Member<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor(std::marker::PhantomData))
    }
}

/// Builds a [`Member`] borrowing from text that lives for `'a`.
struct MemberVisitor<'a>(std::marker::PhantomData<&'a ()>);

fn scalar<'a, E>(value: Value) -> std::result::Result<Member<'a>, E> {
    Ok(Member::Scalar(Some(value)))
}

impl<'de: 'a, 'a> Visitor<'de> for MemberVisitor<'a> {
    type Value = Member<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> std::result::Result<Member<'a>, E> {
        scalar(Value::Bool(b))
    }

    // Numbers as `serde_json::Number::as_f64` gives them.
    fn visit_i64<E>(self, n: i64) -> std::result::Result<Member<'a>, E> {
        scalar(Value::Num(n as f64))
    }

    fn visit_u64<E>(self, n: u64) -> std::result::Result<Member<'a>, E> {
        scalar(Value::Num(n as f64))
    }

    fn visit_f64<E>(self, n: f64) -> std::result::Result<Member<'a>, E> {
        scalar(Value::Num(n))
    }

    fn visit_str<E>(self, s: &str) -> std::result::Result<Member<'a>, E> {
        scalar(Value::Str(SmolStr::from(s)))
    }

    fn visit_unit<E>(self) -> std::result::Result<Member<'a>, E> {
        Ok(Member::Scalar(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Member<'a>, A::Error> {
        let mut list: Vec<Arc<str>> = Vec::new();
        let mut bad = None;
        while let Some(item) = seq.next_element::<Item>()? {
            match (item, bad) {
                (Item::Str(s), None) => list.push(s),
                (Item::Other(kind), None) => bad = Some(kind),
                (_, Some(_)) => {}
            }
        }
        Ok(match bad {
            Some(kind) => Member::BadList(kind),
            None => Member::Scalar(Some(Value::List(list.into()))),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Member<'a>, A::Error> {
        MembersVisitor(std::marker::PhantomData)
            .visit_map(map)
            .map(Member::Object)
    }
}

/// An item of a list: a string, or the kind of anything else (parsed and
/// dropped).
enum Item {
    Str(Arc<str>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Item, E> {
                Ok(Item::Str(Arc::from(s)))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Item, E> {
                Ok(Item::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Item, E> {
                Ok(Item::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Item, E> {
                Ok(Item::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Item, E> {
                Ok(Item::Other("a number"))
            }
            fn visit_unit<E>(self) -> std::result::Result<Item, E> {
                Ok(Item::Other("null"))
            }
            // A nested list or object is parsed as values, not skipped:
            // parsing checks what skipping does not (numbers out of range,
            // the nesting depth, lone surrogates), and the map path turns
            // the event down for those.
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Item, A::Error> {
                while seq.next_element::<serde_json::Value>()?.is_some() {}
                Ok(Item::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Item, A::Error> {
                while map.next_entry::<String, serde_json::Value>()?.is_some() {}
                Ok(Item::Other("an object"))
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::value::Flat;

    /// JSON text of an object whose keys may repeat (and need escapes),
    /// with nested objects and lists of every kind.
    fn object_text(depth: u32) -> BoxedStrategy<String> {
        let key = prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("a\"b".to_owned()),
            "[a-cé.]{1,2}",
        ]
        .prop_map(|k| serde_json::to_string(&k).unwrap());
        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("-0".to_owned()),
            Just("1.5e300".to_owned()),
            Just("18446744073709551616".to_owned()),
            (-5i64..5).prop_map(|n| n.to_string()),
            "[a-zé]{0,3}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#"["x", "y\u00e9"]"#.to_owned()),
            Just(r#"["x", 1, "y"]"#.to_owned()),
            Just(r#"[[], {"a": 1}]"#.to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            // Invalid inside a nested item: both parses turn these down.
            Just(r#"[{"price": 1e400}]"#.to_owned()),
            Just(r#"["x", [1e400]]"#.to_owned()),
            Just(r#"[1, {"a": "\ud800"}]"#.to_owned()),
        ];
        let value = if depth == 0 {
            scalar.boxed()
        } else {
            prop_oneof![3 => scalar, 1 => object_text(depth - 1)].boxed()
        };
        proptest::collection::vec((key, value), 0..5)
            .prop_map(|members| {
                let inner: Vec<String> = members.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", inner.join(", "))
            })
            .boxed()
    }

    fn flattened(
        flatten: impl FnOnce(&mut dyn FnMut(&str, Option<Value>)) -> Result<()>,
    ) -> std::result::Result<Flat, String> {
        let mut out = Flat::new();
        flatten(&mut |k, v| out.push((k.to_owned(), v)))
            .map(|()| out)
            .map_err(|e| e.to_string())
    }

    proptest! {
        /// Parsed straight into members, an object flattens to the list a
        /// `serde_json::Map` gives (the same keys, order, values, last of
        /// repeated keys, and the same error for a list of non-strings).
        #[test]
        fn members_flatten_as_the_json_map_does(
            text in object_text(2),
            strict: bool,
            prefix in prop_oneof![Just(""), Just("context")],
        ) {
            let members = serde_json::from_str::<Members<'_>>(&text);
            let map = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text);
            prop_assert_eq!(members.is_ok(), map.is_ok(), "{}", text);
            if let (Ok(members), Ok(map)) = (members, map) {
                let by_members = flattened(|leaf| members.flatten_into(prefix, strict, &mut |k, v| leaf(k, v)));
                let by_map = flattened(|leaf| map.flatten_into(prefix, strict, &mut |k, v| leaf(k, v)));
                prop_assert_eq!(by_members, by_map);
            }
        }
    }
}
