//! Several planners on the same input, replayed against the same source.

use moeflow_trace::{ModelShape, TraceItem};

use super::{Comparison, DeviceProfile, EvalError, EvalOptions, Evaluator};
use crate::planner::{by_name, PlanInput, PlannerError};
use crate::PlacementPlan;

/// Why a comparison failed: a planner (named) or the replay.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    #[error("planner `{name}`: {source}")]
    Planner {
        name: String,
        #[source]
        source: PlannerError,
    },
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// One evaluator per plan, fed the same items.
#[derive(Debug, Clone)]
pub struct Compare {
    runs: Vec<(String, Evaluator)>,
}

impl Compare {
    /// Plans `input` with every planner in `names` and prepares their evaluators.
    pub fn new(
        names: &[&str],
        input: &PlanInput,
        shape: &ModelShape,
        profile: &DeviceProfile,
        opts: &EvalOptions,
    ) -> Result<Self, CompareError> {
        let mut plans = Vec::with_capacity(names.len());
        for &name in names {
            let err = |source| CompareError::Planner {
                name: name.to_string(),
                source,
            };
            let plan = by_name(name).map_err(err)?.plan(input).map_err(err)?;
            plans.push((name.to_string(), plan));
        }
        Self::from_plans(plans, shape, profile, opts)
    }

    /// Compares ready-made plans (e.g. read from files), labelled by the caller.
    pub fn from_plans(
        plans: Vec<(String, PlacementPlan)>,
        shape: &ModelShape,
        profile: &DeviceProfile,
        opts: &EvalOptions,
    ) -> Result<Self, CompareError> {
        let runs = plans
            .into_iter()
            .map(|(name, plan)| {
                Evaluator::new(&plan, shape, profile.clone(), opts.clone()).map(|ev| (name, ev))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { runs })
    }

    pub fn add(&mut self, item: &TraceItem) -> Result<(), EvalError> {
        for (_, ev) in &mut self.runs {
            ev.add(item)?;
        }
        Ok(())
    }

    /// Folds another comparison of the same plans (built on another thread).
    pub fn merge(&mut self, other: &Compare) -> Result<(), EvalError> {
        if self.runs.len() != other.runs.len() {
            return Err(EvalError::Merge("plan lists"));
        }
        for ((_, a), (_, b)) in self.runs.iter_mut().zip(&other.runs) {
            a.merge(b)?;
        }
        Ok(())
    }

    pub fn finish(&self) -> Comparison {
        Comparison {
            runs: self
                .runs
                .iter()
                .map(|(n, ev)| (n.clone(), ev.finish()))
                .collect(),
        }
    }
}

/// Plans with every planner in `names`, replays `items` against each plan, and returns the
/// reports side by side.
pub fn compare<'a>(
    names: &[&str],
    input: &PlanInput,
    shape: &ModelShape,
    profile: &DeviceProfile,
    opts: &EvalOptions,
    items: impl IntoIterator<Item = &'a TraceItem>,
) -> Result<Comparison, CompareError> {
    let mut c = Compare::new(names, input, shape, profile, opts)?;
    for item in items {
        c.add(item)?;
    }
    Ok(c.finish())
}
