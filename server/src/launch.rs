//! Starting local worker processes: each is `moeflow worker ...` as a child process, found by
//! the `MOEFLOW_WORKER_READY` line it prints once it serves its control API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

/// A worker process started by this process.
#[derive(Debug)]
pub struct LocalWorker {
    pub child: Child,
    pub rank: usize,
    pub control: String,
}

/// Parses `MOEFLOW_WORKER_READY rank=R control=ADDR`.
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
            .args(&args)
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
        .filter_map(|(child, r)| {
            r.map(|(rank, control)| LocalWorker {
                child,
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
        assert_eq!(parse_ready("MOEFLOW_WORKER_READY rank=x control=a"), None);
        assert_eq!(parse_ready("hello"), None);
    }
}
