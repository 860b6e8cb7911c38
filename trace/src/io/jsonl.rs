//! JSONL routing logs, one row per (request, layer, token): `dataset`, `problem_id`,
//! `layer`, `token_pos` or `token_idx`, `experts`, `gating_probs` (the Mixtral recorder's
//! layout). Rows of one request must be contiguous; one request's rows are held in memory,
//! never the whole file.
//!
//! Token alignment: with `token_idx` a row is decode step `token_idx`. With `token_pos`,
//! each layer lists its prompt rows (`token_pos` rising) and then its generated rows (all
//! `token_pos` 0, in order). Rows the recorder dropped leave gaps that are filled with
//! [`MISSING_EXPERT`]; a generated row dropped at one layer shifts that layer's later
//! generated rows by one, which the format cannot tell.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use super::evidence::{IdScan, Layers, ShapeEvidence};
use super::FormatError;
use crate::model::{Iteration, LayerRouting, Phase, RequestTrace, MISSING_EXPERT};

#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    #[serde(default)]
    pub dataset: Option<String>,
    pub problem_id: serde_json::Value,
    pub layer: u32,
    #[serde(default)]
    pub token_pos: Option<usize>,
    #[serde(default)]
    pub token_idx: Option<usize>,
    pub experts: Vec<u16>,
    #[serde(default)]
    pub gating_probs: Option<Vec<f32>>,
}

impl Row {
    /// `<dataset>/<problem_id>`: the request a row belongs to.
    pub fn key(&self) -> String {
        let pid = match &self.problem_id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match &self.dataset {
            Some(d) => format!("{d}/{pid}"),
            None => pid,
        }
    }
}

/// The rows of one request, or why they cannot form one.
#[derive(Debug)]
pub struct RowGroup {
    pub key: String,
    pub dataset: Option<String>,
    /// Line number (1-based) of the first row.
    pub first_line: usize,
    pub rows: Vec<Row>,
    pub error: Option<String>,
}

/// Splits a JSONL stream into per-request groups of contiguous rows.
pub struct Groups<R: BufRead> {
    lines: std::io::Lines<R>,
    line_no: usize,
    pending: Option<RowGroup>,
    seen: HashSet<String>,
    done: bool,
}

impl<R: BufRead> Groups<R> {
    pub fn new(r: R) -> Self {
        Self {
            lines: r.lines(),
            line_no: 0,
            pending: None,
            seen: HashSet::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for Groups<R> {
    type Item = Result<RowGroup, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let line = match self.lines.next() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(l)) => l,
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let row: Row = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("line {}: {e}", self.line_no);
                    match &mut self.pending {
                        Some(g) => {
                            g.error.get_or_insert(msg);
                        }
                        None => {
                            return Some(Err(FormatError::Syntax {
                                offset: 0,
                                message: msg,
                            }))
                        }
                    }
                    continue;
                }
            };
            let key = row.key();
            if self.pending.as_ref().is_some_and(|g| g.key == key) {
                if let Some(g) = &mut self.pending {
                    g.rows.push(row);
                }
                continue;
            }
            let mut group = RowGroup {
                dataset: row.dataset.clone(),
                key: key.clone(),
                first_line: self.line_no,
                rows: vec![row],
                error: None,
            };
            if !self.seen.insert(key.clone()) {
                group.error = Some(format!(
                    "line {}: rows of request `{key}` resume after other requests' rows; rows of one request must be contiguous",
                    self.line_no
                ));
            }
            if let Some(prev) = self.pending.replace(group) {
                return Some(Ok(prev));
            }
        }
        self.pending.take().map(Ok)
    }
}

fn fill(
    layers: &BTreeMap<u32, Vec<Option<&Row>>>,
    n: usize,
    k: usize,
    weights: bool,
    phase: Phase,
    pick: impl Fn(&[Option<&Row>], usize) -> Option<usize>,
) -> Vec<Iteration> {
    let make = |rows: &[Option<&Row>], range: std::ops::Range<usize>| {
        let mut experts = Vec::with_capacity(range.len() * k);
        let mut w = Vec::with_capacity(if weights { range.len() * k } else { 0 });
        for t in range {
            match pick(rows, t).and_then(|i| rows.get(i).copied().flatten()) {
                Some(r) => {
                    experts.extend_from_slice(&r.experts);
                    if weights {
                        w.extend(r.gating_probs.iter().flatten());
                    }
                }
                None => {
                    experts.extend(std::iter::repeat_n(MISSING_EXPERT, k));
                    if weights {
                        w.extend(std::iter::repeat_n(0.0, k));
                    }
                }
            }
        }
        (experts, weights.then_some(w))
    };
    let iteration = |range: std::ops::Range<usize>| Iteration {
        phase,
        layers: layers
            .iter()
            .map(|(&layer, rows)| {
                let (experts, weights) = make(rows, range.clone());
                LayerRouting {
                    layer,
                    top_k: k as u16,
                    experts,
                    weights,
                }
            })
            .collect(),
    };
    match phase {
        Phase::Prefill => vec![iteration(0..n)],
        Phase::Decode => (0..n).map(|t| iteration(t..t + 1)).collect(),
    }
}

/// Builds one request from its rows.
pub fn build(group: &RowGroup) -> Result<RequestTrace, FormatError> {
    if let Some(e) = &group.error {
        return Err(FormatError::Layout(e.clone()));
    }
    let first = group
        .rows
        .first()
        .ok_or_else(|| FormatError::Layout("no rows".into()))?;
    let k = first.experts.len();
    let weights = group
        .rows
        .iter()
        .all(|r| r.gating_probs.as_ref().is_some_and(|g| g.len() == k));
    for (i, r) in group.rows.iter().enumerate() {
        if r.experts.len() != k || k == 0 || r.experts.contains(&MISSING_EXPERT) {
            return Err(FormatError::Layout(format!(
                "line {}: {} experts, the request's first row has {k}",
                group.first_line + i,
                r.experts.len()
            )));
        }
    }
    let by_idx = group.rows.iter().any(|r| r.token_idx.is_some());
    let mut iterations = Vec::new();
    let mut prompt_len = 0;
    if by_idx {
        // Generated tokens only, aligned by decode step.
        let mut layers: BTreeMap<u32, Vec<Option<&Row>>> = BTreeMap::new();
        let mut steps = 0;
        for (i, r) in group.rows.iter().enumerate() {
            let t = r.token_idx.ok_or_else(|| {
                FormatError::Layout(format!("line {}: no token_idx", group.first_line + i))
            })?;
            if t > 1 << 24 {
                return Err(FormatError::Layout(format!(
                    "line {}: token_idx {t}",
                    group.first_line + i
                )));
            }
            let v = layers.entry(r.layer).or_default();
            if v.len() <= t {
                v.resize(t + 1, None);
            }
            if v[t].replace(r).is_some() {
                return Err(FormatError::Layout(format!(
                    "line {}: layer {} token_idx {t} listed twice",
                    group.first_line + i,
                    r.layer
                )));
            }
            steps = steps.max(t + 1);
        }
        iterations = fill(&layers, steps, k, weights, Phase::Decode, |_, t| Some(t));
    } else {
        let mut prompt: BTreeMap<u32, Vec<Option<&Row>>> = BTreeMap::new();
        let mut gen: BTreeMap<u32, Vec<Option<&Row>>> = BTreeMap::new();
        let mut last: BTreeMap<u32, Option<usize>> = BTreeMap::new();
        for (i, r) in group.rows.iter().enumerate() {
            let pos = r.token_pos.ok_or_else(|| {
                FormatError::Layout(format!(
                    "line {}: neither token_pos nor token_idx",
                    group.first_line + i
                ))
            })?;
            if pos > 1 << 24 {
                return Err(FormatError::Layout(format!(
                    "line {}: token_pos {pos}",
                    group.first_line + i
                )));
            }
            let state = last.entry(r.layer).or_insert(Some(0)).to_owned();
            let in_prompt = match state {
                Some(_) if gen.get(&r.layer).is_some_and(|g| !g.is_empty()) => false,
                Some(prev) => {
                    let p = prompt.entry(r.layer).or_default();
                    p.is_empty() || pos > prev
                }
                None => false,
            };
            if in_prompt {
                let p = prompt.entry(r.layer).or_default();
                if p.len() <= pos {
                    p.resize(pos + 1, None);
                }
                p[pos] = Some(r);
                last.insert(r.layer, Some(pos));
            } else {
                gen.entry(r.layer).or_default().push(Some(r));
                prompt.entry(r.layer).or_default();
            }
        }
        prompt_len = prompt.values().map(Vec::len).max().unwrap_or(0);
        let steps = gen.values().map(Vec::len).max().unwrap_or(0);
        if prompt_len > 0 {
            iterations = fill(&prompt, prompt_len, k, weights, Phase::Prefill, |v, t| {
                (t < v.len()).then_some(t)
            });
        }
        for l in prompt.keys() {
            gen.entry(*l).or_default();
        }
        iterations.extend(fill(&gen, steps, k, weights, Phase::Decode, |v, t| {
            (t < v.len()).then_some(t)
        }));
    }
    Ok(RequestTrace {
        id: group.key.clone(),
        workload: group.dataset.clone(),
        prompt_len,
        started_ms: None,
        finished_ms: None,
        iterations,
    })
}

/// The shape facts of a routing log read to its end: the layers that routed a token, the
/// experts per token of the first row and the highest expert id; `None` when no row can be
/// read.
pub fn shape_evidence(r: impl BufRead, path: &Path) -> Option<ShapeEvidence> {
    let (mut max_layer, mut max_e, mut k) = (None::<u32>, 0u16, None);
    let mut layers = BTreeSet::new();
    for g in Groups::new(r).flatten() {
        for row in &g.rows {
            max_layer = max_layer.max(Some(row.layer));
            layers.insert(row.layer as usize);
            k.get_or_insert(row.experts.len());
            max_e = max_e.max(
                row.experts
                    .iter()
                    .copied()
                    .filter(|&e| e != MISSING_EXPERT)
                    .max()
                    .unwrap_or(0),
            );
        }
    }
    Some(ShapeEvidence {
        path: path.to_path_buf(),
        model: None,
        num_layers: Layers::AtLeast(max_layer? as usize + 1),
        moe_layers: layers.into_iter().collect(),
        num_experts: None,
        top_k: k,
        ids: Some(IdScan {
            max_expert: max_e,
            files: 1,
        }),
    })
}

/// Renders one request as JSONL rows in the layout [`build`] reads back: per MoE layer, the
/// prompt rows (`token_pos` rising) and then the generated rows (`token_pos` 0, in order).
/// `dataset` is the workload label (`default` without one), `problem_id` the request id.
/// Tokens not captured at a layer ([`MISSING_EXPERT`]) get no row, as the recorders that
/// write this layout do.
pub fn render(r: &RequestTrace, out: &mut String) {
    use std::fmt::Write as _;
    let dataset = serde_json::Value::from(r.workload.as_deref().unwrap_or("default"));
    let pid = serde_json::Value::from(r.id.as_str());
    let mut layers: Vec<u32> = r
        .iterations
        .iter()
        .flat_map(|it| it.layers.iter().map(|l| l.layer))
        .collect();
    layers.sort_unstable();
    layers.dedup();
    for layer in layers {
        let mut generated = false;
        for it in &r.iterations {
            let Some(lr) = it.layer(layer as usize) else {
                continue;
            };
            generated |= it.phase == Phase::Decode;
            for t in 0..lr.num_tokens() {
                if !lr.present(t) {
                    continue;
                }
                let k = lr.top_k as usize;
                let weights = lr.weights.as_ref().map(|w| &w[t * k..(t + 1) * k]);
                let pos = if generated { 0 } else { t };
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "dataset": dataset,
                        "problem_id": pid,
                        "layer": layer,
                        "token_pos": pos,
                        "experts": lr.token(t),
                        "gating_probs": weights,
                    })
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_round_trips_through_build() {
        let lr = |layer, experts: Vec<u16>| LayerRouting {
            layer,
            top_k: 2,
            weights: Some(experts.iter().map(|&e| f32::from(e) / 10.0).collect()),
            experts,
        };
        let r = RequestTrace {
            id: "7".into(),
            workload: Some("w".into()),
            prompt_len: 2,
            started_ms: None,
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![lr(0, vec![1, 2, 3, 4]), lr(1, vec![5, 6, 7, 0])],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![lr(0, vec![2, 1]), lr(1, vec![0, 3])],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![lr(0, vec![4, 5]), lr(1, vec![6, 7])],
                },
            ],
        };
        let mut text = String::new();
        render(&r, &mut text);
        let g = groups(&text);
        assert_eq!(g.len(), 1);
        let back = build(g[0].as_ref().unwrap()).unwrap();
        assert_eq!(back.id, "w/7");
        assert_eq!(back.iterations, r.iterations);
        assert_eq!(back.prompt_len, 2);
    }

    fn groups(text: &str) -> Vec<Result<RowGroup, FormatError>> {
        Groups::new(text.as_bytes()).collect()
    }

    #[test]
    fn aligns_prompt_by_position_and_fills_gaps() {
        let text = r#"{"dataset":"d","problem_id":0,"layer":0,"token_pos":0,"experts":[1,2],"gating_probs":[0.6,0.4]}
{"dataset":"d","problem_id":0,"layer":0,"token_pos":1,"experts":[3,4],"gating_probs":[0.6,0.4]}
{"dataset":"d","problem_id":0,"layer":1,"token_pos":1,"experts":[5,6],"gating_probs":[0.7,0.3]}
{"dataset":"d","problem_id":0,"layer":0,"token_pos":0,"experts":[7,0],"gating_probs":[0.9,0.1]}
{"dataset":"d","problem_id":0,"layer":1,"token_pos":0,"experts":[1,0],"gating_probs":[0.9,0.1]}
{"dataset":"d","problem_id":1,"layer":0,"token_pos":0,"experts":[1,2],"gating_probs":[0.5,0.5]}
"#;
        let g = groups(text);
        assert_eq!(g.len(), 2);
        let r = build(g[0].as_ref().unwrap()).unwrap();
        assert_eq!(r.id, "d/0");
        assert_eq!(r.prompt_len, 2);
        assert_eq!(r.iterations.len(), 2);
        let pre = &r.iterations[0];
        assert_eq!(pre.layer(0).unwrap().experts, vec![1, 2, 3, 4]);
        assert_eq!(
            pre.layer(1).unwrap().experts,
            vec![MISSING_EXPERT, MISSING_EXPERT, 5, 6]
        );
        assert_eq!(r.iterations[1].layer(0).unwrap().experts, vec![7, 0]);
        assert_eq!(r.iterations[1].layer(1).unwrap().experts, vec![1, 0]);
        assert_eq!(
            r.iterations[1].layer(1).unwrap().weights,
            Some(vec![0.9, 0.1])
        );
    }

    #[test]
    fn refuses_interleaved_requests_and_ragged_rows() {
        let text = r#"{"problem_id":0,"layer":0,"token_idx":0,"experts":[1,2]}
{"problem_id":1,"layer":0,"token_idx":0,"experts":[1,2]}
{"problem_id":0,"layer":0,"token_idx":1,"experts":[1,2]}
{"problem_id":2,"layer":0,"token_idx":0,"experts":[1,2,3]}
{"problem_id":2,"layer":0,"token_idx":1,"experts":[1,2]}
"#;
        let g: Vec<_> = groups(text).into_iter().map(Result::unwrap).collect();
        assert_eq!(g.len(), 4);
        assert!(build(&g[0]).is_ok());
        assert!(build(&g[2]).unwrap_err().to_string().contains("contiguous"));
        assert!(build(&g[3]).is_err());
    }
}
