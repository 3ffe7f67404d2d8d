//! What a new profile's first identify does to its memberships, kept by
//! what decides it.
//!
//! A profile created by an identify has no events, the memberships of an
//! empty profile (entered now) and the traits just given. Every rule then
//! reads only atoms whose truth is fixed: the atoms of the given trait keys
//! (their truths are computed anyway, to find which flipped) and atoms
//! over empty states, missing traits and memberships entered now. So,
//! when no atom of the given keys also reads a membership (such an atom,
//! `in_audience("us") == trait.flag`, changes as the rules run, with the
//! trait's value), the membership flips its evaluation makes are a
//! function of the catalog, the list of trait atoms and their truths.
//! Sign-ups repeat a few trait combinations (a country, a plan, a band of
//! lifetime value), so the flips are looked up instead of the rules being
//! evaluated again; a quarter of the standard workload's events are such
//! first identifies.

use hashbrown::HashMap;

use crate::catalog::AudId;

/// Outcomes kept before the memo starts afresh.
const MAX_OUTCOMES: usize = 1 << 16;

/// Membership flips in the order they were made: (audience, entered).
type Flips = Box<[(AudId, bool)]>;

/// The membership flips of first identifies, by list of trait atoms and
/// their truths (as words the caller gives, see
/// [`FirstIdentifyMemo::lookup`]), within one epoch of the lists
/// ([`crate::trait_truths::KeyAtoms::epoch`], which also changes with the
/// catalog).
#[derive(Debug, Clone, Default)]
pub struct FirstIdentifyMemo {
    /// The epoch of the lists the entries were made under.
    epoch: u64,
    /// `[list id, truths' words...]` to the flips, in the order they were
    /// made.
    outcomes: HashMap<Box<[u64]>, Flips>,
    /// The key of the last lookup (what [`FirstIdentifyMemo::record`] files under).
    key: Vec<u64>,
}

impl FirstIdentifyMemo {
    /// The flips remembered for the list of atoms `list` (an id that
    /// stands for one list, [`crate::trait_truths::KeyPlan::id`]; hashing
    /// the hundreds of atoms of a list for each lookup cost more than the
    /// truths) with the truths that `truths` appends as words (anything
    /// the list's truths are a function of: the shard gives its keys' rows
    /// of trait tests and its other atoms' truths, as bits) in the lists'
    /// `epoch`; a miss prepares [`FirstIdentifyMemo::record`]. A new epoch
    /// forgets the entries made under the lists of the last one, which are
    /// not used again.
    pub fn lookup(
        &mut self,
        epoch: u64,
        list: u64,
        truths: impl FnOnce(&mut Vec<u64>),
    ) -> Option<&[(AudId, bool)]> {
        if epoch != self.epoch {
            self.outcomes.clear();
            self.epoch = epoch;
        }
        self.key.clear();
        self.key.push(list);
        truths(&mut self.key);
        self.outcomes.get(&self.key[..]).map(|flips| &flips[..])
    }

    /// Remembers the flips of the identify whose lookup just missed.
    pub fn record(&mut self, flips: impl IntoIterator<Item = (AudId, bool)>) {
        if self.outcomes.len() >= MAX_OUTCOMES {
            self.outcomes.clear();
        }
        let key = self.key.clone().into_boxed_slice();
        self.outcomes.insert(key, flips.into_iter().collect());
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let outcomes: usize = self
            .outcomes
            .iter()
            .map(|(k, f)| k.len() * 8 + f.len() * 8 + 32)
            .sum();
        outcomes + self.key.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trait_truths::pack_bits;

    /// Looks `truths` up as bits.
    fn lookup<'m>(
        memo: &'m mut FirstIdentifyMemo,
        epoch: u64,
        list: u64,
        truths: &[bool],
    ) -> Option<&'m [(AudId, bool)]> {
        memo.lookup(epoch, list, |key| pack_bits(truths, key))
    }

    #[test]
    fn flips_are_found_by_atoms_truths_and_epoch() {
        let mut memo = FirstIdentifyMemo::default();
        assert_eq!(lookup(&mut memo, 1, 1, &[true, false]), None);
        memo.record([(7, true), (2, false)]);
        assert_eq!(
            lookup(&mut memo, 1, 1, &[true, false]),
            Some(&[(7, true), (2, false)][..])
        );
        assert_eq!(lookup(&mut memo, 1, 1, &[true, true]), None);
        assert_eq!(lookup(&mut memo, 1, 2, &[true, false]), None);
        assert_eq!(lookup(&mut memo, 1, 3, &[true]), None);
        // Another epoch of the lists (or another catalog) forgets everything.
        assert_eq!(lookup(&mut memo, 2, 1, &[true, false]), None);
        assert_eq!(lookup(&mut memo, 1, 1, &[true, false]), None);
    }

    #[test]
    fn truths_beyond_one_word_are_told_apart() {
        let list = 4;
        let mut truths = vec![false; 130];
        let mut memo = FirstIdentifyMemo::default();
        assert_eq!(lookup(&mut memo, 1, list, &truths), None);
        memo.record([(1, true)]);
        truths[129] = true;
        assert_eq!(lookup(&mut memo, 1, list, &truths), None);
        memo.record([(2, true)]);
        assert_eq!(lookup(&mut memo, 1, list, &truths), Some(&[(2, true)][..]));
        truths[129] = false;
        assert_eq!(lookup(&mut memo, 1, list, &truths), Some(&[(1, true)][..]));
    }

    #[test]
    fn a_full_memo_starts_afresh() {
        let mut memo = FirstIdentifyMemo::default();
        for list in 0..MAX_OUTCOMES as u64 + 1 {
            assert_eq!(lookup(&mut memo, 1, list, &[true]), None);
            memo.record([(list as AudId, true)]);
        }
        assert!(memo.outcomes.len() <= MAX_OUTCOMES);
        let last = MAX_OUTCOMES as u64;
        assert_eq!(
            lookup(&mut memo, 1, last, &[true]),
            Some(&[(last as AudId, true)][..])
        );
    }
}
