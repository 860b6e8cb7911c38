//! Builds one request's [`RequestTrace`] from the routing its steps return.
//!
//! Iteration 0 is the prefill: every prompt chunk's tokens, in order, whichever group and
//! rank ran them. Each decode step that fed a generated token through the model adds one
//! decode iteration. The last sampled token is never fed back, so a request that completes
//! normally has exactly as many iterations as completion tokens (1 prefill + n - 1 decode).

use moeflow_proto::v1 as pb;
use moeflow_trace::{Iteration, LayerRouting, Phase, RequestTrace};

/// Why a step's routing does not fit the request's trace; the trace is then dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("routing: {got} bytes of expert ids, expected {want} (layers x tokens x top_k x 2)")]
    IdBytes { got: usize, want: usize },
    #[error("routing: {got} bytes of gate weights, expected {want} (layers x tokens x top_k x 4)")]
    WeightBytes { got: usize, want: usize },
    #[error("routing: a decode step has {tokens} tokens, expected 1")]
    DecodeTokens { tokens: u32 },
    #[error("routing: prompt tokens after the first decode step")]
    PromptAfterDecode,
    #[error("routing: top_k {got} after {want} in the same request")]
    TopK { got: u32, want: u16 },
    #[error("routing: top_k {0} does not fit the trace model")]
    TopKRange(u32),
    #[error("routing: layers {got:?} in this step, {want:?} in the prefill")]
    Layers { got: Vec<u32>, want: Vec<u32> },
}

/// A request's trace under construction.
#[derive(Debug, Clone)]
pub struct TraceAssembler {
    trace: RequestTrace,
}

impl TraceAssembler {
    pub fn new(
        id: String,
        workload: Option<String>,
        prompt_len: usize,
        started_ms: Option<u64>,
    ) -> Self {
        Self {
            trace: RequestTrace {
                id,
                workload,
                prompt_len,
                started_ms,
                finished_ms: None,
                iterations: Vec::new(),
            },
        }
    }

    /// Adds one step's routing of this request: prompt chunks extend the prefill iteration, a
    /// decode token starts a new iteration. Nothing is changed when the routing is refused.
    pub fn append(&mut self, r: &pb::SeqRouting) -> Result<(), AssembleError> {
        let top_k = u16::try_from(r.top_k).map_err(|_| AssembleError::TopKRange(r.top_k))?;
        let per_layer = r.tokens as usize * top_k as usize;
        let want = r.layers.len() * per_layer;
        if r.expert_ids.len() != want * 2 {
            return Err(AssembleError::IdBytes {
                got: r.expert_ids.len(),
                want: want * 2,
            });
        }
        if r.weights.len() != want * 4 {
            return Err(AssembleError::WeightBytes {
                got: r.weights.len(),
                want: want * 4,
            });
        }
        if let Some(first) = self.trace.iterations.first() {
            if let Some(l) = first.layers.first() {
                if l.top_k != top_k {
                    return Err(AssembleError::TopK {
                        got: r.top_k,
                        want: l.top_k,
                    });
                }
            }
        }
        let ids: Vec<u16> = r
            .expert_ids
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let weights: Vec<f32> = r
            .weights
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let layers = r.layers.iter().enumerate().map(|(i, &layer)| {
            let span = i * per_layer..(i + 1) * per_layer;
            (layer, &ids[span.clone()], &weights[span])
        });
        if r.prompt {
            let prefill = match self.trace.iterations.as_mut_slice() {
                [] => None,
                [only] if only.phase == Phase::Prefill => Some(only),
                _ => return Err(AssembleError::PromptAfterDecode),
            };
            match prefill {
                None => self.trace.iterations.push(Iteration {
                    phase: Phase::Prefill,
                    layers: layers
                        .map(|(layer, ids, w)| LayerRouting {
                            layer,
                            top_k,
                            experts: ids.to_vec(),
                            weights: Some(w.to_vec()),
                        })
                        .collect(),
                }),
                Some(it) => {
                    let have: Vec<u32> = it.layers.iter().map(|l| l.layer).collect();
                    if have != r.layers {
                        return Err(AssembleError::Layers {
                            got: r.layers.clone(),
                            want: have,
                        });
                    }
                    for (dst, (_, ids, w)) in it.layers.iter_mut().zip(layers) {
                        dst.experts.extend_from_slice(ids);
                        if let Some(dw) = dst.weights.as_mut() {
                            dw.extend_from_slice(w);
                        }
                    }
                }
            }
        } else {
            if r.tokens != 1 {
                return Err(AssembleError::DecodeTokens { tokens: r.tokens });
            }
            self.trace.iterations.push(Iteration {
                phase: Phase::Decode,
                layers: layers
                    .map(|(layer, ids, w)| LayerRouting {
                        layer,
                        top_k,
                        experts: ids.to_vec(),
                        weights: Some(w.to_vec()),
                    })
                    .collect(),
            });
        }
        Ok(())
    }

    /// Iterations so far (the prefill counts as one).
    pub fn iterations(&self) -> usize {
        self.trace.iterations.len()
    }

    /// The finished trace.
    pub fn finish(mut self, finished_ms: Option<u64>) -> RequestTrace {
        self.trace.finished_ms = finished_ms;
        self.trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routing of `tokens` tokens at `layers`, top-2, id = 10 * layer + token, weight = id / 100.
    fn routing(layers: &[u32], tokens: u32, first_token: u32, prompt: bool) -> pb::SeqRouting {
        let mut ids = Vec::new();
        let mut w = Vec::new();
        for &l in layers {
            for t in first_token..first_token + tokens {
                for j in 0..2u32 {
                    let id = (10 * l + t + j) as u16;
                    ids.extend(id.to_le_bytes());
                    w.extend((id as f32 / 100.0).to_le_bytes());
                }
            }
        }
        pb::SeqRouting {
            layers: layers.to_vec(),
            top_k: 2,
            tokens,
            expert_ids: ids,
            weights: w,
            prompt,
        }
    }

    #[test]
    fn chunks_join_the_prefill_and_decode_steps_follow() {
        let mut a = TraceAssembler::new("r".into(), Some("chat".into()), 5, Some(1));
        a.append(&routing(&[1, 3], 3, 0, true)).unwrap();
        a.append(&routing(&[1, 3], 2, 3, true)).unwrap();
        a.append(&routing(&[1, 3], 1, 5, false)).unwrap();
        a.append(&routing(&[1, 3], 1, 6, false)).unwrap();
        let t = a.finish(Some(9));
        assert_eq!(t.iterations.len(), 3);
        assert_eq!((t.started_ms, t.finished_ms), (Some(1), Some(9)));
        let p = &t.iterations[0];
        assert_eq!(p.phase, Phase::Prefill);
        assert_eq!(p.num_tokens(), 5);
        assert_eq!(
            p.layer(3).unwrap().experts,
            vec![30, 31, 31, 32, 32, 33, 33, 34, 34, 35]
        );
        assert_eq!(p.layer(1).unwrap().weights.as_ref().unwrap()[9], 0.15);
        let d = &t.iterations[2];
        assert_eq!(d.phase, Phase::Decode);
        assert_eq!(d.layer(1).unwrap().experts, vec![16, 17]);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut a = TraceAssembler::new("r".into(), None, 2, None);
        let mut bad = routing(&[1], 2, 0, true);
        bad.expert_ids.pop();
        assert!(matches!(a.append(&bad), Err(AssembleError::IdBytes { .. })));
        let mut bad = routing(&[1], 2, 0, true);
        bad.weights.truncate(4);
        assert!(matches!(
            a.append(&bad),
            Err(AssembleError::WeightBytes { .. })
        ));
        assert!(matches!(
            a.append(&routing(&[1], 2, 0, false)),
            Err(AssembleError::DecodeTokens { tokens: 2 })
        ));
        a.append(&routing(&[1], 1, 0, true)).unwrap();
        assert!(matches!(
            a.append(&routing(&[1, 2], 1, 1, true)),
            Err(AssembleError::Layers { .. })
        ));
        a.append(&routing(&[1], 1, 1, false)).unwrap();
        assert_eq!(
            a.append(&routing(&[1], 1, 2, true)),
            Err(AssembleError::PromptAfterDecode)
        );
        assert_eq!(a.iterations(), 2);
    }
}
