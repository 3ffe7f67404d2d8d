//! A shard: the users whose dense id is `index (mod count)`, their
//! memberships and their timers. Shards share nothing mutable, so a batch
//! runs on all of them at once.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use roaring::RoaringBitmap;
use smallvec::SmallVec;

use crate::audience_list::{FlipScratch, PassFlips};
use crate::catalog::{
    AtomId, AudId, CExpr, Catalog, CtId, Formula, Polarity, StateId, StateIndex, TraitKey, Unread,
    WindowDef, FLIP_DEPENDENTS, FLIP_FOLLOWERS, FLIP_TIMED,
};
use crate::eval::{
    eval_atom, eval_bool, eval_known_first, eval_value, AtomTruths, Env, PropsEnv, UserEnv,
    ViewMemo,
};
use crate::first_identify::FirstIdentifyMemo;
use crate::pages::Pages;
use crate::profile::{
    find_stamped, key_at_or_below, Interner, Memberships, Stamped, TraitValuePool, UserData,
};
use crate::queue::{AtomMemo, RankQueue, UserQueue};
use crate::state::{aggregate, aggregate_appended, window_range, UserState};
use crate::time::Millis;
use crate::trait_truths::{pack_bits, KeyAtoms, KeyPlan, KeyTruths, TraitTruths};
use crate::traits::Traits;
use crate::value::{Flat, Value};

/// Why a membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Reason {
    /// An event or identify call.
    Event,
    /// Time alone (a window lapsed, a `since` bound was crossed).
    Time,
    /// An audience was defined or replaced.
    Definition,
    /// Two profiles were merged.
    Merge,
    /// The audience was removed.
    Delete,
}

impl Reason {
    /// The reason's name (`event`, `time`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Event => "event",
            Reason::Time => "time",
            Reason::Definition => "definition",
            Reason::Merge => "merge",
            Reason::Delete => "delete",
        }
    }
}

/// Profiles a backfill looks at together before evaluating them one by one
/// (see [`Shard::warm_ahead`]): enough for their independent cache misses
/// to overlap, few enough that what they bring stays in L1/L2. On the
/// benchmark workload one profile in eight holds states, so a window of
/// 256 warms about thirty (one step over 32 was 4% slower re-defining a
/// rule, and no different defining new ones; 1,024 no faster).
/// Where a rule reads the traits of profiles without states, a window also
/// reads each such profile's traits (one independent load each; not tuned
/// apart).
const BACKFILL_AHEAD: usize = 256;

/// Members read ahead when a removal drops their list entries (see
/// `Shard::remove_audience`).
const REMOVAL_AHEAD: usize = 16;

/// Events of a batch (or users of an advance) whose users' profiles are
/// brought into the cache together, ahead of them (see
/// [`Shard::warm_users`]; a user with several events among them is read
/// again, from the cache).
const WARM_AHEAD: usize = 16;

/// Timer ids with this bit set are computed-trait timers (`COMPUTED_TIMER |
/// slot`); the others are atom ids. Both share the per-shard heap, so that
/// the instants of both kinds are processed in one order.
pub const COMPUTED_TIMER: AtomId = 1 << 31;

/// What a change is about. Plain data (slots and values) so that it can be
/// stored in the change log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    /// The user entered (`entered`) or exited an audience.
    Membership {
        /// The audience slot.
        aud: AudId,
        /// Entered (true) or exited.
        entered: bool,
    },
    /// The value of a computed trait changed.
    Computed {
        /// The computed trait slot.
        ct: CtId,
        /// The values, boxed: membership changes are the common case and
        /// keep the change log's entries small.
        values: Box<ValueChange>,
    },
}

impl ChangeKind {
    /// A computed trait's change of value.
    pub fn computed(ct: CtId, old: Option<Value>, new: Option<Value>) -> ChangeKind {
        ChangeKind::Computed {
            ct,
            values: Box::new(ValueChange { old, new }),
        }
    }
}

/// A computed trait's value before and after a change.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValueChange {
    /// The value before (`None`: null or none yet).
    pub old: Option<Value>,
    /// The value after (`None`: null).
    pub new: Option<Value>,
}

/// Where a change goes among all shards' changes of one call: first by
/// what made it (an event's index in its batch, a timer's instant, a user
/// for a definition), then by a step within that (a phase or a user) and a
/// counter; the two are packed in one word, as each fits 32 bits (a
/// batch's change buffer holds millions of changes, 8 bytes each saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order(i64, u64);

impl Order {
    /// The key of `(first, step, counter)`, in that order of precedence;
    /// `step` and `counter` below 2^32.
    pub fn new(first: i64, step: u64, counter: u64) -> Order {
        debug_assert!(step >> 32 == 0 && counter >> 32 == 0, "{step} {counter}");
        Order(first, step << 32 | counter)
    }
}

/// A change produced by a shard, before it gets its global sequence number.
/// `order` sorts changes from all shards into one deterministic sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardChange {
    /// Sort key across shards.
    pub order: Order,
    /// The user's dense id.
    pub uid: u32,
    /// What changed.
    pub kind: ChangeKind,
    /// The instant.
    pub at: Millis,
    /// Why.
    pub reason: Reason,
}

/// One event routed to a shard.
#[derive(Debug)]
pub enum Work<'a> {
    /// A track event at a floored instant.
    Track {
        /// Index in the batch.
        index: usize,
        /// User.
        uid: u32,
        /// Event time (floored).
        t: Millis,
        /// Event name.
        name: &'a str,
        /// Flattened properties and context.
        properties: &'a [(Arc<str>, Value)],
    },
    /// An identify call.
    Identify {
        /// Index in the batch.
        index: usize,
        /// User.
        uid: u32,
        /// Traits to set or delete.
        traits: &'a Flat,
        /// The interned keys of `traits`, in the same order.
        keys: &'a [TraitKey],
    },
}

/// The users of one partition.
#[derive(Debug, Clone, Default)]
pub struct Shard {
    /// This shard's index.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
    /// Users by local index (`uid / count`).
    pub users: Pages<UserData>,
    /// Memberships of these users.
    pub members: Memberships,
    /// When each user's earliest timer is due (the instants of the timers
    /// themselves are in the users' lists).
    timers: UserQueue,
    live_timers: usize,
    /// Work counters, for benchmarks and metrics.
    pub counters: Counters,
    /// Shared string values of the users' traits.
    trait_values: TraitValuePool,
    /// Scratch: the rules queued for the user being processed.
    queue: RankQueue,
    /// Scratch: atom truths within one evaluation pass.
    memo: AtomMemo,
    /// Scratch: rule results within one evaluation pass, by rule class
    /// (audiences sharing a rule evaluate it once).
    rule_memo: AtomMemo,
    /// Scratch: view values within one evaluation pass (or one probe of
    /// atoms before an event). Lent to the evaluation in a `RefCell` (see
    /// [`Shard::with_view_memo`]): kept in one, the shard would not be `Sync`.
    views: ViewMemo,
    /// Scratch: this shard's changes of one batch (see `Engine::on_shards`).
    pub(crate) change_buffer: Vec<ShardChange>,
    /// Scratch: the atoms of a user whose timers are firing.
    firing: Vec<AtomId>,
    /// Scratch: flips of one pass not yet in the user's list (see
    /// [`Shard::evaluate`]).
    pass_flips: PassFlips,
    /// Scratch: working room of
    /// [`crate::audience_list::AudienceList::apply_flips`].
    flip_scratch: FlipScratch,
    /// The membership flips of new profiles' first identifies, by the
    /// truths of their trait atoms.
    first_identify: FirstIdentifyMemo,
    /// The truths of the trait tests of each key, by the trait's value.
    trait_truths: TraitTruths,
    /// The atoms an identify of each list of trait keys reads.
    key_atoms: KeyAtoms,
    /// Scratch: a batch's events in user order, each as its user (high
    /// half) and its index into the batch (low half).
    by_user: Vec<u64>,
    /// Scratch: the users with timers due in an `advance`.
    due_users: Vec<u32>,
    /// The runs of changes made by the last `apply` or `advance`, in log
    /// order (see [`Shard::changes_in_log_order`]).
    runs: Vec<Run>,
    /// Where those runs start in the operation's changes: `None` when the
    /// changes are to be read in the order they were made (after another
    /// operation, whose changes the engine sorts by key; after an `apply`
    /// or `advance` whose runs lie in order; or once put in order). The
    /// engine clears it before each operation
    /// ([`Shard::forget_change_order`]).
    runs_from: Option<usize>,
    /// Scratch: the changes being reordered.
    reorder_buffer: Vec<ShardChange>,
    /// Scratch: one user's traits, unpacked at the start of each of its
    /// events and kept until another user's event (any evaluation of that
    /// user reads them; for other users, as in a backfill reading one trait
    /// per profile, atoms read the packed traits).
    unpacked: UnpackedTraits,
    /// Profiles (by local index) that an alias merged into another's
    /// ([`Shard::take_profile`]): empty, named by no id any more, and left
    /// out of every evaluation of all profiles (a backfill, a preview).
    pub(crate) husks: RoaringBitmap,
    /// Tests only: a definition of copies evaluates every profile, as any
    /// other does, rather than sharing at once (see
    /// [`Shard::backfill_copies`]), so that the two can be compared.
    #[cfg(test)]
    pub(crate) copies_evaluated: bool,
}

/// The traits of one user (by local index), unpacked once for all the
/// atoms of its events that read them: profiles keep traits packed.
/// Invariant: while `user` is `Some(local)`, `traits` equals the traits of
/// profile `local`. Profiles' traits change only through
/// [`Shard::set_traits`], which keeps it; a new profile slot resets it.
#[derive(Debug, Clone, Default)]
struct UnpackedTraits {
    user: Option<usize>,
    traits: Vec<(TraitKey, Value)>,
}

impl UnpackedTraits {
    /// The traits of `local`, if unpacked (and not changed since).
    fn of(&self, local: usize) -> Option<&[(TraitKey, Value)]> {
        (self.user == Some(local)).then_some(&self.traits[..])
    }

    /// Unpacks the traits of `local` unless they are already.
    fn unpack(&mut self, local: usize, user: &UserData) {
        if self.user != Some(local) {
            self.user = None;
            self.traits.clear();
            user.traits.unpack_into(&mut self.traits);
            self.user = Some(local);
        }
    }
}

/// The instant at and before which a state's entries leave its buffer
/// (see [`crate::state::UserState::evict`]): what its longest window no
/// longer sees, and never an entry after its anchors' latest (`latest`),
/// which `count(E, since X)` reads.
fn eviction_horizon(
    def: &crate::catalog::StateDef,
    now: Millis,
    latest: impl Fn(StateId) -> Option<Millis>,
) -> Millis {
    let mut horizon = now - def.retention;
    for &anchor in &def.since_anchors {
        horizon = horizon.min(latest(anchor).unwrap_or(Millis::MIN));
    }
    horizon
}

/// What an alias takes out of a profile it merges into another (see
/// [`Shard::take_profile`]).
#[derive(Debug, Default)]
pub(crate) struct MovedProfile {
    /// Its traits set by identify, sorted by key.
    traits: Vec<(TraitKey, Value)>,
    /// Its states, sorted by id.
    states: Vec<(StateId, UserState)>,
    /// The static audiences it was in.
    statics: Vec<AudId>,
}

/// What merging a profile into another changed for the kept one (see
/// [`Shard::absorb_profile`]).
struct Absorbed {
    /// The merged profile's states (each merged into the kept one's), sorted.
    states: Vec<StateId>,
    /// The trait keys that gained a value (the kept profile had none).
    traits: Vec<TraitKey>,
    /// The static audiences entered.
    entered: Vec<AudId>,
}

/// Changes made one after the other for one sort key (an event's index in
/// the batch, or an instant): `out[start..end]`.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    key: i64,
    start: usize,
    end: usize,
}

/// How much evaluation work a shard has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Rule (audience) evaluations.
    pub rule_evaluations: u64,
    /// Atom (predicate) evaluations, including before/after probes.
    pub atom_evaluations: u64,
    /// Timers fired.
    pub timers_fired: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.rule_evaluations += o.rule_evaluations;
        self.atom_evaluations += o.atom_evaluations;
        self.timers_fired += o.timers_fired;
    }
}

/// What every step of a shard needs to know besides its own data.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    /// The catalog.
    pub cat: &'a Catalog,
    /// The instant.
    pub now: Millis,
    /// The granularity.
    pub granularity: Millis,
}

impl Step<'_> {
    fn at(self, now: Millis) -> Self {
        Step { now, ..self }
    }
}

impl Shard {
    /// An empty shard.
    pub fn new(index: u32, count: u32) -> Shard {
        Shard {
            index,
            count,
            timers: UserQueue::new(count),
            ..Default::default()
        }
    }

    fn local(&self, uid: u32) -> usize {
        (uid / self.count) as usize
    }

    /// Makes sure `uid` has a profile slot; returns it and whether it is new.
    pub fn ensure_user(&mut self, uid: u32) -> (usize, bool) {
        let local = self.local(uid);
        let new = self.users.len() <= local;
        if new {
            self.users.extend_to(local + 1, UserData::default);
            self.unpacked.user = None;
        }
        (local, new)
    }

    /// A user's data, if the shard has it.
    pub fn user(&self, uid: u32) -> Option<&UserData> {
        self.users.get(self.local(uid))
    }

    /// Number of pending timers.
    pub fn pending_timers(&self) -> usize {
        self.live_timers
    }

    /// Whether a timer may fire at or before `to` (a superseded queue entry
    /// can answer yes; it is skipped when timers run).
    pub fn has_timer_due(&self, to: Millis) -> bool {
        self.timers.peek().is_some_and(|t| t <= to)
    }

    /// A shard rebuilt from a snapshot: its users, their memberships and its
    /// counters; the timer queue is rebuilt from the users' own timers.
    /// A snapshot written before removals dropped what nobody reads any
    /// more (2026-12-07) may still hold what catalog `cat` does not read
    /// (list entries of removed audiences, states, timers; see
    /// [`Catalog::unread_since`]): it is dropped here.
    pub fn restore(
        index: u32,
        count: u32,
        mut users: Vec<UserData>,
        members: Memberships,
        counters: Counters,
        cat: &Catalog,
    ) -> Shard {
        let mut timers = UserQueue::new(count);
        let mut live_timers = 0;
        let mut trait_values = TraitValuePool::default();
        let unread = cat.unread_since(None);
        let any_unread = !unread.is_empty();
        for (local, user) in users.iter_mut().enumerate() {
            if any_unread {
                user.drop_unread(&unread);
            }
            user.traits
                .share_large(|key, value| trait_values.share(key, value));
            let uid = local as u32 * count + index;
            live_timers += user.timers.len();
            if let Some(t) = user.earliest_timer() {
                timers.offer(uid, t);
            }
        }
        Shard {
            index,
            count,
            users: users.into_iter().collect(),
            members,
            timers,
            live_timers,
            counters,
            trait_values,
            ..Default::default()
        }
    }

    /// Drops from every profile the states and timers a new catalog no
    /// longer reads (see [`UserData::drop_unread`]). The timer queue may
    /// then wake a user early: it finds nothing due and queues the user at
    /// its next timer.
    pub fn drop_unread(&mut self, unread: &Unread) {
        for user in self.users.iter_mut() {
            self.live_timers -= user.drop_unread(unread);
        }
    }

    /// Approximate heap bytes of this shard.
    pub fn heap_bytes(&self) -> usize {
        let users: usize =
            self.users.iter().map(UserData::heap_bytes).sum::<usize>() + self.users.heap_bytes();
        users
            + self.members.heap_bytes()
            + self.timers.heap_bytes()
            + self.trait_values.heap_bytes()
            + self.first_identify.heap_bytes()
            + self.trait_truths.heap_bytes()
            + self.key_atoms.heap_bytes()
    }

    /// Brings the audience bitmaps up to the profiles' memberships once
    /// enough changes have gathered; ends every operation on the shard (see
    /// [`Memberships::flush_if_due`]).
    pub fn flush_members(&mut self) {
        self.members.flush_if_due();
    }

    /// The index in this shard of the user with dense id `uid`.
    fn local_of(&self, uid: u32) -> usize {
        (uid / self.count) as usize
    }

    /// Ends the sharing (see [`Memberships`]) of each slot whose keeper is
    /// not its class lead in a new catalog (`cat`, `Catalog::class_lead`):
    /// a removed lead's followers, a follower given another rule, a removed
    /// follower. Called when the catalog is installed, before its
    /// operation: the slot gets back a bitmap and list entries of its own,
    /// as they were. A removed follower gets only the bitmap, whose members
    /// its removal lets exit: entries would be read by nothing and stay in
    /// the lists for good (a removed slot drops its own, see
    /// [`Shard::remove_audience`]).
    pub fn unshare_changed(&mut self, cat: &Catalog) {
        for share in self.members.shares() {
            if cat.class_lead.get(share.aud as usize) == Some(&share.keeper) {
                continue;
            }
            let removed = cat
                .audiences
                .get(share.aud as usize)
                .is_none_or(Option::is_none);
            if removed {
                self.members.unshare(share.aud);
                continue;
            }
            let members = self.members.bitmap(share.keeper).into_owned();
            for uid in &members {
                let local = self.local_of(uid);
                let entered = self.users[local].entered(share.keeper);
                debug_assert!(entered.is_some(), "user {uid} of {}", share.keeper);
                if let Some(at) = entered {
                    let at = self.members.entered_from(share.aud, at);
                    self.users[local].set_member(share.aud, true, at);
                }
            }
            self.members.unshare(share.aud);
        }
    }

    /// Lets each follower of catalog `cat` (`Catalog::class_lead`) share
    /// its class lead's memberships (see [`Memberships`]), dropping its
    /// bitmap and list entries; once per catalog, after the operation
    /// that installed it (a new audience's backfill sets its entries up,
    /// unless it shared at once, see [`Shard::backfill_copies`]).
    /// A follower whose entries are not its lead's (see
    /// [`Shard::shared_since`]) keeps its own.
    pub fn share_classes(&mut self, cat: &Catalog) {
        if self.members.shared_for == Some(cat.generation) {
            return;
        }
        self.members.shared_for = Some(cat.generation);
        // Leads keep their own from here on.
        self.unshare_changed(cat);
        for (slot, &lead) in cat.class_lead.iter().enumerate() {
            let aud = slot as AudId;
            if lead == aud || self.members.is_shared(aud) {
                continue;
            }
            let Some(since) = self.shared_since(aud, lead) else {
                continue;
            };
            let members = self.members.bitmap(lead).into_owned();
            for uid in &members {
                let local = self.local_of(uid);
                self.users[local].set_member(aud, false, 0);
            }
            self.members.share(aud, lead, since);
        }
    }

    /// The instant from which `aud` can share `lead`'s memberships: it has
    /// the same members, each entered at the lead's instant or, for those
    /// who entered the lead earlier, all at one later one (a copy defined
    /// later entered its lead's members at its definition). `None` when
    /// the entries differ otherwise (a replaced rule's members kept
    /// theirs).
    fn shared_since(&self, aud: AudId, lead: AudId) -> Option<Millis> {
        let members = self.members.bitmap(lead);
        debug_assert!(
            self.members.bitmap(aud) == members,
            "slot {aud} and its class lead {lead} have different members"
        );
        if self.members.len(aud) != members.len() {
            return None;
        }
        let (mut since, mut earliest_same) = (Millis::MIN, Millis::MAX);
        for uid in members.iter() {
            let user = &self.users[self.local_of(uid)];
            let (mine, theirs) = (user.entered(aud)?, user.entered(lead)?);
            if mine == theirs {
                earliest_same = earliest_same.min(theirs);
            } else if mine > theirs && (since == Millis::MIN || since == mine) {
                since = mine;
            } else {
                return None;
            }
        }
        (earliest_same >= since).then_some(since)
    }

    fn env<'a>(&'a self, step: Step<'a>, local: usize) -> UserEnv<'a> {
        UserEnv::new(step.cat, &self.users[local], step.now, step.granularity)
            .with_shared(&self.members)
            .with_traits(self.unpacked.of(local))
            .with_flips(self.pass_flips.of(local))
    }

    /// Runs `f` with the pass's view memo lent in a cell.
    fn with_view_memo<R>(&mut self, f: impl FnOnce(&mut Self, &RefCell<ViewMemo>) -> R) -> R {
        let memo = RefCell::new(std::mem::take(&mut self.views));
        let result = f(self, &memo);
        // What `f` left (nothing, unless it lent the memo again).
        std::mem::replace(&mut self.views, memo.into_inner()).discard();
        result
    }

    /// Opens a pass of the view memo for the user as its states are now.
    fn begin_views(&mut self, step: Step<'_>, local: usize) {
        let views = step.cat.views.len();
        self.views.begin(views, &self.users[local], step.now);
    }

    /// Opens an evaluation pass: the user's states stay as they are until
    /// it ends, only memberships move.
    fn begin_pass(&mut self, step: Step<'_>, local: usize) {
        self.begin_truths(step);
        self.begin_views(step, local);
    }

    /// Forgets the atom truths and rule results of the pass, keeping its
    /// view values (still right, or carried over the change).
    fn begin_truths(&mut self, step: Step<'_>) {
        self.memo.begin(step.cat.atoms.len());
        self.rule_memo.begin(step.cat.rule_classes);
    }

    fn set_member(&mut self, local: usize, uid: u32, aud: AudId, member: bool, at: Millis) {
        // A slot sharing another's memberships moves with it.
        if self.members.is_shared(aud) {
            return;
        }
        if self.users[local].set_member(aud, member, at) {
            self.members.touch(aud, uid, member);
        }
    }

    /// The truths of `atoms` now, within a pass begun by the caller (the
    /// views and `since` bases they read are kept for the pass); with
    /// `new`, a new profile's "before" truths, known on an empty one.
    fn atom_truths(
        &mut self,
        step: Step<'_>,
        local: usize,
        atoms: &[AtomId],
        new: bool,
    ) -> SmallVec<[bool; 32]> {
        if atoms.is_empty() {
            return SmallVec::new();
        }
        let cat = step.cat;
        let known = |a: AtomId| match cat.empty_atom_truth.get(a as usize) {
            Some(&Some(truth)) if new => Some(truth),
            _ => None,
        };
        let evaluated = atoms.iter().filter(|&&a| known(a).is_none()).count();
        self.counters.atom_evaluations += evaluated as u64;
        self.with_view_memo(|shard, views| {
            let env = shard.env(step, local).with_views(views);
            let mut truths = SmallVec::with_capacity(atoms.len());
            for &a in atoms {
                truths.push(known(a).unwrap_or_else(|| eval_atom(&cat.atoms[a as usize], &env)));
            }
            truths
        })
    }

    /// The values of the leaves of `groups` (see
    /// [`crate::catalog::LeafGroup`]) now, within a pass begun by the
    /// caller.
    fn leaf_values(
        &mut self,
        step: Step<'_>,
        local: usize,
        groups: &[u32],
    ) -> SmallVec<[Option<Value>; 8]> {
        if groups.is_empty() {
            return SmallVec::new();
        }
        self.with_view_memo(|shard, views| {
            let env = shard.env(step, local).with_views(views);
            groups
                .iter()
                .map(|&g| {
                    env.leaf(&step.cat.leaf_groups[g as usize].leaf)
                        .map(Cow::into_owned)
                })
                .collect()
        })
    }

    /// [`Shard::atom_truths`] of the atoms an identify reads (`plan`),
    /// within a pass begun by the caller: each key's tests against
    /// literals are looked up by the user's value of it (see
    /// [`crate::trait_truths`]), the other atoms evaluated.
    fn trait_atom_truths(
        &mut self,
        step: Step<'_>,
        local: usize,
        plan: &KeyPlan,
        new: bool,
    ) -> SmallVec<[bool; 128]> {
        let found = self.trait_rows(step, local, plan, new);
        self.truths_of_rows(plan, &found)
    }

    /// What the truths of the atoms an identify reads (`plan`) come from,
    /// within a pass begun by the caller: the rows of its keys' tests
    /// against literals, and the truths of the other atoms (see
    /// [`TraitRows`]). Valid until the next call (see
    /// [`TraitTruths::begin`]).
    fn trait_rows(&mut self, step: Step<'_>, local: usize, plan: &KeyPlan, new: bool) -> TraitRows {
        let cat = step.cat;
        let mut evaluated = 0;
        let found = self.with_view_memo(|shard, views| {
            let Shard {
                users,
                members,
                unpacked,
                trait_truths,
                ..
            } = shard;
            let env = UserEnv::new(cat, &users[local], step.now, step.granularity)
                .with_shared(members)
                .with_views(views)
                .with_traits(unpacked.of(local));
            trait_truths.begin(cat);
            let rows: SmallVec<[KeyTruths; 8]> = match new {
                true => SmallVec::new(),
                false => plan
                    .keys
                    .iter()
                    .zip(plan.tested.iter())
                    .map(|(&key, &tested)| match tested {
                        true => {
                            let value = env.trait_value(key);
                            trait_truths.resolve(cat, key, value.as_deref())
                        }
                        false => KeyTruths::Missing,
                    })
                    .collect(),
            };
            let mut eval = |a: AtomId| {
                evaluated += 1;
                eval_atom(&cat.atoms[a as usize], &env)
            };
            let others = match new {
                // Every atom whose truth on an empty profile is not known.
                true => plan
                    .atoms
                    .iter()
                    .map(|&a| match cat.empty_atom_truth.get(a as usize) {
                        Some(&Some(truth)) => truth,
                        _ => eval(a),
                    })
                    .collect(),
                false => plan.untested.iter().map(|&a| eval(a)).collect(),
            };
            TraitRows {
                rows,
                looked_up: !new,
                others,
            }
        });
        self.counters.atom_evaluations += evaluated;
        found
    }

    /// The truth of each atom of `plan` from `found` (see
    /// [`Shard::trait_rows`]).
    fn truths_of_rows(&self, plan: &KeyPlan, found: &TraitRows) -> SmallVec<[bool; 128]> {
        let trait_truths = &self.trait_truths;
        let rows: SmallVec<[Option<&[bool]>; 8]> = found
            .rows
            .iter()
            .map(|&found| match found {
                KeyTruths::Missing => None,
                KeyTruths::Entry(e) => Some(trait_truths.get(e)),
                KeyTruths::Unkept(r) => Some(trait_truths.get_unkept(r)),
            })
            .collect();
        let mut others = found.others.iter().copied();
        // Collected, not pushed one by one: a `SmallVec` push checks where
        // its items live each time, and a list of keys has hundreds of
        // atoms.
        plan.tests
            .iter()
            .map(|test| match (test, found.looked_up) {
                (&Some((index, position)), true) => {
                    rows[index as usize].is_some_and(|row| row[position as usize])
                }
                _ => others.next().expect("a truth for each atom not in a row"),
            })
            .collect()
    }

    /// Appends to `key` what the truths of `plan`'s atoms are a function
    /// of, from `found` (see [`Shard::trait_rows`], of a profile that is
    /// not new): each key's row of tests as bits, then the other atoms'
    /// truths as bits. Fewer words than the truths themselves, and no
    /// walk over the plan's atoms.
    fn push_truths_key(
        &self,
        cat: &Catalog,
        plan: &KeyPlan,
        found: &TraitRows,
        key: &mut Vec<u64>,
    ) {
        debug_assert_eq!(found.rows.len(), plan.keys.len());
        for (&k, &row) in plan.keys.iter().zip(&found.rows) {
            self.trait_truths.push_row_bits(cat, k, row, key);
        }
        pack_bits(&found.others, key);
    }

    /// Records an atom's truth for the rest of the pass, unless it reads
    /// memberships (which the pass changes).
    fn remember(&mut self, step: Step<'_>, atom: AtomId, truth: bool) {
        if !step.cat.atoms[atom as usize].reads_memberships() {
            self.memo.set(atom, truth);
        }
    }

    fn set_timer(&mut self, local: usize, uid: u32, atom: AtomId, at: Option<Millis>) {
        let timers = &mut self.users[local].timers;
        match (find_stamped(timers, atom), at) {
            (Ok(i), Some(t)) => {
                if timers[i].at() != t {
                    timers[i] = Stamped::new(atom, t);
                    self.timers.offer(uid, t);
                }
            }
            (Ok(i), None) => {
                timers.remove(i);
                self.live_timers -= 1;
            }
            (Err(i), Some(t)) => {
                timers.insert(i, Stamped::new(atom, t));
                self.timers.offer(uid, t);
                self.live_timers += 1;
            }
            (Err(_), None) => {}
        }
    }

    /// Moves the timer standing for `atom` (its lead's, see
    /// [`crate::catalog::Catalog::timer_lead`]; or a computed trait's)
    /// to `t` unless it is due earlier.
    fn timer_no_later_than(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        atom: AtomId,
        t: Millis,
    ) {
        let id = match atom & COMPUTED_TIMER {
            0 => step.cat.timer_lead[atom as usize],
            _ => atom,
        };
        let current = self.users[local].timer(id);
        if current.is_none_or(|c| c > t) {
            self.set_timer(local, uid, id, Some(t));
        }
    }

    /// Sets the timer standing for `atom` to the next instant time alone can
    /// flip it or another atom of its timer's group.
    fn reschedule(&mut self, step: Step<'_>, local: usize, uid: u32, atom: AtomId) {
        self.reschedule_in_pass(step, local, uid, &[atom]);
    }

    /// [`Shard::reschedule`] for each of `atoms`, within a pass begun by
    /// the caller (the `since` bases they count from are read once): each
    /// timer standing for them is set to the earliest next change of its
    /// group.
    fn reschedule_in_pass(&mut self, step: Step<'_>, local: usize, uid: u32, atoms: &[AtomId]) {
        let cat = step.cat;
        let mapped: SmallVec<[AtomId; 16]>;
        // Most atoms lead themselves: then the list, each once, is the
        // leads. (An event's list may name a group's timer twice: the
        // group's and a flipped atom's.)
        let leads = if atoms.iter().all(|&a| cat.timer_lead[a as usize] == a)
            && atoms.is_sorted_by(|a, b| a < b)
        {
            atoms
        } else {
            let mut leads: SmallVec<[AtomId; 16]> =
                atoms.iter().map(|&a| cat.timer_lead[a as usize]).collect();
            leads.sort_unstable();
            leads.dedup();
            mapped = leads;
            &mapped
        };
        for &lead in leads {
            let next = self.with_view_memo(|shard, views| {
                group_next_change(cat, &shard.env(step, local).with_views(views), lead)
            });
            // After now: a fired timer left in place (see `Shard::fire`)
            // always moves.
            debug_assert!(next.is_none_or(|t| t > step.now), "{next:?}");
            self.set_timer(local, uid, lead, next);
        }
    }

    /// Carries the pass's view values over an entry just added to state `s`
    /// at `t` (`appended`: its value, when it follows every visible entry;
    /// see [`aggregate_appended`]): a view over the whole history or the
    /// last `w` keeps its value when the entry falls outside its window, and
    /// a count, sum, min or max gains the entry; the others, and every
    /// window counted since an event (its start moves with that event), are
    /// computed afresh when read. An order moves four `sum(revenue)`
    /// windows of a buyer with hundreds of orders, each a walk over them.
    fn carry_views(
        &mut self,
        step: Step<'_>,
        s: StateId,
        t: Millis,
        appended: Option<Option<&Value>>,
    ) {
        let cat = step.cat;
        self.views.forget_event_base(s);
        for &view in &cat.state_index[s as usize].views {
            let def = cat.views[view as usize];
            let in_window = match def.window {
                WindowDef::All => true,
                WindowDef::Last(w) => t > step.now - w,
                // Its start moves with the anchor's latest event.
                WindowDef::Since(_) => {
                    self.views.carry(view, |_| None);
                    continue;
                }
            };
            self.views.carry(view, |before| {
                if in_window {
                    aggregate_appended(def.func, before, appended?)
                } else {
                    Some(before.clone())
                }
            });
        }
    }

    /// Evaluates one rule for one user and records a flip. Returns whether
    /// membership changed (the caller then re-evaluates the dependents).
    /// `member`: the user's membership, when the caller knows it.
    fn evaluate(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        aud: AudId,
        member: Option<bool>,
    ) -> Option<bool> {
        let cat = step.cat;
        let class = cat.rule_class[aud as usize];
        // A class is a live computed rule: its result, once known in the
        // pass, needs nothing of the definition.
        let now_member = match self.rule_memo.get(class) {
            Some(result) => result,
            None => {
                let formula = cat.formulas.get(aud as usize)?;
                if matches!(formula, Formula::None) {
                    return None;
                }
                let result = self.evaluate_rule(step, local, formula);
                self.rule_memo.set(class, result);
                result
            }
        };
        let user = &self.users[local];
        let was_member = || {
            // Before the pass: its keeper's flip in it is its own, to make.
            if self.members.is_shared(aud) {
                return self.members.is_listed(user, aud);
            }
            let flipped = self.pass_flips.of(local).and_then(|f| f.member(aud));
            flipped.unwrap_or_else(|| user.is_member(aud))
        };
        debug_assert!(member.is_none_or(|m| m == was_member()));
        if now_member == member.unwrap_or_else(was_member) {
            return None;
        }
        // A sharing follower flips only with its keeper, earlier in the
        // pass: its own flip is stored as the keeper's.
        debug_assert!(
            !self.members.is_shared(aud)
                || self
                    .pass_flips
                    .of(local)
                    .and_then(|f| f.member(self.members.keeper(aud)))
                    == Some(now_member),
            "slot {aud} flips without its keeper"
        );
        self.hold_back_flip(step, local, uid, aud, now_member);
        Some(now_member)
    }

    /// Records a flip of the pass: the list entry (and the bitmap's) waits
    /// for the pass's other flips (see `Shard::apply_pass_flips`), and
    /// until then the pass reads it from `pass_flips` (`Shard::env`,
    /// `Shard::evaluate_rule`); the `member_for` timers move now.
    fn hold_back_flip(&mut self, step: Step<'_>, local: usize, uid: u32, aud: AudId, member: bool) {
        // A slot sharing its class lead's memberships flips with the lead,
        // which comes first in rank.
        if !self.members.is_shared(aud) {
            self.pass_flips.push(local, aud, member, step.now);
        }
        self.reschedule_member_for(step, local, uid, aud);
    }

    /// Moves the timers of the atoms reading the user's membership of `aud`
    /// (`member_for`), which has just changed.
    #[inline]
    fn reschedule_member_for(&mut self, step: Step<'_>, local: usize, uid: u32, aud: AudId) {
        if step.cat.flip_work_of(aud) & FLIP_TIMED == 0 {
            return;
        }
        for &atom in &step.cat.timed_by_audience[aud as usize] {
            self.reschedule(step, local, uid, atom);
        }
    }

    /// A rule's result for the user at `step.now`, its atoms through the
    /// pass's memo.
    fn evaluate_rule(&mut self, step: Step<'_>, local: usize, formula: &Formula) -> bool {
        let cat = step.cat;
        self.counters.rule_evaluations += 1;
        self.with_view_memo(|shard, views| {
            let Shard {
                users,
                members,
                memo,
                unpacked,
                pass_flips,
                ..
            } = shard;
            let env = UserEnv::new(cat, &users[local], step.now, step.granularity)
                .with_shared(members)
                .with_views(views)
                .with_traits(unpacked.of(local))
                .with_flips(pass_flips.of(local));
            // An atom reading memberships is remembered too: rules are
            // evaluated in rank order, after every audience they read, and
            // those can no longer move in the pass (an audience is queued
            // only by one of lower rank).
            eval_known_first(
                formula,
                &mut PassAtoms {
                    cat,
                    env: &env,
                    memo,
                },
            )
        })
    }

    /// Sets a user's traits (see [`UserData::set_traits`]) through the
    /// unpacked copy, which stays that user's.
    fn set_traits(
        &mut self,
        local: usize,
        traits: &Flat,
        ids: &[TraitKey],
        keys: &Interner,
    ) -> bool {
        let Shard {
            users,
            unpacked,
            trait_values,
            ..
        } = self;
        unpacked.unpack(local, &users[local]);
        // Not the user's while it is being changed (a caught panic would
        // leave it half done).
        unpacked.user = None;
        let changed =
            users[local].set_traits(&mut unpacked.traits, traits, ids, keys, trait_values);
        // (Compared packed: bit for bit, so a NaN equals itself.)
        debug_assert!(Traits::from_sorted(&unpacked.traits).same_set_traits(&users[local].traits));
        unpacked.user = Some(local);
        changed
    }

    /// Re-evaluates the queued rules (and, on a flip, their dependents) for
    /// `uid` in rank order, leaving the queue empty.
    fn process(
        &mut self,
        step: Step<'_>,
        uid: u32,
        pending: RankQueue,
        reason: Reason,
        order: (i64, u64),
        out: &mut Vec<ShardChange>,
    ) {
        self.process_pass(step, uid, pending, reason, order, false, out)
    }

    /// [`Shard::process`]; with `primed`, the caller has begun the memo's
    /// pass after its last change to the user's state and recorded the
    /// truths it already knows.
    #[allow(clippy::too_many_arguments)]
    fn process_pass(
        &mut self,
        step: Step<'_>,
        uid: u32,
        mut pending: RankQueue,
        reason: Reason,
        order: (i64, u64),
        primed: bool,
        out: &mut Vec<ShardChange>,
    ) {
        let (local, _) = self.ensure_user(uid);
        if pending.is_empty() {
            self.queue = pending;
            return;
        }
        // The user's states are fixed for the pass; only memberships move.
        if !primed {
            self.begin_pass(step, local);
        }
        let order_of = |_, counter| Order::new(order.0, order.1, counter);
        self.evaluate_queued(step, local, uid, &mut pending, reason, order_of, out);
        // Drained: kept for the next event, so that nothing is allocated.
        self.queue = pending;
    }

    /// Evaluates the queued rules of one user in rank order, queueing the
    /// dependents of each flip; a flip is logged at `order_of(rank, n)`, n
    /// counting the flips before it.
    #[allow(clippy::too_many_arguments)]
    fn evaluate_queued(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        pending: &mut RankQueue,
        reason: Reason,
        order_of: impl Fn(u32, u64) -> Order,
        out: &mut Vec<ShardChange>,
    ) {
        let mut counter = 0u64;
        // An event's or time's pass queues a sharing follower with its
        // membership only when its keeper flipped (see below).
        let follows = matches!(reason, Reason::Event | Reason::Time);
        // Left by a pass a caught panic cut short.
        self.pass_flips.discard();
        while let Some((rank, member)) = pending.pop_first() {
            let aud = step.cat.by_rank[rank as usize];
            let flip = match member {
                Some(was) if follows && self.members.is_shared(aud) => {
                    debug_assert_eq!(
                        self.rule_memo.get(step.cat.rule_class[aud as usize]),
                        Some(!was)
                    );
                    // `hold_back_flip` of a sharing slot: its flip is its
                    // keeper's, held back already.
                    self.reschedule_member_for(step, local, uid, aud);
                    Some(!was)
                }
                _ => self.evaluate(step, local, uid, aud, member),
            };
            if let Some(entered) = flip {
                out.push(ShardChange {
                    order: order_of(rank, counter),
                    uid,
                    kind: ChangeKind::Membership { aud, entered },
                    at: step.now,
                    reason,
                });
                counter += 1;
                let work = step.cat.flip_work_of(aud);
                if work & FLIP_DEPENDENTS != 0 {
                    for &d in &step.cat.dependents[aud as usize] {
                        pending.insert(step.cat.rank[d as usize]);
                    }
                }
                if work & FLIP_FOLLOWERS == 0 {
                    continue;
                }
                // The class's other audiences move with it. Before an
                // event's or time's pass they had the lead's membership; a
                // definition's backfill may be setting the lead's up, so
                // their own is looked up then (and in any other pass).
                for &f in &step.cat.class_followers[aud as usize] {
                    let rank = step.cat.rank[f as usize];
                    match reason {
                        Reason::Event | Reason::Time => pending.insert_known(rank, !entered),
                        Reason::Definition | Reason::Merge | Reason::Delete => pending.insert(rank),
                    }
                }
            }
        }
        self.apply_pass_flips(local, uid);
    }

    /// Enters or leaves, in the user's list, the audiences whose flips
    /// [`Shard::evaluate`] held back in this pass: together, the list is
    /// rebuilt once instead of shifted per flip.
    fn apply_pass_flips(&mut self, local: usize, uid: u32) {
        let Shard {
            users,
            members,
            pass_flips,
            flip_scratch,
            ..
        } = self;
        // The bitmaps with the list: a pass cut short changes neither.
        for &(aud, member) in pass_flips.flips() {
            members.touch(aud, uid, member);
        }
        pass_flips.apply_to(&mut users[local].memberships, flip_scratch);
    }

    /// Which of an atom's rules its flip may move for the user (see
    /// [`Shard::add_flipped`]): decided once per identify, event or fired
    /// timer rather than per atom, since it walks the user's memberships.
    fn rule_lists(&self, step: Step<'_>, local: usize) -> RuleLists {
        let (cat, user) = (step.cat, &self.users[local]);
        if !user.states.is_empty() {
            return RuleLists::All;
        }
        // A profile without events is in no rule false on every such
        // profile, unless a membership lags its rule (a replaced rule whose
        // backfill has not reached the profile): then every rule is
        // walked, as for a profile with events.
        let held = |aud: AudId| cat.false_without_events.get(aud as usize) == Some(&true);
        match user.memberships.slots().iter().any(held) {
            false => RuleLists::Eventless,
            true => RuleLists::All,
        }
    }

    /// Queues the rules of an atom that flipped to `now_true`, skipping
    /// those its flip cannot move (see [`crate::catalog::Polarity`]) and, for
    /// a profile without events, those false on every such profile (`lists`,
    /// from [`Shard::rule_lists`]).
    fn add_flipped(
        &self,
        step: Step<'_>,
        pending: &mut RankQueue,
        local: usize,
        atom: AtomId,
        now_true: bool,
        lists: RuleLists,
    ) {
        let (cat, user) = (step.cat, &self.users[local]);
        let rules = match lists {
            RuleLists::Eventless => &cat.atom_lead_rules_eventless[atom as usize],
            RuleLists::All => &cat.atom_lead_rules[atom as usize],
        };
        let without_events = user.states.is_empty();
        for (aud, member) in Polarity::movable_rules(rules, user.memberships.slots(), now_true) {
            debug_assert!(followers_agree(cat, &self.members, user, aud, member));
            if without_events && !member && cat.false_without_events[aud as usize] {
                continue;
            }
            pending.insert_known(cat.rank[aud as usize], member);
        }
    }

    /// Applies this shard's events of a batch, in order. The changes come
    /// out in the order they were made, user by user; they are in log order
    /// read through [`Shard::changes_in_log_order`], or once
    /// [`Shard::put_changes_in_order`] has run.
    pub(crate) fn apply(&mut self, step: Step<'_>, work: &[Work<'_>], out: &mut Vec<ShardChange>) {
        let who = |w: &Work<'_>| match *w {
            Work::Track { index, uid, .. } | Work::Identify { index, uid, .. } => (index, uid),
        };
        // A user's events of the batch one after the other (in arrival
        // order): a session's events find its profile in cache. Users are
        // independent, so only the order of the changes differs: each
        // event's run is recorded for the log's order (see
        // `Shard::changes_in_log_order`).
        let mut by_user = std::mem::take(&mut self.by_user);
        by_user.clear();
        // An index into the batch takes the low 32 bits, as before.
        debug_assert!(u32::try_from(work.len()).is_ok());
        // (user, position) in one word: an unstable sort of plain integers
        // keeps each user's events in arrival order, without a comparison
        // that looks the user up.
        by_user.extend(
            work.iter()
                .enumerate()
                .map(|(i, w)| (u64::from(who(w).1) << 32) | i as u64),
        );
        by_user.sort_unstable();
        debug_assert!(
            work.windows(2).all(|w| who(&w[0]).0 < who(&w[1]).0),
            "a shard's work is in batch order"
        );
        // Flips left by a call cut short (a caught panic) are not this
        // one's. Each event's run is placed at its position in `work`,
        // which is batch order: the runs need no sort.
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        runs.resize(work.len(), Run::default());
        self.pass_flips.discard();
        let start = out.len();
        for (k, &key) in by_user.iter().enumerate() {
            if k % WARM_AHEAD == 0 {
                let ahead = by_user[k..].iter().take(WARM_AHEAD);
                self.warm_users(ahead.clone().map(|&key| (key >> 32) as u32));
                warm_events(ahead.map(|&key| &work[key as u32 as usize]));
            }
            let w = &work[key as u32 as usize];
            let (index, uid) = who(w);
            let (local, new) = self.ensure_user(uid);
            let mark = out.len();
            if new {
                self.materialize(step, local);
            }
            match w {
                &Work::Track {
                    index,
                    uid,
                    t,
                    name,
                    properties,
                } => {
                    self.track(step, uid, t, name, properties, index, new, out);
                }
                Work::Identify { traits, keys, .. } => {
                    self.identify(step, uid, (traits, keys), index, new, out)
                }
            }
            if new {
                self.log_new_profile(step, local, uid, index, mark, Reason::Event, out);
            }
            self.users[local].trim_lists();
            runs[key as u32 as usize] = Run {
                key: index as i64,
                start: mark,
                end: out.len(),
            };
        }
        self.by_user = by_user;
        // Runs that lie one after the other are in event order already
        // (users in batch order, as one event per call gives).
        if !runs.windows(2).all(|w| w[0].end == w[1].start) {
            self.runs_from = Some(start);
        }
        self.runs = runs;
    }

    /// Brings the profiles of `uids` (those that exist) into the cache
    /// together (see [`UserData::warm_all`]): a batch's or an advance's users
    /// are spread over the whole store, each a chain of cache misses
    /// (profile, lists, states) that would otherwise be waited out one
    /// user after the other.
    fn warm_users(&self, uids: impl Iterator<Item = u32>) {
        let folded = uids
            .filter_map(|uid| self.users.get(self.local(uid)))
            .fold(0u64, |acc, user| acc.wrapping_add(user.warm_all()));
        std::hint::black_box(folded);
    }

    /// Records that `out[start..end]` was made for `key`.
    fn end_run(&mut self, key: i64, start: usize, end: usize) {
        if end > start {
            self.runs.push(Run { key, start, end });
        }
    }

    /// Puts the runs recorded since `start` in order of key (a stable
    /// sort), each run's changes in the order they were made: timers fire
    /// user by user, but the log is in instant order. The changes stay
    /// where they are, read through [`Shard::changes_in_log_order`] (and
    /// copied into order by [`Shard::put_changes_in_order`] where there
    /// are several shards). (A batch's events place their runs by
    /// position instead, see [`Shard::apply`].)
    fn order_runs(&mut self, start: usize) {
        // Runs made in order of key lie in order already.
        if !self.runs.is_sorted_by_key(|r| r.key) {
            self.runs.sort_by_key(|r| r.key);
            self.runs_from = Some(start);
        }
    }

    /// The changes of the last operation (`out`, the buffer it filled), in
    /// log order: after an `apply` or an `advance`, run by run (its users
    /// were taken one after the other); after any other operation, as they
    /// are. The engine packs them for the log from here when this is its
    /// only shard, without the copy [`Shard::put_changes_in_order`] makes.
    pub(crate) fn changes_in_log_order<'a>(
        &'a self,
        out: &'a [ShardChange],
    ) -> impl Iterator<Item = &'a [ShardChange]> {
        let (start, runs) = match self.runs_from {
            Some(start) => (start, &self.runs[..]),
            None => (out.len(), &[][..]),
        };
        debug_assert!(
            {
                let mut spans: Vec<(usize, usize)> =
                    runs.iter().map(|r| (r.start, r.end)).collect();
                spans.sort_unstable();
                let end = spans
                    .iter()
                    .try_fold(start, |at, &(from, to)| (from == at).then_some(to));
                end == Some(out.len())
            },
            "the runs cover the changes made, each once"
        );
        std::iter::once(&out[..start]).chain(runs.iter().map(|r| &out[r.start..r.end]))
    }

    /// Puts the last operation's changes (`out`) in log order (see
    /// [`Shard::changes_in_log_order`]): one copy of the changes.
    pub(crate) fn put_changes_in_order(&mut self, out: &mut Vec<ShardChange>) {
        let Some(start) = self.runs_from else {
            return;
        };
        let mut made = std::mem::take(&mut self.reorder_buffer);
        made.clear();
        made.reserve(out.len());
        for run in self.changes_in_log_order(out) {
            made.extend_from_slice(run);
        }
        debug_assert_eq!(made.len(), out.len(), "{start}");
        std::mem::swap(out, &mut made);
        made.clear();
        self.reorder_buffer = made;
        self.runs_from = None;
    }

    /// Forgets the order of the last `apply` or `advance`: called before
    /// every operation, which then sets it only if its changes need it.
    pub(crate) fn forget_change_order(&mut self) {
        self.runs_from = None;
    }

    /// A new profile starts with the memberships of an empty profile (rules
    /// such as `not did("X")`), set silently: its first event is then applied
    /// incrementally like any other.
    fn materialize(&mut self, step: Step<'_>, local: usize) {
        let uid = local as u32 * self.count + self.index;
        self.users[local]
            .traits
            .set_computed_list(step.cat.empty_computed.clone());
        // One allocation instead of a dozen small growths.
        self.users[local]
            .memberships
            .reserve(step.cat.empty_true.len());
        // In rank order: a slot sharing another's memberships comes after
        // its keeper, whose entry its timers read.
        for &aud in &step.cat.empty_true {
            self.set_member(local, uid, aud, true, step.now);
            self.reschedule_member_for(step, local, uid, aud);
        }
    }

    /// Replaces the changes logged for a new profile's first event by its net
    /// effect: the values of its computed traits (from null), then one entry
    /// per audience it ends up in, in rank order, all for `reason`.
    #[allow(clippy::too_many_arguments)]
    fn log_new_profile(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        index: usize,
        mark: usize,
        reason: Reason,
        out: &mut Vec<ShardChange>,
    ) {
        let cat = step.cat;
        // Ranks are distinct: sorting them as plain integers is the rank
        // order, with no lookup per comparison.
        let changed = out[mark..].iter().filter_map(|c| match c.kind {
            ChangeKind::Membership { aud, .. } => Some(aud),
            ChangeKind::Computed { .. } => None,
        });
        let mut ranks: Vec<u32> = cat
            .empty_true
            .iter()
            .copied()
            .chain(changed)
            .map(|a| cat.rank[a as usize])
            .collect();
        out.truncate(mark);
        for (counter, (ct, value)) in self.users[local].traits.computed().iter().enumerate() {
            out.push(ShardChange {
                order: Order::new(index as i64, 0, counter as u64),
                uid,
                kind: ChangeKind::computed(*ct, None, Some(value.clone())),
                at: step.now,
                reason,
            });
        }
        ranks.sort_unstable();
        ranks.dedup();
        let entered = ranks
            .into_iter()
            .map(|r| cat.by_rank[r as usize])
            .filter(|&a| self.members.is_listed(&self.users[local], a));
        for (counter, aud) in entered.enumerate() {
            out.push(ShardChange {
                order: Order::new(index as i64, 1, counter as u64),
                uid,
                kind: ChangeKind::Membership { aud, entered: true },
                at: step.now,
                reason,
            });
        }
    }

    /// Recomputes computed trait `ct` for a user from the aggregation states,
    /// reschedules its timer, and on a change of value stores it and logs the
    /// change. Returns whether the value changed.
    #[allow(clippy::too_many_arguments)]
    fn refresh_computed(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        ct: CtId,
        reason: Reason,
        order: Order,
        out: &mut Vec<ShardChange>,
    ) -> bool {
        let Some(def) = step.cat.computed.get(ct as usize).and_then(Option::as_ref) else {
            return false;
        };
        let (new, next) = {
            let env = self.env(step, local);
            (eval_value(&def.expr, &env), env.next_change(&def.expr))
        };
        self.set_timer(local, uid, COMPUTED_TIMER | ct, next);
        if self.users[local].computed_value(ct) == new.as_ref() {
            return false;
        }
        let old = self.users[local].set_computed(ct, new.clone());
        out.push(ShardChange {
            order,
            uid,
            kind: ChangeKind::computed(ct, old, new),
            at: step.now,
            reason,
        });
        true
    }

    /// Queues every live rule that reads computed trait `ct`.
    fn add_computed_rules(step: Step<'_>, pending: &mut RankQueue, ct: CtId) {
        for &aud in &step.cat.computed_rules[ct as usize] {
            pending.insert(step.cat.rank[aud as usize]);
        }
    }

    /// Sets traits; only atoms reading a changed key are probed before and
    /// after, and only rules of atoms that flipped are re-evaluated.
    #[allow(clippy::too_many_arguments)]
    fn identify(
        &mut self,
        step: Step<'_>,
        uid: u32,
        (traits, keys): (&Flat, &[TraitKey]),
        index: usize,
        new: bool,
        out: &mut Vec<ShardChange>,
    ) {
        let cat = step.cat;
        let (local, _) = self.ensure_user(uid);
        self.unpacked.unpack(local, &self.users[local]);
        let mut pending = std::mem::take(&mut self.queue);
        // Keys an identify may change: the given ones and, for a deletion,
        // those below it (a plan made for this identify alone).
        let plan: Arc<KeyPlan> = if traits.iter().all(|(_, v)| v.is_some()) {
            self.key_atoms.plan(cat, keys)
        } else {
            let mut below: Vec<TraitKey> = Vec::new();
            for ((name, value), &key) in traits.iter().zip(keys) {
                match value {
                    Some(_) => below.push(key),
                    None => below.extend(
                        (0..cat.by_trait.len() as TraitKey)
                            .filter(|&k| key_at_or_below(cat.trait_keys.name(k), name)),
                    ),
                }
            }
            below.sort_unstable();
            below.dedup();
            Arc::new(KeyPlan::new(cat, &below))
        };
        let atoms = &plan.atoms[..];
        self.begin_views(step, local);
        // A new profile's truths before are an empty profile's: looked up
        // only where they are compared (not on a first identify's memo hit).
        let before = match new && plan.empty_known {
            true => None,
            false => Some(self.trait_atom_truths(step, local, &plan, new)),
        };
        if !self.set_traits(local, traits, keys, &cat.trait_keys) {
            self.queue = pending;
            return;
        }
        self.begin_pass(step, local);
        let found = self.trait_rows(step, local, &plan, false);
        self.reschedule_in_pass(step, local, uid, &plan.timed);
        // A new profile given every trait (no deletion) ends where another
        // with the same trait atom truths did (see `first_identify`),
        // unless an atom reads a membership too (`in_audience("us") ==
        // trait.flag`): its truth then changes as the rules run, with the
        // trait's value rather than with its truth before them.
        let first = new
            && traits.iter().all(|(_, v)| v.is_some())
            && !atoms
                .iter()
                .any(|&a| cat.atoms[a as usize].reads_memberships());
        if first {
            // Lent out of the shard while the key is pushed from its tables.
            let mut memo = std::mem::take(&mut self.first_identify);
            let known = memo
                .lookup(self.key_atoms.epoch(), plan.id, |key| {
                    self.push_truths_key(cat, &plan, &found, key)
                })
                .map(SmallVec::<[(AudId, bool); 16]>::from);
            self.first_identify = memo;
            if let Some(flips) = known {
                // Held back and applied together, as a pass's flips are
                // (see `Shard::evaluate`).
                self.pass_flips.discard();
                for (counter, &(aud, entered)) in flips.iter().enumerate() {
                    self.hold_back_flip(step, local, uid, aud, entered);
                    out.push(ShardChange {
                        order: Order::new(index as i64, 1, counter as u64),
                        uid,
                        kind: ChangeKind::Membership { aud, entered },
                        at: step.now,
                        reason: Reason::Event,
                    });
                }
                self.apply_pass_flips(local, uid);
                self.queue = pending;
                return;
            }
        }
        let after = self.truths_of_rows(&plan, &found);
        let before = before.unwrap_or_else(|| {
            let empty = |a: AtomId| cat.empty_atom_truth[a as usize] == Some(true);
            atoms.iter().map(|&a| empty(a)).collect()
        });
        let lists = self.rule_lists(step, local);
        for (i, &atom) in atoms.iter().enumerate() {
            self.remember(step, atom, after[i]);
            if after[i] != before[i] {
                self.add_flipped(step, &mut pending, local, atom, after[i], lists);
            }
        }
        let order = (index as i64, 1);
        let mark = out.len();
        self.process_pass(step, uid, pending, Reason::Event, order, true, out);
        if first {
            self.first_identify
                .record(out[mark..].iter().filter_map(|c| match c.kind {
                    ChangeKind::Membership { aud, entered } => Some((aud, entered)),
                    ChangeKind::Computed { .. } => None,
                }));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn track(
        &mut self,
        step: Step<'_>,
        uid: u32,
        t: Millis,
        name: &str,
        properties: &[(Arc<str>, Value)],
        index: usize,
        new: bool,
        out: &mut Vec<ShardChange>,
    ) {
        let cat = step.cat;
        let now = step.now;
        let (local, _) = self.ensure_user(uid);
        // An event's rules read traits atom by atom: unpacked once here.
        self.unpacked.unpack(local, &self.users[local]);
        let mut pending = std::mem::take(&mut self.queue);
        let props = PropsEnv(properties);
        let mut matched: SmallVec<[(StateId, Option<Value>); 8]> = SmallVec::new();
        if let Some(states) = cat.by_event.get(name) {
            // Each property the filters and kept values read, found once.
            let found: SmallVec<[Option<&Value>; 8]> = states
                .properties
                .iter()
                .map(|p| properties.iter().find(|(k, _)| k == p).map(|(_, v)| v))
                .collect();
            for (i, &s) in states.states.iter().enumerate() {
                let passes = match (&states.tests[i], &cat.states[s as usize].filter) {
                    (Some(tests), _) => tests.iter().all(|(p, test)| test.holds(found[*p])),
                    (None, Some(filter)) => eval_bool(filter, &props),
                    (None, None) => true,
                };
                if !passes {
                    continue;
                }
                let value = match states.kept[i] {
                    Some(p) => match found[p] {
                        Some(v) => Some(v.clone()),
                        None => continue,
                    },
                    None => None,
                };
                matched.push((s, value));
            }
        }
        if t > now {
            // Not visible yet: it becomes visible at `t`, when its atoms are re-checked.
            for (s, v) in matched {
                self.users[local].state_mut(s).insert(t, v);
                for &atom in &cat.state_index[s as usize].all {
                    self.timer_no_later_than(step, local, uid, atom, t);
                }
                for &ct in &cat.computed_by_state[s as usize] {
                    self.timer_no_later_than(step, local, uid, COMPUTED_TIMER | ct, t);
                }
            }
            self.process(step, uid, pending, Reason::Event, (index as i64, 1), out);
            return;
        }
        // The union of one list of the matched states' indexes, ascending.
        let union = |list: fn(&StateIndex) -> &[u32]| {
            let mut all: SmallVec<[u32; 16]> = matched
                .iter()
                .flat_map(|(s, _)| list(&cat.state_index[*s as usize]).iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let general = union(|index| &index.general);
        let groups = union(|index| &index.leaf_groups);
        self.begin_views(step, local);
        let before = self.atom_truths(step, local, &general, new);
        let leaves_before = self.leaf_values(step, local, &groups);
        let mut flipped: SmallVec<[(AtomId, bool); 8]> = SmallVec::new();
        for (s, v) in &matched {
            let state = self.users[local].state_mut(*s);
            let appended = state.follows_visible(t, now);
            state.insert(t, v.clone());
            for (view, atoms) in &cat.state_index[*s as usize].thresholds {
                let vdef = cat.views[*view as usize];
                let in_window = match vdef.window {
                    WindowDef::All => true,
                    WindowDef::Last(w) => t > now - w,
                    WindowDef::Since(_) => false,
                };
                let Some((entries, with_summary)) =
                    window_range(state, vdef.window, now, None).filter(|_| in_window)
                else {
                    continue;
                };
                let new = aggregate(vdef.func, entries, state.summary(), with_summary)
                    .and_then(|v| v.as_num())
                    .unwrap_or(0.0);
                let old = new - 1.0;
                // A +1 can only flip comparisons whose constant lies in [old, new].
                let lo = atoms.partition_point(|a| a.k < old);
                let hi = atoms.partition_point(|a| a.k <= new);
                for atom in &atoms[lo..hi] {
                    let now_true = atom.op.holds_for(new, atom.k);
                    if atom.op.holds_for(old, atom.k) != now_true {
                        flipped.push((atom.atom, now_true));
                    }
                }
            }
            self.carry_views(step, *s, t, appended.then_some(v.as_ref()));
        }
        // Computed traits reading the updated states: a change of value is
        // logged first, then re-evaluates every rule reading it.
        let mut computed: SmallVec<[CtId; 8]> = matched
            .iter()
            .flat_map(|(s, _)| cat.computed_by_state[*s as usize].iter().copied())
            .collect();
        computed.sort_unstable();
        computed.dedup();
        for (i, &ct) in computed.iter().enumerate() {
            let order = Order::new(index as i64, 0, i as u64);
            if self.refresh_computed(step, local, uid, ct, Reason::Event, order, out) {
                Self::add_computed_rules(step, &mut pending, ct);
            }
        }
        // From here to the rules' pass the user's state stays as it is
        // (eviction below keeps every value at `now`). The views' values
        // were carried over the new entries: the pass goes on with them.
        self.begin_truths(step);
        let after = self.atom_truths(step, local, &general, false);
        let leaves_after = self.leaf_values(step, local, &groups);
        let mut timed: SmallVec<[AtomId; 32]> = SmallVec::new();
        for (i, &atom) in general.iter().enumerate() {
            if after[i] != before[i] {
                flipped.push((atom, after[i]));
            } else {
                self.remember(step, atom, after[i]);
                if cat.atoms[atom as usize].timed {
                    timed.push(atom);
                }
            }
        }
        for (g, (leaf_before, leaf_after)) in
            groups.iter().zip(leaves_before.iter().zip(&leaves_after))
        {
            let group = &cat.leaf_groups[*g as usize];
            // Whether or not a truth moved, the leaf's next change (a
            // window's lapse, a `since` crossing a bound) may have: the
            // group's timers, not each of its atoms (they map to those).
            timed.extend_from_slice(&group.timed_leads);
            if leaf_before == leaf_after {
                continue;
            }
            self.counters.atom_evaluations += group.atoms.len() as u64;
            for &atom in &group.atoms {
                let Some((_, test)) = &cat.atoms[atom as usize].test else {
                    unreachable!("a leaf group's atoms are tests of its leaf")
                };
                let now_true = test.holds(leaf_after.as_ref());
                if test.holds(leaf_before.as_ref()) != now_true {
                    flipped.push((atom, now_true));
                } else {
                    self.remember(step, atom, now_true);
                }
            }
        }
        let lists = self.rule_lists(step, local);
        for &(atom, now_true) in &flipped {
            self.remember(step, atom, now_true);
            self.add_flipped(step, &mut pending, local, atom, now_true, lists);
            if cat.atoms[atom as usize].timed {
                timed.push(atom);
            }
        }
        self.reschedule_in_pass(step, local, uid, &timed);
        for (s, _) in &matched {
            self.evict(step, local, *s);
        }
        let order = (index as i64, 1);
        self.process_pass(step, uid, pending, Reason::Event, order, true, out);
    }

    /// Moves out of a user's state `s` what no window reads any more (see
    /// [`crate::state::UserState::evict`]).
    #[inline]
    fn evict(&mut self, step: Step<'_>, local: usize, s: StateId) {
        let def = &step.cat.states[s as usize];
        let user = &self.users[local];
        let horizon = eviction_horizon(def, step.now, |anchor| {
            user.state(anchor).and_then(|a| a.latest(step.now))
        });
        self.users[local].state_mut(s).evict(horizon, def);
    }

    /// Takes a profile out for an alias that merges it into another's
    /// ([`Shard::merge_profile`]): it leaves every audience it is in and
    /// its computed traits become null (all logged with reason `merge`, at
    /// `(key, 0, n)`), its timers are dropped, and it stays behind empty,
    /// a husk (see [`Shard::husks`]). Returns its traits, states and
    /// static audiences.
    pub(crate) fn take_profile(
        &mut self,
        step: Step<'_>,
        uid: u32,
        key: i64,
        out: &mut Vec<ShardChange>,
    ) -> MovedProfile {
        let cat = step.cat;
        self.members.ensure(cat.audiences.len());
        let (local, _) = self.ensure_user(uid);
        // Looked up before any exit: a sharing slot is listed through its
        // keeper's entry, which exits first (ranks put keepers first).
        let user = &self.users[local];
        let left: Vec<AudId> = (cat.by_rank.iter().copied())
            .filter(|&aud| cat.audiences[aud as usize].is_some())
            .filter(|&aud| self.members.is_listed(user, aud))
            .collect();
        let statics = (left.iter().copied())
            .filter(|&aud| {
                cat.audiences[aud as usize]
                    .as_ref()
                    .is_some_and(|d| d.is_static)
            })
            .collect();
        let mut counter = 0u64;
        let mut log = |out: &mut Vec<ShardChange>, kind| {
            out.push(ShardChange {
                order: Order::new(key, 0, counter),
                uid,
                kind,
                at: step.now,
                reason: Reason::Merge,
            });
            counter += 1;
        };
        for &aud in &left {
            self.set_member(local, uid, aud, false, step.now);
            log(
                out,
                ChangeKind::Membership {
                    aud,
                    entered: false,
                },
            );
        }
        let computed: Vec<(CtId, Value)> = self.users[local].traits.computed().to_vec();
        for (ct, value) in computed {
            self.users[local].set_computed(ct, None);
            log(out, ChangeKind::computed(ct, Some(value), None));
        }
        let user = std::mem::take(&mut self.users[local]);
        self.live_timers -= user.timers.len();
        if self.unpacked.user == Some(local) {
            self.unpacked.user = None;
        }
        self.husks.insert(local as u32);
        MovedProfile {
            traits: user.unpacked_traits(),
            states: user.states.into_vec(),
            statics,
        }
    }

    /// Merges a profile taken out by [`Shard::take_profile`] (or none) into
    /// `uid`'s, which an alias keeps (created if new): its traits fill the
    /// keys `uid`'s lack, its states' entries join `uid`'s, `uid` joins its
    /// static audiences, and every computed trait and each rule reading
    /// what the merge changed is evaluated afresh for `uid`, with reason
    /// `merge` (see [`Shard::reevaluate_merged`]; the static audiences it
    /// enters are logged among the rules' changes, in rank order).
    pub(crate) fn merge_profile(
        &mut self,
        step: Step<'_>,
        uid: u32,
        moved: Option<MovedProfile>,
        key: i64,
        out: &mut Vec<ShardChange>,
    ) {
        self.members.ensure(step.cat.audiences.len());
        let (local, new) = self.ensure_user(uid);
        let mark = out.len();
        if new {
            self.materialize(step, local);
        }
        if let Some(moved) = moved {
            let absorbed = self.absorb_profile(step, local, uid, moved);
            let first = out.len();
            self.reevaluate_merged(step, local, uid, key, &absorbed, out);
            if !absorbed.entered.is_empty() {
                for aud in absorbed.entered {
                    out.push(ShardChange {
                        order: Order::new(key, 2, 0),
                        uid,
                        kind: ChangeKind::Membership { aud, entered: true },
                        at: step.now,
                        reason: Reason::Merge,
                    });
                }
                // The static entries among the rules' changes, all in rank
                // order as a pass logs them (after the computed traits').
                let cat = step.cat;
                let rank = |c: &ShardChange| match c.kind {
                    ChangeKind::Membership { aud, .. } => Some(cat.rank[aud as usize]),
                    ChangeKind::Computed { .. } => None,
                };
                let changes = &mut out[first..];
                changes.sort_by_key(rank);
                let computed = changes.iter().take_while(|c| rank(c).is_none()).count();
                for (i, c) in changes[computed..].iter_mut().enumerate() {
                    c.order = Order::new(key, 2, i as u64);
                }
            }
        }
        if new {
            self.log_new_profile(step, local, uid, key as usize, mark, Reason::Merge, out);
        }
        self.users[local].trim_lists();
    }

    /// [`Shard::merge_profile`]'s joining of the data: traits (the kept
    /// profile's value wins for a key both have), states (then evicted as
    /// after an event) and static audiences (entered now). Returns what
    /// changed for the kept profile.
    fn absorb_profile(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        moved: MovedProfile,
    ) -> Absorbed {
        let kept = self.users[local].unpacked_traits();
        // The keys only the merged profile had: the others keep their value.
        let new_traits: Vec<TraitKey> = (moved.traits.iter())
            .map(|(k, _)| *k)
            .filter(|k| kept.binary_search_by_key(k, |(key, _)| *key).is_err())
            .collect();
        let mut traits = moved.traits;
        for (key, value) in kept {
            match traits.binary_search_by_key(&key, |(k, _)| *k) {
                Ok(i) => traits[i].1 = value,
                Err(i) => traits.insert(i, (key, value)),
            }
        }
        for (key, value) in &mut traits {
            *value = self.trait_values.share(*key, value);
        }
        self.users[local].traits.replace_sorted(&traits);
        self.unpacked.user = None;
        // Each state evicted at the horizon of both profiles' anchors.
        let theirs = &moved.states;
        let latest = |a: StateId| {
            let i = theirs.binary_search_by_key(&a, |(id, _)| *id).ok()?;
            theirs[i].1.latest(step.now)
        };
        let user = &self.users[local];
        let horizons: Vec<Millis> = (theirs.iter())
            .map(|(s, _)| {
                eviction_horizon(&step.cat.states[*s as usize], step.now, |a| {
                    let ours = user.state(a).and_then(|st| st.latest(step.now));
                    ours.max(latest(a))
                })
            })
            .collect();
        let states = moved.states.iter().map(|(s, _)| *s).collect();
        for ((s, state), horizon) in moved.states.into_iter().zip(horizons) {
            let def = &step.cat.states[s as usize];
            self.users[local].state_mut(s).merge(state, horizon, def);
        }
        let mut entered = Vec::new();
        for aud in moved.statics {
            if !self.members.is_listed(&self.users[local], aud) {
                self.set_member(local, uid, aud, true, step.now);
                entered.push(aud);
            }
        }
        Absorbed {
            states,
            traits: new_traits,
            entered,
        }
    }

    /// Evaluates afresh, for the profile an alias merged another into,
    /// every live computed trait and each rule that reads what the merge
    /// changed (see [`Absorbed`]), and moves the timers of the atoms
    /// reading it. Every other atom reads only what the profile had: its
    /// truth, its rules' memberships and its timers stand (an event's
    /// pass relies on the same). Computed traits' changes are logged at
    /// `(key, 1, n)`, memberships' at `(key, 2, n)`.
    fn reevaluate_merged(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        key: i64,
        absorbed: &Absorbed,
        out: &mut Vec<ShardChange>,
    ) {
        let cat = step.cat;
        let reason = Reason::Merge;
        let mut pending = std::mem::take(&mut self.queue);
        let live_computed = (cat.computed.iter().enumerate())
            .filter(|(_, def)| def.is_some())
            .map(|(ct, _)| ct as CtId);
        for (i, ct) in live_computed.enumerate() {
            let order = Order::new(key, 1, i as u64);
            if self.refresh_computed(step, local, uid, ct, reason, order, out) {
                for &r in &cat.computed_rules[ct as usize] {
                    pending.insert(cat.rank[r as usize]);
                }
            }
        }
        let mut atoms: Vec<AtomId> = Vec::new();
        for &s in &absorbed.states {
            atoms.extend(&cat.state_index[s as usize].all);
        }
        for &t in &absorbed.traits {
            atoms.extend(cat.by_trait.get(t as usize).into_iter().flatten());
        }
        for &aud in &absorbed.entered {
            atoms.extend(&cat.timed_by_audience[aud as usize]);
            for &d in &cat.dependents[aud as usize] {
                pending.insert(cat.rank[d as usize]);
            }
        }
        atoms.sort_unstable();
        atoms.dedup();
        for &a in &atoms {
            for &(aud, _) in &cat.atom_rules[a as usize] {
                pending.insert(cat.rank[aud as usize]);
            }
        }
        atoms.retain(|&a| cat.atoms[a as usize].timed);
        self.begin_views(step, local);
        self.reschedule_in_pass(step, local, uid, &atoms);
        // The merged states' entries yet to become visible (the profile's
        // own have their timers).
        for &s in &absorbed.states {
            let next = self.users[local]
                .state(s)
                .and_then(|st| st.next_visible(step.now));
            let Some(t) = next else { continue };
            for &atom in &cat.state_index[s as usize].all {
                self.timer_no_later_than(step, local, uid, atom, t);
            }
            for &ct in &cat.computed_by_state[s as usize] {
                self.timer_no_later_than(step, local, uid, COMPUTED_TIMER | ct, t);
            }
        }
        self.process(step, uid, pending, reason, (key, 2), out);
        #[cfg(debug_assertions)]
        self.assert_rules_hold(step, local);
    }

    /// Checks (in debug builds) that every rule's result for the user is
    /// its membership: what [`Shard::reevaluate_merged`] left unevaluated
    /// must hold.
    #[cfg(debug_assertions)]
    fn assert_rules_hold(&mut self, step: Step<'_>, local: usize) {
        let cat = step.cat;
        let counters = self.counters;
        self.begin_pass(step, local);
        for &aud in &cat.by_rank {
            let formula = match cat.formulas.get(aud as usize) {
                None | Some(Formula::None) => continue,
                Some(formula) => formula,
            };
            let result = self.evaluate_rule(step, local, formula);
            let member = self.members.is_listed(&self.users[local], aud);
            assert_eq!(result, member, "slot {aud} after a merge");
        }
        self.counters = counters;
    }

    /// Fires one of a user's timers due at `step.now` (unless handling an
    /// earlier one moved it): queues in `due` the rules whose atom flipped
    /// (or whose computed trait changed value).
    fn fire(
        &mut self,
        step: Step<'_>,
        local: usize,
        uid: u32,
        atom: AtomId,
        due: &mut RankQueue,
        out: &mut Vec<ShardChange>,
    ) {
        let (cat, instant) = (step.cat, step.now);
        let user = &mut self.users[local];
        let fired = match find_stamped(&user.timers, atom) {
            Ok(i) if user.timers[i].at() == instant => i,
            _ => return,
        };
        // An atom's timer stands for its whole group (see
        // `Catalog::timer_lead`); a snapshot's may still be a member's own.
        // A computed trait's stands for itself and has no group.
        let (lead, group) = match atom & COMPUTED_TIMER {
            0 => {
                let lead = cat.timer_lead.get(atom as usize).copied().unwrap_or(atom);
                let group = cat
                    .timer_group
                    .get(lead as usize)
                    .map_or(&[][..], Vec::as_slice);
                (lead, group)
            }
            _ => (atom, &[][..]),
        };
        // A group's timer, kept by its lead, stays in the list until
        // `reschedule_in_pass` below moves it to the group's next change
        // (always after now) or drops it: one edit of the list instead of
        // a removal and an insertion, each a reallocation.
        if lead != atom || group.is_empty() {
            user.timers.remove(fired);
            self.live_timers -= 1;
        }
        if atom & COMPUTED_TIMER != 0 {
            let ct = atom & !COMPUTED_TIMER;
            self.counters.timers_fired += 1;
            let order = Order::new(instant, u64::from(uid), u64::from(ct));
            if self.refresh_computed(step, local, uid, ct, Reason::Time, order, out) {
                for &r in &cat.computed_rules[ct as usize] {
                    due.insert(cat.rank[r as usize]);
                }
            }
            return;
        }
        if group.is_empty() {
            return;
        }
        self.counters.timers_fired += 1;
        let flips = match self.ladder_flips(step, local, lead, group) {
            Some(flips) => flips,
            None => self.group_flips(step, local, group),
        };
        self.reschedule_in_pass(step, local, uid, &[lead]);
        let lists = self.rule_lists(step, local);
        for (a, now_true) in flips {
            self.add_flipped(step, due, local, a, now_true, lists);
        }
    }

    /// The atoms of `lead`'s group that flip between the instant before
    /// `step.now` and `step.now`, with their truth now, found from the
    /// group's [`crate::catalog::TimerLadder`] when it has one and the
    /// duration's base stayed: only the atoms with an offset crossed in
    /// that step can flip (a `since` ladder holds twenty atoms, and one
    /// crossing was evaluating all of them twice). None where the group has
    /// no ladder, the duration is missing or its base moved (an event
    /// became visible now).
    fn ladder_flips(
        &mut self,
        step: Step<'_>,
        local: usize,
        lead: AtomId,
        group: &[AtomId],
    ) -> Option<SmallVec<[(AtomId, bool); 8]>> {
        let cat = step.cat;
        let ladder = cat.timer_ladder.get(lead as usize)?.as_ref()?;
        let g = step.granularity;
        let before = self
            .env(step.at(step.now - g), local)
            .leaf(&ladder.leaf)
            .map(Cow::into_owned)?;
        let after = self.with_view_memo(|shard, views| {
            let env = shard.env(step, local).with_views(views);
            env.leaf(&ladder.leaf).map(Cow::into_owned)
        })?;
        let (&Value::Dur(b), &Value::Dur(a)) = (&before, &after) else {
            return None;
        };
        if a.checked_sub(b) != Some(g) {
            return None;
        }
        let crossed = ladder.edges.partition_point(|&(o, _)| o <= b)
            ..ladder.edges.partition_point(|&(o, _)| o <= a);
        let mut flips: SmallVec<[(AtomId, bool); 8]> = SmallVec::new();
        for &(_, i) in &ladder.edges[crossed] {
            let atom = group[i as usize];
            let Some((_, test)) = &cat.atoms[atom as usize].test else {
                unreachable!("a ladder's atoms test its leaf")
            };
            self.counters.atom_evaluations += 1;
            let now_true = test.holds(Some(&after));
            if test.holds(Some(&before)) != now_true && !flips.iter().any(|&(f, _)| f == atom) {
                flips.push((atom, now_true));
            }
        }
        debug_assert_eq!(
            flips.as_slice(),
            {
                // Every atom of the group evaluated, as without a ladder
                // (not counted: the counters are the build's work).
                let counted = self.counters.atom_evaluations;
                let mut all = self.group_flips(step, local, group);
                self.counters.atom_evaluations = counted;
                all.sort_unstable_by_key(|&(a, _)| flips.iter().position(|&(f, _)| f == a));
                all
            }
            .as_slice()
        );
        Some(flips)
    }

    /// The atoms of a timer's `group` whose truth differs at the instant
    /// before `step.now` and at it, with their truth now, every atom
    /// evaluated at both. (Instants are multiples of G: the previous
    /// observable instant is T - G.)
    fn group_flips(
        &mut self,
        step: Step<'_>,
        local: usize,
        group: &[AtomId],
    ) -> SmallVec<[(AtomId, bool); 8]> {
        let before = self.group_truths(step.at(step.now - step.granularity), local, group, false);
        let after = self.group_truths(step, local, group, true);
        let flipped = (0..group.len()).filter(|&i| before[i] != after[i]);
        flipped.map(|i| (group[i], after[i])).collect()
    }

    /// The truths of a timer's group of atoms (see
    /// [`crate::catalog::Catalog::timer_group`]) at `step.now`; with
    /// `in_pass`, through the pass's view memo (the wake's instant). A
    /// group of several tests one time source: its value is read once.
    fn group_truths(
        &mut self,
        step: Step<'_>,
        local: usize,
        group: &[AtomId],
        in_pass: bool,
    ) -> SmallVec<[bool; 8]> {
        self.counters.atom_evaluations += group.len() as u64;
        if in_pass {
            self.with_view_memo(|shard, views| {
                group_truths_in(step, &shard.env(step, local).with_views(views), group)
            })
        } else {
            group_truths_in(step, &self.env(step, local), group)
        }
    }

    /// Fires every timer due at or before `to`, instant by instant: an atom
    /// whose truth differs just before and at the instant re-evaluates its
    /// rules at that exact instant. The changes come out user by user, in
    /// log order read as [`Shard::apply`]'s are.
    pub(crate) fn advance(
        &mut self,
        cat: &Catalog,
        to: Millis,
        granularity: Millis,
        out: &mut Vec<ShardChange>,
    ) {
        // Every user with a timer due by `to`, marked firing.
        let mut due = std::mem::take(&mut self.due_users);
        due.clear();
        while let Some(instant) = self.timers.peek().filter(|&t| t <= to) {
            while let Some(uid) = self.timers.pop_at(instant) {
                due.push(uid);
            }
        }
        // User by user, each user's instants in order: users are
        // independent, and a user's timers at several instants of the
        // window (a session sets a handful) then find its profile in
        // cache. The runs are put in order of instant below (the changes
        // are read in that order, see `Shard::changes_in_log_order`).
        due.sort_unstable();
        self.runs.clear();
        self.pass_flips.discard();
        let start = out.len();
        for (k, &uid) in due.iter().enumerate() {
            if k % WARM_AHEAD == 0 {
                self.warm_users(due[k..].iter().take(WARM_AHEAD).copied());
            }
            let local = self.local(uid);
            let next = |shard: &Shard| shard.users.get(local).and_then(UserData::earliest_timer);
            while let Some(instant) = next(self).filter(|&t| t <= to && t < Millis::MAX) {
                let step = Step {
                    cat,
                    now: instant,
                    granularity,
                };
                let mark = out.len();
                self.wake(step, uid, out);
                self.end_run(instant, mark, out.len());
            }
            self.timers.rearm(uid, next(self));
            if let Some(user) = self.users.get_mut(local) {
                user.trim_lists();
            }
        }
        self.due_users = due;
        // In order of instant, users ascending within one.
        self.order_runs(start);
    }

    /// Fires a user's timers due at `step.now`, in atom order (computed-
    /// trait timers last), and re-evaluates the rules they may move, in
    /// rank order (the caller queues the user at its next timer).
    fn wake(&mut self, step: Step<'_>, uid: u32, out: &mut Vec<ShardChange>) {
        let instant = step.now;
        let local = self.local(uid);
        let mut firing = std::mem::take(&mut self.firing);
        firing.clear();
        if let Some(user) = self.users.get(local) {
            firing.extend(
                user.timers
                    .iter()
                    .filter(|s| s.at() == instant)
                    .map(|s| s.id),
            );
        }
        let mut due = std::mem::take(&mut self.queue);
        if !firing.is_empty() {
            // Timers leave the states as they are: the views and `since`
            // bases the firing atoms read at this instant (several share
            // one) are kept for the whole wake.
            self.begin_views(step, local);
        }
        for &atom in &firing {
            self.fire(step, local, uid, atom, &mut due, out);
        }
        self.firing = firing;
        if !due.is_empty() {
            // Computed traits may have changed: atoms and rules afresh.
            self.begin_truths(step);
        }
        // Time changes at one instant go user by user: this user's
        // computed-trait changes, then its audiences in rank order.
        // Ranks and computed-trait ids are below 2^31.
        let order_of = |rank, _| Order::new(instant, u64::from(uid), (1 << 31) + u64::from(rank));
        self.evaluate_queued(step, local, uid, &mut due, Reason::Time, order_of, out);
        // Drained: kept for the next user, so that nothing is allocated.
        self.queue = due;
    }

    /// Evaluates `auds` (and what depends on them) for every user of the
    /// shard, with reason `definition`, and sets their atoms' timers.
    pub fn backfill(&mut self, step: Step<'_>, auds: &[AudId], out: &mut Vec<ShardChange>) {
        self.members.ensure(step.cat.audiences.len());
        if self.backfill_copies(step, auds, out) {
            return;
        }
        let cat = step.cat;
        let mut atoms: Vec<AtomId> = auds
            .iter()
            .filter_map(|&a| cat.audiences[a as usize].as_ref())
            .flat_map(|def| def.atoms.iter().copied())
            .collect();
        atoms.sort_unstable();
        atoms.dedup();
        let timed: Vec<AtomId> = atoms
            .iter()
            .copied()
            .filter(|&a| cat.atoms[a as usize].timed)
            .collect();
        let mut read_states: Vec<StateId> = atoms
            .iter()
            .flat_map(|&a| cat.atoms[a as usize].states.iter().copied())
            .collect();
        read_states.sort_unstable();
        read_states.dedup();
        // Whether an audience had members before (a replaced rule): a new
        // one's memberships need not be looked up profile by profile.
        let had_members: SmallVec<[bool; 4]> =
            auds.iter().map(|&a| !self.members.is_empty(a)).collect();
        let replacing = had_members.contains(&true);
        // Per state read: the new rules' atoms over it. An entry stamped
        // after now (within the future skew) becomes visible later, and
        // these atoms are then checked again, as the entry's own event set
        // the atoms of its time: without a timer, a rule over all time
        // (`did("B")`) missed it, and two audiences of one rule class could
        // disagree.
        let atoms_of_state: Vec<(StateId, SmallVec<[AtomId; 4]>)> = read_states
            .iter()
            .map(|&s| {
                let reading = atoms.iter().copied();
                (
                    s,
                    reading
                        .filter(|&a| cat.atoms[a as usize].states.contains(&s))
                        .collect(),
                )
            })
            .collect();
        // Per audience, the states its rule cannot do without
        // (`eval::gate_states`): a profile lacking one is not evaluated and
        // stays out (unless it was a member of the rule replaced, which is
        // evaluated).
        let gates: SmallVec<[SmallVec<[StateId; 2]>; 4]> = auds
            .iter()
            .map(|&a| crate::eval::gate_states(cat, a))
            .collect();
        // A timer's next instant may read traits even where the rules are
        // gated out.
        let traits_for_timers = timed
            .iter()
            .any(|&a| !cat.atoms[a as usize].reads_only_states());
        // Whether a profile without states needs nothing at all: no timer
        // (every timed atom reads only states, so has no next change there)
        // and no evaluation (every rule is false on it, and none had
        // members). Most profiles are such.
        let stateless_untouched = !replacing
            && !traits_for_timers
            && auds.iter().all(|&a| cat.false_without_events[a as usize]);
        let warm = Warming {
            read_states: &read_states,
            gates: &gates,
            memberships: replacing,
            traits_for_timers,
            stateless_traits: traits_for_timers
                || auds.iter().any(|&a| reads_traits_without_events(cat, a)),
        };
        let mut stateless = [false; BACKFILL_AHEAD];
        let husks = self.husks.clone();
        let mut husks = husks.iter().peekable();
        for local in 0..self.users.len() {
            if local % BACKFILL_AHEAD == 0 {
                self.warm_ahead(local, &warm, &mut stateless);
            }
            if husks.next_if_eq(&(local as u32)).is_some() {
                continue;
            }
            // Most profiles hold no states (known only by their traits):
            // atoms reading only states then have no next change, and rules
            // false on every profile without events cannot take them in.
            let without_events = stateless[local % BACKFILL_AHEAD];
            if without_events && stateless_untouched {
                continue;
            }
            let uid = local as u32 * self.count + self.index;
            for &atom in &timed {
                // The same for an atom reading only states the profile has
                // no entry in (a live state is never dropped): most
                // profiles with events have no order, say.
                let def = &cat.atoms[atom as usize];
                let user = &self.users[local];
                let never_had = || def.states.iter().all(|&s| user.state(s).is_none());
                if def.reads_only_states() && (without_events || never_had()) {
                    debug_assert_eq!(self.env(step, local).next_change(&def.expr), None);
                    continue;
                }
                self.reschedule(step, local, uid, atom);
            }
            if !without_events {
                for (s, reading) in &atoms_of_state {
                    let user = &self.users[local];
                    let Some(t) = user.state(*s).and_then(|st| st.next_visible(step.now)) else {
                        continue;
                    };
                    for &atom in reading {
                        self.timer_no_later_than(step, local, uid, atom, t);
                    }
                }
            }
            let mut pending = std::mem::take(&mut self.queue);
            for ((&a, &had_members), gate) in auds.iter().zip(&had_members).zip(&gates) {
                let user = &self.users[local];
                // Without members before, the profile is not one.
                let member = had_members && self.members.is_listed(user, a);
                let gated = user.lacks_a_state(gate);
                if member || !(gated || without_events && cat.false_without_events[a as usize]) {
                    pending.insert_known(cat.rank[a as usize], member);
                } else {
                    debug_assert!(!gated || !crate::eval::member(cat, a, &self.env(step, local)));
                }
            }
            self.process(step, uid, pending, Reason::Definition, (uid as i64, 0), out);
        }
    }

    /// [`Shard::backfill`] of copies: when each of `auds` is given the rule
    /// of an audience defined before (its class lead, not defined again in
    /// this call), holds no members in this shard and shares no one's (a
    /// new key, or one replaced while it had none here), and is read by no
    /// rule, each copy's members are its lead's, all entering now. They are
    /// logged as an evaluation of every profile would log them (user by
    /// user, each user's in rank order), and the copy shares its lead's
    /// memberships at once (see [`Memberships::share`]): no profile is
    /// evaluated (nor counted in [`Counters`]) and no list entry written,
    /// where the evaluation wrote entries that `Shard::share_classes` then
    /// dropped. The copy's atoms are its lead's, whose timers are set; they
    /// are not computed again, so a timer that a removed rule left in one
    /// of their groups stays until it fires (changing nothing), where an
    /// evaluation would have moved it. False, with nothing done, for any
    /// other definition (decided shard by shard).
    fn backfill_copies(
        &mut self,
        step: Step<'_>,
        auds: &[AudId],
        out: &mut Vec<ShardChange>,
    ) -> bool {
        #[cfg(test)]
        if self.copies_evaluated {
            return false;
        }
        let cat = step.cat;
        let members = &self.members;
        let copy_of = |aud: AudId| {
            let lead = *cat.class_lead.get(aud as usize)?;
            let new_reader_of_none = !members.is_shared(aud)
                && members.is_empty(aud)
                && cat.dependents[aud as usize].is_empty()
                && cat.timed_by_audience[aud as usize].is_empty();
            let lead_kept = lead != aud && !auds.contains(&lead) && !members.is_shared(lead);
            (new_reader_of_none && lead_kept).then_some((cat.rank[aud as usize], aud, lead))
        };
        let Some(mut copies) = auds
            .iter()
            .map(|&aud| copy_of(aud))
            .collect::<Option<SmallVec<[(u32, AudId, AudId); 4]>>>()
        else {
            return false;
        };
        if copies.is_empty() {
            return false;
        }
        // A call may name a slot twice (one key given twice).
        copies.sort_unstable();
        copies.dedup();
        let leads: SmallVec<[Cow<'_, RoaringBitmap>; 4]> = copies
            .iter()
            .map(|&(_, _, lead)| members.bitmap(lead))
            .collect();
        let everyone = leads.iter().fold(RoaringBitmap::new(), |all, b| all | &**b);
        out.reserve(leads.iter().map(|b| b.len() as usize).sum());
        for uid in &everyone {
            let entered = copies.iter().zip(&leads).filter(|(_, b)| b.contains(uid));
            for (counter, (&(_, aud, _), _)) in entered.enumerate() {
                out.push(ShardChange {
                    order: Order::new(uid as i64, 0, counter as u64),
                    uid,
                    kind: ChangeKind::Membership { aud, entered: true },
                    at: step.now,
                    reason: Reason::Definition,
                });
            }
        }
        drop(leads);
        for &(_, aud, lead) in &copies {
            self.members.share(aud, lead, step.now);
        }
        true
    }

    /// Notes which of the [`BACKFILL_AHEAD`] profiles from `first` hold no
    /// states, and warms what a backfill reads of the others (see
    /// [`UserData::warm_lists`] and [`UserData::warm_states`]; their
    /// memberships only for a replaced rule, their traits unless every new
    /// rule is gated out there, no rule is replaced and no timer reads more
    /// than states), and the traits of those without where they are read
    /// (see [`Warming`]): most profiles hold none, and the rest are a chain
    /// of cache misses each (states, instants, traits, lists).
    fn warm_ahead(&self, first: usize, warm: &Warming<'_>, stateless: &mut [bool; BACKFILL_AHEAD]) {
        let end = (first + BACKFILL_AHEAD).min(self.users.len());
        let mut traits = 0u64;
        for (local, empty) in (first..end).zip(stateless.iter_mut()) {
            let user = &self.users[local];
            *empty = user.states.is_empty();
            // Independent loads, one per profile: they overlap.
            if *empty && warm.stateless_traits {
                traits = traits.wrapping_add(user.warm_traits());
            }
        }
        let holding = || {
            (first..end)
                .zip(stateless.iter())
                .filter(|(_, &empty)| !empty)
                .map(|(local, _)| &self.users[local])
        };
        let lists = holding().fold(traits, |acc, user| acc.wrapping_add(user.warm_state_list()));
        let states = holding().fold(lists, |acc, user| {
            let states = user.warm_states(warm.read_states, warm.memberships);
            // The state list is in the cache now, so whether every rule is
            // gated out costs no miss; a gated-out profile's traits are
            // not read.
            let gated_out = !warm.memberships
                && !warm.traits_for_timers
                && warm.gates.iter().all(|gate| user.lacks_a_state(gate));
            let traits = if gated_out { 0 } else { user.warm_traits() };
            acc.wrapping_add(states).wrapping_add(traits)
        });
        std::hint::black_box(states);
    }

    /// Sets the members of a static audience to `wanted` (dense ids of this
    /// shard), creating unseen profiles; entries, exits and what depends on
    /// them get reason `definition`.
    pub fn set_static_members(
        &mut self,
        step: Step<'_>,
        aud: AudId,
        wanted: &RoaringBitmap,
        out: &mut Vec<ShardChange>,
    ) {
        self.members.ensure(step.cat.audiences.len());
        let current = self.members.bitmap(aud).into_owned();
        let mut touched: Vec<u32> = (&current ^ wanted).iter().collect();
        touched.sort_unstable();
        for uid in touched {
            let (local, new) = self.ensure_user(uid);
            let mark = out.len();
            if new {
                self.materialize(step, local);
            }
            let member = wanted.contains(uid);
            let mut counter = 0;
            if !new || member {
                self.set_member(local, uid, aud, member, step.now);
                // `member_for` of it counts from now (or no longer).
                self.begin_views(step, local);
                self.reschedule_member_for(step, local, uid, aud);
                out.push(ShardChange {
                    order: Order::new(uid as i64, 0, 0),
                    uid,
                    kind: ChangeKind::Membership {
                        aud,
                        entered: member,
                    },
                    at: step.now,
                    reason: Reason::Definition,
                });
                counter = 1;
            }
            let mut pending = std::mem::take(&mut self.queue);
            for &d in &step.cat.dependents[aud as usize] {
                pending.insert(step.cat.rank[d as usize]);
            }
            self.process(
                step,
                uid,
                pending,
                Reason::Definition,
                (uid as i64, counter),
                out,
            );
            if new {
                self.log_new_profile(step, local, uid, uid as usize, mark, Reason::Event, out);
                for c in &mut out[mark..] {
                    c.reason = Reason::Definition;
                }
            }
        }
    }

    /// Exits every member of a removed audience (reason `delete`) and drops
    /// its entries from their lists, where nothing would read them again
    /// (slots are never reused). The states and timers it alone read went
    /// when its catalog was installed (`Engine::install_catalog`).
    pub fn remove_audience(&mut self, aud: AudId, at: Millis, out: &mut Vec<ShardChange>) {
        let Shard {
            users,
            members,
            count,
            ..
        } = self;
        let local_of = |uid: u32| (uid / *count) as usize;
        let bitmap = members.bitmap(aud);
        // A removed sharing follower got back only its bitmap (see
        // `Shard::unshare_changed`): a slot's members are all listed or,
        // for such a follower, none is.
        let listed = bitmap
            .min()
            .is_some_and(|uid| users[local_of(uid)].is_member(aud));
        // The lists of the members a few ahead are read ahead, so that
        // their cache misses overlap (as `Shard::backfill` warms profiles).
        let mut ahead = bitmap.iter().filter(|_| listed);
        for uid in ahead.by_ref().take(REMOVAL_AHEAD) {
            std::hint::black_box(users[local_of(uid)].memberships.first_unit());
        }
        for uid in bitmap.iter() {
            if let Some(next) = ahead.next() {
                std::hint::black_box(users[local_of(next)].memberships.first_unit());
            }
            out.push(ShardChange {
                order: Order::new(uid as i64, 0, 0),
                uid,
                kind: ChangeKind::Membership {
                    aud,
                    entered: false,
                },
                at,
                reason: Reason::Delete,
            });
            let user = &mut users[local_of(uid)];
            let dropped = listed && user.set_member(aud, false, 0);
            debug_assert!(dropped == listed && !user.is_member(aud), "user {uid}");
        }
        drop(bitmap);
        self.members.clear(aud);
    }

    /// Evaluates a newly defined (or replaced) computed trait for every user
    /// of the shard: a change of value is logged with reason `definition`,
    /// and, when `replaced`, re-evaluates the rules reading it.
    pub fn backfill_computed(&mut self, step: Step<'_>, ct: CtId, out: &mut Vec<ShardChange>) {
        self.members.ensure(step.cat.audiences.len());
        let husks = self.husks.clone();
        let mut husks = husks.iter().peekable();
        for local in 0..self.users.len() {
            if husks.next_if_eq(&(local as u32)).is_some() {
                continue;
            }
            let uid = local as u32 * self.count + self.index;
            let order = Order::new(uid as i64, 0, 0);
            if self.refresh_computed(step, local, uid, ct, Reason::Definition, order, out)
                && !step.cat.computed_rules[ct as usize].is_empty()
            {
                let mut pending = std::mem::take(&mut self.queue);
                Self::add_computed_rules(step, &mut pending, ct);
                self.process(step, uid, pending, Reason::Definition, (uid as i64, 1), out);
            }
        }
    }

    /// Drops a removed computed trait's values and timers; every non-null
    /// value is logged as a change to null with reason `delete`.
    pub fn remove_computed(&mut self, ct: CtId, at: Millis, out: &mut Vec<ShardChange>) {
        for local in 0..self.users.len() {
            let uid = local as u32 * self.count + self.index;
            self.set_timer(local, uid, COMPUTED_TIMER | ct, None);
            if let Some(old) = self.users[local].set_computed(ct, None) {
                out.push(ShardChange {
                    order: Order::new(uid as i64, 0, 0),
                    uid,
                    kind: ChangeKind::computed(ct, Some(old), None),
                    at,
                    reason: Reason::Delete,
                });
            }
        }
    }
}

/// Whether audience `aud`'s rule may be evaluated on a profile without
/// states (it is not false there) and reads its (packed) traits.
fn reads_traits_without_events(cat: &Catalog, aud: AudId) -> bool {
    let def = cat.audiences[aud as usize].as_deref();
    !cat.false_without_events[aud as usize] && def.is_some_and(|d| !d.traits.is_empty())
}

/// What [`Shard::warm_ahead`] brings into the cache for a backfill.
struct Warming<'a> {
    /// The states the new rules read.
    read_states: &'a [StateId],
    /// Per new rule, the states it cannot do without.
    gates: &'a [SmallVec<[StateId; 2]>],
    /// Whether the memberships are read (a replaced rule's).
    memberships: bool,
    /// Whether the traits are read even where every rule is gated out (a
    /// timed atom reading more than states).
    traits_for_timers: bool,
    /// Whether the traits of profiles without states are read (a rule
    /// that may hold there reads them, or a timer reads more than states).
    stateless_traits: bool,
}

/// Whether the followers of class lead `lead` (see
/// [`Catalog::class_followers`]) have the user's membership `member` of it,
/// as a class's audiences always do between passes (debug checks).
fn followers_agree(
    cat: &Catalog,
    members: &Memberships,
    user: &UserData,
    lead: AudId,
    member: bool,
) -> bool {
    cat.class_followers[lead as usize]
        .iter()
        .all(|&f| members.is_listed(user, f) == member)
}

/// The earliest next change of the atoms whose timer `lead` leads.
fn group_next_change(cat: &Catalog, env: &UserEnv<'_>, lead: AtomId) -> Option<Millis> {
    let each = || {
        cat.timer_group[lead as usize]
            .iter()
            .filter_map(|&a| env.atom_next_change(&cat.atoms[a as usize]))
            .min()
    };
    if let Some(view) = cat.timer_view[lead as usize] {
        let next = env.next_change(&CExpr::View(view));
        debug_assert_eq!(next, each());
        return next;
    }
    match &cat.timer_ladder[lead as usize] {
        Some(ladder) => {
            let next = env.ladder_next_change(ladder);
            debug_assert_eq!(next, each());
            next
        }
        None => each(),
    }
}

/// Which rules of an atom [`Shard::add_flipped`] walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleLists {
    /// All of them.
    All,
    /// Those a profile without events can be in
    /// ([`Catalog::atom_lead_rules_eventless`]): the user has no events
    /// and is in none of the others.
    Eventless,
}

/// What the truths of an identify's atoms come from (see
/// [`Shard::trait_rows`]).
struct TraitRows {
    /// Per key of the plan, how its tests read the user's value (none on
    /// a new profile).
    rows: SmallVec<[KeyTruths; 8]>,
    /// Whether the trait tests' truths are looked up in `rows` (or, on a
    /// new profile, are among `others`).
    looked_up: bool,
    /// In the plan's order, the truths of the atoms not looked up in
    /// `rows`: its untested atoms, evaluated; on a new profile every atom
    /// (an empty profile's truth where known, else evaluated).
    others: SmallVec<[bool; 16]>,
}

/// The atoms of one evaluation pass: remembered in `memo` once evaluated
/// (see [`Shard::evaluate_rule`]).
struct PassAtoms<'p> {
    cat: &'p Catalog,
    env: &'p UserEnv<'p>,
    memo: &'p mut AtomMemo,
}

impl AtomTruths for PassAtoms<'_> {
    fn known(&self, atom: AtomId) -> Option<bool> {
        let remembered = self.memo.get(atom);
        debug_assert!(
            remembered.is_none_or(|t| t == eval_atom(&self.cat.atoms[atom as usize], self.env))
        );
        remembered
    }

    fn truth(&mut self, atom: AtomId) -> bool {
        self.known(atom).unwrap_or_else(|| {
            let truth = eval_atom(&self.cat.atoms[atom as usize], self.env);
            self.memo.set(atom, truth);
            truth
        })
    }
}

/// Reads the property list and a byte of the name and of each property key
/// of the track events `work` will apply next, together, so that their
/// cache misses overlap, as [`Shard::warm_users`] does for the profiles:
/// each is an allocation of its own, and the batch is applied user by
/// user, not in the order it was decoded (and allocated) in. An
/// identify's traits are read by their interned keys and left alone.
fn warm_events<'a>(work: impl Iterator<Item = &'a Work<'a>>) {
    let first = |s: &str| u64::from(s.as_bytes().first().copied().unwrap_or(0));
    let folded = work.fold(0u64, |acc, w| match w {
        Work::Track {
            name, properties, ..
        } => properties
            .iter()
            .fold(acc.wrapping_add(first(name)), |acc, (key, _)| {
                acc.wrapping_add(first(key))
            }),
        Work::Identify { .. } => acc,
    });
    std::hint::black_box(folded);
}

/// [`Shard::group_truths`] in `env`.
fn group_truths_in(step: Step<'_>, env: &UserEnv<'_>, group: &[AtomId]) -> SmallVec<[bool; 8]> {
    let atoms = &step.cat.atoms;
    // Atoms sharing a timer test one leaf (an atom alone may test none).
    let leaf = group
        .first()
        .and_then(|&a| atoms[a as usize].test.as_ref())
        .map(|(leaf, _)| leaf);
    let value = leaf.and_then(|leaf| env.leaf(leaf));
    let truths: SmallVec<[bool; 8]> = group
        .iter()
        .map(|&a| match &atoms[a as usize].test {
            Some((l, test)) if Some(l) == leaf => test.holds(value.as_deref()),
            _ => eval_atom(&atoms[a as usize], env),
        })
        .collect();
    debug_assert!(group
        .iter()
        .zip(&truths)
        .all(|(&a, &t)| eval_atom(&atoms[a as usize], env) == t));
    truths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_drops_the_entries_of_removed_slots_and_what_the_catalog_does_not_read() {
        // As a snapshot written before removals dropped what they left
        // holds it: slot 1 removed, 0 and 2 live, and the state only slot
        // 1 read.
        let mut cat = Catalog::default();
        cat.define_rule("a", r#"did("Kept")"#);
        cat.define_rule("b", r#"did("Dropped")"#);
        cat.define_rule("c", "trait.x == 1");
        let (kept, dropped) = (
            cat.by_event["Kept"].states[0],
            cat.by_event["Dropped"].states[0],
        );
        cat.remove("b").unwrap();
        assert!(!cat.by_event.contains_key("Dropped"));
        let mut user = UserData::default();
        for aud in 0..3 {
            user.set_member(aud, true, 1_000 + aud as Millis);
        }
        user.state_mut(kept).insert(900, None);
        user.state_mut(dropped).insert(900, None);
        // A timer of a group no live rule's atom is in, and a computed
        // trait's (left to its removal).
        let unread_atom = (0..cat.atoms.len() as AtomId)
            .find(|&a| cat.unread_since(None).timer(a))
            .unwrap();
        user.timers = vec![
            Stamped::new(unread_atom, 5_000),
            Stamped::new(COMPUTED_TIMER, 6_000),
        ]
        .into();
        let empty = UserData::default();
        let shard = Shard::restore(
            0,
            1,
            vec![user, empty],
            Memberships::default(),
            Counters::default(),
            &cat,
        );
        let user = shard.user(0).unwrap();
        assert_eq!(user.entered(0), Some(1_000));
        assert_eq!(user.entered(1), None);
        assert_eq!(user.entered(2), Some(1_002));
        assert!(user.state(kept).is_some());
        assert!(user.state(dropped).is_none());
        assert_eq!(
            user.timers.iter().map(|t| t.id).collect::<Vec<_>>(),
            [COMPUTED_TIMER]
        );
        assert_eq!(shard.pending_timers(), 1);
        assert!(shard.user(1).unwrap().memberships.is_empty());
    }
}
