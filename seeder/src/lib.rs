//! `seeder`: serves a blockswarm deployment. Reads the manifest (file or stdin), serves the
//! data straight from the source partition (or from an `imager --save` directory), runs an
//! HTTP server with the manifest, a tracker and a status page, and with `--expect N` exits 0
//! once N receivers are complete.
#![forbid(unsafe_code)]

pub mod access;
pub mod netboot;
pub mod outcome;

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_manifest::{device, exit, DecodedManifest, Manifest};
use blockswarm_swarm::http::{self, Request, Response};
use blockswarm_swarm::tracker::{self, Announce, TrackerServer};
use blockswarm_swarm::{
    new_peer_id, DeviceStorage, PackedFileStorage, Storage, Swarm, SwarmOptions, TorrentInfo,
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tracing::{info, warn};

/// Parses sizes like `16M`, `100k`, `1G` (bytes, powers of 1024) or a plain number.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?} (examples: 12M, 500k, 1G)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("size must be positive: {s:?}"));
    }
    let bytes = v * mult as f64;
    // `0.5` is half a byte, not half a MiB: a size that rounds down to nothing is refused
    // (a zero rate would panic the token bucket), as is one beyond u64.
    if bytes < 1.0 {
        return Err(format!(
            "size {s:?} is less than one byte (plain numbers are bytes: did you mean {s}M?)"
        ));
    }
    if bytes >= u64::MAX as f64 {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(bytes as u64)
}

/// Longest tracker announce interval a seeder hands out (`--announce-interval`): receivers
/// learn that the swarm is done within two intervals, so an hour is already far too long.
pub const MAX_ANNOUNCE_INTERVAL_S: u64 = 3600;

/// Serves a blockswarm deployment: `imager /dev/sda1 | seeder --expect 30`.
#[derive(Debug, Parser)]
#[command(name = "seeder", version, about, long_about = None)]
pub struct Cli {
    /// Manifest file written by imager; `-` or absent: read it from stdin.
    #[arg(env = "SEEDER_MANIFEST")]
    pub manifest: Option<PathBuf>,

    /// Serve from this device or image instead of the source path recorded in the manifest.
    #[arg(long, env = "SEEDER_SOURCE", conflicts_with = "image")]
    pub source: Option<PathBuf>,

    /// Image mode: serve the packed file from a directory written by `imager --save DIR`
    /// (the manifest defaults to DIR/<name>.torrent, the only .torrent there).
    #[arg(long, env = "SEEDER_IMAGE", value_name = "DIR")]
    pub image: Option<PathBuf>,

    /// BitTorrent listen address.
    #[arg(long, env = "SEEDER_LISTEN", default_value = "0.0.0.0:6881")]
    pub listen: SocketAddr,

    /// HTTP listen address (manifest, tracker, status).
    #[arg(long, env = "SEEDER_HTTP", default_value = "0.0.0.0:6880")]
    pub http: SocketAddr,

    /// Address receivers should use to reach this machine (default: the --http address if
    /// it is not 0.0.0.0, else the address of the interface with the default route).
    #[arg(long, env = "SEEDER_ADVERTISE")]
    pub advertise: Option<IpAddr>,

    /// Use this external tracker (e.g. opentracker) instead of the embedded one.
    #[arg(long, env = "SEEDER_TRACKER")]
    pub tracker: Option<String>,

    /// Exit 0 once N receivers have completed and no known receiver still needs data.
    #[arg(long, env = "SEEDER_EXPECT", value_parser = clap::value_parser!(u64).range(1..))]
    pub expect: Option<u64>,

    /// Cap upload at this many bytes per second (e.g. 12M).
    #[arg(long, env = "SEEDER_UPLOAD_LIMIT", value_parser = parse_size)]
    pub upload_limit: Option<u64>,

    /// Tracker announce interval in seconds given to receivers.
    #[arg(long, env = "SEEDER_ANNOUNCE_INTERVAL", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=MAX_ANNOUNCE_INTERVAL_S))]
    pub announce_interval: u64,

    /// No progress bar.
    #[arg(short, long, env = "SEEDER_QUIET")]
    pub quiet: bool,

    /// More logs (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(flatten)]
    pub netboot: netboot::NetbootArgs,

    /// For measurements only, hidden: serve without SHA-1-checking each piece the first time
    /// it is served (a changed or wrong source then goes out unnoticed by the seeder).
    #[arg(long, hide = true, env = "SEEDER_UNSAFE_NO_SERVE_CHECK")]
    pub unsafe_no_serve_check: bool,
    #[command(flatten)]
    pub access: access::AccessArgs,
}

/// Seeder failures, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum SeederError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failure(String),
    /// `--expect`: every expected receiver accounted for, some failed (the summary).
    #[error("{0}")]
    ReceiversFailed(String),
    #[error("{0}")]
    SourceChanged(String),
}

impl SeederError {
    pub fn exit_code(&self) -> i32 {
        match self {
            SeederError::BadInput(_) => exit::BAD_INPUT,
            SeederError::Refused(_) => exit::REFUSED,
            SeederError::Failure(_) => exit::FAILURE,
            SeederError::ReceiversFailed(_) => exit::RECEIVERS_FAILED,
            SeederError::SourceChanged(_) => exit::SOURCE_CHANGED,
        }
    }
}

fn bad(e: impl std::fmt::Display) -> SeederError {
    SeederError::BadInput(e.to_string())
}

fn fail(e: impl std::fmt::Display) -> SeederError {
    SeederError::Failure(e.to_string())
}

fn read_manifest(cli: &Cli) -> Result<DecodedManifest, SeederError> {
    let from_image_dir = || -> Result<Option<PathBuf>, SeederError> {
        let Some(dir) = &cli.image else {
            return Ok(None);
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| {
                bad(format!(
                    "cannot read image directory {}: {e}",
                    dir.display()
                ))
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
            .collect();
        if found.len() != 1 {
            return Err(bad(format!(
                "{} holds {} .torrent files; name the manifest explicitly",
                dir.display(),
                found.len()
            )));
        }
        Ok(found.pop())
    };
    let path = match &cli.manifest {
        Some(p) if p.as_os_str() != "-" => Some(p.clone()),
        _ => from_image_dir()?,
    };
    let bytes = match path {
        Some(p) => std::fs::read(&p)
            .map_err(|e| bad(format!("cannot read manifest {}: {e}", p.display())))?,
        None => {
            if std::io::stdin().is_terminal() {
                return Err(bad(
                    "no manifest: pipe one in (imager SOURCE | seeder) or name a file",
                ));
            }
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| bad(format!("cannot read manifest from stdin: {e}")))?;
            b
        }
    };
    Manifest::decode(&bytes).map_err(|e| bad(format!("invalid manifest: {e}")))
}

fn open_storage(cli: &Cli, m: &Manifest) -> Result<(Arc<dyn Storage>, String), SeederError> {
    if let Some(dir) = &cli.image {
        let path = dir.join(&m.name);
        let f = File::open(&path)
            .map_err(|e| bad(format!("cannot open packed file {}: {e}", path.display())))?;
        let len = device::file_size(&f).map_err(bad)?;
        if len != m.total_length() {
            return Err(bad(format!(
                "{} is {len} bytes but the manifest describes {} (wrong or partial image?)",
                path.display(),
                m.total_length()
            )));
        }
        let desc = format!("image {}", path.display());
        return Ok((Arc::new(PackedFileStorage::new(f, path, len)), desc));
    }
    let path: PathBuf = match (&cli.source, &m.source) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => PathBuf::from(s),
        (None, None) => {
            return Err(bad(
                "the manifest names no source device: pass --source DEV or --image DIR",
            ))
        }
    };
    let f = File::open(&path)
        .map_err(|e| bad(format!("cannot open source {}: {e}", path.display())))?;
    let size = device::file_size(&f).map_err(bad)?;
    if size < m.map.device_size() {
        return Err(bad(format!(
            "source {} is {size} bytes, smaller than the manifest's device ({} bytes): wrong device?",
            path.display(),
            m.map.device_size()
        )));
    }
    if let Some(mnt) = device::mount_of(&path) {
        if mnt.read_write {
            return Err(SeederError::Refused(format!(
                "source {} is mounted read-write on {}: data would change under the receivers; unmount it or remount read-only",
                path.display(),
                mnt.mountpoint
            )));
        }
    }
    // A shared lock tells a receiver on this machine that the device is a live source.
    if let Err(e) = f.try_lock_shared() {
        warn!("could not lock {} shared: {e}", path.display());
    }
    let desc = format!("source {}", path.display());
    Ok((Arc::new(DeviceStorage::new(f, path, m.map.clone())), desc))
}

/// The address receivers use for us.
fn advertise_ip(cli: &Cli) -> IpAddr {
    if let Some(ip) = cli.advertise {
        return ip;
    }
    if !cli.http.ip().is_unspecified() {
        return cli.http.ip();
    }
    // The local address a UDP socket would use towards a LAN-ish destination; no packet is
    // sent by connect() on UDP.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[derive(Serialize)]
struct Status<'a> {
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
struct Progress {
    completed: usize,
    pending: usize,
    failed: Vec<outcome::Failed>,
}

struct App {
    name: String,
    info_hash: [u8; 20],
    total: u64,
    served_manifest: Vec<u8>,
    token: access::Token,
    tracker: Arc<TrackerServer>,
    swarm: Swarm,
    seeder_id: [u8; 20],
    expect: Option<u64>,
    /// Peer ids seen in a BitTorrent handshake with us: what `--expect` may count.
    seen: std::sync::Mutex<std::collections::HashMap<String, SeenPeer>>,
}

/// What our own connections showed of a peer id (kept after it disconnects).
#[derive(Debug, Clone, Copy)]
struct SeenPeer {
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
    fn progress(&self) -> Progress {
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
        (done.len(), pending.len())
    }

    fn status_json(&self) -> Vec<u8> {
        let receivers = self.receivers();
        let stats = self.swarm.stats();
        let uploaded = stats.uploaded;
        let progress = self.progress();
        let s = Status {
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

    fn handle(&self, r: &Request) -> Response {
        use access::Route;
        match access::route(&r.path, r.param("token"), &self.token, &self.name) {
            Route::Announce => self.tracker.announce(r),
            Route::Status => Response::ok("application/json", self.status_json()),
            Route::Manifest => {
                Response::ok("application/x-bittorrent", self.served_manifest.clone())
            }
            Route::Index => Response::ok(
                "text/plain",
                format!(
                    "blockswarm seeder: GET /t/TOKEN/{}.torrent, /t/TOKEN/announce, /t/TOKEN/status\n",
                    self.name
                )
                .into_bytes(),
            ),
            Route::Forbidden => Response::forbidden(
                "this seeder needs its deployment token: use the URL it printed (http://HOST:PORT/t/TOKEN/...)",
            ),
            Route::NotFound => Response::not_found(),
        }
    }
}

/// Runs the seeder until done (with `--expect`) or killed.
pub async fn run(cli: Cli) -> Result<(), SeederError> {
    if cli.netboot.print_dnsmasq_conf {
        return netboot::print_dnsmasq_conf(&cli.netboot, advertise_ip(&cli)).map_err(bad);
    }
    let decoded = read_manifest(&cli)?;
    let m = decoded.manifest;
    let info_hash = decoded.info_hash;
    let (storage, desc) = open_storage(&cli, &m)?;
    let allow = access::allow_list(&cli.access).map_err(fail)?;
    let token = access::token(&cli.access, &info_hash).map_err(bad)?;

    let bt = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| fail(format!("cannot listen on {}: {e}", cli.listen)))?;
    let web = tokio::net::TcpListener::bind(cli.http)
        .await
        .map_err(|e| fail(format!("cannot listen on {}: {e}", cli.http)))?;
    let bt_addr = bt.local_addr().map_err(fail)?;
    let web_addr = web.local_addr().map_err(fail)?;
    let ip = advertise_ip(&cli);
    let base = if ip.is_ipv6() {
        format!("http://[{ip}]:{}", web_addr.port())
    } else {
        format!("http://{ip}:{}", web_addr.port())
    };
    // Every path of ours carries the deployment token (see access.rs).
    let base_t = format!("{base}/t/{}", token.hex());
    let announce_url = cli
        .tracker
        .clone()
        .unwrap_or_else(|| access::announce_url(&base, &token));
    let tracker = Arc::new(TrackerServer::new(
        info_hash,
        Duration::from_secs(cli.announce_interval),
    ));
    let gate = access::bt_gate(&allow, cli.tracker.is_some(), &tracker);

    let mut served = m.clone();
    served.announce = Some(announce_url.clone());
    let served_manifest = served.encode().map_err(fail)?;

    let peer_id = new_peer_id();
    let opts = SwarmOptions {
        upload_limit: cli.upload_limit,
        prefer_unsent: true,
        trust_initial_pieces: cli.unsafe_no_serve_check,
        bind_ip: (!bt_addr.ip().is_unspecified()).then_some(bt_addr.ip()),
        gate: Some(Arc::new(gate)),
        ..Default::default()
    };
    let info = TorrentInfo {
        info_hash,
        piece_length: m.piece_length,
        total_length: m.total_length(),
        piece_hashes: Arc::new(m.piece_hashes.clone()),
    };
    let n = m.num_pieces() as usize;
    // Seed mode: serve at once; each piece is SHA-1-checked when first served.
    let swarm = Swarm::start(info, peer_id, storage, vec![true; n], bt, opts).map_err(fail)?;
    let my_bt = SocketAddr::new(ip, bt_addr.port());
    tracker.add_static(peer_id, my_bt, true);

    let app = Arc::new(App {
        name: m.name.clone(),
        info_hash,
        total: m.total_length(),
        served_manifest,
        token: token.clone(),
        tracker: tracker.clone(),
        swarm: swarm.clone(),
        seeder_id: peer_id,
        expect: cli.expect,
        seen: Default::default(),
    });
    let handler_app = app.clone();
    tokio::spawn(http::serve_only(
        web,
        allow.clone(),
        Arc::new(move |r: Request| {
            let a = handler_app.clone();
            async move { a.handle(&r) }
        }),
    ));

    let manifest_url = format!("{base_t}/{}.torrent", m.name);
    let ih_hex = hex::encode(info_hash);
    eprintln!(
        "seeder: serving {} ({} used bytes, {} pieces) from {desc}",
        m.name,
        m.total_length(),
        m.num_pieces()
    );
    // A whole disk goes onto a whole disk (`auto`: the only one that fits), a partition onto
    // a partition.
    let target_hint = match &m.disk {
        Some(d) => format!(
            "auto    (or a whole disk of {} bytes or more: {} table)",
            d.min_size, d.table
        ),
        None => "/dev/TARGET".into(),
    };
    eprintln!(
        "seeder: on each target run:  receiver --manifest {manifest_url} --info-hash {ih_hex} --target {target_hint}"
    );
    eprintln!("seeder: serving clients in {allow} only (--allow)");
    if let Some(dir) = &cli.netboot.netboot {
        let url = netboot::start(&cli.netboot, dir, ip, &manifest_url, &ih_hex, allow.clone())
            .await
            .map_err(fail)?;
        eprintln!("seeder: netboot: iPXE script at {url}");
    }
    info!(%manifest_url, %announce_url, bt = %my_bt, "seeder ready");

    // With an external tracker, announce ourselves there.
    if cli.tracker.is_some() {
        let s = swarm.clone();
        let url = announce_url.clone();
        let port = bt_addr.port();
        let bind = (!bt_addr.ip().is_unspecified()).then_some(bt_addr.ip());
        tokio::spawn(async move {
            loop {
                let a = Announce {
                    url: &url,
                    info_hash,
                    peer_id,
                    port,
                    ip: Some(ip),
                    uploaded: s.stats().uploaded,
                    downloaded: 0,
                    left: 0,
                    event: None,
                    failure: None,
                };
                let wait = match tracker::announce(&a, bind).await {
                    Ok(r) => {
                        s.add_peers(r.peers);
                        r.interval.min(Duration::from_secs(5))
                    }
                    Err(e) => {
                        warn!("external tracker: {e}");
                        Duration::from_secs(5)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    let pb = if cli.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new_spinner();
        pb.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
        pb
    };
    let started = Instant::now();
    let mut done_since: Option<Instant> = None;
    let mut next_failure = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(c) = swarm.corrupt_piece() {
            let what = if cli.image.is_some() {
                "image changed since it was saved, or wrong --image"
            } else {
                "source changed since imaging, or wrong --source"
            };
            return Err(SeederError::SourceChanged(format!(
                "piece {} (packed bytes {}..{}, {}) does not match the manifest's SHA-1: {what}; stopped serving",
                c.index, c.packed.start, c.packed.end, c.location
            )));
        }
        if let Some(e) = swarm.fatal_error() {
            return Err(fail(e));
        }
        for f in tracker.failures_since(next_failure) {
            next_failure = f.seq + 1;
            pb.suspend(|| {
                eprintln!(
                    "seeder: receiver {} failed (exit {}): {}",
                    f.addr, f.report.exit, f.report.error
                )
            });
        }
        let Progress {
            completed,
            pending,
            failed,
        } = app.progress();
        let uploaded = swarm.stats().uploaded;
        pb.set_message(format!(
            "uploaded {:.1} MiB ({:.2} copies), receivers done {completed}/{}",
            uploaded as f64 / 1048576.0,
            uploaded as f64 / m.total_length() as f64,
            cli.expect.map_or("?".to_string(), |n| n.to_string()),
        ));
        pb.tick();
        if let Some(n) = cli.expect {
            let verdict = outcome::decide(n, completed, failed.len(), pending);
            if verdict != outcome::Verdict::Wait {
                if done_since.is_none() {
                    tracker.set_done(true);
                    done_since = Some(Instant::now());
                    info!(
                        completed,
                        failed = failed.len(),
                        "all expected receivers accounted for"
                    );
                }
            } else if done_since.is_some() && pending > 0 {
                // A latecomer still needs data: keep going.
                tracker.set_done(false);
                done_since = None;
            }
            // Give receivers two announce intervals to learn that we are done.
            if let Some(t) = done_since {
                if t.elapsed() > Duration::from_secs(cli.announce_interval * 2 + 1) {
                    pb.finish_and_clear();
                    eprintln!(
                        "seeder: {completed} receivers complete in {:.1} s; uploaded {uploaded} bytes = {:.2} copies",
                        started.elapsed().as_secs_f64(),
                        uploaded as f64 / m.total_length() as f64
                    );
                    println!("{}", String::from_utf8_lossy(&app.status_json()));
                    swarm.disconnect_all();
                    if verdict == outcome::Verdict::SomeFailed {
                        return Err(SeederError::ReceiversFailed(outcome::summary(
                            completed, &failed,
                        )));
                    }
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("fast").is_err());
        // Half a byte per second used to parse to 0 and panic a writer task.
        assert!(parse_size("0.5").is_err());
        assert_eq!(parse_size("0.5M").unwrap(), 512 << 10);
        assert!(parse_size("nan").is_err());
        assert!(parse_size("inf").is_err());
        assert!(parse_size("1e30G").is_err());
    }

    #[test]
    fn numeric_flags_refuse_nonsense_with_a_usage_error() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["seeder"], args].concat());
        for bad in [
            &["--upload-limit", "0.5"][..],
            &["--upload-limit", "0"],
            &["--expect", "0"],
            &["--expect", "-1"],
            &["--announce-interval", "0"],
            &["--announce-interval", "100000"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), exit::USAGE, "{bad:?}");
        }
        let ok = parse(&["--upload-limit", "0.5M", "--expect", "2"]).unwrap();
        assert_eq!(ok.upload_limit, Some(512 << 10));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
