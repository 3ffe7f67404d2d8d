//! The in-memory change log. At its default capacity it holds 10 M
//! changes, nearly all of them membership changes, so an entry is packed
//! into 16 bytes; the rare computed-trait change keeps its values beside
//! the entries.

use std::collections::VecDeque;

use crate::queue::ChunkedDeque;
use crate::shard::{ChangeKind, Reason, ShardChange};
use crate::time::Millis;

/// One change as the engine logs it and a snapshot stores it: plain data
/// (slots, ids, values).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LoggedChange {
    /// The user's dense id.
    pub uid: u32,
    /// What changed.
    pub kind: ChangeKind,
    /// When.
    pub at: Millis,
    /// Why.
    pub reason: Reason,
}

/// The kind is kept beside the entry (a computed-trait change, or a slot
/// too large for [`SLOT_BITS`]).
const ASIDE: u32 = 1 << 31;
/// The user entered the audience.
const ENTERED: u32 = 1 << 30;
const REASON_SHIFT: u32 = 27;
/// Bits of the audience slot; slots are dense, so larger ones are
/// theoretical, and then kept aside.
const SLOT_BITS: u32 = 27;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

fn reason_bits(reason: Reason) -> u32 {
    match reason {
        Reason::Event => 0,
        Reason::Time => 1,
        Reason::Definition => 2,
        Reason::Merge => 3,
        Reason::Delete => 4,
    }
}

fn reason_from_bits(bits: u32) -> Reason {
    match bits {
        1 => Reason::Time,
        2 => Reason::Definition,
        3 => Reason::Merge,
        4 => Reason::Delete,
        _ => Reason::Event,
    }
}

/// A [`LoggedChange`] in 16 bytes: the user, the audience slot with the
/// direction and reason in its high bits, and the instant as two `u32`s
/// (which keeps the alignment at 4).
#[derive(Debug, Clone, Copy)]
struct Packed {
    uid: u32,
    code: u32,
    at: [u32; 2],
}

/// A change as a log entry, and whether its kind must be kept aside.
fn pack(uid: u32, kind: &ChangeKind, at: Millis, reason: Reason) -> (Packed, bool) {
    let mut code = reason_bits(reason) << REASON_SHIFT;
    let aside = match *kind {
        ChangeKind::Membership { aud, entered } if aud <= SLOT_MASK => {
            code |= aud | if entered { ENTERED } else { 0 };
            false
        }
        _ => {
            code |= ASIDE;
            true
        }
    };
    let bits = at as u64;
    let entry = Packed {
        uid,
        code,
        at: [bits as u32, (bits >> 32) as u32],
    };
    (entry, aside)
}

/// `change` as a log entry; its kind is kept in `aside`, at `index`, where
/// the entry cannot hold it.
#[inline]
fn pack_change(aside: &mut Vec<(usize, ChangeKind)>, index: usize, change: &ShardChange) -> Packed {
    let (entry, kept_aside) = pack(change.uid, &change.kind, change.at, change.reason);
    if kept_aside {
        aside.push((index, change.kind.clone()));
    }
    entry
}

/// Changes packed ahead of their place in the log (a part of a parallel
/// merge, see `crate::merge`): the entries, and the kinds kept aside with
/// their index among them.
#[derive(Debug, Default)]
pub(crate) struct PackedRun {
    entries: Vec<Packed>,
    aside: Vec<(usize, ChangeKind)>,
}

impl PackedRun {
    /// Appends a shard's change.
    #[inline]
    pub fn push(&mut self, change: &ShardChange) {
        let entry = pack_change(&mut self.aside, self.entries.len(), change);
        self.entries.push(entry);
    }

    /// Appends a shard's changes.
    pub fn extend(&mut self, changes: &[ShardChange]) {
        let PackedRun { entries, aside } = self;
        let base = entries.len();
        // Mapped from a slice: the entries grow once, with no check of
        // their room per change.
        entries.extend(
            changes
                .iter()
                .enumerate()
                .map(|(i, change)| pack_change(aside, base + i, change)),
        );
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Empties it, keeping its buffer.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.aside.clear();
    }
}

/// The change log: entries in arrival order, the oldest dropped first.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeLog {
    entries: ChunkedDeque<Packed>,
    /// Kinds kept aside with their absolute positions (`dropped` + index),
    /// ascending: appended and dropped in step with the entries.
    aside: VecDeque<(u64, ChangeKind)>,
    /// Entries dropped from the front since the log was made.
    dropped: u64,
}

impl ChangeLog {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes: the packed entries (16 bytes each, in 1 MiB chunks) and
    /// the kinds kept aside, with a computed trait's boxed values (few:
    /// computed traits change far less often than memberships).
    pub fn heap_bytes(&self) -> usize {
        let values = |kind: &ChangeKind| match kind {
            ChangeKind::Computed { values, .. } => {
                let value = |v: &Option<crate::value::Value>| {
                    v.as_ref()
                        .map_or(0, crate::value::Value::unshared_heap_bytes)
                };
                size_of::<crate::shard::ValueChange>() + value(&values.old) + value(&values.new)
            }
            ChangeKind::Membership { .. } => 0,
        };
        self.entries.heap_bytes()
            + self.aside.capacity() * size_of::<(u64, ChangeKind)>()
            + self
                .aside
                .iter()
                .map(|(_, kind)| values(kind))
                .sum::<usize>()
    }

    /// Appends a change.
    pub fn push(&mut self, change: LoggedChange) {
        let (entry, aside) = pack(change.uid, &change.kind, change.at, change.reason);
        if aside {
            let position = self.dropped + self.entries.len() as u64;
            self.aside.push_back((position, change.kind));
        }
        self.entries.push_back(entry);
    }

    /// Appends the changes of `run` (which is left empty).
    pub fn append(&mut self, run: &mut PackedRun) {
        let base = self.dropped + self.entries.len() as u64;
        self.aside
            .extend(run.aside.drain(..).map(|(i, kind)| (base + i as u64, kind)));
        self.entries.extend_from_slice(&run.entries);
        run.entries.clear();
    }

    /// Frees the storage kept from dropped entries for later appends (see
    /// [`ChunkedDeque::release_spare`]).
    pub fn release_spare(&mut self) {
        self.entries.release_spare();
    }

    /// Drops the `n` oldest entries (all of them if fewer); their storage
    /// is kept for the next appends until [`ChangeLog::release_spare`].
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.entries.len());
        self.entries.drop_front(n);
        self.dropped += n as u64;
        while self.aside.front().is_some_and(|(p, _)| *p < self.dropped) {
            self.aside.pop_front();
        }
    }

    /// The entries with positions in `start..end` (clamped), oldest first.
    pub fn range(&self, start: usize, end: usize) -> impl Iterator<Item = LoggedChange> + '_ {
        let first = self.dropped + start.min(self.entries.len()) as u64;
        self.entries
            .range(start, end)
            .enumerate()
            .map(move |(i, p)| self.unpack(first + i as u64, p))
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = LoggedChange> + '_ {
        self.range(0, self.entries.len())
    }

    fn unpack(&self, position: u64, p: &Packed) -> LoggedChange {
        let kind = if p.code & ASIDE != 0 {
            // Present until the entry is dropped; the default is unreachable.
            let found = self.aside.binary_search_by_key(&position, |(p, _)| *p);
            debug_assert!(found.is_ok());
            found
                .map(|i| self.aside[i].1.clone())
                .unwrap_or(ChangeKind::Membership {
                    aud: 0,
                    entered: false,
                })
        } else {
            ChangeKind::Membership {
                aud: p.code & SLOT_MASK,
                entered: p.code & ENTERED != 0,
            }
        };
        LoggedChange {
            uid: p.uid,
            kind,
            at: (u64::from(p.at[0]) | (u64::from(p.at[1]) << 32)) as Millis,
            reason: reason_from_bits((p.code >> REASON_SHIFT) & 0b111),
        }
    }
}

impl FromIterator<LoggedChange> for ChangeLog {
    fn from_iter<I: IntoIterator<Item = LoggedChange>>(iter: I) -> Self {
        let mut log = ChangeLog::default();
        for change in iter {
            log.push(change);
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const REASONS: [Reason; 5] = [
        Reason::Event,
        Reason::Time,
        Reason::Definition,
        Reason::Merge,
        Reason::Delete,
    ];

    fn change(uid: u32, kind: u8, slot: u32, at: Millis, reason: usize) -> LoggedChange {
        let kind = match kind {
            0 => ChangeKind::Membership {
                aud: slot,
                entered: true,
            },
            1 => ChangeKind::Membership {
                aud: slot,
                entered: false,
            },
            _ => ChangeKind::computed(slot, Some(crate::value::Value::Num(f64::from(uid))), None),
        };
        LoggedChange {
            uid,
            kind,
            at,
            reason: REASONS[reason],
        }
    }

    #[test]
    fn entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Packed>(), 16);
    }

    /// The log's heap is its chunks of 16-byte entries (spare ones until
    /// released) and the kinds kept aside.
    #[test]
    fn heap_bytes_count_chunks_spares_and_kinds_aside() {
        let mut log = ChangeLog::default();
        assert_eq!(log.heap_bytes(), 0);
        let chunk = (1 << 16) * 16;
        for i in 0..(1 << 16) + 1 {
            log.push(change(i, 0, 3, 0, 0));
        }
        let two_chunks = log.heap_bytes();
        assert!(
            (2 * chunk..2 * chunk + 4096).contains(&two_chunks),
            "{two_chunks}"
        );
        log.push(change(7, 2, 1, 0, 0));
        let aside = size_of::<(u64, ChangeKind)>() + size_of::<crate::shard::ValueChange>();
        assert!(
            log.heap_bytes() >= two_chunks + aside,
            "a kind aside adds its entry and box"
        );
        // Dropped, the first chunk is kept for the next appends, then freed.
        log.drop_front(1 << 16);
        assert!(log.heap_bytes() >= 2 * chunk);
        log.release_spare();
        assert!(log.heap_bytes() < chunk + 4096, "{}", log.heap_bytes());
    }

    proptest! {
        /// Pushes, appended parts, front drops and ranges give back what a plain deque of
        /// the unpacked changes holds: every kind and reason, slots that
        /// need the side table, and instants at the extremes.
        #[test]
        fn packed_log_matches_plain_deque(
            ops in proptest::collection::vec(
                (0u8..4, any::<u32>(), 0u8..3, prop_oneof![0u32..50, Just(u32::MAX), Just(SLOT_MASK + 1)],
                 prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -5i64..5], 0usize..5, 0usize..40),
                0..80,
            ),
        ) {
            let mut log = ChangeLog::default();
            let mut model: VecDeque<LoggedChange> = VecDeque::new();
            for (op, uid, kind, slot, at, reason, n) in ops {
                match op {
                    0 | 1 => {
                        let c = change(uid, kind, slot, at, reason);
                        log.push(c.clone());
                        model.push_back(c);
                    }
                    3 => {
                        // A merged part: the change n % 4 times.
                        let c = change(uid, kind, slot, at, reason);
                        let mut run = PackedRun::default();
                        for _ in 0..n % 4 {
                            run.push(&ShardChange {
                                order: crate::shard::Order::new(0, 0, 0),
                                uid: c.uid,
                                kind: c.kind.clone(),
                                at: c.at,
                                reason: c.reason,
                            });
                            model.push_back(c.clone());
                        }
                        log.append(&mut run);
                        prop_assert_eq!(run.len(), 0);
                    }
                    _ => {
                        log.drop_front(n);
                        model.drain(..n.min(model.len()));
                        prop_assert!(log.aside.len() <= model.len());
                    }
                }
                prop_assert_eq!(log.len(), model.len());
                let (a, b) = (n % (model.len() + 1), (n * 7) % (model.len() + 2));
                let got: Vec<LoggedChange> = log.range(a, b).collect();
                let end = b.min(model.len()).max(a);
                let want: Vec<LoggedChange> = model.range(a..end).cloned().collect();
                prop_assert_eq!(got, want);
            }
            prop_assert!(log.iter().eq(model.iter().cloned()));
        }
    }
}
