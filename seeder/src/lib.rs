//! `seeder`: serves a blockswarm deployment. Reads the manifest (file or stdin), serves the
//! data straight from the source partition (or from an `imager --save` directory), runs an
//! HTTP server with the manifest, a tracker and a status page, and with `--expect N` exits 0
//! once N receivers are complete.
#![forbid(unsafe_code)]

pub mod access;
pub mod advertise;
mod app;
pub mod cli;
mod dashboard;
pub mod machines;
pub mod netboot;
pub mod outcome;
mod report_file;
mod summary;

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_manifest::{device, exit, DecodedManifest, Manifest};
use blockswarm_swarm::http::{self, Request};
use blockswarm_swarm::tracker::{self, Announce, TrackerServer};
use blockswarm_swarm::{
    new_peer_id, DeviceStorage, PackedFileStorage, Storage, Swarm, SwarmOptions, TorrentInfo,
};
use tracing::{info, warn};

use app::{App, Progress};
pub use cli::{parse_size, Cli, MAX_ANNOUNCE_INTERVAL_S};

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
    /// Stopped by this signal (SIGINT, SIGTERM): exit 128 + its number.
    #[error("stopped by signal {0}")]
    Interrupted(i32),
}

impl SeederError {
    pub fn exit_code(&self) -> i32 {
        match self {
            SeederError::BadInput(_) => exit::BAD_INPUT,
            SeederError::Refused(_) => exit::REFUSED,
            SeederError::Failure(_) => exit::FAILURE,
            SeederError::ReceiversFailed(_) => exit::RECEIVERS_FAILED,
            SeederError::SourceChanged(_) => exit::SOURCE_CHANGED,
            SeederError::Interrupted(sig) => 128 + sig,
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
        let zpath = dir.join(blockswarm_swarm::zimage::file_name(&m.name));
        if !path.exists() && zpath.exists() {
            let z = blockswarm_swarm::zimage::ZImageStorage::open(&zpath).map_err(bad)?;
            if z.len() != m.total_length() {
                return Err(bad(format!(
                    "{} holds {} bytes but the manifest describes {} (wrong or partial image?)",
                    zpath.display(),
                    z.len(),
                    m.total_length()
                )));
            }
            let desc = format!("compressed image {}", zpath.display());
            return Ok((Arc::new(z), desc));
        }
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
    let c = advertise::choose(
        &advertise::interface_ips(),
        cli.access.allow.as_ref(),
        advertise::default_route_ip(),
    );
    if let Some(w) = &c.warning {
        warn!("{w}");
    }
    c.ip
}

/// Runs the seeder until done (with `--expect`), an error, or SIGINT/SIGTERM (exit 130 /
/// 143); then writes the `--report` file, if asked for.
pub async fn run(cli: Cli) -> Result<(), SeederError> {
    if cli.netboot.print_dnsmasq_conf {
        return netboot::print_dnsmasq_conf(&cli.netboot, advertise_ip(&cli)).map_err(bad);
    }
    // Read (a blocking read of stdin, from `imager |`) before the signal handlers exist: a
    // Ctrl-C meanwhile ends the seeder the usual way, not as a truncated manifest (exit 3).
    let decoded = read_manifest(&cli)?;
    let slot = std::sync::OnceLock::new();
    let report = cli.report.clone();
    let res = tokio::select! {
        r = serve(cli, decoded, &slot) => r,
        sig = report_file::signalled() => Err(SeederError::Interrupted(sig)),
    };
    if let (Some(path), None) = (&report, slot.get()) {
        eprintln!(
            "seeder: no report written to {}: stopped before serving",
            path.display()
        );
    }
    if let (Some(path), Some(app)) = (report, slot.get()) {
        let by = match &res {
            Ok(()) | Err(SeederError::ReceiversFailed(_)) => "expect",
            Err(SeederError::Interrupted(_)) => "signal",
            Err(_) => "error",
        };
        match app.write_report(&path, by) {
            Ok(()) => eprintln!("seeder: report written to {}", path.display()),
            Err(e) => eprintln!("seeder: cannot write the report {}: {e}", path.display()),
        }
    }
    res
}

async fn serve(
    cli: Cli,
    decoded: DecodedManifest,
    slot: &std::sync::OnceLock<Arc<App>>,
) -> Result<(), SeederError> {
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
    let tracker = Arc::new(
        TrackerServer::new(info_hash, Duration::from_secs(cli.announce_interval))
            .with_site_prefix(cli.site_prefix),
    );
    let gate = access::bt_gate(&allow, cli.tracker.is_some(), &tracker);

    let mut served = m.clone();
    served.announce = Some(announce_url.clone());
    let served_manifest = bytes::Bytes::from(served.encode().map_err(fail)?);

    let peer_id = new_peer_id();
    let opts = SwarmOptions {
        upload_limit: cli.upload_limit,
        prefer_unsent: true,
        trust_initial_pieces: cli.unsafe_no_serve_check,
        compress: !cli.no_compress,
        // Compressed once, kept for the whole room (a seeder sends about one copy).
        zstd_cache_bytes: 256 << 20,
        bind_ip: (!bt_addr.ip().is_unspecified()).then_some(bt_addr.ip()),
        gate: Some(Arc::new(gate)),
        site_prefix: cli.site_prefix,
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
        machines: std::sync::Mutex::new(machines::Machines::new(Duration::from_secs(
            cli.announce_interval,
        ))),
        started: Instant::now(),
    });
    let _ = slot.set(app.clone());
    let handler_app = app.clone();
    tokio::spawn(http::serve_only(
        web,
        allow.clone(),
        Arc::new(move |r: Request| {
            let a = handler_app.clone();
            async move { a.handle(&r) }
        }),
    ));

    // The name is one path segment, encoded: `+`, space, `#`, `?` and `%` survive.
    let manifest_url = format!(
        "{base_t}/{}.torrent",
        http::percent_encode(m.name.as_bytes())
    );
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
    eprintln!("seeder: dashboard: {base_t}/");
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

    let mut term = summary::Terminal::new(&cli);
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
            term.println(&format!(
                "seeder: receiver {} failed (exit {}): {}",
                f.addr, f.report.exit, f.report.error
            ));
        }
        // The machine table takes the tracker's news as it comes (start, end and rate in
        // the --report file are when they happened, not when someone looked at /status).
        app.machine_rows();
        let progress = app.progress();
        let uploaded = swarm.stats().uploaded;
        term.update(&progress, cli.expect, uploaded, m.total_length());
        let Progress {
            completed,
            pending,
            failed,
        } = progress;
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
                    term.finish();
                    eprintln!(
                        "seeder: {completed} receivers complete in {:.1} s; uploaded {uploaded} bytes = {:.2} copies",
                        started.elapsed().as_secs_f64(),
                        uploaded as f64 / m.total_length() as f64
                    );
                    println!("{}", String::from_utf8_lossy(&app.status_json()));
                    swarm.disconnect_all().await;
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
