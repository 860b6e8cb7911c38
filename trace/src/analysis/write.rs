//! Writes every output of a report into one folder: the JSON, the Markdown and the SVG
//! plots it links to. The renderers only read the report; this is where they meet.

use std::path::{Path, PathBuf};

use super::markdown::render_markdown;
use super::plot::draw_plots;
use super::report::AnalysisReport;
use super::AnalysisError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AnalysisError + '_ {
    move |source| AnalysisError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `report.json`, `report.md` and the SVG plots into `out_dir` (created if missing);
/// returns the paths written.
pub fn write_report(
    report: &AnalysisReport,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, AnalysisError> {
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let mut written = Vec::new();
    let json = out_dir.join("report.json");
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(&json, text).map_err(io_err(&json))?;
    written.push(json);
    let plots = draw_plots(report, out_dir)?;
    let md = out_dir.join("report.md");
    let names: Vec<String> = plots
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    std::fs::write(&md, render_markdown(report, &names)).map_err(io_err(&md))?;
    written.push(md);
    written.extend(plots);
    Ok(written)
}
