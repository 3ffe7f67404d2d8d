//! Data structures of the hot path: the per-shard scratch of evaluation,
//! the timer queue and the change log's storage.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::catalog::AtomId;
use crate::profile::Stamped;
use crate::time::Millis;

/// Entries per chunk of a [`ChunkedDeque`] (1 MiB of 16-byte change-log entries).
const CHUNK: usize = 1 << 16;

/// A FIFO sequence stored in fixed-size chunks: appending never moves what
/// is stored (a `VecDeque` doubling at 10 M entries copies 320 MB while the
/// engine lock is held), and dropping from the front frees whole chunks, or
/// keeps them for the next appends until [`ChunkedDeque::release_spare`]:
/// a full log drops as much as it appends, and a chunk reused is one not
/// page-faulted afresh (at 10,000 audiences an event logs some 140
/// changes, and fresh pages were a third of the page faults of ingest).
#[derive(Debug, Clone)]
pub struct ChunkedDeque<T> {
    chunks: VecDeque<Vec<T>>,
    /// Chunks dropped from the front, emptied, for the next appends.
    spare: Vec<Vec<T>>,
    /// Entries already dropped from the front chunk.
    head: usize,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque {
            chunks: VecDeque::new(),
            spare: Vec::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T> ChunkedDeque<T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A chunk for the back: a spare one, or a new one.
    fn fresh_chunk(&mut self) -> Vec<T> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    /// Frees the chunks kept from drops.
    pub fn release_spare(&mut self) {
        self.spare = Vec::new();
    }

    /// Keeps a chunk dropped from the front for a later append.
    fn keep_spare(&mut self, mut chunk: Vec<T>) {
        chunk.clear();
        self.spare.push(chunk);
    }

    /// Appends at the back.
    pub fn push_back(&mut self, value: T) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            let chunk = self.fresh_chunk();
            self.chunks.push_back(chunk);
        }
        if let Some(last) = self.chunks.back_mut() {
            last.push(value);
        }
        self.len += 1;
    }

    /// Drops the `n` oldest entries (all of them if fewer).
    pub fn drop_front(&mut self, n: usize) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let live = front.len() - self.head;
            if n >= live {
                if let Some(chunk) = self.chunks.pop_front() {
                    self.keep_spare(chunk);
                }
                self.head = 0;
                n -= live;
            } else {
                self.head += n;
                n = 0;
            }
        }
        if self.len == 0 {
            while let Some(chunk) = self.chunks.pop_front() {
                self.keep_spare(chunk);
            }
            self.head = 0;
        }
    }

    /// The entries with positions in `start..end` (clamped), oldest first.
    pub fn range(&self, start: usize, end: usize) -> impl Iterator<Item = &T> + '_ {
        let end = end.min(self.len);
        let start = start.min(end);
        let first = self.head + start;
        let (chunk, offset) = (first / CHUNK, first % CHUNK);
        self.chunks
            .range(chunk.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(i, c)| &c[if i == 0 { offset } else { 0 }..])
            .take(end - start)
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.range(0, self.len)
    }

    /// Heap bytes of the chunks, spare ones included.
    pub fn heap_bytes(&self) -> usize {
        let chunk_bytes = |c: &Vec<T>| c.capacity() * size_of::<T>();
        self.chunks
            .iter()
            .chain(&self.spare)
            .map(chunk_bytes)
            .sum::<usize>()
            + self.chunks.capacity() * size_of::<Vec<T>>()
            + self.spare.capacity() * size_of::<Vec<T>>()
    }
}

impl<T: Copy> ChunkedDeque<T> {
    /// Appends `values` at the back, a chunk's worth at a time.
    pub fn extend_from_slice(&mut self, mut values: &[T]) {
        self.len += values.len();
        while !values.is_empty() {
            if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
                let chunk = self.fresh_chunk();
                self.chunks.push_back(chunk);
            }
            if let Some(last) = self.chunks.back_mut() {
                let (now, rest) = values.split_at((CHUNK - last.len()).min(values.len()));
                last.extend_from_slice(now);
                values = rest;
            }
        }
    }
}

impl<T> FromIterator<T> for ChunkedDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut d = ChunkedDeque::default();
        for x in iter {
            d.push_back(x);
        }
        d
    }
}

/// Rules waiting to be evaluated for one user, popped in rank order
/// (dependencies first): a bitset over ranks, so that queueing is O(1) and
/// nothing is allocated per event. Ranks are dense (`0..slots`).
///
/// A rule may be queued with the user's membership of it, when the caller
/// has it at hand (an atom's rules are queued by a walk over the user's
/// memberships): the evaluation then compares with it instead of searching
/// the memberships again. Memberships change only when their own rule is
/// evaluated, so the membership stays right while the rule waits.
#[derive(Debug, Clone, Default)]
pub struct RankQueue {
    /// Per 64 ranks: the queued ones, those of them whose membership is
    /// known, and that membership; side by side, so that a rank's three
    /// bits are one bounds check and one cache line apart.
    words: Vec<RankWord>,
    /// No bit lies in a word below this one.
    low: usize,
    len: usize,
}

/// The bits of 64 consecutive ranks in a [`RankQueue`].
#[derive(Debug, Clone, Copy, Default)]
struct RankWord {
    queued: u64,
    known: u64,
    member: u64,
}

impl RankQueue {
    /// Queues `rank` (once).
    pub fn insert(&mut self, rank: u32) {
        let (w, bit) = self.grow_to(rank);
        let word = &mut self.words[w];
        if word.queued & bit == 0 {
            word.queued |= bit;
            word.known &= !bit;
            self.count_queued(w);
        }
    }

    /// Queues `rank` (once), with the user's current membership of its
    /// rule.
    #[inline]
    pub fn insert_known(&mut self, rank: u32, member: bool) {
        let (w, bit) = self.grow_to(rank);
        let word = &mut self.words[w];
        let fresh = word.queued & bit == 0;
        word.queued |= bit;
        word.known |= bit;
        // The membership bit set to `member`, without a branch.
        word.member = (word.member & !bit) | (bit & u64::from(member).wrapping_neg());
        if fresh {
            self.count_queued(w);
        }
    }

    /// The word and bit of `rank`, the words grown to hold it.
    #[inline]
    fn grow_to(&mut self, rank: u32) -> (usize, u64) {
        let w = rank as usize / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, RankWord::default());
        }
        (w, 1u64 << (rank % 64))
    }

    /// Counts a rank newly queued in word `w`.
    #[inline]
    fn count_queued(&mut self, w: usize) {
        if self.len == 0 || w < self.low {
            self.low = w;
        }
        self.len += 1;
    }

    /// Removes and returns the lowest queued rank, with the membership it
    /// was queued with, if any.
    pub fn pop_first(&mut self) -> Option<(u32, Option<bool>)> {
        if self.len == 0 {
            return None;
        }
        while self.words[self.low].queued == 0 {
            self.low += 1;
        }
        let w = self.low;
        let word = &mut self.words[w];
        let bit = word.queued & word.queued.wrapping_neg();
        word.queued &= !bit;
        self.len -= 1;
        let member = (word.known & bit != 0).then_some(word.member & bit != 0);
        Some(((w * 64) as u32 + bit.trailing_zeros(), member))
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `UserQueue::queued` of a user with no entry.
const UNQUEUED: Millis = Millis::MAX;
/// `UserQueue::queued` of a user whose timers are firing: offers wait for
/// [`UserQueue::rearm`].
const FIRING: Millis = Millis::MIN;

/// Entries [`UserQueue`] keeps in its heap; the rest wait unsorted. A heap
/// this size (256 KiB) stays in cache, where one over every user of a
/// large shard misses it at each level of every pop.
const NEAR: usize = 16 * 1024;

/// When each user of a shard next needs waking: one entry per user at (or
/// before) the earliest of its timers, not one per timer. A profile has
/// about eight pending timers; the users' own lists hold their instants,
/// so the queue is an eighth of the size, and setting a timer later than
/// the user's earliest pushes nothing.
///
/// A user's entry is live while `queued` holds its instant; superseded
/// entries stay until they come up (or a compaction) and are skipped.
///
/// The earliest entries (before `split`, in instant then user order) are
/// in a small heap; the later ones in an unsorted list, appended to in
/// O(1). When the heap runs dry, the next `NEAR` entries are selected from
/// the list in linear time. Splitting on the user as well as the instant
/// keeps the heap small when very many users share an instant (a backfill
/// of `member_for` over a large static audience).
#[derive(Debug, Clone, Default)]
pub struct UserQueue {
    /// Entries before `split`.
    near: BinaryHeap<Reverse<(Millis, u32)>>,
    /// Entries at or after `split`, in no order.
    far: Vec<FarEntry>,
    /// Entries before it are in `near`; empty `near` means empty `far`.
    split: (Millis, u32),
    /// Per local index: the instant of the user's live entry, never later
    /// than its earliest timer; `UNQUEUED` or `FIRING` otherwise.
    queued: Vec<Millis>,
    /// Entries (live or superseded) at which to drop the superseded.
    compact_at: usize,
    /// Shards (dense id `uid` is local index `uid / count`).
    count: u32,
    /// Entries a refill moves into `near` (`NEAR`; less in tests).
    near_size: usize,
}

/// An (instant, user) entry of [`UserQueue::far`] in 12 bytes instead of
/// 16 (a [`Stamped`] with the user as its id): the list holds one to two
/// entries per user of the shard, where the heap's few thousand entries
/// stay plain tuples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FarEntry(Stamped);

impl FarEntry {
    fn new((t, uid): (Millis, u32)) -> FarEntry {
        FarEntry(Stamped::new(uid, t))
    }

    fn key(self) -> (Millis, u32) {
        (self.0.at(), self.0.id)
    }
}

/// Ordered as its (instant, user) key.
impl Ord for FarEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for FarEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The smallest (instant, user) key after `key`.
fn after((t, uid): (Millis, u32)) -> (Millis, u32) {
    match uid.checked_add(1) {
        Some(next) => (t, next),
        None => (t.saturating_add(1), 0),
    }
}

impl UserQueue {
    /// An empty queue for a shard of `count`.
    pub fn new(count: u32) -> UserQueue {
        UserQueue::with_near_size(count, NEAR)
    }

    fn with_near_size(count: u32, near_size: usize) -> UserQueue {
        UserQueue {
            count: count.max(1),
            near_size: near_size.max(1),
            ..Default::default()
        }
    }

    fn local(&self, uid: u32) -> usize {
        (uid / self.count.max(1)) as usize
    }

    fn len(&self) -> usize {
        self.near.len() + self.far.len()
    }

    /// Notes that `uid` has a timer at `t`: queues the user at `t` unless
    /// it is queued no later. (A timer at `Millis::MAX`, which no clock
    /// reaches, is not queued.)
    pub fn offer(&mut self, uid: u32, t: Millis) {
        let local = self.local(uid);
        if self.queued.len() <= local {
            crate::profile::extend_by_quarter(&mut self.queued, local + 1, || UNQUEUED);
        }
        if t >= self.queued[local] {
            return;
        }
        self.queued[local] = t;
        if self.near.is_empty() {
            // Then `far` is empty too: start a new near range.
            self.split = after((t, uid));
        }
        if (t, uid) < self.split {
            self.near.push(Reverse((t, uid)));
            if self.near.len() > 4 * self.near_size {
                // The near range filled up: select it again from everything.
                let near = self.near.drain().map(|Reverse(e)| FarEntry::new(e));
                self.far.extend(near);
                self.refill();
            }
        } else {
            if self.far.len() == self.far.capacity() {
                // Grow by a quarter: the queue holds an entry per user.
                self.far.reserve_exact(self.far.len() / 4 + 16);
            }
            self.far.push(FarEntry::new((t, uid)));
        }
        if self.len() > self.compact_at {
            self.compact();
        }
    }

    /// Drops superseded entries; runs once the queue has doubled since
    /// the last time, so its cost per offer is constant.
    fn compact(&mut self) {
        let (queued, count) = (&self.queued, self.count.max(1));
        let live = |&(t, uid): &(Millis, u32)| queued.get((uid / count) as usize) == Some(&t);
        self.near.retain(|Reverse(e)| live(e));
        self.far.retain(|e| live(&e.key()));
        if self.near.is_empty() {
            self.refill();
        }
        self.compact_at = (2 * self.len()).max(2 * self.queued.len() + 1024);
    }

    /// Moves the earliest `near_size` or so entries of `far` into `near`
    /// (which is empty).
    fn refill(&mut self) {
        if self.far.is_empty() {
            return;
        }
        let n = self.near_size.max(1);
        let pivot = if self.far.len() > n {
            self.far.select_nth_unstable(n).1.key()
        } else {
            self.far
                .iter()
                .map(|e| e.key())
                .max()
                .unwrap_or((Millis::MAX, u32::MAX))
        };
        // The pivot and everything before it: at least one entry.
        self.split = after(pivot);
        let (near, split) = (&mut self.near, self.split);
        self.far.retain(|e| {
            let e = e.key();
            let is_near = e < split;
            if is_near {
                near.push(Reverse(e));
            }
            !is_near
        });
    }

    /// The earliest instant queued (possibly a superseded entry's).
    pub fn peek(&self) -> Option<Millis> {
        self.near.peek().map(|&Reverse((t, _))| t)
    }

    /// The next user queued at `instant`, marked firing (offers for it
    /// wait until [`UserQueue::rearm`]); `None` once there is none.
    pub fn pop_at(&mut self, instant: Millis) -> Option<u32> {
        while let Some(&Reverse((t, uid))) = self.near.peek() {
            if t != instant {
                return None;
            }
            self.near.pop();
            if self.near.is_empty() {
                self.refill();
            }
            let local = self.local(uid);
            if self.queued.get(local) == Some(&t) {
                self.queued[local] = FIRING;
                return Some(uid);
            }
        }
        None
    }

    /// Ends the firing of `uid`: queues it at its earliest timer, if any.
    pub fn rearm(&mut self, uid: u32, earliest: Option<Millis>) {
        let local = self.local(uid);
        if let Some(q) = self.queued.get_mut(local) {
            *q = UNQUEUED;
        }
        if let Some(t) = earliest {
            self.offer(uid, t);
        }
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.near.capacity() * std::mem::size_of::<(Millis, u32)>()
            + self.far.capacity() * std::mem::size_of::<FarEntry>()
            + self.queued.capacity() * std::mem::size_of::<Millis>()
    }
}

/// Truths of atoms already evaluated for one user in one evaluation pass.
/// Rules share atoms, and a pass changes only memberships, so an atom that
/// reads no membership keeps its truth for the whole pass. Entries are
/// stamped with the pass; starting a pass forgets them all in O(1).
#[derive(Debug, Clone, Default)]
pub struct AtomMemo {
    pass: u32,
    /// `pass << 1 | truth`, by atom.
    stamps: Vec<u32>,
}

impl AtomMemo {
    /// Forgets every entry; makes room for `atoms` atoms.
    pub fn begin(&mut self, atoms: usize) {
        self.pass += 1;
        if self.pass >= 1 << 31 {
            self.stamps.fill(0);
            self.pass = 1;
        }
        if self.stamps.len() < atoms {
            self.stamps.resize(atoms, 0);
        }
    }

    /// The atom's truth if evaluated in this pass.
    pub fn get(&self, atom: AtomId) -> Option<bool> {
        let v = *self.stamps.get(atom as usize)?;
        (v >> 1 == self.pass).then_some(v & 1 == 1)
    }

    /// Records the atom's truth for this pass.
    pub fn set(&mut self, atom: AtomId, truth: bool) {
        if let Some(v) = self.stamps.get_mut(atom as usize) {
            *v = self.pass << 1 | truth as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Interleaved inserts (with and without a membership) and pops
        /// give the same order as a map from rank to the membership given
        /// last since the rank was queued, if any.
        #[test]
        fn rank_queue_matches_btreemap(
            ops in proptest::collection::vec((0u8..4, 0u32..700), 0..300)
        ) {
            let mut q = RankQueue::default();
            let mut model: BTreeMap<u32, Option<bool>> = BTreeMap::new();
            for (op, rank) in ops {
                match op {
                    0 => prop_assert_eq!(q.pop_first(), model.pop_first()),
                    1 => {
                        q.insert(rank);
                        model.entry(rank).or_insert(None);
                    }
                    _ => {
                        let member = op == 3;
                        q.insert_known(rank, member);
                        model.insert(rank, Some(member));
                    }
                }
                prop_assert_eq!(q.is_empty(), model.is_empty());
            }
            while let Some(entry) = model.pop_first() {
                prop_assert_eq!(q.pop_first(), Some(entry));
            }
            prop_assert_eq!(q.pop_first(), None);
        }
    }

    #[test]
    fn chunks_dropped_from_the_front_take_the_next_appends() {
        let mut d = ChunkedDeque::default();
        d.extend_from_slice(&vec![1u64; 2 * CHUNK]);
        let first = d.chunks[0].as_ptr();
        d.drop_front(CHUNK);
        d.extend_from_slice(&[2u64; 3]);
        assert_eq!(d.chunks.back().map(|c| c.as_ptr()), Some(first));
        assert_eq!(d.len(), CHUNK + 3);
        assert!(d.range(CHUNK, CHUNK + 3).all(|&x| x == 2));
        d.drop_front(CHUNK);
        assert_eq!(d.spare.len(), 1);
        d.release_spare();
        assert!(d.spare.is_empty());
    }

    proptest! {
        /// Pushes, slices appended, front drops (their chunks reused or
        /// released) and ranges agree with a VecDeque, across chunk
        /// boundaries.
        #[test]
        fn chunked_deque_matches_vecdeque(
            ops in proptest::collection::vec((0u8..5, 0usize..(3 * CHUNK)), 0..12),
        ) {
            let mut d = ChunkedDeque::default();
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for (op, n) in ops {
                match op {
                    0 => for _ in 0..n {
                        d.push_back(next);
                        model.push_back(next);
                        next += 1;
                    },
                    1 => {
                        d.drop_front(n);
                        model.drain(..n.min(model.len()));
                    }
                    2 => {
                        let values: Vec<u64> = (next..next + n as u64).collect();
                        d.extend_from_slice(&values);
                        model.extend(values);
                        next += n as u64;
                    }
                    3 => d.release_spare(),
                    _ => {
                        let (a, b) = (n % (model.len() + 1), n % (model.len() + 2));
                        let got: Vec<u64> = d.range(a, b).copied().collect();
                        let end = b.min(model.len()).max(a.min(model.len()));
                        let want: Vec<u64> = model.range(a.min(end)..end).copied().collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(d.len(), model.len());
                prop_assert!(d.iter().copied().eq(model.iter().copied()));
            }
        }
    }

    proptest! {
        /// Users wake at each instant their timers hold, in instant then
        /// user order, with timers set, moved (earlier, later, into the
        /// past) and cancelled in between; as a plain scan of every timer.
        /// A tiny near heap makes refills and near-range resets frequent.
        #[test]
        fn user_queue_wakes_users_at_their_timers(
            ops in proptest::collection::vec(
                (0u32..12, 0u32..4, proptest::option::of(-50i64..400), proptest::bool::weighted(0.1)),
                0..400,
            ),
            count in 1u32..3,
            near_size in 1usize..6,
        ) {
            let mut q = UserQueue::with_near_size(count, near_size);
            let mut timers: BTreeMap<(u32, u32), Millis> = BTreeMap::new();
            let mut clock = 0;
            let drain = |q: &mut UserQueue, timers: &mut BTreeMap<(u32, u32), Millis>, to: Millis| -> Vec<(Millis, u32, Vec<u32>)> {
                let mut woke = Vec::new();
                while let Some(instant) = q.peek().filter(|&t| t <= to) {
                    while let Some(uid) = q.pop_at(instant) {
                        let atoms: Vec<u32> = timers.iter()
                            .filter(|(&(u, _), &t)| u == uid && t == instant)
                            .map(|(&(_, a), _)| a)
                            .collect();
                        for a in &atoms {
                            timers.remove(&(uid, *a));
                        }
                        woke.push((instant, uid, atoms));
                        let earliest = timers.iter().filter(|(&(u, _), _)| u == uid).map(|(_, &t)| t).min();
                        q.rearm(uid, earliest);
                    }
                }
                woke.retain(|(_, _, atoms)| !atoms.is_empty());
                woke
            };
            for (user, atom, at, advance) in ops {
                let uid = user * count + user % count;
                match at {
                    Some(t) => {
                        timers.insert((uid, atom), t);
                        q.offer(uid, t);
                    }
                    None => {
                        timers.remove(&(uid, atom));
                    }
                }
                if advance {
                    clock += 40;
                    let mut want: Vec<(Millis, u32, Vec<u32>)> = Vec::new();
                    let mut due: Vec<((u32, u32), Millis)> = timers.iter()
                        .filter(|(_, &t)| t <= clock)
                        .map(|(&k, &t)| (k, t))
                        .collect();
                    due.sort_by_key(|&((u, a), t)| (t, u, a));
                    for ((u, a), t) in due {
                        match want.last_mut() {
                            Some((wt, wu, atoms)) if *wt == t && *wu == u => atoms.push(a),
                            _ => want.push((t, u, vec![a])),
                        }
                    }
                    let got = drain(&mut q, &mut timers, clock);
                    prop_assert_eq!(got, want);
                }
            }
            let got = drain(&mut q, &mut timers, Millis::MAX - 1);
            prop_assert!(timers.is_empty(), "every timer woke its user: {:?} left, woke {:?}", timers, got);
        }
    }

    proptest! {
        /// A packed far entry keeps its key and orders as the tuple does
        /// (negative instants and the extremes included).
        #[test]
        fn far_entries_order_as_their_keys(
            a in (prop_oneof![any::<i64>(), -3i64..3, Just(Millis::MIN), Just(Millis::MAX)], 0u32..4),
            b in (prop_oneof![any::<i64>(), -3i64..3, Just(Millis::MIN), Just(Millis::MAX)], 0u32..4),
        ) {
            let (fa, fb) = (FarEntry::new(a), FarEntry::new(b));
            prop_assert_eq!((fa.key(), fb.key()), (a, b));
            prop_assert_eq!(fa.cmp(&fb), a.cmp(&b));
        }
    }

    #[test]
    fn user_queue_keeps_a_crowd_at_one_instant_out_of_the_heap() {
        let mut q = UserQueue::with_near_size(1, 8);
        for uid in 0..1_000 {
            q.offer(uid, 5);
        }
        assert!(q.near.len() <= 4 * 8 + 1, "heap: {}", q.near.len());
        let mut woke = Vec::new();
        while let Some(uid) = q.pop_at(5) {
            woke.push(uid);
            q.rearm(uid, None);
        }
        assert_eq!(woke, (0..1_000).collect::<Vec<_>>(), "all, in user order");
        assert_eq!(q.peek(), None);
    }

    #[test]
    fn user_queue_drops_superseded_entries() {
        let mut q = UserQueue::new(1);
        for t in (0..10_000).rev() {
            q.offer(0, t);
        }
        assert!(q.len() < 2_000, "compacted: {}", q.len());
        assert_eq!(q.peek(), Some(0));
        assert_eq!(q.pop_at(0), Some(0));
        q.rearm(0, None);
        assert_eq!(q.pop_at(1), None, "the rest were superseded");
    }

    #[test]
    fn memo_forgets_on_begin() {
        let mut m = AtomMemo::default();
        m.begin(4);
        assert_eq!(m.get(2), None);
        m.set(2, true);
        m.set(3, false);
        assert_eq!(m.get(2), Some(true));
        assert_eq!(m.get(3), Some(false));
        m.begin(4);
        assert_eq!(m.get(2), None);
        assert_eq!(m.get(9), None, "out of range is unknown");
    }
}
