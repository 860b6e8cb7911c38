//! Live re-placement on one rank: checking a new plan, staging the experts it gains, and
//! building the expert set the rank runs after the switch.
//!
//! The switch has two phases so that a group never runs two plans at once. Preparing (this
//! module's [`check_plan`] and [`stage`]) happens next to serving: the experts a rank gains are
//! read from its own mapped checkpoint on a background thread (every rank has the weights, so
//! nothing is sent between ranks and no step waits on a peer). Committing happens on the
//! engine thread between two steps: the ranks agree on the plan version over their
//! communicator, and only if every rank staged it do they all swap ([`switched_experts`] builds
//! the new set from the kept and the staged experts, the rest is dropped).

use std::collections::BTreeMap;
use std::time::Instant;

use moeflow_placement::{PlacementPlan, PlanTarget};

use crate::error::{ModelError, Result};
use crate::model::ExpertReader;
use crate::moe::{ExpertSet, LayerExperts};
use crate::nn::SwiGlu;

/// Why a plan is refused before anything changes. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplanError {
    #[error("plan_json: {0}")]
    Json(String),
    #[error("plan: {0}")]
    Plan(#[from] moeflow_placement::PlanError),
    #[error("this worker was started without re-placement support")]
    Unsupported,
}

/// What a rank needs to check and stage a plan.
#[derive(Debug, Clone)]
pub struct ReplanContext {
    pub rank: usize,
    pub world_size: usize,
    pub target: PlanTarget,
    /// The checkpoint directory every rank maps.
    pub model_dir: std::path::PathBuf,
    pub dtype: candle_core::DType,
    pub device: candle_core::Device,
}

/// A validated plan and the experts this rank gains under it, loaded and waiting for the
/// commit.
#[derive(Debug)]
pub struct StagedPlan {
    pub plan: PlacementPlan,
    pub version: u64,
    pub gained: BTreeMap<(usize, u32), SwiGlu>,
    pub bytes_loaded: u64,
    pub load_seconds: f64,
}

/// Parses and checks a plan against the model and the group: the model first (a plan for
/// another model is reported as such, not as its first unhosted expert), then the plan on its
/// own (format, every expert hosted, ids in range), then the group size.
pub fn check_plan(json: &str, ctx: &ReplanContext) -> Result<PlacementPlan, ReplanError> {
    let plan: PlacementPlan =
        serde_json::from_str(json).map_err(|e| ReplanError::Json(e.to_string()))?;
    plan.check_target(&ctx.target)?;
    plan.validate()?;
    if plan.num_ranks != ctx.world_size {
        return Err(moeflow_placement::PlanError::GroupSize {
            plan: plan.num_ranks,
            group: ctx.world_size,
        }
        .into());
    }
    Ok(plan)
}

/// (layer, expert) pairs `rank` hosts under `new` but not under `current`.
pub fn gains(current: &PlacementPlan, new: &PlacementPlan, rank: usize) -> Vec<(usize, u32)> {
    moved(new, current, rank)
}

/// (layer, expert) pairs `rank` hosts under `current` but no longer under `new`.
pub fn drops(current: &PlacementPlan, new: &PlacementPlan, rank: usize) -> Vec<(usize, u32)> {
    moved(current, new, rank)
}

fn moved(from: &PlacementPlan, without: &PlacementPlan, rank: usize) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for layer in from.layer_indices().unwrap_or_default() {
        if let Some(experts) = from.layer(layer).and_then(|r| r.get(rank)) {
            for &e in experts {
                if !without.hosts(layer, rank, e) {
                    out.push((layer, e));
                }
            }
        }
    }
    out
}

/// Reads the experts `rank` gains from the checkpoint (blocking and paced; run it off the
/// engine thread).
pub fn stage(
    plan: PlacementPlan,
    current: &PlacementPlan,
    ctx: &ReplanContext,
) -> Result<StagedPlan> {
    let t0 = Instant::now();
    let want = gains(current, &plan, ctx.rank);
    let mut gained = BTreeMap::new();
    let mut bytes = 0u64;
    if !want.is_empty() {
        let reader = ExpertReader::open(&ctx.model_dir, ctx.dtype, &ctx.device)?;
        for (layer, e) in want {
            let t = Instant::now();
            let ffn = reader.load(layer, e)?;
            bytes += ffn.bytes() as u64;
            gained.insert((layer, e), ffn);
            // Half duty cycle: after each expert, rest as long as its copy took. A low CPU
            // priority alone does not keep the copies off the steps' critical path (they
            // share caches and memory bandwidth with the ranks); resting keeps the slowest
            // step during staging as close to normal as without a switch, for about 1.5x the
            // staging time (BENCHMARKS.md, "Live re-placement").
            std::thread::sleep(t.elapsed());
        }
    }
    Ok(StagedPlan {
        version: plan.fingerprint(),
        plan,
        gained,
        bytes_loaded: bytes,
        load_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Gives the calling thread the lowest scheduling priority (nice 19), so that loading experts
/// in the background does not take CPU time from the ranks' steps. Linux applies
/// `setpriority(PRIO_PROCESS, 0, ..)` to the calling thread only; elsewhere this does nothing.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory of ours; a failure only leaves the priority as
        // it was, which is logged.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower the expert loader's priority"
            );
        }
    }
}

/// Frees `value` (a rank's replaced expert set) on a short-lived low-priority thread. Freeing
/// the experts a rank gives up is one `munmap` per tensor, about 10 ms for 80 MB on a CPU
/// rank, and it happens at the commit, between two steps: done in place, the next token of
/// every running sequence would wait for it. If no thread can be started it is freed here.
pub fn free_in_background<T: Send + 'static>(value: T) {
    // On a failed spawn the closure, and with it `value`, is dropped right here.
    let _ = std::thread::Builder::new()
        .name("moeflow-free".into())
        .spawn(move || {
            lower_thread_priority();
            drop(value);
        });
}

/// The expert set `rank` runs under the staged plan: kept experts are shared with `current`
/// (tensors are reference-counted, nothing is copied), gained ones come from the stage.
/// Fails, changing nothing, if an expert is in neither.
pub fn switched_experts(
    current: &ExpertSet,
    staged: &StagedPlan,
    rank: usize,
    hidden: usize,
) -> Result<ExpertSet> {
    let mut out = ExpertSet::default();
    for layer in staged.plan.layer_indices()? {
        let old = current.layer(layer);
        let num_experts = old.map_or(staged.plan.num_experts, LayerExperts::num_experts);
        let mut set = LayerExperts::new(layer, num_experts, hidden);
        let experts = staged
            .plan
            .layer(layer)
            .and_then(|r| r.get(rank))
            .cloned()
            .unwrap_or_default();
        for e in experts {
            let ffn = staged
                .gained
                .get(&(layer, e))
                .or_else(|| old.and_then(|o| o.expert(e)))
                .ok_or(ModelError::ExpertNotHosted { layer, expert: e })?;
            set.insert(e, ffn.clone());
        }
        out.insert_layer(set);
    }
    Ok(out)
}

impl From<moeflow_placement::PlanError> for ModelError {
    fn from(e: moeflow_placement::PlanError) -> Self {
        ModelError::Input(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn plan(ranks: Vec<Vec<u32>>) -> PlacementPlan {
        let mut p = PlacementPlan::contiguous(
            &PlanTarget {
                num_experts: 4,
                moe_layers: vec![1],
            },
            ranks.len(),
        )
        .unwrap();
        p.layers.insert("1".into(), ranks);
        p
    }

    fn ctx(world_size: usize) -> ReplanContext {
        ReplanContext {
            rank: 0,
            world_size,
            target: PlanTarget {
                num_experts: 4,
                moe_layers: vec![1],
            },
            model_dir: "/nonexistent".into(),
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    #[test]
    fn checks_name_what_is_wrong() {
        let ok = plan(vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(check_plan(&ok.to_json_pretty(), &ctx(2)).unwrap(), ok);
        let unhosted = plan(vec![vec![0, 1], vec![2]]);
        let e = check_plan(&unhosted.to_json_pretty(), &ctx(2)).unwrap_err();
        assert!(e.to_string().contains("expert 3 is not hosted"), "{e}");
        let e = check_plan(&ok.to_json_pretty(), &ctx(3)).unwrap_err();
        assert!(
            e.to_string()
                .contains("plan is for 2 ranks, the group has 3"),
            "{e}"
        );
        let mut other = ok.clone();
        other.num_experts = 8;
        let e = check_plan(&other.to_json_pretty(), &ctx(2)).unwrap_err();
        assert!(e.to_string().contains("8 experts"), "{e}");
        let e = check_plan("{", &ctx(2)).unwrap_err();
        assert!(e.to_string().starts_with("plan_json:"), "{e}");
    }

    #[test]
    fn gains_and_drops_per_rank() {
        let a = plan(vec![vec![0, 1], vec![2, 3]]);
        let b = plan(vec![vec![0, 2], vec![1, 2, 3]]);
        assert_eq!(gains(&a, &b, 0), vec![(1, 2)]);
        assert_eq!(drops(&a, &b, 0), vec![(1, 1)]);
        assert_eq!(gains(&a, &b, 1), vec![(1, 1)]);
        assert!(drops(&a, &b, 1).is_empty());
    }

    #[test]
    fn switched_set_keeps_shares_and_refuses_missing() {
        let dev = Device::Cpu;
        let ffn = |v: f32| {
            SwiGlu::from_input_major(
                candle_core::Tensor::full(v, (2, 2), &dev).unwrap(),
                candle_core::Tensor::full(v, (1, 2), &dev).unwrap(),
            )
            .unwrap()
        };
        let mut cur = ExpertSet::default();
        let mut l = LayerExperts::new(1, 4, 2);
        l.insert(0, ffn(0.0));
        l.insert(1, ffn(1.0));
        cur.insert_layer(l);
        let mut staged = StagedPlan {
            plan: plan(vec![vec![0, 2], vec![1, 3]]),
            version: 1,
            gained: BTreeMap::new(),
            bytes_loaded: 0,
            load_seconds: 0.0,
        };
        assert!(matches!(
            switched_experts(&cur, &staged, 0, 2),
            Err(ModelError::ExpertNotHosted {
                layer: 1,
                expert: 2
            })
        ));
        staged.gained.insert((1, 2), ffn(2.0));
        let set = switched_experts(&cur, &staged, 0, 2).unwrap();
        assert_eq!(set.layer(1).unwrap().hosted(), vec![0, 2]);
    }

    /// The replaced set is freed, and not on the calling (engine) thread.
    #[test]
    fn frees_on_another_thread() {
        struct Probe(std::sync::mpsc::Sender<std::thread::ThreadId>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        free_in_background(Probe(tx));
        let freed_on = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the value was never freed");
        assert_ne!(freed_on, std::thread::current().id());
    }
}
