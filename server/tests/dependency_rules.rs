//! The workspace's dependency rules (ARCHITECTURE.md, "Dependency rules"), checked on the graph
//! Cargo resolves: which moeflow crates each crate may reach, and which it must never reach
//! (candle outside model execution, RPC or tensor libraries in the contract crate).
//!
//! A crate's own normal, build and dev dependencies all count (a dev-dependency on the worker
//! would compile candle into the front end's tests just the same); below it, the normal and
//! build dependencies, which is what Cargo builds. The graph is the host platform's, as
//! `cargo tree` shows it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// One crate's rule: the moeflow crates it may reach and the name prefixes of packages it
/// must not reach.
struct Rule {
    krate: &'static str,
    may_reach: &'static [&'static str],
    never: &'static [&'static str],
}

/// Tensor code belongs to model execution.
const NO_CANDLE: &[&str] = &["candle-"];

/// Every workspace crate but the binary, which wires them all together.
const RULES: &[Rule] = &[
    // The contract between front ends and backends: both sides depend on it, so it depends on
    // neither, and stays light enough for any front end (no RPC stack, no tensors).
    Rule {
        krate: "moeflow-api",
        may_reach: &[],
        never: &["candle-", "tonic", "prost", "axum", "hyper"],
    },
    Rule {
        krate: "moeflow-tokenizer",
        may_reach: &[],
        never: NO_CANDLE,
    },
    Rule {
        krate: "moeflow-proto",
        may_reach: &[],
        never: NO_CANDLE,
    },
    Rule {
        krate: "moeflow-trace",
        may_reach: &[],
        never: NO_CANDLE,
    },
    Rule {
        krate: "moeflow-placement",
        may_reach: &["moeflow-trace"],
        never: NO_CANDLE,
    },
    Rule {
        krate: "moeflow-comm",
        may_reach: &["moeflow-proto"],
        never: NO_CANDLE,
    },
    // Talks to any OpenAI-compatible server over HTTP, moeflow or not.
    Rule {
        krate: "moeflow-loadgen",
        may_reach: &[],
        never: NO_CANDLE,
    },
    // Sees the contract, the tokenizer and the public gRPC messages; never workers, batches,
    // KV blocks or candle.
    Rule {
        krate: "moeflow-frontend",
        may_reach: &["moeflow-api", "moeflow-tokenizer", "moeflow-proto"],
        never: NO_CANDLE,
    },
    // Knows workers only through their gRPC API.
    Rule {
        krate: "moeflow-router",
        may_reach: &[
            "moeflow-api",
            "moeflow-proto",
            "moeflow-trace",
            "moeflow-placement",
        ],
        never: NO_CANDLE,
    },
    // Knows nothing of scheduling or of the front ends.
    Rule {
        krate: "moeflow-worker",
        may_reach: &[
            "moeflow-api",
            "moeflow-tokenizer",
            "moeflow-proto",
            "moeflow-comm",
            "moeflow-trace",
            "moeflow-placement",
        ],
        never: &[],
    },
];

/// The binary: may depend on every crate.
const BINARY: &str = "moeflow";

/// The resolved dependency graph of the workspace.
struct Graph {
    /// Package id to package name.
    names: HashMap<String, String>,
    /// Package id to its dependencies: (package id, whether a normal or build edge exists).
    deps: HashMap<String, Vec<(String, bool)>>,
    /// Workspace member name to package id.
    members: BTreeMap<String, String>,
}

impl Graph {
    fn load() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--filter-platform"])
            .arg(host_triple())
            .arg("--manifest-path")
            .arg(&manifest)
            .output()
            .unwrap_or_else(|e| panic!("running cargo metadata: {e}"));
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
        Self::from_metadata(&meta)
    }

    fn from_metadata(meta: &Value) -> Self {
        let str_of = |v: &Value, field: &str| -> String {
            v[field]
                .as_str()
                .unwrap_or_else(|| panic!("cargo metadata: no string `{field}` in {v}"))
                .to_string()
        };
        let names: HashMap<String, String> = array(&meta["packages"])
            .iter()
            .map(|p| (str_of(p, "id"), str_of(p, "name")))
            .collect();
        let mut deps = HashMap::new();
        for node in array(&meta["resolve"]["nodes"]) {
            let edges = array(&node["deps"])
                .iter()
                .map(|d| {
                    let built = array(&d["dep_kinds"])
                        .iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build");
                    (str_of(d, "pkg"), built)
                })
                .collect();
            deps.insert(str_of(node, "id"), edges);
        }
        let members = array(&meta["workspace_members"])
            .iter()
            .map(|id| {
                let id = id.as_str().expect("cargo metadata: member id").to_string();
                (names[&id].clone(), id)
            })
            .collect();
        Self {
            names,
            deps,
            members,
        }
    }

    /// Every package `krate` reaches, by name, with the chain of names that leads to it.
    fn reach(&self, krate: &str) -> BTreeMap<String, Vec<String>> {
        let root = self
            .members
            .get(krate)
            .unwrap_or_else(|| panic!("{krate} is not a workspace member"));
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([root.as_str()]);
        while let Some(id) = queue.pop_front() {
            for (dep, built) in self.deps.get(id).into_iter().flatten() {
                let followed = id == root || *built;
                if followed && dep != root && !parent.contains_key(dep.as_str()) {
                    parent.insert(dep, id);
                    queue.push_back(dep);
                }
            }
        }
        parent
            .keys()
            .map(|&id| {
                let mut chain = vec![self.names[id].clone()];
                let mut at = id;
                while let Some(&up) = parent.get(at) {
                    chain.push(self.names[up].clone());
                    at = up;
                }
                chain.reverse();
                (self.names[id].clone(), chain)
            })
            .collect()
    }
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("cargo metadata: expected an array, got {v}"))
}

/// The host's target triple (`rustc -vV`), so that only packages built here are resolved (the
/// others, e.g. Windows-only crates, need not even be downloaded).
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .unwrap_or_else(|e| panic!("running {rustc} -vV: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("no `host:` line in {rustc} -vV: {text}"))
        .to_string()
}

fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(Graph::load)
}

/// What `rule` forbids that its crate reaches, one line each with the chain that leads there.
fn violations(g: &Graph, rule: &Rule) -> Vec<String> {
    let allowed: BTreeSet<&str> = rule.may_reach.iter().copied().collect();
    g.reach(rule.krate)
        .into_iter()
        .filter(|(name, _)| {
            let other_member = g.members.contains_key(name)
                && name != rule.krate
                && !allowed.contains(name.as_str());
            other_member || rule.never.iter().any(|p| name.starts_with(p))
        })
        .map(|(_, chain)| chain.join(" -> "))
        .collect()
}

#[test]
fn every_crate_keeps_its_dependency_rule() {
    let g = graph();
    let broken: Vec<String> = RULES.iter().flat_map(|r| violations(g, r)).collect();
    assert!(
        broken.is_empty(),
        "dependencies that break the rules in ARCHITECTURE.md (\"Dependency rules\"):\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_workspace_crate_has_a_rule() {
    let ruled: BTreeSet<&str> = RULES.iter().map(|r| r.krate).chain([BINARY]).collect();
    let members: BTreeSet<&str> = graph().members.keys().map(String::as_str).collect();
    let unruled: Vec<&&str> = members.difference(&ruled).collect();
    assert!(
        unruled.is_empty(),
        "crates without a dependency rule (add them to RULES here and to ARCHITECTURE.md): {unruled:?}"
    );
    let gone: Vec<&&str> = ruled.difference(&members).collect();
    assert!(
        gone.is_empty(),
        "rules for crates that no longer exist: {gone:?}"
    );
}

/// The checks above pass vacuously if the walk misses edges; these are edges that exist.
#[test]
fn the_walk_follows_normal_dev_and_transitive_edges() {
    let g = graph();
    let binary = g.reach(BINARY);
    for name in [
        "moeflow-worker",
        "moeflow-frontend",
        "moeflow-api",
        "candle-core",
    ] {
        assert!(binary.contains_key(name), "{BINARY} should reach {name}");
    }
    // Transitive: the front end uses minijinja only through the tokenizer.
    let frontend = g.reach("moeflow-frontend");
    assert_eq!(
        frontend.get("minijinja").map(Vec::as_slice),
        Some(&["moeflow-frontend", "moeflow-tokenizer", "minijinja"].map(String::from)[..])
    );
    // A dev-dependency of the crate itself counts (the worker's benchmark harness); one of a
    // dependency is not built, so it does not.
    assert!(g.reach("moeflow-worker").contains_key("divan"));
    assert!(!binary.contains_key("divan"));
}

/// The rule check itself, on a graph where the front end reaches candle through the worker
/// by a dev-dependency.
#[test]
fn a_forbidden_dev_dependency_is_reported_with_its_chain() {
    let meta = serde_json::json!({
        "packages": [
            {"id": "f", "name": "moeflow-frontend"},
            {"id": "w", "name": "moeflow-worker"},
            {"id": "c", "name": "candle-core"},
            {"id": "a", "name": "moeflow-api"},
            {"id": "p", "name": "proptest"},
        ],
        "workspace_members": ["f", "w", "a"],
        "resolve": {"nodes": [
            {"id": "f", "deps": [
                {"pkg": "a", "dep_kinds": [{"kind": null}]},
                {"pkg": "w", "dep_kinds": [{"kind": "dev"}]},
            ]},
            {"id": "w", "deps": [{"pkg": "c", "dep_kinds": [{"kind": null}]}]},
            {"id": "a", "deps": [{"pkg": "p", "dep_kinds": [{"kind": "dev"}]}]},
            {"id": "c", "deps": []},
            {"id": "p", "deps": []},
        ]},
    });
    let g = Graph::from_metadata(&meta);
    let frontend = RULES
        .iter()
        .find(|r| r.krate == "moeflow-frontend")
        .expect("the frontend's rule");
    assert_eq!(
        violations(&g, frontend),
        [
            "moeflow-frontend -> moeflow-worker -> candle-core",
            "moeflow-frontend -> moeflow-worker",
        ]
    );
    let api = RULES
        .iter()
        .find(|r| r.krate == "moeflow-api")
        .expect("the api's rule");
    assert!(violations(&g, api).is_empty());
}
