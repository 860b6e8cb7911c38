//! The model shape of a source and where each part of it came from. Each format reads what
//! its first files say ([`ShapeEvidence`]); this module weighs that against the caller's
//! options and the built-in table of published models: options first, then the data, then a
//! known model found by name, and for the expert count last the highest id seen.

use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::Path;

use super::archive;
use super::detect::{Kind, Unit};
use super::{io_err, Format, Origin, ReadOptions, SourceError};
use crate::io::binary::BinaryReader;
use crate::io::evidence::{Layers, ShapeEvidence};
use crate::io::known_models::{self, KnownModel};
use crate::io::paper::ShapeScan;
use crate::io::{jsonl, sglang};
use crate::model::ModelShape;

/// A source's shape with the origin of its two numbers that formats may leave unsaid.
#[derive(Debug)]
pub(super) struct Shaped {
    pub(super) shape: ModelShape,
    pub(super) num_experts_origin: Origin,
    pub(super) top_k_origin: Origin,
    /// The `<org>/<model>` the paper tree names, against which every file is checked.
    pub(super) org_model: Option<String>,
}

/// Determines the shape of the source at `path`, whose files are `units` (all of `format`).
pub(super) fn infer(
    path: &Path,
    format: Format,
    units: &[Unit],
    root_components: &[String],
    opts: &ReadOptions,
) -> Result<Shaped, SourceError> {
    let shape_err = |reason: String| SourceError::shape(path, reason);
    let Some(first) = units.first() else {
        return Err(SourceError::Empty {
            path: path.to_path_buf(),
        });
    };
    let evidence = match format {
        Format::Binary => return binary_shape(first),
        Format::SglangCounts => {
            let bytes = std::fs::read(&first.path).map_err(io_err(&first.path))?;
            sglang::shape_evidence(&bytes, &first.path, first.rel_str()).map_err(|source| {
                SourceError::Format {
                    path: first.path.clone(),
                    source,
                }
            })?
        }
        Format::Jsonl => {
            let f = File::open(&first.path).map_err(io_err(&first.path))?;
            jsonl::shape_evidence(BufReader::new(f), &first.path)
                .ok_or_else(|| shape_err(format!("{}: no readable rows", first.path.display())))?
        }
        Format::PaperTree => paper_evidence(units, root_components, opts)?.map_err(shape_err)?,
    };
    if format == Format::SglangCounts {
        if let Some(e) = opts
            .num_experts
            .filter(|&e| Some(e) != evidence.num_experts)
        {
            return Err(shape_err(format!(
                "the option says {e} experts, {} lists {:?}",
                evidence.path.display(),
                evidence.num_experts
            )));
        }
    }
    let shaped = resolve(evidence, opts);
    // The paper tree alone warns of a guessed expert count and needs top_k (it is read per
    // token).
    if format == Format::PaperTree {
        if let Origin::Scanned { files } = shaped.num_experts_origin {
            tracing::warn!(
                num_experts = shaped.shape.num_experts,
                files,
                "expert count not stated: inferred as the highest id + 1; pass the expert count to be sure"
            );
        }
        if shaped.shape.top_k == 0 {
            return Err(shape_err(
                "no token states top_k; pass it as an option".into(),
            ));
        }
    }
    Ok(shaped)
}

/// A binary file states its whole shape; options cannot change it.
fn binary_shape(u: &Unit) -> Result<Shaped, SourceError> {
    let r = BinaryReader::open(&u.path).map_err(|source| SourceError::Format {
        path: u.path.clone(),
        source,
    })?;
    Ok(Shaped {
        shape: r.shape().clone(),
        num_experts_origin: Origin::Data,
        top_k_origin: Origin::Data,
        org_model: None,
    })
}

/// Scans the paper tree's first files and archives; the inner error is the reason no file
/// said anything.
fn paper_evidence(
    units: &[Unit],
    root_components: &[String],
    opts: &ReadOptions,
) -> Result<Result<ShapeEvidence, String>, SourceError> {
    let mut scan = ShapeScan::new(opts.num_experts.is_none());
    for u in units {
        let flow = match u.kind {
            Kind::TarGz => {
                let f = File::open(&u.path).map_err(io_err(&u.path))?;
                let walked = archive::for_each_json(f, &u.rel, |rel, bytes| {
                    if scan.visit(root_components, &u.path, rel, &bytes) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                // A damaged archive ends its part of the scan; the next file goes on.
                walked.unwrap_or(ControlFlow::Continue(()))
            }
            _ => {
                let bytes = std::fs::read(&u.path).map_err(io_err(&u.path))?;
                if scan.visit(root_components, &u.path, u.rel.clone(), &bytes) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
        };
        if flow.is_break() || scan.hopeless() {
            break;
        }
    }
    Ok(scan.finish())
}

/// Options first, then the data, then a known model, then (for the expert count) the highest
/// id seen.
fn resolve(ev: ShapeEvidence, opts: &ReadOptions) -> Shaped {
    let known = known_for(&ev.path, ev.model.as_deref());
    let num_layers = match ev.num_layers {
        Layers::Stated(n) => n,
        Layers::AtLeast(n) => known.map_or(0, |m| m.num_layers).max(n),
    };
    let (num_experts, num_experts_origin) = first_stated(
        opts.num_experts,
        ev.num_experts,
        known.map(|m| (m.name, m.num_experts)),
    )
    .or(ev.ids.map(|ids| {
        (
            ids.max_expert as usize + 1,
            Origin::Scanned { files: ids.files },
        )
    }))
    .unwrap_or((0, Origin::Unknown));
    let (top_k, top_k_origin) =
        first_stated(opts.top_k, ev.top_k, known.map(|m| (m.name, m.top_k)))
            .unwrap_or((0, Origin::Unknown));
    Shaped {
        shape: ModelShape {
            model: known.map(|m| m.name.to_string()).or(ev.model.clone()),
            num_layers,
            num_experts,
            top_k,
            moe_layers: ev.moe_layers,
        },
        num_experts_origin,
        top_k_origin,
        org_model: ev.model,
    }
}

/// The first of the options, the data and a known model (its name and value) that gives a
/// value, with where it came from.
fn first_stated(
    option: Option<usize>,
    data: Option<usize>,
    known: Option<(&'static str, usize)>,
) -> Option<(usize, Origin)> {
    option
        .map(|v| (v, Origin::Options))
        .or(data.map(|v| (v, Origin::Data)))
        .or(known.map(|(name, v)| (v, Origin::KnownModel(name))))
}

/// The known model a source names: by its `<org>/<model>` label, else by a path component.
fn known_for(path: &Path, org_model: Option<&str>) -> Option<&'static KnownModel> {
    org_model
        .and_then(|m| m.rsplit('/').next())
        .and_then(known_models::lookup)
        .or_else(|| known_models::find_in_path(path))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::io::evidence::IdScan;

    fn evidence(path: &str) -> ShapeEvidence {
        ShapeEvidence {
            path: PathBuf::from(path),
            model: None,
            num_layers: Layers::AtLeast(4),
            moe_layers: vec![1, 2, 3],
            num_experts: None,
            top_k: None,
            ids: Some(IdScan {
                max_expert: 9,
                files: 3,
            }),
        }
    }

    fn opts(num_experts: Option<usize>, top_k: Option<usize>) -> ReadOptions {
        ReadOptions {
            num_experts,
            top_k,
            ..ReadOptions::default()
        }
    }

    #[test]
    fn options_beat_data_beat_known_models_beat_scanned_ids() {
        let known = "/d/Mixtral-8x7B/rows.jsonl";
        let s = resolve(evidence("/d/x/rows.jsonl"), &opts(None, None));
        assert_eq!(s.num_experts_origin, Origin::Scanned { files: 3 });
        assert_eq!((s.shape.num_experts, s.shape.top_k), (10, 0));
        assert_eq!(s.top_k_origin, Origin::Unknown);

        let s = resolve(evidence(known), &opts(None, None));
        assert_eq!(
            s.num_experts_origin,
            Origin::KnownModel("mistralai/Mixtral-8x7B")
        );
        assert_eq!(
            (s.shape.num_experts, s.shape.top_k, s.shape.num_layers),
            (8, 2, 32)
        );
        assert_eq!(s.shape.model.as_deref(), Some("mistralai/Mixtral-8x7B"));

        let stated = ShapeEvidence {
            num_experts: Some(16),
            top_k: Some(4),
            num_layers: Layers::Stated(4),
            ..evidence(known)
        };
        let s = resolve(stated.clone(), &opts(None, None));
        assert_eq!(
            (s.num_experts_origin.clone(), s.top_k_origin.clone()),
            (Origin::Data, Origin::Data)
        );
        assert_eq!(
            (s.shape.num_experts, s.shape.top_k, s.shape.num_layers),
            (16, 4, 4)
        );

        let s = resolve(stated, &opts(Some(32), Some(6)));
        assert_eq!(
            (s.num_experts_origin, s.top_k_origin),
            (Origin::Options, Origin::Options)
        );
        assert_eq!((s.shape.num_experts, s.shape.top_k), (32, 6));
    }

    #[test]
    fn a_named_model_is_kept_when_no_known_model_matches() {
        let named = ShapeEvidence {
            model: Some("acme/Tiny-MoE".into()),
            ..evidence("/d/x/q.json")
        };
        let s = resolve(named, &opts(None, None));
        assert_eq!(s.shape.model.as_deref(), Some("acme/Tiny-MoE"));
        assert_eq!(s.org_model.as_deref(), Some("acme/Tiny-MoE"));
    }
}
