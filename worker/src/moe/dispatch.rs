//! Where routed expert computation runs, and who watches the routing decisions.

use std::ops::Range;

use candle_core::Tensor;

use super::{LayerExperts, Routing};
use crate::error::Result;
use crate::kv_cache::SeqId;

/// Computes the routed-expert part of a MoE layer: for each token, the weighted sum of its
/// selected experts' outputs, wherever those experts are hosted.
///
/// Every rank of a group calls this once per MoE layer per step, in the same layer order,
/// also with zero tokens, so that collective implementations stay in lockstep.
pub trait MoeDispatch {
    fn routed(
        &mut self,
        layer: usize,
        x: &Tensor,
        routing: &Routing,
        local: &LayerExperts,
    ) -> Result<Tensor>;
}

/// Every expert is hosted in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalDispatch;

impl MoeDispatch for LocalDispatch {
    fn routed(
        &mut self,
        _layer: usize,
        x: &Tensor,
        routing: &Routing,
        local: &LayerExperts,
    ) -> Result<Tensor> {
        local.compute_routing(x, routing)
    }
}

/// Sees every routing decision of a forward pass (trace recording, load statistics).
pub trait RoutingObserver {
    /// `spans` gives each sequence's rows in the batch (`routing` covers all rows); `prefill`
    /// is true for rows that are prompt tokens.
    fn observe(&mut self, layer: usize, spans: &[(SeqId, Range<usize>, bool)], routing: &Routing);
}
