//! The truths of a trait's tests against literals, kept by the trait's
//! value.
//!
//! A test of one trait against literals (`trait.country in ["US", "CA"]`,
//! `trait.plan == "pro"`) is a function of that trait's value alone, and
//! a catalog holds dozens of them per key: the standard workload's 1,000
//! audiences test `country` 46 times. An identify evaluates every atom of
//! the keys it gives, and string-valued traits repeat a few values, so
//! the truths of all of a key's tests are computed once per value and
//! looked up afterwards (one hash of the value instead of one evaluation
//! per atom). Numbers (a lifetime value) rarely repeat, but a key's tests
//! compare them with a few literals (`ltv > 300`, `ltv between 100 and
//! 1000`): two numbers that compare alike with each literal read every
//! test alike, so a number's truths are kept by its position among the
//! key's literals (seven in the standard workload's audiences, which
//! test `ltv` in 18 ways). Lists (and a NaN) have their truths computed for
//! the one use, still without an evaluation per atom. The table is
//! bounded (in bytes of rows, and in values per key, so that a key of
//! many values does not crowd out the few of `country`).

use std::sync::Arc;

use hashbrown::HashMap;

use crate::catalog::{AtomId, Catalog, LeafTest, TraitKey};
use crate::value::{Value, ValueKey};

/// Bytes of rows kept (one per test, over all keys) before the memo
/// starts afresh.
const MAX_ROW_BYTES: usize = 1 << 20;

/// Values kept per key: past it, a key's values (an email, a zip code
/// under `exists(...)` or a few equality tests) go unkept, so that they
/// do not crowd out the few values of `country` or `plan`.
const MAX_VALUES_PER_KEY: u32 = 1 << 10;

/// Lists of keys kept before [`KeyAtoms`] starts afresh.
const MAX_KEY_LISTS: usize = 1 << 10;

/// The atoms an identify giving a list of trait keys reads: the union of
/// their `by_trait` lists, sorted, and where each trait test among them
/// finds its truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    /// Distinct for every plan made (of any catalog): stands for its list
    /// of atoms in [`crate::first_identify::FirstIdentifyMemo`].
    pub id: u64,
    /// The keys, as the identify gives them.
    pub keys: Box<[TraitKey]>,
    /// The atoms, ascending.
    pub atoms: Box<[AtomId]>,
    /// Per atom: for a test of one of the keys, the key's index in the
    /// list and the atom's position in `by_trait[key]` (the index of its
    /// truth in the key's row, see [`TraitTruths::resolve`]).
    pub tests: Box<[Option<(u32, u32)>]>,
    /// Per key of the list: whether any atom is a test of it (the others,
    /// `created_at` read only by `since`, have no row to look up).
    pub tested: Box<[bool]>,
    /// The atoms that are not tests of one of the keys (`tests` is `None`),
    /// ascending: those evaluated on every identify.
    pub untested: Box<[AtomId]>,
    /// The atoms time alone can change (`since(trait.created_at) < 14d`),
    /// ascending.
    pub timed: Box<[AtomId]>,
    /// Whether every atom's truth on an empty profile is known
    /// ([`Catalog::empty_atom_truth`]): a new profile's truths before its
    /// first identify are then those, with nothing evaluated.
    pub empty_known: bool,
}

impl KeyPlan {
    /// The plan of an identify giving `keys` under `cat`.
    pub fn new(cat: &Catalog, keys: &[TraitKey]) -> KeyPlan {
        let mut atoms: Vec<AtomId> = keys
            .iter()
            .filter_map(|&k| cat.by_trait.get(k as usize))
            .flatten()
            .copied()
            .collect();
        atoms.sort_unstable();
        atoms.dedup();
        let tests: Box<[Option<(u32, u32)>]> = atoms
            .iter()
            .map(|&a| {
                let (key, position) = cat.trait_test[a as usize]?;
                let index = keys.iter().position(|&k| k == key)?;
                Some((index as u32, position))
            })
            .collect();
        let mut tested = vec![false; keys.len()];
        for &(index, _) in tests.iter().flatten() {
            tested[index as usize] = true;
        }
        let empty_known = atoms
            .iter()
            .all(|&a| matches!(cat.empty_atom_truth.get(a as usize), Some(Some(_))));
        let untested = atoms
            .iter()
            .zip(tests.iter())
            .filter(|(_, test)| test.is_none())
            .map(|(&a, _)| a)
            .collect();
        let timed = atoms
            .iter()
            .copied()
            .filter(|&a| cat.atoms[a as usize].timed)
            .collect();
        static PLANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        KeyPlan {
            id: PLANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            untested,
            timed,
            empty_known,
            keys: keys.into(),
            atoms: atoms.into(),
            tests,
            tested: tested.into(),
        }
    }
}

/// The [`KeyPlan`] of each list of trait keys seen: sign-ups give the
/// same few keys again and again, and the union of eighty atoms was
/// sorted afresh for each.
#[derive(Debug, Clone, Default)]
pub struct KeyAtoms {
    /// The catalog generation the entries were made under.
    generation: u64,
    /// Distinct each time the plans start afresh (see [`KeyAtoms::epoch`]).
    epoch: u64,
    lists: HashMap<Box<[TraitKey]>, Arc<KeyPlan>>,
}

impl KeyAtoms {
    /// The plan of an identify giving `keys` under `cat`.
    pub fn plan(&mut self, cat: &Catalog, keys: &[TraitKey]) -> Arc<KeyPlan> {
        if cat.generation != self.generation || self.lists.len() >= MAX_KEY_LISTS {
            static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            self.lists.clear();
            self.generation = cat.generation;
            self.epoch = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(plan) = self.lists.get(keys) {
            return plan.clone();
        }
        let plan = Arc::new(KeyPlan::new(cat, keys));
        self.lists.insert(keys.into(), plan.clone());
        plan
    }

    /// Changes whenever the plans start afresh (another catalog, or too
    /// many lists of keys): the ids of the plans made before are not used
    /// again, so what was kept under them can go.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.lists
            .iter()
            .map(|(k, p)| {
                let entries = p.atoms.len() * 4
                    + p.tests.len() * 12
                    + p.tested.len() * 5
                    + p.untested.len() * 4
                    + p.timed.len() * 4;
                k.len() * 4 + entries + 96
            })
            .sum()
    }
}

/// How the tests of one trait key read a profile's value of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTruths {
    /// The profile has no value (every test is false), or no atom tests
    /// the key (nothing to look up).
    Missing,
    /// The truths are [`TraitTruths::get`] of this entry.
    Entry(u32),
    /// The truths, for a value not kept (a list, a NaN, a value of a key
    /// with many, any value once the memo is full), are
    /// [`TraitTruths::get_unkept`] of this row until the next
    /// [`TraitTruths::begin`].
    Unkept(u32),
}

/// The truths of the trait tests of each key (the atoms of
/// [`Catalog::trait_test`], in `by_trait[key]` order), by value.
#[derive(Debug, Clone, Default)]
pub struct TraitTruths {
    /// The catalog generation the entries were made under.
    generation: u64,
    /// (key, value or number position) to an entry of `truths`.
    index: HashMap<(TraitKey, RowKey), u32>,
    /// Per entry: the truth of each atom of `by_trait[key]` (false at the
    /// positions of atoms that are not trait tests).
    truths: Vec<Box<[bool]>>,
    /// Per entry: its row of `truths` as bits (see
    /// [`TraitTruths::push_row_bits`]).
    bits: Vec<Box<[u64]>>,
    /// Bytes of `truths`' rows.
    row_bytes: usize,
    /// Values (and number positions) kept per key, by key.
    per_key: Vec<u32>,
    /// Rows of the values not kept, until the next `begin`.
    unkept: Vec<Vec<bool>>,
    /// How many of `unkept` are in use.
    unkept_used: usize,
}

/// What a kept row of truths stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RowKey {
    /// A string or boolean value.
    Value(ValueKey),
    /// Every number at this position among the key's
    /// [`Catalog::key_number_cuts`] (see [`position_among`]).
    Numbers(u32),
}

/// Where `n` (not NaN) falls among `cuts` (sorted, distinct, no NaN):
/// `2i + 1` on `cuts[i]`, `2i` between `cuts[i - 1]` and `cuts[i]`. A
/// test compares a number with its number literals only (a literal of
/// another kind reads every number alike: `v == "x"` is false for all,
/// `v not in ["x"]` true), so numbers at one position share every truth
/// of the key's tests.
fn position_among(cuts: &[f64], n: f64) -> u32 {
    let below = cuts.partition_point(|&c| c < n);
    let on = cuts.get(below).is_some_and(|&c| c == n);
    2 * below as u32 + u32::from(on)
}

/// The truths of the tests of `key` (by position in `by_trait[key]`) for
/// `value`, into `row`.
fn fill_row(cat: &Catalog, key: TraitKey, value: Option<&Value>, row: &mut Vec<bool>) {
    let tests: &[Option<LeafTest>] = cat.key_tests.get(key as usize).map_or(&[], Vec::as_slice);
    row.clear();
    row.extend(
        tests
            .iter()
            .map(|test| test.as_ref().is_some_and(|test| test.holds(value))),
    );
}

/// Appends `truths` to `out` as bits, 64 to a word (the first in the lowest
/// bit), the last word padded with zeros.
pub fn pack_bits(truths: &[bool], out: &mut Vec<u64>) {
    out.extend(truths.chunks(64).map(|chunk| {
        chunk
            .iter()
            .enumerate()
            .fold(0u64, |word, (i, &t)| word | (u64::from(t) << i))
    }));
}

impl TraitTruths {
    /// Readies the memo for resolving under `cat`: entries of another
    /// catalog are forgotten, and so is everything once full. Entries stay
    /// valid until the next call.
    pub fn begin(&mut self, cat: &Catalog) {
        if cat.generation != self.generation || self.row_bytes >= MAX_ROW_BYTES {
            self.index.clear();
            self.truths.clear();
            self.bits.clear();
            self.per_key.clear();
            self.row_bytes = 0;
            self.generation = cat.generation;
        }
        self.unkept_used = 0;
    }

    /// How the tests of `key` read `value` under `cat` (for which
    /// [`TraitTruths::begin`] was called): a string or boolean value's
    /// truths, or those of a number's position among the key's literals,
    /// are computed on first sight and kept; a list's or a NaN's (or any
    /// value's once the memo is full) are computed into a row kept until
    /// the next `begin`.
    pub fn resolve(&mut self, cat: &Catalog, key: TraitKey, value: Option<&Value>) -> KeyTruths {
        debug_assert_eq!(cat.generation, self.generation);
        let value_key = match value {
            None => return KeyTruths::Missing,
            Some(Value::Str(s)) => Some(RowKey::Value(ValueKey::Str(s.clone()))),
            Some(Value::Bool(b)) => Some(RowKey::Value(ValueKey::Bool(*b))),
            Some(Value::Num(n)) if !n.is_nan() => {
                let cuts = cat
                    .key_number_cuts
                    .get(key as usize)
                    .map_or(&[][..], |c| &c[..]);
                Some(RowKey::Numbers(position_among(cuts, *n)))
            }
            Some(_) => None,
        };
        if let Some(value_key) = value_key {
            let slot = key as usize;
            if self.per_key.len() <= slot {
                self.per_key.resize(slot + 1, 0);
            }
            let full = self.row_bytes >= MAX_ROW_BYTES || self.per_key[slot] >= MAX_VALUES_PER_KEY;
            match self.index.entry((key, value_key)) {
                hashbrown::hash_map::Entry::Occupied(found) => {
                    return KeyTruths::Entry(*found.get());
                }
                hashbrown::hash_map::Entry::Vacant(vacant) if !full => {
                    let mut row = Vec::new();
                    fill_row(cat, key, value, &mut row);
                    let entry = self.truths.len() as u32;
                    self.row_bytes += row.len();
                    self.per_key[slot] += 1;
                    let mut bits = Vec::new();
                    pack_bits(&row, &mut bits);
                    self.bits.push(bits.into_boxed_slice());
                    self.truths.push(row.into_boxed_slice());
                    vacant.insert(entry);
                    return KeyTruths::Entry(entry);
                }
                hashbrown::hash_map::Entry::Vacant(_) => {}
            }
        }
        if self.unkept.len() == self.unkept_used {
            self.unkept.push(Vec::new());
        }
        fill_row(cat, key, value, &mut self.unkept[self.unkept_used]);
        self.unkept_used += 1;
        KeyTruths::Unkept(self.unkept_used as u32 - 1)
    }

    /// The truths of an entry, by position in `by_trait[key]`.
    pub fn get(&self, entry: u32) -> &[bool] {
        &self.truths[entry as usize]
    }

    /// The truths of an unkept row, by position in `by_trait[key]`.
    pub fn get_unkept(&self, row: u32) -> &[bool] {
        &self.unkept[row as usize]
    }

    /// Appends the truths `found` (of `key`'s tests, resolved since the
    /// last [`TraitTruths::begin`]) as bits: `key_tests[key].len()` of them
    /// in whole words, all false for a missing value. Two values' bits are
    /// equal exactly when every test of the key reads them alike.
    pub fn push_row_bits(
        &self,
        cat: &Catalog,
        key: TraitKey,
        found: KeyTruths,
        out: &mut Vec<u64>,
    ) {
        match found {
            KeyTruths::Entry(e) => out.extend_from_slice(&self.bits[e as usize]),
            KeyTruths::Unkept(r) => pack_bits(&self.unkept[r as usize], out),
            KeyTruths::Missing => {
                let tests = cat.key_tests.get(key as usize).map_or(0, Vec::len);
                out.extend(std::iter::repeat_n(0, tests.div_ceil(64)));
            }
        }
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let rows: usize = self.row_bytes
            + self.bits.iter().map(|b| b.len() * 8).sum::<usize>()
            + self.truths.len() * 32
            + self.per_key.capacity() * 4
            + self.unkept.iter().map(|r| r.capacity() + 24).sum::<usize>();
        rows + self.index.capacity() * (std::mem::size_of::<(TraitKey, RowKey)>() + 5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use proptest::prelude::*;

    fn catalog(rules: &[&str]) -> Catalog {
        let mut cat = Catalog::default();
        for (i, rule) in rules.iter().enumerate() {
            cat.define_rule(&format!("a{i}"), rule);
        }
        cat
    }

    fn truths_of(
        cat: &Catalog,
        memo: &mut TraitTruths,
        key: &str,
        value: Option<Value>,
    ) -> Vec<bool> {
        let k = cat.trait_keys.get(key).expect("key");
        memo.begin(cat);
        match memo.resolve(cat, k, value.as_ref()) {
            KeyTruths::Entry(e) => memo.get(e).to_vec(),
            KeyTruths::Missing => vec![false; cat.by_trait[k as usize].len()],
            KeyTruths::Unkept(r) => memo.get_unkept(r).to_vec(),
        }
    }

    #[test]
    fn each_value_gets_the_truths_of_every_test_of_its_key() {
        let cat = catalog(&[
            r#"trait.country == "US""#,
            r#"trait.country in ["US", "CA"]"#,
            r#"trait.country != "CA" and trait.plan == "pro""#,
            r#"trait.country == trait.home"#,
        ]);
        let mut memo = TraitTruths::default();
        let us = truths_of(&cat, &mut memo, "country", Some(Value::Str("US".into())));
        let ca = truths_of(&cat, &mut memo, "country", Some(Value::Str("CA".into())));
        let k = cat.trait_keys.get("country").expect("key");
        let atoms = &cat.by_trait[k as usize];
        for (i, &a) in atoms.iter().enumerate() {
            let atom = &cat.atoms[a as usize];
            match &atom.test {
                Some((_, test)) => {
                    assert_eq!(us[i], test.holds(Some(&Value::Str("US".into()))));
                    assert_eq!(ca[i], test.holds(Some(&Value::Str("CA".into()))));
                }
                // `trait.country == trait.home` reads two keys: not a test
                // of one, and left to evaluation.
                None => {
                    assert_eq!(cat.trait_test[a as usize], None);
                    assert!(!us[i] && !ca[i]);
                }
            }
        }
        assert_eq!(us.iter().filter(|&&t| t).count(), 3);
        assert_eq!(ca.iter().filter(|&&t| t).count(), 1);
        // Seen again: the same entry, no new row.
        let rows = memo.truths.len();
        assert_eq!(
            truths_of(&cat, &mut memo, "country", Some(Value::Str("US".into()))),
            us
        );
        assert_eq!(memo.truths.len(), rows);
        memo.begin(&cat);
        assert_eq!(memo.resolve(&cat, k, None), KeyTruths::Missing);
        // A number is kept by its position among the key's numbers (none
        // here: every number reads the tests of `country` alike).
        let one = memo.resolve(&cat, k, Some(&Value::Num(1.0)));
        assert!(matches!(one, KeyTruths::Entry(_)));
        assert_eq!(memo.resolve(&cat, k, Some(&Value::Num(2.0))), one);
        assert_eq!(memo.truths.len(), rows + 1);
        // A NaN (no position) and a list are not kept: their rows last
        // until the next `begin`.
        assert_eq!(
            memo.resolve(&cat, k, Some(&Value::Num(f64::NAN))),
            KeyTruths::Unkept(0)
        );
        assert_eq!(memo.get_unkept(0), &vec![false; atoms.len()][..]);
        let list = Value::List(vec!["US".into()].into());
        assert_eq!(memo.resolve(&cat, k, Some(&list)), KeyTruths::Unkept(1));
        memo.begin(&cat);
        assert_eq!(
            memo.resolve(&cat, k, Some(&Value::Num(f64::NAN))),
            KeyTruths::Unkept(0)
        );
        assert_eq!(memo.truths.len(), rows + 1);
        // Full: values are no longer kept, and those kept stay valid until
        // the next `begin`, which starts afresh.
        let kept = memo.resolve(&cat, k, Some(&Value::Str("US".into())));
        memo.row_bytes = MAX_ROW_BYTES;
        assert!(matches!(
            memo.resolve(&cat, k, Some(&Value::Str("MX".into()))),
            KeyTruths::Unkept(_)
        ));
        assert_eq!(memo.resolve(&cat, k, Some(&Value::Str("US".into()))), kept);
        memo.begin(&cat);
        assert!(memo.truths.is_empty());
        // A key with many values stops keeping new ones, not the others.
        memo.per_key.resize(k as usize + 1, 0);
        memo.per_key[k as usize] = MAX_VALUES_PER_KEY;
        assert!(matches!(
            memo.resolve(&cat, k, Some(&Value::Str("MX".into()))),
            KeyTruths::Unkept(_)
        ));
        let plan = cat.trait_keys.get("plan").expect("key");
        assert!(matches!(
            memo.resolve(&cat, plan, Some(&Value::Str("pro".into()))),
            KeyTruths::Entry(_)
        ));
    }

    #[test]
    fn a_number_falls_between_or_on_the_keys_numbers() {
        let cuts = [-1.0, 0.0, 2.5];
        let at = |n: f64| position_among(&cuts, n);
        assert_eq!(
            [
                f64::NEG_INFINITY,
                -1.0,
                -0.5,
                -0.0,
                0.0,
                1.0,
                2.5,
                3.0,
                f64::INFINITY
            ]
            .map(at),
            [0, 1, 2, 3, 3, 4, 5, 6, 6]
        );
        assert_eq!(position_among(&[], 7.0), 0);
        let cat = catalog(&[
            "trait.ltv > 300 and trait.plan == \"pro\"",
            "trait.ltv between 100 and 1000",
            "trait.ltv in [5, \"x\", -0] or 300 <= trait.ltv",
            "trait.ltv between 1 and \"z\"",
        ]);
        let k = cat.trait_keys.get("ltv").expect("key");
        // (`-0` and `0` are one number; the `1` that bounds a string is a
        // needless cut, and harmless.)
        let cuts = [0.0, 1.0, 5.0, 100.0, 300.0, 1000.0];
        assert_eq!(&cat.key_number_cuts[k as usize][..], &cuts);
    }

    /// A rule testing `trait.v` against number literals, and sometimes
    /// against a string, a duration or a boolean (which read every number
    /// alike).
    fn number_test() -> impl Strategy<Value = String> {
        let lit = prop_oneof![
            (-4i32..4).prop_map(|n| f64::from(n) / 2.0),
            Just(0.0),
            Just(-0.0)
        ];
        // Literals of other kinds, which read every number alike.
        let other = prop_oneof![Just("\"1\""), Just("7d"), Just("true")];
        let op = prop_oneof![
            Just(">"),
            Just(">="),
            Just("<"),
            Just("<="),
            Just("=="),
            Just("!=")
        ];
        prop_oneof![
            (op.clone(), lit.clone()).prop_map(|(op, k)| format!("trait.v {op} {k:?}")),
            (op.clone(), lit.clone()).prop_map(|(op, k)| format!("{k:?} {op} trait.v")),
            (op, other.clone()).prop_map(|(op, k)| format!("trait.v {op} {k}")),
            (lit.clone(), lit.clone(), any::<bool>()).prop_map(|(a, b, not)| {
                let not = if not { "not " } else { "" };
                format!("trait.v {not}between {a:?} and {b:?}")
            }),
            (lit.clone(), other.clone(), any::<bool>()).prop_map(|(a, b, not)| {
                let not = if not { "not " } else { "" };
                format!("trait.v {not}between {a:?} and {b}")
            }),
            (
                proptest::collection::vec(lit, 1..4),
                proptest::option::of(other),
                any::<bool>()
            )
                .prop_map(|(list, other, not)| {
                    let mut items: Vec<String> = list.iter().map(|k| format!("{k:?}")).collect();
                    items.extend(other.map(str::to_string));
                    let not = if not { "not " } else { "" };
                    format!("trait.v {not}in [{}]", items.join(", "))
                }),
            Just("exists(trait.v)".to_string()),
        ]
    }

    proptest! {
        /// Every number gets, through the row kept for its position, the
        /// truths its own evaluation gives, whichever number of that
        /// position made the row.
        #[test]
        fn a_numbers_row_is_its_own_truths(
            rules in proptest::collection::vec(number_test(), 1..8),
            numbers in proptest::collection::vec(
                prop_oneof![
                    (-5i32..5).prop_map(|n| f64::from(n) / 2.0),
                    (-12i32..12).prop_map(|n| f64::from(n) / 4.0 + 1e-9),
                    Just(-0.0),
                    Just(f64::MAX),
                    Just(f64::MIN_POSITIVE),
                    Just(f64::INFINITY),
                    Just(f64::NEG_INFINITY),
                    Just(f64::NAN),
                ],
                1..24,
            ),
        ) {
            let texts: Vec<&str> = rules.iter().map(String::as_str).collect();
            let cat = catalog(&texts);
            let k = cat.trait_keys.get("v").expect("key");
            let mut memo = TraitTruths::default();
            for n in numbers {
                let got = truths_of(&cat, &mut memo, "v", Some(Value::Num(n)));
                let want: Vec<bool> = cat.key_tests[k as usize]
                    .iter()
                    .map(|t| t.as_ref().is_some_and(|t| t.holds(Some(&Value::Num(n)))))
                    .collect();
                prop_assert_eq!(got, want, "{}", n);
            }
        }
    }

    #[test]
    fn a_key_lists_plan_is_the_union_of_the_keys_atoms_and_their_tests() {
        let cat = catalog(&[
            r#"trait.country == "US""#,
            r#"trait.plan == "pro" and trait.ltv > 3"#,
            r#"trait.country == trait.plan"#,
            r#"trait.home > trait.ltv"#,
        ]);
        let key = |name: &str| cat.trait_keys.get(name).expect("key");
        let keys = [key("plan"), key("country")];
        let mut memo = KeyAtoms::default();
        let plan = memo.plan(&cat, &keys);
        let mut expected: Vec<AtomId> = keys
            .iter()
            .flat_map(|&k| cat.by_trait[k as usize].iter().copied())
            .collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(&plan.atoms[..], &expected[..]);
        assert_eq!(&plan.keys[..], &keys[..]);
        // The atom reading both keys is listed once, and is not a test.
        assert_eq!(plan.atoms.len(), 3);
        for (&a, &test) in plan.atoms.iter().zip(plan.tests.iter()) {
            match cat.trait_test[a as usize] {
                Some((k, position)) => {
                    let index = keys.iter().position(|&x| x == k).expect("given") as u32;
                    assert_eq!(test, Some((index, position)));
                    assert_eq!(cat.by_trait[k as usize][position as usize], a);
                }
                None => assert_eq!(test, None),
            }
        }
        assert_eq!(plan.tests.iter().filter(|t| t.is_some()).count(), 2);
        assert_eq!(&plan.tested[..], &[true, true]);
        assert_eq!(
            &memo.plan(&cat, &[key("ltv"), key("home")]).tested[..],
            &[true, false]
        );
        assert!(Arc::ptr_eq(&plan, &memo.plan(&cat, &keys)));
        assert_eq!(
            &memo.plan(&cat, &[key("ltv")]).atoms[..],
            &cat.by_trait[key("ltv") as usize][..]
        );
        assert!(memo.plan(&cat, &[]).atoms.is_empty());
    }

    #[test]
    fn the_plans_epoch_changes_when_they_start_afresh() {
        let cat = catalog(&[r#"trait.plan == "pro""#]);
        let mut plans = KeyAtoms::default();
        let plan = plans.plan(&cat, &[1]);
        let epoch = plans.epoch();
        // The same lists of keys keep their plans and the epoch.
        for list in 2..MAX_KEY_LISTS as TraitKey {
            let _ = plans.plan(&cat, &[list]);
        }
        assert!(Arc::ptr_eq(&plan, &plans.plan(&cat, &[1])));
        assert_eq!(plans.epoch(), epoch);
        let _ = plans.plan(&cat, &[MAX_KEY_LISTS as TraitKey]);
        assert_eq!(plans.epoch(), epoch);
        // A list past the most kept starts afresh: new plans (new ids), new
        // epoch.
        let _ = plans.plan(&cat, &[MAX_KEY_LISTS as TraitKey + 1]);
        assert_ne!(plans.epoch(), epoch);
        let again = plans.plan(&cat, &[1]);
        assert_ne!(again.id, plan.id);
        // So does another catalog.
        let epoch = plans.epoch();
        let mut other = cat.clone();
        other.generation += 1;
        let _ = plans.plan(&other, &[1]);
        assert_ne!(plans.epoch(), epoch);
    }

    #[test]
    fn another_catalog_starts_afresh() {
        let first = catalog(&[r#"trait.plan == "pro""#]);
        let mut second = first.clone();
        second.generation += 1;
        let mut memo = TraitTruths::default();
        let k = first.trait_keys.get("plan").expect("key");
        let pro = Value::Str("pro".into());
        memo.begin(&first);
        let _ = memo.resolve(&first, k, Some(&pro));
        assert_eq!(memo.truths.len(), 1);
        memo.begin(&second);
        let _ = memo.resolve(&second, k, Some(&pro));
        assert_eq!(memo.truths.len(), 1);
        assert_eq!(memo.generation, second.generation);
    }
}
