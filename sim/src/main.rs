//! `blockswarm-sim`: one simulated room (see the library). Its last line is
//! `sim nodes=N switches=S seeders=K rate=R p50=X p99=X max=X copies=X uplink=X`, the
//! times as ratios to bytes / link rate; bench/sim.sh runs it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use blockswarm_sim::{run, Params};

/// Simulates one room: receivers, edge switches, seeders, link rates; prints completion
/// times as ratios to (bytes / link rate). Exit 0, 1 if some receiver did not finish or a
/// check failed (a request for a piece the peer lacks, an honest peer banned), 2 on bad
/// arguments.
#[derive(Parser, Debug)]
#[command(name = "blockswarm-sim", version)]
struct Cli {
    /// Receivers.
    #[arg(long, env = "SIM_NODES", default_value_t = 16)]
    nodes: usize,
    /// Edge switches (receivers spread over them in contiguous groups).
    #[arg(long, env = "SIM_SWITCHES", default_value_t = 1)]
    switches: usize,
    /// Seeders.
    #[arg(long, env = "SIM_SEEDERS", default_value_t = 1)]
    seeders: usize,
    /// Host link rate, Mbit/s each way.
    #[arg(long, env = "SIM_RATE", default_value_t = 100.0)]
    rate: f64,
    /// Switch uplink rate, Mbit/s each way.
    #[arg(long, env = "SIM_UPLINK", default_value_t = 1000.0)]
    uplink: f64,
    /// Bytes to deliver, MB (10^6).
    #[arg(long, env = "SIM_SIZE", default_value_t = 200.0)]
    size: f64,
    /// Piece length in bytes (0: the imager's auto).
    #[arg(long, env = "SIM_PIECE", default_value_t = 0)]
    piece: u32,
    /// Percent of receivers on links 10x slower.
    #[arg(long, env = "SIM_SLOW", default_value_t = 0.0)]
    slow: f64,
    /// Percent of receivers killed mid-way.
    #[arg(long, env = "SIM_DIE", default_value_t = 0.0)]
    die: f64,
    /// Extra seeds that send corrupt blocks.
    #[arg(long, env = "SIM_LIARS", default_value_t = 0)]
    liars: usize,
    /// One-way latency per hop, microseconds.
    #[arg(long, env = "SIM_LATENCY_US", default_value_t = 50)]
    latency_us: u64,
    /// Receivers start within this many milliseconds.
    #[arg(long, env = "SIM_START_SPREAD_MS", default_value_t = 300)]
    start_spread_ms: u64,
    /// Connections per node at most.
    #[arg(long, env = "SIM_MAX_PEERS", default_value_t = 128)]
    max_peers: usize,
    /// Connections a node opens itself at most.
    #[arg(long, env = "SIM_DIAL_PEERS", default_value_t = 32)]
    dial_peers: usize,
    /// Sites off: the tracker lists every live peer and every peer counts as local (as
    /// `--site-prefix 0` does for the seeder and receivers). On (the default, as theirs): a
    /// node's switch is its site (see `swarm::locality`).
    #[arg(long, env = "SIM_NO_LOCALITY")]
    no_locality: bool,
    /// Requests served in the order they came, not piece by piece (`SwarmOptions::
    /// order_uploads` off; see `swarm::proto::upload_order`).
    #[arg(long, env = "SIM_NO_UPLOAD_ORDER")]
    no_upload_order: bool,
    /// Peers behind other switches the tracker lists (`locality::REMOTE_PEERS`).
    #[arg(long, env = "SIM_REMOTE_PEERS", default_value_t = blockswarm_swarm::locality::REMOTE_PEERS)]
    remote_peers: usize,
    /// Seed of the run's randomness (same seed, same run).
    #[arg(long, env = "SIM_SEED", default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match go(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("blockswarm-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn go(c: Cli) -> Result<bool> {
    let p = Params {
        nodes: c.nodes,
        switches: c.switches,
        seeders: c.seeders,
        rate_bps: c.rate * 1e6,
        uplink_bps: c.uplink * 1e6,
        latency: Duration::from_micros(c.latency_us),
        bytes: (c.size * 1e6) as u64,
        piece: c.piece,
        slow_pct: c.slow,
        die_pct: c.die,
        liars: c.liars,
        start_spread: Duration::from_millis(c.start_spread_ms),
        max_peers: c.max_peers,
        dial_peers: c.dial_peers,
        locality: !c.no_locality,
        order_uploads: !c.no_upload_order,
        remote_peers: c.remote_peers,
        seed: c.seed,
        ..Params::default()
    };
    let t0 = Instant::now();
    let r = run(&p)?;
    let wall = t0.elapsed().as_secs_f64();
    let uplink = r.uplink.map_or("-".to_string(), |u| format!("{u:.2}"));
    println!(
        "finished {} of {} (died {}, stuck {}); min {:.3} p50 {:.3} p99 {:.3} max {:.3} x bytes/R ({:.1} s); seeder copies {:.3}; uplink {}; hash failures {}; liars banned {}/{}; {} events in {:.1} s",
        r.ratios.len(),
        p.nodes,
        r.died,
        r.stuck,
        r.quantile(0.0),
        r.quantile(0.5),
        r.quantile(0.99),
        r.quantile(1.0),
        p.ideal_secs(),
        r.seeder_copies,
        uplink,
        r.hash_failures,
        r.liars_banned,
        p.liars,
        r.events,
        wall
    );
    let ok = r.stuck == 0 && r.bad_requests == 0 && r.honest_banned.is_empty();
    if !ok {
        println!(
            "FAILED: stuck {}, requests for pieces the peer lacks {}, honest peers banned {:?}",
            r.stuck, r.bad_requests, r.honest_banned
        );
    }
    println!(
        "sim nodes={} switches={} seeders={} rate={} p50={:.3} p99={:.3} max={:.3} copies={:.3} uplink={}",
        p.nodes,
        p.switches,
        p.seeders,
        c.rate,
        r.quantile(0.5),
        r.quantile(0.99),
        r.quantile(1.0),
        r.seeder_copies,
        uplink
    );
    Ok(ok)
}
