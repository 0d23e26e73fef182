//! The receiver's progress while it downloads: the indicatif bar on a terminal, else plain or
//! JSON lines every `--progress-interval` (a serial console, stderr to a file), else nothing.
//! What to print and when is decided in `blockswarm_cli::progress`.

use std::io::IsTerminal;
use std::time::Instant;

use blockswarm_cli::{LinePrinter, Output, RateMeter, Snapshot};
use blockswarm_swarm::Stats;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Settings;

pub(crate) struct Terminal {
    pb: ProgressBar,
    lines: LinePrinter,
    rate: RateMeter,
    started: Instant,
}

impl Terminal {
    pub(crate) fn new(s: &Settings, total: u64) -> Terminal {
        let out = s.progress.resolve(std::io::stderr().is_terminal(), s.quiet);
        let pb = if out == Output::Bar {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        Terminal {
            pb,
            lines: LinePrinter::new(out, s.progress_interval),
            rate: RateMeter::default(),
            started: Instant::now(),
        }
    }

    /// The bar and, when due, a line: downloading.
    pub(crate) fn update(&mut self, st: &Stats) {
        self.pb.set_position(st.bytes_have);
        self.pb.set_message(format!("{} peers", st.peers.len()));
        self.line("downloading", st);
    }

    /// A line when due (no bar: after the download, `state` is verifying or seeding).
    pub(crate) fn line(&mut self, state: &'static str, st: &Stats) {
        let now = Instant::now();
        let snap = Snapshot::Receiver {
            state,
            bytes_done: st.bytes_have,
            bytes_total: st.bytes_total,
            rate_bps: self.rate.update(now, st.bytes_have),
            peers: st.peers.len(),
            elapsed_s: now.duration_since(self.started).as_secs(),
        };
        if let Some(line) = self.lines.line(now, &snap) {
            eprintln!("{line}");
        }
    }

    pub(crate) fn finish(&self) {
        self.pb.finish_and_clear();
    }
}
