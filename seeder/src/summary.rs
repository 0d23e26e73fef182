//! The seeder's terminal summary while it runs: an indicatif line on a terminal (machines
//! done/expected, failed, running, upload rate, copies uploaded), plain or JSON lines every
//! `--progress-interval` otherwise. The words come from `blockswarm_cli::Snapshot`.

use std::io::IsTerminal;
use std::time::Instant;

use blockswarm_cli::{LinePrinter, Output, RateMeter, Snapshot};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::Progress;
use crate::Cli;

/// The snapshot of a deployment (pure).
pub(crate) fn snapshot(
    p: &Progress,
    expected: Option<u64>,
    uploaded: u64,
    total: u64,
    rate_bps: u64,
    elapsed_s: u64,
) -> Snapshot {
    Snapshot::Seeder {
        done: p.completed as u64,
        expected,
        failed: p.failed.len() as u64,
        running: p.pending as u64,
        rate_bps,
        uploaded,
        copies: if total == 0 {
            0.0
        } else {
            uploaded as f64 / total as f64
        },
        elapsed_s,
    }
}

/// The bar or the lines, fed one snapshot per tick.
pub(crate) struct Terminal {
    pb: ProgressBar,
    lines: LinePrinter,
    rate: RateMeter,
    started: Instant,
}

impl Terminal {
    pub(crate) fn new(cli: &Cli) -> Terminal {
        let out = cli
            .progress
            .resolve(std::io::stderr().is_terminal(), cli.quiet);
        let pb = if out == Output::Bar {
            let pb = ProgressBar::new_spinner();
            pb.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
            pb
        } else {
            ProgressBar::hidden()
        };
        Terminal {
            pb,
            lines: LinePrinter::new(out, cli.progress_interval),
            rate: RateMeter::default(),
            started: Instant::now(),
        }
    }

    pub(crate) fn update(
        &mut self,
        p: &Progress,
        expected: Option<u64>,
        uploaded: u64,
        total: u64,
    ) {
        let now = Instant::now();
        let rate = self.rate.update(now, uploaded);
        let elapsed = now.duration_since(self.started).as_secs();
        let snap = snapshot(p, expected, uploaded, total, rate, elapsed);
        if let Some(line) = self.lines.line(now, &snap) {
            eprintln!("{line}");
        }
        self.pb.set_message(snap.summary());
        self.pb.tick();
    }

    /// Prints a line above the bar.
    pub(crate) fn println(&self, line: &str) {
        self.pb.suspend(|| eprintln!("{line}"));
    }

    pub(crate) fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_machines_and_copies() {
        let p = Progress {
            completed: 2,
            pending: 1,
            failed: Vec::new(),
        };
        let s = snapshot(&p, Some(3), 300, 100, 50, 9);
        assert_eq!(
            s.summary(),
            "machines done 2/3 failed 0 running 1 upload 0.0 MiB/s uploaded 0.0 MiB (3.00 copies) elapsed 9s"
        );
        assert!(snapshot(&p, None, 5, 0, 0, 0)
            .summary()
            .contains("(0.00 copies)"));
    }
}
