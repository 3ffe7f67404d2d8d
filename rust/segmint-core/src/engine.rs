//! The engine: profiles partitioned into shards, the compiled catalog, the
//! clock and the change log.

use std::sync::Arc;

use hashbrown::HashMap;
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::catalog::{AudId, Catalog};
use crate::durable::{Definition, Record};
use crate::error::{Result, SegmintError};
use crate::event::{decode_json_batch, Event, EventBody};
use crate::limits::Limits;
use crate::rules;
use crate::shard::{Reason, Shard, ShardChange, Step, Work};
use crate::time::{floor_to, format_timestamp, wall_now, Millis, SECOND};

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

/// A membership change with its global sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Gap-free sequence number, from 1.
    pub seq: u64,
    /// Audience key.
    pub audience: Arc<str>,
    /// External user id.
    pub user_id: Arc<str>,
    /// Entered (true) or exited (false).
    pub entered: bool,
    /// When the change took effect.
    pub at: Millis,
    /// Why.
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LoggedChange {
    aud: AudId,
    uid: u32,
    entered: bool,
    at: Millis,
    reason: Reason,
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

/// A real-time audience segmentation engine.
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) interner: crate::profile::Interner,
    pub(crate) shards: Vec<Shard>,
    pub(crate) pool: rayon::ThreadPool,
    pub(crate) now: Millis,
    /// In-memory change log; a deque so that trimming the oldest is O(trimmed).
    pub(crate) log: std::collections::VecDeque<LoggedChange>,
    pub(crate) log_first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) slot_keys: Vec<Arc<str>>,
    pub(crate) seen_messages: HashMap<Arc<str>, Millis>,
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
            pool,
            now,
            log: std::collections::VecDeque::new(),
            log_first_seq: 1,
            last_seq: 0,
            slot_keys: Vec::new(),
            seen_messages: HashMap::new(),
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

    /// Number of profiles.
    pub fn user_count(&self) -> usize {
        self.interner.len()
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
        let changes = self.on_shards(|_, shard, cat, out| shard.advance(cat, to, g, out));
        self.now = to;
        self.commit(changes);
    }

    /// Runs `f` on every shard (in parallel when there are several) and
    /// returns their changes in global order.
    fn on_shards<F>(&mut self, f: F) -> Vec<ShardChange>
    where
        F: Fn(usize, &mut Shard, &Catalog, &mut Vec<ShardChange>) + Sync,
    {
        let cat = &*self.catalog;
        let mut all = if self.shards.len() == 1 {
            let mut out = Vec::new();
            f(0, &mut self.shards[0], cat, &mut out);
            out
        } else {
            let shards = &mut self.shards;
            self.pool.install(|| {
                shards
                    .par_iter_mut()
                    .enumerate()
                    .map(|(i, shard)| {
                        let mut out = Vec::new();
                        f(i, shard, cat, &mut out);
                        out
                    })
                    .flatten()
                    .collect::<Vec<_>>()
            })
        };
        all.sort_by_key(|c| (c.order, c.uid));
        all
    }

    fn commit(&mut self, changes: Vec<ShardChange>) {
        for c in changes {
            self.last_seq += 1;
            self.log.push_back(LoggedChange {
                aud: c.aud,
                uid: c.uid,
                entered: c.entered,
                at: c.at,
                reason: c.reason,
            });
        }
        let cap = self.config.change_log_capacity.max(1);
        if self.log.len() > cap {
            let drop = self.log.len() - cap;
            self.log.drain(..drop);
            self.log_first_seq += drop as u64;
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
        let valid: Vec<&Event> = events.iter().filter_map(|e| e.as_ref().ok()).collect();
        let position = if valid.is_empty() {
            None
        } else {
            self.log_record(&Record::Batch { now, events: valid })?
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
        let n = self.shards.len();
        let mut work: Vec<Vec<Work<'_>>> = (0..n).map(|_| Vec::new()).collect();
        let mut times = Vec::with_capacity(events.len());
        // First pass: validate and intern (sequential: the id space is global).
        for (index, event) in events.iter().enumerate() {
            let checked = event.as_ref().map_err(Clone::clone).and_then(|e| {
                if e.user_id.is_empty() {
                    return Err(SegmintError::InvalidEvent {
                        message: "the user id is empty".into(),
                    });
                }
                Ok((e, self.event_time(e.timestamp)?))
            });
            match checked {
                Err(e) => report.errors.push((index, e)),
                Ok((e, t)) => {
                    report.accepted += 1;
                    if let Some(id) = &e.message_id {
                        if self.seen_messages.contains_key(id.as_str()) {
                            report.duplicates += 1;
                            continue;
                        }
                        self.seen_messages.insert(Arc::from(id.as_str()), self.now);
                    }
                    let uid = self.interner.intern(&e.user_id);
                    times.push((index, uid, t));
                }
            }
        }
        for &(index, uid, t) in &times {
            let Ok(event) = &events[index] else { continue };
            let item = match &event.body {
                EventBody::Track { name, properties } => Work::Track {
                    index,
                    uid,
                    t,
                    name,
                    properties,
                },
                EventBody::Identify { traits } => Work::Identify { index, uid, traits },
            };
            work[uid as usize % n].push(item);
        }
        self.expire_messages();
        let step_now = self.now;
        let g = self.config.granularity;
        let changes = self.on_shards(|i, shard, cat, out| {
            if !work[i].is_empty() {
                shard.apply(
                    Step {
                        cat,
                        now: step_now,
                        granularity: g,
                    },
                    &work[i],
                    out,
                );
            }
        });
        report.changes = changes.len();
        self.commit(changes);
        report.last_seq = self.last_seq;
        report
    }

    fn expire_messages(&mut self) {
        // Amortised: sweep only when the set has doubled since the last sweep.
        if self.seen_messages.len() > 1024 && self.seen_messages.len().is_power_of_two() {
            let cutoff = self.now - self.config.dedup_window;
            self.seen_messages.retain(|_, &mut seen| seen > cutoff);
        }
    }

    /// Decodes and applies a JSON batch (see [`decode_json_batch`]).
    pub fn ingest_json(&mut self, bytes: &[u8]) -> Result<IngestReport> {
        let events = decode_json_batch(bytes, &self.config.limits)?;
        self.ingest(events)
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

    /// Defines (or replaces) an audience, evaluates it over every profile
    /// and returns its size. Entries and exits get reason `definition`.
    pub fn define_audience(&mut self, key: &str, rule: &str) -> Result<u64> {
        self.define_audiences(&[(key, rule)]).map_err(|(_, e)| e)?;
        self.size(key)
    }

    /// Defines many audiences at once with one backfill pass. On an error
    /// (with the item's index) nothing changes.
    pub fn define_audiences(
        &mut self,
        items: &[(&str, &str)],
    ) -> Result<(), (usize, SegmintError)> {
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
            .map_err(|e| (0, e))?;
        self.define_audiences_with(now, def, catalog, &slots);
        self.finish_record(position, true).map_err(|e| (0, e))?;
        Ok(())
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
        let changes = self.on_shards(|_, shard, cat, out| {
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
        self.commit(changes);
    }

    /// The catalog after one more definition, and the slots it touched; the
    /// engine is unchanged. (The catalog is a function of the definitions
    /// alone, so a snapshot stores them instead of the compiled catalog.)
    pub(crate) fn catalog_after(
        &self,
        def: &Definition,
    ) -> Result<(Catalog, Vec<AudId>), (usize, SegmintError)> {
        let mut catalog = (*self.catalog).clone();
        let slots = match def {
            Definition::Audiences(items) => {
                let mut parsed = Vec::with_capacity(items.len());
                for (i, (key, rule)) in items.iter().enumerate() {
                    let ast = rules::compile_rule(rule).map_err(|e| (i, e))?;
                    parsed.push((key.clone(), rule.clone(), ast));
                }
                catalog.define_many(parsed)?
            }
            Definition::Static(key) => vec![catalog.define_static(key)],
            Definition::Remove(key) => vec![catalog.remove(key).map_err(|e| (0, e))?],
        };
        Ok((catalog, slots))
    }

    /// Makes `catalog` (from [`Engine::catalog_after`]) current.
    pub(crate) fn install_catalog(&mut self, def: Definition, catalog: Catalog, slots: &[AudId]) {
        for &slot in slots {
            if self.slot_keys.len() <= slot as usize {
                self.slot_keys.resize(slot as usize + 1, Arc::from(""));
            }
            if let Some(a) = &catalog.audiences[slot as usize] {
                self.slot_keys[slot as usize] = a.key.clone();
            }
        }
        self.catalog = Arc::new(catalog);
        self.definitions.push(def);
    }

    /// Defines (or replaces) a static audience from a list of user ids (a
    /// manually uploaded segment). Unseen ids become profiles. Rules can use
    /// it with `in_audience` / `member_for`. Returns its size.
    pub fn define_static_audience(&mut self, key: &str, user_ids: &[&str]) -> Result<u64> {
        self.check_key(key)?;
        for u in user_ids {
            if u.is_empty() {
                return Err(SegmintError::InvalidArgument {
                    message: "a user id in the list is empty".into(),
                });
            }
            self.config.limits.check_key("user id", u)?;
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
        let changes = self.on_shards(|i, shard, cat, out| {
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
        self.commit(changes);
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

    /// Installs a catalog without the removed audience `slot` and lets its
    /// members exit (also replay).
    pub(crate) fn remove_audience_with(&mut self, def: Definition, catalog: Catalog, slot: AudId) {
        self.install_catalog(def, catalog, &[]);
        let now = self.now;
        let changes = self.on_shards(|_, shard, _, out| shard.remove_audience(slot, now, out));
        self.commit(changes);
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
            .is_some_and(|uid| self.shard_of(uid).members.contains(slot, uid)))
    }

    /// Membership of many users in one audience.
    pub fn is_member_many<'a>(
        &self,
        user_ids: impl IntoIterator<Item = &'a str>,
        key: &str,
    ) -> Result<Vec<bool>> {
        let slot = self.catalog.audience(key)?;
        Ok(user_ids
            .into_iter()
            .map(|u| {
                self.interner
                    .get(u)
                    .is_some_and(|uid| self.shard_of(uid).members.contains(slot, uid))
            })
            .collect())
    }

    /// Audiences the user is in, sorted by key.
    pub fn audiences_of(&self, user_id: &str) -> Vec<String> {
        let Some(uid) = self.interner.get(user_id) else {
            return Vec::new();
        };
        let shard = self.shard_of(uid);
        let mut keys: Vec<String> = self
            .catalog
            .keys()
            .filter(|(slot, _)| shard.members.contains(*slot, uid))
            .map(|(_, a)| a.key.to_string())
            .collect();
        keys.sort();
        keys
    }

    /// When the user entered the audience, if a member.
    pub fn entered_at(&self, user_id: &str, key: &str) -> Result<Option<Millis>> {
        let slot = self.catalog.audience(key)?;
        Ok(self
            .interner
            .get(user_id)
            .and_then(|uid| self.shard_of(uid).user(uid)?.entered(slot)))
    }

    /// Members as a bitmap of dense ids (see [`Engine::user_id`]).
    pub fn bitmap(&self, key: &str) -> Result<RoaringBitmap> {
        let slot = self.catalog.audience(key)?;
        let mut all = RoaringBitmap::new();
        for shard in &self.shards {
            if let Some(b) = shard.members.bitmaps.get(slot as usize) {
                all |= b;
            }
        }
        Ok(all)
    }

    /// The external id of a dense id.
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
        Ok(self
            .shards
            .iter()
            .map(|s| s.members.bitmaps.get(slot as usize).map_or(0, |b| b.len()))
            .sum())
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
            .range(start..end)
            .enumerate()
            .take(limit)
            .map(|(i, c)| Change {
                seq: self.log_first_seq + (start + i) as u64,
                audience: self.slot_keys[c.aud as usize].clone(),
                user_id: Arc::from(self.interner.name(c.uid)),
                entered: c.entered,
                at: c.at,
                reason: c.reason,
            })
            .collect())
    }

    /// A user's traits (sorted by key), if the user is known.
    pub fn traits(&self, user_id: &str) -> Option<Vec<(String, crate::value::Value)>> {
        let uid = self.interner.get(user_id)?;
        let user = self.shard_of(uid).user(uid)?;
        Some(
            user.traits
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    /// Approximate heap bytes held for profiles, memberships and timers.
    pub fn heap_bytes(&self) -> usize {
        self.interner.heap_bytes() + self.shards.iter().map(Shard::heap_bytes).sum::<usize>()
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
