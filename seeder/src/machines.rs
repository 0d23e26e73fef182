//! The dashboard's machine table (pure): one row per receiver, keyed by peer id, from its
//! JSON reports (`blockswarm_swarm::machine_report`) merged with the tracker's entries (a
//! plain BitTorrent client that never reports still gets a row). Times are offsets from the
//! seeder's start, passed in (`now`), so the decisions are tested without clocks.
//! Bounded: at most [`MAX_MACHINES`] rows, every string bounded by the report's parser.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use blockswarm_swarm::machine_report::{bound, MachineReport, State};
use serde::Serialize;

/// Most rows kept.
pub const MAX_MACHINES: usize = 4096;
/// A machine neither done nor failed, silent (no report, no announce) this long, is lost
/// (at least: see [`Machines::new`]). Receivers report every 2 s.
pub const LOST_AFTER: Duration = Duration::from_secs(15);

/// What the dashboard says of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shown {
    /// Known from the tracker only, not complete.
    Running,
    FetchingManifest,
    CheckingTarget,
    Downloading,
    Verifying,
    Seeding,
    Done,
    Failed,
    Lost,
}

impl From<State> for Shown {
    fn from(s: State) -> Shown {
        match s {
            State::FetchingManifest => Shown::FetchingManifest,
            State::CheckingTarget => Shown::CheckingTarget,
            State::Downloading => Shown::Downloading,
            State::Verifying => Shown::Verifying,
            State::Seeding => Shown::Seeding,
            State::Done => Shown::Done,
            State::Failed => Shown::Failed,
        }
    }
}

impl Shown {
    pub fn is_final(self) -> bool {
        matches!(self, Shown::Done | Shown::Failed)
    }
}

/// A tracker entry, as the table takes it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub peer_id: String,
    pub ip: IpAddr,
    pub bytes_done: u64,
    /// Complete as the seeder counts it (see `App::counts`).
    pub completed: bool,
    /// Its failure report (exit, error), if any.
    pub failure: Option<(i32, String)>,
    /// When it last announced.
    pub seen: Duration,
}

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub peer_id: String,
    pub ip: String,
    pub hostname: Option<String>,
    pub mac: Option<String>,
    pub target: Option<String>,
    pub target_size: Option<u64>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Reported state, or what the tracker shows; `lost` after [`LOST_AFTER`] of silence.
    pub state: Shown,
    pub bytes_done: u64,
    pub total_bytes: u64,
    pub rate: f64,
    pub error: Option<String>,
    pub exit: Option<i32>,
    /// True once it sent a report (a plain BitTorrent client never does).
    pub reports: bool,
    /// Seconds from the seeder's start.
    pub first_seen: f64,
    pub last_seen: f64,
    /// When it became done or failed.
    pub ended: Option<f64>,
    /// Its compressed traffic with other blockswarm peers, as it reported.
    pub zstd: Option<blockswarm_swarm::zblock::ZStats>,
}

impl Machine {
    /// A row first seen `now` (seconds from the seeder's start), running, nothing known yet.
    pub fn new(peer_id: &str, ip: &str, total_bytes: u64, now: f64) -> Machine {
        Machine {
            peer_id: peer_id.to_string(),
            ip: ip.to_string(),
            hostname: None,
            mac: None,
            target: None,
            target_size: None,
            model: None,
            serial: None,
            state: Shown::Running,
            bytes_done: 0,
            total_bytes,
            rate: 0.0,
            error: None,
            exit: None,
            reports: false,
            first_seen: now,
            last_seen: now,
            ended: None,
            zstd: None,
        }
    }
}

/// The table.
#[derive(Debug)]
pub struct Machines {
    rows: HashMap<String, Machine>,
    /// Silence after which a machine is lost.
    lost_after: f64,
}

impl Default for Machines {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl Machines {
    /// A table for a tracker handing out `announce_interval`: a client that only announces
    /// (a plain BitTorrent client) is lost after three missed announces, or [`LOST_AFTER`].
    pub fn new(announce_interval: Duration) -> Self {
        Machines {
            rows: HashMap::new(),
            lost_after: secs(LOST_AFTER.max(announce_interval * 3)),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Machines {
    /// Makes room for one more row: drops the longest-silent finished (or lost) row;
    /// false if every row is live.
    fn room(&mut self, now: Duration) -> bool {
        if self.rows.len() < MAX_MACHINES {
            return true;
        }
        let victim = self
            .rows
            .values()
            .filter(|m| m.state.is_final() || now.as_secs_f64() - m.last_seen > self.lost_after)
            .min_by(|a, b| a.last_seen.total_cmp(&b.last_seen))
            .map(|m| m.peer_id.clone());
        match victim {
            Some(id) => {
                self.rows.remove(&id);
                true
            }
            None => false,
        }
    }

    fn row(
        &mut self,
        peer_id: &str,
        ip: IpAddr,
        total: u64,
        now: Duration,
    ) -> Option<&mut Machine> {
        if !self.rows.contains_key(peer_id) {
            if !self.room(now) {
                return None;
            }
            self.rows.insert(
                peer_id.to_string(),
                Machine::new(peer_id, &ip.to_string(), total, secs(now)),
            );
        }
        self.rows.get_mut(peer_id)
    }

    /// Takes a report from `ip`; false if refused (another address owns that peer id, or
    /// the table is full of live machines).
    pub fn report(&mut self, ip: IpAddr, r: MachineReport, now: Duration) -> bool {
        if self
            .rows
            .get(&r.peer_id)
            .is_some_and(|m| m.ip != ip.to_string())
        {
            return false;
        }
        if !self.rows.contains_key(&r.peer_id) {
            self.supersede(ip, now);
        }
        let Some(m) = self.row(&r.peer_id, ip, r.total_bytes, now) else {
            return false;
        };
        let state = Shown::from(r.state);
        // A final word is kept: a late, reordered progress report does not undo it.
        if m.state.is_final() && m.reports && !state.is_final() {
            m.last_seen = secs(now);
            return true;
        }
        if state.is_final() && !m.state.is_final() {
            m.ended = Some(secs(now));
        }
        m.state = state;
        m.reports = true;
        m.bytes_done = r.bytes_done.min(r.total_bytes.max(m.total_bytes));
        if r.total_bytes > 0 {
            m.total_bytes = r.total_bytes;
        }
        m.rate = r.rate;
        m.hostname = r.hostname.or(m.hostname.take());
        m.mac = r.mac.or(m.mac.take());
        m.target = r.target.or(m.target.take());
        m.target_size = r.target_size.or(m.target_size);
        m.model = r.model.or(m.model.take());
        m.serial = r.serial.or(m.serial.take());
        m.zstd = r.zstd.or(m.zstd.take());
        if state == Shown::Failed {
            m.error = r.error.or(m.error.take());
            m.exit = r.exit.or(m.exit);
        }
        m.last_seen = secs(now);
        true
    }

    /// Merges one tracker entry (`total`: the image's packed size).
    pub fn tracked(&mut self, t: &Tracked, total: u64, now: Duration) {
        let Some(m) = self.row(&t.peer_id, t.ip, total, now) else {
            return;
        };
        m.last_seen = m.last_seen.max(secs(t.seen));
        // A reporting receiver's own count wins (a failure announce says `left=1` even for
        // a receiver that never got a byte).
        if !m.reports {
            m.bytes_done = m.bytes_done.max(t.bytes_done.min(total));
        }
        if let Some((exit, error)) = &t.failure {
            if m.state != Shown::Failed {
                m.state = Shown::Failed;
                m.ended = Some(secs(now));
            }
            m.exit = m.exit.or(Some(*exit));
            if m.error.is_none() {
                m.error = Some(bound(error));
            }
        } else if t.completed && !m.state.is_final() && (!m.reports || m.state == Shown::Seeding) {
            m.state = Shown::Done;
            m.bytes_done = total;
            m.ended = Some(secs(now));
        }
    }

    /// A new receiver reports from `ip` (restarted after a failure, or after it was lost):
    /// its failed or lost rows go, one row per machine. A done row stays (the record of a
    /// good clone), and so does a live one (two targets on one machine).
    fn supersede(&mut self, ip: IpAddr, now: Duration) {
        let ip = ip.to_string();
        self.rows.retain(|_, m| {
            let lost = !m.state.is_final() && secs(now) - m.last_seen > self.lost_after;
            m.ip != ip || !(m.state == Shown::Failed || lost)
        });
    }

    /// The rows, with `lost` applied at `now`, sorted by address.
    pub fn rows(&self, now: Duration) -> Vec<Machine> {
        let mut v: Vec<Machine> = self
            .rows
            .values()
            .cloned()
            .map(|mut m| {
                if !m.state.is_final() && secs(now) - m.last_seen > self.lost_after {
                    m.state = Shown::Lost;
                    m.rate = 0.0;
                }
                m
            })
            .collect();
        v.sort_by(|a, b| {
            (a.ip.parse::<IpAddr>().ok(), &a.peer_id)
                .cmp(&(b.ip.parse::<IpAddr>().ok(), &b.peer_id))
        });
        v
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockswarm_swarm::machine_report::VERSION;

    fn rep(id: u8, state: State, done: u64) -> MachineReport {
        MachineReport {
            version: VERSION,
            peer_id: format!("{id:02x}").repeat(20),
            state,
            bytes_done: done,
            total_bytes: 100,
            rate: 10.0,
            target: Some("/dev/sdb".into()),
            target_size: Some(1000),
            model: None,
            serial: None,
            hostname: Some(format!("pc{id}")),
            mac: None,
            error: (state == State::Failed).then(|| "target too small".into()),
            exit: (state == State::Failed).then_some(4),
            zstd: None,
        }
    }
    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 200, n])
    }
    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn reports_and_tracker_merge_into_one_row() {
        let mut ms = Machines::default();
        assert!(ms.report(ip(1), rep(1, State::FetchingManifest, 0), t(1)));
        assert!(ms.report(ip(1), rep(1, State::Downloading, 40), t(2)));
        let id = "01".repeat(20);
        ms.tracked(
            &Tracked {
                peer_id: id.clone(),
                ip: ip(1),
                bytes_done: 50,
                completed: false,
                failure: None,
                seen: t(3),
            },
            100,
            t(3),
        );
        // A plain BitTorrent client: a row from the tracker alone.
        ms.tracked(
            &Tracked {
                peer_id: "ff".repeat(20),
                ip: ip(9),
                bytes_done: 100,
                completed: true,
                failure: None,
                seen: t(3),
            },
            100,
            t(3),
        );
        let rows = ms.rows(t(4));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].peer_id, id);
        assert_eq!(rows[0].state, Shown::Downloading);
        assert_eq!(
            rows[0].bytes_done, 40,
            "its own report counts, not the tracker's"
        );
        assert_eq!(rows[0].hostname.as_deref(), Some("pc1"));
        assert_eq!(rows[0].first_seen, 1.0);
        assert_eq!(rows[0].last_seen, 3.0);
        assert_eq!(rows[1].state, Shown::Done);
        assert!(!rows[1].reports);
        // Done is final: a late progress report does not undo it.
        assert!(ms.report(ip(1), rep(1, State::Done, 100), t(5)));
        assert!(ms.report(ip(1), rep(1, State::Downloading, 60), t(6)));
        let r = &ms.rows(t(6))[0];
        assert_eq!(
            (r.state, r.bytes_done, r.ended),
            (Shown::Done, 100, Some(5.0))
        );
    }

    #[test]
    fn failures_from_either_side() {
        let mut ms = Machines::default();
        ms.report(ip(2), rep(2, State::Failed, 0), t(1));
        // Its failure announce (left=1) does not make it look 99% done.
        ms.tracked(
            &Tracked {
                peer_id: "02".repeat(20),
                ip: ip(2),
                bytes_done: 99,
                completed: false,
                failure: Some((4, "target too small".into())),
                seen: t(1),
            },
            100,
            t(1),
        );
        let r = &ms.rows(t(100))[0];
        assert_eq!(r.bytes_done, 0);
        assert_eq!(r.state, Shown::Failed, "failed is never lost");
        assert_eq!(r.error.as_deref(), Some("target too small"));
        assert_eq!(r.exit, Some(4));
        ms.tracked(
            &Tracked {
                peer_id: "03".repeat(20),
                ip: ip(3),
                bytes_done: 10,
                completed: false,
                failure: Some((1, "write error".into())),
                seen: t(2),
            },
            100,
            t(2),
        );
        let r = &ms.rows(t(2))[1];
        assert_eq!(
            (r.state, r.exit, r.error.as_deref()),
            (Shown::Failed, Some(1), Some("write error"))
        );
        // A completed announce does not turn a failure into done.
        ms.tracked(
            &Tracked {
                peer_id: "03".repeat(20),
                ip: ip(3),
                bytes_done: 100,
                completed: true,
                failure: Some((1, "write error".into())),
                seen: t(3),
            },
            100,
            t(3),
        );
        assert_eq!(ms.rows(t(3))[1].state, Shown::Failed);
    }

    #[test]
    fn silent_machines_are_lost() {
        let mut ms = Machines::default();
        ms.report(ip(1), rep(1, State::Downloading, 10), t(10));
        assert_eq!(ms.rows(t(25)).first().unwrap().state, Shown::Downloading);
        let lost = &ms.rows(t(26))[0];
        assert_eq!((lost.state, lost.rate), (Shown::Lost, 0.0));
        // An announce counts as a sign of life; so does a new report.
        ms.tracked(
            &Tracked {
                peer_id: "01".repeat(20),
                ip: ip(1),
                bytes_done: 10,
                completed: false,
                failure: None,
                seen: t(30),
            },
            100,
            t(30),
        );
        assert_eq!(ms.rows(t(40))[0].state, Shown::Downloading);
        assert_eq!(ms.rows(t(46))[0].state, Shown::Lost);
    }

    #[test]
    fn a_restarted_receiver_takes_the_place_of_its_failed_or_lost_row() {
        let mut ms = Machines::default();
        let mut failed = rep(1, State::Failed, 0);
        failed.error = Some("target too small".into());
        ms.report(ip(1), failed, t(1));
        ms.report(ip(2), rep(2, State::Downloading, 10), t(1));
        ms.report(ip(3), rep(3, State::Done, 100), t(1));
        // Restarts: 1 after its failure, 2 after it went silent, 3 for a second clone.
        ms.report(ip(1), rep(4, State::Downloading, 5), t(30));
        ms.report(ip(2), rep(5, State::Downloading, 5), t(30));
        ms.report(ip(3), rep(6, State::Downloading, 5), t(30));
        let rows = ms.rows(t(31));
        let ids: Vec<(&str, &str)> = rows
            .iter()
            .map(|m| (m.ip.as_str(), &m.peer_id[..2]))
            .collect();
        assert_eq!(
            ids,
            [
                ("127.0.200.1", "04"),
                ("127.0.200.2", "05"),
                ("127.0.200.3", "03"),
                ("127.0.200.3", "06")
            ]
        );
    }

    #[test]
    fn bounded_and_owned_by_one_address() {
        let mut ms = Machines::default();
        assert!(ms.report(ip(1), rep(1, State::Downloading, 10), t(1)));
        assert!(
            !ms.report(ip(2), rep(1, State::Failed, 0), t(1)),
            "another address"
        );
        let mut r = rep(7, State::Failed, 0);
        r.error = Some("x".repeat(500));
        let r = MachineReport::parse(&r.to_json()).unwrap();
        ms.report(ip(7), r, t(1));
        assert!(ms
            .rows(t(1))
            .iter()
            .all(|m| m.error.as_ref().is_none_or(|e| e.len() <= 200)));
        let mut ms = Machines::default();
        // One machine per address (a newcomer from an address replaces its lost rows).
        for i in 0..MAX_MACHINES {
            let mut r = rep(0, State::Downloading, 0);
            r.peer_id = format!("{i:040x}");
            let from = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            assert!(ms.report(from, r, t(1)));
        }
        let mut extra = rep(0, State::Downloading, 0);
        extra.peer_id = "e".repeat(40);
        assert!(
            !ms.report(ip(1), extra.clone(), t(2)),
            "full of live machines"
        );
        assert_eq!(ms.len(), MAX_MACHINES);
        // Once some are lost (silent > 15 s), a newcomer takes the place of one.
        assert!(ms.report(ip(1), extra, t(20)));
        assert_eq!(ms.len(), MAX_MACHINES);
    }
}
