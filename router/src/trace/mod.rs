//! Expert-selection trace recording in the running server.
//!
//! The router owns requests, so it owns their traces: it decides per request whether to trace
//! ([`TraceSampler`], deterministic in the request id), asks the workers to capture the routing
//! of traced sequences only (`SeqChunk.trace`), assembles what each step returns into the
//! request's [`moeflow_trace::RequestTrace`] ([`TraceAssembler`]) and, when the request ends
//! (finished, aborted, failed), hands it to the [`TraceRecorder`], whose writer thread feeds
//! the [`TraceSink`]s off the serving path.

mod assemble;
mod recorder;
mod sample;
mod sink;

pub use assemble::{AssembleError, TraceAssembler};
pub use recorder::{RecorderError, SinkError, TraceRecorder, TraceSink};
pub use sample::{SampleFractionError, TraceSampler};
pub use sink::{open_sinks, BinarySink, PaperTreeSink, BINARY_FILE, PAPER_DIR};
