//! Batch decoding on the engine's threads.
//!
//! A batch is cut into its events' texts on one thread (a walk that does
//! not decode them) and the events are decoded in parallel on the engine's
//! pool: decoding is per event and independent, and on one thread it was
//! a serial step of every batch of `ingest(bytes)` and of gRPC ingest.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::Result;
use crate::event::{event_from_slice, json_batch_items, Event};
use crate::limits::Limits;
use crate::wire::{decode_event, proto_batch_items};

/// Fewest events a batch needs for its decoding to go to the pool: waking
/// the threads costs more than decoding a handful.
const PARALLEL_DECODE_MIN: usize = 256;

/// Events handed to one task at least.
const DECODE_TASK_MIN: usize = 64;

/// Decodes batches for an engine, on its threads and under its limits;
/// holds no lock on the engine (see [`crate::engine::Engine::decoder`]).
#[derive(Clone)]
pub struct Decoder {
    pool: Arc<rayon::ThreadPool>,
    limits: Limits,
}

impl Decoder {
    /// A decoder using `pool` under `limits`.
    pub(crate) fn new(pool: Arc<rayon::ThreadPool>, limits: Limits) -> Decoder {
        Decoder { pool, limits }
    }

    /// The limits it decodes under (the engine's).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// [`crate::event::decode_json_batch`], the events decoded in parallel.
    pub fn json(&self, bytes: &[u8]) -> Result<Vec<Result<Event>>> {
        let items = json_batch_items(bytes, &self.limits)?;
        Ok(self.each(&items, |text| event_from_slice(text, &self.limits)))
    }

    /// [`crate::wire::decode_proto_batch`], the events decoded in parallel.
    pub fn proto(&self, bytes: &[u8]) -> Result<(u64, Vec<Result<Event>>)> {
        let (batch_id, items) = proto_batch_items(bytes, &self.limits)?;
        Ok((
            batch_id,
            self.each(&items, |item| decode_event(item, &self.limits)),
        ))
    }

    /// `decode` applied to each item, in order.
    fn each(
        &self,
        items: &[&[u8]],
        decode: impl Fn(&[u8]) -> Result<Event> + Sync,
    ) -> Vec<Result<Event>> {
        self.decode_each(items.len(), |i| decode(items[i]))
    }

    /// `decode(i)` for each `i` in `0..n`, in order: on the pool from
    /// [`PARALLEL_DECODE_MIN`] items on. For callers whose items are their
    /// own (the extension's Arrow rows).
    pub fn decode_each(
        &self,
        n: usize,
        decode: impl Fn(usize) -> Result<Event> + Sync,
    ) -> Vec<Result<Event>> {
        if n < PARALLEL_DECODE_MIN || self.pool.current_num_threads() == 1 {
            return (0..n).map(decode).collect();
        }
        self.pool.install(|| {
            (0..n)
                .into_par_iter()
                .with_min_len(DECODE_TASK_MIN)
                .map(&decode)
                .collect()
        })
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("threads", &self.pool.current_num_threads())
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::event::decode_json_batch;
    use crate::wire::{decode_proto_batch, Body, EventBatch, Track, WireEvent};

    fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
        Arc::new(pool.unwrap())
    }

    /// Results as comparable text (errors have no `PartialEq`).
    fn shown(events: &[Result<Event>]) -> Vec<String> {
        events.iter().map(|e| format!("{e:?}")).collect()
    }

    /// In parallel or not, a batch decodes to the events (and the errors,
    /// at their indexes) the one-thread decoding gives.
    #[test]
    fn decodes_as_one_thread_does_with_errors_in_place() {
        let lines: Vec<String> = (0..1_000)
            .map(|i| match i % 97 {
                0 => "{not json".to_owned(),
                1 => r#"{"type":"track","event":"X"}"#.to_owned(),
                _ => format!(
                    r#"{{"type":"track","userId":"u{i}","event":"E{}","properties":{{"n":{i},"a":{{"b":"x"}}}}}}"#,
                    i % 7
                ),
            })
            .collect();
        let ndjson = lines.join("\n");
        let array = format!(
            "[{}]",
            lines
                .iter()
                .filter(|l| !l.starts_with("{not"))
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        );
        let limits = Limits::default();
        for threads in [1, 3] {
            let decoder = Decoder::new(pool(threads), limits.clone());
            for text in [&ndjson, &array] {
                let parallel = decoder.json(text.as_bytes()).unwrap();
                let serial = decode_json_batch(text.as_bytes(), &limits).unwrap();
                assert_eq!(parallel.len(), serial.len());
                assert!(parallel.iter().any(Result::is_err));
                assert_eq!(shown(&parallel), shown(&serial));
            }
            let events = (0..1_000)
                .map(|i| WireEvent {
                    user_id: if i % 89 == 0 {
                        String::new()
                    } else {
                        format!("u{i}")
                    },
                    body: Some(Body::Track(Track {
                        event: format!("E{}", i % 5),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect();
            let bytes = EventBatch {
                batch_id: 9,
                events,
            }
            .encode_to_vec();
            let (id, parallel) = decoder.proto(&bytes).unwrap();
            let (serial_id, serial) = decode_proto_batch(&bytes, &limits).unwrap();
            assert_eq!((id, parallel.len()), (serial_id, 1_000));
            assert_eq!(shown(&parallel), shown(&serial));
            assert!(decoder.json(b"[1,").is_err());
            assert!(decoder.proto(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
