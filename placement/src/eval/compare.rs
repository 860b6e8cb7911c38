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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::testutil::input;
    use moeflow_trace::CountsTrace;

    #[test]
    fn compares_planners_side_by_side() {
        let load = vec![40.0, 30.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let pin = input(vec![load.clone()], 2, 0);
        let shape = ModelShape {
            model: None,
            num_layers: 2,
            num_experts: 8,
            top_k: 1,
            moe_layers: vec![1],
        };
        let item = TraceItem::Counts(CountsTrace {
            id: "c".into(),
            workload: None,
            phase: None,
            counts: vec![None, Some(load.iter().map(|&v| v as u64).collect())],
        });
        let c = compare(
            &["contiguous", "eplb"],
            &pin,
            &shape,
            &DeviceProfile::h100(),
            &EvalOptions::default(),
            [&item],
        )
        .unwrap();
        assert_eq!(c.runs.len(), 2);
        let bm = |i: usize| c.runs[i].1.overall.busiest_over_mean.unwrap();
        // Contiguous puts both hot experts on rank 0; EPLB separates them.
        assert!((bm(0) - 72.0 / 38.0).abs() < 1e-12);
        assert!((bm(1) - 43.0 / 38.0).abs() < 1e-12);
        assert!(c.table().contains("eplb"));
        let err = compare(
            &["nope"],
            &pin,
            &shape,
            &DeviceProfile::h100(),
            &EvalOptions::default(),
            [&item],
        )
        .unwrap_err();
        assert!(err.to_string().contains("planner `nope`"));
    }
}
