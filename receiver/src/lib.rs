//! `receiver`: runs on each target. Fetches the manifest, checks the target, writes every
//! verified piece straight to the raw device at its offset, seeds to its peers meanwhile,
//! and exits 0 only when every piece is on the target and verified. A whole-disk manifest
//! gets a partition table that fits the target's size at the end.
#![forbid(unsafe_code)]

mod announce;
mod flush;
mod machine_post;
mod report;
mod seed_end;
mod settings;
mod stall;
mod target;
mod terminal;
mod verify;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_manifest::Manifest;
use blockswarm_swarm::gate::PeerGate;
use blockswarm_swarm::machine_report::State;
use blockswarm_swarm::{
    http, new_peer_id, DeviceStorage, Storage, Swarm, SwarmOptions, TorrentInfo,
};
use tracing::{info, warn};

use seed_end::{seed_end, SeedEnd, Seeding};
pub use settings::{parse_duration, Cli, ReceiverError, Settings};
use stall::{GiveUp, StallWatch};
use verify::{piece_ok, Verifier, VERIFY_BATCH};

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
        // 20 s for each step (connect, head, every next piece of the body): a manifest of
        // tens of MiB to a whole room at once gets the time its size takes.
        match http::get(&s.manifest, bind_ip, Duration::from_secs(20)).await {
            Ok(b) => return Ok((b, local)),
            // The seeder is there and says no (wrong URL or token): retrying cannot help.
            Err(blockswarm_swarm::SwarmError::HttpStatus {
                url,
                status,
                reason,
            }) if (400..500).contains(&status) => {
                return Err(ReceiverError::BadManifest(format!(
                    "{url} answered {status} {reason}: wrong manifest URL or deployment token? Use the line the seeder printed; nothing written"
                )));
            }
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

/// The seeder's addresses: the hosts of the manifest URL and of the tracker URL (resolved).
async fn seeder_ips(manifest: &str, tracker: Option<&str>) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for u in [Some(manifest), tracker]
        .into_iter()
        .flatten()
        .filter(|u| is_url(u))
    {
        if let Ok(u) = http::Url::parse(u) {
            if let Ok(addrs) = tokio::net::lookup_host((u.host.as_str(), u.port)).await {
                ips.extend(addrs.map(|a| a.ip()));
            }
        }
    }
    ips
}

/// Runs the receiver to completion. A failure after the seeder was reached is reported to
/// it (one last `event=stopped` announce with the exit code and the error, bounded wait).
pub async fn run(cli: Cli) -> Result<(), ReceiverError> {
    let ctx = report::ReportTo::default();
    let res = run_inner(cli, &ctx).await;
    if let Err(e) = &res {
        ctx.send(e).await;
    }
    // The dashboard's last word (bounded wait), beside the failure announce.
    if let Some(m) = ctx.machine.get() {
        m.finish(res.as_ref().err().map(|e| (e.exit_code(), e.to_string())))
            .await;
    }
    res
}

/// The run's phases, in order: fetch the manifest, check the target (`open`), download
/// (`start_swarm`, `download`), verify (`verify_final`), seed after (`seed`), stop (`finish`).
/// Each returns the error that ends the run, or hands the next what it needs.
async fn run_inner(cli: Cli, report_to: &report::ReportTo) -> Result<(), ReceiverError> {
    let s = Settings::resolve(&cli)?;
    let bind_ip = (!s.listen.ip().is_unspecified()).then_some(s.listen.ip());
    let peer_id = new_peer_id();
    // Reported at once: the seeder's dashboard shows us before the manifest is in.
    let machine = report_to.start_machine(&s.manifest, bind_ip, peer_id);
    let state = |st| {
        if let Some(m) = &machine {
            m.state(st)
        }
    };

    let (bytes, source_may_be_local) = fetch_manifest(&s, bind_ip).await?;
    state(State::CheckingTarget);
    let t = open(&s, bytes, source_may_be_local, bind_ip, peer_id, report_to)?;
    let (swarm, gate, port) = start_swarm(&s, &t, peer_id, bind_ip, report_to).await?;
    state(State::Downloading);
    info!(target = %t.path.display(), pieces = t.m.num_pieces(), "receiver started");

    // Resume: pieces already correct on the target count as done. Runs beside the download.
    if s.resume {
        spawn_resume_scan(&swarm, &t);
    }
    // --verify: check pieces against the device in passes while the download runs.
    let verify_stop = Arc::new(AtomicBool::new(false));
    // Whatever way `run` returns, the verifier's thread stops (a runtime waits for it).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_verifier = StopOnDrop(verify_stop.clone());
    let verifier = s
        .verify
        .then(|| spawn_verifier(&swarm, &t, verify_stop.clone()));

    // Every piece on the target, flushed (and with --verify read back): only then does the
    // tracker hear `completed` / `left=0` (a failing final flush must not count as done).
    let durable = Arc::new(AtomicBool::new(false));
    swarm.add_peers(s.peers.iter().copied());
    let dest = t.announce_url.clone().map(|url| report::Dest {
        url,
        info_hash: t.info_hash,
        peer_id,
        port,
        bind_ip,
    });
    let heard = match &dest {
        Some(d) => {
            let total = t.m.total_length();
            announce::spawn(d.clone(), total, swarm.clone(), gate, durable.clone())
        }
        None => announce::Heard::nothing(),
    };

    let mut pb = terminal::Terminal::new(&s, t.m.total_length());
    let run = Run {
        s: &s,
        t: &t,
        swarm: &swarm,
        heard: &heard,
        machine: machine.as_deref(),
    };
    run.download(&mut pb).await?;
    if let Some(task) = verifier {
        state(State::Verifying);
        verify_stop.store(true, Ordering::Relaxed);
        verify_final(task, &t, &swarm, &mut pb).await?;
    }
    durable.store(true, Ordering::Release);
    if let Some(r) = &machine {
        r.progress(t.m.total_length());
    }
    state(State::Seeding);
    let seed_error = run.seed(&mut pb).await;
    swarm.disconnect_all().await;
    // A whole disk gets its partition table for this target's size once no peer reads
    // pieces from it any more (the GPT's primary header is in a piece).
    target::finish_disk(t.finish_file, &t.path, &t.m)?;
    if let Some(e) = seed_error {
        return Err(ReceiverError::Failure(e));
    }
    if let Some(d) = &dest {
        let st = swarm.stats();
        announce::stopped(d, st.uploaded, st.downloaded).await;
    }
    Ok(())
}

/// The checked manifest and the opened target.
struct Target {
    m: Arc<blockswarm_manifest::Manifest>,
    info_hash: [u8; 20],
    announce_url: Option<String>,
    path: std::path::PathBuf,
    /// For the partition table at the end (whole disks).
    finish_file: std::fs::File,
    storage: Arc<dyn Storage>,
}

/// Checks the manifest (before anything is written) and opens the target (refusing one
/// that is too small, mounted, in use or the source: `target`).
fn open(
    s: &Settings,
    bytes: Vec<u8>,
    source_may_be_local: bool,
    bind_ip: Option<IpAddr>,
    peer_id: [u8; 20],
    report_to: &report::ReportTo,
) -> Result<Target, ReceiverError> {
    let decoded = Manifest::decode(&bytes)
        .map_err(|e| ReceiverError::BadManifest(format!("invalid manifest: {e}")))?;
    drop(bytes); // a fragmented map makes it megabytes; the decoded form is all we need
    let info_hash = decoded.info_hash;
    if let Some(want) = s.info_hash {
        if want != info_hash {
            return Err(ReceiverError::BadManifest(format!(
                "the manifest's infohash is {}, not the {} given with --info-hash: another deployment, or a forged manifest; nothing written",
                hex::encode(info_hash),
                hex::encode(want)
            )));
        }
    }
    let m = Arc::new(decoded.manifest);
    let announce_url = s.tracker.clone().or_else(|| m.announce.clone());
    if announce_url.is_none() && s.peers.is_empty() {
        return Err(ReceiverError::BadManifest(
            "the manifest names no tracker: fetch it from the seeder's URL, or pass --tracker or --peer".into(),
        ));
    }
    let source = m
        .source
        .as_deref()
        .map(Path::new)
        .filter(|p| source_may_be_local && p.exists());
    if let Some(url) = &announce_url {
        report_to.set(report::Dest {
            url: url.clone(),
            info_hash,
            peer_id,
            port: s.listen.port(),
            bind_ip,
        });
    }
    let path = target::resolve(s, &m, source)?;
    // The dashboard shows the target even if it is refused next.
    if let Some(r) = report_to.machine.get() {
        r.target(&path, m.total_length());
    }
    let file = target::open(&path, &m, source)?;
    let finish_file = file
        .try_clone()
        .map_err(|e| ReceiverError::Failure(format!("{}: {e}", path.display())))?;
    let device: Arc<dyn Storage> = Arc::new(DeviceStorage::new(file, path.clone(), m.map.clone()));
    // Flushed every 32 MiB: a device that cannot store a write is named with its piece.
    let storage: Arc<dyn Storage> =
        Arc::new(flush::FlushingStorage::new(device, m.clone(), path.clone()));
    Ok(Target {
        m,
        info_hash,
        announce_url,
        path,
        finish_file,
        storage,
    })
}

/// Listens, admits peers through the gate (the seeder, peers the tracker handed us, --peer
/// addresses) and starts the swarm node on the target.
async fn start_swarm(
    s: &Settings,
    t: &Target,
    peer_id: [u8; 20],
    bind_ip: Option<IpAddr>,
    report_to: &report::ReportTo,
) -> Result<(Swarm, Arc<PeerGate>, u16), ReceiverError> {
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| ReceiverError::Failure(format!("cannot listen on {}: {e}", s.listen)))?;
    let port = listener
        .local_addr()
        .map_err(|e| ReceiverError::Failure(e.to_string()))?
        .port();
    report_to.set_port(port);
    let m = &t.m;
    // An unknown address makes us announce at once (gate.rs).
    let gate = Arc::new(PeerGate::new(t.announce_url.is_some()));
    gate.permit(s.peers.iter().map(|p| p.ip()));
    gate.permit(seeder_ips(&s.manifest, t.announce_url.as_deref()).await);
    let opts = SwarmOptions {
        bind_ip,
        gate: Some(gate.clone()),
        max_pieces_in_progress: ((64u64 << 20) / m.piece_length as u64).clamp(4, 64) as usize,
        compress: s.compress,
        site_prefix: s.site_prefix,
        ..Default::default()
    };
    let swarm = Swarm::start(
        TorrentInfo {
            info_hash: t.info_hash,
            piece_length: m.piece_length,
            total_length: m.total_length(),
            piece_hashes: Arc::new(m.piece_hashes.clone()),
        },
        peer_id,
        t.storage.clone(),
        vec![false; m.num_pieces() as usize],
        listener,
        opts,
    )
    .map_err(|e| ReceiverError::Failure(e.to_string()))?;
    report_to.set_swarm(swarm.clone());
    Ok((swarm, gate, port))
}

/// Pieces already correct on the target count as done (`--resume`), found beside the
/// download on the blocking pool.
fn spawn_resume_scan(swarm: &Swarm, t: &Target) {
    let (sw, st, mm) = (swarm.clone(), t.storage.clone(), t.m.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let mut found = 0u32;
        for i in 0..mm.num_pieces() {
            if rt.block_on(sw.is_busy_or_have(i)) {
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

/// `--verify`: pieces are read back from the target in passes while the download runs.
fn spawn_verifier(
    swarm: &Swarm,
    t: &Target,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<std::io::Result<Verifier>> {
    let sw = swarm.clone();
    let mut v = Verifier::new(t.storage.clone(), t.m.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<Verifier> {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let have = sw.have_bits();
            if v.pending(&have) >= VERIFY_BATCH {
                v.pass(&have)?;
            }
        }
        Ok(v)
    })
}

/// What the download and seeding phases work with.
#[derive(Clone, Copy)]
struct Run<'a> {
    s: &'a Settings,
    t: &'a Target,
    swarm: &'a Swarm,
    heard: &'a announce::Heard,
    machine: Option<&'a machine_post::Reporter>,
}

impl Run<'_> {
    /// Until every piece is on the target (flushed), or a reason to give up: a storage failure,
    /// a stall (`--stall-timeout`, `stall`), or nobody reached within `--retry-for`.
    async fn download(&self, pb: &mut terminal::Terminal) -> Result<(), ReceiverError> {
        let Run {
            s,
            t,
            swarm,
            heard,
            machine,
        } = *self;
        let started = Instant::now();
        let mut stall = s.stall_timeout.map(|t| StallWatch::new(t, started));
        let mut contact = false;
        loop {
            if let Some(e) = swarm.fatal_error() {
                return Err(ReceiverError::Failure(e.to_string()));
            }
            let st = swarm.stats();
            pb.update(&st);
            if let Some(r) = machine {
                r.progress(st.bytes_have);
                r.compressed(&st.zstd);
            }
            if st.pieces_have == st.pieces_total {
                break;
            }
            let reached_once = heard.reached_once.load(Ordering::Relaxed);
            contact |= !st.peers.is_empty() || st.pieces_have > 0 || reached_once;
            if let Some(stalled) = stall
                .as_mut()
                .and_then(|w| w.check(Instant::now(), contact, st.pieces_have, &st.peers))
            {
                pb.finish();
                let have = swarm.have_bits();
                let missing: Vec<u32> = (0..have.len() as u32)
                    .filter(|&i| !have[i as usize])
                    .collect();
                return Err(ReceiverError::GaveUp(
                    GiveUp {
                        stalled,
                        missing: &missing,
                        total: st.pieces_total,
                        tracker: t.announce_url.as_deref(),
                        known: &swarm.known_peers(),
                        connected: &st.peers,
                    }
                    .to_string(),
                ));
            }
            // Give up only if nothing at all arrived and the seeder never answered.
            if st.bytes_have == 0
                && st.peers.is_empty()
                && !reached_once
                && started.elapsed() > s.retry_for
            {
                return Err(ReceiverError::Unreachable(format!(
                    "no tracker reply and no peer after {:.0} s ({}); target untouched",
                    started.elapsed().as_secs_f64(),
                    t.announce_url.as_deref().unwrap_or("no tracker")
                )));
            }
            // A line is due every --progress-interval even while no piece arrives.
            let _ = tokio::time::timeout(Duration::from_secs(1), swarm.changed()).await;
        }
        pb.finish();
        t.storage
            .sync()
            .map_err(|e| ReceiverError::Failure(format!("flushing target: {e}")))?;
        let secs = started.elapsed().as_secs_f64();
        let st = swarm.stats();
        let total = t.m.total_length();
        eprintln!(
            "receiver: {} complete: {total} bytes in {secs:.1} s ({:.1} MiB/s), {} bytes downloaded",
            t.path.display(),
            total as f64 / 1048576.0 / secs.max(1e-9),
            st.downloaded
        );
        let z = &st.zstd;
        if z.received_blocks > 0 {
            eprintln!(
                "receiver: compressed: ({} of them as zstd frames of {} bytes)",
                z.received_raw_bytes, z.received_frame_bytes
            );
        }
        Ok(())
    }

    /// Seeds until the swarm is done, the seed time runs out, or the seeder is gone
    /// (`seed_end`); a storage failure meanwhile is returned.
    async fn seed(&self, pb: &mut terminal::Terminal) -> Option<String> {
        let Run {
            s,
            t,
            swarm,
            heard,
            machine,
        } = *self;
        let start = Instant::now();
        loop {
            let now = Seeding {
                done: *heard.done.borrow(),
                has_tracker: t.announce_url.is_some(),
                told_complete: heard.told_complete.load(Ordering::Acquire),
                seeding_for: start.elapsed(),
                seed_after: s.seed_after,
                silent_for: heard.reached.borrow().elapsed(),
            };
            match seed_end(now) {
                Some(SeedEnd::Done) => return None,
                Some(SeedEnd::TimeOver) => {
                    info!("seed time over");
                    return None;
                }
                Some(SeedEnd::SeederGone) => {
                    info!("seeder unreachable for 30 s; stopping");
                    return None;
                }
                None => {}
            }
            if let Some(e) = swarm.fatal_error() {
                return Some(e.to_string());
            }
            let st = swarm.stats();
            if let Some(r) = machine {
                r.compressed(&st.zstd);
            }
            pb.line("seeding", &st);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `--verify`: the final pass reads back what the passes during the download did not.
async fn verify_final(
    task: tokio::task::JoinHandle<std::io::Result<Verifier>>,
    t: &Target,
    swarm: &Swarm,
    pb: &mut terminal::Terminal,
) -> Result<(), ReceiverError> {
    let pass = async {
        let mut v = task.await??;
        tokio::task::spawn_blocking(move || {
            v.pass(&vec![true; v.checked.len()])?;
            Ok::<_, std::io::Error>(v.bad)
        })
        .await?
    };
    tokio::pin!(pass);
    // A progress line now and then while the final pass reads the target back.
    let bad = loop {
        tokio::select! {
            r = &mut pass => break r,
            _ = tokio::time::sleep(Duration::from_secs(1)) => pb.line("verifying", &swarm.stats()),
        }
    }
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
        t.m.num_pieces()
    );
    Ok(())
}
