//! Size limits on inputs, so that one bad request cannot exhaust memory.
//! Documented in docs/operations.md.

use crate::error::{Result, SegmintError};

/// Limits on input sizes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest serialized event (Segment's own limit is 32 KiB).
    pub max_event_bytes: usize,
    /// Largest JSON batch in bytes.
    pub max_batch_bytes: usize,
    /// Most properties (or traits) in one event, after flattening.
    pub max_properties: usize,
    /// Longest user id, event name, trait key or audience key, in bytes.
    pub max_key_bytes: usize,
    /// Longest rule text, in bytes.
    pub max_rule_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 64 * 1024 * 1024,
            max_properties: 512,
            max_key_bytes: 1024,
            max_rule_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// Checks a key-like string (user id, event name, key) against `max_key_bytes`.
    pub fn check_key(&self, what: &str, key: &str) -> Result<()> {
        self.check_key_named(key, || what.to_owned())
    }

    /// The same, with the name of what is checked made only when it fails
    /// (one of many, named by its position).
    pub fn check_key_named(&self, key: &str, what: impl FnOnce() -> String) -> Result<()> {
        if key.len() > self.max_key_bytes {
            return Err(SegmintError::LimitExceeded {
                what: what(),
                limit: self.max_key_bytes,
                actual: key.len(),
            });
        }
        Ok(())
    }
}
