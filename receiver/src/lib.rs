//! `receiver`: runs on each target. Fetches the manifest, checks the target, writes every
//! verified piece straight to the raw device at its offset, seeds to its peers meanwhile,
//! and exits 0 only when every piece is on the target and verified.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_manifest::{device, exit, Manifest};
use blockswarm_swarm::tracker::{self, Announce};
use blockswarm_swarm::{
    http, new_peer_id, DeviceStorage, Storage, Swarm, SwarmOptions, TorrentInfo,
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use sha1::{Digest, Sha1};
use tracing::{debug, info, warn};

/// Parses durations like `90s`, `10m`, `1h`, `0` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1.0),
        Some('m') => (&t[..t.len() - 1], 60.0),
        Some('h') => (&t[..t.len() - 1], 3600.0),
        _ => (t.as_str(), 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (examples: 90s, 10m, 1h)"))?;
    if !(0.0..=1e9).contains(&v) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Receives a blockswarm deployment onto a target device.
///
/// Exit codes: 0 done and verified; 1 runtime failure; 2 usage; 3 bad manifest; 4 bad target
/// (too small, mounted, the source, in use, missing); 6 seeder unreachable; 7 verification
/// failed. On codes 2, 3, 4 and 6 nothing has been written to the target.
#[derive(Debug, Parser, Default)]
#[command(name = "receiver", version, about, long_about = None)]
pub struct Cli {
    /// Manifest: a file, or an http:// URL printed by the seeder.
    #[arg(long, env = "RECEIVER_MANIFEST")]
    pub manifest: Option<String>,

    /// Target block device (or image file) to write. Must be at least the source's size.
    #[arg(long, env = "RECEIVER_TARGET")]
    pub target: Option<PathBuf>,

    /// KEY=VALUE settings file (MANIFEST=, TARGET=, LISTEN=, SEED_AFTER=, VERIFY=,
    /// RESUME=, TRACKER=, RETRY_FOR=), as a rescue/PXE system would pass them. The command
    /// line wins.
    #[arg(long, env = "RECEIVER_CONFIG")]
    pub config: Option<PathBuf>,

    /// BitTorrent listen address [default: 0.0.0.0:6881].
    #[arg(long, env = "RECEIVER_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// After completion keep seeding until the seeder says the swarm is done, or this long
    /// at most [default: 30m].
    #[arg(long, env = "RECEIVER_SEED_AFTER", value_parser = parse_duration)]
    pub seed_after: Option<Duration>,

    /// Re-read every piece from the target and re-hash it, its cached pages dropped first so
    /// the reads come from the device; done in passes during the download (after each
    /// flush), the rest at the end.
    #[arg(long, env = "RECEIVER_VERIFY")]
    pub verify: bool,

    /// Do not scan the target for pieces already present (a fresh target: saves one read).
    #[arg(long, env = "RECEIVER_NO_RESUME")]
    pub no_resume: bool,

    /// Announce to this tracker instead of the manifest's.
    #[arg(long, env = "RECEIVER_TRACKER")]
    pub tracker: Option<String>,

    /// Also connect to this peer (IP:PORT; repeatable). With --peer the tracker is optional.
    #[arg(long = "peer", env = "RECEIVER_PEERS", value_delimiter = ',')]
    pub peers: Vec<SocketAddr>,

    /// Keep retrying an unreachable seeder (manifest URL, tracker) this long before giving
    /// up [default: 60s].
    #[arg(long, env = "RECEIVER_RETRY_FOR", value_parser = parse_duration)]
    pub retry_for: Option<Duration>,

    /// No progress bar.
    #[arg(short, long, env = "RECEIVER_QUIET")]
    pub quiet: bool,

    /// More logs (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Receiver failures, each with its documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    BadManifest(String),
    #[error("{0}")]
    BadTarget(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Verify(String),
    #[error("{0}")]
    Failure(String),
}

impl ReceiverError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ReceiverError::Usage(_) => exit::USAGE,
            ReceiverError::BadManifest(_) => exit::BAD_INPUT,
            ReceiverError::BadTarget(_) => exit::BAD_TARGET,
            ReceiverError::Unreachable(_) => exit::UNREACHABLE,
            ReceiverError::Verify(_) => exit::VERIFY_FAILED,
            ReceiverError::Failure(_) => exit::FAILURE,
        }
    }
}

/// Settings after merging the config file under the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub manifest: String,
    pub target: PathBuf,
    pub listen: SocketAddr,
    pub seed_after: Duration,
    pub verify: bool,
    pub resume: bool,
    pub tracker: Option<String>,
    pub peers: Vec<SocketAddr>,
    pub retry_for: Duration,
    pub quiet: bool,
}

fn truthy(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" | "" => Ok(false),
        other => Err(format!("not a yes/no value: {other:?}")),
    }
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Result<Settings, ReceiverError> {
        let mut file = Cli::default();
        let (mut f_verify, mut f_resume) = (None, None);
        if let Some(path) = &cli.config {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ReceiverError::Usage(format!("cannot read config {}: {e}", path.display()))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let err =
                    |m: String| ReceiverError::Usage(format!("{}:{}: {m}", path.display(), n + 1));
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| err("expected KEY=VALUE".into()))?;
                let v = v.trim().trim_matches('"');
                match k.trim() {
                    "MANIFEST" => file.manifest = Some(v.into()),
                    "TARGET" => file.target = Some(v.into()),
                    "LISTEN" => {
                        file.listen = Some(v.parse().map_err(|_| err(format!("bad LISTEN {v:?}")))?)
                    }
                    "SEED_AFTER" => file.seed_after = Some(parse_duration(v).map_err(err)?),
                    "RETRY_FOR" => file.retry_for = Some(parse_duration(v).map_err(err)?),
                    "TRACKER" => file.tracker = Some(v.into()),
                    "PEERS" => {
                        file.peers = v
                            .split(',')
                            .map(|p| p.trim().parse())
                            .collect::<Result<_, _>>()
                            .map_err(|_| err(format!("bad PEERS {v:?}")))?
                    }
                    "VERIFY" => f_verify = Some(truthy(v).map_err(err)?),
                    "RESUME" => f_resume = Some(truthy(v).map_err(err)?),
                    other => return Err(err(format!("unknown key {other:?}"))),
                }
            }
        }
        let manifest =
            cli.manifest.clone().or(file.manifest).ok_or_else(|| {
                ReceiverError::Usage("no manifest: pass --manifest FILE|URL".into())
            })?;
        let target = cli
            .target
            .clone()
            .or(file.target)
            .ok_or_else(|| ReceiverError::Usage("no target: pass --target DEV".into()))?;
        Ok(Settings {
            manifest,
            target,
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "0.0.0.0:6881".parse().expect("valid")),
            seed_after: cli
                .seed_after
                .or(file.seed_after)
                .unwrap_or(Duration::from_secs(1800)),
            verify: cli.verify || f_verify.unwrap_or(false),
            resume: !cli.no_resume && f_resume.unwrap_or(true),
            tracker: cli.tracker.clone().or(file.tracker),
            peers: if cli.peers.is_empty() {
                file.peers
            } else {
                cli.peers.clone()
            },
            retry_for: cli
                .retry_for
                .or(file.retry_for)
                .unwrap_or(Duration::from_secs(60)),
            quiet: cli.quiet,
        })
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// True if `ip` belongs to this machine.
fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

async fn fetch_manifest(
    s: &Settings,
    bind_ip: Option<IpAddr>,
) -> Result<(Vec<u8>, bool), ReceiverError> {
    if !is_url(&s.manifest) {
        let b = std::fs::read(&s.manifest).map_err(|e| {
            ReceiverError::BadManifest(format!("cannot read manifest {}: {e}", s.manifest))
        })?;
        return Ok((b, true));
    }
    let url = http::Url::parse(&s.manifest).map_err(|e| ReceiverError::Usage(e.to_string()))?;
    let local = url.host.parse::<IpAddr>().is_ok_and(is_local_ip) || url.host == "localhost";
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match http::get(&s.manifest, bind_ip, Duration::from_secs(20)).await {
            Ok(b) => return Ok((b, local)),
            Err(e) => {
                if start.elapsed() >= s.retry_for {
                    return Err(ReceiverError::Unreachable(format!(
                        "cannot fetch manifest after {:.0} s: {e}",
                        start.elapsed().as_secs_f64()
                    )));
                }
                info!("manifest not reachable yet ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Opens the target after every check; nothing is written here.
fn open_target(
    s: &Settings,
    m: &Manifest,
    source_may_be_local: bool,
) -> Result<File, ReceiverError> {
    let t = &s.target;
    if !t.exists() {
        return Err(ReceiverError::BadTarget(format!(
            "target {} does not exist",
            t.display()
        )));
    }
    let source = m
        .source
        .as_deref()
        .map(Path::new)
        .filter(|p| source_may_be_local && p.exists());
    let f = device::open_target(t, m.map.device_size(), source, false)
        .map_err(|e| ReceiverError::BadTarget(e.to_string()))?;
    // The seeder holds a shared lock on its source, and every receiver an exclusive lock on
    // its target: this refuses the source device and a second receiver on the same target.
    if let Err(e) = f.try_lock() {
        return Err(ReceiverError::BadTarget(format!(
            "target {} is in use by another process (a seeder serving it, or another receiver): {e}",
            t.display()
        )));
    }
    Ok(f)
}

fn piece_ok(
    storage: &dyn Storage,
    m: &Manifest,
    i: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let (off, len) = m.piece_range(i);
    buf.resize(len as usize, 0);
    storage.read_at(off, buf)?;
    Ok(<[u8; 20]>::from(Sha1::digest(&buf[..])) == m.piece_hashes[i as usize])
}

/// `--verify`: re-reads pieces from the device itself and re-hashes them. During the
/// download it works in passes: fdatasync the target, then for every piece written since the
/// last pass drop its cached pages and read it back. So the final check after the last
/// flush covers only the pieces of the last few seconds instead of the whole target.
struct Verifier {
    storage: Arc<dyn Storage>,
    m: Arc<Manifest>,
    checked: Vec<bool>,
    bad: Vec<u32>,
    buf: Vec<u8>,
}

/// Bytes of unchecked pieces that start a pass during the download.
const VERIFY_BATCH: u64 = 32 << 20;

impl Verifier {
    fn new(storage: Arc<dyn Storage>, m: Arc<Manifest>) -> Self {
        let n = m.num_pieces() as usize;
        Self {
            storage,
            m,
            checked: vec![false; n],
            bad: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Bytes of pieces in `have` not checked yet.
    fn pending(&self, have: &[bool]) -> u64 {
        (0..self.checked.len())
            .filter(|&i| have[i] && !self.checked[i])
            .map(|i| self.m.piece_range(i as u32).1)
            .sum()
    }

    /// Flushes the target, then checks every piece in `have` not checked yet against the
    /// device. A piece that does not match is recorded in `bad`.
    fn pass(&mut self, have: &[bool]) -> std::io::Result<()> {
        self.storage.sync()?;
        for (i, (&has, checked)) in have.iter().zip(self.checked.iter_mut()).enumerate() {
            if !has || *checked {
                continue;
            }
            let (off, len) = self.m.piece_range(i as u32);
            self.storage.drop_cache(off, len)?;
            if !piece_ok(&*self.storage, &self.m, i as u32, &mut self.buf)? {
                self.bad.push(i as u32);
            }
            *checked = true;
        }
        Ok(())
    }
}

/// Runs the receiver to completion.
pub async fn run(cli: Cli) -> Result<(), ReceiverError> {
    let s = Settings::resolve(&cli)?;
    let bind_ip = (!s.listen.ip().is_unspecified()).then_some(s.listen.ip());

    let (bytes, source_may_be_local) = fetch_manifest(&s, bind_ip).await?;
    let decoded = Manifest::decode(&bytes)
        .map_err(|e| ReceiverError::BadManifest(format!("invalid manifest: {e}")))?;
    drop(bytes); // a fragmented map makes it megabytes; the decoded form is all we need
    let m = Arc::new(decoded.manifest);
    let info_hash = decoded.info_hash;
    let announce_url = s.tracker.clone().or_else(|| m.announce.clone());
    if announce_url.is_none() && s.peers.is_empty() {
        return Err(ReceiverError::BadManifest(
            "the manifest names no tracker: fetch it from the seeder's URL, or pass --tracker or --peer".into(),
        ));
    }
    let file = open_target(&s, &m, source_may_be_local)?;
    let storage: Arc<dyn Storage> =
        Arc::new(DeviceStorage::new(file, s.target.clone(), m.map.clone()));

    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| ReceiverError::Failure(format!("cannot listen on {}: {e}", s.listen)))?;
    let port = listener
        .local_addr()
        .map_err(|e| ReceiverError::Failure(e.to_string()))?
        .port();
    let peer_id = new_peer_id();
    let n = m.num_pieces() as usize;
    let opts = SwarmOptions {
        bind_ip,
        max_pieces_in_progress: ((64u64 << 20) / m.piece_length as u64).clamp(4, 64) as usize,
        ..Default::default()
    };
    let swarm = Swarm::start(
        TorrentInfo {
            info_hash,
            piece_length: m.piece_length,
            total_length: m.total_length(),
            piece_hashes: Arc::new(m.piece_hashes.clone()),
        },
        peer_id,
        storage.clone(),
        vec![false; n],
        listener,
        opts,
    )
    .map_err(|e| ReceiverError::Failure(e.to_string()))?;
    info!(target = %s.target.display(), pieces = n, "receiver started");

    // Resume: pieces already correct on the target count as done. Runs beside the download.
    if s.resume {
        let (sw, st, mm) = (swarm.clone(), storage.clone(), m.clone());
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            let mut found = 0u32;
            for i in 0..mm.num_pieces() {
                if sw.is_busy_or_have(i) {
                    continue;
                }
                match piece_ok(&*st, &mm, i, &mut buf) {
                    Ok(true) => {
                        sw.mark_verified(i);
                        found += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!("resume scan stopped: {e}");
                        break;
                    }
                }
            }
            info!(found, "resume scan finished");
        });
    }

    // --verify: check pieces against the device in passes while the download runs.
    let verify_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Whatever way `run` returns, the verifier's thread stops (a runtime waits for it).
    struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _stop_verifier = StopOnDrop(verify_stop.clone());
    let verifier = s.verify.then(|| {
        let (sw, stop) = (swarm.clone(), verify_stop.clone());
        let mut v = Verifier::new(storage.clone(), m.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<Verifier> {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let have = sw.have_bits();
                if v.pending(&have) >= VERIFY_BATCH {
                    v.pass(&have)?;
                }
            }
            Ok(v)
        })
    });

    // Tracker loop.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let (reach_tx, reach_rx) = tokio::sync::watch::channel(Instant::now());
    let reached_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    swarm.add_peers(s.peers.iter().copied());
    if let Some(url) = announce_url.clone() {
        let sw = swarm.clone();
        let total = m.total_length();
        let reached_once = reached_once.clone();
        tokio::spawn(async move {
            let mut event = Some("started");
            let mut sent_completed = false;
            loop {
                let st = sw.stats();
                let complete = st.pieces_have == st.pieces_total;
                if complete && !sent_completed {
                    event = Some("completed");
                }
                let a = Announce {
                    url: &url,
                    info_hash,
                    peer_id,
                    port,
                    ip: bind_ip,
                    uploaded: st.uploaded,
                    downloaded: st.downloaded,
                    left: total - st.bytes_have,
                    event,
                };
                let wait = match tracker::announce(&a, bind_ip).await {
                    Ok(r) => {
                        reached_once.store(true, std::sync::atomic::Ordering::Relaxed);
                        let _ = reach_tx.send(Instant::now());
                        if event == Some("completed") {
                            sent_completed = true;
                        }
                        event = None;
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
                // Announce again at once when we complete.
                let wait_until = Instant::now() + wait;
                while Instant::now() < wait_until {
                    if sw.is_complete() && !sent_completed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }

    let pb = if s.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(m.total_length());
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb
    };
    let started = Instant::now();
    loop {
        if let Some(e) = swarm.fatal_error() {
            return Err(ReceiverError::Failure(e));
        }
        let st = swarm.stats();
        pb.set_position(st.bytes_have);
        pb.set_message(format!("{} peers", st.peers.len()));
        if st.pieces_have == st.pieces_total {
            break;
        }
        // Give up only if nothing at all arrived and the seeder never answered.
        if st.bytes_have == 0
            && st.peers.is_empty()
            && !reached_once.load(std::sync::atomic::Ordering::Relaxed)
            && started.elapsed() > s.retry_for
        {
            return Err(ReceiverError::Unreachable(format!(
                "no tracker reply and no peer after {:.0} s ({}); target untouched",
                started.elapsed().as_secs_f64(),
                announce_url.as_deref().unwrap_or("no tracker")
            )));
        }
        swarm.changed().await;
    }
    pb.finish_and_clear();
    storage
        .sync()
        .map_err(|e| ReceiverError::Failure(format!("flushing target: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "receiver: {} complete: {} bytes in {secs:.1} s ({:.1} MiB/s)",
        s.target.display(),
        m.total_length(),
        m.total_length() as f64 / 1048576.0 / secs.max(1e-9)
    );

    if let Some(task) = verifier {
        verify_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let bad = async {
            let mut v = task.await??;
            tokio::task::spawn_blocking(move || {
                v.pass(&vec![true; v.checked.len()])?;
                Ok::<_, std::io::Error>(v.bad)
            })
            .await?
        }
        .await
        .map_err(|e| {
            ReceiverError::Verify(format!(
                "verification failed (flushing or reading the target): {e}"
            ))
        })?;
        if !bad.is_empty() {
            return Err(ReceiverError::Verify(format!(
                "{} pieces do not verify on the target (first: {})",
                bad.len(),
                bad[0]
            )));
        }
        eprintln!(
            "receiver: verified all {} pieces on the target",
            m.num_pieces()
        );
    }

    // Seed until the seeder says the swarm is done, the seed time runs out, or the seeder is
    // gone for 30 s.
    let seed_start = Instant::now();
    loop {
        if *done_rx.borrow() {
            break;
        }
        if seed_start.elapsed() >= s.seed_after {
            info!("seed time over");
            break;
        }
        if announce_url.is_some() && reach_rx.borrow().elapsed() > Duration::from_secs(30) {
            info!("seeder unreachable for 30 s; stopping");
            break;
        }
        if let Some(e) = swarm.fatal_error() {
            return Err(ReceiverError::Failure(e));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    swarm.disconnect_all();
    if let Some(url) = &announce_url {
        let _ = tracker::announce(
            &Announce {
                url,
                info_hash,
                peer_id,
                port,
                ip: bind_ip,
                uploaded: swarm.stats().uploaded,
                downloaded: swarm.stats().downloaded,
                left: 0,
                event: Some("stopped"),
            },
            bind_ip,
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockswarm_manifest::{Extent, ExtentMap};
    use std::os::unix::fs::FileExt;

    /// The verifier reads the device: a loop device whose backing file goes bad after the
    /// pieces were written and flushed (its page cache still holding the good data) fails
    /// exactly the corrupted piece, and pieces checked in an earlier pass are not re-read.
    #[test]
    fn verifier_checks_pieces_against_the_device_in_passes() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
        let Some(lo) = blockswarm_swarm::test_support::LoopDevice::attach(&backing) else {
            return;
        };
        let dev = lo.path.clone();
        let piece = 16384u32;
        let data: Vec<u8> = (0..4 * piece).map(|i| (i % 253) as u8).collect();
        let map = ExtentMap::new(1 << 20, vec![Extent::new(8192, 4 * piece as u64)]).unwrap();
        let m = Arc::new(Manifest {
            name: "t".into(),
            piece_length: piece,
            piece_hashes: data
                .chunks(piece as usize)
                .map(|c| Sha1::digest(c).into())
                .collect(),
            fs_type: "dd".into(),
            block_size: 4096,
            map: Arc::new(map),
            announce: None,
            source: None,
            created_by: None,
            creation_date: None,
        });
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let storage: Arc<dyn Storage> = Arc::new(DeviceStorage::new(f, dev.clone(), m.map.clone()));
        let mut v = Verifier::new(storage.clone(), m.clone());
        storage.write_at(0, &data[..2 * piece as usize]).unwrap();
        let have = [true, true, false, false];
        assert_eq!(v.pending(&have), 2 * piece as u64);
        v.pass(&have).unwrap();
        assert!(v.bad.is_empty());
        assert_eq!(v.pending(&have), 0);
        storage
            .write_at(2 * piece as u64, &data[2 * piece as usize..])
            .unwrap();
        storage.sync().unwrap();
        // Pieces 0 and 3 go bad on the "disk" (device offset 8192 + piece offset).
        let b = std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap();
        for p in [0u64, 3] {
            b.write_all_at(&[0xEE; 100], 8192 + p * piece as u64 + 50)
                .unwrap();
        }
        b.sync_all().unwrap();
        v.pass(&[true; 4]).unwrap();
        assert_eq!(
            v.bad,
            vec![3],
            "piece 3 read from the device; piece 0 not re-read"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn config_file_fills_what_the_command_line_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.conf");
        std::fs::write(
            &p,
            "# rescue config\nMANIFEST=http://10.0.0.1:6880/x.torrent\nTARGET=/dev/sda1\nLISTEN=0.0.0.0:7000\nSEED_AFTER=5m\nVERIFY=yes\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(p.clone()),
            target: Some("/dev/sdb1".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!(s.manifest, "http://10.0.0.1:6880/x.torrent");
        assert_eq!(s.target, PathBuf::from("/dev/sdb1"), "command line wins");
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(s.seed_after, Duration::from_secs(300));
        assert!(s.verify);
        std::fs::write(&p, "BOGUS=1\n").unwrap();
        let cli = Cli {
            config: Some(p),
            ..Default::default()
        };
        assert!(matches!(
            Settings::resolve(&cli),
            Err(ReceiverError::Usage(_))
        ));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
