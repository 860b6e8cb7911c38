//! A progress bar on stderr for people watching a run; nothing at all otherwise, so logs and
//! CI output stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    failed: usize,
}

impl Progress {
    pub fn new(show: bool, total: usize) -> Self {
        let bar = show.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} requests {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self { bar, failed: 0 }
    }

    /// One request finished.
    pub fn done(&mut self, ok: bool) {
        if !ok {
            self.failed += 1;
        }
        if let Some(bar) = &self.bar {
            if !ok {
                bar.set_message(format!("({} failed)", self.failed));
            }
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
