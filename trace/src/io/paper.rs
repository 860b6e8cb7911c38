//! The paper's public JSON layout: one file per request, a list of iterations (element 0 the
//! prefill, then one element per decode step), each mapping layer-id strings to `null` (dense
//! layers) or one list of top-k expert ids per token. Files live in a tree
//! `<org>/<model>/<benchmark>/<subject>/<query>.json`; the reader takes the workload label
//! (`<benchmark>/<subject>`) and the model identity (`<org>/<model>`) from the path.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::evidence::{IdScan, Layers, ShapeEvidence};
use super::paper_scan::{scan, RawIteration};
use super::{FormatError, WriteError};
use crate::model::{
    validate_request, Iteration, LayerRouting, ModelShape, Phase, RequestTrace, MISSING_EXPERT,
};

/// One parsed document with the layout facts a source checks it against.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperDoc {
    pub request: RequestTrace,
    /// Highest layer key + 1.
    pub num_layers: usize,
    /// Keys with a list (not `null`), ascending.
    pub moe_layers: Vec<usize>,
    /// Experts per token, when any token says.
    pub top_k: Option<usize>,
}

impl PaperDoc {
    /// Refuses a document whose layer layout differs from the source's (a file of another
    /// model in the same tree).
    pub fn check_layout(&self, shape: &ModelShape) -> Result<(), FormatError> {
        if self.num_layers != shape.num_layers || self.moe_layers != shape.moe_layers {
            return Err(FormatError::Layout(format!(
                "{} layers (MoE {}), the source has {} (MoE {})",
                self.num_layers,
                ranges(&self.moe_layers),
                shape.num_layers,
                ranges(&shape.moe_layers)
            )));
        }
        Ok(())
    }
}

/// `3-60` style summary of a layer list.
pub fn ranges(v: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

/// Parses one document. `top_k` fills layers that list no tokens (an empty prompt), when the
/// document itself does not say.
pub fn parse(
    bytes: &[u8],
    id: String,
    workload: Option<String>,
    top_k: Option<usize>,
) -> Result<PaperDoc, FormatError> {
    let raw = scan(bytes)?;
    from_raw(raw, id, workload, top_k)
}

fn layer_set(it: &RawIteration) -> Vec<usize> {
    let mut v: Vec<usize> = it
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(l, _)| *l)
        .collect();
    v.sort_unstable();
    v
}

fn from_raw(
    raw: Vec<RawIteration>,
    id: String,
    workload: Option<String>,
    top_k: Option<usize>,
) -> Result<PaperDoc, FormatError> {
    let first = raw
        .first()
        .ok_or_else(|| FormatError::Layout("no iterations (empty list)".into()))?;
    let num_layers = first.iter().map(|(l, _)| l + 1).max().unwrap_or(0);
    let moe_layers = layer_set(first);
    let mut doc_k: Option<usize> = None;
    for (i, it) in raw.iter().enumerate() {
        for (l, v) in it {
            if let Some((k, _)) = v {
                if *k == 0 {
                    continue;
                }
                match doc_k {
                    None => doc_k = Some(*k),
                    Some(dk) if dk != *k => {
                        return Err(FormatError::Layout(format!(
                            "iteration {i} layer {l}: {k} experts per token, earlier layers {dk}"
                        )))
                    }
                    _ => {}
                }
            }
        }
    }
    let k = doc_k.or(top_k).unwrap_or(0);
    let mut iterations = Vec::with_capacity(raw.len());
    for (i, mut it) in raw.into_iter().enumerate() {
        let keys = it.iter().map(|(l, _)| l + 1).max().unwrap_or(0);
        if keys != num_layers || layer_set(&it) != moe_layers {
            return Err(FormatError::Layout(format!(
                "iteration {i} lists {keys} layers (MoE {}), iteration 0 lists {num_layers} (MoE {})",
                ranges(&layer_set(&it)),
                ranges(&moe_layers)
            )));
        }
        it.sort_unstable_by_key(|(l, _)| *l);
        if let Some(w) = it.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(FormatError::Layout(format!(
                "iteration {i}: layer {} listed twice",
                w[0].0
            )));
        }
        let layers = it
            .into_iter()
            .filter_map(|(l, v)| {
                v.map(|(lk, experts)| LayerRouting {
                    layer: l as u32,
                    top_k: if lk == 0 { k } else { lk } as u16,
                    experts,
                    weights: None,
                })
            })
            .collect();
        iterations.push(Iteration {
            phase: if i == 0 {
                Phase::Prefill
            } else {
                Phase::Decode
            },
            layers,
        });
    }
    let prompt_len = iterations.first().map_or(0, Iteration::num_tokens);
    Ok(PaperDoc {
        request: RequestTrace {
            id,
            workload,
            prompt_len,
            started_ms: None,
            finished_ms: None,
            iterations,
        },
        num_layers,
        moe_layers,
        top_k: doc_k,
    })
}

/// Where a file sits in the `<org>/<model>/<benchmark>/<subject>/<query>.json` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLabels {
    /// `<org>/<model>`.
    pub org_model: Option<String>,
    /// `<benchmark>/<subject>`.
    pub workload: Option<String>,
}

/// Labels of a file from its path components: the last five of (the root's ancestors, the
/// root, the path below it) are org, model, benchmark, subject and query, so a tree opened at
/// any level gets the same labels.
pub fn labels(root_components: &[String], rel: &[String]) -> TreeLabels {
    let all: Vec<&str> = root_components
        .iter()
        .chain(rel)
        .map(String::as_str)
        .collect();
    let n = all.len();
    let at = |back: usize| n.checked_sub(back).map(|i| all[i]);
    let pair = |a: Option<&str>, b: Option<&str>| match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}/{b}")),
        (None, Some(b)) => Some(b.to_string()),
        _ => None,
    };
    TreeLabels {
        org_model: pair(at(5), at(4)),
        workload: pair(at(3), at(2)),
    }
}

/// Reads the shape from a tree's first files: the first document that parses states the
/// layers and top-k; where nobody states the expert count, the next documents of the same
/// model (up to 16 files or 64 MiB) raise the highest expert id seen.
#[derive(Debug)]
pub struct ShapeScan {
    first: Option<FirstDoc>,
    files: usize,
    max_expert: u16,
    failures: Vec<String>,
    budget: u64,
    scan_ids: bool,
}

/// The layout facts of the first document that parsed, and where it was.
#[derive(Debug)]
struct FirstDoc {
    num_layers: usize,
    moe_layers: Vec<usize>,
    top_k: Option<usize>,
    org_model: Option<String>,
    path: PathBuf,
}

impl ShapeScan {
    /// `scan_ids`: read on for the highest expert id, because nobody states the expert count.
    pub fn new(scan_ids: bool) -> Self {
        Self {
            first: None,
            files: 0,
            max_expert: 0,
            failures: Vec::new(),
            budget: 64 << 20,
            scan_ids,
        }
    }

    /// Reads one file: `rel` is its path below the root (whose last components are
    /// `root_components`), `path` the file on disk it came from (an archive for its entries).
    /// True when enough has been seen.
    pub fn visit(
        &mut self,
        root_components: &[String],
        path: &Path,
        rel: Vec<String>,
        bytes: &[u8],
    ) -> bool {
        let labels = labels(root_components, &rel);
        match parse(bytes, rel.join("/"), labels.workload, None) {
            Ok(doc) => {
                self.budget = self.budget.saturating_sub(bytes.len() as u64);
                self.files += 1;
                let first = self.first.get_or_insert_with(|| FirstDoc {
                    num_layers: doc.num_layers,
                    moe_layers: doc.moe_layers.clone(),
                    top_k: doc.top_k,
                    org_model: labels.org_model.clone(),
                    path: path.to_path_buf(),
                });
                if first.org_model == labels.org_model {
                    self.max_expert = self.max_expert.max(
                        doc.request
                            .iterations
                            .iter()
                            .flat_map(|i| i.layers.iter())
                            .flat_map(|l| l.experts.iter().copied())
                            .max()
                            .unwrap_or(0),
                    );
                }
            }
            Err(e) => self.failures.push(format!("{}: {e}", rel.join("/"))),
        }
        self.first.is_some() && (!self.scan_ids || self.files >= 16 || self.budget == 0)
    }

    /// Whether to stop looking: none of the first 64 files tried parses.
    pub fn hopeless(&self) -> bool {
        self.first.is_none() && self.failures.len() >= 64
    }

    /// What the files said, or why no file said anything.
    pub fn finish(self) -> Result<ShapeEvidence, String> {
        let Some(first) = self.first else {
            return Err(format!(
                "no readable paper JSON file; first failures: {}",
                self.failures
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        };
        Ok(ShapeEvidence {
            path: first.path,
            model: first.org_model,
            num_layers: Layers::Stated(first.num_layers),
            moe_layers: first.moe_layers,
            num_experts: None,
            top_k: first.top_k,
            ids: Some(IdScan {
                max_expert: self.max_expert,
                files: self.files,
            }),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Writer

/// What a write left out: the paper layout cannot say "not captured", so prefill tokens
/// missing at some layer and decode steps missing at some layer are dropped (as the example
/// file of the Mixtral data does), and counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaperWrite {
    pub path: PathBuf,
    /// Size of the file written.
    pub bytes: u64,
    pub dropped_tokens: usize,
    pub dropped_iterations: usize,
}

/// Renders a request in the paper layout: every layer `0..num_layers` keyed, `null` for dense
/// layers, Python `json.dump` separators like the published files.
pub fn render(
    r: &RequestTrace,
    shape: &ModelShape,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), WriteError> {
    validate_request(r, shape).map_err(|source| WriteError::Invalid {
        id: r.id.clone(),
        source,
    })?;
    let (mut dropped_tokens, mut dropped_iterations) = (0, 0);
    let mut its: Vec<&Iteration> = r.iterations.iter().collect();
    let empty_prefill = Iteration {
        phase: Phase::Prefill,
        layers: Vec::new(),
    };
    if its.first().map(|i| i.phase) != Some(Phase::Prefill) {
        its.insert(0, &empty_prefill);
    }
    if its.iter().skip(1).any(|i| i.phase == Phase::Prefill) {
        return Err(WriteError::Unrepresentable {
            id: r.id.clone(),
            message: "more than one prefill iteration; the paper layout has one, first".into(),
        });
    }
    out.push(b'[');
    let mut first_it = true;
    for (i, it) in its.iter().enumerate() {
        let n_tokens = it.num_tokens();
        let layers: Vec<Option<&LayerRouting>> =
            shape.moe_layers.iter().map(|&l| it.layer(l)).collect();
        let keep: Vec<bool> = (0..n_tokens)
            .map(|t| {
                layers
                    .iter()
                    .all(|l| l.is_some_and(|l| t < l.num_tokens() && l.present(t)))
            })
            .collect();
        let kept = keep.iter().filter(|&&k| k).count();
        if i > 0 && kept != 1 {
            dropped_iterations += 1;
            continue;
        }
        dropped_tokens += n_tokens - kept;
        if !first_it {
            out.extend_from_slice(b", ");
        }
        first_it = false;
        out.push(b'{');
        let mut mi = 0;
        for layer in 0..shape.num_layers {
            if layer > 0 {
                out.extend_from_slice(b", ");
            }
            write!(out, "\"{layer}\": ").ok();
            let is_moe = shape.moe_layers.get(mi) == Some(&layer);
            if !is_moe {
                out.extend_from_slice(b"null");
                continue;
            }
            let lr = layers[mi];
            mi += 1;
            out.push(b'[');
            let mut first_tok = true;
            if let Some(lr) = lr {
                for t in (0..n_tokens).filter(|&t| keep[t]) {
                    if !first_tok {
                        out.extend_from_slice(b", ");
                    }
                    first_tok = false;
                    out.push(b'[');
                    for (j, e) in lr.token(t).iter().enumerate() {
                        debug_assert_ne!(*e, MISSING_EXPERT);
                        if j > 0 {
                            out.extend_from_slice(b", ");
                        }
                        write!(out, "{e}").ok();
                    }
                    out.push(b']');
                }
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok((dropped_tokens, dropped_iterations))
}

/// File-name-safe form of a request id or a path component.
fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ => s,
    }
}

/// Writes requests as `<root>/<org>/<model>/<benchmark>/<subject>/<id>.json`. A workload
/// label `a/b` gives benchmark `a`, subject `b`; a label without `/` gets subject `default`,
/// no label `default/default`, so that the reader finds every file at the same depth. Files
/// appear atomically (written aside, then renamed), so a reader of a growing tree never sees
/// half a file.
pub struct PaperTreeWriter {
    dir: PathBuf,
    shape: ModelShape,
}

impl PaperTreeWriter {
    /// `org_model` is `org/model` (a bare `model` gets org `moeflow`).
    pub fn new(root: &Path, org_model: &str, shape: &ModelShape) -> Result<Self, WriteError> {
        let (org, model) = org_model.split_once('/').unwrap_or(("moeflow", org_model));
        let dir = root.join(sanitize(org)).join(sanitize(model));
        std::fs::create_dir_all(&dir).map_err(|source| WriteError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            shape: shape.clone(),
        })
    }

    /// The `<root>/<org>/<model>` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, r: &RequestTrace) -> PathBuf {
        let (bench, subject) = match r.workload.as_deref() {
            Some(w) => w.split_once('/').unwrap_or((w, "default")),
            None => ("default", "default"),
        };
        let id = r.id.strip_suffix(".json").unwrap_or(&r.id);
        self.dir
            .join(sanitize(bench))
            .join(sanitize(subject))
            .join(format!("{}.json", sanitize(id)))
    }

    pub fn write(&self, r: &RequestTrace) -> Result<PaperWrite, WriteError> {
        let mut buf = Vec::new();
        let (dropped_tokens, dropped_iterations) = render(r, &self.shape, &mut buf)?;
        let path = self.path_of(r);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteError::Io { path, source }
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &buf).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(PaperWrite {
            path,
            bytes: buf.len() as u64,
            dropped_tokens,
            dropped_iterations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ModelShape {
        ModelShape {
            model: None,
            num_layers: 3,
            num_experts: 8,
            top_k: 2,
            moe_layers: vec![1, 2],
        }
    }

    #[test]
    fn renders_the_published_layout_and_reads_it_back() {
        let r = RequestTrace {
            id: "q1".into(),
            workload: Some("mmlu/algebra".into()),
            prompt_len: 2,
            started_ms: None,
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![
                        LayerRouting {
                            layer: 1,
                            top_k: 2,
                            experts: vec![5, 2, 5, 7],
                            weights: None,
                        },
                        LayerRouting {
                            layer: 2,
                            top_k: 2,
                            experts: vec![0, 1, 2, 3],
                            weights: None,
                        },
                    ],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![
                        LayerRouting {
                            layer: 1,
                            top_k: 2,
                            experts: vec![6, 5],
                            weights: None,
                        },
                        LayerRouting {
                            layer: 2,
                            top_k: 2,
                            experts: vec![4, 1],
                            weights: None,
                        },
                    ],
                },
            ],
        };
        let mut out = Vec::new();
        assert_eq!(render(&r, &shape(), &mut out).unwrap(), (0, 0));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"[{"0": null, "1": [[5, 2], [5, 7]], "2": [[0, 1], [2, 3]]}, {"0": null, "1": [[6, 5]], "2": [[4, 1]]}]"#
        );
        let doc = parse(&out, "q1".into(), Some("mmlu/algebra".into()), None).unwrap();
        assert_eq!(doc.request, r);
        assert_eq!(
            (doc.num_layers, doc.moe_layers.clone(), doc.top_k),
            (3, vec![1, 2], Some(2))
        );
        doc.check_layout(&shape()).unwrap();
        let mut other = shape();
        other.num_layers = 4;
        assert!(doc.check_layout(&other).is_err());
    }

    #[test]
    fn drops_tokens_that_the_layout_cannot_carry() {
        let r = RequestTrace {
            id: "q".into(),
            workload: None,
            prompt_len: 2,
            started_ms: None,
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![
                        LayerRouting {
                            layer: 1,
                            top_k: 2,
                            experts: vec![5, 2, MISSING_EXPERT, MISSING_EXPERT],
                            weights: None,
                        },
                        LayerRouting {
                            layer: 2,
                            top_k: 2,
                            experts: vec![0, 1, 2, 3],
                            weights: None,
                        },
                    ],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![LayerRouting {
                        layer: 1,
                        top_k: 2,
                        experts: vec![6, 5],
                        weights: None,
                    }],
                },
            ],
        };
        let mut out = Vec::new();
        assert_eq!(render(&r, &shape(), &mut out).unwrap(), (1, 1));
        let doc = parse(&out, "q".into(), None, None).unwrap();
        assert_eq!(doc.request.prompt_len, 1);
        assert_eq!(doc.request.iterations.len(), 1);
    }

    #[test]
    fn labels_come_from_the_last_five_components() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let l = labels(
            &c(&["data", "deepseek-ai"]),
            &c(&["DeepSeek-V3", "mmlu", "law", "1.json"]),
        );
        assert_eq!(l.org_model.as_deref(), Some("deepseek-ai/DeepSeek-V3"));
        assert_eq!(l.workload.as_deref(), Some("mmlu/law"));
        let l = labels(&[], &c(&["law", "1.json"]));
        assert_eq!(
            l,
            TreeLabels {
                org_model: None,
                workload: Some("law".into())
            }
        );
    }
}
