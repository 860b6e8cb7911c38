//! The MoE layer, split so that a worker can hold any subset of a layer's experts:
//!
//! - a [`Gate`] (one file per routing rule) turns hidden states into a [`Routing`]: the
//!   selected expert ids and weights of every token, which the trace recorder also sees;
//! - [`LayerExperts`] holds the routed experts this process hosts, each individually
//!   addressable, and computes the weighted sum of expert outputs for the tokens it is given;
//! - a [`MoeDispatch`] decides where the routed computation runs: [`LocalDispatch`] in one
//!   process, an all-to-all implementation across the ranks of a worker group.

mod capture;
mod dispatch;
mod experts;
pub(crate) mod gate;
mod replay;
mod routing;

pub use capture::{RoutingCapture, SeqRouting};
pub use dispatch::{LocalDispatch, MoeDispatch, RoutingObserver};
pub use experts::{Assignment, ExpertSet, LayerExperts};
pub use gate::{Gate, GroupLimitedSigmoidGate, SoftmaxTopKGate, TopKSigmoidInputGate};
pub use replay::{token_key, ReplayError, RouteReplay};
pub use routing::{Routing, WeightApplication};
