//! Request ids: unique within a process and, through the start-time prefix, unlikely to repeat
//! across restarts (ids end up in traces and logs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn epoch_tag() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    *TAG.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            & 0xffff_ffff_ffff
    })
}

/// A fresh id such as `cmpl-5f3a2b1c9d0e-000000000007`.
pub(crate) fn new_request_id(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:012x}-{n:012}", epoch_tag())
}

/// Seconds since the Unix epoch, for OpenAI's `created` fields.
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique() {
        let a = super::new_request_id("cmpl");
        let b = super::new_request_id("cmpl");
        assert_ne!(a, b);
        assert!(a.starts_with("cmpl-"));
    }
}
