//! Durability files: the write-ahead log and snapshots in a data directory.
//!
//! The log is a sequence of files `wal-<generation>.log`; a snapshot
//! `snapshot-<g>.snap` holds the whole state before log generation `g`, so
//! recovery is the latest snapshot plus the log files from its generation on.
//! Every log record and every snapshot section carries a CRC-32C; a torn
//! record at the very end of the newest log file (a crash mid-write) is cut,
//! any other checksum failure stops recovery with the file and offset.
//!
//! This module knows files and bytes; what the records mean is the engine's
//! business (see `Engine::open`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::error::{Result, SegmintError};
use crate::time::Millis;

/// When the log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before a call returns (batches arriving together share one fsync).
    Always,
    /// At most this long after a write, by a background thread.
    Interval(Millis),
    /// Never explicitly: the OS writes back. Survives a process crash, not
    /// a power loss.
    Never,
}

impl FsyncPolicy {
    /// Parses `always`, `interval` (with the given period) or `never`.
    pub fn parse(name: &str, interval: Millis) -> Result<FsyncPolicy> {
        match name {
            "always" => Ok(FsyncPolicy::Always),
            "interval" if interval > 0 => Ok(FsyncPolicy::Interval(interval)),
            "interval" => Err(SegmintError::InvalidArgument {
                message: format!("fsync interval must be positive, got {interval} ms"),
            }),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(SegmintError::InvalidArgument {
                message: format!(
                    "unknown fsync policy {other:?}: expected \"always\", \"interval\" or \"never\""
                ),
            }),
        }
    }
}

/// Where and how the engine persists itself.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// The fsync policy.
    pub fsync: FsyncPolicy,
    /// Take a snapshot (and start a new log file) once the current log file
    /// is this large; 0 never does it automatically.
    pub snapshot_log_bytes: u64,
}

impl StorageConfig {
    /// Settings for `dir` with fsync `always` and a snapshot every 256 MiB
    /// of log.
    pub fn new(dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            snapshot_log_bytes: 256 << 20,
        }
    }
}

const WAL_MAGIC: &[u8; 8] = b"SEGMWAL1";
/// Format 5 adds a last section, the user ids that alias calls redirected
/// (format 4 began storing the de-duplication set's message ids as keyed
/// fingerprints, with the key; format 3 which audience slots share
/// another's memberships; format 2 users' traits by key id, with the key
/// table). The magic's last byte is the format's digit.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SEGMSNP5";
/// The format [`SNAPSHOT_MAGIC`] stands for: its digit.
const SNAPSHOT_FORMAT: u32 = (SNAPSHOT_MAGIC[7] - b'0') as u32;
/// The oldest format read: format 3 differs from 4 only in its message
/// ids, stored as text, and 4 from 5 only in having no alias section.
/// Earlier ones (from 1) and later ones (to 9) are refused by name.
const OLDEST_READ_FORMAT: u32 = 3;

/// The format a snapshot's header names (its magic's digit), if it is a
/// segmint snapshot header at all.
fn snapshot_format(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= 16 && bytes[..7] == SNAPSHOT_MAGIC[..7])
        .then(|| char::from(bytes[7]).to_digit(10))
        .flatten()
}
/// Magic plus generation.
pub(crate) const WAL_HEADER_LEN: u64 = 16;
/// Frame: payload length (u32) and CRC-32C of length and payload (u32).
const FRAME_LEN: usize = 8;
/// Larger lengths can only come from garbage.
const MAX_RECORD: usize = 1 << 30;

pub(crate) fn wal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:012}.log"))
}

pub(crate) fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:012}.snap"))
}

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> SegmintError {
    SegmintError::Storage {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn corrupt(path: &Path, offset: u64, message: impl Into<String>) -> SegmintError {
    SegmintError::Corrupt {
        path: path.display().to_string(),
        offset,
        message: message.into(),
    }
}

fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

/// Makes a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// What the data directory holds, by generation.
#[derive(Debug, Default)]
pub(crate) struct DirListing {
    /// Snapshot generations, ascending.
    pub snapshots: Vec<u64>,
    /// Log generations, ascending.
    pub logs: Vec<u64>,
}

/// Lists snapshots and log files, deleting leftovers of interrupted
/// snapshot writes (`*.tmp`).
pub(crate) fn list_dir(dir: &Path) -> Result<DirListing> {
    let mut listing = DirListing::default();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        } else if let Some(g) = generation_of(name, "snapshot-", ".snap") {
            listing.snapshots.push(g);
        } else if let Some(g) = generation_of(name, "wal-", ".log") {
            listing.logs.push(g);
        }
    }
    listing.snapshots.sort_unstable();
    listing.logs.sort_unstable();
    Ok(listing)
}

fn generation_of(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Holds the directory's lock file for the engine's lifetime, so two
/// processes never write the same log.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        file.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io_error(
                &path,
                "the data directory is in use by another engine (its lock is held)",
            ),
            fs::TryLockError::Error(e) => io_error(&path, e),
        })?;
        Ok(DirLock { _file: file })
    }
}

/// A record's or section's byte offset in its file and its payload.
pub(crate) type Framed = (u64, Vec<u8>);

/// Reads a log file: the payloads of its valid records with their offsets,
/// and the length up to the last valid record. A damaged tail is accepted
/// (and reported by a shorter valid length) only when `tail_may_tear`.
pub(crate) fn read_wal(
    path: &Path,
    generation: u64,
    tail_may_tear: bool,
) -> Result<(Vec<Framed>, u64)> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let header_ok = bytes.len() >= WAL_HEADER_LEN as usize
        && &bytes[..8] == WAL_MAGIC
        && bytes[8..16] == generation.to_le_bytes();
    if !header_ok {
        if tail_may_tear && bytes.len() < WAL_HEADER_LEN as usize {
            // Created but the header never fully reached the disk.
            return Ok((Vec::new(), 0));
        }
        return Err(corrupt(
            path,
            0,
            format!("expected a segmint log header for generation {generation}"),
        ));
    }
    let mut records = Vec::new();
    let mut at = WAL_HEADER_LEN as usize;
    while at < bytes.len() {
        // `None`: a valid record ending at `Some(end)`; otherwise why it is bad
        // and whether the damage reaches the end of the file (a torn write).
        let (problem, reaches_end) = if bytes.len() - at < FRAME_LEN {
            ("the file ends inside a record header", true)
        } else {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            let end = at + FRAME_LEN + len as usize;
            if len as usize > MAX_RECORD || end > bytes.len() {
                ("the file ends inside a record", true)
            } else if frame_crc(len, &bytes[at + FRAME_LEN..end]) != crc {
                (
                    "record checksum mismatch (expected CRC-32C of the record to match)",
                    end == bytes.len(),
                )
            } else {
                records.push((at as u64, bytes[at + FRAME_LEN..end].to_vec()));
                at = end;
                continue;
            }
        };
        let torn = reaches_end || bytes[at..].iter().all(|&b| b == 0);
        if tail_may_tear && torn {
            break;
        }
        return Err(corrupt(path, at as u64, problem));
    }
    let valid = records
        .last()
        .map_or(WAL_HEADER_LEN, |(o, p)| o + (FRAME_LEN + p.len()) as u64);
    Ok((records, valid))
}

/// Fsync bookkeeping shared by the writer and by callers that wait for
/// their batch to be durable outside the engine's lock (group commit).
#[derive(Debug)]
struct SyncState {
    /// The current log file.
    file: Mutex<Arc<File>>,
    /// Bytes appended over the engine's life (all generations).
    appended: AtomicU64,
    /// Bytes known durable; its lock also serialises fsyncs, so a caller
    /// that waited finds its bytes covered by the fsync before it.
    synced: Mutex<u64>,
    /// (position, last change seq) of records not yet durable.
    pending: Mutex<VecDeque<(u64, u64)>>,
    /// Changes up to this seq are in records that are durable.
    durable_seq: AtomicU64,
    /// Whether `durable_seq` waits for fsync (policy `always`).
    gate_changes: bool,
    /// Set when the writer is dropped: stops the interval flusher.
    closed: AtomicBool,
}

impl SyncState {
    fn sync_to(&self, position: u64) -> Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= position {
            return Ok(());
        }
        let target = self.appended.load(Ordering::Acquire);
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        file.sync_data()
            .map_err(|e| io_error(Path::new("<write-ahead log>"), e))?;
        *synced = target;
        drop(synced);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(pos, seq)) = pending.front() {
            if pos > target {
                break;
            }
            self.durable_seq.fetch_max(seq, Ordering::AcqRel);
            pending.pop_front();
        }
        Ok(())
    }
}

/// A handle to wait until log positions are durable, usable without the
/// engine's lock (group commit: whoever fsyncs covers every batch written
/// before it).
#[derive(Debug, Clone)]
pub struct SyncHandle {
    state: Arc<SyncState>,
}

impl SyncHandle {
    /// Blocks until the log is durable up to `position`.
    pub fn sync_to(&self, position: u64) -> Result<()> {
        self.state.sync_to(position)
    }
}

/// Appends records to the current log file.
#[derive(Debug)]
pub(crate) struct WalWriter {
    dir: PathBuf,
    /// Generation of the current file.
    pub generation: u64,
    file: Arc<File>,
    /// Length of the current file.
    pub file_len: u64,
    state: Arc<SyncState>,
    /// The fsync policy.
    pub policy: FsyncPolicy,
}

impl WalWriter {
    /// Opens generation `generation` for appending, cutting it to
    /// `valid_len` (0: create it with a fresh header).
    pub(crate) fn open(
        dir: &Path,
        generation: u64,
        valid_len: u64,
        policy: FsyncPolicy,
        last_seq: u64,
    ) -> Result<WalWriter> {
        let (file, file_len) = open_wal_file(dir, generation, valid_len)?;
        let state = Arc::new(SyncState {
            file: Mutex::new(file.clone()),
            appended: AtomicU64::new(0),
            synced: Mutex::new(0),
            pending: Mutex::new(VecDeque::new()),
            durable_seq: AtomicU64::new(last_seq),
            gate_changes: policy == FsyncPolicy::Always,
            closed: AtomicBool::new(false),
        });
        if let FsyncPolicy::Interval(every) = policy {
            spawn_flusher(Arc::downgrade(&state), every);
        }
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            generation,
            file,
            file_len,
            state,
            policy,
        })
    }

    /// Appends one record; returns the position that must be durable for
    /// it to be.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<u64> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| (l as usize) <= MAX_RECORD)
            .ok_or_else(|| SegmintError::LimitExceeded {
                what: "log record".into(),
                limit: MAX_RECORD,
                actual: payload.len(),
            })?;
        let mut frame = Vec::with_capacity(FRAME_LEN + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let path = wal_path(&self.dir, self.generation);
        (&*self.file)
            .write_all(&frame)
            .map_err(|e| io_error(&path, e))?;
        self.file_len += frame.len() as u64;
        Ok(self
            .state
            .appended
            .fetch_add(frame.len() as u64, Ordering::AcqRel)
            + frame.len() as u64)
    }

    /// Records that the changes up to `seq` come from records up to
    /// `position`.
    pub(crate) fn note_seq(&self, position: u64, seq: u64) {
        if self.state.gate_changes {
            self.state
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((position, seq));
        } else {
            self.state.durable_seq.fetch_max(seq, Ordering::AcqRel);
        }
    }

    /// Makes `position` durable now if the policy says so.
    pub(crate) fn commit(&self, position: u64) -> Result<()> {
        match self.policy {
            FsyncPolicy::Always => self.state.sync_to(position),
            _ => Ok(()),
        }
    }

    /// Changes up to this seq may be shown to readers.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.state.durable_seq.load(Ordering::Acquire)
    }

    pub(crate) fn handle(&self) -> SyncHandle {
        SyncHandle {
            state: self.state.clone(),
        }
    }

    /// Flushes everything written so far.
    pub(crate) fn sync_all(&self) -> Result<()> {
        self.state
            .sync_to(self.state.appended.load(Ordering::Acquire))
    }

    /// Starts the next log file; returns its generation. Everything in the
    /// previous one is made durable first.
    pub(crate) fn rotate(&mut self) -> Result<u64> {
        self.sync_all()?;
        let next = self.generation + 1;
        let (file, file_len) = open_wal_file(&self.dir, next, 0)?;
        {
            // Hold `synced` so no fsync runs against a half-switched state.
            let _synced = self.state.synced.lock().unwrap_or_else(|e| e.into_inner());
            *self.state.file.lock().unwrap_or_else(|e| e.into_inner()) = file.clone();
        }
        self.file = file;
        self.file_len = file_len;
        self.generation = next;
        Ok(next)
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        // Best effort: a clean shutdown leaves nothing unflushed.
        let _ = self.sync_all();
    }
}

fn open_wal_file(dir: &Path, generation: u64, valid_len: u64) -> Result<(Arc<File>, u64)> {
    let path = wal_path(dir, generation);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let len = if valid_len < WAL_HEADER_LEN {
        file.set_len(0).map_err(|e| io_error(&path, e))?;
        let mut header = Vec::with_capacity(WAL_HEADER_LEN as usize);
        header.extend_from_slice(WAL_MAGIC);
        header.extend_from_slice(&generation.to_le_bytes());
        (&file).write_all(&header).map_err(|e| io_error(&path, e))?;
        file.sync_all().map_err(|e| io_error(&path, e))?;
        sync_dir(dir)?;
        WAL_HEADER_LEN
    } else {
        // Cut a torn tail so new records follow the last valid one.
        file.set_len(valid_len).map_err(|e| io_error(&path, e))?;
        file.sync_all().map_err(|e| io_error(&path, e))?;
        valid_len
    };
    use std::io::{Seek, SeekFrom};
    (&file)
        .seek(SeekFrom::Start(len))
        .map_err(|e| io_error(&path, e))?;
    Ok((Arc::new(file), len))
}

fn spawn_flusher(state: Weak<SyncState>, every: Millis) {
    let period = Duration::from_millis(every.max(1) as u64);
    let _ = std::thread::Builder::new()
        .name("segmint-fsync".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            let Some(state) = state.upgrade() else { return };
            if state.closed.load(Ordering::Acquire) {
                return;
            }
            let appended = state.appended.load(Ordering::Acquire);
            // An fsync error here resurfaces at the next `always` or at shutdown.
            let _ = state.sync_to(appended);
        });
}

/// Writes a snapshot atomically: a temp file, fsync, rename, fsync of the
/// directory. `sections` are framed with their length and CRC-32C.
pub(crate) fn write_snapshot(dir: &Path, generation: u64, sections: &[Vec<u8>]) -> Result<u64> {
    let path = snapshot_path(dir, generation);
    let tmp = path.with_extension("snap.tmp");
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp).map_err(|e| io_error(&tmp, e))?,
    );
    let mut size = 0u64;
    let mut put = |bytes: &[u8]| -> Result<()> {
        size += bytes.len() as u64;
        file.write_all(bytes).map_err(|e| io_error(&tmp, e))
    };
    put(SNAPSHOT_MAGIC)?;
    put(&(sections.len() as u64).to_le_bytes())?;
    for s in sections {
        put(&(s.len() as u64).to_le_bytes())?;
        put(&crc32c::crc32c(s).to_le_bytes())?;
        put(s)?;
    }
    let file = file.into_inner().map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
    sync_dir(dir)?;
    Ok(size)
}

/// Reads a snapshot's format (3 to 5) and its sections, each with its
/// offset, checking every checksum.
pub(crate) fn read_snapshot(path: &Path) -> Result<(u32, Vec<Framed>)> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let reads =
        format!("this build, which reads formats {OLDEST_READ_FORMAT} to {SNAPSHOT_FORMAT}");
    let refused = |format: u32, whose: &str, what_then: &str| {
        let message = format!(
            "snapshot format {format} ({whose} segmint) is not readable by {reads}; {what_then}"
        );
        Err(corrupt(path, 0, message))
    };
    let format =
        match snapshot_format(&bytes) {
            Some(format @ OLDEST_READ_FORMAT..=SNAPSHOT_FORMAT) => format,
            Some(format @ 1..OLDEST_READ_FORMAT) => return refused(
                format,
                "an earlier",
                "re-create the data directory by ingesting the events again (docs/durability.md)",
            ),
            Some(format) if format > SNAPSHOT_FORMAT => {
                return refused(format, "a later", "run the build that wrote it")
            }
            _ => return Err(corrupt(path, 0, "expected a segmint snapshot header")),
        };
    let count = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let mut at = 16usize;
    let mut sections = Vec::new();
    for i in 0..count {
        if bytes.len() - at < 12 {
            return Err(corrupt(
                path,
                at as u64,
                format!("truncated: expected {count} sections, found {i}"),
            ));
        }
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let start = at + 12;
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            return Err(corrupt(
                path,
                at as u64,
                format!("truncated: section {i} claims {len} bytes past the end of the file"),
            ));
        };
        if crc32c::crc32c(&bytes[start..end]) != crc {
            return Err(corrupt(
                path,
                at as u64,
                format!("section {i} fails its checksum (expected CRC-32C {crc:#010x})"),
            ));
        }
        sections.push((at as u64, bytes[start..end].to_vec()));
        at = end;
    }
    if at != bytes.len() {
        return Err(corrupt(
            path,
            at as u64,
            "unexpected bytes after the last section",
        ));
    }
    Ok((format, sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path) -> WalWriter {
        WalWriter::open(dir, 1, 0, FsyncPolicy::Always, 0).unwrap()
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        for i in 0..5u8 {
            let pos = w.append(&vec![i; 10 + i as usize]).unwrap();
            w.commit(pos).unwrap();
        }
        drop(w);
        let path = wal_path(dir.path(), 1);
        let (records, valid) = read_wal(&path, 1, false).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[3].1, vec![3u8; 13]);
        assert_eq!(valid, fs::metadata(&path).unwrap().len());
        // A crash mid-write: the last record is cut short.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(valid - 3).unwrap();
        let (records, cut) = read_wal(&path, 1, true).unwrap();
        assert_eq!(records.len(), 4);
        assert!(cut < valid - 3);
        assert!(read_wal(&path, 1, false).is_err());
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_an_error_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        for i in 0..3u8 {
            w.append(&[i; 20]).unwrap();
        }
        drop(w);
        let path = wal_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let second = WAL_HEADER_LEN as usize + 28;
        bytes[second + 10] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        match read_wal(&path, 1, true) {
            Err(SegmintError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            other => panic!("expected a corrupt-data error, got {other:?}"),
        }
    }

    #[test]
    fn zero_filled_tail_is_torn_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.append(b"hello").unwrap();
        drop(w);
        let path = wal_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 64]);
        fs::write(&path, &bytes).unwrap();
        let (records, _) = read_wal(&path, 1, true).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn snapshot_sections_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 3, &[b"meta".to_vec(), vec![7u8; 100]]).unwrap();
        let path = snapshot_path(dir.path(), 3);
        let (format, sections) = read_snapshot(&path).unwrap();
        assert_eq!(format, SNAPSHOT_FORMAT);
        assert_eq!(sections[1].1, vec![7u8; 100]);
        // Format 3's header is read as format 3 (its metadata is decoded
        // as such, see durable.rs).
        let mut bytes = fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(b"SEGMSNP3");
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_snapshot(&path).unwrap(), (3, sections.clone()));
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(SegmintError::Corrupt { offset, .. }) if offset == sections[1].0
        ));
        fs::write(&path, &bytes[..n - 40]).unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(SegmintError::Corrupt { .. })
        ));
    }

    #[test]
    fn group_commit_covers_earlier_positions() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let a = w.append(b"a").unwrap();
        w.note_seq(a, 3);
        let b = w.append(b"b").unwrap();
        w.note_seq(b, 5);
        assert_eq!(w.durable_seq(), 0);
        w.handle().sync_to(a).unwrap();
        // The fsync for `a` covered `b` too.
        assert_eq!(w.durable_seq(), 5);
    }

    #[test]
    fn earlier_snapshot_formats_are_named_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        for format in [1, 2] {
            let path = dir.path().join("old.snap");
            let mut bytes = format!("SEGMSNP{format}").into_bytes();
            bytes.extend_from_slice(&0u64.to_le_bytes());
            fs::write(&path, &bytes).unwrap();
            let message = read_snapshot(&path).unwrap_err().to_string();
            assert!(
                message.contains(&format!("snapshot format {format}")),
                "{message}"
            );
            assert!(message.contains("reads formats 3 to 5"), "{message}");
        }
        let path = dir.path().join("later.snap");
        let mut bytes = b"SEGMSNP6".to_vec();
        bytes.extend_from_slice(&0u64.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let message = read_snapshot(&path).unwrap_err().to_string();
        assert!(
            message.contains("snapshot format 6 (a later segmint) is not readable by this build, which reads formats 3 to 5"),
            "{message}"
        );
    }
}
