//! The seeder's HTTP face: routes (manifest, tracker, status) and what `/status` and
//! `--expect` count.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use blockswarm_swarm::http::{Request, Response};
use blockswarm_swarm::tracker::TrackerServer;
use blockswarm_swarm::Swarm;
use serde::Serialize;

use crate::{access, outcome};

#[derive(Serialize)]
struct Status<'a> {
    /// docs/status.schema.json
    schema_version: u32,
    name: &'a str,
    info_hash: String,
    total_bytes: u64,
    pieces: u32,
    uploaded: u64,
    uploaded_copies: f64,
    expect: Option<u64>,
    completed: usize,
    done: bool,
    /// Pieces refused to receivers because the source could not be read there.
    unreadable_pieces: Vec<u32>,
    /// Pieces SHA-1-checked against the manifest so far (each once, when first served).
    pieces_verified: u32,
    receivers: Vec<ReceiverStatus>,
    /// Receivers that reported a failure (and were not started again since).
    failed: Vec<FailedStatus>,
    /// The dashboard's rows (reports merged with the tracker) and their totals.
    machines: Vec<crate::machines::Machine>,
    totals: crate::dashboard::Totals,
    /// The seeder's compressed traffic with blockswarm receivers (`bs_zstd`).
    zstd: blockswarm_swarm::zblock::ZStats,
}

#[derive(Serialize)]
struct FailedStatus {
    addr: String,
    exit: i32,
    error: String,
}

#[derive(Serialize)]
struct ReceiverStatus {
    peer_id: String,
    addr: String,
    bytes_done: u64,
    completed: bool,
    gone: bool,
    uploaded: u64,
    downloaded: u64,
    seconds_to_complete: Option<f64>,
    /// Its failure report, if it sent one: exit code and error.
    failure: Option<blockswarm_swarm::failure_report::FailureReport>,
}

/// What `--expect` counts.
pub(crate) struct Progress {
    pub(crate) completed: usize,
    pub(crate) pending: usize,
    pub(crate) failed: Vec<outcome::Failed>,
}

pub(crate) struct App {
    pub(crate) name: String,
    pub(crate) info_hash: [u8; 20],
    pub(crate) total: u64,
    /// Shared by every response (tens of MiB for a fragmented 1 TB disk).
    pub(crate) served_manifest: bytes::Bytes,
    pub(crate) token: access::Token,
    pub(crate) tracker: Arc<TrackerServer>,
    pub(crate) swarm: Swarm,
    pub(crate) seeder_id: [u8; 20],
    pub(crate) expect: Option<u64>,
    /// Peer ids seen in a BitTorrent handshake with us: what `--expect` may count.
    pub(crate) seen: std::sync::Mutex<std::collections::HashMap<String, SeenPeer>>,
    /// The dashboard's machine table (dashboard.rs).
    pub(crate) machines: std::sync::Mutex<crate::machines::Machines>,
    pub(crate) started: std::time::Instant,
}

/// What our own connections showed of a peer id (kept after it disconnects).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenPeer {
    ip: IpAddr,
    /// It received data from us, or holds every piece (its HAVE/bitfield).
    took_part: bool,
}

impl App {
    fn receivers(&self) -> Vec<ReceiverStatus> {
        self.tracker
            .snapshot()
            .into_iter()
            .filter(|(id, _)| *id != self.seeder_id)
            .map(|(id, p)| ReceiverStatus {
                peer_id: hex::encode(id),
                addr: p.addr.to_string(),
                bytes_done: self.total.saturating_sub(p.left),
                completed: p.completed,
                gone: p.gone,
                uploaded: p.uploaded,
                downloaded: p.downloaded,
                seconds_to_complete: p.seconds_to_complete,
                failure: p.failure,
            })
            .collect()
    }

    /// Complete, pending and failed receivers (see [`App::counts`] and
    /// [`outcome::still_failed`]).
    pub(crate) fn progress(&self) -> Progress {
        let (completed, pending) = self.counts();
        let receivers = self.receivers();
        let mut live: Vec<IpAddr> = receivers
            .iter()
            .filter(|r| r.failure.is_none() && (r.completed || !r.gone))
            .filter_map(|r| r.addr.parse::<SocketAddr>().ok().map(|a| a.ip()))
            .collect();
        live.extend(
            self.swarm
                .stats()
                .peers
                .iter()
                .filter_map(|p| p.addr.parse::<SocketAddr>().ok().map(|a| a.ip())),
        );
        let failures = receivers
            .into_iter()
            .filter_map(|r| {
                let f = r.failure?;
                Some(outcome::Failed {
                    ip: r.addr.parse::<SocketAddr>().ok()?.ip(),
                    exit: f.exit,
                    error: f.error,
                })
            })
            .collect();
        Progress {
            completed,
            pending,
            failed: outcome::still_failed(failures, &live),
        }
    }

    /// Receivers complete and still needing data, by peer id: what the tracker heard, joined
    /// with what our own connections show (with an external tracker only the latter).
    ///
    /// An announce alone counts for nothing: a receiver is complete only when its peer id
    /// was seen in a handshake with us from the address it announced from, and it received
    /// data from us or holds every piece. (`curl .../announce?left=0` completes nobody.)
    fn counts(&self) -> (usize, usize) {
        let (done, pending) = self.count_sets();
        (done.len(), pending.len())
    }

    /// Peer ids counted complete (see [`App::counts`]).
    pub(crate) fn completed_ids(&self) -> std::collections::HashSet<String> {
        self.count_sets().0
    }

    #[allow(clippy::type_complexity)]
    fn count_sets(
        &self,
    ) -> (
        std::collections::HashSet<String>,
        std::collections::HashSet<String>,
    ) {
        let stats = self.swarm.stats();
        let mut seen = self.seen.lock().expect("seen lock");
        for p in &stats.peers {
            let Ok(addr) = p.addr.parse::<SocketAddr>() else {
                continue;
            };
            let e = seen.entry(p.peer_id.clone()).or_insert(SeenPeer {
                ip: addr.ip(),
                took_part: false,
            });
            if e.ip == addr.ip() {
                e.took_part |= p.complete || p.uploaded_to > 0;
            }
        }
        let verified =
            |id: &str, ip: IpAddr| seen.get(id).is_some_and(|s| s.ip == ip && s.took_part);
        let mut done = std::collections::HashSet::new();
        let mut pending = std::collections::HashSet::new();
        for r in self.receivers() {
            let Ok(addr) = r.addr.parse::<SocketAddr>() else {
                continue;
            };
            if r.completed {
                // Unverified claims of completion are ignored, neither done nor pending.
                if verified(&r.peer_id, addr.ip()) {
                    done.insert(r.peer_id);
                }
            } else if !r.gone && !self.swarm.is_banned(addr.ip()) {
                // A peer we banned gets nothing more from us: not waited for.
                pending.insert(r.peer_id);
            }
        }
        for p in &stats.peers {
            if p.complete {
                done.insert(p.peer_id.clone());
            } else {
                pending.insert(p.peer_id.clone());
            }
        }
        drop(seen);
        // A receiver that reported a failure is not complete, whatever it announced (it
        // may have had every piece in memory when its target failed the final flush).
        for r in self.receivers().iter().filter(|r| r.failure.is_some()) {
            done.remove(&r.peer_id);
            pending.remove(&r.peer_id);
        }
        pending.retain(|id| !done.contains(id));
        (done, pending)
    }

    pub(crate) fn status_json(&self) -> Vec<u8> {
        let receivers = self.receivers();
        let stats = self.swarm.stats();
        let uploaded = stats.uploaded;
        let progress = self.progress();
        let machines = self.machine_rows();
        let totals = self.totals(&machines);
        let s = Status {
            schema_version: crate::dashboard::SCHEMA_VERSION,
            machines,
            totals,
            name: &self.name,
            info_hash: hex::encode(self.info_hash),
            total_bytes: self.total,
            pieces: stats.pieces_total,
            uploaded,
            uploaded_copies: uploaded as f64 / self.total as f64,
            expect: self.expect,
            completed: progress.completed,
            done: self.tracker.is_done(),
            unreadable_pieces: stats.unreadable_pieces,
            pieces_verified: stats.pieces_verified,
            zstd: stats.zstd,
            receivers,
            failed: progress
                .failed
                .into_iter()
                .map(|f| FailedStatus {
                    addr: f.ip.to_string(),
                    exit: f.exit,
                    error: f.error,
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&s).expect("status serializes")
    }

    pub(crate) fn handle(&self, r: &Request) -> Response {
        use access::Route;
        match access::route(&r.path, r.param("token"), &self.token, &self.name) {
            Route::Announce => self.tracker.announce(r),
            Route::Status => Response::ok("application/json", self.status_json()),
            Route::Manifest => {
                Response::ok("application/x-bittorrent", self.served_manifest.clone())
            }
            Route::Index => Response::ok(
                "text/html; charset=utf-8",
                crate::dashboard::PAGE.as_bytes().to_vec(),
            ),
            Route::Report if r.method == blockswarm_swarm::http::Method::Post => {
                self.take_report(r)
            }
            Route::Report => Response::not_found(),
            Route::Root => Self::root_page(),
            Route::Forbidden => Response::forbidden(
                "this seeder needs its deployment token: use the URL it printed (http://HOST:PORT/t/TOKEN/...)",
            ),
            Route::NotFound => Response::not_found(),
        }
    }
}
