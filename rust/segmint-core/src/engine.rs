//! The engine: profiles partitioned into shards, the compiled catalog, the
//! clock and the change log.

use std::sync::Arc;

use rayon::prelude::*;
use roaring::RoaringBitmap;
use smallvec::SmallVec;

use crate::catalog::{AudId, Catalog, CtId, TraitKey};
use crate::changelog::{ChangeLog, PackedRun};
use crate::decoder::Decoder;
use crate::dedup::SeenMessages;
use crate::durable::{Definition, Record};
use crate::error::{Result, SegmintError};
use crate::event::{Event, EventBody};
use crate::limits::Limits;
use crate::merge;
use crate::rules;
use crate::shard::{ChangeKind, Reason, Shard, ShardChange, Step, Work};
use crate::time::{floor_to, format_timestamp, wall_now, Millis, SECOND};
use crate::value::Value;

/// Which clock the engine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Time moves only by [`Engine::advance`]; starts at the given instant.
    Manual(Millis),
    /// The system clock, read at every call; [`Engine::tick`] fires timers.
    Wall,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The clock.
    pub clock: Clock,
    /// Time granularity G: every instant is floored to a multiple of it.
    pub granularity: Millis,
    /// How far in the future an event may be stamped.
    pub future_skew: Millis,
    /// Number of shards (0: one per available core).
    pub shards: usize,
    /// Worker threads for batches (0: one per available core).
    pub threads: usize,
    /// How long a `messageId` is remembered for de-duplication.
    pub dedup_window: Millis,
    /// How many changes the change log keeps in memory.
    pub change_log_capacity: usize,
    /// Input size limits.
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            clock: Clock::Wall,
            granularity: SECOND,
            future_skew: 5 * 60 * SECOND,
            shards: 0,
            threads: 0,
            dedup_window: 24 * 3600 * SECOND,
            change_log_capacity: 10_000_000,
            limits: Limits::default(),
        }
    }
}

/// A change with its global sequence number: a membership change, or (when
/// `computed` is set) a change of a computed trait's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Gap-free sequence number, from 1.
    pub seq: u64,
    /// Audience key (empty for a computed-trait change).
    pub audience: Arc<str>,
    /// External user id.
    pub user_id: Arc<str>,
    /// Entered (true) or exited (false); false for a computed-trait change.
    pub entered: bool,
    /// When the change took effect.
    pub at: Millis,
    /// Why.
    pub reason: Reason,
    /// For a computed-trait change: the key and the old and new values.
    pub computed: Option<ComputedChange>,
}

/// A change of a computed trait's value for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputedChange {
    /// The computed trait's key.
    pub key: Arc<str>,
    /// The value before (`None`: null, or no value yet).
    pub old: Option<Value>,
    /// The value after (`None`: null).
    pub new: Option<Value>,
}

/// The outcome of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestReport {
    /// Events applied (including retries recognised by `messageId`).
    pub accepted: usize,
    /// Of those, retries that were recognised and not applied again.
    pub duplicates: usize,
    /// Rejected events: (index in the batch, error).
    pub errors: Vec<(usize, SegmintError)>,
    /// Sequence number of the last change after the batch.
    pub last_seq: u64,
    /// Changes the batch caused.
    pub changes: usize,
    /// Write-ahead-log position that must be durable for the batch to be
    /// (0 without a data directory); see [`Engine::defer_sync`].
    pub wal_position: u64,
}

/// Batches smaller than this look their users up (and are freed) on one
/// thread.
const PARALLEL_LOOKUP_MIN: usize = 4096;

/// Batches with fewer accepted events than this are applied on the calling
/// thread.
const PARALLEL_APPLY_MIN: usize = 64;

/// Changes of one call from which the shards drop theirs on the pool
/// (see `Engine::on_shards`) rather than on the calling thread.
const PARALLEL_DROP_MIN: usize = 1 << 16;

/// Where [`Engine::on_shards`] runs the shards' work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spread {
    /// On the engine's pool, a shard per task.
    AllThreads,
    /// One shard after the other on the calling thread.
    Caller,
}

/// The ids of an event that were already interned (see
/// [`Engine::known_ids`]).
#[derive(Default)]
struct KnownIds {
    uid: Option<u32>,
    /// An identify's trait keys, when all of them are known.
    keys: Option<SmallVec<[TraitKey; 6]>>,
}

/// An event of a batch that passed validation and de-duplication, with its
/// user's dense id, floored instant and (identify) interned trait keys.
struct Accepted {
    index: usize,
    uid: u32,
    t: Millis,
    keys: SmallVec<[TraitKey; 6]>,
}

impl Accepted {
    /// The event as a shard applies it.
    fn work<'a>(&'a self, events: &'a [Result<Event>]) -> Option<Work<'a>> {
        let Ok(event) = &events[self.index] else {
            return None;
        };
        Some(match &event.body {
            EventBody::Track { name, properties } => Work::Track {
                index: self.index,
                uid: self.uid,
                t: self.t,
                name,
                properties,
            },
            EventBody::Identify { traits } => Work::Identify {
                index: self.index,
                uid: self.uid,
                traits,
                keys: &self.keys,
            },
            // Applied on its own (see `Engine::alias`), never as work.
            EventBody::Alias { .. } => return None,
        })
    }
}

/// The id of a trait key, interned on first sight. Only the engine holds
/// the catalog's `Arc` between calls, so `make_mut` does not copy it.
pub(crate) fn intern_trait_key(catalog: &mut Arc<Catalog>, key: &str) -> TraitKey {
    match catalog.trait_keys.get(key) {
        Some(id) => id,
        None => Arc::make_mut(catalog).trait_keys.intern(key),
    }
}

/// A real-time audience segmentation engine.
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) interner: crate::profile::Interner,
    pub(crate) shards: Vec<Shard>,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    pub(crate) now: Millis,
    /// In-memory change log, in chunks: appending never copies, trimming
    /// the oldest frees whole chunks.
    pub(crate) log: ChangeLog,
    /// Scratch: a call's changes packed for the log, one part per thread
    /// of the merge (see [`Engine::on_shards`]).
    merge_parts: Vec<PackedRun>,
    pub(crate) log_first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) slot_keys: Vec<Arc<str>>,
    pub(crate) computed_keys: Vec<Arc<str>>,
    pub(crate) seen_messages: SeenMessages,
    /// Every successful catalog operation in order: the catalog is a pure
    /// function of it, which is how a snapshot restores it.
    pub(crate) definitions: Vec<crate::durable::Definition>,
    /// The data directory, when the engine is durable.
    pub(crate) storage: Option<crate::durable::Storage>,
    /// Ingest leaves fsync to the caller (see [`Engine::defer_sync`]).
    pub(crate) defer_sync: bool,
}

impl Engine {
    /// An engine with the given settings.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        if config.granularity <= 0 {
            return Err(SegmintError::InvalidArgument {
                message: "granularity must be positive".into(),
            });
        }
        if config.future_skew < 0 {
            return Err(SegmintError::InvalidArgument {
                message: "future_skew must not be negative".into(),
            });
        }
        if config.change_log_capacity == 0 {
            return Err(SegmintError::InvalidArgument {
                message: "change_log_capacity must be at least 1 (changes kept in memory)".into(),
            });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shard_count = if config.shards == 0 {
            cores
        } else {
            config.shards
        }
        .clamp(1, 1024);
        let threads = if config.threads == 0 {
            cores
        } else {
            config.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("segmint-{i}"))
            .build()
            .map_err(|e| SegmintError::InvalidArgument {
                message: format!("cannot start worker threads: {e}"),
            })?;
        let now = match config.clock {
            Clock::Manual(start) => floor_to(start, config.granularity),
            Clock::Wall => floor_to(wall_now(), config.granularity),
        };
        Ok(Engine {
            shards: (0..shard_count)
                .map(|i| Shard::new(i as u32, shard_count as u32))
                .collect(),
            config,
            catalog: Arc::new(Catalog::default()),
            interner: Default::default(),
            pool: Arc::new(pool),
            now,
            log: Default::default(),
            merge_parts: Vec::new(),
            log_first_seq: 1,
            last_seq: 0,
            slot_keys: Vec::new(),
            computed_keys: Vec::new(),
            seen_messages: SeenMessages::default(),
            definitions: Vec::new(),
            storage: None,
            defer_sync: false,
        })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The engine's current instant.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The compiled catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Sequence number of the last change (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Number of profiles (not counting those merged into another by an
    /// alias).
    pub fn user_count(&self) -> usize {
        let merged: u64 = self.shards.iter().map(|s| s.husks.len()).sum();
        self.interner.len() - merged as usize
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The instant an operation happens at: the wall clock's now (never
    /// behind the engine's), or the manual clock's.
    pub(crate) fn op_now(&self) -> Millis {
        match self.config.clock {
            Clock::Wall => floor_to(wall_now(), self.config.granularity).max(self.now),
            Clock::Manual(_) => self.now,
        }
    }

    /// Fires the timers due by `now` if the clock is behind it. Every logged
    /// operation carries its instant, and replay calls this first, so the
    /// timers fire at the same instants as before a restart.
    pub(crate) fn catch_up(&mut self, now: Millis) {
        if now > self.now {
            self.run_timers(now);
        }
    }

    /// Wall clock: fires the timers due by the wall clock's now. Returns the
    /// number of changes. (On the manual clock it does nothing.)
    pub fn tick(&mut self) -> Result<usize> {
        if self.config.clock != Clock::Wall {
            return Ok(0);
        }
        let to = self.op_now();
        if to <= self.now {
            return Ok(0);
        }
        let before = self.last_seq;
        if self.shards.iter().any(|s| s.has_timer_due(to)) {
            let position = self.log_record(&Record::<Event>::Advance { to })?;
            self.run_timers(to);
            self.finish_record(position, true)?;
        } else {
            // Nothing fires: moving the clock needs no record.
            self.now = to;
        }
        Ok((self.last_seq - before) as usize)
    }

    /// Manual clock: moves time to `to`, firing every time-based change in
    /// `(now, to]` at its exact instant. Returns the number of changes.
    pub fn advance(&mut self, to: Millis) -> Result<usize> {
        if self.config.clock == Clock::Wall {
            return Err(SegmintError::InvalidArgument {
                message: "advance() needs the manual clock; this engine follows the wall clock"
                    .into(),
            });
        }
        let to = floor_to(to, self.config.granularity);
        if to < self.now {
            return Err(SegmintError::InvalidArgument {
                message: format!(
                    "cannot move the clock back from {} to {}",
                    format_timestamp(self.now),
                    format_timestamp(to)
                ),
            });
        }
        let before = self.last_seq;
        let position = self.log_record(&Record::<Event>::Advance { to })?;
        self.run_timers(to);
        self.finish_record(position, true)?;
        Ok((self.last_seq - before) as usize)
    }

    pub(crate) fn run_timers(&mut self, to: Millis) {
        let g = self.config.granularity;
        self.on_shards(Spread::AllThreads, |_, shard, cat, out| {
            shard.advance(cat, to, g, out)
        });
        self.now = to;
    }

    /// Runs `f` on every shard (in parallel when there are several), brings
    /// each shard's audience bitmaps up to date, and appends their changes
    /// to the log in global order (merged in parallel, see `crate::merge`)
    /// with the next sequence numbers, then trims the log to
    /// `change_log_capacity` (which moves its first sequence number);
    /// returns how many changes there were. The
    /// buffers are the engine's and the shards' own, reused from call to
    /// call: a batch's changes (tens of MB for a large batch) are not
    /// allocated and page-faulted afresh every time.
    fn on_shards<F>(&mut self, spread: Spread, f: F) -> usize
    where
        F: Fn(usize, &mut Shard, &Catalog, &mut Vec<ShardChange>) + Sync,
    {
        let cat = &*self.catalog;
        let mut parts = std::mem::take(&mut self.merge_parts);
        let shards = &mut self.shards;
        // A single shard's changes are packed for the log in log order
        // where they lie (see `Shard::changes_in_log_order`); several
        // shards' are put in order first, then merged.
        let single = shards.len() == 1;
        let run_shard = |i: usize, shard: &mut Shard| {
            let mut out = std::mem::take(&mut shard.change_buffer);
            // Empty unless a caught panic cut the last call short (each
            // drops its changes, below).
            out.clear();
            shard.forget_change_order();
            f(i, shard, cat, &mut out);
            // After a new catalog's first operation, its class followers
            // have their leads' members.
            shard.share_classes(cat);
            shard.flush_members();
            if !single {
                sort_changes(shard, &mut out);
            }
            shard.change_buffer = out;
        };
        if single {
            let shard = &mut shards[0];
            run_shard(0, shard);
            let mut out = std::mem::take(&mut shard.change_buffer);
            if !merge::pack_in_order(shard.changes_in_log_order(&out), &mut parts) {
                sort_changes(shard, &mut out);
                merge::merge_runs(&[&out], &mut parts, 1);
            }
            shard.change_buffer = out;
        } else if spread == Spread::Caller {
            for (i, shard) in shards.iter_mut().enumerate() {
                run_shard(i, shard);
            }
            let runs: Vec<&[ShardChange]> =
                shards.iter().map(|s| s.change_buffer.as_slice()).collect();
            merge::merge_runs(&runs, &mut parts, 1);
        } else {
            self.pool.install(|| {
                shards
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(i, shard)| run_shard(i, shard));
                let runs: Vec<&[ShardChange]> =
                    shards.iter().map(|s| s.change_buffer.as_slice()).collect();
                // More parts than threads: parts are cut by sampled keys
                // and come out uneven.
                merge::merge_runs(&runs, &mut parts, 4 * rayon::current_num_threads());
            });
        }
        let count: usize = parts.iter().map(PackedRun::len).sum();
        // The shards' changes are packed: dropped by this call, so that the
        // next (one event, say) does not pay for a batch's millions; on the
        // pool when there are that many, a timer's few on this thread.
        if single || spread == Spread::Caller || count < PARALLEL_DROP_MIN {
            shards.iter_mut().for_each(|s| s.change_buffer.clear());
        } else {
            self.pool
                .install(|| shards.par_iter_mut().for_each(|s| s.change_buffer.clear()));
        }
        let cap = self.config.change_log_capacity.max(1);
        // What the appends push out of a full log is dropped first: its
        // storage then takes the new entries (see `ChunkedDeque`).
        self.trim_log((self.log.len() + count).saturating_sub(cap));
        for part in &mut parts {
            self.log.append(part);
        }
        self.trim_log(self.log.len().saturating_sub(cap));
        self.log.release_spare();
        self.merge_parts = parts;
        self.last_seq += count as u64;
        count
    }

    /// Drops the `n` oldest changes of the log (all of them if fewer),
    /// which moves its first sequence number.
    fn trim_log(&mut self, n: usize) {
        let n = n.min(self.log.len());
        self.log.drop_front(n);
        self.log_first_seq += n as u64;
    }

    /// What of each event's ids is already interned: its user's dense id,
    /// and an identify's trait keys when every one is known. Looked up on
    /// all threads for a large batch (a lookup among a million ids misses
    /// the cache), so the single-threaded step interns only new ids.
    fn known_ids(&self, events: &[Result<Event>]) -> Vec<KnownIds> {
        let (users, keys) = (&self.interner, &self.catalog.trait_keys);
        let get = |e: &Result<Event>| match e {
            Err(_) => KnownIds::default(),
            Ok(e) => KnownIds {
                uid: users.get(&e.user_id),
                keys: match &e.body {
                    EventBody::Identify { traits } => {
                        traits.iter().map(|(key, _)| keys.get(key)).collect()
                    }
                    EventBody::Track { .. } | EventBody::Alias { .. } => None,
                },
            },
        };
        if events.len() < PARALLEL_LOOKUP_MIN || self.pool.current_num_threads() == 1 {
            events.iter().map(get).collect()
        } else {
            self.pool
                .install(|| events.par_iter().with_min_len(1024).map(get).collect())
        }
    }

    /// Checks and floors an event's instant.
    fn event_time(&self, timestamp: Option<Millis>) -> Result<Millis> {
        let t = floor_to(timestamp.unwrap_or(self.now), self.config.granularity);
        if t > self.now + self.config.future_skew {
            return Err(SegmintError::InvalidEvent {
                message: format!(
                    "timestamp {} is more than {} ahead of the engine's clock ({})",
                    format_timestamp(t),
                    crate::time::format_duration(self.config.future_skew),
                    format_timestamp(self.now)
                ),
            });
        }
        Ok(t)
    }

    /// Applies a batch of decoded events. A bad event is reported at its
    /// index and changes nothing; the others are applied in order. With a
    /// data directory the batch is logged first; the error is a failure to
    /// log it (then nothing was applied).
    pub fn ingest(&mut self, events: Vec<Result<Event>>) -> Result<IngestReport> {
        let now = self.op_now();
        let position = if self.storage.is_none() {
            None
        } else {
            // Only the events that decoded: the rest change nothing on replay.
            let valid: Vec<&Event> = events.iter().filter_map(|e| e.as_ref().ok()).collect();
            if valid.is_empty() {
                None
            } else {
                self.log_record(&Record::Batch { now, events: valid })?
            }
        };
        let mut report = self.ingest_at(now, events);
        let inline = !self.defer_sync;
        report.wal_position = self.finish_record(position, inline)?;
        Ok(report)
    }

    /// [`Engine::ingest`] at a given instant, without logging (also replay).
    pub(crate) fn ingest_at(&mut self, now: Millis, events: Vec<Result<Event>>) -> IngestReport {
        self.catch_up(now);
        let mut report = IngestReport::default();
        // An alias moves a profile, maybe to another shard, and names
        // change users: the events before it are applied first, then it
        // alone, then those after it.
        let mut start = 0;
        for (index, event) in events.iter().enumerate() {
            if let Ok(Event {
                user_id,
                body: EventBody::Alias { previous_id },
                ..
            }) = event
            {
                self.apply_events(&events, start..index, &mut report);
                if self.admit(index, event, &mut report).is_some() {
                    report.changes += self.alias(index, previous_id, user_id);
                }
                start = index + 1;
            }
        }
        self.apply_events(&events, start..events.len(), &mut report);
        // Message ids past the window, once the batch's were checked.
        self.expire_messages();
        report.last_seq = self.last_seq;
        self.drop_events(events);
        report
    }

    /// Checks an event of a batch: its user id, its instant (returned,
    /// floored) and its message id. An error is reported at its index; an
    /// event seen before is counted as a duplicate; either gives `None`.
    fn admit(
        &mut self,
        index: usize,
        event: &Result<Event>,
        report: &mut IngestReport,
    ) -> Option<Millis> {
        let checked = event.as_ref().map_err(Clone::clone).and_then(|e| {
            if e.user_id.is_empty() {
                return Err(SegmintError::InvalidEvent {
                    message: "the user id is empty".into(),
                });
            }
            Ok((e, self.event_time(e.timestamp)?))
        });
        match checked {
            Err(e) => {
                report.errors.push((index, e));
                None
            }
            Ok((e, t)) => {
                report.accepted += 1;
                if let Some(id) = &e.message_id {
                    let cutoff = self.dedup_cutoff();
                    if !self.seen_messages.accept(id, self.now, cutoff) {
                        report.duplicates += 1;
                        return None;
                    }
                }
                Some(t)
            }
        }
    }

    /// Applies the track and identify events `range` of a batch (no alias
    /// among them), adding to `report`.
    fn apply_events(
        &mut self,
        events: &[Result<Event>],
        range: std::ops::Range<usize>,
        report: &mut IngestReport,
    ) {
        if range.is_empty() {
            return;
        }
        let n = self.shards.len();
        let first = range.start;
        let mut known = self.known_ids(&events[range.clone()]);
        let mut accepted: Vec<Accepted> = Vec::with_capacity(range.len());
        // Validate, de-duplicate and intern, in order (the id space is
        // global); the rest is done by each shard for its own users.
        for index in range {
            let Some(t) = self.admit(index, &events[index], report) else {
                continue;
            };
            let e = events[index].as_ref().expect("admitted");
            let known = std::mem::take(&mut known[index - first]);
            let uid = match known.uid {
                Some(uid) => uid,
                None => self.interner.intern(&e.user_id),
            };
            let keys = match (&e.body, known.keys) {
                (_, Some(keys)) => keys,
                (EventBody::Identify { traits }, None) => traits
                    .iter()
                    .map(|(key, _)| intern_trait_key(&mut self.catalog, key))
                    .collect(),
                (EventBody::Track { .. } | EventBody::Alias { .. }, None) => SmallVec::new(),
            };
            accepted.push(Accepted {
                index,
                uid,
                t,
                keys,
            });
        }
        let step_now = self.now;
        let g = self.config.granularity;
        // A few events are applied on the calling thread: waking the pool
        // for them costs more than they do (one event per call took 17-26
        // us at the median on 2 threads, against 7 us on one).
        let spread = if accepted.len() < PARALLEL_APPLY_MIN {
            Spread::Caller
        } else {
            Spread::AllThreads
        };
        report.changes += self.on_shards(spread, |i, shard, cat, out| {
            // Each shard picks its users' events out of the batch.
            let work: Vec<Work<'_>> = accepted
                .iter()
                .filter(|a| a.uid as usize % n == i)
                .filter_map(|a| a.work(events))
                .collect();
            if !work.is_empty() {
                shard.apply(
                    Step {
                        cat,
                        now: step_now,
                        granularity: g,
                    },
                    &work,
                    out,
                );
            }
        });
    }

    /// Applies an alias (event `index` of its batch): from now on
    /// `previous_id` names `user_id`'s profile. If `previous_id` had a
    /// profile of its own, it is merged into `user_id`'s (created if new):
    /// it leaves all its audiences, and `user_id`'s profile gains its
    /// traits (where it has no value of its own), its events and its
    /// static audiences, and is evaluated afresh; every change is logged
    /// with reason `merge`. Returns the number of changes. See
    /// docs/semantics.md, "Aliases".
    fn alias(&mut self, index: usize, previous_id: &str, user_id: &str) -> usize {
        let from = self.interner.get(previous_id);
        let kept = self.interner.get(user_id);
        if previous_id == user_id || (from.is_some() && from == kept) {
            return 0;
        }
        let to = match kept {
            Some(uid) => uid,
            None => self.interner.intern(user_id),
        };
        let key = index as i64;
        let mut changes = 0;
        // Handed from one shard's operation to the other's.
        let moved = std::sync::Mutex::new(None);
        match from {
            Some(from) => {
                changes += self.on_user_shard(from, |step, shard, out| {
                    let profile = shard.take_profile(step, from, key, out);
                    *moved.lock().expect("not poisoned") = Some(profile);
                });
                self.interner.merge_into(from, to);
            }
            None => self.interner.redirect(previous_id, to),
        }
        if from.is_some() || kept.is_none() {
            changes += self.on_user_shard(to, |step, shard, out| {
                let profile = moved.lock().expect("not poisoned").take();
                shard.merge_profile(step, to, profile, key, out);
            });
        }
        changes
    }

    /// Runs `f` on the shard of user `uid` alone, on the calling thread;
    /// its changes are logged as any operation's. Returns their number.
    fn on_user_shard<F>(&mut self, uid: u32, f: F) -> usize
    where
        F: Fn(Step<'_>, &mut Shard, &mut Vec<ShardChange>) + Sync,
    {
        let n = self.shards.len() as u32;
        let (now, granularity) = (self.now, self.config.granularity);
        self.on_shards(Spread::Caller, |i, shard, cat, out| {
            if i as u32 == uid % n {
                let step = Step {
                    cat,
                    now,
                    granularity,
                };
                f(step, shard, out);
            }
        })
    }

    /// Frees a batch's decoded events (several allocations each) on all
    /// threads when the batch is large: freed by the caller's thread alone,
    /// they were a serial step of every batch.
    fn drop_events(&self, events: Vec<Result<Event>>) {
        if events.len() >= PARALLEL_LOOKUP_MIN && self.pool.current_num_threads() > 1 {
            self.pool
                .install(|| events.into_par_iter().with_min_len(1024).for_each(drop));
        }
    }

    /// Message ids accepted at or before this instant are past the
    /// de-duplication window.
    fn dedup_cutoff(&self) -> Millis {
        self.now.saturating_sub(self.config.dedup_window)
    }

    fn expire_messages(&mut self) {
        self.seen_messages.expire(self.dedup_cutoff());
    }

    /// Decodes (on the engine's threads) and applies a JSON batch (see
    /// [`crate::event::decode_json_batch`]).
    pub fn ingest_json(&mut self, bytes: &[u8]) -> Result<IngestReport> {
        let events = self.decoder().json(bytes)?;
        self.ingest(events)
    }

    /// A decoder of batches on the engine's threads and under its limits,
    /// which needs no access to the engine: a server decodes a batch while
    /// the engine applies the one before.
    pub fn decoder(&self) -> Decoder {
        Decoder::new(self.pool.clone(), self.config.limits.clone())
    }

    /// Applies one event; its error, if any, is returned.
    pub fn apply(&mut self, event: Event) -> Result<IngestReport> {
        let mut report = self.ingest(vec![Ok(event)])?;
        match report.errors.pop() {
            Some((_, e)) => Err(e),
            None => Ok(report),
        }
    }

    fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() || key.chars().any(|c| c.is_control()) {
            return Err(SegmintError::InvalidArgument {
                message: format!("invalid audience key {key:?}: expected a non-empty name without control characters"),
            });
        }
        self.config.limits.check_key("audience key", key)
    }

    /// Parses and type-checks a rule, resolving `computed.KEY` against the
    /// defined computed traits.
    pub(crate) fn compile_rule(&self, rule: &str) -> Result<crate::rules::ast::Expr> {
        compile_rule_in(&self.catalog, rule)
    }

    /// Defines (or replaces) a computed trait: `expr` is a value expression
    /// such as `sum("Order Completed", revenue, 90d)` (see docs/rules.md).
    /// It is evaluated over every profile; each value that differs from the
    /// user's current one (null for a new trait) is a change with reason
    /// `definition`. Replacing re-evaluates the rules reading `computed.KEY`.
    /// Returns how many profiles have a (non-null) value.
    pub fn define_computed_trait(&mut self, key: &str, expr: &str) -> Result<u64> {
        if key.is_empty() || key.chars().any(|c| c.is_control()) {
            return Err(SegmintError::InvalidArgument {
                message: format!("invalid computed trait key {key:?}: expected a non-empty name without control characters"),
            });
        }
        let name_ok = key.split('.').all(|p| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !name_ok {
            return Err(SegmintError::InvalidArgument {
                message: format!("invalid computed trait key {key:?}: expected letters, digits and '_' (dotted parts allowed, each starting with a letter or '_') so that rules can read it as computed.{key}"),
            });
        }
        self.config.limits.check_key("computed trait key", key)?;
        if expr.len() > self.config.limits.max_rule_bytes {
            return Err(SegmintError::LimitExceeded {
                what: "computed trait expression".into(),
                limit: self.config.limits.max_rule_bytes,
                actual: expr.len(),
            });
        }
        let now = self.op_now();
        let def = Definition::Computed(key.to_owned(), expr.to_owned());
        let (catalog, ids) = self.catalog_after(&def).map_err(|(_, e)| e)?;
        let position = self.log_record(&Record::<Event>::DefineComputed {
            now,
            key: key.to_owned(),
            expr: expr.to_owned(),
        })?;
        self.define_computed_with(now, def, catalog, ids[0]);
        self.finish_record(position, true)?;
        Ok(self.computed_count(ids[0]))
    }

    /// Installs a computed trait compiled by [`Engine::catalog_after`] and
    /// backfills its values at `now` (also replay).
    pub(crate) fn define_computed_with(
        &mut self,
        now: Millis,
        def: Definition,
        catalog: Catalog,
        ct: CtId,
    ) {
        self.catch_up(now);
        self.install_catalog(def, catalog, &[ct]);
        let g = self.config.granularity;
        self.on_shards(Spread::AllThreads, |_, shard, cat, out| {
            shard.backfill_computed(
                Step {
                    cat,
                    now,
                    granularity: g,
                },
                ct,
                out,
            );
        });
    }

    fn computed_count(&self, ct: CtId) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.users.iter())
            .filter(|u| u.computed_value(ct).is_some())
            .count() as u64
    }

    /// Removes a computed trait; an [`SegmintError::InUse`] error naming the
    /// audiences whose rules read it. Every non-null value is logged as a
    /// change to null with reason `delete`.
    pub fn remove_computed_trait(&mut self, key: &str) -> Result<()> {
        let def = Definition::RemoveComputed(key.to_owned());
        let (catalog, ids) = self.catalog_after(&def).map_err(|(_, e)| e)?;
        let position = self.log_record(&Record::<Event>::RemoveComputed {
            now: self.now,
            key: key.to_owned(),
        })?;
        self.remove_computed_with(def, catalog, ids[0]);
        self.finish_record(position, true)?;
        Ok(())
    }

    /// Installs a catalog without the computed trait `ct` and logs its
    /// values going to null (also replay).
    pub(crate) fn remove_computed_with(&mut self, def: Definition, catalog: Catalog, ct: CtId) {
        self.install_catalog(def, catalog, &[]);
        let now = self.now;
        self.on_shards(Spread::AllThreads, |_, shard, _, out| {
            shard.remove_computed(ct, now, out)
        });
    }

    /// Defined computed traits as (key, expression, type name), in definition order.
    pub fn computed_traits(&self) -> Vec<(String, String, &'static str)> {
        self.catalog
            .computed_traits()
            .map(|(_, c)| (c.key.to_string(), c.source.to_string(), c.ty.name()))
            .collect()
    }

    /// A user's value of a computed trait (`None`: null or unknown user).
    pub fn computed_value(&self, user_id: &str, key: &str) -> Result<Option<Value>> {
        let ct = self.catalog.computed_trait(key)?;
        Ok(self
            .interner
            .get(user_id)
            .and_then(|uid| self.shard_of(uid).user(uid)?.computed_value(ct).cloned()))
    }

    /// Defines (or replaces) an audience, evaluates it over every profile
    /// and returns its size. Entries and exits get reason `definition`.
    pub fn define_audience(&mut self, key: &str, rule: &str) -> Result<u64> {
        let sizes = self.define_audiences(&[(key, rule)]).map_err(|(_, e)| e)?;
        Ok(sizes[0])
    }

    /// Defines many audiences at once with one backfill pass; returns each
    /// item's size after it (a key named twice takes its last rule, and
    /// both items report that audience's size). On an error in an item,
    /// with its index, nothing changes; an error of the call as a whole
    /// (writing the log) comes with `items.len()`. No items, no operation.
    pub fn define_audiences(
        &mut self,
        items: &[(&str, &str)],
    ) -> Result<Vec<u64>, (usize, SegmintError)> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let whole = items.len();
        let now = self.op_now();
        for (i, (key, rule)) in items.iter().enumerate() {
            self.check_key(key).map_err(|e| (i, e))?;
            if rule.len() > self.config.limits.max_rule_bytes {
                return Err((
                    i,
                    SegmintError::LimitExceeded {
                        what: "rule".into(),
                        limit: self.config.limits.max_rule_bytes,
                        actual: rule.len(),
                    },
                ));
            }
        }
        let owned: Vec<(String, String)> = items
            .iter()
            .map(|(k, r)| ((*k).to_owned(), (*r).to_owned()))
            .collect();
        let def = Definition::Audiences(owned.clone());
        let (catalog, slots) = self.catalog_after(&def)?;
        let position = self
            .log_record(&Record::<Event>::DefineAudiences { now, items: owned })
            .map_err(|e| (whole, e))?;
        self.define_audiences_with(now, def, catalog, &slots);
        self.finish_record(position, true).map_err(|e| (whole, e))?;
        let sizes = items.iter().map(|(key, _)| self.size(key));
        sizes.collect::<Result<_>>().map_err(|e| (whole, e))
    }

    /// Installs audiences compiled by [`Engine::catalog_after`] and
    /// backfills them at `now` (also replay).
    pub(crate) fn define_audiences_with(
        &mut self,
        now: Millis,
        def: Definition,
        catalog: Catalog,
        slots: &[AudId],
    ) {
        self.catch_up(now);
        self.install_catalog(def, catalog, slots);
        let g = self.config.granularity;
        self.on_shards(Spread::AllThreads, |_, shard, cat, out| {
            shard.backfill(
                Step {
                    cat,
                    now,
                    granularity: g,
                },
                slots,
                out,
            );
        });
    }

    /// The catalog after one more definition, and the slots it touched; the
    /// engine is unchanged. (The catalog is a function of the definitions
    /// alone, so a snapshot stores them instead of the compiled catalog.)
    pub(crate) fn catalog_after(
        &self,
        def: &Definition,
    ) -> Result<(Catalog, Vec<AudId>), (usize, SegmintError)> {
        let mut catalog = (*self.catalog).clone();
        let slots = apply_definition(&mut catalog, def)?;
        Ok((catalog, slots))
    }

    /// Makes `catalog` (from [`Engine::catalog_after`]) current.
    /// `ids` are the audience slots (or the computed trait) it defined.
    pub(crate) fn install_catalog(&mut self, def: Definition, catalog: Catalog, ids: &[u32]) {
        let keys = (&mut self.slot_keys, &mut self.computed_keys);
        name_ids(keys, &def, &catalog, ids);
        // Before its operation, while the memberships shared with them
        // are still theirs too.
        self.unshare_changed(&catalog);
        // What the new catalog no longer reads (a state, a timer whose
        // group's rules are gone) would stay in the profiles, read by
        // nothing: a state for good, a timer until it fires to no effect.
        let unread = catalog.unread_since(Some(&self.catalog));
        if !unread.is_empty() {
            let shards = &mut self.shards;
            self.pool
                .install(|| shards.par_iter_mut().for_each(|s| s.drop_unread(&unread)));
        }
        self.catalog = Arc::new(catalog);
        self.definitions.push(def);
    }

    /// Installs a snapshot's definitions, in order, before its profiles
    /// are loaded (so none has a membership to share or a state to drop):
    /// on one catalog whose indexes are built once at the end, where
    /// definition by definition each copied the catalog and rebuilt them,
    /// a cost that grew with every definition made before.
    /// On an error (with the index of the failing definition) the engine
    /// is unchanged.
    pub(crate) fn install_definitions(
        &mut self,
        definitions: Vec<Definition>,
    ) -> Result<(), (usize, SegmintError)> {
        let mut catalog = (*self.catalog).clone();
        catalog.defer_indexes();
        // Named as they are made: a slot removed later keeps its name.
        let (mut slot_keys, mut computed_keys) =
            (self.slot_keys.clone(), self.computed_keys.clone());
        for (i, def) in definitions.iter().enumerate() {
            let ids = apply_definition(&mut catalog, def).map_err(|(_, e)| (i, e))?;
            name_ids((&mut slot_keys, &mut computed_keys), def, &catalog, &ids);
        }
        catalog.build_deferred_indexes();
        (self.slot_keys, self.computed_keys) = (slot_keys, computed_keys);
        self.definitions.extend(definitions);
        self.catalog = Arc::new(catalog);
        Ok(())
    }

    /// Defines (or replaces) a static audience from a list of user ids (a
    /// manually uploaded segment). Unseen ids become profiles. Rules can use
    /// it with `in_audience` / `member_for`. Returns its size.
    pub fn define_static_audience(&mut self, key: &str, user_ids: &[&str]) -> Result<u64> {
        self.check_key(key)?;
        for (i, u) in user_ids.iter().enumerate() {
            if u.is_empty() {
                return Err(SegmintError::InvalidArgument {
                    message: format!("user id {i} of the list is empty"),
                });
            }
            self.config
                .limits
                .check_key_named(u, || format!("user id {i} of the list"))?;
        }
        let now = self.op_now();
        let position = self.log_record(&Record::<Event>::DefineStatic {
            now,
            key: key.to_owned(),
            user_ids: user_ids.iter().map(|u| (*u).to_owned()).collect(),
        })?;
        self.define_static_at(now, key, user_ids);
        self.finish_record(position, true)?;
        self.size(key)
    }

    /// [`Engine::define_static_audience`] at `now`, without logging.
    pub(crate) fn define_static_at(&mut self, now: Millis, key: &str, user_ids: &[&str]) {
        self.catch_up(now);
        let def = Definition::Static(key.to_owned());
        let (catalog, slots) = self
            .catalog_after(&def)
            .expect("defining a static audience cannot fail");
        let slot = slots[0];
        self.install_catalog(def, catalog, &slots);
        let n = self.shards.len();
        let mut wanted = vec![RoaringBitmap::new(); n];
        for u in user_ids {
            let uid = self.interner.intern(u);
            wanted[uid as usize % n].insert(uid);
        }
        let g = self.config.granularity;
        self.on_shards(Spread::AllThreads, |i, shard, cat, out| {
            shard.set_static_members(
                Step {
                    cat,
                    now,
                    granularity: g,
                },
                slot,
                &wanted[i],
                out,
            );
        });
    }

    /// Removes an audience; its members exit with reason `delete`.
    pub fn remove_audience(&mut self, key: &str) -> Result<()> {
        let def = Definition::Remove(key.to_owned());
        let (catalog, slots) = self.catalog_after(&def).map_err(|(_, e)| e)?;
        let position = self.log_record(&Record::<Event>::RemoveAudience {
            now: self.now,
            key: key.to_owned(),
        })?;
        self.remove_audience_with(def, catalog, slots[0]);
        self.finish_record(position, true)?;
        Ok(())
    }

    /// [`Shard::unshare_changed`] in every shard, on all threads (a
    /// removed lead's followers and a follower given another rule each get
    /// an entry per member back; a removed follower, only its bitmap).
    pub(crate) fn unshare_changed(&mut self, cat: &Catalog) {
        let shards = &mut self.shards;
        self.pool
            .install(|| shards.par_iter_mut().for_each(|s| s.unshare_changed(cat)));
    }

    /// Installs a catalog without the removed audience `slot` and lets its
    /// members exit (also replay).
    pub(crate) fn remove_audience_with(&mut self, def: Definition, catalog: Catalog, slot: AudId) {
        self.install_catalog(def, catalog, &[]);
        let now = self.now;
        self.on_shards(Spread::AllThreads, |_, shard, _, out| {
            shard.remove_audience(slot, now, out)
        });
    }

    /// Defined audience keys, in definition order.
    pub fn audiences(&self) -> Vec<String> {
        self.catalog
            .keys()
            .map(|(_, a)| a.key.to_string())
            .collect()
    }

    /// The rule text of an audience.
    pub fn rule(&self, key: &str) -> Result<String> {
        let slot = self.catalog.audience(key)?;
        Ok(self.catalog.audiences[slot as usize]
            .as_ref()
            .map(|a| a.source.to_string())
            .unwrap_or_default())
    }

    pub(crate) fn shard_of(&self, uid: u32) -> &Shard {
        &self.shards[uid as usize % self.shards.len()]
    }

    /// Whether the user is a member (an unknown user is in no audience).
    pub fn is_member(&self, user_id: &str, key: &str) -> Result<bool> {
        let slot = self.catalog.audience(key)?;
        Ok(self
            .interner
            .get(user_id)
            .is_some_and(|uid| self.holds(uid, slot)))
    }

    /// Whether the user with dense id `uid` is a member of `slot`: from
    /// the shard's bitmap (one lookup in a structure that stays in cache
    /// for many), or from the profile's list (always current) while the
    /// bitmap waits for a flush.
    fn holds(&self, uid: u32, slot: AudId) -> bool {
        let shard = self.shard_of(uid);
        shard
            .members
            .contains_flushed(slot, uid)
            .unwrap_or_else(|| {
                let user = shard.user(uid);
                user.is_some_and(|user| shard.members.is_listed(user, slot))
            })
    }

    /// Membership of many users in one audience. Many are looked up in each
    /// shard's bitmap, which stays in cache where each profile's list would
    /// be a few cache misses of its own (with the changes not yet flushed
    /// laid over it once per call: a copy, not worth it for a few users).
    pub fn is_member_many<'a>(
        &self,
        user_ids: impl IntoIterator<Item = &'a str>,
        key: &str,
    ) -> Result<Vec<bool>> {
        /// Fewer users than this are looked up one by one.
        const MANY: usize = 64;
        let slot = self.catalog.audience(key)?;
        let user_ids: Vec<&str> = user_ids.into_iter().collect();
        let uids = user_ids.iter().map(|u| self.interner.get(u));
        if user_ids.len() < MANY {
            return Ok(uids
                .map(|uid| uid.is_some_and(|uid| self.holds(uid, slot)))
                .collect());
        }
        let members: Vec<_> = self.shards.iter().map(|s| s.members.bitmap(slot)).collect();
        Ok(uids
            .map(|uid| uid.is_some_and(|uid| members[uid as usize % members.len()].contains(uid)))
            .collect())
    }

    /// Audiences the user is in, sorted by key.
    pub fn audiences_of(&self, user_id: &str) -> Vec<String> {
        let Some(uid) = self.interner.get(user_id) else {
            return Vec::new();
        };
        let shard = self.shard_of(uid);
        let Some(user) = shard.user(uid) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = user
            .memberships
            .slots()
            .iter()
            .flat_map(|slot| shard.members.listed_as(slot))
            .filter_map(|slot| self.catalog.audiences.get(slot as usize)?.as_ref())
            .map(|a| a.key.to_string())
            .collect();
        keys.sort();
        keys
    }

    /// When the user entered the audience, if a member.
    pub fn entered_at(&self, user_id: &str, key: &str) -> Result<Option<Millis>> {
        let slot = self.catalog.audience(key)?;
        Ok(self.interner.get(user_id).and_then(|uid| {
            let shard = self.shard_of(uid);
            shard.members.entered(shard.user(uid)?, slot)
        }))
    }

    /// Members as a bitmap of dense ids (see [`Engine::user_id`]).
    pub fn bitmap(&self, key: &str) -> Result<RoaringBitmap> {
        let slot = self.catalog.audience(key)?;
        let mut all = RoaringBitmap::new();
        for shard in &self.shards {
            all |= shard.members.bitmap(slot).as_ref();
        }
        Ok(all)
    }

    /// The dense id of an external id, if the user was ever seen.
    pub fn dense_id(&self, user_id: &str) -> Option<u32> {
        self.interner.get(user_id)
    }

    /// The external id of a dense id: the profile's own name. (A profile
    /// an alias merged into another keeps its dense id, and its name now
    /// stands for the other; [`Engine::user_count`] does not count it.)
    pub fn user_id(&self, uid: u32) -> Option<&str> {
        ((uid as usize) < self.interner.len()).then(|| self.interner.name(uid))
    }

    /// Members as external ids, sorted.
    pub fn members(&self, key: &str) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .bitmap(key)?
            .iter()
            .map(|uid| self.interner.name(uid).to_owned())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Number of members.
    pub fn size(&self, key: &str) -> Result<u64> {
        let slot = self.catalog.audience(key)?;
        Ok(self.shards.iter().map(|s| s.members.len(slot)).sum())
    }

    /// Changes with `seq > since_seq`, at most `limit`.
    pub fn changes(&self, since_seq: u64, limit: usize) -> Result<Vec<Change>> {
        if since_seq + 1 < self.log_first_seq {
            return Err(SegmintError::InvalidArgument {
                message: format!(
                    "changes up to seq {} were dropped from memory (change_log_capacity); resume from {} or later",
                    self.log_first_seq - 1,
                    self.log_first_seq - 1
                ),
            });
        }
        let start = ((since_seq + 1 - self.log_first_seq) as usize).min(self.log.len());
        // Changes of records not yet durable stay hidden (fsync `always`).
        let end = ((self.visible_seq() + 1).saturating_sub(self.log_first_seq) as usize)
            .clamp(start, self.log.len());
        Ok(self
            .log
            .range(start, end)
            .enumerate()
            .take(limit)
            .map(|(i, c)| {
                let (audience, entered, computed) = match c.kind {
                    ChangeKind::Membership { aud, entered } => {
                        (self.slot_keys[aud as usize].clone(), entered, None)
                    }
                    ChangeKind::Computed { ct, values } => (
                        Arc::from(""),
                        false,
                        Some(ComputedChange {
                            key: self.computed_keys[ct as usize].clone(),
                            old: values.old,
                            new: values.new,
                        }),
                    ),
                };
                Change {
                    seq: self.log_first_seq + (start + i) as u64,
                    audience,
                    user_id: Arc::from(self.interner.name(c.uid)),
                    entered,
                    at: c.at,
                    reason: c.reason,
                    computed,
                }
            })
            .collect())
    }

    /// A user's traits (sorted by key), if the user is known.
    pub fn traits(&self, user_id: &str) -> Option<Vec<(String, crate::value::Value)>> {
        let uid = self.interner.get(user_id)?;
        let user = self.shard_of(uid).user(uid)?;
        Some(
            user.named_traits(&self.catalog.trait_keys)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Approximate heap bytes held for profiles, memberships and timers,
    /// the user ids and the message ids of the deduplication window.
    pub fn heap_bytes(&self) -> usize {
        self.interner.heap_bytes()
            + self.seen_messages.heap_bytes()
            + self.shards.iter().map(Shard::heap_bytes).sum::<usize>()
    }

    /// Heap bytes of the in-memory change log: 16 bytes a membership
    /// change (a computed trait's also keeps its values), up to
    /// `change_log_capacity` changes (160 MB at the default 10 M), however
    /// many users there are; not part of [`Engine::heap_bytes`].
    pub fn change_log_bytes(&self) -> usize {
        self.log.heap_bytes()
    }

    /// Evaluation work done so far, summed over shards.
    pub fn counters(&self) -> crate::shard::Counters {
        let mut total = crate::shard::Counters::default();
        for s in &self.shards {
            total += s.counters;
        }
        total
    }

    /// Number of pending timers.
    pub fn pending_timers(&self) -> usize {
        self.shards.iter().map(Shard::pending_timers).sum()
    }
}

/// Records in `keys` (the slots' keys, the computed traits' keys) those
/// of the slots (or the computed trait) `def` defined in `catalog`.
fn name_ids(
    (slot_keys, computed_keys): (&mut Vec<Arc<str>>, &mut Vec<Arc<str>>),
    def: &Definition,
    catalog: &Catalog,
    ids: &[u32],
) {
    fn name(keys: &mut Vec<Arc<str>>, id: u32, key: Arc<str>) {
        if keys.len() <= id as usize {
            keys.resize(id as usize + 1, Arc::from(""));
        }
        keys[id as usize] = key;
    }
    for &id in ids {
        match def {
            Definition::Computed(key, _) => name(computed_keys, id, Arc::from(key.as_str())),
            // A removed slot keeps its name, for the changes logged under
            // it (and `id` is a computed trait's, not a slot).
            Definition::RemoveComputed(_) | Definition::Remove(_) => {}
            Definition::Audiences(_) | Definition::Static(_) => {
                debug_assert!(catalog
                    .audiences
                    .get(id as usize)
                    .is_some_and(Option::is_some));
                if let Some(Some(a)) = catalog.audiences.get(id as usize) {
                    name(slot_keys, id, a.key.clone());
                }
            }
        }
    }
}

/// Parses rule `rule` and type-checks it against `cat`'s computed traits.
fn compile_rule_in(cat: &Catalog, rule: &str) -> Result<crate::rules::ast::Expr> {
    let ast = rules::parse_rule(rule)?;
    rules::check_rule_in(rule, &ast, &|k| cat.computed_type(k))?;
    Ok(ast)
}

/// Applies one definition to `catalog`; the slots (or the computed trait)
/// it touched. On an error (with the index of the failing item) `catalog`
/// may be left part-way: callers apply it to a copy.
fn apply_definition(
    catalog: &mut Catalog,
    def: &Definition,
) -> Result<Vec<AudId>, (usize, SegmintError)> {
    Ok(match def {
        Definition::Audiences(items) => {
            let mut parsed = Vec::with_capacity(items.len());
            for (i, (key, rule)) in items.iter().enumerate() {
                let ast = compile_rule_in(catalog, rule).map_err(|e| (i, e))?;
                parsed.push((key.clone(), rule.clone(), ast));
            }
            catalog.define_many(parsed)?
        }
        Definition::Static(key) => vec![catalog.define_static(key)],
        Definition::Remove(key) => vec![catalog.remove(key).map_err(|e| (0, e))?],
        Definition::Computed(key, expr) => {
            let (ast, ty) = rules::compile_value(expr).map_err(|e| (0, e))?;
            vec![
                catalog
                    .define_computed(key, expr, ast, ty)
                    .map_err(|e| (0, e))?
                    .0,
            ]
        }
        Definition::RemoveComputed(key) => {
            vec![catalog.remove_computed(key).map_err(|e| (0, e))?]
        }
    })
}

/// Puts a shard's changes of one operation (`out`) in log order, then
/// sorts them by key for the merge (see [`merge::sort_run`]).
fn sort_changes(shard: &mut Shard, out: &mut Vec<ShardChange>) {
    shard.put_changes_in_order(out);
    merge::sort_run(out);
}

#[cfg(test)]
mod computed_tests {
    //! Computed traits: incremental values equal a full recomputation, time
    //! changes happen at the exact instant, rules follow the values.
    use super::*;
    use crate::eval::{computed_value, UserEnv};
    use hashbrown::HashMap;
    use proptest::prelude::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;
    /// The manual clock's start (also `class_sharing_tests`').
    pub(super) const T0: i64 = 1_000 * D;

    /// An engine on a manual clock at `T0` with one thread per shard.
    pub(super) fn engine(shards: usize) -> Engine {
        Engine::new(EngineConfig {
            clock: Clock::Manual(T0),
            shards,
            threads: shards,
            ..Default::default()
        })
        .unwrap()
    }

    /// Ingests one track event with `props` (a JSON object).
    pub(super) fn track(e: &mut Engine, user: &str, event: &str, props: &str, at: i64) {
        let ts = format_timestamp(at);
        let json = format!(
            r#"[{{"type":"track","userId":"{user}","event":"{event}","properties":{props},"timestamp":"{ts}"}}]"#
        );
        let report = e.ingest_json(json.as_bytes()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    fn value(e: &Engine, user: &str, key: &str) -> Option<Value> {
        e.computed_value(user, key).unwrap()
    }

    /// (key, user, old, new, at, reason) of each computed-trait change.
    type Row = (String, String, Option<Value>, Option<Value>, Millis, Reason);

    fn computed_changes(e: &Engine, since: u64) -> Vec<Row> {
        e.changes(since, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|c| {
                let cc = c.computed?;
                Some((
                    cc.key.to_string(),
                    c.user_id.to_string(),
                    cc.old,
                    cc.new,
                    c.at,
                    c.reason,
                ))
            })
            .collect()
    }

    /// Every kept value equals the expression evaluated afresh from the
    /// states (a profile merged into another by an alias keeps none).
    fn assert_kept_equals_recomputed(e: &Engine) {
        let cat = e.catalog();
        for shard in &e.shards {
            for (local, user) in shard.users.iter().enumerate() {
                if shard.husks.contains(local as u32) {
                    assert!(user.traits.computed().is_empty());
                    continue;
                }
                let env = UserEnv::new(cat, user, e.now(), e.config.granularity);
                for (ct, _) in cat.computed_traits() {
                    assert_eq!(
                        user.computed_value(ct).cloned(),
                        computed_value(cat, ct, &env),
                        "computed.{} at {}",
                        cat.computed_key_of(ct),
                        e.now()
                    );
                }
            }
        }
    }

    /// A buyer with more orders than a state folds afresh (see
    /// `fold_cache`) sends one older than the 30 days its buffer keeps:
    /// evicted at once into the summary, it still counts in her lifetime
    /// sum, read after another user's event (no pass memo to lean on).
    #[test]
    fn a_late_order_past_retention_reaches_the_lifetime_sum_of_a_long_history() {
        let mut e = engine(1);
        e.define_computed_trait("lifetime", r#"sum("Order Completed", revenue)"#)
            .unwrap();
        e.define_computed_trait("recent", r#"sum("Order Completed", revenue, 30d)"#)
            .unwrap();
        for i in 0..70 {
            let t = T0 - 70 * 60_000 + i * 60_000;
            track(&mut e, "u", "Order Completed", r#"{"revenue": 1}"#, t);
            track(&mut e, "v", "Order Completed", r#"{"revenue": 1}"#, t);
        }
        assert_eq!(value(&e, "u", "lifetime"), Some(Value::Num(70.0)));
        track(
            &mut e,
            "u",
            "Order Completed",
            r#"{"revenue": 50}"#,
            T0 - 40 * 24 * H,
        );
        track(&mut e, "v", "Order Completed", r#"{"revenue": 1}"#, T0);
        track(&mut e, "u", "Order Completed", r#"{"revenue": 1}"#, T0);
        assert_eq!(value(&e, "u", "recent"), Some(Value::Num(71.0)));
        assert_eq!(value(&e, "u", "lifetime"), Some(Value::Num(121.0)));
    }

    #[test]
    fn window_lapse_changes_the_value_at_the_exact_instant() {
        let mut e = engine(2);
        e.define_computed_trait("orders_1h", r#"count("Order Completed", 1h)"#)
            .unwrap();
        track(&mut e, "u", "Order Completed", "{}", T0 - 10 * 60_000);
        assert_eq!(value(&e, "u", "orders_1h"), Some(Value::Num(1.0)));
        let seq = e.last_seq();
        e.advance(T0 + 5 * H).unwrap();
        assert_eq!(value(&e, "u", "orders_1h"), Some(Value::Num(0.0)));
        assert_eq!(
            computed_changes(&e, seq),
            vec![(
                "orders_1h".into(),
                "u".into(),
                Some(Value::Num(1.0)),
                Some(Value::Num(0.0)),
                T0 + 50 * 60_000,
                Reason::Time
            )]
        );
    }

    #[test]
    fn a_new_profile_logs_its_values_from_null_and_rules_follow() {
        let mut e = engine(1);
        e.define_computed_trait("spend", r#"sum("Order Completed", revenue, 2h)"#)
            .unwrap();
        e.define_audience("big", "computed.spend > 100").unwrap();
        track(&mut e, "u", "Order Completed", r#"{"revenue": 150}"#, T0);
        let changes = e.changes(0, 10).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        let cc = changes[0].computed.clone().unwrap();
        assert_eq!((cc.old, cc.new), (None, Some(Value::Num(150.0))));
        assert_eq!(
            (changes[1].audience.as_ref(), changes[1].entered),
            ("big", true)
        );
        e.advance(T0 + 3 * H).unwrap();
        let changes = e.changes(2, 10).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            changes[0].computed.as_ref().unwrap().new,
            None,
            "sum of nothing is null"
        );
        assert_eq!(
            (changes[0].at, changes[0].reason),
            (T0 + 2 * H, Reason::Time)
        );
        assert_eq!(
            (changes[1].audience.as_ref(), changes[1].entered),
            ("big", false)
        );
        assert_eq!(
            changes[1].at,
            T0 + 2 * H,
            "the rule follows at the same instant"
        );
    }

    #[test]
    fn backfill_replace_and_remove() {
        let mut e = engine(3);
        for u in ["a", "b", "c"] {
            track(&mut e, u, "Product Viewed", r#"{"category": "shoes"}"#, T0);
        }
        track(&mut e, "a", "Identify Me", "{}", T0);
        // The state of "Product Viewed" with category did not exist: a new
        // state starts empty, so the views are counted from now on.
        assert_eq!(
            e.define_computed_trait("views", r#"count("Product Viewed")"#)
                .unwrap(),
            3
        );
        let defs = computed_changes(&e, 0);
        assert_eq!(defs.len(), 3);
        assert!(defs
            .iter()
            .all(|c| c.5 == Reason::Definition && c.2.is_none()));
        track(&mut e, "a", "Product Viewed", r#"{"category": "bags"}"#, T0);
        assert_eq!(value(&e, "a", "views"), Some(Value::Num(1.0)));
        e.define_audience("viewers", "computed.views >= 1").unwrap();
        assert_eq!(e.members("viewers").unwrap(), vec!["a"]);
        // Remove while in use: an error naming the rule.
        let err = e.remove_computed_trait("views").unwrap_err();
        assert!(
            matches!(&err, SegmintError::InUse { used_by, .. } if used_by == &vec!["viewers".to_string()]),
            "{err}"
        );
        // Replace: the rule is re-evaluated with reason definition.
        let seq = e.last_seq();
        e.define_computed_trait(
            "views",
            r#"count("Product Viewed" where category == "shoes")"#,
        )
        .unwrap();
        assert_eq!(value(&e, "a", "views"), Some(Value::Num(0.0)));
        let after = e.changes(seq, 10).unwrap();
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(
            (
                after[1].audience.as_ref(),
                after[1].entered,
                after[1].reason
            ),
            ("viewers", false, Reason::Definition)
        );
        // A replacement changing the type breaks the rule: an error naming it.
        let err = e
            .define_computed_trait("views", r#"unique("Product Viewed", category)"#)
            .unwrap_err();
        assert!(err.to_string().contains("audience 'viewers'"), "{err}");
        assert_eq!(
            e.computed_traits()[0].2,
            "number",
            "unchanged after the error"
        );
        e.remove_audience("viewers").unwrap();
        let seq = e.last_seq();
        e.remove_computed_trait("views").unwrap();
        let gone = computed_changes(&e, seq);
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|c| c.3.is_none() && c.5 == Reason::Delete));
        assert!(e.computed_traits().is_empty());
        assert!(matches!(
            e.computed_value("a", "views"),
            Err(SegmintError::UnknownComputedTrait { .. })
        ));
    }

    #[test]
    fn rules_type_check_against_the_computed_type() {
        let mut e = engine(1);
        let err = e
            .define_audience("x", "trait.a == 1 and\n computed.nope > 3")
            .unwrap_err();
        let SegmintError::RuleType(r) = &err else {
            panic!("{err:?}")
        };
        assert_eq!((r.line, r.column), (2, 2), "{err}");
        assert!(r.message.contains("unknown computed trait 'nope'"), "{err}");
        e.define_computed_trait("ltv", r#"sum("Order Completed", revenue)"#)
            .unwrap();
        e.define_computed_trait("cats", r#"unique("Product Viewed", category)"#)
            .unwrap();
        let err = e
            .define_audience("x", r#"computed.ltv == "gold""#)
            .unwrap_err();
        assert!(matches!(err, SegmintError::RuleType(_)), "{err}");
        let err = e
            .define_audience("x", r#"computed.cats == "shoes""#)
            .unwrap_err();
        assert!(matches!(err, SegmintError::RuleType(_)), "{err}");
        e.define_audience("shoes", r#"computed.cats contains "shoes""#)
            .unwrap();
        e.define_audience("shoes_or_bags", r#"computed.cats in ["shoes", "bags"]"#)
            .unwrap();
        track(
            &mut e,
            "u",
            "Product Viewed",
            r#"{"category": "shoes"}"#,
            T0,
        );
        assert_eq!(
            value(&e, "u", "cats"),
            Some(Value::List(vec![Arc::<str>::from("shoes")].into()))
        );
        assert!(e.is_member("u", "shoes").unwrap());
        assert!(e.is_member("u", "shoes_or_bags").unwrap());
        let err = e.define_computed_trait("bad", "trait.x == 1").unwrap_err();
        assert!(matches!(err, SegmintError::RuleType(_)), "{err}");
        let err = e
            .define_computed_trait("bad key", r#"count("X")"#)
            .unwrap_err();
        assert!(matches!(err, SegmintError::InvalidArgument { .. }), "{err}");
    }

    #[test]
    fn since_bounds_fire_once_per_flip_at_the_exact_instant() {
        let s = 1_000;
        // (rule, its membership changes after one event at T0: instant
        // and direction; the first entry is the event's own, if any).
        let cases: [(&str, &[(i64, bool)]); 10] = [
            (r#"since("A") > 1h"#, &[(T0 + H + s, true)]),
            (r#"since("A") >= 1h"#, &[(T0 + H, true)]),
            (r#"since("A") < 1h"#, &[(T0, true), (T0 + H, false)]),
            (r#"since("A") <= 1h"#, &[(T0, true), (T0 + H + s, false)]),
            (
                r#"since("A") == 1h"#,
                &[(T0 + H, true), (T0 + H + s, false)],
            ),
            (
                r#"since("A") != 1h"#,
                &[(T0, true), (T0 + H, false), (T0 + H + s, true)],
            ),
            (r#"1h < since("A")"#, &[(T0 + H + s, true)]),
            (
                r#"since("A") between 1h and 2h"#,
                &[(T0 + H, true), (T0 + 2 * H + s, false)],
            ),
            (
                r#"since("A") not between 1h and 2h"#,
                &[(T0, true), (T0 + H, false), (T0 + 2 * H + s, true)],
            ),
            (r#"member_for("a") >= 30m"#, &[(T0 + H / 2, true)]),
        ];
        for (rule, want) in cases {
            let mut e = engine(1);
            e.define_audience("a", r#"since("A") >= 0s"#).unwrap();
            e.define_audience("r", rule).unwrap();
            track(&mut e, "u", "A", "{}", T0);
            e.advance(T0 + 3 * H).unwrap();
            let got: Vec<(i64, bool)> = e
                .changes(0, usize::MAX)
                .unwrap()
                .into_iter()
                .filter(|c| &*c.audience == "r")
                .map(|c| (c.at, c.entered))
                .collect();
            assert_eq!(got, want, "{rule}");
            // Every timer found a flip: none fired early to find nothing.
            let by_time = got.iter().filter(|(at, _)| *at > T0).count() as u64;
            assert_eq!(e.counters().timers_fired, by_time, "{rule}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Track {
            user: u8,
            name: u8,
            rev: Option<i8>,
            cat: u8,
            ago: i64,
        },
        Advance(i64),
        /// `u{from}` merged into `u{to}` (see `Engine::alias`).
        Alias {
            from: u8,
            to: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..4, 0u8..2, proptest::option::of(-3i8..10), 0u8..3, -100i64..7_200)
                .prop_map(|(user, name, rev, cat, ago)| Op::Track { user, name, rev, cat, ago }),
            2 => (1i64..5_000).prop_map(Op::Advance),
            1 => (0u8..5, 0u8..4).prop_map(|(from, to)| Op::Alias { from, to }),
        ]
    }

    /// Ingests an alias call: `previous` names `user` from now on.
    pub(super) fn alias(e: &mut Engine, previous: &str, user: &str) {
        let json = format!(r#"[{{"type":"alias","previousId":"{previous}","userId":"{user}"}}]"#);
        let report = e.ingest_json(json.as_bytes()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(48)))]
        /// After any stream of events (late, future-dated) and clock moves,
        /// every kept value equals a full recomputation, and the last change
        /// logged per (user, key) carries the current value.
        #[test]
        fn incremental_equals_full_recomputation(
            ops in proptest::collection::vec(op(), 1..60),
            shards in 1usize..3,
        ) {
            let mut e = engine(shards);
            let exprs = [
                ("n", r#"count("A", 30m)"#),
                ("n_all", r#"count("A")"#),
                ("rev", r#"sum("A", revenue, 1h)"#),
                ("avg", r#"avg("A", revenue)"#),
                ("lo", r#"min("B", revenue, 20m)"#),
                ("hi", r#"max("A", revenue, 2h)"#),
                ("d", r#"distinct("A", category, 45m)"#),
                ("mf", r#"most_frequent("B", category)"#),
                ("f", r#"first("A", category, 1h)"#),
                ("l", r#"last("A", category)"#),
                ("u", r#"unique("B", category, 30m)"#),
                ("since_b", r#"count("A", since "B")"#),
                ("mix", r#"sum("A", revenue) / count("A", 1h)"#),
            ];
            // Half defined before the events, half after some of them.
            for (k, x) in &exprs[..6] {
                e.define_computed_trait(k, x).unwrap();
            }
            e.define_audience("r", "computed.n >= 2 or computed.rev > 5").unwrap();
            let half = ops.len() / 2;
            let mut now = T0;
            for (i, op) in ops.iter().enumerate() {
                if i == half {
                    for (k, x) in &exprs[6..] {
                        e.define_computed_trait(k, x).unwrap();
                    }
                }
                match op {
                    Op::Track { user, name, rev, cat, ago } => {
                        let props = match rev {
                            Some(r) => format!(r#"{{"revenue": {r}, "category": "c{cat}"}}"#),
                            None => format!(r#"{{"category": "c{cat}"}}"#),
                        };
                        let name = ["A", "B"][*name as usize];
                        track(&mut e, &format!("u{user}"), name, &props, now - ago * 1000);
                    }
                    Op::Advance(s) => {
                        now += s * 1000;
                        e.advance(now).unwrap();
                    }
                    Op::Alias { from, to } => alias(&mut e, &format!("u{from}"), &format!("u{to}")),
                }
                assert_kept_equals_recomputed(&e);
            }
            let mut last: HashMap<(String, String), Option<Value>> = HashMap::new();
            for (k, u, _, new, _, _) in computed_changes(&e, 0) {
                last.insert((k, u), new);
            }
            for ((k, u), v) in last {
                // A profile merged into another logged its last values under
                // its name, which names the other now.
                let own = (0..e.interner.len() as u32).find(|&id| e.interner.name(id) == u);
                if own.is_some_and(|id| e.interner.is_merged(id)) {
                    continue;
                }
                prop_assert_eq!(v, value(&e, &u, &k), "computed.{} of {}", k, u);
            }
            // The rule reading computed values agrees with a fresh evaluation.
            for u in 0..4 {
                let user = format!("u{u}");
                if e.interner.get(&user).is_none() {
                    continue;
                }
                let n = value(&e, &user, "n").and_then(|v| v.as_num()).unwrap_or(0.0);
                let rev = value(&e, &user, "rev").and_then(|v| v.as_num());
                let want = n >= 2.0 || rev.is_some_and(|r| r > 5.0);
                prop_assert_eq!(e.is_member(&user, "r").unwrap(), want);
            }
        }
    }
}

#[cfg(test)]
mod class_sharing_tests {
    //! Followers of a rule class share their lead's memberships
    //! (`Shard::share_classes`): through definitions, replacements,
    //! removals, snapshots and events, every audience's bitmap says what
    //! the profiles' lists say, and memberships and entry instants what
    //! the change log says.
    use super::computed_tests::{engine, T0};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const RULES: [&str; 3] = [
        r#"did("A", 30m)"#,
        r#"count("B", 1h) >= 2"#,
        r#"sum("A", revenue, 2h) > 5"#,
    ];

    fn track(e: &mut Engine, user: &str, event: &str, revenue: i64, at: i64) {
        let props = format!(r#"{{"revenue":{revenue}}}"#);
        super::computed_tests::track(e, user, event, &props, at);
    }

    /// Each live audience's bitmap (and size) against the profiles' lists,
    /// and every membership and entry instant the engine reports against
    /// those the change log implies.
    fn assert_consistent(e: &Engine) {
        let cat = e.catalog();
        for (slot, def) in cat.audiences.iter().enumerate() {
            let slot = slot as AudId;
            let Some(def) = def else {
                // A removed slot: no member, no list entry left behind.
                for shard in &e.shards {
                    assert!(shard.members.bitmap(slot).is_empty(), "removed slot {slot}");
                    for user in shard.users.iter() {
                        assert_eq!(user.entered(slot), None, "removed slot {slot}");
                    }
                }
                continue;
            };
            let mut listed = 0;
            for shard in &e.shards {
                let bitmap = shard.members.bitmap(slot);
                for (local, user) in shard.users.iter().enumerate() {
                    let uid = local as u32 * shard.count + shard.index;
                    let member = shard.members.is_listed(user, slot);
                    assert_eq!(bitmap.contains(uid), member, "{}, user {uid}", def.key);
                    listed += u64::from(member);
                }
            }
            assert_eq!(e.size(&def.key).unwrap(), listed, "{}", def.key);
        }
        // No profile keeps a state or a timer the catalog does not read.
        let unread = cat.unread_since(None);
        for shard in &e.shards {
            for user in shard.users.iter() {
                for (s, _) in user.states.iter() {
                    assert!(!unread.state(*s), "unread state {s}");
                }
                for t in user.timers.iter() {
                    assert!(!unread.timer(t.id), "unread timer {}", t.id);
                }
            }
        }
        // (audience, user) -> entered at, from the log.
        let mut logged: BTreeMap<(String, String), Millis> = BTreeMap::new();
        for c in e.changes(0, usize::MAX).unwrap() {
            let at = (c.audience.to_string(), c.user_id.to_string());
            if c.computed.is_some() {
                continue;
            } else if c.entered {
                logged.insert(at, c.at);
            } else {
                logged.remove(&at);
            }
        }
        let keys = e.audiences();
        for u in 0..e.interner.len() {
            // A profile merged into another: its name is the other's now.
            if e.interner.is_merged(u as u32) {
                continue;
            }
            let user = e.interner.name(u as u32).to_owned();
            let mut want_keys = Vec::new();
            for key in &keys {
                let want = logged.get(&(key.clone(), user.clone())).copied();
                assert_eq!(e.entered_at(&user, key).unwrap(), want, "{key}, {user}");
                assert_eq!(
                    e.is_member(&user, key).unwrap(),
                    want.is_some(),
                    "{key}, {user}"
                );
                let explained = e.explain(&user, key).unwrap();
                assert_eq!(explained.entered_at, want, "{key}, {user}");
                if let Some(at) = want {
                    want_keys.push((key.clone(), at));
                }
            }
            want_keys.sort();
            let names: Vec<String> = want_keys.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(e.audiences_of(&user), names, "{user}");
            assert_eq!(e.profile(&user).unwrap().audiences, want_keys, "{user}");
        }
    }

    /// The slot whose bitmap holds `key`'s members, in every shard.
    fn keepers(e: &Engine, key: &str) -> Vec<AudId> {
        let slot = e.catalog().audience(key).unwrap();
        e.shards.iter().map(|s| s.members.keeper(slot)).collect()
    }

    #[test]
    fn followers_share_their_lead_memberships_until_the_class_changes() {
        let mut e = engine(2);
        e.define_audience("lead", RULES[0]).unwrap();
        for u in 0..6 {
            track(&mut e, &format!("u{u}"), "A", 1, T0);
        }
        // Defined later, over the same profiles: its own members, then shared.
        assert_eq!(e.define_audience("copy", RULES[0]).unwrap(), 6);
        assert_eq!(e.define_audience("copy2", RULES[0]).unwrap(), 6);
        // Reads the copy's entry instants, which are its definition's.
        e.define_audience("settled", r#"member_for("copy") >= 10m"#)
            .unwrap();
        let lead = e.catalog().audience("lead").unwrap();
        assert_eq!(keepers(&e, "copy"), vec![lead; 2]);
        assert_eq!(keepers(&e, "copy2"), vec![lead; 2]);
        assert_consistent(&e);
        // Events and time move the class together.
        e.advance(T0 + 60_000).unwrap();
        track(&mut e, "u6", "A", 1, T0 + 60_000);
        assert_eq!(e.size("copy2").unwrap(), 7);
        assert_eq!(e.entered_at("u6", "copy").unwrap(), Some(T0 + 60_000));
        e.advance(T0 + 10 * 60_000).unwrap();
        assert_eq!(e.size("settled").unwrap(), 6);
        e.advance(T0 + 30 * 60_000).unwrap();
        assert_eq!(e.size("copy").unwrap(), 1);
        assert_eq!(e.members("settled").unwrap(), vec!["u6"]);
        assert_consistent(&e);
        // The lead's removal hands its members to the next in rank.
        e.remove_audience("lead").unwrap();
        let copy = e.catalog().audience("copy").unwrap();
        assert_eq!(keepers(&e, "copy"), vec![copy; 2]);
        assert_eq!(keepers(&e, "copy2"), vec![copy; 2]);
        assert_eq!(e.members("copy2").unwrap(), vec!["u6"]);
        assert_consistent(&e);
        // A follower given another rule keeps its own bitmap again.
        e.define_audience("copy2", RULES[2]).unwrap();
        let copy2 = e.catalog().audience("copy2").unwrap();
        assert_eq!(keepers(&e, "copy2"), vec![copy2; 2]);
        assert_consistent(&e);
        // And given the class's rule back, shares it once more.
        e.define_audience("copy2", RULES[0]).unwrap();
        assert_eq!(keepers(&e, "copy2"), vec![copy; 2]);
        assert_eq!(e.members("copy2").unwrap(), vec!["u6"]);
        assert_consistent(&e);
        // Removed while sharing, its members exit, and no profile's list
        // gets an entry of it on the way.
        let seq = e.last_seq();
        e.remove_audience("copy2").unwrap();
        let exits = e.changes(seq, usize::MAX).unwrap();
        assert_eq!(exits.len(), 1);
        let exit = &exits[0];
        assert_eq!(
            (&*exit.audience, &*exit.user_id, exit.entered, exit.reason),
            ("copy2", "u6", false, Reason::Delete)
        );
        for shard in &e.shards {
            assert!(shard.users.iter().all(|user| user.entered(copy2).is_none()));
            assert!(shard.members.bitmap(copy2).is_empty());
        }
        assert_eq!(e.members("copy").unwrap(), vec!["u6"]);
        assert_consistent(&e);
    }

    #[test]
    fn a_state_and_timers_no_live_rule_reads_are_dropped_and_the_state_starts_empty_when_read_again(
    ) {
        let mut e = engine(2);
        e.define_audience("kept", RULES[0]).unwrap();
        e.define_audience("b_twice", RULES[1]).unwrap();
        for u in 0..4 {
            track(&mut e, &format!("u{u}"), "B", 1, T0);
            track(&mut e, &format!("u{u}"), "B", 1, T0);
        }
        assert_eq!(e.size("b_twice").unwrap(), 4);
        let states = |e: &Engine| -> usize {
            let count = |s: &Shard| s.users.iter().map(|u| u.states.len()).sum::<usize>();
            e.shards.iter().map(count).sum()
        };
        assert_eq!(states(&e), 4);
        // Each member waits for its window to lapse.
        assert_eq!(e.pending_timers(), 4);
        // Removed: its state and its timers leave the profiles, and B
        // events no longer make a state.
        e.remove_audience("b_twice").unwrap();
        assert_eq!(states(&e), 0);
        assert_eq!(e.pending_timers(), 0);
        track(&mut e, "u0", "B", 1, T0 + 60_000);
        assert_eq!(states(&e), 0);
        assert_consistent(&e);
        // Read again, it starts empty: the B events before count for nothing.
        e.advance(T0 + 120_000).unwrap();
        assert_eq!(e.define_audience("b_again", RULES[1]).unwrap(), 0);
        track(&mut e, "u1", "B", 1, T0 + 120_000);
        track(&mut e, "u1", "B", 1, T0 + 120_000);
        assert_eq!(e.members("b_again").unwrap(), vec!["u1"]);
        assert_consistent(&e);
    }

    #[test]
    fn a_state_another_definition_still_reads_stays_and_is_fed() {
        let mut e = engine(1);
        let at = |e: &mut Engine, user: &str, event: &str, t: i64| {
            e.advance(t).unwrap();
            track(e, user, event, 1, t);
        };
        // "B" is counted by the removed rule, anchors a kept rule's window,
        // and is counted by a computed trait; "A" by the kept rule alone.
        e.define_audience("b_twice", RULES[1]).unwrap();
        e.define_audience("a_since_b", r#"count("A", since "B") >= 1"#)
            .unwrap();
        e.define_computed_trait("bs", r#"count("B")"#).unwrap();
        at(&mut e, "u0", "B", T0);
        at(&mut e, "u0", "A", T0 + 1_000);
        assert_eq!(e.members("a_since_b").unwrap(), vec!["u0"]);
        e.remove_audience("b_twice").unwrap();
        assert_consistent(&e);
        // A later B still moves the anchor, and the count.
        at(&mut e, "u0", "B", T0 + 2_000);
        assert!(e.members("a_since_b").unwrap().is_empty());
        assert_eq!(e.computed_value("u0", "bs").unwrap(), Some(Value::Num(2.0)));
        // The computed trait removed too, only the anchor reads B: still fed.
        e.remove_computed_trait("bs").unwrap();
        at(&mut e, "u0", "A", T0 + 3_000);
        assert_eq!(e.members("a_since_b").unwrap(), vec!["u0"]);
        at(&mut e, "u0", "B", T0 + 4_000);
        assert!(e.members("a_since_b").unwrap().is_empty());
        // And a rule defined again on it sees its entries (within the
        // anchor's retention: everything since the latest B).
        assert_eq!(e.define_audience("b_again", r#"did("B")"#).unwrap(), 1);
        assert_consistent(&e);
    }

    /// Every table and index of two catalogs agrees (the indexes by
    /// event name in name order; the generation aside).
    fn same_catalog(a: &Catalog, b: &Catalog) {
        let by_event = |c: &Catalog| {
            let mut events: Vec<String> = c.by_event.iter().map(|e| format!("{e:?}")).collect();
            events.sort();
            events
        };
        assert_eq!(by_event(a), by_event(b));
        let sorted = |map: &hashbrown::HashMap<Arc<str>, u32>| {
            let mut pairs: Vec<(Arc<str>, u32)> =
                map.iter().map(|(k, v)| (k.clone(), *v)).collect();
            pairs.sort();
            pairs
        };
        assert_eq!(sorted(&a.by_key), sorted(&b.by_key));
        assert_eq!(sorted(&a.computed_by_key), sorted(&b.computed_by_key));
        let fields = |c: &Catalog| {
            format!(
                "{:?}",
                (
                    (&c.states, &c.views, &c.atoms, &c.audiences, &c.rank),
                    (&c.by_rank, &c.live_states, &c.state_index, &c.atom_rules),
                    (&c.atom_lead_rules, &c.atom_lead_rules_eventless),
                    (&c.class_lead, &c.class_followers, &c.rule_class),
                    (&c.timer_lead, &c.timer_group, &c.formulas, &c.empty_true),
                    (&c.false_without_events, &c.computed, &c.computed_rules),
                    (&c.dependents, &c.leaf_groups, &c.timed_by_audience),
                    (&c.by_trait, &c.trait_test, &c.key_tests, &c.key_number_cuts),
                    (
                        &c.timer_ladder,
                        &c.timer_view,
                        &c.flip_work,
                        &c.rule_classes
                    ),
                    (&c.empty_atom_truth, &c.empty_computed, &c.computed_by_state),
                )
            )
        };
        assert_eq!(fields(a), fields(b));
    }

    /// Rules for the property tests: copies of one another once keys
    /// repeat them, and readers of memberships (which have no class).
    const MIXED_RULES: [&str; 9] = [
        r#"did("A", 30m)"#,
        r#"count("B", 1h) >= 2"#,
        r#"not did("A", 30m)"#,
        r#"in_audience("k1")"#,
        r#"member_for("k2") >= 10m"#,
        r#"in_audience("k3") or did("B", 30m)"#,
        r#"member_for("k1") < 20m"#,
        r#"sum("A", revenue, 2h) > 5"#,
        "computed.n >= 1",
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Track {
            user: u8,
            b: bool,
            revenue: i8,
            ago: i64,
        },
        Identify {
            user: u8,
        },
        Advance(i64),
        Define {
            key: u8,
            rule: u8,
        },
        /// Two keys given one rule in one call.
        DefineTwo {
            keys: (u8, u8),
            rule: u8,
        },
        Static {
            key: u8,
            users: u8,
        },
        Remove {
            key: u8,
        },
        Computed {
            which: bool,
        },
        /// Closes (with a snapshot) or drops a durable engine and opens it.
        Reopen {
            snapshot: bool,
        },
        /// `u{from}` (`x{from}` from 8 on: an id no event used) merged
        /// into `u{to}` (see `Engine::alias`).
        Alias {
            from: u8,
            to: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let rule = 0u8..MIXED_RULES.len() as u8;
        prop_oneof![
            4 => (0u8..6, any::<bool>(), -2i8..8, -60i64..3_600)
                .prop_map(|(user, b, revenue, ago)| Op::Track { user, b, revenue, ago }),
            1 => (0u8..8).prop_map(|user| Op::Identify { user }),
            2 => (1i64..1_500).prop_map(Op::Advance),
            3 => (0u8..6, rule.clone()).prop_map(|(key, rule)| Op::Define { key, rule }),
            1 => (0u8..6, 0u8..6, rule).prop_map(|(a, b, rule)| Op::DefineTwo { keys: (a, b), rule }),
            1 => (0u8..6, any::<u8>()).prop_map(|(key, users)| Op::Static { key, users }),
            1 => (0u8..6).prop_map(|key| Op::Remove { key }),
            1 => any::<bool>().prop_map(|which| Op::Computed { which }),
            1 => any::<bool>().prop_map(|snapshot| Op::Reopen { snapshot }),
            1 => (0u8..10, 0u8..8).prop_map(|(from, to)| Op::Alias { from, to }),
        ]
    }

    /// Applies `op` (refused definitions and removals are part of the
    /// stream); `Reopen` only with a data directory.
    fn apply(e: &mut Engine, op: &Op, now: &mut i64, dir: Option<&std::path::Path>) {
        match *op {
            Op::Track {
                user,
                b,
                revenue,
                ago,
            } => {
                let name = if b { "B" } else { "A" };
                track(
                    e,
                    &format!("u{user}"),
                    name,
                    revenue.into(),
                    *now - ago * 1000,
                );
            }
            Op::Identify { user } => {
                let json = format!(
                    r#"[{{"type":"identify","userId":"u{user}","traits":{{"plan":"pro"}}}}]"#
                );
                e.ingest_json(json.as_bytes()).unwrap();
            }
            Op::Advance(s) => {
                *now += s * 1000;
                e.advance(*now).unwrap();
            }
            Op::Define { key, rule } => {
                let _ = e.define_audience(&format!("k{key}"), MIXED_RULES[rule as usize]);
            }
            Op::DefineTwo { keys, rule } => {
                let (a, b) = (format!("k{}", keys.0), format!("k{}", keys.1));
                let rule = MIXED_RULES[rule as usize];
                let _ = e.define_audiences(&[(&a, rule), (&b, rule)]);
            }
            Op::Static { key, users } => {
                let ids: Vec<String> = (0..8)
                    .filter(|i| users & (1 << i) != 0)
                    .map(|i| format!("u{i}"))
                    .collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let _ = e.define_static_audience(&format!("k{key}"), &ids);
            }
            Op::Remove { key } => {
                let _ = e.remove_audience(&format!("k{key}"));
            }
            Op::Computed { which } => {
                let expr = if which {
                    r#"count("A", 1h)"#
                } else {
                    r#"count("B", 2h)"#
                };
                let _ = e.define_computed_trait("n", expr);
            }
            Op::Alias { from, to } => {
                let previous = match from {
                    0..8 => format!("u{from}"),
                    _ => format!("x{from}"),
                };
                super::computed_tests::alias(e, &previous, &format!("u{to}"));
            }
            Op::Reopen { snapshot } => {
                let Some(dir) = dir else { return };
                if snapshot {
                    e.close().unwrap();
                }
                let shards = e.shard_count();
                drop(std::mem::replace(e, engine(1)));
                let config = EngineConfig {
                    clock: Clock::Manual(T0),
                    shards,
                    threads: shards,
                    ..Default::default()
                };
                let storage = crate::storage::StorageConfig::new(dir);
                *e = Engine::open(config, storage).unwrap().0;
            }
        }
    }

    /// The log as text, to compare two engines.
    fn log_lines(e: &Engine) -> Vec<String> {
        let changes = e.changes(0, usize::MAX).unwrap();
        let line = |c: &Change| {
            let (seq, user, aud) = (c.seq, &c.user_id, &c.audience);
            format!("{seq} {user} {aud} {} {} {:?}", c.entered, c.at, c.reason)
        };
        changes.iter().map(line).collect()
    }

    /// Whether two engines given the same operations logged the same
    /// changes and report the same entry instants, after `op`.
    fn same_history(a: &Engine, b: &Engine, op: &Op) -> Result<(), TestCaseError> {
        prop_assert_eq!(log_lines(a), log_lines(b), "after {:?}", op);
        for key in b.audiences() {
            for u in 0..8 {
                let user = format!("u{u}");
                prop_assert_eq!(
                    a.entered_at(&user, &key).unwrap(),
                    b.entered_at(&user, &key).unwrap(),
                    "{}, {} after {:?}",
                    key,
                    user,
                    op
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(64)))]
        /// Audiences defined (one or two at once, as copies or readers of
        /// others), made static, replaced and removed between events,
        /// identifies, computed-trait changes and clock moves: memberships
        /// and entry instants agree with the log throughout. And copies,
        /// which share their lead's members at once, log what evaluating
        /// every profile for them logs (`Shard::backfill_copies`).
        #[test]
        fn shared_memberships_agree_with_the_log(
            ops in proptest::collection::vec(op(), 1..60),
            shards in 1usize..3,
        ) {
            let mut e = engine(shards);
            let mut evaluated = engine(shards);
            for shard in &mut evaluated.shards {
                shard.copies_evaluated = true;
            }
            let (mut now, mut evaluated_now) = (T0, T0);
            for op in &ops {
                apply(&mut e, op, &mut now, None);
                apply(&mut evaluated, op, &mut evaluated_now, None);
                assert_consistent(&e);
                same_history(&e, &evaluated, op)?;
            }
            // A snapshot's definitions, installed in a row with the
            // indexes built once, give the catalog built one by one.
            let mut restored = engine(shards);
            restored.install_definitions(e.definitions.clone()).unwrap();
            same_catalog(e.catalog(), restored.catalog());
            prop_assert_eq!(&e.slot_keys, &restored.slot_keys);
            prop_assert_eq!(&e.computed_keys, &restored.computed_keys);
        }

        /// The same through snapshots and log replay: a durable engine,
        /// closed and opened again along the way, logs what one kept in
        /// memory does and reports the same entry instants.
        #[test]
        fn shares_survive_snapshots_and_replay(
            ops in proptest::collection::vec(op(), 1..50),
            shards in 1usize..3,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let config = EngineConfig {
                clock: Clock::Manual(T0),
                shards,
                threads: shards,
                ..Default::default()
            };
            let storage = crate::storage::StorageConfig::new(dir.path());
            let mut e = Engine::open(config, storage).unwrap().0;
            let mut memory = engine(shards);
            let (mut now, mut memory_now) = (T0, T0);
            for op in &ops {
                apply(&mut e, op, &mut now, Some(dir.path()));
                apply(&mut memory, op, &mut memory_now, None);
                assert_consistent(&e);
                same_history(&e, &memory, op)?;
            }
        }
    }
}

#[cfg(test)]
mod alias_tests {
    //! Alias calls (see `Engine::alias`) through a restart: the snapshot's
    //! alias section, and a format 4 snapshot, written before aliases.
    use super::computed_tests::{alias, track, T0};
    use super::*;

    fn open(dir: &std::path::Path) -> Engine {
        let config = EngineConfig {
            clock: Clock::Manual(T0),
            shards: 2,
            threads: 2,
            ..Default::default()
        };
        Engine::open(config, crate::storage::StorageConfig::new(dir))
            .unwrap()
            .0
    }

    /// Members and the ids they answer to, of audience `key`.
    fn view(e: &Engine, key: &str) -> (Vec<String>, Vec<bool>) {
        let names = ["a", "b", "c", "phone"];
        let members = e.members(key).unwrap();
        (
            members,
            names.iter().map(|u| e.is_member(u, key).unwrap()).collect(),
        )
    }

    #[test]
    fn a_snapshot_keeps_the_redirected_ids_and_the_merged_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        e.define_audience("viewers", r#"count("A") >= 2"#).unwrap();
        for user in ["a", "b", "c"] {
            track(&mut e, user, "A", "{}", T0);
        }
        alias(&mut e, "a", "b");
        alias(&mut e, "phone", "b");
        let before = (view(&e, "viewers"), e.user_count());
        assert_eq!(before.0 .0, ["b"]);
        assert_eq!(before.1, 2);
        e.close().unwrap();
        let mut again = open(dir.path());
        assert_eq!((view(&again, "viewers"), again.user_count()), before);
        // The merged profile stays out of a rule every profile is in.
        assert_eq!(again.define_audience("all", r#"not did("Z")"#).unwrap(), 2);
        // A format 4 snapshot (no alias section) reads as having none.
        again.close().unwrap();
        let listing = crate::storage::list_dir(dir.path()).unwrap();
        let generation = *listing.snapshots.last().unwrap();
        let path = crate::storage::snapshot_path(dir.path(), generation);
        let (format, sections) = crate::storage::read_snapshot(&path).unwrap();
        assert_eq!(format, 5);
        let sections: Vec<Vec<u8>> = sections.into_iter().map(|(_, bytes)| bytes).collect();
        crate::storage::write_snapshot(dir.path(), generation, &sections[..sections.len() - 1])
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(b"SEGMSNP4");
        std::fs::write(&path, bytes).unwrap();
        let old = open(dir.path());
        // Without the section "a" names its own (merged, empty) profile.
        assert_eq!(old.members("viewers").unwrap(), ["b"]);
        assert!(!old.is_member("a", "viewers").unwrap());
        assert!(!old.is_member("phone", "viewers").unwrap());
    }

    /// A format 5 snapshot without a section at all is reported as damaged,
    /// as one of format 4 is, not a panic.
    #[test]
    fn a_format_5_snapshot_without_sections_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"SEGMSNP5".to_vec();
        bytes.extend_from_slice(&0u64.to_le_bytes());
        std::fs::write(crate::storage::snapshot_path(dir.path(), 1), bytes).unwrap();
        let config = EngineConfig {
            clock: Clock::Manual(T0),
            ..Default::default()
        };
        let opened = Engine::open(config, crate::storage::StorageConfig::new(dir.path()));
        let error = opened.err().expect("refused");
        assert!(matches!(error, SegmintError::Corrupt { .. }), "{error}");
    }
}

#[cfg(test)]
mod change_buffer_tests {
    use super::computed_tests::{engine, T0};
    use super::*;

    /// A call drops the changes it made once they are packed for the log:
    /// the next call (one event after a batch of millions of changes) does
    /// not pay for them. On one shard; on two with few events (applied on
    /// the caller), with more (on the pool) and with enough changes for the
    /// pool to drop them too.
    #[test]
    fn each_call_leaves_its_shards_change_buffers_empty() {
        const WINDOWS: usize = 8;
        let many = PARALLEL_DROP_MIN / WINDOWS + 1;
        for (shards, events) in [(1, 1), (1, 200), (2, 1), (2, 200), (2, many)] {
            let mut e = engine(shards);
            // Distinct rules: each an audience of its own, each entered.
            for days in 1..=WINDOWS {
                e.define_audience(
                    &format!("viewers_{days}d"),
                    &format!(r#"did("Product Viewed", {days}d)"#),
                )
                .unwrap();
            }
            let batch: String = (0..events)
                .map(|i| {
                    format!(
                        r#"{{"type":"track","userId":"u{i}","event":"Product Viewed","timestamp":"{}"}}"#,
                        format_timestamp(T0)
                    ) + "\n"
                })
                .collect();
            let report = e.ingest_json(batch.as_bytes()).unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.changes, events * WINDOWS, "{shards} shards");
            assert_eq!(e.last_seq(), (events * WINDOWS) as u64);
            assert!(
                e.shards.iter().all(|s| s.change_buffer.is_empty()),
                "{shards} shards, {events} events"
            );
        }
    }
}
