//! One rank of the fake group: its sequences (the tokens each has fed, standing in for the
//! KV cache, and its sampler), a block budget, and the checks a real engine makes on a step.

use std::collections::HashMap;

use moeflow_proto::v1 as pb;

use super::toy::{self, ToySampler};

/// A sequence resident on a rank.
#[derive(Debug, Clone)]
struct Resident {
    /// Every token fed so far: what a real rank holds keys and values for.
    fed: Vec<u32>,
    sampler: ToySampler,
}

/// A rank's sequences and KV capacity.
#[derive(Debug)]
pub(super) struct FakeRank {
    seqs: HashMap<u64, Resident>,
    capacity_blocks: usize,
    block_size: usize,
}

/// Why a rank refused an operation: a gRPC code and a message naming the sequence.
pub(super) type Refusal = (tonic::Code, String);

impl FakeRank {
    pub fn new(capacity_blocks: usize, block_size: usize) -> Self {
        Self {
            seqs: HashMap::new(),
            capacity_blocks,
            block_size: block_size.max(1),
        }
    }

    pub fn used_blocks(&self) -> usize {
        self.seqs.values().map(|s| self.blocks(s.fed.len())).sum()
    }

    pub fn capacity_blocks(&self) -> usize {
        self.capacity_blocks
    }

    pub fn running(&self) -> usize {
        self.seqs.len()
    }

    fn blocks(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Checks a step's chunks as an engine would (positions continue what the rank holds, a
    /// new sequence starts at 0 with its sampling settings, the KV blocks fit) without
    /// changing anything.
    pub fn check(&self, chunks: &[pb::SeqChunk]) -> Result<(), Refusal> {
        let invalid = |msg: String| (tonic::Code::InvalidArgument, msg);
        let mut blocks = self.used_blocks();
        for (i, c) in chunks.iter().enumerate() {
            if chunks[..i].iter().any(|o| o.seq_id == c.seq_id) {
                return Err(invalid(format!("sequence {}: twice in one step", c.seq_id)));
            }
            if c.tokens.is_empty() {
                return Err(invalid(format!("sequence {}: no tokens", c.seq_id)));
            }
            let held = match self.seqs.get(&c.seq_id) {
                Some(s) => s.fed.len(),
                None if c.sampling.is_none() => {
                    return Err(invalid(format!(
                        "sequence {}: first chunk without sampling settings",
                        c.seq_id
                    )))
                }
                None => 0,
            };
            if c.start as usize != held {
                return Err(invalid(format!(
                    "sequence {}: chunk starts at {}, the cache holds {held} tokens",
                    c.seq_id, c.start
                )));
            }
            blocks += self.blocks(held + c.tokens.len()) - self.blocks(held);
        }
        if blocks > self.capacity_blocks {
            return Err((
                tonic::Code::ResourceExhausted,
                format!(
                    "KV cache full: the step needs {blocks} blocks, the rank has {}",
                    self.capacity_blocks
                ),
            ));
        }
        Ok(())
    }

    /// Feeds checked chunks and samples where asked.
    pub fn run(&mut self, chunks: Vec<pb::SeqChunk>) -> Vec<pb::SeqResult> {
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            let seq = self.seqs.entry(c.seq_id).or_insert_with(|| Resident {
                fed: Vec::new(),
                sampler: ToySampler::new(c.sampling.unwrap_or_default()),
            });
            seq.fed.extend_from_slice(&c.tokens);
            let mut res = pb::SeqResult {
                seq_id: c.seq_id,
                ..Default::default()
            };
            if c.sample {
                res.token = seq.sampler.next(&seq.fed);
                res.sampled = true;
                let k = seq.sampler.sampling.top_logprobs;
                (res.logprob, res.top_logprobs) = toy::logprobs(res.token, k);
            }
            out.push(res);
        }
        out
    }

    /// Frees sequences; returns the blocks freed.
    pub fn release(&mut self, seq_ids: &[u64]) -> usize {
        let freed: Vec<usize> = seq_ids
            .iter()
            .filter_map(|s| self.seqs.remove(s))
            .map(|s| s.fed.len())
            .collect();
        freed.into_iter().map(|n| self.blocks(n)).sum()
    }

    /// A sequence's history and sampler in the transfer message (history as u32
    /// little-endian `keys`).
    pub fn export(&mut self, seq_id: u64, release: bool) -> Result<pb::KvTransfer, Refusal> {
        let Some(s) = self.seqs.get(&seq_id).cloned() else {
            return Err((
                tonic::Code::NotFound,
                format!("sequence {seq_id}: not on this rank"),
            ));
        };
        if release {
            self.seqs.remove(&seq_id);
        }
        Ok(pb::KvTransfer {
            seq_id,
            len: s.fed.len() as u32,
            keys: s.fed.iter().flat_map(|t| t.to_le_bytes()).collect(),
            values: Vec::new(),
            sampling: Some(s.sampler.sampling),
            sampler_seed: s.sampler.sampling.seed.unwrap_or(0),
            sampler_draws: s.sampler.draws,
        })
    }

    /// Installs a transferred sequence, checked like a real import.
    pub fn import(&mut self, t: pb::KvTransfer) -> Result<(), Refusal> {
        let invalid = |msg: String| (tonic::Code::InvalidArgument, msg);
        if self.seqs.contains_key(&t.seq_id) {
            return Err((
                tonic::Code::AlreadyExists,
                format!("sequence {}: already on this rank", t.seq_id),
            ));
        }
        if t.keys.len() != t.len as usize * 4 {
            return Err(invalid(format!(
                "sequence {}: {} key bytes for {} tokens",
                t.seq_id,
                t.keys.len(),
                t.len
            )));
        }
        let Some(sampling) = t.sampling else {
            return Err(invalid(format!(
                "sequence {}: no sampling settings",
                t.seq_id
            )));
        };
        if self.used_blocks() + self.blocks(t.len as usize) > self.capacity_blocks {
            return Err((
                tonic::Code::ResourceExhausted,
                format!("sequence {}: no room for {} tokens", t.seq_id, t.len),
            ));
        }
        let fed = t
            .keys
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let sampler = ToySampler {
            sampling,
            draws: t.sampler_draws,
        };
        self.seqs.insert(t.seq_id, Resident { fed, sampler });
        Ok(())
    }
}
