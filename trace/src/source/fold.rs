//! [`Source::fold`]: one reader thread walks the files (and tar.gz archives and binary
//! blocks) and hands raw bytes over a bounded channel to worker threads that parse, validate
//! and fold; a bad file, block or request is skipped with its reason.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use super::archive;
use super::detect::{Kind, Unit};
use super::{ReadReport, Skipped, Source, SourceError};
use crate::io::binary::{BinaryReader, RawBlock};
use crate::io::jsonl::{self, RowGroup};
use crate::io::paper::{self, TreeLabels};
use crate::io::sglang;
use crate::model::{Phase, TraceItem};

impl Source {
    /// Streams every item through `f` on `threads` workers, each with its own accumulator
    /// from `init`; returns the accumulators (merge them) and what was read and skipped.
    pub fn fold<A: Send>(
        &self,
        init: impl Fn() -> A + Sync,
        f: impl Fn(&mut A, TraceItem) + Sync,
    ) -> Result<(Vec<A>, ReadReport), SourceError> {
        let threads = self.opts.threads.max(1);
        let (tx, rx) = sync_channel::<Work>(threads * 4);
        let rx = Mutex::new(rx);
        let skipped = Mutex::new(self.pre_skipped.clone());
        let items = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let pb = (self.opts.progress && std::io::stderr().is_terminal()).then(|| {
            let pb = ProgressBar::new(self.total_bytes);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            ) {
                pb.set_style(style);
            }
            pb
        });
        let skip = |path: String, reason: String| {
            tracing::debug!(%path, %reason, "skipped");
            if let Ok(mut s) = skipped.lock() {
                s.push(Skipped { path, reason });
            }
        };
        let accs = std::thread::scope(|s| {
            let producer = s.spawn(|| {
                let counter = Counter {
                    bytes: &bytes,
                    pb: pb.as_ref(),
                };
                for u in &self.units {
                    if !self.produce(u, &tx, &counter, &skip) {
                        break;
                    }
                }
                drop(tx);
            });
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut acc = init();
                        while let Some(w) = recv(&rx) {
                            let id = w.id();
                            match self.work(w) {
                                Ok(item) => match item.validate(&self.shape) {
                                    Ok(()) => {
                                        items.fetch_add(1, Ordering::Relaxed);
                                        f(&mut acc, item);
                                    }
                                    Err(e) => skip(id, e.to_string()),
                                },
                                Err(reason) => skip(id, reason),
                            }
                        }
                        acc
                    })
                })
                .collect();
            let accs: Vec<A> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
            let _ = producer.join();
            accs
        });
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        if accs.len() != threads {
            return Err(SourceError::shape(&self.path, "a worker thread panicked"));
        }
        let report = ReadReport {
            items: items.into_inner(),
            bytes: bytes.into_inner(),
            skipped: skipped.into_inner().unwrap_or_default(),
        };
        Ok((accs, report))
    }

    /// Reads one unit into work; false when the consumers are gone.
    fn produce(
        &self,
        u: &Unit,
        tx: &std::sync::mpsc::SyncSender<Work>,
        counter: &Counter<'_>,
        skip: &(impl Fn(String, String) + Sync),
    ) -> bool {
        let open = || File::open(&u.path).map(|f| Counting { inner: f, counter });
        let file = match open() {
            Ok(f) => f,
            Err(e) => {
                skip(u.rel_str(), format!("I/O: {e}"));
                return true;
            }
        };
        match u.kind {
            Kind::Paper | Kind::Counts => {
                let mut b = Vec::with_capacity(u.size as usize);
                if let Err(e) = BufReader::new(file).read_to_end(&mut b) {
                    skip(u.rel_str(), format!("I/O: {e}"));
                    return true;
                }
                let w = if u.kind == Kind::Paper {
                    Work::Paper {
                        rel: u.rel.clone(),
                        bytes: b,
                    }
                } else {
                    Work::Counts {
                        rel: u.rel.clone(),
                        bytes: b,
                    }
                };
                tx.send(w).is_ok()
            }
            Kind::TarGz => {
                let walked = archive::for_each_json(file, &u.rel, |rel, bytes| {
                    match tx.send(Work::Paper { rel, bytes }) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(_) => ControlFlow::Break(()),
                    }
                });
                match walked {
                    Ok(flow) => flow.is_continue(),
                    Err(stop) => {
                        let (path, reason) = stop.skipped(&u.rel_str());
                        skip(path, reason);
                        true
                    }
                }
            }
            Kind::Jsonl => {
                for g in jsonl::Groups::new(BufReader::new(file)) {
                    let w = match g {
                        Ok(g) => Work::Jsonl {
                            file: u.rel_str(),
                            group: g,
                        },
                        Err(e) => {
                            skip(u.rel_str(), e.to_string());
                            continue;
                        }
                    };
                    if tx.send(w).is_err() {
                        return false;
                    }
                }
                true
            }
            Kind::Binary => {
                let mut r = match BinaryReader::new(BufReader::with_capacity(1 << 20, file)) {
                    Ok(r) => r,
                    Err(e) => {
                        skip(u.rel_str(), e.to_string());
                        return true;
                    }
                };
                if r.shape() != &self.shape {
                    skip(
                        u.rel_str(),
                        format!(
                            "model shape {:?} differs from the source's {:?}",
                            r.shape(),
                            self.shape
                        ),
                    );
                    return true;
                }
                while let Some(b) = r.next_block() {
                    match b {
                        Ok(block) => {
                            if tx
                                .send(Work::Binary {
                                    file: u.rel_str(),
                                    block,
                                })
                                .is_err()
                            {
                                return false;
                            }
                        }
                        Err(e) => skip(u.rel_str(), e.to_string()),
                    }
                }
                true
            }
        }
    }

    fn work(&self, w: Work) -> Result<TraceItem, String> {
        match w {
            Work::Paper { rel, bytes } => {
                let labels = paper::labels(&self.root_components, &rel);
                self.check_model(&labels)?;
                let doc = paper::parse(
                    &bytes,
                    rel.join("/"),
                    labels.workload,
                    Some(self.shape.top_k),
                )
                .map_err(|e| e.to_string())?;
                doc.check_layout(&self.shape).map_err(|e| e.to_string())?;
                Ok(TraceItem::Request(doc.request))
            }
            Work::Counts { rel, bytes } => {
                let name = rel.last().map(String::as_str).unwrap_or_default();
                let stem = name.strip_suffix(".json").unwrap_or(name);
                let (phase, workload): (Option<Phase>, String) = sglang::labels_from_stem(stem);
                let c = sglang::parse(&bytes, rel.join("/"), Some(workload), phase)
                    .map_err(|e| e.to_string())?;
                if c.counts.len() != self.shape.num_layers {
                    return Err(format!(
                        "{} layers, the source has {}",
                        c.counts.len(),
                        self.shape.num_layers
                    ));
                }
                Ok(TraceItem::Counts(c))
            }
            Work::Jsonl { group, .. } => jsonl::build(&group)
                .map(TraceItem::Request)
                .map_err(|e| e.to_string()),
            Work::Binary { block, .. } => block
                .decode(&self.shape)
                .map(TraceItem::Request)
                .map_err(|e| e.to_string()),
        }
    }

    fn check_model(&self, labels: &TreeLabels) -> Result<(), String> {
        match (&self.org_model, &labels.org_model) {
            (Some(a), Some(b)) if a != b => {
                Err(format!("a file of model `{b}` in a source of model `{a}`"))
            }
            _ => Ok(()),
        }
    }
}
enum Work {
    Paper { rel: Vec<String>, bytes: Vec<u8> },
    Counts { rel: Vec<String>, bytes: Vec<u8> },
    Jsonl { file: String, group: RowGroup },
    Binary { file: String, block: RawBlock },
}

impl Work {
    fn id(&self) -> String {
        match self {
            Work::Paper { rel, .. } | Work::Counts { rel, .. } => rel.join("/"),
            Work::Jsonl { file, group } => format!("{file}:{} ({})", group.first_line, group.key),
            Work::Binary { file, block } => format!("{file}@{}", block.offset),
        }
    }
}

fn recv(rx: &Mutex<Receiver<Work>>) -> Option<Work> {
    rx.lock().ok()?.recv().ok()
}

struct Counter<'a> {
    bytes: &'a AtomicU64,
    pb: Option<&'a ProgressBar>,
}

/// Counts the bytes read from a file, for the report and the progress bar.
struct Counting<'a, R> {
    inner: R,
    counter: &'a Counter<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(pb) = self.counter.pb {
            pb.inc(n as u64);
        }
        Ok(n)
    }
}
