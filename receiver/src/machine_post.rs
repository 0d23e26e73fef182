//! The receiver's reports to the seeder's dashboard (`blockswarm_swarm::machine_report`):
//! a JSON POST to the manifest URL's directory + `report` on every state change and every
//! [`EVERY`] in any state. Each POST has a [`POST_TIMEOUT`]; a failed one is only
//! logged: reporting never blocks or fails the receiver.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockswarm_swarm::http;
use blockswarm_swarm::machine_report::{report_url, MachineReport, State, VERSION};
use tokio::sync::watch;
use tracing::debug;

/// How often a report goes out while nothing changes state.
pub(crate) const EVERY: Duration = Duration::from_secs(2);
/// Longest wait for one POST.
pub(crate) const POST_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends reports from a background task; cheap to update.
pub(crate) struct Reporter {
    url: String,
    bind_ip: Option<IpAddr>,
    tx: watch::Sender<MachineReport>,
    /// Serialises POSTs (the final one must come last).
    sending: Arc<tokio::sync::Mutex<()>>,
    last_bytes: Mutex<(Instant, u64, f64)>,
}

async fn post(url: &str, bind_ip: Option<IpAddr>, r: &MachineReport) {
    // POST_TIMEOUT in all (the client's own timeout is per step): `finish` gets the lock in time.
    let sent = tokio::time::timeout(
        POST_TIMEOUT,
        http::post(url, "application/json", &r.to_json(), bind_ip, POST_TIMEOUT),
    )
    .await;
    match sent {
        Ok(Ok(_)) => debug!(state = r.state.as_str(), "reported to the seeder"),
        Ok(Err(e)) => debug!("report to the seeder failed: {e}"),
        Err(_) => debug!("report to the seeder timed out after {POST_TIMEOUT:?}"),
    }
}

impl Reporter {
    /// Starts reporting `fetching-manifest` for `manifest` (a URL; a file manifest has no
    /// seeder to report to: `None`).
    pub(crate) fn start(
        manifest: &str,
        bind_ip: Option<IpAddr>,
        peer_id: [u8; 20],
    ) -> Option<Arc<Reporter>> {
        let url = report_url(manifest)?;
        let first = MachineReport {
            version: VERSION,
            peer_id: hex::encode(peer_id),
            state: State::FetchingManifest,
            bytes_done: 0,
            total_bytes: 0,
            rate: 0.0,
            target: None,
            target_size: None,
            model: None,
            serial: None,
            hostname: hostname(),
            mac: mac_towards(manifest, bind_ip),
            error: None,
            exit: None,
            zstd: None,
        };
        let (tx, mut rx) = watch::channel(first);
        let r = Arc::new(Reporter {
            url,
            bind_ip,
            tx,
            sending: Arc::new(tokio::sync::Mutex::new(())),
            last_bytes: Mutex::new((Instant::now(), 0, 0.0)),
        });
        let me = r.clone();
        tokio::spawn(async move {
            let mut last: Option<(State, Instant)> = None;
            loop {
                let cur = rx.borrow_and_update().clone();
                if cur.state.is_final() {
                    return; // the final report is sent by `finish`
                }
                // A new state at once, and one every EVERY whatever the state (progress
                // alone does not wake this task: `progress` marks nothing changed); the
                // seeder counts a machine silent for 15 s as lost, verifying or seeding too.
                let due = match last {
                    None => true,
                    Some((s, at)) => s != cur.state || at.elapsed() >= EVERY,
                };
                if due {
                    let _g = me.sending.lock().await;
                    if me.tx.borrow().state.is_final() {
                        return; // `finish` sent the last word meanwhile
                    }
                    post(&me.url, me.bind_ip, &cur).await;
                    last = Some((cur.state, Instant::now()));
                }
                tokio::select! {
                    c = rx.changed() => if c.is_err() { return },
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
        });
        Some(r)
    }

    pub(crate) fn state(&self, s: State) {
        self.tx.send_if_modified(|r| {
            let changed = r.state != s;
            r.state = s;
            changed
        });
    }

    /// The target is known: its path, size, model and serial.
    pub(crate) fn target(&self, path: &Path, total_bytes: u64) {
        let size = std::fs::File::open(path)
            .and_then(|f| blockswarm_manifest::device::file_size(&f))
            .ok();
        let (model, serial) = sys_ids(path);
        self.tx.send_modify(|r| {
            r.target = Some(path.display().to_string());
            r.target_size = size;
            r.model = model;
            r.serial = serial;
            r.total_bytes = total_bytes;
        });
    }

    /// Bytes on the target now (no report by itself; the rate is measured over >= 1 s).
    pub(crate) fn progress(&self, bytes_done: u64) {
        let mut l = self.last_bytes.lock().expect("rate lock");
        let dt = l.0.elapsed().as_secs_f64();
        if dt >= 1.0 {
            l.2 = bytes_done.saturating_sub(l.1) as f64 / dt;
            *l = (Instant::now(), bytes_done, l.2);
        }
        let rate = l.2;
        drop(l);
        self.tx.send_if_modified(|r| {
            r.bytes_done = bytes_done;
            r.rate = rate;
            false
        });
    }

    /// Compressed traffic so far (sent with the next report).
    pub(crate) fn compressed(&self, z: &blockswarm_swarm::zblock::ZStats) {
        let z = (z != &Default::default()).then(|| z.clone());
        self.tx.send_if_modified(|r| {
            r.zstd = z;
            false
        });
    }

    /// The last report: done, or failed with `exit` and `error` (bounded wait).
    pub(crate) async fn finish(&self, failed: Option<(i32, String)>) {
        self.tx.send_modify(|r| {
            r.rate = 0.0;
            match failed {
                Some((code, e)) => {
                    r.state = State::Failed;
                    r.exit = Some(code);
                    r.error = Some(blockswarm_swarm::machine_report::bound(&e));
                }
                None => {
                    r.state = State::Done;
                    r.bytes_done = r.total_bytes;
                }
            }
        });
        let r = self.tx.borrow().clone();
        let _ = tokio::time::timeout(POST_TIMEOUT * 2, async {
            let _g = self.sending.lock().await;
            post(&self.url, self.bind_ip, &r).await;
        })
        .await;
    }
}

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn hostname() -> Option<String> {
    read_trim("/proc/sys/kernel/hostname")
}

/// Model and serial of a block device (of its disk, for a partition); none for a file.
fn sys_ids(dev: &Path) -> (Option<String>, Option<String>) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(real) = std::fs::canonicalize(dev) else {
        return (None, None);
    };
    if !std::fs::metadata(&real).is_ok_and(|m| m.file_type().is_block_device()) {
        return (None, None);
    }
    let Some(name) = real.file_name().and_then(|n| n.to_str()) else {
        return (None, None);
    };
    let Ok(mut sys) = std::fs::canonicalize(format!("/sys/class/block/{name}")) else {
        return (None, None);
    };
    if sys.join("partition").exists() {
        sys.pop();
    }
    let dev = sys.join("device");
    (
        read_trim(dev.join("model")),
        read_trim(dev.join("serial")).or_else(|| read_trim(sys.join("serial"))),
    )
}

/// MAC address of the interface this machine uses towards the manifest URL's host.
fn mac_towards(manifest: &str, bind_ip: Option<IpAddr>) -> Option<String> {
    let u = http::Url::parse(manifest).ok()?;
    let host: IpAddr = u.host.trim_matches(['[', ']']).parse().ok()?;
    let local = match bind_ip {
        Some(ip) => ip,
        None => {
            let any: IpAddr = if host.is_ipv4() {
                [0u8; 4].into()
            } else {
                [0u16; 8].into()
            };
            let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
            s.connect(SocketAddr::new(host, 9)).ok()?;
            s.local_addr().ok()?.ip()
        }
    };
    let iface = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find(|i| i.ip() == local)?;
    read_trim(format!("/sys/class/net/{}/address", iface.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_target_has_no_model_or_serial_and_loopback_has_a_mac() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(sys_ids(f.path()), (None, None));
        assert_eq!(sys_ids(Path::new("/nonexistent/x")), (None, None));
        // The kernel always has a hostname; loopback's MAC is all zeroes.
        assert!(hostname().is_some());
        assert_eq!(
            mac_towards("http://127.0.0.1:6880/t/x/m.torrent", None).as_deref(),
            Some("00:00:00:00:00:00")
        );
        assert_eq!(mac_towards("/a/file.torrent", None), None);
        // A file manifest has no seeder to report to.
        assert!(report_url("/a/file.torrent").is_none());
    }
}
