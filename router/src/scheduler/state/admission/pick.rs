//! The rank-pick rule as a replaceable policy: which of the ranks that can hold a new
//! sequence gets it. The budget decides who *can* (KV blocks, running sequences); the policy
//! only chooses among them.

use moeflow_api::GenerateRequest;

/// The books of one rank as a policy sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RankBooks {
    pub rank: usize,
    /// KV blocks reserved by the sequences on it.
    pub blocks: usize,
    /// Sequences on it.
    pub running: usize,
}

/// Chooses the rank for a new sequence.
pub(crate) trait RankPick: Send {
    /// One of `candidates` (every rank with room for `req`; never empty), or None to keep the
    /// request waiting.
    fn choose(&self, req: &GenerateRequest, candidates: &[RankBooks]) -> Option<usize>;
}
