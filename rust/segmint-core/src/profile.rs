//! Profiles: the id interner, per-user traits and states, and memberships.

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Arc;

use roaring::RoaringBitmap;
use smol_str::SmolStr;

use crate::audience_list::AudienceList;
use crate::catalog::{AudId, CtId, StateId, TraitKey, Unread};
use crate::state::UserState;
use crate::thin_box::ThinBox;
use crate::time::Millis;
use crate::traits::Traits;
use crate::value::{Flat, Value};

/// Maps names (external user ids, trait keys) to dense `u32` ids, so
/// audiences are bitmaps and profiles store each trait key as an integer.
///
/// The names sit end to end in one string and the table holds only ids:
/// a million short ids cost their bytes plus about 20 bytes each, where a
/// map of shared strings cost about 90.
#[derive(Debug, Clone, Default)]
pub struct Interner {
    /// Every name, concatenated in id order.
    text: String,
    /// Where each name ends in `text`, by id, modulo 2^32: 4 bytes per id
    /// instead of 8 (see [`Ends`]).
    ends: Ends,
    /// The ids, found by the hash of their name.
    ids: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Names that stand for another id than their own, if they have one
    /// (user ids given by alias calls, see [`Interner::redirect`] and
    /// [`Interner::merge_into`]); a name here is not in `ids`.
    aliases: hashbrown::HashMap<Arc<str>, u32>,
    /// The same by id: the names in `aliases` standing for each, so that a
    /// merge moves the names of one id, not a walk over all of them.
    aliases_of: hashbrown::HashMap<u32, Vec<Arc<str>>>,
}

impl Interner {
    /// The dense id of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        match self.ids.find(hash, |&id| self.name(id) == name) {
            Some(&id) => Some(id),
            // Looked up only for a name not found: a new user's.
            None if self.aliases.is_empty() => None,
            None => self.aliases.get(name).copied(),
        }
    }

    /// The dense id of `name`, assigning the next one if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        let hash = self.hasher.hash_one(name);
        if let Some(&id) = self.ids.find(hash, |&id| self.name(id) == name) {
            return id;
        }
        if let Some(&id) = self.aliases.get(name) {
            return id;
        }
        let id = self.ends.len() as u32;
        self.text.push_str(name);
        self.ends.push(self.text.len());
        let Interner {
            text,
            ends,
            ids,
            hasher,
            ..
        } = self;
        ids.insert_unique(hash, id, |&id| hasher.hash_one(ends.name(text, id)));
        id
    }

    /// Makes `name`, which no id has, stand for `id`.
    pub fn redirect(&mut self, name: &str, id: u32) {
        debug_assert!(self.get(name).is_none(), "{name} is known");
        let name: Arc<str> = Arc::from(name);
        self.aliases.insert(Arc::clone(&name), id);
        self.aliases_of.entry(id).or_default().push(name);
    }

    /// Makes every name that stands for `from` stand for `to` instead:
    /// `from`'s own (which [`Interner::name`] still gives for `from`, and
    /// [`Interner::names`] still lists, so that ids stay as they are) and
    /// those redirected to it.
    pub fn merge_into(&mut self, from: u32, to: u32) {
        let mut moved = self.aliases_of.remove(&from).unwrap_or_default();
        let hash = self.hasher.hash_one(self.name(from));
        if let Ok(entry) = self.ids.find_entry(hash, |&id| id == from) {
            entry.remove();
            moved.push(Arc::from(self.name(from)));
        }
        for name in &moved {
            self.aliases.insert(Arc::clone(name), to);
        }
        self.aliases_of.entry(to).or_default().extend(moved);
    }

    /// The names that stand for another id than their own, if they have one,
    /// with that id (see [`Interner::redirect`]).
    pub fn aliases(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.aliases.iter().map(|(name, &id)| (&**name, id))
    }

    /// Whether `id`'s own name stands for another id (it was merged into
    /// it, see [`Interner::merge_into`]).
    pub fn is_merged(&self, id: u32) -> bool {
        !self.aliases.is_empty() && self.aliases.get(self.name(id)).is_some_and(|&to| to != id)
    }

    /// Forgets the names of ids `len` and up (the last assigned), as if
    /// they had never been interned.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let end = len.checked_sub(1).map_or(0, |last| self.ends.end(last));
        self.ids.retain(|&mut id| (id as usize) < len);
        self.aliases.retain(|_, id| (*id as usize) < len);
        self.aliases_of.retain(|id, _| (*id as usize) < len);
        self.ends.truncate(len);
        self.text.truncate(end);
    }

    /// The external id of a dense id.
    pub fn name(&self, id: u32) -> &str {
        self.ends.name(&self.text, id)
    }

    /// Every name, in id order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len() as u32).map(|id| self.name(id))
    }

    /// Number of ids assigned.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether no id was assigned.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        // A bucket is the 4-byte id plus a control byte; a table holds up to
        // 7/8 of its buckets (and a group of control bytes more).
        let buckets = self.ids.capacity() * 8 / 7 + 16;
        // A name's bytes and count once, its two entries and a list's.
        let aliases: usize = (self.aliases.keys())
            .map(|name| name.len() + 16 + 2 * std::mem::size_of::<(Arc<str>, u32)>())
            .sum::<usize>()
            + self.aliases_of.len() * std::mem::size_of::<(u32, Vec<Arc<str>>)>();
        self.text.capacity() + self.ends.heap_bytes() + buckets * 5 + aliases
    }
}

/// Where each name of an [`Interner`] ends in its text: the low 32 bits
/// per id, and the ids at which the text passed each multiple of 4 GiB
/// (none below that), which give the high bits.
#[derive(Debug, Clone, Default)]
struct Ends {
    low: Vec<u32>,
    /// Per multiple of 2^32 passed, the first id ending past it.
    wraps: Vec<u32>,
}

impl Ends {
    fn push(&mut self, end: usize) {
        let id = self.low.len() as u32;
        while (end as u64 >> 32) as usize > self.wraps.len() {
            self.wraps.push(id);
        }
        self.low.push(end as u32);
    }

    fn end(&self, id: usize) -> usize {
        let high = self.wraps.partition_point(|&w| w as usize <= id) as u64;
        ((high << 32) | u64::from(self.low[id])) as usize
    }

    fn len(&self) -> usize {
        self.low.len()
    }

    /// Keeps the first `len` ids.
    fn truncate(&mut self, len: usize) {
        self.low.truncate(len);
        // A wrap first passed by a dropped id is no longer passed.
        self.wraps.retain(|&first| (first as usize) < len);
    }

    fn is_empty(&self) -> bool {
        self.low.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        (self.low.capacity() + self.wraps.capacity()) * std::mem::size_of::<u32>()
    }

    /// Name `id` of `text` (apart from the interner's table, so that the
    /// table can rehash while borrowed).
    fn name<'a>(&self, text: &'a str, id: u32) -> &'a str {
        let id = id as usize;
        let start = id.checked_sub(1).map_or(0, |i| self.end(i));
        &text[start..self.end(id)]
    }
}

/// Distinct string values a trait key may share before it is taken for
/// an identifier-like key (an email, a timestamp) and no longer pooled.
const SHARED_VALUES_PER_KEY: usize = 1024;

/// Shares the long string values (over 23 bytes, the ones not held
/// inline) of low-cardinality trait keys between the profiles of a shard:
/// one allocation per distinct value instead of one per user.
#[derive(Debug, Clone, Default)]
pub struct TraitValuePool {
    /// Per key: its distinct values, or `None` once it had too many.
    by_key: Vec<Option<hashbrown::HashSet<SmolStr>>>,
}

impl TraitValuePool {
    /// `value`, with a string replaced by the pool's copy when it has one.
    pub fn share(&mut self, key: TraitKey, value: &Value) -> Value {
        // A short string is held inline: there is nothing to share.
        let Value::Str(s) = value else {
            return value.clone();
        };
        if !s.is_heap_allocated() {
            return value.clone();
        }
        if self.by_key.len() <= key as usize {
            self.by_key
                .resize_with(key as usize + 1, || Some(Default::default()));
        }
        let slot = &mut self.by_key[key as usize];
        let Some(pool) = slot else {
            return value.clone();
        };
        if let Some(shared) = pool.get(s.as_str()) {
            return Value::Str(shared.clone());
        }
        if pool.len() >= SHARED_VALUES_PER_KEY {
            *slot = None;
        } else {
            pool.insert(s.clone());
        }
        value.clone()
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.by_key
            .iter()
            .flatten()
            // A slot is the 24-byte string plus a control byte.
            .map(|pool| pool.capacity() * 25 + pool.iter().map(|s| s.len() + 16).sum::<usize>())
            .sum()
    }
}

/// Whether trait `name` is `key` or below it (`key.…`): what deleting
/// `key` deletes.
pub fn key_at_or_below(name: &str, key: &str) -> bool {
    name.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// An id with an instant, in 12 bytes instead of the 16 of `(u32, i64)`:
/// memberships and timers are most of a profile's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamped {
    /// The audience slot or atom id.
    pub id: u32,
    /// The instant, as its low and high 32 bits (keeps the alignment at 4).
    at: [u32; 2],
}

impl Stamped {
    /// `id` at instant `at`.
    pub fn new(id: u32, at: Millis) -> Stamped {
        Stamped {
            id,
            at: crate::time::instant_words(at),
        }
    }

    /// The instant.
    pub fn at(self) -> Millis {
        crate::time::instant_from_words(self.at[0], self.at[1])
    }
}

/// The position of `id` in a list of [`Stamped`] sorted by id.
pub(crate) fn find_stamped(list: &[Stamped], id: u32) -> Result<usize, usize> {
    list.binary_search_by_key(&id, |s| s.id)
}

/// Makes room for one more element, growing by a quarter instead of
/// doubling: a profile is a handful of short lists, and doubling's slack
/// (up to half of each) would be a large share of its memory.
pub(crate) fn grow_one<T>(list: &mut Vec<T>) {
    if list.len() == list.capacity() {
        list.reserve_exact((list.len() / 4).max(1));
    }
}

/// Extends `list` to `len` with `fill`, growing its capacity by a quarter
/// rather than doubling: for a list with an entry per user (the timer
/// queue's instants), where doubling's room could be nearly half of it.
/// (The profiles themselves are kept in [`crate::pages::Pages`].)
pub(crate) fn extend_by_quarter<T>(list: &mut Vec<T>, len: usize, fill: impl FnMut() -> T) {
    if list.capacity() < len {
        list.reserve_exact(len - list.len() + list.len() / 4);
    }
    list.resize_with(len, fill);
}

/// One user's traits and aggregation states.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserData {
    /// Traits by key id (names in [`crate::catalog::Catalog::trait_keys`]),
    /// and the current values of the computed traits (see
    /// [`UserData::computed_value`]).
    pub traits: Traits,
    /// States sorted by id. (A [`ThinBox`] of the exact length: 8 bytes
    /// where no state is kept, as for the many profiles known only by
    /// their traits; a user gains a state at its first event of a kind
    /// and keeps it, so the list is seldom reallocated.)
    pub states: ThinBox<(StateId, UserState)>,
    /// Pending timers, sorted by id: an atom's (the lead of its group, see
    /// [`crate::catalog::Catalog::timer_lead`]) or a computed trait's
    /// (`COMPUTED_TIMER | slot`). (A [`ThinBox`] of the exact length: a
    /// profile holds about two, set far more often than added or removed,
    /// and a `ThinVec`'s 16 bytes of length and capacity would be 40% of
    /// them.)
    pub timers: ThinBox<Stamped>,
    /// Audiences the user is in, with the instant of entry, sorted by slot.
    /// (The shard's bitmaps hold the same memberships for queries.)
    pub memberships: AudienceList,
}

/// [`UserData`] as snapshots store it: the computed traits' values as a
/// list of their own, after the memberships.
#[derive(serde::Serialize)]
struct UserDataRef<'a> {
    traits: &'a Traits,
    states: &'a [(StateId, UserState)],
    timers: &'a [Stamped],
    memberships: &'a AudienceList,
    computed: &'a [(CtId, Value)],
}

/// A [`UserDataRef`] read back. (Tests write it too: it is the layout
/// from before the computed traits moved into the traits' box.)
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct UserDataOwned {
    traits: Traits,
    states: Vec<(StateId, UserState)>,
    timers: Vec<Stamped>,
    memberships: AudienceList,
    computed: Vec<(CtId, Value)>,
}

impl serde::Serialize for UserData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let stored = UserDataRef {
            traits: &self.traits,
            states: &self.states,
            timers: &self.timers,
            memberships: &self.memberships,
            computed: self.traits.computed(),
        };
        serde::Serialize::serialize(&stored, s)
    }
}

impl<'de> serde::Deserialize<'de> for UserData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let owned: UserDataOwned = serde::Deserialize::deserialize(d)?;
        let mut computed = owned.computed;
        // Snapshots hold them sorted; anything else is repaired, not trusted.
        computed.sort_by_key(|(ct, _)| *ct);
        computed.dedup_by_key(|(ct, _)| *ct);
        let mut traits = owned.traits;
        traits.set_computed_list(computed);
        Ok(UserData {
            traits,
            states: ThinBox::from(owned.states),
            timers: ThinBox::from(owned.timers),
            memberships: owned.memberships,
        })
    }
}

impl UserData {
    /// A trait's value.
    pub fn trait_value(&self, key: TraitKey) -> Option<Cow<'_, Value>> {
        self.traits.get(key)
    }

    /// The traits with their key names, sorted by name.
    pub fn named_traits<'a>(&'a self, keys: &'a Interner) -> Vec<(&'a str, Cow<'a, Value>)> {
        let mut named: Vec<(&str, Cow<'_, Value>)> =
            self.traits.iter().map(|(k, v)| (keys.name(k), v)).collect();
        named.sort_unstable_by(|a, b| a.0.cmp(b.0));
        named
    }

    /// The instant of the user's earliest pending timer.
    pub fn earliest_timer(&self) -> Option<Millis> {
        self.timers.iter().map(|s| s.at()).min()
    }

    /// The instant of the user's pending timer `id` (a group's lead atom,
    /// or a computed trait's), if any.
    pub fn timer(&self, id: u32) -> Option<Millis> {
        let timers = &self.timers[..];
        find_stamped(timers, id).ok().map(|i| timers[i].at())
    }

    /// Whether the user is in audience `aud`.
    pub fn is_member(&self, aud: AudId) -> bool {
        self.memberships.contains(aud)
    }

    /// When the user entered `aud`, if a member.
    pub fn entered(&self, aud: AudId) -> Option<Millis> {
        self.memberships.entered(aud)
    }

    /// Records entering (with the instant) or leaving `aud`; whether the
    /// membership flipped (false when it already was as asked).
    pub fn set_member(&mut self, aud: AudId, member: bool, at: Millis) -> bool {
        match member {
            true => self.memberships.insert(aud, at),
            false => self.memberships.remove(aud),
        }
    }

    /// The kept value of a computed trait (`None`: null).
    pub fn computed_value(&self, ct: CtId) -> Option<&Value> {
        self.traits.computed_value(ct)
    }

    /// Sets (or, with `None`, clears) a computed trait's kept value; returns
    /// the previous one.
    pub fn set_computed(&mut self, ct: CtId, value: Option<Value>) -> Option<Value> {
        self.traits.set_computed(ct, value)
    }

    /// A state, if the user ever had an entry in it (a state stays when
    /// eviction empties it; it is dropped only once no live definition
    /// reads it, see [`UserData::drop_unread`]).
    pub fn state(&self, id: StateId) -> Option<&UserState> {
        // The list read once: each read of a `ThinBox` decodes its pointer.
        let states = &self.states[..];
        states
            .binary_search_by_key(&id, |(s, _)| *s)
            .ok()
            .map(|i| &states[i].1)
    }

    /// Whether the profile has no entry of one of `states` since each
    /// became live (a live state is never dropped): a rule that cannot do
    /// without one of them is false on it (see [`crate::eval::gate_states`]).
    pub fn lacks_a_state(&self, states: &[StateId]) -> bool {
        states.iter().any(|&s| self.state(s).is_none())
    }

    /// Drops the states, timers and list entries the catalog no longer
    /// reads (see [`crate::catalog::Unread`]); returns the number of
    /// timers dropped. Nothing feeds those states events, and a rule that
    /// reads one again later finds it empty, as a state no earlier rule
    /// used; the timers would fire and change nothing.
    pub fn drop_unread(&mut self, unread: &Unread) -> usize {
        self.states.retain(|(s, _)| !unread.state(*s));
        if !unread.slots.is_empty() {
            let slots = self.memberships.slots();
            let stale: Vec<AudId> = slots.iter().filter(|&a| unread.slot(a)).collect();
            for aud in stale {
                self.memberships.remove(aud);
            }
        }
        self.timers.retain(|t| !unread.timer(t.id))
    }

    /// A state, created empty if missing.
    pub fn state_mut(&mut self, id: StateId) -> &mut UserState {
        let i = match self.states.binary_search_by_key(&id, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                self.states.insert(i, (id, UserState::default()));
                i
            }
        };
        &mut self.states[i].1
    }

    /// Applies identify traits in order (`ids` are the interned keys of
    /// `traits`, in the same order) to `unpacked`, which holds the user's
    /// traits unpacked (sorted by key), and packs the result into the
    /// profile; returns whether any trait changed. A deletion of `a` also
    /// deletes `a.*`.
    pub(crate) fn set_traits(
        &mut self,
        unpacked: &mut Vec<(TraitKey, Value)>,
        traits: &Flat,
        ids: &[TraitKey],
        keys: &Interner,
        pool: &mut TraitValuePool,
    ) -> bool {
        let mut changed = false;
        for ((key, value), &id) in traits.iter().zip(ids) {
            let existing = unpacked.binary_search_by_key(&id, |(k, _)| *k);
            match (value, existing) {
                (Some(v), Ok(i)) if unpacked[i].1 == *v => {}
                (Some(v), Ok(i)) => {
                    unpacked[i].1 = pool.share(id, v);
                    changed = true;
                }
                (Some(v), Err(i)) => {
                    unpacked.insert(i, (id, pool.share(id, v)));
                    changed = true;
                }
                (None, _) => {
                    let before = unpacked.len();
                    unpacked.retain(|(k, _)| !key_at_or_below(keys.name(*k), key));
                    changed |= unpacked.len() != before;
                }
            }
        }
        if changed {
            self.traits.replace_sorted(unpacked);
        }
        changed
    }

    /// The user's traits unpacked, sorted by key.
    pub fn unpacked_traits(&self) -> Vec<(TraitKey, Value)> {
        let mut unpacked = Vec::new();
        self.traits.unpack_into(&mut unpacked);
        unpacked
    }

    /// Gives back the room left in the memberships (after an event or a
    /// wake: within one, growth leaves room so that a dozen changes do not
    /// reallocate a dozen times; between events, the room would stay for
    /// good).
    pub fn trim_lists(&mut self) {
        self.memberships.trim();
    }

    /// Reads what evaluating this profile will reach first: the start of
    /// the traits and one element per 64 bytes of the state list (lists
    /// are searched by bisection, which reaches any of their lines). It
    /// returns a value folded from them, for the caller to pass to
    /// [`std::hint::black_box`]. A pass over many profiles warms a few
    /// dozen ahead this way: their loads miss the cache independently, so
    /// they wait out one memory latency together, where evaluating profile
    /// after profile waits for each miss in turn.
    pub fn warm_lists(&self) -> u64 {
        self.warm_traits().wrapping_add(self.warm_state_list())
    }

    /// The traits' part of [`UserData::warm_lists`].
    pub fn warm_traits(&self) -> u64 {
        u64::from(self.traits.first_byte())
    }

    /// The state list's part of [`UserData::warm_lists`].
    pub fn warm_state_list(&self) -> u64 {
        self.states
            .iter()
            .step_by(per_cache_line::<(StateId, UserState)>())
            .map(|(s, _)| u64::from(*s))
            .fold(0, u64::wrapping_add)
    }

    /// The second step of [`UserData::warm_lists`], once the state list is
    /// in the cache: the first instant of each of `states` the profile
    /// holds, its timers where it holds any of them (a pass reschedules
    /// the atoms reading them), and its memberships where `memberships`.
    /// Two steps, because a state's place is known only once the list is
    /// read: in one, each profile's loads would wait for each other.
    pub fn warm_states(&self, states: &[StateId], memberships: bool) -> u64 {
        let (held, instants) = states
            .iter()
            .filter_map(|&s| self.state(s))
            .fold((false, 0u64), |(_, acc), state| {
                (true, acc.wrapping_add(state.first_instant() as u64))
            });
        let timers = if held { self.warm_timers() } else { 0 };
        let listed = if memberships {
            u64::from(self.memberships.first_unit())
        } else {
            0
        };
        instants.wrapping_add(timers).wrapping_add(listed)
    }

    /// Both steps of warming for an event or a timer, which read states
    /// not known before it is handled: every state, the timers and the
    /// memberships.
    pub fn warm_all(&self) -> u64 {
        let states = self.states.iter().fold(0u64, |acc, (_, state)| {
            acc.wrapping_add(state.first_instant() as u64)
        });
        self.warm_lists()
            .wrapping_add(u64::from(self.memberships.first_unit()))
            .wrapping_add(self.warm_timers())
            .wrapping_add(states)
    }

    /// One timer per 64 bytes of the list (see [`UserData::warm_lists`]).
    fn warm_timers(&self) -> u64 {
        self.timers
            .iter()
            .step_by(per_cache_line::<Stamped>())
            .fold(0u64, |acc, t| acc.wrapping_add(u64::from(t.id)))
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let traits = self.traits.heap_bytes();
        let states: usize = self.states.iter().map(|(_, s)| s.heap_bytes()).sum();
        traits
            + states
            + self.states.heap_bytes()
            + self.timers.heap_bytes()
            + self.memberships.heap_bytes()
    }
}

/// A slot that shares another's memberships (see [`Memberships`]), as a
/// snapshot stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Share {
    /// The sharing slot.
    pub aud: AudId,
    /// The slot whose memberships it shares.
    pub keeper: AudId,
    /// See [`Memberships::entered_from`].
    pub since: Millis,
}

/// Elements of `T` in a 64-byte cache line (at least one).
fn per_cache_line<T>() -> usize {
    (64 / std::mem::size_of::<T>()).max(1)
}

/// Members of every audience, for the users of one shard, as bitmaps of
/// dense ids (for size, members and overlap queries).
///
/// The profiles' own lists are the truth during an operation; the bitmaps
/// catch up later ([`Memberships::flush`]). An event changes about fifteen
/// memberships, and inserting one id into a roaring array container moves
/// up to 8 KiB: merged per audience, many changes at once, the same
/// changes cost a fraction of that. Changes wait until [`FLUSH_FROM`]
/// have gathered in the shard ([`Memberships::flush_if_due`] at the end
/// of each operation): a large batch is merged at its end, the changes of
/// small calls (one event each, as a request-at-a-time caller sends them)
/// with those of many other calls. Reads in between see them laid over
/// the bitmaps, on a copy.
///
/// The followers of a rule class (`Catalog::class_followers`) have their
/// lead's members at the end of every operation, so a follower can share
/// its lead's memberships instead of keeping a copy (the standard
/// workload's 1,000 audiences hold 524 rules, and most changes are a
/// follower's): it has no bitmap and no entries in the profiles' lists of
/// its own, its changes are not noted, and reads go to its keeper's
/// ([`Memberships::keeper`], [`Memberships::is_listed`],
/// [`Memberships::entered`]). The shard starts and ends the sharing as
/// catalogs change (`Shard::share_classes`, `Shard::unshare_changed`), and
/// a definition of copies starts it at once (`Shard::backfill_copies`).
#[derive(Debug, Clone, Default)]
pub struct Memberships {
    /// Members per audience slot (global dense ids), as of the last flush;
    /// empty for a slot that shares another's.
    bitmaps: Vec<RoaringBitmap>,
    /// Per slot, the slot whose bitmap and list entries hold its
    /// memberships: its class lead while it shares the lead's, else itself
    /// (as are slots past the end).
    keeper: Vec<AudId>,
    /// Per slot, while it shares: the instant it entered its keeper's
    /// members at, if later than they did (see [`Memberships::entered`]).
    since: Vec<Millis>,
    /// Per slot, the slots sharing its memberships.
    sharers: Vec<Vec<AudId>>,
    /// The catalog generation whose class leads `keeper` follows.
    pub shared_for: Option<u64>,
    /// Per slot, `uid << 1 | entered` of each change since the last flush
    /// (kept, emptied, from flush to flush).
    touched: Vec<Vec<u32>>,
    /// The slots with changes since the last flush.
    dirty: Vec<AudId>,
    /// Changes since the last flush, over all slots.
    pending: usize,
}

/// Below this many changes of one audience in a flush, ids are inserted
/// one by one; from it on, merged as a bitmap (building one costs more
/// than a few single inserts).
const MERGE_FROM: usize = 16;

/// Changes gathered before [`Memberships::flush_if_due`] merges them: at
/// 4 bytes each, 256 KiB held at most, and a few dozen changes per
/// audience merged at once at a thousand audiences.
pub const FLUSH_FROM: usize = 1 << 16;

/// A bitmap of ids ascending (as a flush's are); built in one pass.
fn sorted_bitmap(uids: &[u32]) -> RoaringBitmap {
    RoaringBitmap::from_sorted_iter(uids.iter().copied())
        .unwrap_or_else(|_| uids.iter().copied().collect())
}

/// The net effect of one slot's changes (`uid << 1 | entered`, each
/// user's together): the users who entered and those who left since the
/// last flush, ascending. A user's changes of one audience alternate (each
/// is a flip), so the last one is the one in the majority, and as many
/// entries as exits leave the membership as it was.
fn net_changes(changes: &[u32], entered: &mut Vec<u32>, exited: &mut Vec<u32>) {
    entered.clear();
    exited.clear();
    for run in changes.chunk_by(|a, b| a >> 1 == b >> 1) {
        let uid = run[0] >> 1;
        let entries = run.iter().filter(|&&c| c & 1 == 1).count();
        match (2 * entries).cmp(&run.len()) {
            std::cmp::Ordering::Greater => entered.push(uid),
            std::cmp::Ordering::Less => exited.push(uid),
            std::cmp::Ordering::Equal => {}
        }
    }
}

/// Sorts a slot's changes by user if they are not (a batch applied user
/// by user leaves them so; changes of several calls are not).
fn group_by_user(changes: &mut [u32]) {
    if !changes.is_sorted_by_key(|c| c >> 1) {
        changes.sort_unstable();
    }
}

impl Memberships {
    /// The bitmaps of a snapshot, one per audience slot, and its shares
    /// (see [`Memberships::shares`]).
    pub fn from_snapshot(bitmaps: Vec<RoaringBitmap>, shares: &[Share]) -> Memberships {
        let mut members = Memberships {
            bitmaps,
            ..Default::default()
        };
        for share in shares {
            members.share(share.aud, share.keeper, share.since);
        }
        members
    }

    /// Makes room for audience slots up to `n`.
    pub fn ensure(&mut self, n: usize) {
        if self.bitmaps.len() < n {
            self.bitmaps.resize_with(n, RoaringBitmap::new);
        }
    }

    /// The slot whose bitmap and list entries hold the memberships of `aud`.
    #[inline]
    pub fn keeper(&self, aud: AudId) -> AudId {
        self.keeper.get(aud as usize).copied().unwrap_or(aud)
    }

    /// Whether `aud` shares another slot's memberships.
    #[inline]
    pub fn is_shared(&self, aud: AudId) -> bool {
        self.keeper(aud) != aud
    }

    /// The slots sharing `keeper`'s memberships.
    pub fn sharers(&self, keeper: AudId) -> &[AudId] {
        self.sharers.get(keeper as usize).map_or(&[], Vec::as_slice)
    }

    /// `aud` and the slots sharing its memberships: the audiences a list
    /// entry of `aud` stands for.
    pub fn listed_as(&self, aud: AudId) -> impl Iterator<Item = AudId> + '_ {
        std::iter::once(aud).chain(self.sharers(aud).iter().copied())
    }

    /// Whether `user` (of this shard) is in `aud`, by its list.
    #[inline]
    pub fn is_listed(&self, user: &UserData, aud: AudId) -> bool {
        user.is_member(self.keeper(aud))
    }

    /// When `user` (of this shard) entered `aud`, if in it, by its list.
    #[inline]
    pub fn entered(&self, user: &UserData, aud: AudId) -> Option<Millis> {
        let keeper = self.keeper(aud);
        user.entered(keeper).map(|at| self.entered_from(aud, at))
    }

    /// When a user who entered `aud`'s keeper at `at` entered `aud`: a copy
    /// defined later entered its lead's members then, the later ones when
    /// the lead did.
    #[inline]
    pub fn entered_from(&self, aud: AudId, at: Millis) -> Millis {
        match self.since.get(aud as usize) {
            Some(&since) if self.is_shared(aud) => at.max(since),
            _ => at,
        }
    }

    /// Lets `aud` share `keeper`'s memberships (which it has: entered at
    /// the same instants, or at `since` when later), dropping its bitmap;
    /// the caller drops its list entries.
    pub fn share(&mut self, aud: AudId, keeper: AudId, since: Millis) {
        debug_assert!(!self.is_shared(keeper) && aud != keeper);
        let slot = aud as usize;
        if self.keeper.len() <= slot {
            let from = self.keeper.len() as AudId;
            self.keeper.extend(from..=aud);
            self.since.resize(slot + 1, Millis::MIN);
        }
        self.keeper[slot] = keeper;
        self.since[slot] = since;
        if self.sharers.len() <= keeper as usize {
            self.sharers.resize_with(keeper as usize + 1, Vec::new);
        }
        self.sharers[keeper as usize].push(aud);
        if let Some(bitmap) = self.bitmaps.get_mut(slot) {
            *bitmap = RoaringBitmap::new();
        }
        if let Some(changes) = self.touched.get_mut(slot) {
            self.pending -= changes.len();
            *changes = Vec::new();
        }
    }

    /// Ends `aud`'s sharing: it gets a copy of its keeper's bitmap (the
    /// caller gives it its list entries back, unless it is being removed).
    pub fn unshare(&mut self, aud: AudId) {
        let keeper = self.keeper(aud);
        if keeper == aud {
            return;
        }
        // A keeper keeps its own, so the copy is of the members.
        let own = self.bitmap(keeper).into_owned();
        let slot = aud as usize;
        self.ensure(slot + 1);
        self.bitmaps[slot] = own;
        self.keeper[slot] = aud;
        self.since[slot] = Millis::MIN;
        self.sharers[keeper as usize].retain(|&a| a != aud);
    }

    /// Every slot that shares another's memberships, for a snapshot.
    pub fn shares(&self) -> Vec<Share> {
        let shared = self.keeper.iter().enumerate();
        shared
            .filter(|&(slot, &keeper)| keeper != slot as AudId)
            .map(|(slot, &keeper)| Share {
                aud: slot as AudId,
                keeper,
                since: self.since[slot],
            })
            .collect()
    }

    /// The changes of `aud` not yet flushed, if it has any.
    fn waiting(&self, aud: AudId) -> Option<&Vec<u32>> {
        self.touched.get(aud as usize).filter(|c| !c.is_empty())
    }

    /// The net changes of `aud` not yet flushed (users who entered, users
    /// who left), or `None` if it has none.
    fn unflushed(&self, aud: AudId) -> Option<(Vec<u32>, Vec<u32>)> {
        let mut changes = self.waiting(aud)?.clone();
        group_by_user(&mut changes);
        let (mut entered, mut exited) = (Vec::new(), Vec::new());
        net_changes(&changes, &mut entered, &mut exited);
        Some((entered, exited))
    }

    /// The members of `aud` (empty if the slot was never used), changes
    /// not yet flushed included: borrowed when there are none.
    pub fn bitmap(&self, aud: AudId) -> Cow<'_, RoaringBitmap> {
        let aud = self.keeper(aud);
        let flushed = self.bitmaps.get(aud as usize);
        match (self.unflushed(aud), flushed) {
            (None, Some(b)) => Cow::Borrowed(b),
            (None, None) => Cow::Owned(RoaringBitmap::new()),
            (Some((entered, exited)), b) => {
                let mut b = b.cloned().unwrap_or_default();
                b.extend(entered);
                exited.into_iter().for_each(|uid| {
                    b.remove(uid);
                });
                Cow::Owned(b)
            }
        }
    }

    /// Every slot's own members, in slot order (changes not yet flushed
    /// included): none for a slot that shares another's.
    pub fn kept_bitmaps(&self) -> impl Iterator<Item = Cow<'_, RoaringBitmap>> + '_ {
        let slots = self.bitmaps.len().max(self.touched.len());
        (0..slots).map(|slot| match self.is_shared(slot as AudId) {
            true => Cow::Owned(RoaringBitmap::new()),
            false => self.bitmap(slot as AudId),
        })
    }

    /// Whether `uid` is a member of `aud`, when the bitmap tells it alone
    /// (`None` while `aud` has changes not yet flushed: the profile's list
    /// tells it then).
    pub fn contains_flushed(&self, aud: AudId, uid: u32) -> Option<bool> {
        let aud = self.keeper(aud);
        if self.waiting(aud).is_some() {
            return None;
        }
        Some(
            self.bitmaps
                .get(aud as usize)
                .is_some_and(|b| b.contains(uid)),
        )
    }

    /// Number of members of `aud` (changes not yet flushed included).
    pub fn len(&self, aud: AudId) -> u64 {
        let aud = self.keeper(aud);
        let flushed = self.bitmaps.get(aud as usize).map_or(0, |b| b.len());
        match self.unflushed(aud) {
            // Each net entry was a non-member at the flush, each net exit
            // a member.
            Some((entered, exited)) => flushed + entered.len() as u64 - exited.len() as u64,
            None => flushed,
        }
    }

    /// Whether `aud` has no members (changes not yet flushed included).
    pub fn is_empty(&self, aud: AudId) -> bool {
        self.len(aud) == 0
    }

    /// Notes that `uid` entered (was not a member) or left (was one) `aud`;
    /// the bitmap follows at a later [`Memberships::flush`]. (Ids from
    /// 2^31 on, which do not fit the packed form, go to the bitmap at once.)
    /// A sharing slot's changes are its keeper's, noted under the keeper.
    #[inline]
    pub fn touch(&mut self, aud: AudId, uid: u32, entered: bool) {
        let slot = aud as usize;
        // The shard notes only its own changes (see `Shard::set_member`).
        debug_assert!(!self.is_shared(aud), "slot {aud} shares another's");
        if uid > u32::MAX >> 1 {
            self.ensure(slot + 1);
            if entered {
                self.bitmaps[slot].insert(uid);
            } else {
                self.bitmaps[slot].remove(uid);
            }
            return;
        }
        if self.touched.len() <= slot {
            self.touched.resize_with(slot + 1, Vec::new);
        }
        let changes = &mut self.touched[slot];
        if changes.is_empty() {
            self.dirty.push(aud);
        }
        changes.push(uid << 1 | u32::from(entered));
        self.pending += 1;
    }

    /// Flushes once [`FLUSH_FROM`] changes have gathered.
    pub fn flush_if_due(&mut self) {
        if self.pending >= FLUSH_FROM {
            self.flush();
        }
    }

    /// Applies the changes since the last flush to the bitmaps.
    pub fn flush(&mut self) {
        let (mut entered, mut exited) = (Vec::new(), Vec::new());
        for aud in std::mem::take(&mut self.dirty) {
            let changes = &mut self.touched[aud as usize];
            group_by_user(changes);
            net_changes(changes, &mut entered, &mut exited);
            // Kept for the next batch, but not at the size of a one-off
            // (a backfill's) when batches are far smaller.
            let used = changes.len();
            changes.clear();
            if changes.capacity() > 1 << 16 && changes.capacity() > 4 * used {
                changes.shrink_to(2 * used);
            }
            self.ensure(aud as usize + 1);
            let bitmap = &mut self.bitmaps[aud as usize];
            if entered.len() + exited.len() < MERGE_FROM {
                for &uid in &entered {
                    bitmap.insert(uid);
                }
                for &uid in &exited {
                    bitmap.remove(uid);
                }
            } else {
                *bitmap |= sorted_bitmap(&entered);
                *bitmap -= sorted_bitmap(&exited);
            }
        }
        self.pending = 0;
    }

    /// Drops every member of a removed `aud` (which keeps its own bitmap: a
    /// removed slot has no class), and the room its changes had (a
    /// backfill's, kept for the next flush, which a removed slot never has).
    pub fn clear(&mut self, aud: AudId) {
        debug_assert_eq!(self.keeper(aud), aud);
        self.flush();
        if let Some(b) = self.bitmaps.get_mut(aud as usize) {
            b.clear();
        }
        if let Some(changes) = self.touched.get_mut(aud as usize) {
            *changes = Vec::new();
        }
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let bitmaps: usize = self.bitmaps.iter().map(|b| b.serialized_size()).sum();
        let touched: usize = self.touched.iter().map(|t| t.capacity() * 4 + 24).sum();
        let sharers: usize = self.sharers.iter().map(|s| s.capacity() * 4 + 24).sum();
        bitmaps
            + touched
            + sharers
            + self.keeper.capacity() * std::mem::size_of::<AudId>()
            + self.since.capacity() * std::mem::size_of::<Millis>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_keep_the_computed_traits_as_a_field_after_the_memberships() {
        let mut user = UserData {
            traits: [(3, Value::Num(2.0)), (7, Value::Str("x".into()))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        user.state_mut(4).insert(1_000, None);
        user.timers.insert(0, Stamped::new(9, 5_000));
        user.set_member(2, true, 1_000);
        user.set_computed(5, Some(Value::Num(1.5)));
        user.set_computed(1, Some(Value::Str("a".into())));
        // The layout snapshots held while the computed traits' values were
        // a field of the profile.
        let old = UserDataOwned {
            traits: user.traits.clone(),
            states: user.states.to_vec(),
            timers: user.timers.to_vec(),
            memberships: user.memberships.clone(),
            computed: user.traits.computed().to_vec(),
        };
        let bytes = postcard::to_allocvec(&user).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&old).unwrap());
        let back: UserData = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, user);
        assert_eq!(back.computed_value(5), Some(&Value::Num(1.5)));
        assert_eq!(back.computed_value(2), None);
        // Setting traits keeps the computed values; clearing them all
        // leaves no box behind.
        let mut unpacked = back.unpacked_traits();
        unpacked[0].1 = Value::Num(3.0);
        let mut changed = back.clone();
        changed.traits.replace_sorted(&unpacked);
        assert_eq!(changed.computed_value(1), Some(&Value::Str("a".into())));
        changed.set_computed(1, None);
        changed.set_computed(5, None);
        assert_eq!(changed.traits.heap_bytes(), changed.traits.packed_len());
    }

    #[test]
    fn aliases_redirect_names_and_merged_ids_keep_their_own() {
        let mut ids = Interner::default();
        let (a, b, c) = (ids.intern("a"), ids.intern("b"), ids.intern("c"));
        ids.redirect("phone", a);
        assert_eq!(ids.get("phone"), Some(a));
        assert_eq!(ids.intern("phone"), a);
        // `a` merged into `b`: every name of `a` now stands for `b`.
        ids.merge_into(a, b);
        assert_eq!((ids.get("a"), ids.get("phone")), (Some(b), Some(b)));
        assert_eq!(ids.name(a), "a");
        assert!(ids.is_merged(a) && !ids.is_merged(b));
        // Then `b` into `c`: the names redirected to `b` follow.
        ids.merge_into(b, c);
        assert_eq!([ids.get("a"), ids.get("b"), ids.get("phone")], [Some(c); 3]);
        let mut aliases: Vec<(&str, u32)> = ids.aliases().collect();
        aliases.sort_unstable();
        assert_eq!(aliases, [("a", c), ("b", c), ("phone", c)]);
        assert_eq!(ids.names().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(ids.intern("d"), 3);
    }

    #[test]
    fn interner_assigns_dense_ids_and_finds_them_again() {
        let mut ids = Interner::default();
        assert!(ids.is_empty());
        let names: Vec<String> = (0..5000).map(|i| format!("u{i:07}")).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(ids.intern(name), i as u32);
        }
        // Again, after the table has grown many times: the same ids.
        for (i, name) in names.iter().enumerate() {
            assert_eq!(ids.intern(name), i as u32);
            assert_eq!(ids.get(name), Some(i as u32));
            assert_eq!(ids.name(i as u32), name);
        }
        assert_eq!(ids.len(), names.len());
        assert_eq!(ids.get("u9999999"), None);
        assert_eq!(ids.get(""), None);
        assert_eq!(ids.intern(""), names.len() as u32);
        assert_eq!(ids.name(names.len() as u32), "");
        assert!(ids
            .names()
            .take(names.len())
            .eq(names.iter().map(String::as_str)));
        assert_eq!(ids.names().len(), names.len() + 1);
        // Truncated, the names past the cut are unknown and their ids go
        // to the next names interned.
        ids.truncate(1200);
        assert_eq!(ids.len(), 1200);
        assert_eq!(ids.get(&names[1199]), Some(1199));
        assert_eq!(ids.get(&names[1200]), None);
        assert_eq!(ids.get(""), None);
        assert_eq!(ids.intern("other"), 1200);
        assert_eq!(ids.intern(&names[1200]), 1201);
        assert_eq!(ids.name(1200), "other");
        assert!(ids
            .names()
            .take(1200)
            .eq(names[..1200].iter().map(String::as_str)));
        ids.truncate(0);
        assert!(ids.is_empty());
        assert_eq!(ids.intern(&names[7]), 0);
    }

    /// Name ends past 4 GiB keep their high bits, without a 4 GiB text.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn name_ends_past_four_gib() {
        let four_gib = 1usize << 32;
        let ends = [
            10,
            four_gib - 1,
            four_gib,
            four_gib + 5,
            3 * four_gib + 1,
            3 * four_gib + 2,
        ];
        let mut kept = Ends::default();
        for end in ends {
            kept.push(end);
        }
        assert_eq!(kept.wraps, vec![2, 4, 4]);
        for (id, end) in ends.into_iter().enumerate() {
            assert_eq!(kept.end(id), end);
        }
        // Cut back to the first three, the wraps of the dropped ends go.
        kept.truncate(3);
        assert_eq!(kept.wraps, vec![2]);
        assert_eq!(kept.end(2), four_gib);
        kept.push(2 * four_gib + 7);
        assert_eq!(kept.wraps, vec![2, 3]);
        assert_eq!(kept.end(3), 2 * four_gib + 7);
    }

    #[test]
    fn deleting_a_key_reaches_its_children_only() {
        assert!(key_at_or_below("address", "address"));
        assert!(key_at_or_below("address.city", "address"));
        assert!(!key_at_or_below("addresses", "address"));
        assert!(!key_at_or_below("addr", "address"));
    }

    #[test]
    fn traits_are_kept_by_id_and_listed_by_name() {
        let mut keys = Interner::default();
        let mut user = UserData::default();
        let set: Flat = vec![
            ("plan".into(), Some(Value::Str("pro".into()))),
            ("address.city".into(), Some(Value::Str("Oslo".into()))),
            ("address.zip".into(), Some(Value::Num(150.0))),
            ("age".into(), Some(Value::Num(40.0))),
        ];
        let ids: Vec<TraitKey> = set.iter().map(|(k, _)| keys.intern(k)).collect();
        let mut pool = TraitValuePool::default();
        assert!(user.set_traits(&mut user.unpacked_traits(), &set, &ids, &keys, &mut pool));
        assert!(
            !user.set_traits(&mut user.unpacked_traits(), &set, &ids, &keys, &mut pool),
            "same values: no change"
        );
        assert_eq!(
            user.trait_value(ids[0]).as_deref(),
            Some(&Value::Str("pro".into()))
        );
        let names: Vec<&str> = user.named_traits(&keys).iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["address.city", "address.zip", "age", "plan"]);
        let delete: Flat = vec![("address".into(), None)];
        let id = [keys.intern("address")];
        assert!(user.set_traits(&mut user.unpacked_traits(), &delete, &id, &keys, &mut pool));
        let names: Vec<&str> = user.named_traits(&keys).iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["age", "plan"]);
    }

    #[test]
    fn low_cardinality_values_are_shared_and_identifiers_are_not() {
        let mut pool = TraitValuePool::default();
        let long = || Value::Str(SmolStr::from("Enterprise (annual, invoiced)"));
        let (Value::Str(a), Value::Str(b)) = (pool.share(0, &long()), pool.share(0, &long()))
        else {
            unreachable!()
        };
        assert_eq!(a.as_ptr(), b.as_ptr(), "equal values share one string");
        let Value::Str(us) = pool.share(3, &Value::Str("US".into())) else {
            unreachable!()
        };
        assert!(!us.is_heap_allocated(), "a short value is inline");
        // An identifier-like key stops being pooled once it has too many values.
        let email = |i: usize| SmolStr::from(format!("customer{i:05}@mail.example.com"));
        for i in 0..=SHARED_VALUES_PER_KEY {
            pool.share(1, &Value::Str(email(i)));
        }
        // The first one was pooled; now the caller's own string comes back.
        let fresh = email(0);
        let Value::Str(kept) = pool.share(1, &Value::Str(fresh.clone())) else {
            unreachable!()
        };
        assert_eq!(kept.as_ptr(), fresh.as_ptr(), "no longer pooled");
        assert_eq!(pool.share(2, &Value::Num(1.0)), Value::Num(1.0));
    }

    #[test]
    fn stamped_keeps_every_instant() {
        assert_eq!(std::mem::size_of::<Stamped>(), 12);
        for at in [
            0,
            1,
            -1,
            1_700_000_000_000,
            -62_135_596_800_000,
            i64::MAX,
            i64::MIN,
        ] {
            let s = Stamped::new(7, at);
            assert_eq!((s.id, s.at()), (7, at));
        }
    }

    proptest::proptest! {
        /// Batched bitmaps, flushed at random points and read in between,
        /// hold what inserting and removing at once would: for ids flipped
        /// once or many times, in few and in many (merged) per audience,
        /// and for ids too large to pack.
        #[test]
        fn flushed_bitmaps_match_immediate_updates(
            ops in proptest::collection::vec(
                (0u32..3, proptest::prop_oneof![0u32..40, 70_000u32..70_100, (u32::MAX - 3)..=u32::MAX], proptest::bool::weighted(0.02)),
                0..400,
            ),
        ) {
            let mut batched = Memberships::default();
            let mut direct: Vec<RoaringBitmap> = vec![RoaringBitmap::new(); 3];
            for (aud, uid, flush) in ops {
                // Each change flips the membership, as the profiles' do.
                let member = !direct[aud as usize].contains(uid);
                batched.touch(aud, uid, member);
                if member {
                    direct[aud as usize].insert(uid);
                } else {
                    direct[aud as usize].remove(uid);
                }
                if flush {
                    batched.flush();
                }
                // Reads see the changes not flushed yet laid over the bitmaps.
                if flush || uid % 7 == 0 {
                    for a in 0..3 {
                        let got = batched.bitmap(a).into_owned();
                        proptest::prop_assert_eq!(&got, &direct[a as usize]);
                        proptest::prop_assert_eq!(batched.len(a), direct[a as usize].len());
                    }
                    let all: Vec<RoaringBitmap> = batched.kept_bitmaps().map(|b| b.into_owned()).collect();
                    for (a, got) in all.iter().enumerate() {
                        proptest::prop_assert_eq!(got, &direct[a]);
                    }
                }
            }
            batched.flush();
            for a in 0..3 {
                let got = batched.bitmap(a).into_owned();
                proptest::prop_assert_eq!(&got, &direct[a as usize]);
            }
        }
    }
}
