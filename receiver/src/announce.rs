//! The receiver's tracker loop: announces `started`, then every interval (at most 10 s), at
//! once when the target is durable (`completed`), and when an address it does not know yet
//! dials it (at most once a second, see `gate`); hands the peers it learns to the swarm and
//! the gate; keeps what the rest of the run waits for (the swarm is done, when the tracker
//! last answered, whether it has taken our `completed`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_swarm::gate::PeerGate;
use blockswarm_swarm::tracker::{self, Announce};
use blockswarm_swarm::Swarm;
use tokio::sync::watch;
use tracing::debug;

use crate::report::Dest;

/// What the tracker loop tells the rest of the run.
pub(crate) struct Heard {
    /// The tracker says every receiver is done.
    pub done: watch::Receiver<bool>,
    /// When the tracker last answered (the start, before it first did).
    pub reached: watch::Receiver<Instant>,
    /// The tracker answered at least once.
    pub reached_once: Arc<AtomicBool>,
    /// The tracker has taken our `completed`.
    pub told_complete: Arc<AtomicBool>,
}

impl Heard {
    /// No tracker: nothing is ever heard.
    pub(crate) fn nothing() -> Heard {
        Heard {
            done: watch::channel(false).1,
            reached: watch::channel(Instant::now()).1,
            reached_once: Arc::new(AtomicBool::new(false)),
            told_complete: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Starts the loop. `durable`: every piece is on the target, flushed (and with --verify read
/// back); only then does the tracker hear `completed` / `left=0`.
/// `total`: bytes of the whole image.
pub(crate) fn spawn(
    w: Dest,
    total: u64,
    sw: Swarm,
    gate: Arc<PeerGate>,
    durable: Arc<AtomicBool>,
) -> Heard {
    let (done_tx, done) = watch::channel(false);
    let (reach_tx, reached) = watch::channel(Instant::now());
    let heard = Heard {
        done,
        reached,
        reached_once: Arc::new(AtomicBool::new(false)),
        told_complete: Arc::new(AtomicBool::new(false)),
    };
    let (reached_once, told_complete) = (heard.reached_once.clone(), heard.told_complete.clone());
    tokio::spawn(async move {
        let mut event = Some("started");
        let mut sent_completed = false;
        loop {
            let st = sw.stats();
            let complete = durable.load(Ordering::Acquire);
            if complete && !sent_completed {
                event = Some("completed");
            }
            let a = Announce {
                url: &w.url,
                info_hash: w.info_hash,
                peer_id: w.peer_id,
                port: w.port,
                ip: w.bind_ip,
                uploaded: st.uploaded,
                downloaded: st.downloaded,
                // Not 0 before the final flush, even with every piece in.
                left: if complete {
                    0
                } else {
                    (total - st.bytes_have).max(1)
                },
                event,
                failure: None,
            };
            let wait = match tracker::announce(&a, w.bind_ip).await {
                Ok(r) => {
                    reached_once.store(true, Ordering::Relaxed);
                    let _ = reach_tx.send(Instant::now());
                    if event == Some("completed") {
                        sent_completed = true;
                        told_complete.store(true, Ordering::Release);
                    }
                    event = None;
                    gate.permit(r.peers.iter().map(|p| p.ip()));
                    sw.add_peers(r.peers);
                    let _ = done_tx.send(r.done);
                    // Once complete, poll four times a second so that "done" is seen at
                    // once (receivers exit together, ~0.25 s after the last completes).
                    if complete {
                        Duration::from_millis(250)
                    } else {
                        r.interval.min(Duration::from_secs(10))
                    }
                }
                Err(e) => {
                    debug!("announce failed: {e}");
                    Duration::from_secs(1)
                }
            };
            // Announce again at once when we complete, or (at most once a second) when
            // an address we do not know yet dials us.
            let wait_until = Instant::now() + wait;
            let earliest = Instant::now() + Duration::from_secs(1);
            while Instant::now() < wait_until {
                if durable.load(Ordering::Acquire) && !sent_completed {
                    break;
                }
                if Instant::now() >= earliest && gate.take_asked() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    heard
}

/// The last word to the tracker: `stopped` (one try, bounded by the client's timeouts).
pub(crate) async fn stopped(w: &Dest, uploaded: u64, downloaded: u64) {
    let _ = tracker::announce(
        &Announce {
            url: &w.url,
            info_hash: w.info_hash,
            peer_id: w.peer_id,
            port: w.port,
            ip: w.bind_ip,
            uploaded,
            downloaded,
            left: 0,
            event: Some("stopped"),
            failure: None,
        },
        w.bind_ip,
    )
    .await;
}
