//! The dashboard: the HTML page (`dashboard.html`, served at `/t/TOKEN/`), the receivers'
//! reports (`POST /t/TOKEN/report`) and the machine rows and totals of `/status`.

use std::time::Duration;

use blockswarm_swarm::http::{Request, Response};
use blockswarm_swarm::machine_report::MachineReport;
use serde::Serialize;

use crate::app::App;
use crate::machines::{Machine, Shown, Tracked};

/// The page: no external assets, no build step.
pub const PAGE: &str = include_str!("dashboard.html");

/// The `/status` schema version (docs/status.schema.json).
pub const SCHEMA_VERSION: u32 = 1;

/// Totals over the machine rows.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub machines: usize,
    pub done: usize,
    pub failed: usize,
    pub lost: usize,
    pub running: usize,
    /// Sum of the machines' rates, bytes/s.
    pub swarm_rate: f64,
    pub uploaded_copies: f64,
    pub elapsed_seconds: f64,
    /// Seconds until the slowest running machine is done at its rate (null: unknown).
    pub eta_seconds: Option<f64>,
}

pub fn totals(rows: &[Machine], uploaded_copies: f64, elapsed: Duration) -> Totals {
    let count = |s: Shown| rows.iter().filter(|m| m.state == s).count();
    let running: Vec<&Machine> = rows
        .iter()
        .filter(|m| !m.state.is_final() && m.state != Shown::Lost)
        .collect();
    let eta = running
        .iter()
        .map(|m| {
            let left = m.total_bytes.saturating_sub(m.bytes_done) as f64;
            if left == 0.0 {
                Some(0.0)
            } else if m.rate > 0.0 {
                Some(left / m.rate)
            } else {
                None
            }
        })
        .try_fold(0.0f64, |acc, e| e.map(|e| acc.max(e)));
    Totals {
        machines: rows.len(),
        done: count(Shown::Done),
        failed: count(Shown::Failed),
        lost: count(Shown::Lost),
        running: running.len(),
        swarm_rate: running.iter().map(|m| m.rate).sum(),
        uploaded_copies,
        elapsed_seconds: elapsed.as_secs_f64(),
        eta_seconds: if running.is_empty() { Some(0.0) } else { eta },
    }
}

impl App {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// `POST /t/TOKEN/report`.
    pub(crate) fn take_report(&self, r: &Request) -> Response {
        let Some(rep) = MachineReport::parse(&r.body) else {
            return Response::error(400, "not a machine report of schema version 1");
        };
        let now = self.now();
        let ok = self
            .machines
            .lock()
            .expect("machines lock")
            .report(r.peer.ip(), rep, now);
        if ok {
            Response::ok("text/plain", b"ok\n".to_vec())
        } else {
            Response::forbidden("report refused: peer id of another address, or table full")
        }
    }

    /// The rows, merged with the tracker's entries now.
    pub(crate) fn machine_rows(&self) -> Vec<Machine> {
        let now = self.now();
        let done = self.completed_ids();
        let tracked: Vec<Tracked> = self
            .tracker
            .snapshot()
            .into_iter()
            .filter(|(id, _)| *id != self.seeder_id)
            .map(|(id, p)| {
                let hex = hex::encode(id);
                Tracked {
                    completed: p.completed && done.contains(&hex),
                    peer_id: hex,
                    ip: p.addr.ip(),
                    bytes_done: self.total.saturating_sub(p.left),
                    failure: p.failure.map(|f| (f.exit, f.error)),
                    seen: now.saturating_sub(p.last_seen.elapsed()),
                }
            })
            .collect();
        let mut ms = self.machines.lock().expect("machines lock");
        for t in &tracked {
            ms.tracked(t, self.total, now);
        }
        ms.rows(now)
    }

    pub(crate) fn totals(&self, rows: &[Machine]) -> Totals {
        let up = self.swarm.stats().uploaded as f64 / self.total.max(1) as f64;
        totals(rows, up, self.started.elapsed())
    }

    /// The page at the token-less `/`: where the dashboard is.
    pub(crate) fn root_page() -> Response {
        Response::ok(
            "text/plain",
            b"blockswarm seeder: the dashboard is at /t/TOKEN/ (the URL the seeder printed); manifest, tracker and status under /t/TOKEN/ too\n".to_vec(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(state: Shown, done: u64, rate: f64) -> Machine {
        Machine {
            state,
            bytes_done: done,
            rate,
            reports: true,
            ..Machine::new(&"00".repeat(20), "127.0.0.1", 100, 0.0)
        }
    }

    #[test]
    fn totals_count_and_estimate() {
        let rows = [
            m(Shown::Done, 100, 0.0),
            m(Shown::Failed, 0, 0.0),
            m(Shown::Downloading, 50, 10.0),
            m(Shown::Downloading, 80, 10.0),
            m(Shown::Lost, 10, 0.0),
        ];
        let t = totals(&rows, 1.5, Duration::from_secs(3));
        assert_eq!(
            (t.machines, t.done, t.failed, t.running, t.lost),
            (5, 1, 1, 2, 1)
        );
        assert_eq!(t.swarm_rate, 20.0);
        assert_eq!(t.eta_seconds, Some(5.0));
        let stalled = [m(Shown::Downloading, 50, 0.0)];
        assert_eq!(totals(&stalled, 0.0, Duration::ZERO).eta_seconds, None);
    }
}
