//! A background thread that fires the wall clock's timers once per period,
//! so time-based changes happen without traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::Engine;

/// Stops its thread when dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Ticks `engine` every `period` until dropped.
    pub fn start(engine: Arc<Mutex<Engine>>, period: Duration) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("segmint-ticker".into())
            .spawn(move || {
                // Sleep in short steps so that dropping the ticker is prompt.
                let step = period.min(Duration::from_millis(50));
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited >= period {
                        waited = Duration::ZERO;
                        if let Ok(mut e) = engine.lock() {
                            // A failure to log the tick resurfaces at the next operation.
                            let _ = e.tick();
                        }
                    }
                }
            })
            .ok();
        Ticker { stop, handle }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
