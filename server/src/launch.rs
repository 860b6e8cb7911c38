//! Starting local worker processes: each is `moeflow worker ...` as a child process, found by
//! the `MOEFLOW_WORKER_READY` line it prints once it serves its control API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::path::Path;

use anyhow::{bail, Context};
use moeflow_comm::bootstrap::{Coordinator, CoordinatorConfig};
use moeflow_comm::GroupIdentity;
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_worker::config::{model_fingerprint, ModelConfig};

/// A worker process started by this process.
#[derive(Debug)]
pub struct LocalWorker {
    pub child: Child,
    /// The write end of the worker's stdin: when this process dies, the worker sees EOF and
    /// exits (`--exit-on-stdin-eof`), so no worker outlives its launcher.
    _lifeline: Option<std::process::ChildStdin>,
    pub rank: usize,
    pub control: String,
}

/// A worker group of local processes and the coordinator that formed it.
pub struct LocalGroup {
    pub workers: Vec<LocalWorker>,
    /// Keeps the plan file alive while workers may read it.
    _plan_file: tempfile::NamedTempFile,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LocalGroup {
    /// Control addresses by rank.
    pub fn controls(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.control.clone()).collect()
    }

    /// Stops the coordinator and reaps the workers (after `grace`, kills them).
    pub fn stop(&mut self, grace: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        reap(&mut self.workers, grace);
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Options of a local group.
pub struct GroupSpec<'a> {
    pub model: &'a Path,
    pub ranks: usize,
    pub plan: Option<&'a Path>,
    pub group_id: String,
    pub peer_timeout_ms: u64,
    /// More `moeflow worker` arguments for every rank.
    pub extra_args: Vec<String>,
}

/// Hosts a coordinator on `rt`, starts `spec.ranks` worker processes and waits until they
/// serve. The plan is validated against the model first, so nothing starts for a bad plan.
pub fn start_local_group(
    rt: &tokio::runtime::Runtime,
    spec: GroupSpec<'_>,
) -> anyhow::Result<LocalGroup> {
    if spec.ranks == 0 {
        bail!("a group needs at least one rank");
    }
    let shape = ModelConfig::from_dir(spec.model)?.shape();
    let target = PlanTarget {
        num_experts: shape.num_experts,
        moe_layers: shape.moe_layers.clone(),
    };
    let plan = match spec.plan {
        Some(p) => PlacementPlan::from_file(p).with_context(|| format!("plan {}", p.display()))?,
        None => PlacementPlan::contiguous(&target, spec.ranks)?,
    };
    plan.check_target(&target)
        .context("the placement plan does not fit the model")?;
    if plan.num_ranks != spec.ranks {
        bail!(
            "the group has {} ranks but the plan {}",
            spec.ranks,
            plan.num_ranks
        );
    }
    let plan_file = {
        use std::io::Write;
        let mut f = tempfile::Builder::new()
            .prefix("moeflow-plan-")
            .suffix(".json")
            .tempfile()?;
        f.write_all(plan.to_json_pretty().as_bytes())?;
        f.flush()?;
        f
    };
    let identity = GroupIdentity {
        group_id: spec.group_id.clone(),
        model_fingerprint: model_fingerprint(spec.model)?,
        plan_version: plan.fingerprint(),
    };
    let coordinator = Coordinator::new(CoordinatorConfig::new(spec.ranks, identity.clone()))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let coord_addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(coordinator.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let arg_lists: Vec<Vec<String>> = (0..spec.ranks)
        .map(|r| {
            let mut v = vec![
                "--model".into(),
                spec.model.display().to_string(),
                "--coordinator".into(),
                format!("http://{coord_addr}"),
                "--plan".into(),
                plan_file.path().display().to_string(),
                "--rank".into(),
                r.to_string(),
                "--group-id".into(),
                identity.group_id.clone(),
                "--peer-timeout-ms".into(),
                spec.peer_timeout_ms.to_string(),
            ];
            v.extend(spec.extra_args.iter().cloned());
            v
        })
        .collect();
    let workers = spawn_workers(arg_lists, Duration::from_secs(300))?;
    Ok(LocalGroup {
        workers,
        _plan_file: plan_file,
        stop: Some(stop_tx),
    })
}

/// Parses `MOEFLOW_WORKER_READY rank=R ... control=ADDR` (other `key=value` fields ignored).
fn parse_ready(line: &str) -> Option<(usize, String)> {
    let rest = line.strip_prefix("MOEFLOW_WORKER_READY ")?;
    let mut rank = None;
    let mut control = None;
    for part in rest.split_whitespace() {
        if let Some(r) = part.strip_prefix("rank=") {
            rank = r.parse().ok();
        } else if let Some(c) = part.strip_prefix("control=") {
            control = Some(c.to_string());
        }
    }
    Some((rank?, control?))
}

/// Starts one worker per argument list and waits (up to `ready_timeout`) until every one has
/// reported ready. Workers are returned sorted by rank. On failure every started child is
/// killed.
pub fn spawn_workers(
    arg_lists: Vec<Vec<String>>,
    ready_timeout: Duration,
) -> anyhow::Result<Vec<LocalWorker>> {
    let exe = std::env::current_exe().context("locating the moeflow binary")?;
    let (tx, rx) = mpsc::channel::<(usize, Option<(usize, String)>)>();
    let mut children = Vec::new();
    for (i, args) in arg_lists.into_iter().enumerate() {
        let mut child = match Command::new(&exe)
            .arg("worker")
            .arg("--exit-on-stdin-eof")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut children);
                return Err(e).context("starting a worker process");
            }
        };
        let stdout = child.stdout.take();
        children.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let Some(out) = stdout else {
                let _ = tx.send((i, None));
                return;
            };
            let mut reported = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !reported {
                    if let Some(r) = parse_ready(&line) {
                        let _ = tx.send((i, Some(r)));
                        reported = true;
                        continue;
                    }
                }
                println!("{line}");
            }
            if !reported {
                let _ = tx.send((i, None));
            }
        });
    }
    drop(tx);
    let mut ready: Vec<Option<(usize, String)>> = vec![None; children.len()];
    let deadline = std::time::Instant::now() + ready_timeout;
    while ready.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Some(r))) => ready[i] = Some(r),
            Ok((i, None)) => {
                kill_all(&mut children);
                bail!("worker process {i} exited before it was ready (see its log above)");
            }
            Err(_) => {
                kill_all(&mut children);
                bail!("workers not ready within {ready_timeout:?}");
            }
        }
    }
    let mut workers: Vec<LocalWorker> = children
        .into_iter()
        .zip(ready)
        .filter_map(|(mut child, r)| {
            let lifeline = child.stdin.take();
            r.map(|(rank, control)| LocalWorker {
                child,
                _lifeline: lifeline,
                rank,
                control,
            })
        })
        .collect();
    workers.sort_by_key(|w| w.rank);
    Ok(workers)
}

/// Kills and reaps every child.
pub fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits up to `grace` for workers to exit on their own, then kills the rest.
pub fn reap(workers: &mut [LocalWorker], grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    for w in workers.iter_mut() {
        loop {
            match w.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_line() {
        assert_eq!(
            parse_ready("MOEFLOW_WORKER_READY rank=2 control=127.0.0.1:4000"),
            Some((2, "127.0.0.1:4000".into()))
        );
        assert_eq!(
            parse_ready("MOEFLOW_WORKER_READY rank=1 world_size=2 leader=l-0.l control=h:1"),
            Some((1, "h:1".into()))
        );
        assert_eq!(parse_ready("MOEFLOW_WORKER_READY rank=x control=a"), None);
        assert_eq!(parse_ready("hello"), None);
    }
}
