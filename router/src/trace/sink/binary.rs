//! moeflow's binary columnar format: every request as one compressed block with its
//! metadata and gate weights, for traces too large for JSON.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use moeflow_trace::io::binary::BinaryWriter;
use moeflow_trace::io::WriteError;
use moeflow_trace::{ModelShape, RequestTrace};

use crate::trace::{SinkError, TraceSink};

/// Appends one flushed block per request to one file; the end block is written at shutdown
/// (a reader accepts a file without it, e.g. after a crash).
pub struct BinarySink {
    writer: Option<BinaryWriter<BufWriter<File>>>,
}

impl BinarySink {
    /// Creates (truncates) `path` and writes the header.
    pub fn create(path: &Path, shape: &ModelShape) -> Result<Self, WriteError> {
        Ok(Self {
            writer: Some(BinaryWriter::create(path, shape)?),
        })
    }
}

impl TraceSink for BinarySink {
    fn name(&self) -> &str {
        "mfbin"
    }

    fn write(&mut self, trace: &RequestTrace) -> Result<(), SinkError> {
        match self.writer.as_mut() {
            Some(w) => {
                w.append(trace)?;
                Ok(())
            }
            None => Err("the binary trace file is already complete".into()),
        }
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        Ok(())
    }
}
