//! The audiences a profile is in, with their entry instants, in one
//! allocation.
//!
//! Most memberships of a profile share their entry instant: an identify
//! puts a new profile into all of its trait audiences at once. On the
//! benchmark workload a profile is in about nine audiences with 0.96
//! distinct entry instants on average. So the list keeps one instant, the
//! *common* one, and each membership as just its audience slot; a
//! membership entered at another instant is listed a second time, with
//! its instant, as an *exception*. As `Vec<Stamped>` the same memberships
//! took 12 bytes each plus growth slack and a 24-byte header.
//!
//! Layout of the `u32`s (the box's length is the capacity):
//! `[slots, exceptions, common low, common high, slot…, (slot, low, high)…, spare…]`,
//! slots ascending, exceptions ascending by slot. An empty list allocates
//! nothing.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::AudId;
use crate::profile::Stamped;
use crate::time::{instant_from_words, instant_words, Millis};

/// Words in front of the slots: their count, the exceptions' count and
/// the common instant.
const HEADER: usize = 4;
/// Words per exception: slot and instant.
const EXCEPTION: usize = 3;

/// A profile's audiences (slots, ascending) and when it entered each.
#[derive(Clone, Default)]
pub struct AudienceList {
    words: Box<[u32]>,
}

impl AudienceList {
    /// A list of `entries`, sorted by slot without repeats; the most
    /// frequent instant becomes the common one.
    pub fn from_sorted(entries: &[Stamped]) -> AudienceList {
        debug_assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
        let Some(common) = most_frequent_instant(entries) else {
            return AudienceList::default();
        };
        let exceptions = entries.iter().filter(|e| e.at() != common).count();
        let mut words = Vec::with_capacity(HEADER + entries.len() + EXCEPTION * exceptions);
        let [low, high] = instant_words(common);
        words.extend([entries.len() as u32, exceptions as u32, low, high]);
        words.extend(entries.iter().map(|e| e.id));
        for entry in entries.iter().filter(|e| e.at() != common) {
            let [low, high] = instant_words(entry.at());
            words.extend([entry.id, low, high]);
        }
        AudienceList {
            words: words.into_boxed_slice(),
        }
    }

    /// How many audiences.
    pub fn len(&self) -> usize {
        self.words.first().map_or(0, |&n| n as usize)
    }

    /// Whether the profile is in no audience.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The audience slots, ascending.
    pub fn slots(&self) -> &[AudId] {
        match self.words.is_empty() {
            true => &[],
            false => &self.words[HEADER..HEADER + self.len()],
        }
    }

    /// Whether the profile is in `aud`.
    pub fn contains(&self, aud: AudId) -> bool {
        self.slots().binary_search(&aud).is_ok()
    }

    /// When the profile entered `aud`, if it is in it.
    pub fn entered(&self, aud: AudId) -> Option<Millis> {
        if !self.contains(aud) {
            return None;
        }
        let exceptions = self.exceptions();
        Some(match self.exception_index(aud) {
            Ok(k) => {
                instant_from_words(exceptions[EXCEPTION * k + 1], exceptions[EXCEPTION * k + 2])
            }
            Err(_) => self.common(),
        })
    }

    /// The memberships with their entry instants, by slot.
    pub fn iter(&self) -> impl Iterator<Item = Stamped> + '_ {
        let exceptions = self.exceptions();
        let common = match self.words.is_empty() {
            true => 0,
            false => self.common(),
        };
        let mut next = 0;
        self.slots().iter().map(move |&aud| {
            if exceptions.get(next) == Some(&aud) {
                let at = instant_from_words(exceptions[next + 1], exceptions[next + 2]);
                next += EXCEPTION;
                Stamped::new(aud, at)
            } else {
                Stamped::new(aud, common)
            }
        })
    }

    /// Makes room for `additional` more memberships at the common instant
    /// in one allocation (a new profile enters a dozen audiences at once).
    pub fn reserve(&mut self, additional: usize) {
        let used = self.used().max(HEADER);
        self.grow_to(used + additional, 0);
    }

    /// Adds `aud`, entered at `at`; false if the profile already is in it.
    pub fn insert(&mut self, aud: AudId, at: Millis) -> bool {
        let [low, high] = instant_words(at);
        if self.is_empty() {
            self.grow_to(HEADER + 1, 0);
            self.words[..HEADER + 1].copy_from_slice(&[1, 0, low, high, aud]);
            return true;
        }
        let position = match self.slots().binary_search(&aud) {
            Ok(_) => return false,
            Err(position) => position,
        };
        let exception = at != self.common();
        let used = self.used();
        let needed = used + 1 + if exception { EXCEPTION } else { 0 };
        self.grow_to(needed, self.spare());
        let slots = self.len();
        self.words
            .copy_within(HEADER + position..used, HEADER + position + 1);
        self.words[HEADER + position] = aud;
        self.words[0] += 1;
        if exception {
            let k = self.exception_index(aud).unwrap_err();
            let start = HEADER + slots + 1 + EXCEPTION * k;
            self.words.copy_within(start..used + 1, start + EXCEPTION);
            self.words[start..start + EXCEPTION].copy_from_slice(&[aud, low, high]);
            self.words[1] += 1;
        }
        true
    }

    /// Removes `aud`; false if the profile was not in it.
    pub fn remove(&mut self, aud: AudId) -> bool {
        let Ok(position) = self.slots().binary_search(&aud) else {
            return false;
        };
        let mut used = self.used();
        // Most lists have no exception: no search then.
        if self.exception_count() > 0 {
            if let Ok(k) = self.exception_index(aud) {
                let start = HEADER + self.len() + EXCEPTION * k;
                self.words.copy_within(start + EXCEPTION..used, start);
                self.words[1] -= 1;
                used -= EXCEPTION;
            }
        }
        self.words
            .copy_within(HEADER + position + 1..used, HEADER + position);
        self.words[0] -= 1;
        used -= 1;
        let (slots, exceptions) = (self.len(), self.exception_count());
        if slots == 0 {
            self.words = Box::default();
        } else if slots == exceptions {
            // No member is left at the common instant: choose it again, so
            // that the list does not keep every instant twice.
            let entries: Vec<Stamped> = self.iter().collect();
            *self = AudienceList::from_sorted(&entries);
        } else if self.words.len() - used > 2 * (self.spare() + EXCEPTION) {
            // Gives memory back once well over the room growth leaves, but
            // not for one exception coming and going: a membership toggling
            // at its own instants would reallocate at every step.
            self.regrow(used + self.spare());
        }
        true
    }

    /// Gives back the room left (at the end of an event: a new profile
    /// enters a dozen audiences of empty profiles at once and leaves most
    /// of them at its first event).
    pub fn trim(&mut self) {
        if self.is_empty() {
            self.words = Box::default();
        } else if self.words.len() > self.used() {
            self.regrow(self.used());
        }
    }

    /// The room growth leaves: a quarter of the length, one at least.
    fn spare(&self) -> usize {
        self.len() / 4 + 1
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.words.len() * std::mem::size_of::<u32>()
    }

    fn common(&self) -> Millis {
        instant_from_words(self.words[2], self.words[3])
    }

    fn exception_count(&self) -> usize {
        self.words.get(1).map_or(0, |&n| n as usize)
    }

    /// The exceptions' words: `(slot, low, high)` each.
    fn exceptions(&self) -> &[u32] {
        if self.words.is_empty() {
            return &[];
        }
        let start = HEADER + self.len();
        &self.words[start..start + EXCEPTION * self.exception_count()]
    }

    /// Where `aud` is (or would go) among the exceptions.
    fn exception_index(&self, aud: AudId) -> Result<usize, usize> {
        let exceptions = self.exceptions();
        let (mut low, mut high) = (0, exceptions.len() / EXCEPTION);
        while low < high {
            let middle = (low + high) / 2;
            match exceptions[EXCEPTION * middle].cmp(&aud) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Equal => return Ok(middle),
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        Err(low)
    }

    /// Words in use.
    fn used(&self) -> usize {
        match self.words.is_empty() {
            true => 0,
            false => HEADER + self.len() + EXCEPTION * self.exception_count(),
        }
    }

    /// Grows the box to at least `needed` words, with `spare` more, when it
    /// is shorter.
    #[inline]
    fn grow_to(&mut self, needed: usize, spare: usize) {
        if self.words.len() < needed {
            self.regrow(needed + spare);
        }
    }

    /// Reallocates the box to `len` words (new ones zero, none in use cut).
    #[cold]
    fn regrow(&mut self, len: usize) {
        debug_assert!(len >= self.used());
        let mut words = std::mem::take(&mut self.words).into_vec();
        words.reserve_exact(len.saturating_sub(words.len()));
        words.resize(len, 0);
        self.words = words.into_boxed_slice();
    }
}

/// The instant most entries share (the earliest of equals), if any.
fn most_frequent_instant(entries: &[Stamped]) -> Option<Millis> {
    let mut instants: Vec<Millis> = entries.iter().map(|e| e.at()).collect();
    instants.sort_unstable();
    let mut best: Option<(usize, Millis)> = None;
    for run in instants.chunk_by(|a, b| a == b) {
        if best.is_none_or(|(count, _)| run.len() > count) {
            best = Some((run.len(), run[0]));
        }
    }
    best.map(|(_, at)| at)
}

impl PartialEq for AudienceList {
    /// Equal memberships and instants, whatever the common instant and
    /// the spare room.
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for AudienceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|s| (s.id, s.at())))
            .finish()
    }
}

/// Serialized as the list of [`Stamped`] it stands for, as the `Vec` it
/// replaced was: snapshots keep their bytes.
impl Serialize for AudienceList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for AudienceList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut entries = Vec::<Stamped>::deserialize(deserializer)?;
        if !entries.windows(2).all(|w| w[0].id < w[1].id) {
            entries.sort_by_key(|e| e.id);
            entries.dedup_by_key(|e| e.id);
        }
        Ok(AudienceList::from_sorted(&entries))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(AudId, Millis),
        Remove(AudId),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few slots and instants, so that inserts collide, exceptions
        // appear and the common instant is left behind.
        prop_oneof![
            (
                0u32..24,
                prop_oneof![
                    Just(5i64),
                    Just(-1),
                    0i64..4,
                    Just(i64::MIN),
                    Just(i64::MAX)
                ]
            )
                .prop_map(|(aud, at)| Op::Insert(aud, at)),
            (0u32..24).prop_map(Op::Remove),
        ]
    }

    fn check(list: &AudienceList, model: &BTreeMap<AudId, Millis>) {
        let expected: Vec<Stamped> = model.iter().map(|(&a, &t)| Stamped::new(a, t)).collect();
        assert_eq!(list.iter().collect::<Vec<_>>(), expected);
        assert_eq!(list.len(), model.len());
        assert_eq!(list.is_empty(), model.is_empty());
        assert_eq!(list.slots(), model.keys().copied().collect::<Vec<_>>());
        for aud in 0..26 {
            assert_eq!(list.contains(aud), model.contains_key(&aud));
            assert_eq!(list.entered(aud), model.get(&aud).copied());
        }
        assert!(list.used() <= list.words.len());
        // Never more room than twice what growth leaves, plus an exception.
        assert!(list.words.len() - list.used() <= 2 * (list.spare() + EXCEPTION) + EXCEPTION);
        // Exceptions exist only beside members at the common instant.
        if !list.is_empty() {
            assert!(list.exception_count() < list.len());
        }
        assert_eq!(list, &AudienceList::from_sorted(&expected));
    }

    proptest! {
        /// Against a map from slot to instant, after every step.
        #[test]
        fn behaves_as_a_sorted_map(ops in proptest::collection::vec(op(), 0..80)) {
            let mut list = AudienceList::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(aud, at) => {
                        let fresh = !model.contains_key(&aud);
                        if fresh {
                            model.insert(aud, at);
                        }
                        prop_assert_eq!(list.insert(aud, at), fresh);
                    }
                    Op::Remove(aud) => {
                        prop_assert_eq!(list.remove(aud), model.remove(&aud).is_some());
                    }
                }
                check(&list, &model);
            }
        }

        /// Serialized as the list of `Stamped` it stands for, byte for byte.
        #[test]
        fn serializes_as_the_stamped_list(entries in proptest::collection::btree_map(0u32..1000, 0i64..3, 0..30)) {
            let stamped: Vec<Stamped> = entries.iter().map(|(&a, &t)| Stamped::new(a, t)).collect();
            let list = AudienceList::from_sorted(&stamped);
            let bytes = postcard::to_allocvec(&list).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&stamped).unwrap());
            let back: AudienceList = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, list);
        }
    }

    #[test]
    fn shares_the_common_instant() {
        let mut list = AudienceList::default();
        for aud in [7, 3, 9, 1] {
            assert!(list.insert(aud, 1_000));
        }
        assert!(list.insert(5, 2_000));
        // Header, five slots and one exception in use (growth left room).
        assert_eq!(list.used(), HEADER + 5 + EXCEPTION);
        assert!(list.words.len() > list.used());
        assert_eq!(list.entered(5), Some(2_000));
        assert_eq!(list.entered(9), Some(1_000));
        let mut trimmed = list.clone();
        trimmed.reserve(12);
        trimmed.trim();
        assert_eq!(trimmed.heap_bytes(), list.used() * 4);
        assert_eq!(trimmed, list);
        for aud in [7, 3, 9, 1] {
            assert!(list.remove(aud));
        }
        // The exception became the common instant.
        assert_eq!(list.exception_count(), 0);
        assert_eq!(list.entered(5), Some(2_000));
        assert!(list.remove(5));
        assert_eq!(list.heap_bytes(), 0);
    }
}
