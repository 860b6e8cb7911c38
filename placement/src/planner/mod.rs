//! Placement planners: turn per-layer expert loads into a [`PlacementPlan`].
//!
//! Every planner fills exactly `E/N + R` expert slots on every rank of every MoE layer (`E`
//! experts, `N` ranks, `R` redundant slots per rank), hosts every expert at least once, never
//! puts two copies of an expert on one rank, and returns a validated plan that names its
//! algorithm and data. Look planners up by name with [`by_name`]; [`NAMES`] lists them.

mod contiguous;
mod eplb;
pub(crate) mod layout;
mod prefill_aware;
mod robust;
mod round_robin;
mod traffic_aware;

pub use contiguous::Contiguous;
pub use eplb::Eplb;
pub use prefill_aware::{PrefillAware, PrefillAwareVariant};
pub use robust::{
    load_noise, LoadNoise, DEFAULT_LOAD_NOISE, DEFAULT_MIN_WIN_SHARE, ROBUST_SAMPLES,
};
pub use round_robin::RoundRobin;
pub use traffic_aware::TrafficAware;

use moeflow_trace::PhaseLoad;

use crate::cost::CostModel;
use crate::{PlacementPlan, PlanError, PlanTarget, PLAN_FORMAT};

/// Names [`by_name`] accepts.
pub const NAMES: &[&str] = &[
    "contiguous",
    "round-robin",
    "eplb",
    "prefill-aware",
    "prefill-aware-remap",
    "prefill-aware-dup",
    "traffic-aware",
];

/// Why a plan cannot be made. Names the field, layer or expert at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlannerError {
    #[error("unknown planner `{name}`; known: {}", NAMES.join(", "))]
    Unknown { name: String },
    #[error("num_ranks must be positive")]
    NoRanks,
    #[error("{experts} experts do not divide evenly over {ranks} ranks; choose a rank count that divides the expert count")]
    Indivisible { experts: usize, ranks: usize },
    #[error("redundant_per_rank {redundant} is more than the {max} distinct extra experts a rank can host ({experts} experts over {ranks} ranks)")]
    TooManyRedundant {
        redundant: usize,
        max: usize,
        experts: usize,
        ranks: usize,
    },
    #[error("ranks_per_node {ranks_per_node} must be positive and divide num_ranks {ranks}")]
    RanksPerNode { ranks_per_node: usize, ranks: usize },
    #[error("num_groups {groups} must be positive and divide the {experts} experts")]
    Groups { groups: usize, experts: usize },
    #[error("load_noise {value:?} must have finite non-negative group and expert spreads")]
    LoadNoise { value: LoadNoise },
    #[error("min_win_share {value} must be between 0 and 1")]
    MinWinShare { value: f64 },
    #[error("load has layers {got:?}, the model's MoE layers are {want:?}")]
    LoadLayers { got: Vec<usize>, want: Vec<usize> },
    #[error("load of layer {layer} has {got} experts, the model has {want}")]
    LoadWidth {
        layer: usize,
        got: usize,
        want: usize,
    },
    #[error("load of layer {layer} expert {expert} is {value}, not a finite non-negative number")]
    LoadValue {
        layer: usize,
        expert: usize,
        value: f64,
    },
    #[error(
        "pair counts of layer {layer} have {got} entries, {want} expected for {experts} experts"
    )]
    PairsWidth {
        layer: usize,
        got: usize,
        want: usize,
        experts: usize,
    },
    #[error("planner `{planner}` layer {layer} rank {rank}: filled {got} slots, {want} expected (a planner bug)")]
    SlotCount {
        planner: String,
        layer: usize,
        rank: usize,
        got: usize,
        want: usize,
    },
    #[error("planner `{planner}` produced an invalid plan: {source}")]
    Invalid {
        planner: String,
        #[source]
        source: PlanError,
    },
}

/// Everything a planner plans from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub target: PlanTarget,
    pub num_ranks: usize,
    /// Extra expert slots on every rank, for replicas of hot experts.
    pub redundant_per_rank: usize,
    /// Ranks per node (faster links inside a node); `None` treats the group as one node.
    pub ranks_per_node: Option<usize>,
    /// Expert groups of the router (DeepSeek-V3: 8), for EPLB's hierarchical mode.
    pub num_groups: usize,
    /// Experts each token selects; scales counts to per-step tokens in the cost model.
    pub top_k: usize,
    /// Per MoE layer (in `target.moe_layers` order), the load of every expert (selections).
    pub load: Vec<Vec<f64>>,
    /// Per MoE layer, co-activation counts of expert pairs, flattened upper triangle in the
    /// layout of `moeflow_trace::LayerLoad::pairs`.
    pub pairs: Option<Vec<Vec<u64>>>,
    pub cost: CostModel,
    /// How far the loads a plan will serve may stray from `load` (see [`LoadNoise`],
    /// [`load_noise`]). The load-aware planners choose between layouts by the expected
    /// busiest rank under loads perturbed this much; [`LoadNoise::NONE`] judges layouts on
    /// `load` exactly.
    pub load_noise: LoadNoise,
    /// The share of perturbed loads in which a layout must beat EPLB's before a load-aware
    /// planner leaves EPLB's layout (see [`DEFAULT_MIN_WIN_SHARE`]); 0 asks only for a win
    /// on average.
    pub min_win_share: f64,
    /// Provenance copied into the plan.
    pub model: Option<String>,
    pub source: Option<String>,
}

impl PlanInput {
    /// Plans from one phase's loads; takes the pair counts when the load has them (per-token
    /// data only). Fails if the load's layers or widths do not match `target`.
    pub fn from_load(
        target: PlanTarget,
        load: &PhaseLoad,
        num_ranks: usize,
        redundant_per_rank: usize,
    ) -> Result<Self, PlannerError> {
        let got: Vec<usize> = load.layers.iter().map(|l| l.layer).collect();
        if got != target.moe_layers {
            return Err(PlannerError::LoadLayers {
                got,
                want: target.moe_layers.clone(),
            });
        }
        let pairs = load.has_pairs().then(|| {
            load.layers
                .iter()
                .map(|l| l.pairs.clone().unwrap_or_default())
                .collect()
        });
        let input = Self {
            num_ranks,
            redundant_per_rank,
            ranks_per_node: None,
            num_groups: 1,
            top_k: 1,
            load: load
                .layers
                .iter()
                .map(|l| l.counts.iter().map(|&c| c as f64).collect())
                .collect(),
            pairs,
            cost: CostModel::default(),
            load_noise: DEFAULT_LOAD_NOISE,
            min_win_share: DEFAULT_MIN_WIN_SHARE,
            model: None,
            source: None,
            target,
        };
        input.validate()?;
        Ok(input)
    }

    pub fn with_nodes(mut self, ranks_per_node: Option<usize>) -> Self {
        self.ranks_per_node = ranks_per_node;
        self
    }

    pub fn with_groups(mut self, num_groups: usize) -> Self {
        self.num_groups = num_groups;
        self
    }

    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }

    pub fn with_cost(mut self, cost: CostModel) -> Self {
        self.cost = cost;
        self
    }

    pub fn with_load_noise(mut self, load_noise: LoadNoise) -> Self {
        self.load_noise = load_noise;
        self
    }

    pub fn with_min_win_share(mut self, share: f64) -> Self {
        self.min_win_share = share;
        self
    }

    pub fn with_source(mut self, model: Option<String>, source: Option<String>) -> Self {
        self.model = model;
        self.source = source;
        self
    }

    /// Experts per rank per layer: `E/N + R`.
    pub fn slots_per_rank(&self) -> usize {
        self.target.num_experts / self.num_ranks.max(1) + self.redundant_per_rank
    }

    /// Nodes of the group (1 without `ranks_per_node`).
    pub fn num_nodes(&self) -> usize {
        self.ranks_per_node
            .map_or(1, |r| self.num_ranks / r.max(1))
            .max(1)
    }

    /// Node of `rank`.
    pub fn node_of(&self, rank: usize) -> usize {
        self.ranks_per_node.map_or(0, |r| rank / r.max(1))
    }

    /// Checks every field against the others; planners call it before planning.
    pub fn validate(&self) -> Result<(), PlannerError> {
        let (e, n, r) = (
            self.target.num_experts,
            self.num_ranks,
            self.redundant_per_rank,
        );
        if n == 0 {
            return Err(PlannerError::NoRanks);
        }
        if !e.is_multiple_of(n) {
            return Err(PlannerError::Indivisible {
                experts: e,
                ranks: n,
            });
        }
        // A rank hosts distinct experts, so at most E - E/N extra ones.
        let max = e - e / n;
        if r > max {
            return Err(PlannerError::TooManyRedundant {
                redundant: r,
                max,
                experts: e,
                ranks: n,
            });
        }
        if let Some(rpn) = self.ranks_per_node {
            if rpn == 0 || !n.is_multiple_of(rpn) {
                return Err(PlannerError::RanksPerNode {
                    ranks_per_node: rpn,
                    ranks: n,
                });
            }
        }
        if self.num_groups == 0 || !e.is_multiple_of(self.num_groups) {
            return Err(PlannerError::Groups {
                groups: self.num_groups,
                experts: e,
            });
        }
        if !self.load_noise.is_valid() {
            return Err(PlannerError::LoadNoise {
                value: self.load_noise,
            });
        }
        if !(0.0..=1.0).contains(&self.min_win_share) {
            return Err(PlannerError::MinWinShare {
                value: self.min_win_share,
            });
        }
        if self.load.len() != self.target.moe_layers.len() {
            return Err(PlannerError::LoadLayers {
                got: (0..self.load.len()).collect(),
                want: self.target.moe_layers.clone(),
            });
        }
        for (l, row) in self.target.moe_layers.iter().zip(&self.load) {
            if row.len() != e {
                return Err(PlannerError::LoadWidth {
                    layer: *l,
                    got: row.len(),
                    want: e,
                });
            }
            if let Some((x, &v)) = row
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(PlannerError::LoadValue {
                    layer: *l,
                    expert: x,
                    value: v,
                });
            }
        }
        if let Some(pairs) = &self.pairs {
            let want = e * e.saturating_sub(1) / 2;
            for (i, &l) in self.target.moe_layers.iter().enumerate() {
                let got = pairs.get(i).map_or(0, Vec::len);
                if got != want {
                    return Err(PlannerError::PairsWidth {
                        layer: l,
                        got,
                        want,
                        experts: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// Per-step token counts of MoE layer number `i` (the cost model's scaling applied).
    pub(crate) fn step_tokens(&self, i: usize) -> Vec<f64> {
        let row = &self.load[i];
        let scale = self.cost.step_scale(row.iter().sum(), self.top_k);
        row.iter().map(|&c| c * scale).collect()
    }
}

/// A placement algorithm. Implementations are stateless apart from their options, so one
/// value can plan many inputs.
pub trait Planner: Send + Sync {
    /// The name it is registered under (also written to the plan's `algorithm`).
    fn name(&self) -> &str;
    fn plan(&self, input: &PlanInput) -> Result<PlacementPlan, PlannerError>;
}

/// The planner registered as `name` (see [`NAMES`]), with default options.
pub fn by_name(name: &str) -> Result<Box<dyn Planner>, PlannerError> {
    Ok(match name {
        "contiguous" => Box::new(Contiguous),
        "round-robin" => Box::new(RoundRobin),
        "eplb" => Box::new(Eplb),
        "prefill-aware" => Box::new(PrefillAware::new(PrefillAwareVariant::Auto)),
        "prefill-aware-remap" => Box::new(PrefillAware::new(PrefillAwareVariant::Remap)),
        "prefill-aware-dup" => Box::new(PrefillAware::new(PrefillAwareVariant::Dup)),
        "traffic-aware" => Box::new(TrafficAware::default()),
        other => {
            return Err(PlannerError::Unknown {
                name: other.to_string(),
            })
        }
    })
}

/// The criterion the load-aware planners choose layouts by, per MoE layer of `input` (in
/// `target.moe_layers` order): the busiest rank's modelled cost, averaged over the loads
/// perturbed by `input.load_noise` (the loads themselves without noise). Fails if `plan`
/// lacks a layer of the input.
pub fn expected_busiest(input: &PlanInput, plan: &PlacementPlan) -> Result<Vec<f64>, PlannerError> {
    input.validate()?;
    let cost = |x: f64| input.cost.cost(x);
    input
        .target
        .moe_layers
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let ranks = plan.layer(l).ok_or_else(|| PlannerError::LoadLayers {
                got: plan.layers.keys().filter_map(|k| k.parse().ok()).collect(),
                want: input.target.moe_layers.clone(),
            })?;
            Ok(robust::Robust::new(input, i, &cost).score(ranks))
        })
        .collect()
}

/// Builds the plan from one rank layout per MoE layer (`layer_plan(i)` for layer number `i`
/// of `target.moe_layers`), checks the slot budget and validates it.
pub(crate) fn assemble(
    name: &str,
    input: &PlanInput,
    mut layer_plan: impl FnMut(usize) -> Result<Vec<Vec<u32>>, PlannerError>,
) -> Result<PlacementPlan, PlannerError> {
    input.validate()?;
    let slots = input.slots_per_rank();
    let mut layers = std::collections::BTreeMap::new();
    for (i, &layer) in input.target.moe_layers.iter().enumerate() {
        let mut ranks = layer_plan(i)?;
        for (rank, experts) in ranks.iter_mut().enumerate() {
            if experts.len() != slots {
                return Err(PlannerError::SlotCount {
                    planner: name.to_string(),
                    layer,
                    rank,
                    got: experts.len(),
                    want: slots,
                });
            }
            experts.sort_unstable();
        }
        layers.insert(layer.to_string(), ranks);
    }
    let plan = PlacementPlan {
        format: PLAN_FORMAT.to_string(),
        num_ranks: input.num_ranks,
        num_experts: input.target.num_experts,
        layers,
        slots_per_rank: Some(slots),
        model: input.model.clone(),
        algorithm: Some(name.to_string()),
        source: input.source.clone(),
    };
    let check = plan
        .validate()
        .and_then(|()| plan.check_target(&input.target));
    check.map_err(|source| PlannerError::Invalid {
        planner: name.to_string(),
        source,
    })?;
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A cost model without a memory floor: cost is proportional to tokens, so that token
    /// loads and modelled costs rank layouts the same way.
    pub fn linear_cost() -> CostModel {
        let mut c = CostModel::default();
        c.profile.mem_bw = f64::INFINITY;
        c
    }

    /// An input over `layers` MoE layers (ids 1..) with the given loads per layer and a
    /// linear cost.
    pub fn input(load: Vec<Vec<f64>>, ranks: usize, redundant: usize) -> PlanInput {
        let e = load.first().map_or(0, Vec::len);
        PlanInput {
            target: PlanTarget {
                num_experts: e,
                moe_layers: (1..=load.len()).collect(),
            },
            num_ranks: ranks,
            redundant_per_rank: redundant,
            ranks_per_node: None,
            num_groups: 1,
            top_k: 1,
            load,
            pairs: None,
            cost: linear_cost(),
            load_noise: LoadNoise::NONE,
            min_win_share: DEFAULT_MIN_WIN_SHARE,
            model: None,
            source: None,
        }
    }

    /// Max over ranks of the token load, replicas splitting their expert's load evenly.
    pub fn max_load(plan: &PlacementPlan, input: &PlanInput) -> f64 {
        input
            .target
            .moe_layers
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let ranks = plan.layer(l).unwrap();
                let copies = layout::copies(ranks, input.target.num_experts);
                layout::rank_loads(ranks, &input.load[i], &copies, &|t| t)
                    .into_iter()
                    .fold(0.0, f64::max)
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use moeflow_trace::{CountsTrace, LoadSummary, ModelShape, Phase, TraceItem};

    #[test]
    fn registry_knows_every_name_and_refuses_others() {
        for &n in NAMES {
            assert_eq!(by_name(n).unwrap().name(), n);
        }
        let err = by_name("best").err().unwrap();
        assert!(err.to_string().contains("unknown planner `best`"));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let mut i = input(vec![vec![1.0; 8]], 3, 0);
        assert!(matches!(
            i.validate(),
            Err(PlannerError::Indivisible {
                experts: 8,
                ranks: 3
            })
        ));
        i.num_ranks = 4;
        i.redundant_per_rank = 7;
        assert!(matches!(
            i.validate(),
            Err(PlannerError::TooManyRedundant { max: 6, .. })
        ));
        i.redundant_per_rank = 1;
        i.ranks_per_node = Some(3);
        assert!(matches!(
            i.validate(),
            Err(PlannerError::RanksPerNode { .. })
        ));
        i.ranks_per_node = Some(2);
        i.num_groups = 3;
        assert!(matches!(i.validate(), Err(PlannerError::Groups { .. })));
        i.num_groups = 2;
        i.load[0][3] = f64::NAN;
        assert!(matches!(
            i.validate(),
            Err(PlannerError::LoadValue {
                layer: 1,
                expert: 3,
                ..
            })
        ));
        i.load[0] = vec![1.0; 7];
        assert!(matches!(
            i.validate(),
            Err(PlannerError::LoadWidth {
                layer: 1,
                got: 7,
                want: 8
            })
        ));
    }

    #[test]
    fn from_load_checks_layers_and_takes_counts() {
        let shape = ModelShape {
            model: None,
            num_layers: 3,
            num_experts: 4,
            top_k: 2,
            moe_layers: vec![1, 2],
        };
        let mut s = LoadSummary::new(shape.clone(), false);
        s.add(&TraceItem::Counts(CountsTrace {
            id: "c".into(),
            workload: None,
            phase: Some(Phase::Prefill),
            counts: vec![None, Some(vec![4, 3, 2, 1]), Some(vec![1, 1, 1, 1])],
        }))
        .unwrap();
        let target = PlanTarget {
            num_experts: 4,
            moe_layers: vec![1, 2],
        };
        let i = PlanInput::from_load(target, &s.prefill, 2, 0).unwrap();
        assert_eq!(i.load[0], vec![4.0, 3.0, 2.0, 1.0]);
        assert!(i.pairs.is_none());
        let other = PlanTarget {
            num_experts: 4,
            moe_layers: vec![1, 2, 5],
        };
        let err = PlanInput::from_load(other, &s.prefill, 2, 0).unwrap_err();
        assert!(err.to_string().contains("[1, 2]") && err.to_string().contains("[1, 2, 5]"));
    }
}
