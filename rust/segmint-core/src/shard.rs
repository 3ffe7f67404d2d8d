//! A shard: the users whose dense id is `index (mod count)`, their
//! memberships and their timers. Shards share nothing mutable, so a batch
//! runs on all of them at once.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;

use hashbrown::HashMap;

use crate::catalog::{AudId, Catalog, StateId, WindowDef};
use crate::eval::{compare, eval_bool, PropsEnv, UserEnv};
use crate::profile::{Memberships, UserData};
use crate::state::{aggregate, window_range};
use crate::time::Millis;
use crate::value::{Flat, Value};

/// Why a membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A change produced by a shard, before it gets its global sequence number.
/// `order` sorts changes from all shards into one deterministic sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardChange {
    /// Sort key across shards.
    pub order: (i64, u64, u64),
    /// The audience slot.
    pub aud: AudId,
    /// The user's dense id.
    pub uid: u32,
    /// Entered (true) or exited.
    pub entered: bool,
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
    pub users: Vec<UserData>,
    /// Memberships of these users.
    pub members: Memberships,
    timers: BinaryHeap<Reverse<(Millis, u32, AudId)>>,
    scheduled: HashMap<(u32, AudId), Millis>,
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

impl Shard {
    /// An empty shard.
    pub fn new(index: u32, count: u32) -> Shard {
        Shard {
            index,
            count,
            ..Default::default()
        }
    }

    fn local(&self, uid: u32) -> usize {
        (uid / self.count) as usize
    }

    /// Makes sure `uid` has a profile slot.
    pub fn ensure_user(&mut self, uid: u32) -> usize {
        let local = self.local(uid);
        if self.users.len() <= local {
            self.users.resize_with(local + 1, UserData::default);
        }
        local
    }

    /// A user's data, if the shard has it.
    pub fn user(&self, uid: u32) -> Option<&UserData> {
        self.users.get(self.local(uid))
    }

    /// The dense ids of this shard's users.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.users.len() as u32).map(move |l| l * self.count + self.index)
    }

    /// Number of pending timers.
    pub fn pending_timers(&self) -> usize {
        self.scheduled.len()
    }

    /// Approximate heap bytes of this shard.
    pub fn heap_bytes(&self) -> usize {
        let users: usize = self.users.iter().map(UserData::heap_bytes).sum::<usize>()
            + self.users.capacity() * std::mem::size_of::<UserData>();
        let bitmaps: usize = self
            .members
            .bitmaps
            .iter()
            .map(|b| b.serialized_size())
            .sum();
        let entered: usize = self.members.entered.iter().map(|m| m.capacity() * 16).sum();
        let timers = self.timers.capacity() * 24 + self.scheduled.capacity() * 24;
        users + bitmaps + entered + timers
    }

    fn schedule(&mut self, uid: u32, aud: AudId, at: Option<Millis>) {
        match at {
            Some(t) => {
                if self.scheduled.insert((uid, aud), t) != Some(t) {
                    self.timers.push(Reverse((t, uid, aud)));
                }
            }
            None => {
                self.scheduled.remove(&(uid, aud));
            }
        }
    }

    fn schedule_no_later_than(&mut self, uid: u32, aud: AudId, t: Millis) {
        if self.scheduled.get(&(uid, aud)).is_none_or(|&s| s > t) {
            self.schedule(uid, aud, Some(t));
        }
    }

    /// Forgets the timers of a removed audience.
    pub fn drop_timers(&mut self, aud: AudId) {
        self.scheduled.retain(|&(_, a), _| a != aud);
    }

    /// Re-evaluates `pending` audiences (and, on a flip, their dependents)
    /// for `uid` in rank order.
    #[allow(clippy::too_many_arguments)]
    fn process(
        &mut self,
        step: Step<'_>,
        uid: u32,
        mut pending: BTreeSet<(u32, AudId)>,
        reason: Reason,
        order: (i64, u64),
        out: &mut Vec<ShardChange>,
    ) {
        let local = self.ensure_user(uid);
        let cat = step.cat;
        let mut counter = 0u64;
        while let Some((_, aud)) = pending.pop_first() {
            let Some(def) = &cat.audiences[aud as usize] else {
                continue;
            };
            let (now_member, next) = {
                let env = UserEnv {
                    cat,
                    user: &self.users[local],
                    uid,
                    members: &self.members,
                    now: step.now,
                    granularity: step.granularity,
                };
                (eval_bool(&def.expr, &env), env.next_change(&def.expr))
            };
            self.schedule(uid, aud, next);
            if now_member != self.members.contains(aud, uid) {
                self.members.set(aud, uid, now_member, step.now);
                out.push(ShardChange {
                    order: (order.0, order.1, counter),
                    aud,
                    uid,
                    entered: now_member,
                    at: step.now,
                    reason,
                });
                counter += 1;
                for &d in &cat.dependents[aud as usize] {
                    pending.insert((cat.rank[d as usize], d));
                }
            }
        }
    }

    /// Applies this shard's events of a batch, in order.
    pub fn apply(&mut self, step: Step<'_>, work: &[Work<'_>], out: &mut Vec<ShardChange>) {
        for w in work {
            match *w {
                Work::Track {
                    index,
                    uid,
                    t,
                    name,
                    properties,
                } => {
                    self.track(step, uid, t, name, properties, index, out);
                }
                Work::Identify { index, uid, traits } => {
                    let local = self.ensure_user(uid);
                    let changed = self.users[local].set_traits(traits);
                    let mut pending = BTreeSet::new();
                    for key in changed {
                        if let Some(rules) = step.cat.by_trait.get(&key) {
                            pending.extend(rules.iter().map(|&a| (step.cat.rank[a as usize], a)));
                        }
                    }
                    self.process(step, uid, pending, Reason::Event, (index as i64, 0), out);
                }
            }
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
        out: &mut Vec<ShardChange>,
    ) {
        let local = self.ensure_user(uid);
        let cat = step.cat;
        let Some(states) = cat.by_event.get(name) else {
            return;
        };
        let now = step.now;
        let props = PropsEnv(properties);
        let mut pending = BTreeSet::new();
        let mut future: Vec<AudId> = Vec::new();
        let mut touched: smallvec::SmallVec<[StateId; 8]> = smallvec::SmallVec::new();
        for &s in states {
            let def = &cat.states[s as usize];
            if let Some(filter) = &def.filter {
                if !eval_bool(filter, &props) {
                    continue;
                }
            }
            let value = match &def.property {
                Some(p) => match properties.iter().find(|(k, _)| k == p) {
                    Some((_, v)) => Some(v.clone()),
                    None => continue,
                },
                None => None,
            };
            let user = &mut self.users[local];
            let state = user.state_mut(s);
            state.insert(t, value);
            touched.push(s);
            let idx = &cat.state_index[s as usize];
            if t > now {
                future.extend_from_slice(&idx.all);
                continue;
            }
            pending.extend(idx.always.iter().map(|&a| (cat.rank[a as usize], a)));
            for (view, atoms) in &idx.thresholds {
                let vdef = cat.views[*view as usize];
                let in_window = match vdef.window {
                    WindowDef::All => true,
                    WindowDef::Last(w) => t > now - w,
                    WindowDef::Since(_) => false,
                };
                if !in_window {
                    continue;
                }
                let Some((entries, with_summary)) = window_range(state, vdef.window, now, None)
                else {
                    continue;
                };
                let new = aggregate(vdef.func, entries, state.summary.as_deref(), with_summary)
                    .and_then(|v| v.as_num())
                    .unwrap_or(0.0);
                let old = new - 1.0;
                // A +1 can only flip comparisons whose constant lies in [old, new].
                let lo = atoms.partition_point(|a| a.k < old);
                let hi = atoms.partition_point(|a| a.k <= new);
                for atom in &atoms[lo..hi] {
                    let k = Value::Num(atom.k);
                    if compare(&Value::Num(old), &k, atom.op)
                        != compare(&Value::Num(new), &k, atom.op)
                    {
                        pending.insert((cat.rank[atom.audience as usize], atom.audience));
                    }
                }
            }
        }
        for &s in &touched {
            let def = &cat.states[s as usize];
            let user = &self.users[local];
            let mut horizon = now - def.retention;
            for &anchor in &def.since_anchors {
                // Entries after the latest anchor event stay for `count(E, since X)`.
                horizon = horizon.min(
                    user.state(anchor)
                        .and_then(|a| a.latest(now))
                        .unwrap_or(Millis::MIN),
                );
            }
            self.users[local].state_mut(s).evict(horizon, def);
        }
        for aud in future {
            self.schedule_no_later_than(uid, aud, t);
        }
        self.process(step, uid, pending, Reason::Event, (index as i64, 0), out);
    }

    /// Fires every timer due at or before `to`, instant by instant.
    pub fn advance(
        &mut self,
        cat: &Catalog,
        to: Millis,
        granularity: Millis,
        out: &mut Vec<ShardChange>,
    ) {
        while let Some(&Reverse((instant, _, _))) = self.timers.peek() {
            if instant > to {
                break;
            }
            let mut due: BTreeSet<(u32, u32, AudId)> = BTreeSet::new();
            while let Some(&Reverse((t, uid, aud))) = self.timers.peek() {
                if t != instant {
                    break;
                }
                self.timers.pop();
                if self.scheduled.get(&(uid, aud)) == Some(&instant) {
                    self.scheduled.remove(&(uid, aud));
                    if cat.audiences.get(aud as usize).is_some_and(Option::is_some) {
                        due.insert((cat.rank[aud as usize], uid, aud));
                    }
                }
            }
            let step = Step {
                cat,
                now: instant,
                granularity,
            };
            while let Some((rank, uid, aud)) = due.pop_first() {
                let local = self.ensure_user(uid);
                let Some(def) = &cat.audiences[aud as usize] else {
                    continue;
                };
                let (now_member, next) = {
                    let env = UserEnv {
                        cat,
                        user: &self.users[local],
                        uid,
                        members: &self.members,
                        now: step.now,
                        granularity,
                    };
                    (eval_bool(&def.expr, &env), env.next_change(&def.expr))
                };
                self.schedule(uid, aud, next);
                if now_member != self.members.contains(aud, uid) {
                    self.members.set(aud, uid, now_member, instant);
                    out.push(ShardChange {
                        order: (instant, rank as u64, uid as u64),
                        aud,
                        uid,
                        entered: now_member,
                        at: instant,
                        reason: Reason::Time,
                    });
                    for &d in &cat.dependents[aud as usize] {
                        due.insert((cat.rank[d as usize], uid, d));
                    }
                }
            }
        }
    }

    /// Evaluates `auds` (and what depends on them) for every user of the
    /// shard, with reason `definition`.
    pub fn backfill(&mut self, step: Step<'_>, auds: &[AudId], out: &mut Vec<ShardChange>) {
        self.members.ensure(step.cat.audiences.len());
        let pending: BTreeSet<(u32, AudId)> = auds
            .iter()
            .map(|&a| (step.cat.rank[a as usize], a))
            .collect();
        let uids: Vec<u32> = self.uids().collect();
        for uid in uids {
            self.process(
                step,
                uid,
                pending.clone(),
                Reason::Definition,
                (uid as i64, 0),
                out,
            );
        }
    }

    /// Exits every member of a removed audience (reason `delete`).
    pub fn remove_audience(&mut self, aud: AudId, at: Millis, out: &mut Vec<ShardChange>) {
        if let Some(bitmap) = self.members.bitmaps.get(aud as usize) {
            for uid in bitmap.iter() {
                out.push(ShardChange {
                    order: (uid as i64, 0, 0),
                    aud,
                    uid,
                    entered: false,
                    at,
                    reason: Reason::Delete,
                });
            }
        }
        self.members.clear(aud);
        self.drop_timers(aud);
    }
}
