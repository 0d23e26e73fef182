//! The failure report: a receiver that fails after it reached the seeder tells it, with one
//! last `event=stopped` announce carrying `blockswarm_exit` and `blockswarm_error` (see
//! `blockswarm_swarm::failure_report`), waiting at most [`REPORT_WAIT`] for the reply.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockswarm_swarm::failure_report::FailureReport;
use blockswarm_swarm::tracker::{self, Announce};
use blockswarm_swarm::Swarm;
use tracing::{debug, info};

use crate::machine_post::Reporter;
use crate::ReceiverError;

/// Longest wait for the tracker to take the report; then the receiver exits anyway.
pub(crate) const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Where the report goes.
#[derive(Clone)]
pub(crate) struct Dest {
    pub url: String,
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub bind_ip: Option<IpAddr>,
}

/// Filled in as `run` learns the tracker, the port and the swarm.
#[derive(Default)]
pub(crate) struct ReportTo {
    dest: Mutex<Option<Dest>>,
    swarm: Mutex<Option<Swarm>>,
    /// The dashboard reporter (`machine_post`), when the manifest came from a seeder.
    pub(crate) machine: std::sync::OnceLock<Arc<Reporter>>,
}

/// True if a failure with this error is worth reporting: not when the seeder was never
/// reached or the command line was wrong.
pub(crate) fn worth_reporting(e: &ReceiverError) -> bool {
    !matches!(e, ReceiverError::Usage(_) | ReceiverError::Unreachable(_))
}

impl ReportTo {
    pub(crate) fn set(&self, d: Dest) {
        *self.dest.lock().expect("report lock") = Some(d);
    }

    pub(crate) fn set_port(&self, port: u16) {
        if let Some(d) = self.dest.lock().expect("report lock").as_mut() {
            d.port = port;
        }
    }

    /// Starts the dashboard reporter (see `machine_post`); `None` for a file manifest.
    pub(crate) fn start_machine(
        &self,
        manifest: &str,
        bind_ip: Option<IpAddr>,
        peer_id: [u8; 20],
    ) -> Option<Arc<Reporter>> {
        let r = Reporter::start(manifest, bind_ip, peer_id)?;
        let _ = self.machine.set(r.clone());
        Some(r)
    }

    pub(crate) fn set_swarm(&self, s: Swarm) {
        *self.swarm.lock().expect("report lock") = Some(s);
    }

    /// Sends the report (bounded wait); errors sending it are only logged.
    pub(crate) async fn send(&self, e: &ReceiverError) {
        if !worth_reporting(e) {
            return;
        }
        let Some(d) = self.dest.lock().expect("report lock").clone() else {
            return;
        };
        let swarm = self.swarm.lock().expect("report lock").clone();
        let (uploaded, downloaded, left) = swarm.as_ref().map_or((0, 0, 1), |s| {
            let st = s.stats();
            (
                st.uploaded,
                st.downloaded,
                st.bytes_total.saturating_sub(st.bytes_have).max(1),
            )
        });
        if let Some(s) = &swarm {
            s.disconnect_all().await;
        }
        let report = FailureReport::new(e.exit_code(), &e.to_string());
        let a = Announce {
            url: &d.url,
            info_hash: d.info_hash,
            peer_id: d.peer_id,
            port: d.port,
            ip: d.bind_ip,
            uploaded,
            downloaded,
            left,
            event: Some("stopped"),
            failure: Some(&report),
        };
        match tokio::time::timeout(REPORT_WAIT, tracker::announce(&a, d.bind_ip)).await {
            Ok(Ok(_)) => info!("failure reported to the seeder"),
            Ok(Err(e)) => debug!("could not report the failure: {e}"),
            Err(_) => debug!("the failure report timed out"),
        }
    }
}
