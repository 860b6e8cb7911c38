//! The trace files `--trace-dir` writes, one [`TraceSink`](super::TraceSink) per format, both
//! written by the `moeflow-trace` writers so that every reader of those formats reads them.

mod binary;
mod paper;

use std::path::Path;

use moeflow_trace::io::WriteError;
use moeflow_trace::ModelShape;

pub use binary::BinarySink;
pub use paper::PaperTreeSink;

/// Folder of the paper's JSON tree and name of the binary file under the trace directory:
/// the trace crate's recording layout, which its readers recognise.
pub use moeflow_trace::io::recording::{BINARY_FILE, PAPER_DIR};

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
