//! The engine's durability: what it logs, how a snapshot captures it, and
//! recovery (latest snapshot + log tail).
//!
//! Every operation that changes state is logged before it is applied, with
//! the instant it happened at, and the engine is deterministic given that
//! sequence: replaying the records on the state of the snapshot they follow
//! gives the same profiles, memberships, timers and change sequence numbers.
//! Time passing without a record (a wall-clock tick that fires nothing) needs
//! no record, and a tick that fires timers is logged like an `advance`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use roaring::RoaringBitmap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::changelog::LoggedChange;
use crate::dedup::{Fingerprint, SeenMessages};
use crate::engine::{Engine, EngineConfig};
use crate::error::{Result, SegmintError};
use crate::event::Event;
use crate::pages::Pages;
use crate::profile::{Memberships, Share, UserData};
use crate::shard::{Counters, Shard};
use crate::storage::{
    self, corrupt, io_error, list_dir, read_snapshot, read_wal, snapshot_path, wal_path, DirLock,
    Framed, StorageConfig, SyncHandle, WalWriter,
};
use crate::time::Millis;

/// Log records decoded ahead of the replay: enough to keep the replaying
/// thread fed, few enough that a log of 50,000-event batches holds only a
/// handful of them decoded at once (these, the one waiting to be sent and
/// the one replaying).
const DECODED_AHEAD: usize = 4;

/// A catalog operation, kept in order so a snapshot can rebuild the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Definition {
    /// Audiences defined (or replaced) together: (key, rule).
    Audiences(Vec<(String, String)>),
    /// A static audience (its members are per-user state).
    Static(String),
    /// An audience removed.
    Remove(String),
    /// A computed trait defined or replaced: (key, expression).
    Computed(String, String),
    /// A computed trait removed.
    RemoveComputed(String),
}

/// One write-ahead-log record. `E` is `&Event` when writing (no copy of the
/// batch) and `Event` when reading; both encode the same.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Record<E> {
    /// The valid events of a batch, applied at `now`.
    Batch {
        /// The engine's instant for the batch.
        now: Millis,
        /// The events that passed decoding.
        events: Vec<E>,
    },
    /// The clock moved to `to`, firing timers.
    Advance {
        /// The new instant.
        to: Millis,
    },
    /// `define_audiences`.
    DefineAudiences {
        /// The instant.
        now: Millis,
        /// (key, rule) pairs.
        items: Vec<(String, String)>,
    },
    /// `define_static_audience`.
    DefineStatic {
        /// The instant.
        now: Millis,
        /// The key.
        key: String,
        /// The members.
        user_ids: Vec<String>,
    },
    /// `remove_audience`.
    RemoveAudience {
        /// The instant.
        now: Millis,
        /// The key.
        key: String,
    },
    /// `define_computed_trait`.
    DefineComputed {
        /// The instant.
        now: Millis,
        /// The key.
        key: String,
        /// The value expression.
        expr: String,
    },
    /// `remove_computed_trait`.
    RemoveComputed {
        /// The instant.
        now: Millis,
        /// The key.
        key: String,
    },
}

impl<E> Record<E> {
    /// The engine's instant when the record was made.
    fn instant(&self) -> Millis {
        match self {
            Record::Advance { to } => *to,
            Record::Batch { now, .. }
            | Record::DefineAudiences { now, .. }
            | Record::DefineStatic { now, .. }
            | Record::RemoveAudience { now, .. }
            | Record::DefineComputed { now, .. }
            | Record::RemoveComputed { now, .. } => *now,
        }
    }
}

/// Definitions read from the log while the engine holds no profile, put
/// off so that a run of them builds the catalog's indexes once
/// ([`Engine::install_definitions`], as a snapshot's definitions), where
/// one by one each copied the catalog and rebuilt them: replaying 10,000
/// audiences defined one call at a time took half a minute. Without a
/// profile a definition changes the catalog and which copies share their
/// lead's (empty) memberships: no backfill, no state to drop, no timer to
/// fire ([`Engine::install_held`] redoes the shares once).
#[derive(Default)]
struct HeldDefinitions {
    definitions: Vec<Definition>,
    /// The log offset of each, to name the one that fails.
    offsets: Vec<u64>,
    /// The latest instant among the records held (clock moves included).
    until: Option<Millis>,
}

impl HeldDefinitions {
    /// Holds `record` if it changes the catalog or the clock alone; gives
    /// it back otherwise (a batch, a static audience's members).
    fn hold(&mut self, offset: u64, record: Record<Event>) -> Option<Record<Event>> {
        let instant = record.instant();
        let definition = match record {
            Record::Advance { .. } => None,
            Record::DefineAudiences { items, .. } => Some(Definition::Audiences(items)),
            Record::RemoveAudience { key, .. } => Some(Definition::Remove(key)),
            Record::DefineComputed { key, expr, .. } => Some(Definition::Computed(key, expr)),
            Record::RemoveComputed { key, .. } => Some(Definition::RemoveComputed(key)),
            record @ (Record::Batch { .. } | Record::DefineStatic { .. }) => return Some(record),
        };
        if let Some(definition) = definition {
            self.definitions.push(definition);
            self.offsets.push(offset);
        }
        self.until = self.until.max(Some(instant));
        None
    }
}

/// The open data directory of a durable engine.
#[derive(Debug)]
pub(crate) struct Storage {
    pub(crate) config: StorageConfig,
    pub(crate) wal: WalWriter,
    _lock: DirLock,
}

/// What a snapshot took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotInfo {
    /// Its generation (the log files before it were deleted).
    pub generation: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Wall time to encode and write it, in seconds.
    pub seconds: f64,
}

/// What recovery found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecoveryInfo {
    /// Generation of the snapshot loaded (0: none).
    pub snapshot_generation: u64,
    /// Log records replayed after it.
    pub records_replayed: u64,
    /// Events in those records.
    pub events_replayed: u64,
    /// Bytes cut from a torn record at the end of the log.
    pub torn_bytes: u64,
    /// Seconds spent loading the snapshot.
    pub snapshot_seconds: f64,
    /// Seconds spent replaying the log.
    pub replay_seconds: f64,
}

/// A snapshot's first section. `Seen` is how it stores the de-duplication
/// set: format 4 as fingerprints with their key ([`StoredSeen`]), format 3
/// as the ids' text.
#[derive(Serialize, Deserialize)]
struct SnapshotMeta<Seen> {
    generation: u64,
    now: Millis,
    granularity: Millis,
    shard_count: u32,
    last_seq: u64,
    log_first_seq: u64,
    definitions: Vec<Definition>,
    /// The catalog's trait keys in id order, which the users' traits use.
    trait_keys: Vec<Arc<str>>,
    user_ids: Vec<Arc<str>>,
    seen_messages: Seen,
    log: Vec<LoggedChange>,
}

/// The de-duplication set as format 4 stores it: the fingerprints' key
/// ([`SeenMessages::key`]), and each id's fingerprint
/// ([`Fingerprint::to_bytes`]) with the instant it was last accepted.
#[derive(Serialize, Deserialize)]
struct StoredSeen {
    key: [u8; 16],
    ids: Vec<([u8; 16], Millis)>,
}

/// A snapshot's de-duplication set, as one format stores it.
trait SeenSection {
    /// The set it stands for.
    fn into_set(self) -> SeenMessages;
}

impl StoredSeen {
    fn of(set: &SeenMessages) -> StoredSeen {
        StoredSeen {
            key: set.key(),
            ids: set.iter().map(|(id, at)| (id.to_bytes(), at)).collect(),
        }
    }
}

impl SeenSection for StoredSeen {
    fn into_set(self) -> SeenMessages {
        let ids = self.ids.into_iter();
        SeenMessages::restored(
            self.key,
            ids.map(|(id, at)| (Fingerprint::from_bytes(id), at)),
        )
    }
}

/// Format 3's: the ids' text, fingerprinted under a new key.
impl SeenSection for Vec<(Arc<str>, Millis)> {
    fn into_set(self) -> SeenMessages {
        let keyed = SeenMessages::default();
        let ids = self.iter().map(|(id, at)| (keyed.fingerprint(id), *at));
        SeenMessages::restored(keyed.key(), ids)
    }
}

#[derive(Deserialize)]
struct ShardSnapshot {
    users: Vec<UserData>,
    /// Members per audience slot, each in the portable roaring format
    /// (empty for a slot that shares another's).
    bitmaps: Vec<Vec<u8>>,
    counters: Counters,
    /// The slots that share another's memberships (see [`Memberships`]).
    shares: Vec<Share>,
}

/// A [`ShardSnapshot`] as encoded: the same fields, the profiles borrowed
/// from the shard rather than copied (a copy would double the profiles'
/// memory while a snapshot is written).
#[derive(Serialize)]
struct ShardSnapshotRef<'a> {
    users: &'a Pages<UserData>,
    bitmaps: Vec<Vec<u8>>,
    counters: Counters,
    shares: Vec<Share>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to memory cannot fail")
}

impl Engine {
    /// Opens a durable engine on a data directory: loads the latest snapshot,
    /// replays the log after it, cuts a torn record at its very end, and
    /// logs every later operation. Any other damage stops it with an error
    /// naming the file and the byte offset.
    pub fn open(config: EngineConfig, storage: StorageConfig) -> Result<(Engine, RecoveryInfo)> {
        // The settings first: a refused one leaves no directory behind.
        let mut engine = Engine::new(config)?;
        let dir = storage.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let lock = DirLock::acquire(&dir)?;
        let listing = list_dir(&dir)?;
        let mut info = RecoveryInfo::default();
        let base = listing.snapshots.last().copied();
        if let Some(generation) = base {
            let started = Instant::now();
            engine.load_snapshot(&snapshot_path(&dir, generation))?;
            info.snapshot_generation = generation;
            info.snapshot_seconds = started.elapsed().as_secs_f64();
        }
        let first = base.unwrap_or(1);
        let logs: Vec<u64> = listing
            .logs
            .iter()
            .copied()
            .filter(|&g| g >= first)
            .collect();
        for (i, &g) in logs.iter().enumerate() {
            if g != first + i as u64 {
                return Err(SegmintError::Storage {
                    path: wal_path(&dir, first + i as u64).display().to_string(),
                    message: format!(
                        "log file missing: expected generations {first}..={} without gaps",
                        logs.last().copied().unwrap_or(first)
                    ),
                });
            }
        }
        if base.is_some() && logs.first() != Some(&first) {
            return Err(SegmintError::Storage {
                path: wal_path(&dir, first).display().to_string(),
                message: "the log file that follows the latest snapshot is missing".into(),
            });
        }
        let started = Instant::now();
        let mut tail = (first, 0u64);
        // From a snapshot the engine replays from the snapshot's instant.
        // Without one it starts at its first record's: a new engine's clock
        // is the instant it is opened at, later than the records, and a
        // clock never moves back, so each record would be applied then
        // instead of at its own instant.
        let mut clock_from_log = base.is_none();
        for (i, &g) in logs.iter().enumerate() {
            let path = wal_path(&dir, g);
            let is_last = i + 1 == logs.len();
            let (records, valid) = read_wal(&path, g, is_last)?;
            // A second thread decodes the records ahead of the one that
            // replays them, on another core meanwhile.
            std::thread::scope(|scope| -> Result<()> {
                let (sender, decoded) = std::sync::mpsc::sync_channel(DECODED_AHEAD);
                scope.spawn(move || {
                    for (offset, payload) in records {
                        let record = postcard::from_bytes::<Record<Event>>(&payload);
                        let failed = record.is_err();
                        // The replay stopped (a record failed), or this one
                        // does not decode: nothing after it is replayed.
                        if sender.send((offset, record)).is_err() || failed {
                            break;
                        }
                    }
                });
                let failed = |(offset, e): (u64, SegmintError)| {
                    corrupt(&path, offset, format!("replaying this record failed: {e}"))
                };
                let mut held = HeldDefinitions::default();
                for (offset, record) in decoded {
                    let record = record.map_err(|e| {
                        corrupt(&path, offset, format!("a log record does not decode: {e}"))
                    })?;
                    if std::mem::take(&mut clock_from_log) {
                        engine.now = record.instant();
                    }
                    info.records_replayed += 1;
                    let record = if engine.interner.is_empty() {
                        match held.hold(offset, record) {
                            Some(record) => record,
                            None => continue,
                        }
                    } else {
                        record
                    };
                    engine.install_held(&mut held).map_err(failed)?;
                    info.events_replayed +=
                        engine.replay(record).map_err(|e| failed((offset, e)))?;
                }
                engine.install_held(&mut held).map_err(failed)?;
                Ok(())
            })?;
            if is_last {
                let len = std::fs::metadata(&path)
                    .map_err(|e| io_error(&path, e))?
                    .len();
                info.torn_bytes = len.saturating_sub(valid.max(storage::WAL_HEADER_LEN));
                tail = (g, valid);
            }
        }
        info.replay_seconds = started.elapsed().as_secs_f64();
        let wal = WalWriter::open(&dir, tail.0, tail.1, storage.fsync, engine.last_seq)?;
        engine.storage = Some(Storage {
            config: storage,
            wal,
            _lock: lock,
        });
        Ok((engine, info))
    }

    /// Installs the definitions `held` put off, together, and moves the
    /// clock to the last instant among its records; on an error, the log
    /// offset of the definition that failed.
    fn install_held(
        &mut self,
        held: &mut HeldDefinitions,
    ) -> std::result::Result<(), (u64, SegmintError)> {
        let (definitions, offsets) = (
            std::mem::take(&mut held.definitions),
            std::mem::take(&mut held.offsets),
        );
        if !definitions.is_empty() {
            self.install_definitions(definitions)
                .map_err(|(i, e)| (offsets[i], e))?;
            // Copies share their lead's (empty) memberships even without a
            // profile: each definition made live ends the shares its
            // catalog breaks and starts those it makes, before the next
            // event (a replaced copy left sharing would take its old
            // lead's members); `share_classes` does both.
            let catalog = Arc::clone(&self.catalog);
            for shard in &mut self.shards {
                shard.share_classes(&catalog);
            }
        }
        if let Some(to) = held.until.take() {
            self.catch_up(to);
        }
        Ok(())
    }

    /// Applies one logged record; returns the number of events in it.
    fn replay(&mut self, record: Record<Event>) -> Result<u64> {
        match record {
            Record::Batch { now, events } => {
                let n = events.len() as u64;
                self.ingest_at(now, events.into_iter().map(Ok).collect());
                Ok(n)
            }
            Record::Advance { to } => {
                self.catch_up(to);
                Ok(0)
            }
            Record::DefineAudiences { now, items } => {
                let def = Definition::Audiences(items);
                let (catalog, slots) = self.catalog_after(&def).map_err(|(_, e)| e)?;
                self.define_audiences_with(now, def, catalog, &slots);
                Ok(0)
            }
            Record::DefineStatic { now, key, user_ids } => {
                let ids: Vec<&str> = user_ids.iter().map(String::as_str).collect();
                self.define_static_at(now, &key, &ids);
                Ok(0)
            }
            Record::RemoveAudience { now, key } => {
                self.catch_up(now);
                let def = Definition::Remove(key);
                let (catalog, slots) = self.catalog_after(&def).map_err(|(_, e)| e)?;
                self.remove_audience_with(def, catalog, slots[0]);
                Ok(0)
            }
            Record::DefineComputed { now, key, expr } => {
                let def = Definition::Computed(key, expr);
                let (catalog, ids) = self.catalog_after(&def).map_err(|(_, e)| e)?;
                self.define_computed_with(now, def, catalog, ids[0]);
                Ok(0)
            }
            Record::RemoveComputed { now, key } => {
                self.catch_up(now);
                let def = Definition::RemoveComputed(key);
                let (catalog, ids) = self.catalog_after(&def).map_err(|(_, e)| e)?;
                self.remove_computed_with(def, catalog, ids[0]);
                Ok(0)
            }
        }
    }

    /// Logs a record before the operation it describes is applied; returns
    /// its log position (`None` without a data directory).
    pub(crate) fn log_record<E: Serialize>(&mut self, record: &Record<E>) -> Result<Option<u64>> {
        match &mut self.storage {
            None => Ok(None),
            Some(s) => s.wal.append(&encode(record)).map(Some),
        }
    }

    /// After applying a logged operation: remembers which changes it made,
    /// makes it durable now if `sync` and the policy says so, and takes a
    /// snapshot when the log has grown past the configured size. Returns the
    /// position to make durable (0 without a record).
    pub(crate) fn finish_record(&mut self, position: Option<u64>, sync: bool) -> Result<u64> {
        let (Some(storage), Some(position)) = (&self.storage, position) else {
            return Ok(0);
        };
        storage.wal.note_seq(position, self.last_seq);
        if sync {
            storage.wal.commit(position)?;
        }
        let limit = storage.config.snapshot_log_bytes;
        if limit > 0 && storage.wal.file_len >= limit {
            self.snapshot()?;
        }
        Ok(position)
    }

    /// Whether the engine has a data directory.
    pub fn is_durable(&self) -> bool {
        self.storage.is_some()
    }

    /// Lets [`Engine::ingest`] return before its fsync (policy `always`):
    /// the caller makes [`IngestReport::wal_position`] durable with
    /// [`Engine::sync_handle`] after releasing its lock on the engine, so
    /// that concurrent batches share one fsync (group commit). Until then
    /// the batch's changes are not shown by [`Engine::changes`].
    ///
    /// [`IngestReport::wal_position`]: crate::IngestReport::wal_position
    pub fn defer_sync(&mut self, defer: bool) {
        self.defer_sync = defer;
    }

    /// A handle that waits for log positions to be durable (see
    /// [`Engine::defer_sync`]); `None` without a data directory.
    pub fn sync_handle(&self) -> Option<SyncHandle> {
        self.storage.as_ref().map(|s| s.wal.handle())
    }

    /// Bytes of log written since the last snapshot (0 in memory).
    pub fn log_bytes(&self) -> u64 {
        self.storage.as_ref().map_or(0, |s| {
            s.wal.file_len.saturating_sub(storage::WAL_HEADER_LEN)
        })
    }

    /// The last seq that [`Engine::changes`] shows: changes of log records
    /// not yet durable (fsync `always`, deferred) stay hidden until they are.
    pub fn visible_seq(&self) -> u64 {
        match &self.storage {
            Some(s) => s.wal.durable_seq().min(self.last_seq),
            None => self.last_seq,
        }
    }

    /// Writes a final snapshot and releases the data directory; the engine
    /// goes on in memory only. (Dropping a durable engine without closing
    /// loses nothing either: the log is flushed and replayed on open.)
    pub fn close(&mut self) -> Result<()> {
        if self.storage.is_some() {
            self.snapshot()?;
            self.storage = None;
        }
        Ok(())
    }

    /// Flushes the log to stable storage now, whatever the policy.
    pub fn sync(&self) -> Result<()> {
        match &self.storage {
            Some(s) => s.wal.sync_all(),
            None => Ok(()),
        }
    }

    /// Writes a snapshot of the whole state and deletes the log files and
    /// snapshots it makes obsolete. Blocks the engine while it encodes.
    pub fn snapshot(&mut self) -> Result<SnapshotInfo> {
        let started = Instant::now();
        let Some(storage) = &mut self.storage else {
            return Err(SegmintError::InvalidArgument {
                message: "snapshot() needs a data directory (this engine is in memory only)".into(),
            });
        };
        let generation = storage.wal.rotate()?;
        let dir = storage.config.dir.clone();
        let sections = self.encode_state(generation);
        let bytes = storage::write_snapshot(&dir, generation, &sections)?;
        let listing = list_dir(&dir)?;
        for g in listing.logs.into_iter().filter(|&g| g < generation) {
            let path = wal_path(&dir, g);
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        for g in listing.snapshots.into_iter().filter(|&g| g < generation) {
            let path = snapshot_path(&dir, g);
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        storage::sync_dir(&dir)?;
        Ok(SnapshotInfo {
            generation,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The state as snapshot sections: metadata, then one per shard.
    fn encode_state(&self, generation: u64) -> Vec<Vec<u8>> {
        let meta = SnapshotMeta {
            generation,
            now: self.now,
            granularity: self.config.granularity,
            shard_count: self.shards.len() as u32,
            last_seq: self.last_seq,
            log_first_seq: self.log_first_seq,
            definitions: self.definitions.clone(),
            trait_keys: self.catalog.trait_keys.names().map(Arc::from).collect(),
            user_ids: self.interner.names().map(Arc::from).collect(),
            seen_messages: StoredSeen::of(&self.seen_messages),
            log: self.log.iter().collect(),
        };
        let mut sections = vec![encode(&meta)];
        // Sorted: the same state writes the same bytes.
        let mut aliases: Vec<(&str, u32)> = self.interner.aliases().collect();
        aliases.sort_unstable();
        let shards: Vec<Vec<u8>> = self.pool.install(|| {
            self.shards
                .par_iter()
                .map(|shard| {
                    encode(&ShardSnapshotRef {
                        users: &shard.users,
                        bitmaps: shard
                            .members
                            .kept_bitmaps()
                            .map(|b| {
                                let mut out = Vec::with_capacity(b.serialized_size());
                                b.serialize_into(&mut out)
                                    .expect("writing to memory cannot fail");
                                out
                            })
                            .collect(),
                        counters: shard.counters,
                        shares: shard.members.shares(),
                    })
                })
                .collect()
        });
        sections.extend(shards);
        sections.push(encode(&aliases));
        sections
    }

    /// Replaces this (fresh) engine's state with a snapshot's.
    fn load_snapshot(&mut self, path: &Path) -> Result<()> {
        let (format, sections) = read_snapshot(path)?;
        match format {
            3 => self.load_sections::<Vec<(Arc<str>, Millis)>>(path, format, &sections),
            4 => self.load_sections::<StoredSeen>(path, format, &sections),
            5 => {
                // The alias section last (a format 4 snapshot without it).
                let Some((last, sections)) = sections.split_last() else {
                    return Err(corrupt(path, 8, "a snapshot needs a metadata section"));
                };
                self.load_sections::<StoredSeen>(path, format, sections)?;
                let aliases: Vec<(String, u32)> = postcard::from_bytes(&last.1).map_err(|e| {
                    corrupt(
                        path,
                        last.0,
                        format!("the alias section does not decode: {e}"),
                    )
                })?;
                self.load_aliases(path, last.0, aliases)
            }
            other => Err(corrupt(
                path,
                0,
                format!("snapshot format {other} has no reader in this build"),
            )),
        }
    }

    /// Makes the names of a snapshot's alias section stand for their ids
    /// again: a name that is its own id's (loaded with the users) marks
    /// that profile as merged into the other, a husk (see
    /// `Shard::husks`).
    fn load_aliases(
        &mut self,
        path: &Path,
        offset: u64,
        aliases: Vec<(String, u32)>,
    ) -> Result<()> {
        let n = self.shards.len() as u32;
        for (name, to) in aliases {
            if to as usize >= self.interner.len() {
                return Err(corrupt(
                    path,
                    offset,
                    format!("alias {name:?} names user {to}, past the last"),
                ));
            }
            match self.interner.get(&name) {
                Some(own) if own != to => {
                    self.interner.merge_into(own, to);
                    self.shards[(own % n) as usize].husks.insert(own / n);
                }
                Some(_) => {}
                None => self.interner.redirect(&name, to),
            }
        }
        Ok(())
    }

    /// [`Engine::load_snapshot`] of a snapshot whose de-duplication set is
    /// stored as `Seen`.
    fn load_sections<Seen: SeenSection + DeserializeOwned>(
        &mut self,
        path: &Path,
        format: u32,
        sections: &[Framed],
    ) -> Result<()> {
        let Some((meta_offset, meta_bytes)) = sections.first() else {
            return Err(corrupt(path, 8, "a snapshot needs a metadata section"));
        };
        let meta: SnapshotMeta<Seen> = postcard::from_bytes(meta_bytes).map_err(|e| {
            corrupt(
                path,
                *meta_offset,
                format!("metadata (format {format}) does not decode: {e}"),
            )
        })?;
        if meta.granularity != self.config.granularity {
            return Err(SegmintError::Storage {
                path: path.display().to_string(),
                message: format!(
                    "the data was written with granularity {} ms, the engine is configured with {} ms",
                    meta.granularity, self.config.granularity
                ),
            });
        }
        if sections.len() != meta.shard_count as usize + 1 {
            return Err(corrupt(
                path,
                *meta_offset,
                format!(
                    "expected {} shard sections, found {}",
                    meta.shard_count,
                    sections.len() - 1
                ),
            ));
        }
        // Keys first, so that the definitions compile to the same ids.
        for key in &meta.trait_keys {
            crate::engine::intern_trait_key(&mut self.catalog, key);
        }
        self.install_definitions(meta.definitions)
            .map_err(|(i, e)| {
                corrupt(
                    path,
                    *meta_offset,
                    format!("stored definition {i} fails: {e}"),
                )
            })?;
        for id in &meta.user_ids {
            self.interner.intern(id);
        }
        let count = meta.shard_count;
        let catalog = Arc::clone(&self.catalog);
        let shards: Result<Vec<Shard>> = self.pool.install(|| {
            sections[1..]
                .par_iter()
                .enumerate()
                .map(|(i, (offset, bytes))| {
                    let snap: ShardSnapshot = postcard::from_bytes(bytes).map_err(|e| {
                        corrupt(path, *offset, format!("shard {i} does not decode: {e}"))
                    })?;
                    let mut bitmaps = Vec::with_capacity(snap.bitmaps.len());
                    for b in &snap.bitmaps {
                        bitmaps.push(RoaringBitmap::deserialize_from(&b[..]).map_err(|e| {
                            corrupt(
                                path,
                                *offset,
                                format!("shard {i}: a bitmap does not decode: {e}"),
                            )
                        })?);
                    }
                    Ok(Shard::restore(
                        i as u32,
                        count,
                        snap.users,
                        Memberships::from_snapshot(bitmaps, &snap.shares),
                        snap.counters,
                        &catalog,
                    ))
                })
                .collect()
        });
        self.shards = shards?;
        // The stored shares against the catalog compiled again: a slot
        // whose lead it no longer is gets its own memberships back before
        // any operation (sharing starts again after the first).
        self.unshare_changed(&catalog);
        self.now = meta.now;
        self.last_seq = meta.last_seq;
        // Opened with a smaller `change_log_capacity`, the newest that many.
        let dropped = meta
            .log
            .len()
            .saturating_sub(self.config.change_log_capacity);
        self.log_first_seq = meta.log_first_seq + dropped as u64;
        self.log = meta.log.into_iter().skip(dropped).collect();
        self.seen_messages = meta.seen_messages.into_set();
        Ok(())
    }
}
