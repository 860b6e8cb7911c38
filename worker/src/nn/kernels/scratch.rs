//! Per-thread pool of the large buffers of MoE layers, so that every layer and step reuses
//! memory that is already mapped.

thread_local! {
    /// Large buffers of the calling thread's MoE layers, kept between layers and steps.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The pool keeps at most this many floats (64 MiB) per thread.
const POOL_MAX_FLOATS: usize = 1 << 24;

/// A scratch buffer from the calling thread's pool, returned to it on drop. A fresh
/// allocation of tens of megabytes costs a page fault per 4 KiB on first touch (8% of a
/// 1024-token MoE layer, by perf); reused buffers are already mapped. Contents are
/// unspecified: users write before they read.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    pub(crate) fn take(len: usize) -> Self {
        let mut v = POOL
            .with(|p| {
                let mut p = p.borrow_mut();
                let best = (0..p.len()).max_by_key(|&i| p[i].capacity())?;
                Some(p.swap_remove(best))
            })
            .unwrap_or_default();
        v.resize(len, 0.0);
        Scratch(v)
    }

    /// The buffer, leaving the pool for good (it becomes a tensor's storage).
    pub(crate) fn into_inner(mut self) -> Vec<f32> {
        std::mem::take(&mut self.0)
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        // `try_with`: during thread teardown the pool may be gone; then the buffer is freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            let held: usize = p.iter().map(Vec::capacity).sum();
            if held + v.capacity() <= POOL_MAX_FLOATS {
                p.push(v);
            }
        });
    }
}
