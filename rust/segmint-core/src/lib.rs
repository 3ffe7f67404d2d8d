//! segmint-core: a real-time audience segmentation engine.
//!
//! Events stream in ([`Engine::ingest`]); the engine keeps per user only the
//! aggregation state its rules need, keeps every audience as a roaring
//! bitmap, re-evaluates only the rules an event can affect, and logs every
//! membership change with a gap-free sequence number — including the ones
//! time alone causes ([`Engine::advance`], [`Engine::tick`]).
//!
//! ```
//! use segmint_core::{Clock, Engine, EngineConfig};
//!
//! let mut engine = Engine::new(EngineConfig { clock: Clock::Manual(0), ..Default::default() }).unwrap();
//! engine.define_audience("buyers", r#"count("Order Completed", 1h) >= 1"#).unwrap();
//! engine
//!     .ingest_json(br#"[{"type": "track", "userId": "u1", "event": "Order Completed"}]"#)
//!     .unwrap();
//! assert!(engine.is_member("u1", "buyers").unwrap());
//! engine.advance(3_600_000).unwrap(); // one hour later the window has lapsed
//! assert!(!engine.is_member("u1", "buyers").unwrap());
//! assert_eq!(engine.last_seq(), 2);
//! ```
pub mod audience_list;
pub mod catalog;
mod changelog;
pub mod decoder;
pub mod dedup;
pub mod durable;
pub mod engine;
pub mod error;
pub mod eval;
pub mod event;
pub mod first_identify;
mod fold_cache;
pub mod inspect;
pub mod limits;
pub mod members;
mod merge;
pub mod pages;
pub mod profile;
pub mod queue;
pub mod rules;
pub mod shard;
pub mod state;
pub mod storage;
mod thin_box;
pub mod ticker;
pub mod time;
pub mod trait_truths;
pub mod traits;
pub mod value;
pub mod wire;

pub use durable::{RecoveryInfo, SnapshotInfo};
pub use engine::{Change, Clock, ComputedChange, Engine, EngineConfig, IngestReport};
pub use error::{Result, RuleError, SegmintError};
pub use event::{Event, EventBody};
pub use shard::Reason;
pub use storage::{FsyncPolicy, StorageConfig, SyncHandle};
pub use value::Value;

/// Cases a proptest of this crate runs: `PROPTEST_CASES` when set, else
/// `default` (`ProptestConfig::with_cases` on its own ignores the variable).
#[cfg(test)]
pub(crate) fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
