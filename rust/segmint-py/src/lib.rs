//! `segmint._core`: PyO3 glue over segmint-core. It converts types,
//! releases the GIL around engine work and maps errors; nothing else.

mod arrow;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// mimalloc for the engine's many small allocations (see segmint-bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use arrow_array::ffi_stream::RecordBatchStreamReader;
use arrow_array::RecordBatchReader;
use arrow_pyarrow::FromPyArrow;

use segmint_core::decoder::Decoder;
use segmint_core::event::{flatten_properties, flatten_traits};
use segmint_core::ticker::Ticker;
use segmint_core::{
    Clock, Engine as CoreEngine, EngineConfig, Event, EventBody, FsyncPolicy, IngestReport,
    SegmintError, StorageConfig, SyncHandle,
};

create_exception!(
    _core,
    PySegmintError,
    PyException,
    "Base class of every segmint error."
);
create_exception!(
    _core,
    RuleError,
    PySegmintError,
    "A rule is invalid; has line, column and snippet."
);
create_exception!(
    _core,
    RuleSyntaxError,
    RuleError,
    "The rule text does not parse."
);
create_exception!(
    _core,
    RuleTypeError,
    RuleError,
    "The rule parses but is ill-typed."
);
create_exception!(
    _core,
    UnknownAudienceError,
    PySegmintError,
    "No audience with this key."
);
create_exception!(
    _core,
    UnknownComputedTraitError,
    PySegmintError,
    "No computed trait with this key."
);
create_exception!(
    _core,
    UnknownUserError,
    PySegmintError,
    "The user id was never seen."
);
create_exception!(
    _core,
    AudienceCycleError,
    PySegmintError,
    "Audience references would form a cycle."
);
create_exception!(
    _core,
    InUseError,
    PySegmintError,
    "The audience or computed trait is referenced by other rules."
);
create_exception!(
    _core,
    InvalidEventError,
    PySegmintError,
    "An event is malformed."
);
create_exception!(
    _core,
    LimitExceededError,
    PySegmintError,
    "An input exceeds a size limit."
);
create_exception!(
    _core,
    InvalidArgumentError,
    PySegmintError,
    "An argument is invalid."
);
create_exception!(
    _core,
    StorageError,
    PySegmintError,
    "The data directory cannot be used (I/O, lock, settings)."
);
create_exception!(
    _core,
    CorruptDataError,
    StorageError,
    "A log or snapshot file fails its checksum; names the file and offset."
);

/// The short machine-readable code of an error (also used per batch item).
fn code(e: &SegmintError) -> &'static str {
    match e {
        SegmintError::RuleSyntax(_) => "rule_syntax",
        SegmintError::RuleType(_) => "rule_type",
        SegmintError::UnknownAudience { .. } => "unknown_audience",
        SegmintError::UnknownComputedTrait { .. } => "unknown_computed_trait",
        SegmintError::UnknownUser { .. } => "unknown_user",
        SegmintError::AudienceCycle { .. } => "audience_cycle",
        SegmintError::InUse { .. } => "in_use",
        SegmintError::InvalidEvent { .. } => "invalid_event",
        SegmintError::LimitExceeded { .. } => "limit_exceeded",
        SegmintError::InvalidArgument { .. } => "invalid_argument",
        SegmintError::Storage { .. } => "storage",
        SegmintError::Corrupt { .. } => "corrupt_data",
    }
}

/// Runs `f`, turning a panic in it (the `part` of segmint named) into a
/// `SegmintError` instead of letting it cross into Python.
fn unwound<T>(part: &str, f: impl FnOnce() -> T) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        PySegmintError::new_err(format!(
            "internal error: the {part} panicked; please report this"
        ))
    })
}

fn to_py(e: SegmintError) -> PyErr {
    let message = e.to_string();
    to_py_as(e, message, None)
}

/// The error of item `index` of a batch of definitions, whose key is
/// `key`: its message and `index` name the item, the key cut to 64
/// characters. Without a key (an index past the items) it is an error of
/// the batch as a whole, such as writing the log, which names none.
fn item_to_py(index: usize, key: Option<&str>, e: SegmintError) -> PyErr {
    let Some(key) = key else {
        return to_py(e);
    };
    let shown: String = match key.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &key[..end]),
        None => key.to_owned(),
    };
    let message = format!("item {index} ({shown:?}): {e}");
    to_py_as(e, message, Some(index))
}

/// The Python exception of `e` with `message`; `index` is the failing
/// item of a batch call, if any.
fn to_py_as(e: SegmintError, message: String, index: Option<usize>) -> PyErr {
    Python::attach(|py| {
        let err = match &e {
            SegmintError::RuleSyntax(_) => RuleSyntaxError::new_err(message),
            SegmintError::RuleType(_) => RuleTypeError::new_err(message),
            SegmintError::UnknownAudience { .. } => UnknownAudienceError::new_err(message),
            SegmintError::UnknownComputedTrait { .. } => {
                UnknownComputedTraitError::new_err(message)
            }
            SegmintError::UnknownUser { .. } => UnknownUserError::new_err(message),
            SegmintError::AudienceCycle { .. } => AudienceCycleError::new_err(message),
            SegmintError::InUse { .. } => InUseError::new_err(message),
            SegmintError::InvalidEvent { .. } => InvalidEventError::new_err(message),
            SegmintError::LimitExceeded { .. } => LimitExceededError::new_err(message),
            SegmintError::InvalidArgument { .. } => InvalidArgumentError::new_err(message),
            SegmintError::Storage { .. } => StorageError::new_err(message),
            SegmintError::Corrupt { .. } => CorruptDataError::new_err(message),
        };
        if let SegmintError::RuleSyntax(r) | SegmintError::RuleType(r) = &e {
            let value = err.value(py);
            let _ = value.setattr("line", r.line);
            let _ = value.setattr("column", r.column);
            let _ = value.setattr("snippet", r.snippet.as_str());
            let _ = value.setattr("reason", r.message.as_str());
        }
        if let SegmintError::Corrupt { path, offset, .. } = &e {
            let value = err.value(py);
            let _ = value.setattr("path", path.as_str());
            let _ = value.setattr("offset", *offset);
        }
        let _ = err.value(py).setattr("code", code(&e));
        let _ = err.value(py).setattr("index", index);
        err
    })
}

type Report = (usize, usize, Vec<(usize, &'static str, String)>, u64, usize);

/// (key, old value as JSON text, new value as JSON text) of a computed-trait change.
type ComputedRow = (String, Option<String>, Option<String>);

/// (seq, audience, user_id, entered, at_ms, reason, computed)
type ChangeRow = (
    u64,
    String,
    String,
    bool,
    i64,
    &'static str,
    Option<ComputedRow>,
);

fn value_json(v: Option<&segmint_core::Value>) -> Option<String> {
    v.map(|v| v.to_json().to_string())
}

fn report(r: IngestReport) -> Report {
    let errors = r
        .errors
        .into_iter()
        .map(|(i, e)| (i, code(&e), e.to_string()))
        .collect();
    (r.accepted, r.duplicates, errors, r.last_seq, r.changes)
}

/// Checks ids and names given one by one (not decoded from a batch),
/// each with what it is: none empty, each within the key limits.
fn check_names<const N: usize>(
    limits: &segmint_core::limits::Limits,
    names: [(&str, &str); N],
) -> Result<(), SegmintError> {
    for (what, name) in names {
        if name.is_empty() {
            return Err(SegmintError::InvalidEvent {
                message: format!("the {what} must not be empty"),
            });
        }
        limits.check_key(what, name)?;
    }
    Ok(())
}

fn json_object(
    bytes: Option<&[u8]>,
    what: &str,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, SegmintError> {
    let Some(bytes) = bytes else { return Ok(None) };
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(o)) => Ok(Some(o)),
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(_) => Err(SegmintError::InvalidEvent {
            message: format!("{what} must be a mapping"),
        }),
        Err(e) => Err(SegmintError::InvalidEvent {
            message: format!("{what} is not valid JSON: {e}"),
        }),
    }
}

/// A bitmap in roaring's portable serialization.
fn portable(bitmap: &roaring::RoaringBitmap) -> Result<Vec<u8>, SegmintError> {
    let mut bytes = Vec::with_capacity(bitmap.serialized_size());
    bitmap
        .serialize_into(&mut bytes)
        .map_err(|err| SegmintError::InvalidArgument {
            message: err.to_string(),
        })?;
    Ok(bytes)
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The engine, shared with its ticker thread.
#[pyclass(frozen, module = "segmint._core")]
struct Engine {
    inner: Arc<Mutex<CoreEngine>>,
    ticker: Mutex<Option<Ticker>>,
    /// Waits for a batch's log record to be durable after the lock is
    /// released (group commit); `None` in memory.
    sync: Option<SyncHandle>,
    /// What recovery did: (snapshot generation, records, events, torn bytes,
    /// snapshot seconds, replay seconds).
    recovery: (u64, u64, u64, u64, f64, f64),
}

impl Engine {
    fn lock(&self) -> MutexGuard<'_, CoreEngine> {
        // A panic cannot poison the lock in practice (no panics cross), but
        // never let a poisoned lock take the process down either.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut CoreEngine) -> Result<T, SegmintError> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut engine = self.lock();
            unwound("engine", || f(&mut engine))
        })?
        .map_err(to_py)
    }

    /// Decodes a batch with `decode` on the engine's threads, without the
    /// GIL and outside the engine's lock: a concurrent call applies its
    /// batch meanwhile.
    fn decode_detached<T: Send>(
        &self,
        py: Python<'_>,
        decode: impl FnOnce(&Decoder) -> Result<T, SegmintError> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let decoder = self.lock().decoder();
            unwound("decoder", || decode(&decoder))
        })?
        .map_err(to_py)
    }

    /// Applies decoded events without the GIL (call inside `py.detach`):
    /// under the lock, then waits for the log record to be durable without it.
    fn ingest_detached(
        &self,
        events: Vec<Result<Event, SegmintError>>,
    ) -> Result<IngestReport, SegmintError> {
        let r = {
            let mut engine = self.lock();
            engine.ingest(events)?
        };
        if let (Some(sync), true) = (&self.sync, r.wal_position > 0) {
            sync.sync_to(r.wal_position)?;
        }
        Ok(r)
    }

    /// Runs an ingest under the lock, then waits for its log record to be
    /// durable without the lock, so concurrent batches share an fsync.
    fn ingest_with(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut CoreEngine) -> Result<IngestReport, SegmintError> + Send,
    ) -> PyResult<Report> {
        let r = self.with(py, f)?;
        if let (Some(sync), true) = (&self.sync, r.wal_position > 0) {
            py.detach(|| sync.sync_to(r.wal_position)).map_err(to_py)?;
        }
        Ok(report(r))
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (*, clock="wall", now_ms=None, granularity_ms=1000, future_skew_ms=300_000, shards=0, threads=0, tick_ms=1000, dedup_window_ms=86_400_000, data_dir=None, fsync="always", fsync_interval_ms=100, snapshot_log_bytes=268_435_456, change_log_capacity=10_000_000))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        clock: &str,
        now_ms: Option<i64>,
        granularity_ms: i64,
        future_skew_ms: i64,
        shards: usize,
        threads: usize,
        tick_ms: u64,
        dedup_window_ms: i64,
        data_dir: Option<std::path::PathBuf>,
        fsync: &str,
        fsync_interval_ms: i64,
        snapshot_log_bytes: u64,
        change_log_capacity: i64,
    ) -> PyResult<Self> {
        let clock = match (clock, now_ms) {
            ("wall", None) => Clock::Wall,
            ("wall", Some(_)) => {
                return Err(to_py(SegmintError::InvalidArgument {
                    message: "now is only for the manual clock".into(),
                }))
            }
            ("manual", start) => Clock::Manual(start.unwrap_or_else(segmint_core::time::wall_now)),
            (other, _) => {
                return Err(to_py(SegmintError::InvalidArgument {
                    message: format!("unknown clock {other:?}; expected \"wall\" or \"manual\""),
                }))
            }
        };
        let config = EngineConfig {
            clock,
            granularity: granularity_ms,
            future_skew: future_skew_ms,
            shards,
            threads,
            dedup_window: dedup_window_ms,
            // Below 1 the engine refuses it, with its name.
            change_log_capacity: usize::try_from(change_log_capacity).unwrap_or(0),
            ..Default::default()
        };
        let policy = FsyncPolicy::parse(fsync, fsync_interval_ms).map_err(to_py)?;
        let (core, recovery) = match data_dir {
            None => (CoreEngine::new(config).map_err(to_py)?, Default::default()),
            Some(dir) => {
                let storage = StorageConfig {
                    dir,
                    fsync: policy,
                    snapshot_log_bytes,
                };
                // Opening replays the log: engine code, so no panic crosses.
                let (mut core, info) = py
                    .detach(move || unwound("engine", move || CoreEngine::open(config, storage)))?
                    .map_err(to_py)?;
                core.defer_sync(true);
                (core, info)
            }
        };
        let sync = core.sync_handle();
        let inner = Arc::new(Mutex::new(core));
        let ticker = (clock == Clock::Wall && tick_ms > 0)
            .then(|| Ticker::start(inner.clone(), Duration::from_millis(tick_ms)));
        Ok(Engine {
            inner,
            ticker: Mutex::new(ticker),
            sync,
            recovery: (
                recovery.snapshot_generation,
                recovery.records_replayed,
                recovery.events_replayed,
                recovery.torn_bytes,
                recovery.snapshot_seconds,
                recovery.replay_seconds,
            ),
        })
    }

    /// What recovery did: (snapshot generation, records replayed, events
    /// replayed, torn bytes cut, snapshot load seconds, replay seconds).
    #[getter]
    fn recovery(&self) -> (u64, u64, u64, u64, f64, f64) {
        self.recovery
    }

    /// The last change seq that `changes` shows (durable under the policy).
    #[getter]
    fn visible_seq(&self) -> u64 {
        self.lock().visible_seq()
    }

    /// Bytes of write-ahead log since the last snapshot (0 in memory).
    #[getter]
    fn log_bytes(&self) -> u64 {
        self.lock().log_bytes()
    }

    /// Whether the engine has a data directory.
    #[getter]
    fn durable(&self) -> bool {
        self.lock().is_durable()
    }

    /// Writes a snapshot now: (generation, bytes, seconds).
    fn snapshot(&self, py: Python<'_>) -> PyResult<(u64, u64, f64)> {
        self.with(py, |e| {
            e.snapshot().map(|s| (s.generation, s.bytes, s.seconds))
        })
    }

    /// Flushes the write-ahead log to stable storage now.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |e| e.sync())
    }

    /// Stops the ticker, writes a final snapshot and releases the data
    /// directory. The engine stays readable but is no longer durable.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(move || drop(ticker));
        self.with(py, |e| e.close())
    }

    /// The engine's clock, ms since the epoch.
    #[getter]
    fn now_ms(&self) -> i64 {
        self.lock().now()
    }

    /// Sequence number of the last change.
    #[getter]
    fn last_seq(&self) -> u64 {
        self.lock().last_seq()
    }

    /// Number of profiles.
    #[getter]
    fn user_count(&self) -> usize {
        self.lock().user_count()
    }

    #[pyo3(signature = (user_id, traits_json, timestamp_ms=None))]
    fn identify(
        &self,
        py: Python<'_>,
        user_id: String,
        traits_json: Vec<u8>,
        timestamp_ms: Option<i64>,
    ) -> PyResult<Report> {
        self.ingest_with(py, move |e| {
            let traits = json_object(Some(&traits_json), "traits")?.unwrap_or_default();
            let traits = flatten_traits(&traits, &e.config().limits)?;
            e.config().limits.check_key("user id", &user_id)?;
            let event = Event {
                user_id,
                timestamp: timestamp_ms,
                message_id: None,
                body: EventBody::Identify { traits },
            };
            e.apply(event)
        })
    }

    #[pyo3(signature = (user_id, event, properties_json=None, context_json=None, timestamp_ms=None, message_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn track(
        &self,
        py: Python<'_>,
        user_id: String,
        event: String,
        properties_json: Option<Vec<u8>>,
        context_json: Option<Vec<u8>>,
        timestamp_ms: Option<i64>,
        message_id: Option<String>,
    ) -> PyResult<Report> {
        self.ingest_with(py, move |e| {
            let limits = &e.config().limits;
            check_names(limits, [("user id", &user_id), ("event name", &event)])?;
            let properties = json_object(properties_json.as_deref(), "properties")?;
            let context = json_object(context_json.as_deref(), "context")?;
            let properties = flatten_properties(properties.as_ref(), context.as_ref(), limits)?;
            let mut ev = Event::track(user_id, &event, properties, timestamp_ms);
            ev.message_id = message_id;
            e.apply(ev)
        })
    }

    #[pyo3(signature = (previous_id, user_id, timestamp_ms=None, message_id=None))]
    fn alias(
        &self,
        py: Python<'_>,
        previous_id: String,
        user_id: String,
        timestamp_ms: Option<i64>,
        message_id: Option<String>,
    ) -> PyResult<Report> {
        self.ingest_with(py, move |e| {
            let limits = &e.config().limits;
            check_names(
                limits,
                [("user id", &user_id), ("previous id", &previous_id)],
            )?;
            e.apply(Event {
                user_id,
                timestamp: timestamp_ms,
                message_id,
                body: EventBody::Alias { previous_id },
            })
        })
    }

    /// Decodes and applies a JSON batch; per-event errors by index.
    fn ingest_json(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<Report> {
        let events = self.decode_detached(py, move |decoder| decoder.json(&data))?;
        self.ingest_with(py, move |e| e.ingest(events))
    }

    /// Applies the events of an Arrow stream (an object with
    /// `__arrow_c_stream__`, such as a pyarrow Table or RecordBatchReader) in
    /// pieces of at most `chunk_rows` rows, each converted outside the engine
    /// lock, all with the GIL released; per-row errors by row index in the
    /// stream. An engine error stops there (earlier pieces stay applied).
    #[pyo3(signature = (stream, chunk_rows=100_000))]
    fn ingest_arrow(
        &self,
        py: Python<'_>,
        stream: &Bound<'_, PyAny>,
        chunk_rows: usize,
    ) -> PyResult<Report> {
        if chunk_rows == 0 {
            return Err(to_py(SegmintError::InvalidArgument {
                message: "chunk_rows must be positive".into(),
            }));
        }
        let reader = RecordBatchStreamReader::from_pyarrow_bound(stream).map_err(|e| {
            InvalidArgumentError::new_err(format!(
                "invalid argument: expected an Arrow stream (__arrow_c_stream__): {e}"
            ))
        })?;
        arrow::check_schema(&reader.schema()).map_err(to_py)?;
        let run = || -> Result<IngestReport, SegmintError> {
            // Rows are converted on the engine's threads, outside its lock.
            let decoder = self.lock().decoder();
            let mut total = IngestReport::default();
            let mut first_row = 0usize;
            let mut applied = false;
            for batch in reader {
                let batch = batch.map_err(|e| SegmintError::InvalidArgument {
                    message: format!("reading the Arrow stream: {e}"),
                })?;
                let mut start = 0;
                while start < batch.num_rows() {
                    let len = chunk_rows.min(batch.num_rows() - start);
                    let events = arrow::batch_events(&batch.slice(start, len), &decoder)?;
                    let r = self.ingest_detached(events)?;
                    applied = true;
                    total.accepted += r.accepted;
                    total.duplicates += r.duplicates;
                    total.changes += r.changes;
                    total.last_seq = r.last_seq;
                    total.errors.extend(
                        r.errors
                            .into_iter()
                            .map(|(i, e)| (first_row + start + i, e)),
                    );
                    start += len;
                }
                first_row += batch.num_rows();
            }
            if !applied {
                total.last_seq = self.lock().last_seq();
            }
            Ok(total)
        };
        let r = py.detach(|| unwound("engine", run))?.map_err(to_py)?;
        Ok(report(r))
    }

    /// Decodes (outside the engine lock) and applies a serialized protobuf
    /// `segmint.v1.EventBatch`; per-event errors by index.
    fn ingest_proto(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<Report> {
        let (_, events) = self.decode_detached(py, move |decoder| decoder.proto(&data))?;
        self.ingest_with(py, move |e| e.ingest(events))
    }

    fn define_audience(&self, py: Python<'_>, key: String, rule: String) -> PyResult<u64> {
        self.with(py, move |e| e.define_audience(&key, &rule))
    }

    /// Defines many audiences with one backfill; raises with the failing index in the message.
    fn define_audiences(&self, py: Python<'_>, items: Vec<(String, String)>) -> PyResult<Vec<u64>> {
        let refs: Vec<(&str, &str)> = items
            .iter()
            .map(|(k, r)| (k.as_str(), r.as_str()))
            .collect();
        let outcome = py.detach(|| {
            let mut engine = self.lock();
            unwound("engine", || engine.define_audiences(&refs))
        })?;
        outcome.map_err(|(i, e)| item_to_py(i, refs.get(i).map(|(key, _)| *key), e))
    }

    /// Defines (or replaces) a static audience from a list of user ids.
    fn define_static_audience(
        &self,
        py: Python<'_>,
        key: String,
        user_ids: Vec<String>,
    ) -> PyResult<u64> {
        self.with(py, move |e| {
            let refs: Vec<&str> = user_ids.iter().map(String::as_str).collect();
            e.define_static_audience(&key, &refs)
        })
    }

    fn remove_audience(&self, py: Python<'_>, key: String) -> PyResult<()> {
        self.with(py, move |e| e.remove_audience(&key))
    }

    /// Defines (or replaces) a computed trait; returns how many profiles have a value.
    fn define_computed_trait(&self, py: Python<'_>, key: String, expr: String) -> PyResult<u64> {
        self.with(py, move |e| e.define_computed_trait(&key, &expr))
    }

    /// Removes a computed trait (an error naming the rules that read it).
    fn remove_computed_trait(&self, py: Python<'_>, key: String) -> PyResult<()> {
        self.with(py, move |e| e.remove_computed_trait(&key))
    }

    /// Defined computed traits as (key, expression, type name), in definition order.
    fn computed_traits(&self) -> Vec<(String, String, &'static str)> {
        self.lock().computed_traits()
    }

    /// A user's value of a computed trait as JSON text (`null` when absent).
    fn computed_value_json(&self, user_id: &str, key: &str) -> PyResult<String> {
        let v = self.lock().computed_value(user_id, key).map_err(to_py)?;
        Ok(value_json(v.as_ref()).unwrap_or_else(|| "null".into()))
    }

    fn audiences(&self) -> Vec<String> {
        self.lock().audiences()
    }

    fn rule(&self, key: &str) -> PyResult<String> {
        self.lock().rule(key).map_err(to_py)
    }

    fn is_member(&self, user_id: &str, key: &str) -> PyResult<bool> {
        self.lock().is_member(user_id, key).map_err(to_py)
    }

    fn is_member_many(
        &self,
        py: Python<'_>,
        user_ids: Vec<String>,
        key: String,
    ) -> PyResult<Vec<bool>> {
        self.with(py, move |e| {
            e.is_member_many(user_ids.iter().map(String::as_str), &key)
        })
    }

    fn audiences_of(&self, user_id: &str) -> Vec<String> {
        self.lock().audiences_of(user_id)
    }

    fn entered_at_ms(&self, user_id: &str, key: &str) -> PyResult<Option<i64>> {
        self.lock().entered_at(user_id, key).map_err(to_py)
    }

    fn members(&self, py: Python<'_>, key: String) -> PyResult<Vec<String>> {
        self.with(py, move |e| e.members(&key))
    }

    fn size(&self, key: &str) -> PyResult<u64> {
        self.lock().size(key).map_err(to_py)
    }

    /// Members as a roaring bitmap in the portable format, and the external
    /// ids of the dense ids it holds (in ascending id order).
    fn bitmap<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, move |e| portable(&e.bitmap(&key)?))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The portable bitmap and every member's external id in dense-id
    /// order (for the gRPC response, which carries the id table).
    fn bitmap_with_ids<'py>(
        &self,
        py: Python<'py>,
        key: String,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<String>)> {
        let (bytes, ids) = self.with(py, move |e| {
            let bitmap = e.bitmap(&key)?;
            let bytes = portable(&bitmap)?;
            let ids = bitmap
                .iter()
                .map(|uid| e.user_id(uid).unwrap_or_default().to_owned())
                .collect();
            Ok((bytes, ids))
        })?;
        Ok((PyBytes::new(py, &bytes), ids))
    }

    /// External ids of dense ids given as little-endian u32 bytes, in order.
    fn user_ids(&self, py: Python<'_>, dense_le_u32: Vec<u8>) -> PyResult<Vec<String>> {
        self.with(py, move |e| {
            dense_le_u32
                .chunks_exact(4)
                .map(|b| {
                    let uid = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    e.user_id(uid)
                        .map(str::to_owned)
                        .ok_or_else(|| SegmintError::InvalidArgument {
                            message: format!("dense id {uid} was never assigned"),
                        })
                })
                .collect()
        })
    }

    /// The dense id of an external id, or None if never seen.
    fn dense_id(&self, user_id: &str) -> Option<u32> {
        self.lock().dense_id(user_id)
    }

    /// Changes after `since_seq`: (seq, audience, user_id, entered, at_ms,
    /// reason, computed); `computed` is (key, old JSON, new JSON) for a
    /// computed-trait change (then audience is empty), else None.
    #[pyo3(signature = (since_seq=0, limit=None))]
    fn changes(
        &self,
        py: Python<'_>,
        since_seq: u64,
        limit: Option<usize>,
    ) -> PyResult<Vec<ChangeRow>> {
        self.with(py, move |e| {
            Ok(e.changes(since_seq, limit.unwrap_or(usize::MAX))?
                .into_iter()
                .map(|c| {
                    (
                        c.seq,
                        c.audience.to_string(),
                        c.user_id.to_string(),
                        c.entered,
                        c.at,
                        c.reason.as_str(),
                        c.computed.map(|cc| {
                            (
                                cc.key.to_string(),
                                value_json(cc.old.as_ref()),
                                value_json(cc.new.as_ref()),
                            )
                        }),
                    )
                })
                .collect())
        })
    }

    /// `explain(user, audience)` as JSON bytes (see segmint_core::inspect::Explanation).
    fn explain_json<'py>(
        &self,
        py: Python<'py>,
        user_id: String,
        key: String,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, move |e| Ok(to_json(&e.explain(&user_id, &key)?)))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// `preview(rule, replacing, limit)` as JSON bytes.
    #[pyo3(signature = (rule, replacing=None, limit=100))]
    fn preview_json<'py>(
        &self,
        py: Python<'py>,
        rule: String,
        replacing: Option<String>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, move |e| {
            Ok(to_json(&e.preview(&rule, replacing.as_deref(), limit)?))
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// `overlap(keys)` as JSON bytes.
    fn overlap_json<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<String>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, move |e| {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            Ok(to_json(&e.overlap(&refs)?))
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// `profile(user)` as JSON bytes.
    fn profile_json<'py>(&self, py: Python<'py>, user_id: String) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, move |e| Ok(to_json(&e.profile(&user_id)?)))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Manual clock: moves time to `to_ms`; returns the number of changes.
    fn advance(&self, py: Python<'_>, to_ms: i64) -> PyResult<usize> {
        self.with(py, move |e| e.advance(to_ms))
    }

    /// Wall clock: fires due timers now; returns the number of changes.
    fn tick(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |e| e.tick())
    }

    /// A user's traits as JSON bytes, or None for an unknown user.
    fn traits_json<'py>(&self, py: Python<'py>, user_id: &str) -> Option<Bound<'py, PyBytes>> {
        let traits = self.lock().traits(user_id)?;
        let map: serde_json::Map<String, serde_json::Value> =
            traits.into_iter().map(|(k, v)| (k, v.to_json())).collect();
        let bytes = serde_json::to_vec(&map).unwrap_or_default();
        Some(PyBytes::new(py, &bytes))
    }

    /// Counters: users, audiences, shards, timers, approximate heap bytes, last seq.
    fn stats(&self) -> Vec<(&'static str, u64)> {
        let e = self.lock();
        vec![
            ("users", e.user_count() as u64),
            ("audiences", e.audiences().len() as u64),
            ("shards", e.shard_count() as u64),
            ("pending_timers", e.pending_timers() as u64),
            ("heap_bytes", e.heap_bytes() as u64),
            ("change_log_bytes", e.change_log_bytes() as u64),
            ("last_seq", e.last_seq()),
        ]
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Engine>()?;
    // Each class with its `code`, and `index` None: what an error raised
    // without them (by the Python layer, or a caught panic) reads; `to_py`
    // sets both on every error it makes.
    let classes = [
        ("SegmintError", py.get_type::<PySegmintError>(), "internal"),
        ("RuleError", py.get_type::<RuleError>(), "rule"),
        (
            "RuleSyntaxError",
            py.get_type::<RuleSyntaxError>(),
            "rule_syntax",
        ),
        ("RuleTypeError", py.get_type::<RuleTypeError>(), "rule_type"),
        (
            "UnknownAudienceError",
            py.get_type::<UnknownAudienceError>(),
            "unknown_audience",
        ),
        (
            "UnknownComputedTraitError",
            py.get_type::<UnknownComputedTraitError>(),
            "unknown_computed_trait",
        ),
        (
            "UnknownUserError",
            py.get_type::<UnknownUserError>(),
            "unknown_user",
        ),
        (
            "AudienceCycleError",
            py.get_type::<AudienceCycleError>(),
            "audience_cycle",
        ),
        ("InUseError", py.get_type::<InUseError>(), "in_use"),
        (
            "InvalidEventError",
            py.get_type::<InvalidEventError>(),
            "invalid_event",
        ),
        (
            "LimitExceededError",
            py.get_type::<LimitExceededError>(),
            "limit_exceeded",
        ),
        (
            "InvalidArgumentError",
            py.get_type::<InvalidArgumentError>(),
            "invalid_argument",
        ),
        ("StorageError", py.get_type::<StorageError>(), "storage"),
        (
            "CorruptDataError",
            py.get_type::<CorruptDataError>(),
            "corrupt_data",
        ),
    ];
    for (name, class, code) in classes {
        class.setattr("code", code)?;
        m.add(name, class)?;
    }
    py.get_type::<PySegmintError>()
        .setattr("index", py.None())?;
    Ok(())
}
