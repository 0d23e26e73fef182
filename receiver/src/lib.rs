//! `receiver`: runs on each target. Fetches the manifest, checks the target, writes every
//! verified piece straight to the raw device at its offset, seeds to its peers meanwhile,
//! and exits 0 only when every piece is on the target and verified. A whole-disk manifest
//! gets a partition table that fits the target's size at the end.
#![forbid(unsafe_code)]

mod flush;
mod machine_post;
mod report;
mod settings;
mod stall;
mod target;
mod terminal;
mod verify;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_manifest::Manifest;
use blockswarm_swarm::gate::PeerGate;
use blockswarm_swarm::machine_report::State;
use blockswarm_swarm::tracker::{self, Announce};
use blockswarm_swarm::{
    http, new_peer_id, DeviceStorage, Storage, Swarm, SwarmOptions, TorrentInfo,
};
use tracing::{debug, info, warn};

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
    let target_path = target::resolve(&s, &m, source)?;
    if let Some(r) = &machine {
        r.target(&target_path, m.total_length());
    }
    let file = target::open(&target_path, &m, source)?;
    let finish_file = file
        .try_clone()
        .map_err(|e| ReceiverError::Failure(format!("{}: {e}", target_path.display())))?;
    let device: Arc<dyn Storage> =
        Arc::new(DeviceStorage::new(file, target_path.clone(), m.map.clone()));
    // Flushed every 32 MiB: a device that cannot store a write is named with its piece.
    let storage: Arc<dyn Storage> = Arc::new(flush::FlushingStorage::new(
        device,
        m.clone(),
        target_path.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| ReceiverError::Failure(format!("cannot listen on {}: {e}", s.listen)))?;
    let port = listener
        .local_addr()
        .map_err(|e| ReceiverError::Failure(e.to_string()))?
        .port();
    report_to.set_port(port);
    let n = m.num_pieces() as usize;
    // Peer connections only from the seeder, peers the tracker handed us and --peer
    // addresses; an unknown address makes us announce at once (gate.rs).
    let gate = Arc::new(PeerGate::new(announce_url.is_some()));
    gate.permit(s.peers.iter().map(|p| p.ip()));
    gate.permit(seeder_ips(&s.manifest, announce_url.as_deref()).await);
    let opts = SwarmOptions {
        bind_ip,
        gate: Some(gate.clone()),
        max_pieces_in_progress: ((64u64 << 20) / m.piece_length as u64).clamp(4, 64) as usize,
        compress: s.compress,
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
    report_to.set_swarm(swarm.clone());
    state(State::Downloading);
    info!(target = %target_path.display(), pieces = n, "receiver started");

    // Resume: pieces already correct on the target count as done. Runs beside the download.
    if s.resume {
        let (sw, st, mm) = (swarm.clone(), storage.clone(), m.clone());
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
    // Every piece on the target, flushed (and with --verify read back): only then does the
    // tracker hear `completed` / `left=0` (a failing final flush must not count as done).
    let durable = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The tracker has taken our `completed` (we leave only after, or 2 s after durable).
    let told_complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
    swarm.add_peers(s.peers.iter().copied());
    if let Some(url) = announce_url.clone() {
        let sw = swarm.clone();
        let gate = gate.clone();
        let total = m.total_length();
        let reached_once = reached_once.clone();
        let durable = durable.clone();
        let told_complete = told_complete.clone();
        tokio::spawn(async move {
            let mut event = Some("started");
            let mut sent_completed = false;
            loop {
                let st = sw.stats();
                let complete = durable.load(std::sync::atomic::Ordering::Acquire);
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
                    // Not 0 before the final flush, even with every piece in.
                    left: if complete {
                        0
                    } else {
                        (total - st.bytes_have).max(1)
                    },
                    event,
                    failure: None,
                };
                let wait = match tracker::announce(&a, bind_ip).await {
                    Ok(r) => {
                        reached_once.store(true, std::sync::atomic::Ordering::Relaxed);
                        let _ = reach_tx.send(Instant::now());
                        if event == Some("completed") {
                            sent_completed = true;
                            told_complete.store(true, std::sync::atomic::Ordering::Release);
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
                    if durable.load(std::sync::atomic::Ordering::Acquire) && !sent_completed {
                        break;
                    }
                    if Instant::now() >= earliest && gate.take_asked() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }

    let mut pb = terminal::Terminal::new(&s, m.total_length());
    let started = Instant::now();
    let mut stall = s.stall_timeout.map(|t| StallWatch::new(t, started));
    let mut contact = false;
    loop {
        if let Some(e) = swarm.fatal_error() {
            return Err(ReceiverError::Failure(e.to_string()));
        }
        let st = swarm.stats();
        pb.update(&st);
        if let Some(r) = &machine {
            r.progress(st.bytes_have);
            r.compressed(&st.zstd);
        }
        if st.pieces_have == st.pieces_total {
            break;
        }
        contact |= !st.peers.is_empty()
            || st.pieces_have > 0
            || reached_once.load(std::sync::atomic::Ordering::Relaxed);
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
                    tracker: announce_url.as_deref(),
                    known: &swarm.known_peers(),
                    connected: &st.peers,
                }
                .to_string(),
            ));
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
        // A line is due every --progress-interval even while no piece arrives.
        let _ = tokio::time::timeout(Duration::from_secs(1), swarm.changed()).await;
    }
    pb.finish();
    storage
        .sync()
        .map_err(|e| ReceiverError::Failure(format!("flushing target: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    let st = swarm.stats();
    let z = &st.zstd;
    let zline = if z.received_blocks > 0 {
        format!(
            " ({} of them as zstd frames of {} bytes)",
            z.received_raw_bytes, z.received_frame_bytes
        )
    } else {
        String::new()
    };
    eprintln!(
        "receiver: {} complete: {} bytes in {secs:.1} s ({:.1} MiB/s), {} bytes downloaded",
        target_path.display(),
        m.total_length(),
        m.total_length() as f64 / 1048576.0 / secs.max(1e-9),
        st.downloaded
    );
    if !zline.is_empty() {
        eprintln!("receiver: compressed:{zline}");
    }

    if let Some(task) = verifier {
        state(State::Verifying);
        verify_stop.store(true, std::sync::atomic::Ordering::Relaxed);
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
            m.num_pieces()
        );
    }

    durable.store(true, std::sync::atomic::Ordering::Release);
    if let Some(r) = &machine {
        r.progress(m.total_length());
    }
    state(State::Seeding);
    let durable_at = Instant::now();

    // Seed until the seeder says the swarm is done, the seed time runs out, or the seeder is
    // gone for 30 s.
    let seed_start = Instant::now();
    let mut seed_error = None;
    loop {
        // Done: leave once the tracker has our `completed` (so the seeder counts us), or
        // after 2 s of trying.
        if *done_rx.borrow()
            && (announce_url.is_none()
                || told_complete.load(std::sync::atomic::Ordering::Acquire)
                || durable_at.elapsed() > Duration::from_secs(2))
        {
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
            seed_error = Some(e.to_string());
            break;
        }
        let st = swarm.stats();
        if let Some(r) = &machine {
            r.compressed(&st.zstd);
        }
        pb.line("seeding", &st);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    swarm.disconnect_all().await;
    // A whole disk gets its partition table for this target's size once no peer reads
    // pieces from it any more (the GPT's primary header is in a piece).
    target::finish_disk(finish_file, &target_path, &m)?;
    if let Some(e) = seed_error {
        return Err(ReceiverError::Failure(e));
    }
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
                failure: None,
            },
            bind_ip,
        )
        .await;
    }
    Ok(())
}
