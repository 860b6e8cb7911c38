//! `moeflow trace` and `moeflow place` as a user runs them: synthesise traces, analyse them
//! (with bad files mixed in), convert between formats, plan from prefill data and replay
//! decode data, and refuse what does not fit.

use std::path::Path;
use std::process::{Command, Output};

use moeflow_placement::PlacementPlan;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

fn moeflow(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("MOEFLOW_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run moeflow");
    out
}

fn ok(args: &[&str]) -> String {
    let out = moeflow(args);
    assert!(
        out.status.success(),
        "moeflow {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report JSON")
}

#[test]
fn synth_analyze_convert_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let bin = tmp.path().join("t.mfbin");
    let sets = [
        "--set",
        "requests=24",
        "--set",
        "zipf_exponent=1.2",
        "--set",
        "seed=7",
    ];
    let mut args = vec!["trace", "synth", "--format", "paper", "--out", s(&tree)];
    args.extend(sets);
    ok(&args);
    let mut args = vec!["trace", "synth", "--format", "binary", "--out", s(&bin)];
    args.extend(sets);
    ok(&args);

    // The same seed in two formats gives the same statistics.
    let (ra, rb) = (tmp.path().join("ra"), tmp.path().join("rb"));
    ok(&[
        "trace",
        "analyze",
        s(&tree),
        "--num-experts",
        "16",
        "--out",
        s(&ra),
    ]);
    ok(&["trace", "analyze", s(&bin), "--out", s(&rb)]);
    let (a, b) = (report(&ra), report(&rb));
    assert_eq!(a["frequencies"], b["frequencies"]);
    assert!(ra.join("report.md").exists());
    assert!(std::fs::read_dir(&ra).unwrap().any(|e| e
        .unwrap()
        .path()
        .extension()
        .is_some_and(|x| x == "svg")));

    // Binary -> paper tree -> the same again.
    let back = tmp.path().join("back");
    ok(&[
        "trace",
        "convert",
        s(&bin),
        "--to",
        "paper",
        "--out",
        s(&back),
    ]);
    let rc = tmp.path().join("rc");
    ok(&[
        "trace",
        "analyze",
        s(&back),
        "--num-experts",
        "16",
        "--out",
        s(&rc),
    ]);
    assert_eq!(report(&rc)["frequencies"], a["frequencies"]);

    let info = ok(&["trace", "info", s(&bin)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["shape"]["num_experts"], 16);
}

#[test]
fn bad_files_are_skipped_named_and_change_the_exit_status() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    ok(&[
        "trace",
        "synth",
        "--format",
        "paper",
        "--out",
        s(&tree),
        "--set",
        "requests=6",
    ]);
    // Put bad files next to the good ones, in a subject folder of the same model.
    let subject = walk_first_json(&tree)
        .parent()
        .expect("subject folder")
        .to_path_buf();
    let good = std::fs::read_to_string(walk_first_json(&tree)).unwrap();
    std::fs::write(subject.join("truncated.json"), &good[..good.len() / 2]).unwrap();
    std::fs::write(subject.join("garbage.json"), "{not json").unwrap();
    std::fs::write(
        subject.join("out_of_range.json"),
        good.replacen("[[", "[[999,", 1),
    )
    .unwrap();
    let out_dir = tmp.path().join("r");
    let out = moeflow(&[
        "trace",
        "analyze",
        s(&tree),
        "--num-experts",
        "16",
        "--out",
        s(&out_dir),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    for name in ["truncated.json", "garbage.json", "out_of_range.json"] {
        assert!(stderr.contains(name), "{name} not reported: {stderr}");
    }
    // The good files were still analysed.
    assert_eq!(report(&out_dir)["inputs"]["requests"], 6, "{stderr}");
}

fn walk_first_json(dir: &Path) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    files.into_iter().next().expect("a json file")
}

#[test]
fn plans_from_prefill_counts_and_replays_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let counts = tmp.path().join("counts");
    ok(&[
        "trace",
        "synth",
        "--format",
        "sglang",
        "--out",
        s(&counts),
        "--set",
        "requests=40",
        "--set",
        "num_experts=32",
        "--set",
        "top_k=4",
        "--set",
        "zipf_exponent=1.5",
    ]);
    let prefill = std::fs::read_dir(&counts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("prefill_")
        })
        .expect("a prefill dump");
    let decode = prefill.with_file_name(
        prefill
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replacen("prefill_", "decode_", 1),
    );
    let mut plans = Vec::new();
    for algo in ["contiguous", "eplb", "prefill-aware", "traffic-aware"] {
        let plan = tmp.path().join(format!("{algo}.json"));
        ok(&[
            "place",
            "plan",
            "--algo",
            algo,
            "--ranks",
            "4",
            "--redundant",
            "1",
            "--top-k",
            "4",
            "--from",
            s(&prefill),
            "--out",
            s(&plan),
        ]);
        let p = PlacementPlan::from_file(&plan).unwrap();
        assert_eq!(p.num_ranks, 4);
        assert_eq!(p.slots_per_rank, Some(9));
        plans.push(plan);
    }
    let eval_dir = tmp.path().join("eval");
    let mut args = vec!["place", "eval", "--top-k", "4", "--on", s(&decode)];
    for p in &plans {
        args.extend(["--plan", s(p)]);
    }
    args.extend(["--out", s(&eval_dir)]);
    let table = ok(&args);
    assert!(
        table.contains("eplb") && table.contains("traffic-aware"),
        "{table}"
    );
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("comparison.json")).unwrap())
            .unwrap();
    let bom = |name: &str| {
        cmp["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[0] == name)
            .unwrap()[1]["overall"]["busiest_over_mean"]
            .as_f64()
            .unwrap()
    };
    // With a strong skew, planning from prefill beats the load-blind layout on decode.
    assert!(bom("eplb") < bom("contiguous"), "{table}");
    assert!(bom("prefill-aware") < bom("contiguous"), "{table}");
    assert!(eval_dir.join("busiest_over_mean.svg").exists());

    // A device profile from a JSON file: the H100's numbers with ten times the compute and
    // memory bandwidth model a shorter step; a profile with a zero field is refused by name.
    let eval_with = |profile: &str, out: Option<&Path>| {
        let mut args = vec!["place", "eval", "--top-k", "4", "--on", s(&decode)];
        args.extend(["--plan", s(&plans[1]), "--profile", profile]);
        if let Some(dir) = out {
            args.extend(["--out", s(dir)]);
        }
        moeflow(&args)
    };
    let step_time = |profile: &str| {
        let dir = tmp.path().join(format!("eval-{}", profile.len()));
        let out = eval_with(profile, Some(&dir));
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("comparison.json")).unwrap())
                .unwrap();
        v["runs"][0][1]["overall"]["step_time_s"].as_f64().unwrap()
    };
    let profile_file = |name: &str, json: &str| {
        let path = tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, json).unwrap();
        path
    };
    let fast = profile_file(
        "fast",
        r#"{"name": "fast", "flops": 9.89e15, "mem_bw": 3.35e13,
            "intra_node_bw": 4.5e11, "inter_node_bw": 5e10}"#,
    );
    assert!(step_time(s(&fast)) < step_time("h100"));
    let broken = profile_file(
        "broken",
        r#"{"name": "broken", "flops": 1e12, "mem_bw": 0,
            "intra_node_bw": 1e9, "inter_node_bw": 1e9}"#,
    );
    let out = eval_with(s(&broken), None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mem_bw"), "{err}");

    // `place profile` measures this machine (small probe) and writes a profile that eval
    // takes; an inter-node bandwidth it cannot use is refused by name.
    let measured = tmp.path().join("measured.json");
    let probe = [
        "place",
        "profile",
        "--hidden-size",
        "64",
        "--intermediate-size",
        "32",
        "--experts",
        "2",
        "--tokens",
        "8",
        "--repeats",
        "3",
        "--link-bytes",
        "65536",
    ];
    let table = ok(&[&probe[..], &["--out", s(&measured)]].concat());
    assert!(
        table.contains("mem_bw") && table.contains("intra_node_bw"),
        "{table}"
    );
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&measured).unwrap()).unwrap();
    for field in ["flops", "mem_bw", "intra_node_bw"] {
        assert!(p[field].as_f64().is_some_and(|v| v > 0.0), "{p}");
    }
    assert_eq!(p["inter_node_bw"].as_f64(), Some(1.25e9));
    assert!(step_time(s(&measured)) > 0.0);
    let out = moeflow(&[&probe[..], &["--inter-node-bw", "0"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inter_node_bw"), "{err}");

    // A plan for another expert count is refused before anything is replayed.
    let tiny_counts = tmp.path().join("tiny");
    ok(&[
        "trace",
        "synth",
        "--format",
        "sglang",
        "--out",
        s(&tiny_counts),
        "--set",
        "num_experts=8",
    ]);
    let out = moeflow(&[
        "place",
        "eval",
        "--top-k",
        "2",
        "--plan",
        s(&plans[1]),
        "--on",
        s(&tiny_counts),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expert"), "{err}");
}
