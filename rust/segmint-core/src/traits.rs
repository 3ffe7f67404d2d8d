//! A user's traits, packed into one allocation.
//!
//! A profile holds a handful of traits, most of them numbers, booleans and
//! short strings (a country, a plan, an ISO timestamp). As a list of
//! `(key, Value)` each took 32 bytes whatever its value; packed as bytes
//! (key, tag, payload) a two-letter country takes 4, a number 10 (5 for
//! one written with up to three decimals, `617.74`, kept as the integer
//! 61774 and read back bit for bit), and a UTC timestamp string in whole
//! seconds (`2026-01-01T12:00:00Z`, as a `created_at` usually is) 7 instead
//! of 22, kept as its seconds and written back exactly (with one of the
//! first 128 keys of the catalog). Long
//! strings (which a shard's [`crate::profile::TraitValuePool`] shares
//! between profiles) and lists stay `Value`s, in a side list that most
//! profiles never allocate.

use std::borrow::Cow;
use std::ops::Range;

use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::catalog::{CtId, TraitKey};
use crate::thin_box::ThinBox;
use crate::time::{format_utc_seconds, Millis};
use crate::value::Value;

/// The longest string packed as bytes: what a `SmolStr` holds without an
/// allocation, so that reading one back allocates nothing either.
const PACKED_STR_MAX: usize = 23;

/// Tags of packed entries; a string's tag is `TAG_STR` plus its length.
const TAG_FALSE: u8 = 0;
const TAG_TRUE: u8 = 1;
const TAG_NUM: u8 = 2;
const TAG_DUR: u8 = 4;
/// A string that is a UTC timestamp in whole seconds, as [`utc_seconds`]
/// reads it; the payload is the seconds, as a [`push_varint`].
const TAG_UTC_SECONDS: u8 = 5;
/// A number that is an integer `k` divided by 10^d, d from 0 to
/// [`MAX_DECIMALS`] (`ltv: 617.74` is 61774 / 100): the tag is
/// `TAG_DECIMAL + d`, the payload `k` as a [`push_varint`] (3 bytes
/// instead of 8 for that one).
const TAG_DECIMAL: u8 = 8;
/// The most decimals a number packed as [`TAG_DECIMAL`] has.
const MAX_DECIMALS: u8 = 3;
const TAG_STR: u8 = 32;
/// The tag of a [`TAG_DECIMAL`] with the most decimals.
const DECIMAL_LAST: u8 = TAG_DECIMAL + MAX_DECIMALS;

/// Powers of ten by decimals, for [`TAG_DECIMAL`].
const SCALES: [f64; MAX_DECIMALS as usize + 1] = [1.0, 10.0, 100.0, 1000.0];

/// The `(decimals, k)` of a number that reads back bit for bit as
/// `k / 10^decimals` (with the fewest decimals); `None` for any other
/// (-0.0, NaN, more decimals, beyond 2^53).
fn decimal(n: f64) -> Option<(u8, i64)> {
    const EXACT: f64 = (1u64 << 53) as f64;
    (0..=MAX_DECIMALS).find_map(|d| {
        let k = (n * SCALES[d as usize]).round();
        // Read back from the integer itself: -0.0 becomes 0, and fails.
        let exact =
            k.abs() <= EXACT && ((k as i64) as f64 / SCALES[d as usize]).to_bits() == n.to_bits();
        exact.then_some((d, k as i64))
    })
}

/// Appends `n` zigzag-encoded as LEB128: small magnitudes of either sign
/// take few bytes (61774 takes 3, a timestamp's seconds 5).
fn push_varint(n: i64, out: &mut Packing) {
    let mut rest = ((n << 1) ^ (n >> 63)) as u64;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The number [`push_varint`] wrote at the start of `bytes`, or `None`
/// past the end.
fn read_varint(bytes: &[u8]) -> Option<i64> {
    let mut zigzag = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        zigzag |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64));
        }
    }
    None
}

/// Bytes of the varint at the start of `bytes`, or `None` past the end.
fn varint_len(bytes: &[u8]) -> Option<usize> {
    Some(bytes.iter().take(10).position(|&b| b < 0x80)? + 1)
}

/// The seconds since the epoch of `text` if it is a UTC timestamp in whole
/// seconds that [`format_utc_seconds`] writes back byte for byte
/// (`2026-01-01T12:00:00Z`); `None` for any other string.
///
/// The fast parser reads exactly that shape (four-digit year, every field
/// in range, no fraction at this length), which formats back as it was
/// written: nothing is formatted to compare (see the test
/// `utc_seconds_are_what_formats_back`).
fn utc_seconds(text: &str) -> Option<i64> {
    if text.len() != UTC_SECONDS_LEN {
        return None;
    }
    Some(crate::time::parse_utc_fast(text.as_bytes())? / 1000)
}

/// Length of `YYYY-MM-DDTHH:MM:SSZ`.
const UTC_SECONDS_LEN: usize = 20;

/// Appends `key` as LEB128: one byte for the first 128 keys of a catalog,
/// which most workloads never pass.
fn push_key(key: TraitKey, out: &mut Packing) {
    let mut rest = key;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The key at the start of `bytes` and its length in bytes.
fn read_key(bytes: &[u8]) -> Option<(TraitKey, usize)> {
    let mut key: TraitKey = 0;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        key |= TraitKey::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((key, i + 1));
        }
    }
    None
}

/// A user's traits: each key at most once, in key order. (Equality
/// compares the packed bytes, numbers by their bits, so `0.0` and `-0.0`
/// differ and a packed NaN equals itself; values kept as `Value`s, the
/// computed traits' among them, compare as `Value`s. Only tests compare
/// profiles.)
#[derive(Clone, Default, PartialEq)]
pub struct Traits {
    /// Entries sorted by key, end to end: key (LEB128), tag, then the
    /// payload (none for booleans; a varint for a number with few
    /// decimals and for a timestamp's seconds; 8 bytes for another number
    /// or a duration; the bytes of a string, whose length is in its tag).
    packed: ThinBox<u8>,
    /// What most profiles never hold, in one box: 8 bytes in every
    /// profile; `None` while it would be empty.
    rare: Option<Box<RareTraits>>,
}

/// The rarely held parts of a user's traits.
#[derive(Debug, Clone, Default, PartialEq)]
struct RareTraits {
    /// Values not packed (long strings, lists), sorted by key.
    large: Vec<(TraitKey, Value)>,
    /// Current values of the computed traits, sorted by slot; a null value
    /// is absent. (Kept here rather than in a list of their own, which
    /// would cost every profile 8 bytes where a catalog has none.)
    computed: Vec<(CtId, Value)>,
}

impl RareTraits {
    fn is_empty(&self) -> bool {
        self.large.is_empty() && self.computed.is_empty()
    }
}

/// One packed entry, decoded in place.
struct Packed<'a> {
    key: TraitKey,
    tag: u8,
    payload: &'a [u8],
}

impl Packed<'_> {
    fn value(&self) -> Value {
        let num = || {
            let bytes: [u8; 8] = self.payload.try_into().unwrap_or_default();
            bytes
        };
        match self.tag {
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_NUM => Value::Num(f64::from_le_bytes(num())),
            TAG_DUR => Value::Dur(i64::from_le_bytes(num())),
            // Packed only when it formats back to the same text.
            TAG_UTC_SECONDS => Value::Str(
                read_varint(self.payload)
                    .and_then(format_utc_seconds)
                    .unwrap_or_default(),
            ),
            TAG_DECIMAL..=DECIMAL_LAST => {
                let k = read_varint(self.payload).unwrap_or_default();
                Value::Num(k as f64 / SCALES[usize::from(self.tag - TAG_DECIMAL)])
            }
            // Written from a `&str`: always UTF-8.
            _ => Value::Str(
                std::str::from_utf8(self.payload).map_or_else(|_| SmolStr::default(), SmolStr::new),
            ),
        }
    }
}

/// The packed entries of `bytes`, in order, with each entry's byte range.
fn entries(bytes: &[u8]) -> impl Iterator<Item = (Range<usize>, Packed<'_>)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let (key, key_len) = read_key(bytes.get(start..)?)?;
        let tag = *bytes.get(start + key_len)?;
        let from = start + key_len + 1;
        let len = match tag {
            TAG_FALSE | TAG_TRUE => 0,
            TAG_NUM | TAG_DUR => 8,
            TAG_UTC_SECONDS | TAG_DECIMAL..=DECIMAL_LAST => varint_len(bytes.get(from..)?)?,
            _ => usize::from(tag.checked_sub(TAG_STR)?),
        };
        let payload = bytes.get(from..from + len)?;
        at = from + len;
        Some((start..at, Packed { key, tag, payload }))
    })
}

/// Where a profile's traits are packed before they are boxed: on the
/// stack, so that a sign-up's few traits cost one allocation, not one
/// per doubling of a vector.
type Packing = SmallVec<[u8; 128]>;

/// Appends the packed form of `key: value` to `out`; false (nothing
/// appended) when the value is kept as a `Value` instead.
fn pack(key: TraitKey, value: &Value, out: &mut Packing) -> bool {
    /// How a value is packed.
    enum Payload<'a> {
        Bare(u8),
        Fixed(u8, [u8; 8]),
        Varint(u8, i64),
        Str(&'a [u8]),
    }
    let payload = match value {
        Value::Bool(b) => Payload::Bare(if *b { TAG_TRUE } else { TAG_FALSE }),
        Value::Num(n) => match decimal(*n) {
            Some((d, k)) => Payload::Varint(TAG_DECIMAL + d, k),
            None => Payload::Fixed(TAG_NUM, n.to_le_bytes()),
        },
        Value::Dur(d) => Payload::Fixed(TAG_DUR, d.to_le_bytes()),
        Value::Str(s) => match utc_seconds(s) {
            Some(seconds) => Payload::Varint(TAG_UTC_SECONDS, seconds),
            None if s.len() <= PACKED_STR_MAX => Payload::Str(s.as_bytes()),
            None => return false,
        },
        Value::List(_) => return false,
    };
    push_key(key, out);
    match payload {
        Payload::Bare(tag) => out.push(tag),
        Payload::Fixed(tag, bytes) => {
            out.push(tag);
            out.extend_from_slice(&bytes);
        }
        Payload::Varint(tag, n) => {
            out.push(tag);
            push_varint(n, out);
        }
        Payload::Str(bytes) => {
            out.push(TAG_STR + bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
    }
    true
}

impl Traits {
    /// The value of `key`, if set.
    pub fn get(&self, key: TraitKey) -> Option<Cow<'_, Value>> {
        if let Some(e) = self.packed_entry(key) {
            return Some(Cow::Owned(e.value()));
        }
        let large = self.large();
        let i = large.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        Some(Cow::Borrowed(&large[i].1))
    }

    /// The instant of `key`'s value when it is a timestamp packed as its
    /// seconds (`2026-01-01T00:00:00Z`, see [`utc_seconds`]), read without
    /// formatting it back to text; `None` for any other value.
    pub fn utc_instant(&self, key: TraitKey) -> Option<Millis> {
        let entry = self.packed_entry(key)?;
        match entry.tag {
            TAG_UTC_SECONDS => read_varint(entry.payload)?.checked_mul(1000),
            _ => None,
        }
    }

    /// `key`'s packed entry, if its value is packed (entries are sorted
    /// by key: the walk stops past it).
    fn packed_entry(&self, key: TraitKey) -> Option<Packed<'_>> {
        entries(&self.packed)
            .map(|(_, e)| e)
            .take_while(|e| e.key <= key)
            .find(|e| e.key == key)
    }

    /// Number of traits.
    pub fn len(&self) -> usize {
        entries(&self.packed).count() + self.large().len()
    }

    /// Whether no trait is set.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty() && self.large().is_empty()
    }

    /// Every trait, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (TraitKey, Cow<'_, Value>)> + '_ {
        let mut packed = entries(&self.packed).map(|(_, e)| e).peekable();
        let mut large = self.large().iter().peekable();
        std::iter::from_fn(move || match (packed.peek(), large.peek()) {
            (Some(p), Some((k, _))) if *k < p.key => {
                large.next().map(|(k, v)| (*k, Cow::Borrowed(v)))
            }
            (Some(_), _) => packed.next().map(|e| (e.key, Cow::Owned(e.value()))),
            (None, _) => large.next().map(|(k, v)| (*k, Cow::Borrowed(v))),
        })
    }

    /// Appends every trait to `out` as an owned value, in key order.
    pub fn unpack_into(&self, out: &mut Vec<(TraitKey, Value)>) {
        out.extend(self.iter().map(|(k, v)| (k, v.into_owned())));
    }

    /// Traits from `(key, value)` pairs sorted by key, each key once (other
    /// input: [`Traits::from_iter`]).
    pub fn from_sorted(pairs: &[(TraitKey, Value)]) -> Traits {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        let mut packed = Packing::new();
        let mut large = Vec::new();
        for (key, value) in pairs {
            if !pack(*key, value, &mut packed) {
                large.push((*key, value.clone()));
            }
        }
        // Kept for good, rarely changed: no room to grow.
        large.shrink_to_fit();
        Traits {
            // Copied out: `into_boxed_slice` of the inline buffer would
            // allocate its whole capacity, then shrink it.
            packed: ThinBox::from(Box::<[u8]>::from(&packed[..])),
            rare: (!large.is_empty()).then(|| {
                Box::new(RareTraits {
                    large,
                    computed: Vec::new(),
                })
            }),
        }
    }

    /// Replaces the traits set by identify with `pairs` (as
    /// [`Traits::from_sorted`]), keeping the computed traits' values.
    pub fn replace_sorted(&mut self, pairs: &[(TraitKey, Value)]) {
        let computed = self
            .rare
            .take()
            .map(|rare| rare.computed)
            .unwrap_or_default();
        *self = Traits::from_sorted(pairs);
        self.set_computed_list(computed);
    }

    /// Whether the traits set by identify are the same as `other`'s, bit
    /// for bit (a NaN equals itself); the computed traits are not compared.
    pub fn same_set_traits(&self, other: &Traits) -> bool {
        self.packed == other.packed && self.large() == other.large()
    }

    /// Values not packed, sorted by key.
    fn large(&self) -> &[(TraitKey, Value)] {
        self.rare.as_deref().map_or(&[], |rare| &rare.large)
    }

    /// The current values of the computed traits, sorted by slot (a null
    /// value is absent).
    pub fn computed(&self) -> &[(CtId, Value)] {
        self.rare.as_deref().map_or(&[], |rare| &rare.computed)
    }

    /// The kept value of a computed trait (`None`: null).
    pub fn computed_value(&self, ct: CtId) -> Option<&Value> {
        let computed = self.computed();
        computed
            .binary_search_by_key(&ct, |(c, _)| *c)
            .ok()
            .map(|i| &computed[i].1)
    }

    /// Sets (or, with `None`, clears) a computed trait's kept value;
    /// returns the previous one.
    pub fn set_computed(&mut self, ct: CtId, value: Option<Value>) -> Option<Value> {
        if value.is_none() && self.computed().is_empty() {
            return None;
        }
        let list = &mut self.rare.get_or_insert_with(Box::default).computed;
        let previous = match (list.binary_search_by_key(&ct, |(c, _)| *c), value) {
            (Ok(i), Some(v)) => Some(std::mem::replace(&mut list[i].1, v)),
            (Ok(i), None) => Some(list.remove(i).1),
            (Err(i), Some(v)) => {
                crate::profile::grow_one(list);
                list.insert(i, (ct, v));
                None
            }
            (Err(_), None) => None,
        };
        self.drop_empty_rare();
        previous
    }

    /// Replaces every computed trait's kept value with `computed` (sorted
    /// by slot, without nulls).
    pub fn set_computed_list(&mut self, computed: Vec<(CtId, Value)>) {
        debug_assert!(computed.windows(2).all(|w| w[0].0 < w[1].0));
        match &mut self.rare {
            Some(rare) => rare.computed = computed,
            None if computed.is_empty() => {}
            None => {
                self.rare = Some(Box::new(RareTraits {
                    large: Vec::new(),
                    computed,
                }))
            }
        }
        self.drop_empty_rare();
    }

    fn drop_empty_rare(&mut self) {
        if self.rare.as_deref().is_some_and(RareTraits::is_empty) {
            self.rare = None;
        }
    }

    /// Replaces each string kept as a `Value` with `share`'s copy of it
    /// (after a restore, so that profiles share long strings again).
    pub fn share_large(&mut self, mut share: impl FnMut(TraitKey, &Value) -> Value) {
        for (key, value) in self.rare.iter_mut().flat_map(|r| r.large.iter_mut()) {
            *value = share(*key, value);
        }
    }

    /// The first packed byte (0 when none), read to bring the traits into
    /// the cache ahead of their use (see
    /// [`crate::profile::UserData::warm_lists`]).
    pub fn first_byte(&self) -> u8 {
        self.packed.first().copied().unwrap_or(0)
    }

    /// Bytes of the packed traits.
    #[cfg(test)]
    pub(crate) fn packed_len(&self) -> usize {
        self.packed.len()
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.packed.heap_bytes()
            + self.rare.as_deref().map_or(0, |rare| {
                std::mem::size_of::<RareTraits>()
                    + rare.large.capacity() * std::mem::size_of::<(TraitKey, Value)>()
                    + rare.computed.capacity() * std::mem::size_of::<(CtId, Value)>()
                    + rare
                        .large
                        .iter()
                        .chain(&rare.computed)
                        .map(|(_, v)| v.unshared_heap_bytes())
                        .sum::<usize>()
            })
    }
}

impl std::fmt::Debug for Traits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()?;
        match self.computed() {
            [] => Ok(()),
            computed => write!(f, " computed {computed:?}"),
        }
    }
}

/// Traits from pairs in any order; of pairs with the same key, the last.
impl FromIterator<(TraitKey, Value)> for Traits {
    fn from_iter<I: IntoIterator<Item = (TraitKey, Value)>>(iter: I) -> Self {
        let mut pairs: Vec<(TraitKey, Value)> = iter.into_iter().collect();
        // Stable: equal keys stay in order, and the last of each is kept.
        pairs.sort_by_key(|(k, _)| *k);
        let mut last: Vec<(TraitKey, Value)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match last.last_mut() {
                Some(prev) if prev.0 == pair.0 => *prev = pair,
                _ => last.push(pair),
            }
        }
        Traits::from_sorted(&last)
    }
}

/// Stored in snapshots as the list of `(key, value)` pairs it stands for,
/// so their format does not depend on how traits are kept.
impl serde::Serialize for Traits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for (key, value) in self.iter() {
            seq.serialize_element(&(key, value.as_ref()))?;
        }
        seq.end()
    }
}

impl<'de> serde::Deserialize<'de> for Traits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs: Vec<(TraitKey, Value)> = serde::Deserialize::deserialize(d)?;
        // Snapshots hold them sorted; anything else is repaired, not trusted.
        if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            Ok(Traits::from_sorted(&pairs))
        } else {
            Ok(pairs.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// Keys of one to five LEB128 bytes, few enough to repeat.
    fn key() -> impl Strategy<Value = TraitKey> {
        prop_oneof![0u32..12, 120u32..136, 16_380u32..16_390, Just(u32::MAX)]
    }

    /// UTC timestamps in whole seconds (packed as seconds), and strings
    /// that look like them but would not format back the same.
    fn timestamp() -> impl Strategy<Value = String> {
        let seconds = -100_000_000_000i64..100_000_000_000;
        prop_oneof![
            seconds
                .clone()
                .prop_map(|s| format_utc_seconds(s).unwrap().to_string()),
            seconds.prop_map(|s| crate::time::format_timestamp(s * 1000 + 7)),
            Just("2026-01-01T12:00:00+00:00".to_owned()),
            Just("2026-01-01 12:00:00Z".to_owned()),
            Just("2026-02-30T12:00:00Z".to_owned()),
            Just("2026-01-01T24:00:00Z".to_owned()),
            Just("aaaaaaaaaaaaaaaaaaaZ".to_owned()),
        ]
    }

    proptest! {
        /// A string is taken for whole UTC seconds exactly when those
        /// seconds format back as the string.
        #[test]
        fn utc_seconds_are_what_formats_back(
            text in prop_oneof![timestamp(), "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"]
        ) {
            let formats_back = crate::time::parse_timestamp(&text)
                .ok()
                .filter(|ms| ms % 1000 == 0)
                .map(|ms| ms / 1000)
                .filter(|&s| format_utc_seconds(s).is_some_and(|f| f == text));
            prop_assert_eq!(utc_seconds(&text), formats_back);
        }

        /// A timestamp's instant read from its packed seconds is the one
        /// its text parses to; other values, and a missing key, have none.
        #[test]
        fn a_packed_timestamps_instant_is_its_texts(text in timestamp(), key in 2u32..200) {
            let traits = Traits::from_sorted(&[
                (0, Value::Num(1.5)),
                (key, Value::Str(text.as_str().into())),
                (key + 1, Value::Str("2026-01-01".into())),
            ]);
            let instant = traits.utc_instant(key);
            prop_assert_eq!(instant, utc_seconds(&text).map(|s| s * 1000));
            if let Some(ms) = instant {
                prop_assert_eq!(Some(ms), crate::time::parse_timestamp(&text).ok());
            }
            prop_assert_eq!(traits.utc_instant(0), None);
            prop_assert_eq!(traits.utc_instant(key - 1), None);
            prop_assert_eq!(traits.utc_instant(key + 1), None);
            prop_assert_eq!(traits.utc_instant(key + 2), None);
        }
    }

    /// Numbers written with a few decimals (`617.74`), packed as
    /// [`TAG_DECIMAL`], and some with more than it takes.
    fn decimal_number() -> impl Strategy<Value = f64> {
        (-100_000_000_000i64..100_000_000_000, 0i32..6).prop_map(|(k, d)| k as f64 / 10f64.powi(d))
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![
                any::<f64>(),
                -5.0..5.0f64,
                decimal_number(),
                Just(-0.0),
                Just(9_007_199_254_740_993.0),
                Just(-9_007_199_254_740_992.0),
                Just(0.0001),
            ]
            .prop_map(Value::Num),
            any::<i64>().prop_map(Value::Dur),
            "[a-zé]{0,30}".prop_map(|s| Value::Str(s.into())),
            timestamp().prop_map(|s| Value::Str(s.into())),
            proptest::collection::vec("[a-z]{0,3}", 0..3)
                .prop_map(|l| Value::List(l.into_iter().map(Arc::from).collect())),
        ]
    }

    /// NaN compares unequal to itself; the model compares bits instead.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Num(x), Value::Num(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    /// Whether some entry is packed as seconds.
    fn has_seconds(traits: &Traits) -> bool {
        entries(&traits.packed).any(|(_, e)| e.tag == TAG_UTC_SECONDS)
    }

    #[test]
    fn utc_timestamps_pack_as_seconds_and_read_back_the_same_text() {
        let text = "2025-11-20T20:46:30Z";
        let traits = Traits::from_sorted(&[(1, Value::Str(text.into()))]);
        assert!(has_seconds(&traits));
        // key, tag, then the seconds in 5 bytes
        assert_eq!(traits.heap_bytes(), 7);
        assert_eq!(
            traits.get(1).map(Cow::into_owned),
            Some(Value::Str(text.into()))
        );
        for other in [
            "2025-11-20T20:46:30.000Z",
            "2025-11-20T20:46:30+00:00",
            "2025-11-20t20:46:30Z",
        ] {
            let traits = Traits::from_sorted(&[(1, Value::Str(other.into()))]);
            assert!(!has_seconds(&traits), "{other}");
            if other.len() <= PACKED_STR_MAX {
                assert_eq!(traits.heap_bytes(), 2 + other.len(), "{other}");
            }
            assert_eq!(
                traits.get(1).map(Cow::into_owned),
                Some(Value::Str(other.into()))
            );
        }
    }

    proptest! {
        /// Packed traits hold what a sorted map holds (the last value of a
        /// key), list it in key order, and survive a snapshot round trip in
        /// the format of a list of pairs.
        #[test]
        fn packed_traits_hold_what_a_map_holds(
            pairs in proptest::collection::vec((key(), value()), 0..20),
        ) {
            let traits: Traits = pairs.iter().cloned().collect();
            let model: BTreeMap<TraitKey, Value> = pairs.into_iter().collect();
            prop_assert_eq!(traits.len(), model.len());
            prop_assert_eq!(traits.is_empty(), model.is_empty());
            let listed: Vec<(TraitKey, Value)> =
                traits.iter().map(|(k, v)| (k, v.into_owned())).collect();
            prop_assert_eq!(listed.len(), model.len());
            for ((k, v), (mk, mv)) in listed.iter().zip(&model) {
                prop_assert_eq!(k, mk);
                prop_assert!(same(v, mv), "{:?} != {:?}", v, mv);
            }
            for k in 0..13 {
                let got = traits.get(k).map(Cow::into_owned);
                match (got, model.get(&k)) {
                    (Some(g), Some(m)) => prop_assert!(same(&g, m)),
                    (None, None) => {}
                    (g, m) => prop_assert!(false, "key {}: {:?} vs {:?}", k, g, m),
                }
            }
            let bytes = postcard::to_allocvec(&traits).expect("encode");
            let as_list: Vec<(TraitKey, Value)> = model.into_iter().collect();
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&as_list).expect("encode"));
            let back: Traits = postcard::from_bytes(&bytes).expect("decode");
            prop_assert_eq!(back.len(), traits.len());
            prop_assert_eq!(
                postcard::to_allocvec(&back).expect("encode"),
                bytes
            );
        }
    }

    #[test]
    fn numbers_with_few_decimals_pack_as_integers_and_read_back_bit_for_bit() {
        for (n, tag, bytes) in [
            (617.74, TAG_DECIMAL + 2, 5),
            (3.0, TAG_DECIMAL, 3),
            (-1.5, TAG_DECIMAL + 1, 3),
            (0.0, TAG_DECIMAL, 3),
            (0.001, TAG_DECIMAL + 3, 3),
            (1e15, TAG_DECIMAL, 10),
            (-0.0, TAG_NUM, 10),
            (0.0001, TAG_NUM, 10),
            (f64::NAN, TAG_NUM, 10),
            (f64::INFINITY, TAG_NUM, 10),
            (1e300, TAG_NUM, 10),
            (9_007_199_254_740_992.0, TAG_DECIMAL, 10),
        ] {
            let traits = Traits::from_sorted(&[(1, Value::Num(n))]);
            let (_, entry) = entries(&traits.packed).next().unwrap();
            assert_eq!(entry.tag, tag, "{n}");
            assert_eq!(traits.heap_bytes(), bytes, "{n}");
            let back = traits.get(1).map(Cow::into_owned);
            assert!(
                matches!(back, Some(Value::Num(b)) if b.to_bits() == n.to_bits()),
                "{n}"
            );
        }
        for n in [0, 1, -1, 63, -64, 64, 8191, -8192, i64::MAX, i64::MIN] {
            let mut out = Packing::new();
            push_varint(n, &mut out);
            assert_eq!(read_varint(&out), Some(n));
            assert_eq!(varint_len(&out), Some(out.len()));
            assert_eq!(read_varint(&out[..out.len() - 1]), None);
        }
    }

    #[test]
    fn short_values_are_packed_and_long_ones_are_not() {
        let short = [
            (1, Value::Str("US".into())),
            (2, Value::Num(617.74)),
            (3, Value::Bool(true)),
        ];
        let traits = Traits::from_sorted(&short);
        assert!(traits.large().is_empty());
        // key + tag-and-length + 2 bytes, key + tag + 61774 in 3, key + tag
        assert_eq!(traits.heap_bytes(), 4 + 5 + 2);
        // A key past the first 128 takes a second byte.
        assert_eq!(
            Traits::from_sorted(&[(200, Value::Bool(false))]).heap_bytes(),
            3
        );
        let long = Value::Str("Enterprise (annual, invoiced)".into());
        let traits: Traits = short.into_iter().chain([(4, long.clone())]).collect();
        assert_eq!(traits.large().len(), 1);
        assert_eq!(traits.get(4).as_deref(), Some(&long));
        assert_eq!(traits.get(1).as_deref(), Some(&Value::Str("US".into())));
        assert_eq!(traits.get(5), None);
    }
}
