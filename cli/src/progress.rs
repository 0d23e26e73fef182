//! Progress output: which kind (a bar on a terminal, plain lines on a serial console or in a
//! log file, JSON lines, nothing), when the next line is due, and the line itself from a
//! [`Snapshot`]. Pure: the programs pass the clock and the terminal test in.

use std::time::{Duration, Instant};

use serde::Serialize;

/// `--progress`: what the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always a bar (drawn only on a terminal).
    Bar,
    /// One plain line every --progress-interval.
    Lines,
    /// One JSON object per line every --progress-interval.
    Json,
    /// Nothing until the end.
    None,
}

/// What a program actually prints while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Bar,
    Lines,
    Json,
    Nothing,
}

impl ProgressMode {
    /// `-q` silences the bar and `auto`; an explicit `lines`/`json` still prints (a script
    /// asked for it).
    pub fn resolve(self, stderr_is_tty: bool, quiet: bool) -> Output {
        match self {
            ProgressMode::None => Output::Nothing,
            ProgressMode::Lines => Output::Lines,
            ProgressMode::Json => Output::Json,
            _ if quiet => Output::Nothing,
            ProgressMode::Bar => Output::Bar,
            ProgressMode::Auto if stderr_is_tty => Output::Bar,
            ProgressMode::Auto => Output::Lines,
        }
    }
}

/// When the next progress line is due: the first at once, then one per interval (a late
/// tick does not bunch lines: the next is an interval after the one printed).
#[derive(Debug, Clone)]
pub struct LineClock {
    interval: Duration,
    next: Option<Instant>,
}

impl LineClock {
    pub fn new(interval: Duration) -> LineClock {
        LineClock {
            interval: interval.max(Duration::from_millis(100)),
            next: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// True if a line is due at `now` (and then counts it as printed).
    pub fn due(&mut self, now: Instant) -> bool {
        match self.next {
            Some(t) if now < t => false,
            _ => {
                self.next = Some(now + self.interval);
                true
            }
        }
    }
}

/// The plain or JSON line due now, if any: `lines`/`json` output on its [`LineClock`].
#[derive(Debug, Clone)]
pub struct LinePrinter {
    out: Output,
    clock: LineClock,
}

impl LinePrinter {
    pub fn new(out: Output, interval: Duration) -> LinePrinter {
        LinePrinter {
            out,
            clock: LineClock::new(interval),
        }
    }

    /// The line to print at `now` (None: a bar or nothing, or not due yet).
    pub fn line(&mut self, now: Instant, snap: &Snapshot) -> Option<String> {
        if !matches!(self.out, Output::Lines | Output::Json) || !self.clock.due(now) {
            return None;
        }
        snap.render(self.out)
    }
}

/// A rate in bytes per second from a growing counter, over the last second or more.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: u64,
}

impl RateMeter {
    pub fn update(&mut self, now: Instant, bytes: u64) -> u64 {
        match self.last {
            None => self.last = Some((now, bytes)),
            Some((t, b)) => {
                let dt = now.saturating_duration_since(t);
                if dt >= Duration::from_secs(1) {
                    self.rate = (bytes.saturating_sub(b) as f64 / dt.as_secs_f64()) as u64;
                    self.last = Some((now, bytes));
                }
            }
        }
        self.rate
    }
}

/// What a progress line says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "program", rename_all = "snake_case")]
pub enum Snapshot {
    Receiver {
        /// `downloading`, `verifying`, ...
        state: &'static str,
        bytes_done: u64,
        bytes_total: u64,
        rate_bps: u64,
        peers: usize,
        elapsed_s: u64,
    },
    Seeder {
        /// Receivers complete.
        done: u64,
        /// `--expect N`, if given.
        expected: Option<u64>,
        failed: u64,
        /// Known receivers still needing data.
        running: u64,
        rate_bps: u64,
        uploaded: u64,
        /// Uploaded bytes over the image's size.
        copies: f64,
        elapsed_s: u64,
    },
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn secs(s: u64) -> String {
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl Snapshot {
    /// The words of the line without the program's name (also the seeder's bar message).
    pub fn summary(&self) -> String {
        match self {
            Snapshot::Receiver {
                state,
                bytes_done,
                bytes_total,
                rate_bps,
                peers,
                elapsed_s,
            } => {
                let pct = if *bytes_total == 0 {
                    100.0
                } else {
                    *bytes_done as f64 * 100.0 / *bytes_total as f64
                };
                let eta = match (*rate_bps, bytes_total.saturating_sub(*bytes_done)) {
                    (_, 0) => "0s".to_string(),
                    (0, _) => "?".to_string(),
                    (r, left) => secs(left.div_ceil(r)),
                };
                format!(
                    "{state} {pct:.1}% {}/{} {}/s ETA {eta} peers {peers} elapsed {}",
                    mib(*bytes_done),
                    mib(*bytes_total),
                    mib(*rate_bps),
                    secs(*elapsed_s)
                )
            }
            Snapshot::Seeder {
                done,
                expected,
                failed,
                running,
                rate_bps,
                uploaded,
                copies,
                elapsed_s,
            } => format!(
                "machines done {done}/{} failed {failed} running {running} upload {}/s uploaded {} ({copies:.2} copies) elapsed {}",
                expected.map_or("?".to_string(), |n| n.to_string()),
                mib(*rate_bps),
                mib(*uploaded),
                secs(*elapsed_s)
            ),
        }
    }

    fn program(&self) -> &'static str {
        match self {
            Snapshot::Receiver { .. } => "receiver",
            Snapshot::Seeder { .. } => "seeder",
        }
    }

    /// The line to print for `out` (`None` for a bar or nothing).
    pub fn render(&self, out: Output) -> Option<String> {
        match out {
            Output::Lines => Some(format!("{}: progress {}", self.program(), self.summary())),
            Output::Json => Some(serde_json::to_string(self).expect("plain struct")),
            Output::Bar | Output::Nothing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        use ProgressMode::*;
        assert_eq!(Auto.resolve(true, false), Output::Bar);
        assert_eq!(Auto.resolve(false, false), Output::Lines);
        assert_eq!(Auto.resolve(false, true), Output::Nothing);
        assert_eq!(Bar.resolve(false, false), Output::Bar);
        assert_eq!(Bar.resolve(true, true), Output::Nothing);
        assert_eq!(Lines.resolve(true, true), Output::Lines);
        assert_eq!(Json.resolve(true, false), Output::Json);
        assert_eq!(None.resolve(false, false), Output::Nothing);
    }

    #[test]
    fn a_line_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = LineClock::new(5 * s);
        assert!(c.due(t0));
        assert!(!c.due(t0 + s));
        assert!(!c.due(t0 + 4 * s));
        assert!(c.due(t0 + 5 * s));
        // Late by 3 s: the next is 5 s after this one, not 2 s.
        assert!(c.due(t0 + 13 * s));
        assert!(!c.due(t0 + 17 * s));
        assert!(c.due(t0 + 18 * s));
        assert_eq!(
            LineClock::new(Duration::ZERO).interval(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn printer_prints_only_lines_and_json_when_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let mut p = LinePrinter::new(Output::Lines, s);
        assert!(p
            .line(t0, &receiver())
            .unwrap()
            .starts_with("receiver: progress "));
        assert_eq!(p.line(t0 + s / 2, &receiver()), Option::None);
        assert!(p.line(t0 + s, &receiver()).is_some());
        let mut j = LinePrinter::new(Output::Json, s);
        assert!(j.line(t0, &receiver()).unwrap().starts_with('{'));
        for out in [Output::Bar, Output::Nothing] {
            assert_eq!(LinePrinter::new(out, s).line(t0, &receiver()), Option::None);
        }
    }

    #[test]
    fn rates() {
        let t0 = Instant::now();
        let mut r = RateMeter::default();
        assert_eq!(r.update(t0, 0), 0);
        assert_eq!(r.update(t0 + Duration::from_millis(500), 1 << 20), 0);
        assert_eq!(r.update(t0 + Duration::from_secs(2), 4 << 20), 2 << 20);
        assert_eq!(r.update(t0 + Duration::from_millis(2100), 9 << 20), 2 << 20);
    }

    fn receiver() -> Snapshot {
        Snapshot::Receiver {
            state: "downloading",
            bytes_done: 63 << 20,
            bytes_total: 100 << 20,
            rate_bps: 11 << 20,
            peers: 3,
            elapsed_s: 75,
        }
    }

    #[test]
    fn receiver_line_and_json() {
        let r = receiver();
        assert_eq!(
            r.render(Output::Lines).unwrap(),
            "receiver: progress downloading 63.0% 63.0 MiB/100.0 MiB 11.0 MiB/s ETA 4s peers 3 elapsed 1m15s"
        );
        let v: serde_json::Value = serde_json::from_str(&r.render(Output::Json).unwrap()).unwrap();
        assert_eq!(v["program"], "receiver");
        assert_eq!(v["bytes_done"], 63 << 20);
        assert_eq!(v["state"], "downloading");
        assert_eq!(r.render(Output::Bar), Option::None);
        assert_eq!(r.render(Output::Nothing), Option::None);
        let stalled = Snapshot::Receiver {
            state: "downloading",
            bytes_done: 0,
            bytes_total: 10,
            rate_bps: 0,
            peers: 0,
            elapsed_s: 4000,
        };
        assert!(stalled.summary().contains("ETA ? peers 0 elapsed 1h06m"));
    }

    #[test]
    fn seeder_line_and_json() {
        let s = Snapshot::Seeder {
            done: 2,
            expected: Some(30),
            failed: 1,
            running: 27,
            rate_bps: 110 << 20,
            uploaded: 300 << 20,
            copies: 3.0,
            elapsed_s: 12,
        };
        assert_eq!(
            s.summary(),
            "machines done 2/30 failed 1 running 27 upload 110.0 MiB/s uploaded 300.0 MiB (3.00 copies) elapsed 12s"
        );
        let v: serde_json::Value = serde_json::from_str(&s.render(Output::Json).unwrap()).unwrap();
        assert_eq!(v["program"], "seeder");
        assert_eq!(v["expected"], 30);
        assert_eq!(v["failed"], 1);
        let open = Snapshot::Seeder {
            done: 0,
            expected: Option::None,
            failed: 0,
            running: 0,
            rate_bps: 0,
            uploaded: 0,
            copies: 0.0,
            elapsed_s: 0,
        };
        assert!(open.summary().starts_with("machines done 0/? "));
    }
}
