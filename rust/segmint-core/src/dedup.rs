//! The message ids seen within the deduplication window: an event whose
//! `messageId` was seen less than the window ago is a retry and is dropped.
//!
//! An id is kept as its [`Fingerprint`], a 128-bit keyed hash, rather than
//! as its text: 24 bytes in its table slot and no allocation of its own,
//! where the text took an allocation with a 16-byte header and a slot of
//! 24 bytes (a 36-character UUID came to about 80–110 bytes). A new id
//! whose fingerprint equals a held one's would be taken for a retry: with
//! n ids held that has a chance of about n/2¹²⁸ per id. The hash is
//! SipHash-1-3 under a random key of the set's own (kept in snapshots), so
//! without the key ids cannot be made up ahead to collide, nor to crowd one
//! part of the table: XXH3 and other unkeyed hashes are open to both. A
//! part's table is shrunk at its sweep when a burst left it far larger
//! than what it holds.
//!
//! The ids are spread by hash over [`PARTS`] parts, and old ids are swept
//! part by part: a part comes due once it has doubled since its last sweep
//! (and holds at least [`MIN_SWEEP`]), so each part holds at most about
//! twice the ids that were still in the window at its last sweep (plus
//! what comes while it waits its turn), at an amortised cost of one pass
//! per doubling. A call sweeps one due part, and more only as far as the ids
//! it accepted pay for ([`SeenMessages::expire`]): parts grow at the same
//! rate and come due together, and sweeping them all at once would stall
//! the call as a sweep of the whole set did. (Unique ids at a steady rate,
//! 60 s window, mimalloc, on the 2-core AMD EPYC of BENCHMARKS.md at
//! c0a50d6, the ids then held as text: the slowest call of 1,000 ids took
//! 100–129 ms with 1.55 M ids held and 0.54–0.75 s with 9.8 M when the
//! whole set was swept at once, and 3–4 ms and 13–15 ms swept by parts;
//! the program is not kept. docs/durability.md has the figures retaken
//! with fingerprints.)

use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use siphasher::sip128::SipHasher13;

use crate::time::Millis;

/// A message id's SipHash-1-3 128-bit hash under the set's key
/// ([`SeenMessages::key`]), which the set keeps in place of the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u64; 2]);

impl Fingerprint {
    /// The 16 bytes a snapshot stores (the hash as a little-endian u128).
    pub fn to_bytes(self) -> [u8; 16] {
        (u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)).to_le_bytes()
    }

    /// The fingerprint [`Fingerprint::to_bytes`] gave.
    pub fn from_bytes(bytes: [u8; 16]) -> Fingerprint {
        let hash = u128::from_le_bytes(bytes);
        Fingerprint([hash as u64, (hash >> 64) as u64])
    }

    /// The table hash: the low word, as uniform as the rest.
    fn table_hash(self) -> u64 {
        self.0[0]
    }
}

/// A fresh random key, from two of the standard library's randomly keyed
/// hashers hashing constants. Their keys are drawn from the operating
/// system once per thread (later ones step from those), so two sets' keys
/// differ but are not independent: the key needs only to be unknown
/// outside the process and its data directory.
fn random_key() -> [u8; 16] {
    let low = RandomState::new().hash_one(0u8);
    let high = RandomState::new().hash_one(1u8);
    Fingerprint([low, high]).to_bytes()
}

/// How many parts the ids are spread over: one bit each in
/// [`SeenMessages::due`].
const PARTS: usize = 64;
const _: () = assert!(PARTS == u64::BITS as usize);

/// The fewest ids a part holds before it is swept. (Two in the tests, so
/// that short random streams reach the sweeps.)
#[cfg(not(test))]
const MIN_SWEEP: usize = 16;
#[cfg(test)]
const MIN_SWEEP: usize = 2;

/// A part whose table has room for more than this many times the ids it
/// is swept at is shrunk at its sweep (see [`SeenMessages::expire`]).
const SHRINK_FACTOR: usize = 4;

/// Entries a sweep may go over per id accepted. A part is swept when it
/// has doubled, going over twice the ids it gained since: twice that
/// keeps the sweeps ahead of the parts coming due.
const SWEEP_CREDIT: usize = 4;

/// The part of an id's table hash. Bits 40..46: hashbrown places an entry
/// by the hash's low bits and tags it with the top seven, so a part chosen
/// by either would leave its table with fewer distinct places or tags.
fn part_of(hash: u64) -> usize {
    ((hash >> 40) as usize) % PARTS
}

/// The size at which a part of `len` ids (just swept or restored) is swept
/// next: when it has doubled.
fn next_sweep(len: usize) -> usize {
    (2 * len).max(MIN_SWEEP)
}

/// The part of `id` and its entry there: one lookup.
fn entry_of(parts: &mut [Part], id: Fingerprint) -> (usize, Entry<'_, (Fingerprint, Millis)>) {
    let hash = id.table_hash();
    let index = part_of(hash);
    let entry =
        parts[index]
            .ids
            .entry(hash, |(seen, _)| *seen == id, |(seen, _)| seen.table_hash());
    (index, entry)
}

/// The ids of one part, with the instant each was last accepted.
#[derive(Debug, Clone)]
struct Part {
    ids: HashTable<(Fingerprint, Millis)>,
    /// The size at which this part is swept next.
    sweep_at: usize,
}

/// Message ids, as keyed fingerprints, with the instant each was last
/// accepted. (Its `Debug` leaves the key out.)
#[derive(Clone)]
pub struct SeenMessages {
    parts: Vec<Part>,
    /// Keyed with the fingerprints' key (which it gives back).
    hasher: SipHasher13,
    /// Ids held, over all parts.
    len: usize,
    /// Parts that reached their sweep size, one bit each: swept by
    /// [`SeenMessages::expire`].
    due: u64,
    /// The part the next sweep starts looking from.
    next_part: usize,
    /// Entries the sweeps may go over beyond one part per call: earned by
    /// the ids accepted since the last [`SeenMessages::expire`].
    credit: usize,
}

impl std::fmt::Debug for SeenMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenMessages")
            .field("len", &self.len)
            .field("due", &format_args!("{:#x}", self.due))
            .field("next_part", &self.next_part)
            .finish_non_exhaustive()
    }
}

impl Default for SeenMessages {
    /// An empty set with a random key.
    fn default() -> Self {
        SeenMessages::with_key(random_key())
    }
}

impl SeenMessages {
    /// An empty set whose fingerprints use `key`.
    pub(crate) fn with_key(key: [u8; 16]) -> Self {
        let parts = (0..PARTS)
            .map(|_| Part {
                ids: HashTable::new(),
                sweep_at: MIN_SWEEP,
            })
            .collect();
        Self {
            parts,
            hasher: SipHasher13::new_with_key(&key),
            len: 0,
            due: 0,
            next_part: 0,
            credit: 0,
        }
    }

    /// A set restored from a snapshot: its key and its entries (an id
    /// given twice keeps its later instant); each part is swept next when
    /// it has doubled.
    pub(crate) fn restored(
        key: [u8; 16],
        entries: impl IntoIterator<Item = (Fingerprint, Millis)>,
    ) -> Self {
        let mut set = SeenMessages::with_key(key);
        for (id, at) in entries {
            match entry_of(&mut set.parts, id).1 {
                Entry::Occupied(mut seen) => seen.get_mut().1 = seen.get().1.max(at),
                Entry::Vacant(vacant) => {
                    vacant.insert((id, at));
                    set.len += 1;
                }
            }
        }
        for part in &mut set.parts {
            part.sweep_at = next_sweep(part.ids.len());
        }
        set
    }

    /// The key the fingerprints are hashed with (snapshots keep it).
    pub(crate) fn key(&self) -> [u8; 16] {
        self.hasher.key()
    }

    /// The fingerprint of `id` under this set's key.
    pub(crate) fn fingerprint(&self, id: &str) -> Fingerprint {
        let hash = self.hasher.hash(id.as_bytes());
        Fingerprint([hash.h1, hash.h2])
    }

    /// Accepts `id` at `now` unless it was accepted after `cutoff` (then
    /// the event is a retry: false, and its instant stays). An id still in
    /// the set may have been accepted before the cutoff (sweeps are
    /// amortised): then it is new again. One hash and one lookup.
    pub fn accept(&mut self, id: &str, now: Millis, cutoff: Millis) -> bool {
        let id = self.fingerprint(id);
        let (index, entry) = entry_of(&mut self.parts, id);
        match entry {
            Entry::Occupied(mut seen) if seen.get().1 <= cutoff => {
                seen.get_mut().1 = now;
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(vacant) => {
                vacant.insert((id, now));
                self.len += 1;
                self.credit = self.credit.saturating_add(SWEEP_CREDIT);
                let part = &self.parts[index];
                if part.ids.len() >= part.sweep_at {
                    self.due |= 1 << index;
                }
                true
            }
        }
    }

    /// Sweeps parts that have doubled since their last sweep: forgets
    /// their ids accepted at or before `cutoff`. One part always; more
    /// only while the ids accepted since earn it ([`SWEEP_CREDIT`] entries
    /// each), so the sweeps keep pace with the set without the parts that
    /// come due together being swept in one call. Due parts are taken in
    /// turn from where the last call stopped.
    pub fn expire(&mut self, cutoff: Millis) {
        let mut swept = false;
        while self.due != 0 {
            let turn = self
                .due
                .rotate_right(self.next_part as u32)
                .trailing_zeros() as usize;
            let index = (turn + self.next_part) % PARTS;
            let part = &mut self.parts[index];
            let before = part.ids.len();
            if swept && self.credit < before {
                break;
            }
            part.ids.retain(|(_, at)| *at > cutoff);
            part.sweep_at = next_sweep(part.ids.len());
            // `retain` keeps the table's size: after a burst, a table with
            // room for more than four sweeps' worth gives it back (to room
            // for its next sweep, so it does not grow again before then).
            if part.ids.capacity() > SHRINK_FACTOR * part.sweep_at {
                part.ids.shrink_to(part.sweep_at, |(id, _)| id.table_hash());
            }
            self.len -= before - part.ids.len();
            self.credit = self.credit.saturating_sub(before);
            self.due &= !(1 << index);
            self.next_part = (index + 1) % PARTS;
            swept = true;
        }
        // Earned by this call's ids only: credit saved while no part was
        // due would let the parts that come due together go in one call.
        self.credit = 0;
    }

    /// How many ids are held (some may be past the window).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The held ids' fingerprints with the instant each was last
    /// accepted, in no particular order (snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (Fingerprint, Millis)> + '_ {
        self.parts.iter().flat_map(|part| part.ids.iter().copied())
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let tables: usize = self.parts.iter().map(|p| p.ids.allocation_size()).sum();
        self.parts.capacity() * std::mem::size_of::<Part>() + tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECOND;

    /// The key 00, 01, … 0f of SipHash's reference test vectors.
    const KEY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn a_retry_inside_the_window_is_a_duplicate_and_outside_it_is_not() {
        let mut seen = SeenMessages::default();
        assert!(seen.accept("m1", 100 * SECOND, 0));
        // A retry inside the window: refused, and the window does not move.
        assert!(!seen.accept("m1", 120 * SECOND, 50 * SECOND));
        assert!(!seen.accept("m1", 150 * SECOND, 99 * SECOND));
        // Past it: accepted again, and the window starts over.
        assert!(seen.accept("m1", 200 * SECOND, 100 * SECOND));
        assert!(!seen.accept("m1", 210 * SECOND, 150 * SECOND));
        assert!(seen.accept("m2", 210 * SECOND, 150 * SECOND));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn the_set_stays_within_about_two_windows_of_ids() {
        // One id per second for a day, with a window of one minute, swept
        // (as the engine does) after each batch of 37: the set never holds
        // more than the parts' first sweep sizes and a batch.
        let window = 60 * SECOND;
        let mut seen = SeenMessages::default();
        let mut most = 0;
        for i in 0..86_400i64 {
            let now = i * SECOND;
            assert!(seen.accept(&format!("m{i}"), now, now - window));
            if i % 37 == 36 {
                seen.expire(now - window);
            }
            most = most.max(seen.len());
        }
        assert!(most <= 2 * 60 + PARTS * MIN_SWEEP + 37, "held {most} ids");
        assert!(seen.heap_bytes() > 0);
    }

    #[test]
    fn a_burst_gives_its_room_back_at_the_sweeps() {
        // 200,000 ids in one burst, then, once it has left the window, a
        // steady 100 per call, each in the window for 10 calls: when every
        // part has been swept, the tables hold room for about the steady
        // ids only.
        let window = 10;
        let mut seen = SeenMessages::default();
        for i in 0..200_000 {
            assert!(seen.accept(&format!("b{i}"), 0, -window));
        }
        let after_burst = seen.heap_bytes();
        let mut next = 0u64;
        for now in window + 1..2_000 {
            for _ in 0..100 {
                assert!(seen.accept(&format!("s{next}"), now, now - window));
                next += 1;
            }
            seen.expire(now - window);
        }
        assert!(seen.len() < 10_000, "held {}", seen.len());
        let steady = seen.heap_bytes();
        assert!(
            steady * 10 < after_burst,
            "{steady} bytes against {after_burst}"
        );
    }

    #[test]
    fn a_sweep_covers_one_part_at_a_time() {
        // A window of 1,000 calls, a steady 100 ids per call: once the
        // parts are past their first sweeps, no call sweeps more than two
        // of them, where a whole-set sweep went over every id at once.
        let window = 1_000;
        let mut seen = SeenMessages::default();
        let mut next = 0u64;
        let (mut most_swept, mut most_held) = (0, 0);
        for now in 0..10_000i64 {
            for _ in 0..100 {
                assert!(seen.accept(&format!("m{next}"), now, now - window));
                next += 1;
            }
            let due = seen.due.count_ones();
            seen.expire(now - window);
            let swept = due - seen.due.count_ones();
            if now > 3 * window {
                most_swept = most_swept.max(swept);
            }
            most_held = most_held.max(seen.len());
        }
        assert!(most_swept <= 2, "{most_swept} parts swept in one call");
        // And the set stays within about two windows, and what comes in
        // while a due part waits its turn (at most a call per part).
        let bound = 2 * 100 * 1_001 + PARTS * 100 + PARTS * MIN_SWEEP;
        assert!(most_held <= bound, "held {most_held} ids");
    }

    #[test]
    fn a_restored_set_keeps_its_ids_and_key() {
        let keyed = SeenMessages::with_key(KEY);
        let (a, b) = (keyed.fingerprint("a"), keyed.fingerprint("b"));
        let restored = SeenMessages::restored(KEY, [(a, 6), (b, 7), (a, 5)]);
        assert_eq!(restored.key(), KEY);
        // `a` given twice keeps its later instant.
        assert!(!restored.clone().accept("a", 9, 5));
        assert!(restored.clone().accept("b", 9, 7));
        let ids: std::collections::HashMap<_, _> = restored.iter().collect();
        assert_eq!(ids, [(a, 6), (b, 7)].into_iter().collect());
        assert_eq!(restored.len(), 2);
        // Under another key the same ids are other fingerprints.
        assert_ne!(SeenMessages::default().fingerprint("a"), a);
    }

    #[test]
    fn fingerprints_are_siphash_1_3_128_under_the_key() {
        // Snapshots store fingerprints with their key: a build that hashed
        // differently would take none of a restored set's ids for retries.
        // The values come from a separate Python SipHash (which gives the
        // reference vectors of SipHash-2-4-128 with 2 and 4 rounds), one
        // per length class of the input's 8-byte blocks and tail.
        let vectors: [(String, [u8; 16]); 6] = [
            (
                String::new(),
                [
                    231, 126, 188, 178, 39, 136, 165, 190, 253, 98, 219, 106, 221, 48, 48, 1,
                ],
            ),
            (
                "m42-0".into(),
                [
                    66, 198, 0, 183, 223, 132, 103, 253, 68, 80, 186, 69, 57, 47, 24, 32,
                ],
            ),
            (
                "0123456789abcdef".into(),
                [
                    208, 189, 58, 171, 212, 170, 20, 0, 42, 79, 200, 178, 127, 207, 212, 74,
                ],
            ),
            (
                "6ba7b810-9dad-11d1-80b4-00c04fd430c8".into(),
                [
                    164, 110, 182, 219, 180, 217, 216, 100, 235, 69, 29, 51, 66, 199, 38, 25,
                ],
            ),
            (
                "x".repeat(200),
                [
                    231, 106, 106, 232, 87, 87, 161, 196, 85, 193, 35, 76, 104, 180, 80, 189,
                ],
            ),
            (
                "ab".repeat(512),
                [
                    246, 115, 187, 252, 58, 126, 220, 160, 224, 46, 186, 247, 128, 243, 253, 55,
                ],
            ),
        ];
        let keyed = SeenMessages::with_key(KEY);
        for (id, bytes) in vectors {
            let fingerprint = keyed.fingerprint(&id);
            assert_eq!(fingerprint.to_bytes(), bytes, "{} bytes", id.len());
            assert_eq!(Fingerprint::from_bytes(bytes), fingerprint);
        }
        // Each set draws its own key.
        assert_ne!(SeenMessages::default().key(), SeenMessages::default().key());
    }

    proptest::proptest! {
        /// Against a model that keeps every id forever: the same answers,
        /// and after each expiry the held ids are those of the model that
        /// the sweeps may not yet have reached (accepted at or before the
        /// cutoff) plus every id accepted after it.
        #[test]
        fn sweeps_forget_only_what_left_the_window(
            steps in proptest::collection::vec((0u16..3_000, 0i64..3, proptest::sample::select(&[false, false, false, true][..])), 1..1_500),
            window in 0i64..20,
        ) {
            let mut seen = SeenMessages::default();
            let mut model: std::collections::HashMap<String, Millis> = Default::default();
            let mut now = 0;
            for (id, dt, expire) in steps {
                now += dt;
                let cutoff = now - window;
                let id = format!("m{id}");
                let fresh = model.get(&id).is_none_or(|&at| at <= cutoff);
                if fresh {
                    model.insert(id.clone(), now);
                }
                proptest::prop_assert_eq!(seen.accept(&id, now, cutoff), fresh);
                if !expire {
                    continue;
                }
                seen.expire(cutoff);
                if now % 5 == 0 {
                    // As a snapshot writes it and recovery reads it back.
                    let stored: Vec<([u8; 16], Millis)> =
                        seen.iter().map(|(id, at)| (id.to_bytes(), at)).collect();
                    let ids = stored.into_iter().map(|(id, at)| (Fingerprint::from_bytes(id), at));
                    seen = SeenMessages::restored(seen.key(), ids);
                }
                let held: std::collections::HashMap<Fingerprint, Millis> = seen.iter().collect();
                proptest::prop_assert_eq!(held.len(), seen.len());
                let model_held: std::collections::HashMap<Fingerprint, Millis> =
                    model.iter().map(|(id, at)| (seen.fingerprint(id), *at)).collect();
                for (id, at) in &held {
                    proptest::prop_assert_eq!(model_held.get(id), Some(at));
                }
                for (id, at) in &model_held {
                    if *at > cutoff {
                        proptest::prop_assert_eq!(held.get(id), Some(at));
                    }
                }
            }
        }
    }
}
