//! The stop signal shared by a communicator's background threads, so that dropping the
//! communicator ends them promptly instead of waiting out a sleep or a socket timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Control {
    stopping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Test hook: the rank stops reading and sending heartbeats, like a frozen process.
    #[cfg(test)]
    silent: AtomicBool,
}

impl Control {
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until stopped; returns whether the communicator is stopping.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_stopping() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .wake
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    #[cfg(test)]
    pub(crate) fn set_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_silent(&self) -> bool {
        #[cfg(test)]
        {
            self.silent.load(Ordering::SeqCst)
        }
        #[cfg(not(test))]
        {
            false
        }
    }
}
