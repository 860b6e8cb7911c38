//! Expert-parallel execution equals single-process execution: for random placement plans
//! (replicas included) on 1-4 ranks, each rank hosting only its plan's experts and running its
//! own sequences, the logits match the single-process logits of the same sequences.
//! Ranks are threads joined by the in-process communicator; `tests/group_processes.rs` in the
//! server crate runs the same over TCP between real processes.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use moeflow_comm::InProcComm;
use moeflow_placement::{PlacementPlan, PlanTarget, PLAN_FORMAT};
use moeflow_worker::group::EpDispatch;
use moeflow_worker::model::{ForwardCtx, LoadOptions, LogitsMode, SeqInput, Transformer};
use moeflow_worker::moe::{LocalDispatch, MoeDispatch};
use moeflow_worker::sampling::argmax;
use proptest::prelude::*;

const DECODE_STEPS: usize = 3;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn load(dir: &Path, filter: Option<&dyn Fn(usize, u32) -> bool>) -> Transformer {
    Transformer::load(
        dir,
        LoadOptions {
            dtype: DType::F32,
            device: &Device::Cpu,
            experts: filter,
        },
    )
    .expect("load model")
}

/// Runs `prompts` (sequence i on rank `i % ranks`) for a prefill and DECODE_STEPS greedy
/// steps; returns each sequence's logits per step.
fn run_rank(
    model: &Transformer,
    dispatch: &mut dyn MoeDispatch,
    prompts: &[(u64, Vec<u32>)],
) -> Vec<(u64, Vec<Vec<f32>>)> {
    let mut kv = model.kv_cache(8, 64);
    let mut batch: Vec<SeqInput> = prompts
        .iter()
        .map(|(id, p)| SeqInput {
            seq: *id,
            tokens: p.clone(),
            start: 0,
            prompt: true,
        })
        .collect();
    let mut out: Vec<(u64, Vec<Vec<f32>>)> =
        prompts.iter().map(|(id, _)| (*id, Vec::new())).collect();
    for _ in 0..=DECODE_STEPS {
        let logits = {
            let mut ctx = ForwardCtx {
                dispatch: &mut *dispatch,
                observer: None,
            };
            model
                .forward(&batch, &mut kv, &mut ctx, LogitsMode::LastPerSeq)
                .expect("forward")
        };
        let rows = if batch.is_empty() {
            Vec::new()
        } else {
            logits.to_vec2::<f32>().expect("rows")
        };
        for (i, row) in rows.into_iter().enumerate() {
            let next = argmax(&row) as u32;
            out[i].1.push(row);
            let s = &mut batch[i];
            s.start += s.tokens.len();
            s.tokens = vec![next];
            s.prompt = false;
        }
    }
    out
}

fn single(dir: &Path, prompts: &[(u64, Vec<u32>)]) -> Vec<(u64, Vec<Vec<f32>>)> {
    let model = load(dir, None);
    run_rank(&model, &mut LocalDispatch, prompts)
}

fn distributed(
    dir: &Path,
    plan: &PlacementPlan,
    prompts: &[(u64, Vec<u32>)],
) -> Vec<(u64, Vec<Vec<f32>>)> {
    let ranks = plan.num_ranks;
    let comms = InProcComm::group(ranks);
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, comm)| {
            let dir = dir.to_path_buf();
            let plan = plan.clone();
            let mine: Vec<(u64, Vec<u32>)> = prompts
                .iter()
                .filter(|(id, _)| *id as usize % ranks == r)
                .cloned()
                .collect();
            std::thread::spawn(move || {
                let filter = |layer: usize, e: u32| plan.hosts(layer, r, e);
                let model = load(&dir, Some(&filter));
                let mut dispatch = EpDispatch::new(comm, &plan).expect("dispatch");
                run_rank(&model, &mut dispatch, &mine)
            })
        })
        .collect();
    let mut all: Vec<(u64, Vec<Vec<f32>>)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("rank thread"))
        .collect();
    all.sort_by_key(|(id, _)| *id);
    all
}

fn target(dir: &Path) -> PlanTarget {
    let cfg = moeflow_worker::config::ModelConfig::from_dir(dir).expect("config");
    let s = cfg.shape();
    PlanTarget {
        num_experts: s.num_experts,
        moe_layers: s.moe_layers,
    }
}

/// A random valid plan: every expert on a random non-empty set of ranks.
fn plan_strategy(t: PlanTarget) -> impl Strategy<Value = PlacementPlan> {
    (1usize..=4).prop_flat_map(move |ranks| {
        let t = t.clone();
        let masks =
            proptest::collection::vec(1u32..(1 << ranks), t.num_experts * t.moe_layers.len());
        masks.prop_map(move |m| {
            let mut layers = std::collections::BTreeMap::new();
            for (li, &layer) in t.moe_layers.iter().enumerate() {
                let mut lists = vec![Vec::new(); ranks];
                for e in 0..t.num_experts {
                    let mask = m[li * t.num_experts + e];
                    for (r, list) in lists.iter_mut().enumerate() {
                        if mask & (1 << r) != 0 {
                            list.push(e as u32);
                        }
                    }
                }
                layers.insert(layer.to_string(), lists);
            }
            PlacementPlan {
                format: PLAN_FORMAT.into(),
                num_ranks: ranks,
                num_experts: t.num_experts,
                layers,
                slots_per_rank: None,
                model: None,
                algorithm: Some("random".into()),
                source: None,
            }
        })
    })
}

fn prompts(vocab: u32) -> Vec<(u64, Vec<u32>)> {
    (0..3u64)
        .map(|i| {
            (
                i,
                (0..(5 + 3 * i as u32))
                    .map(|j| (j * 37 + i as u32 * 11 + 1) % vocab)
                    .collect(),
            )
        })
        .collect()
}

fn check(name: &str, plan: &PlacementPlan) -> Result<(), TestCaseError> {
    let d = dir(name);
    plan.validate()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let p = prompts(500);
    let want = single(&d, &p);
    let got = distributed(&d, plan, &p);
    prop_assert_eq!(want.len(), got.len());
    for ((id, w), (_, g)) in want.iter().zip(&got) {
        for (step, (a, b)) in w.iter().zip(g).enumerate() {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            prop_assert!(
                diff < 1e-5,
                "{} seq {} step {}: logits differ by {} on {} ranks",
                name,
                id,
                step,
                diff,
                plan.num_ranks
            );
        }
    }
    Ok(())
}

macro_rules! arch_prop {
    ($test:ident, $name:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn $test(plan in plan_strategy(target(&dir($name)))) {
                check($name, &plan)?;
            }
        }
    };
}

arch_prop!(qwen3_moe_any_plan_matches_single_process, "qwen3_moe");
arch_prop!(deepseek_v3_any_plan_matches_single_process, "deepseek_v3");
arch_prop!(llama4_any_plan_matches_single_process, "llama4");

#[test]
fn contiguous_plan_on_four_ranks_matches() {
    for name in ["qwen3_moe", "deepseek_v3", "llama4"] {
        let plan = PlacementPlan::contiguous(&target(&dir(name)), 4).expect("plan");
        check(name, &plan).expect("matches");
    }
}
