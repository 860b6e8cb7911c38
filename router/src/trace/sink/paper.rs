//! The paper's public layout: one JSON file per request (element 0 the prefill, then one
//! element per decode step), so that existing tools read moeflow's traces.

use std::path::Path;

use moeflow_trace::io::paper::PaperTreeWriter;
use moeflow_trace::io::WriteError;
use moeflow_trace::{ModelShape, RequestTrace};

use crate::trace::{SinkError, TraceSink};

/// Writes `<root>/<org>/<model>/<benchmark>/<subject>/<request id>.json`, the workload label
/// giving benchmark and subject.
pub struct PaperTreeSink {
    writer: PaperTreeWriter,
}

impl PaperTreeSink {
    /// `model_id` is the served model's name (`org/model`, or a bare name under `moeflow/`).
    pub fn new(root: &Path, model_id: &str, shape: &ModelShape) -> Result<Self, WriteError> {
        Ok(Self {
            writer: PaperTreeWriter::new(root, model_id, shape)?,
        })
    }
}

impl TraceSink for PaperTreeSink {
    fn name(&self) -> &str {
        "paper-json"
    }

    fn write(&mut self, trace: &RequestTrace) -> Result<(), SinkError> {
        let w = self.writer.write(trace)?;
        if w.dropped_tokens > 0 || w.dropped_iterations > 0 {
            tracing::debug!(
                request = %trace.id,
                tokens = w.dropped_tokens,
                iterations = w.dropped_iterations,
                "the paper layout left out partially captured tokens"
            );
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        // Every file is complete when written (written aside, then renamed).
        Ok(())
    }
}
