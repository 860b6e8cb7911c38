//! Writes finished request traces off the serving path.
//!
//! The scheduler hands each finished trace to [`TraceRecorder::record`], which never blocks:
//! the trace goes over a bounded channel to one writer thread that feeds every
//! [`TraceSink`]. When the channel is full (the disk cannot keep up), the trace is dropped and
//! counted in `moeflow:trace_dropped_total`, so recording can slow nothing but itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use moeflow_trace::RequestTrace;

use super::TraceSampler;

/// Why a sink could not write; the recorder logs it and counts it, serving goes on.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One output of the recorder (a trace format on disk).
pub trait TraceSink: Send {
    /// Short name for logs and metrics (`paper-json`, `mfbin`).
    fn name(&self) -> &str;
    fn write(&mut self, trace: &RequestTrace) -> Result<(), SinkError>;
    /// Completes the output (footers, flushes); called once, at shutdown.
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// Why the recorder did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the trace writer thread: {0}")]
pub struct RecorderError(#[from] std::io::Error);

enum Msg {
    Trace(Box<RequestTrace>),
    Close,
}

struct Inner {
    tx: SyncSender<Msg>,
    sampler: TraceSampler,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The router's handle to the trace writer; cheap to clone.
#[derive(Clone)]
pub struct TraceRecorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TraceRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceRecorder")
            .field("sample", &self.inner.sampler.fraction())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl TraceRecorder {
    /// Starts the writer thread; at most `capacity` finished traces wait for it.
    pub fn start(
        sampler: TraceSampler,
        mut sinks: Vec<Box<dyn TraceSink>>,
        capacity: usize,
    ) -> Result<Self, RecorderError> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(capacity.max(1));
        let writer = std::thread::Builder::new()
            .name("moeflow-trace-writer".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::Trace(t) => {
                            for s in sinks.iter_mut() {
                                if let Err(e) = s.write(&t) {
                                    tracing::warn!(sink = s.name(), request = %t.id, error = %e, "trace not written");
                                    metrics::counter!("moeflow:trace_write_errors_total", "sink" => s.name().to_string())
                                        .increment(1);
                                }
                            }
                            metrics::counter!("moeflow:traces_recorded_total").increment(1);
                        }
                        Msg::Close => break,
                    }
                }
                for s in sinks.iter_mut() {
                    if let Err(e) = s.finish() {
                        tracing::warn!(sink = s.name(), error = %e, "trace output not completed");
                        metrics::counter!("moeflow:trace_write_errors_total", "sink" => s.name().to_string())
                            .increment(1);
                    }
                }
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                sampler,
                dropped: AtomicU64::new(0),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Whether the request with this id is traced.
    pub fn sampled(&self, request_id: &str) -> bool {
        self.inner.sampler.sampled(request_id)
    }

    /// Queues a finished trace for writing; never blocks. A full queue or a stopped writer
    /// drops the trace and counts it.
    pub fn record(&self, trace: RequestTrace) {
        let reason = match self.inner.tx.try_send(Msg::Trace(Box::new(trace))) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            Err(TrySendError::Disconnected(_)) => "writer_stopped",
        };
        self.count_drop(reason);
    }

    /// Counts a trace dropped before it reached the queue (e.g. inconsistent routing).
    pub fn count_drop(&self, reason: &'static str) {
        self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("moeflow:trace_dropped_total", "reason" => reason).increment(1);
    }

    /// Traces dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Writes what is queued, completes every sink and stops the writer; later traces are
    /// dropped. Blocks until done: call it at shutdown, after draining.
    pub fn close(&self) {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = writer {
            // Blocking send: everything queued before is written first.
            let _ = self.inner.tx.send(Msg::Close);
            if w.join().is_err() {
                tracing::error!("the trace writer thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;

    /// A sink that hands each trace id to the test and waits for permission to go on, so the
    /// test controls how far behind the writer is.
    struct Gated {
        seen: SyncSender<String>,
        go: Receiver<()>,
        finished: Arc<AtomicU64>,
    }

    impl TraceSink for Gated {
        fn name(&self) -> &str {
            "gated"
        }
        fn write(&mut self, t: &RequestTrace) -> Result<(), SinkError> {
            let _ = self.seen.send(t.id.clone());
            self.go.recv().map_err(|e| e.into())
        }
        fn finish(&mut self) -> Result<(), SinkError> {
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn trace(id: &str) -> RequestTrace {
        RequestTrace {
            id: id.into(),
            workload: None,
            prompt_len: 1,
            started_ms: None,
            finished_ms: None,
            iterations: Vec::new(),
        }
    }

    #[test]
    fn a_slow_writer_drops_traces_instead_of_blocking() {
        let (seen_tx, seen) = mpsc::sync_channel(16);
        let (go, go_rx) = mpsc::sync_channel(16);
        let finished = Arc::new(AtomicU64::new(0));
        let sink = Gated {
            seen: seen_tx,
            go: go_rx,
            finished: finished.clone(),
        };
        let r =
            TraceRecorder::start(TraceSampler::new(1.0).unwrap(), vec![Box::new(sink)], 2).unwrap();
        r.record(trace("a"));
        // The writer holds "a" inside the sink: the queue has room for two more, then drops.
        assert_eq!(seen.recv().unwrap(), "a");
        r.record(trace("b"));
        r.record(trace("c"));
        r.record(trace("d"));
        r.record(trace("e"));
        assert_eq!(r.dropped(), 2);
        for _ in 0..3 {
            go.send(()).unwrap();
        }
        assert_eq!(seen.recv().unwrap(), "b");
        assert_eq!(seen.recv().unwrap(), "c");
        r.close();
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        r.record(trace("f"));
        assert_eq!(r.dropped(), 3);
        // Closing twice is harmless.
        r.close();
    }
}
