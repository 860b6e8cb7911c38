//! A placement switch is all ranks or none: ranks that did not all stage the plan keep the
//! old one (experts and routing), and a switch that all staged changes every rank's experts,
//! after which steps still give the single-process logits.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use moeflow_comm::InProcComm;
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_worker::group::EpDispatch;
use moeflow_worker::model::{LoadOptions, Transformer};
use moeflow_worker::runtime::{stage, ChunkInput, Engine, ReplanContext, StepInput};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/qwen3_moe")
}

fn target() -> PlanTarget {
    let s = moeflow_worker::config::ModelConfig::from_dir(&dir())
        .expect("config")
        .shape();
    PlanTarget {
        num_experts: s.num_experts,
        moe_layers: s.moe_layers,
    }
}

fn engines(plan: &PlacementPlan) -> Vec<Engine<EpDispatch<InProcComm>>> {
    InProcComm::group(plan.num_ranks)
        .into_iter()
        .enumerate()
        .map(|(rank, comm)| {
            let filter = |l: usize, e: u32| plan.hosts(l, rank, e);
            let model = Transformer::load(
                &dir(),
                LoadOptions {
                    dtype: DType::F32,
                    device: &Device::Cpu,
                    experts: Some(&filter),
                },
            )
            .expect("load");
            let kv = model.kv_cache(16, 64);
            Engine::new(model, kv, EpDispatch::new(comm, plan).expect("dispatch"))
                .with_plan(plan.clone(), rank)
        })
        .collect()
}

fn ctx(rank: usize) -> ReplanContext {
    ReplanContext {
        rank,
        world_size: 2,
        target: target(),
        model_dir: dir(),
        dtype: DType::F32,
        device: Device::Cpu,
    }
}

/// Runs `f` on every engine at once (collectives need all ranks).
fn on_all<T: Send>(
    engines: &mut [Engine<EpDispatch<InProcComm>>],
    f: impl Fn(usize, &mut Engine<EpDispatch<InProcComm>>) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter_mut()
            .enumerate()
            .map(|(r, e)| {
                let f = &f;
                s.spawn(move || f(r, e))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect()
    })
}

fn hosted(e: &Engine<EpDispatch<InProcComm>>, layer: usize) -> Vec<u32> {
    e.model().experts().layer(layer).expect("layer").hosted()
}

#[test]
fn a_switch_is_all_ranks_or_none() {
    let t = target();
    let old = PlacementPlan::contiguous(&t, 2).expect("plan");
    let mut new = old.clone();
    for l in &t.moe_layers {
        new.layers
            .insert(l.to_string(), vec![vec![4, 5, 6, 7, 0], vec![0, 1, 2, 3]]);
    }
    let l0 = t.moe_layers[0];
    let mut engines = engines(&old);

    // Only rank 0 staged: nobody switches, both say which rank is missing.
    let staged = stage(new.clone(), &old, &ctx(0)).expect("stage");
    // Rank 0 keeps expert 0 and gains 4..7 in every MoE layer.
    assert_eq!(staged.gained.len(), 4 * t.moe_layers.len());
    engines[0].stage_plan(staged);
    let v = new.fingerprint();
    let res = on_all(&mut engines, |_, e| e.commit_plan(v));
    for r in &res {
        let err = r.as_ref().expect_err("must refuse").to_string();
        assert!(err.contains("not staged on rank(s) [1]"), "{err}");
    }
    for (rank, e) in engines.iter().enumerate() {
        assert_eq!(e.plan().expect("plan"), &old);
        assert_eq!(hosted(e, l0), old.layer(l0).expect("layer")[rank]);
    }

    // Both staged: both switch; the old experts are gone.
    for (rank, e) in engines.iter_mut().enumerate() {
        e.stage_plan(stage(new.clone(), &old, &ctx(rank)).expect("stage"));
    }
    let res = on_all(&mut engines, |_, e| e.commit_plan(v));
    assert_eq!(
        res[0].as_ref().expect("commit").experts_dropped,
        3 * t.moe_layers.len()
    );
    assert_eq!(
        res[1].as_ref().expect("commit").experts_dropped,
        4 * t.moe_layers.len()
    );
    for (rank, e) in engines.iter().enumerate() {
        assert_eq!(e.plan().expect("plan"), &new);
        assert_eq!(hosted(e, l0), {
            let mut v = new.layer(l0).expect("layer")[rank].clone();
            v.sort_unstable();
            v
        });
    }

    // Steps run on the new plan and agree with a single process.
    let reference = common_reference(&[3, 1, 4, 1, 5]);
    let out = on_all(&mut engines, |rank, e| {
        let seqs = if rank == 1 {
            vec![ChunkInput {
                seq: 9,
                tokens: vec![3, 1, 4, 1, 5],
                start: 0,
                prompt: true,
                sampling: None,
                sample: true,
                trace: false,
            }]
        } else {
            Vec::new()
        };
        e.step(StepInput {
            seqs,
            return_logits: true,
        })
        .expect("step")
    });
    let logits = out[1][0].logits.as_ref().expect("logits");
    let diff = logits
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "max diff {diff}");
}

fn common_reference(prompt: &[u32]) -> Vec<f32> {
    let model = Transformer::load(
        &dir(),
        LoadOptions {
            dtype: DType::F32,
            device: &Device::Cpu,
            experts: None,
        },
    )
    .expect("load");
    let kv = model.kv_cache(16, 64);
    let mut e = Engine::new(model, kv, moeflow_worker::moe::LocalDispatch);
    let out = e
        .step(StepInput {
            seqs: vec![ChunkInput {
                seq: 1,
                tokens: prompt.to_vec(),
                start: 0,
                prompt: true,
                sampling: None,
                sample: true,
                trace: false,
            }],
            return_logits: true,
        })
        .expect("step");
    out[0].logits.clone().expect("logits")
}
