//! The trace files `--trace-dir` writes, one [`TraceSink`](super::TraceSink) per format, both
//! written by the `moeflow-trace` writers so that every reader of those formats reads them.

mod binary;
mod paper;

use std::path::Path;

use moeflow_trace::io::WriteError;
use moeflow_trace::ModelShape;

pub use binary::BinarySink;
pub use paper::PaperTreeSink;

/// Folder of the paper's JSON tree under the trace directory.
pub const PAPER_DIR: &str = "paper";
/// The binary columnar file under the trace directory.
pub const BINARY_FILE: &str = "trace.mfbin";

/// Both outputs under `dir`: the paper's JSON tree (`dir/paper/<org>/<model>/...`) and the
/// binary file `dir/trace.mfbin` (created, or truncated, now).
pub fn open_sinks(
    dir: &Path,
    model_id: &str,
    shape: &ModelShape,
) -> Result<Vec<Box<dyn super::TraceSink>>, WriteError> {
    Ok(vec![
        Box::new(PaperTreeSink::new(&dir.join(PAPER_DIR), model_id, shape)?),
        Box::new(BinarySink::create(&dir.join(BINARY_FILE), shape)?),
    ])
}
