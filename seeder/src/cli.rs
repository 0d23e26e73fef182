//! The seeder's command line (clap derive, each flag with its environment variable).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use crate::{access, netboot};

/// Parses sizes like `16M`, `100k`, `1G` (bytes, powers of 1024) or a plain number.
pub use blockswarm_cli::parse_size;

/// Longest tracker announce interval a seeder hands out (`--announce-interval`): receivers
/// learn that the swarm is done within two intervals, so an hour is already far too long.
pub const MAX_ANNOUNCE_INTERVAL_S: u64 = 3600;

/// Serves a blockswarm deployment: `imager /dev/sda1 | seeder --expect 30`.
#[derive(Debug, Parser)]
#[command(name = "seeder", version, about, long_about = None,
          after_long_help = blockswarm_cli::exit_codes_help())]
pub struct Cli {
    /// Manifest file written by imager; `-` or absent: read it from stdin.
    #[arg(env = "SEEDER_MANIFEST")]
    pub manifest: Option<PathBuf>,

    /// Serve from this device or image instead of the source path recorded in the manifest.
    #[arg(long, env = "SEEDER_SOURCE", conflicts_with = "image")]
    pub source: Option<PathBuf>,

    /// Image mode: serve the packed file from a directory written by `imager --save DIR`
    /// (the manifest defaults to DIR/<name>.torrent, the only .torrent there). A compressed
    /// image (`imager --save DIR --compress`: DIR/<name>.bsz) is served as it is: its zstd
    /// frames go to blockswarm receivers unchanged, other clients get plain blocks.
    #[arg(long, env = "SEEDER_IMAGE", value_name = "DIR")]
    pub image: Option<PathBuf>,

    /// BitTorrent listen address.
    #[arg(long, env = "SEEDER_LISTEN", default_value = "0.0.0.0:6881")]
    pub listen: SocketAddr,

    /// HTTP listen address (manifest, tracker, status).
    #[arg(long, env = "SEEDER_HTTP", default_value = "0.0.0.0:6880")]
    pub http: SocketAddr,

    /// Address receivers should use to reach this machine (default: the --http address if
    /// it is not 0.0.0.0, else an address of ours inside the --allow networks, else the
    /// machine's only non-loopback IPv4 address, else the default route's, with a warning).
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

    /// Plain BitTorrent only: neither offer nor accept zstd-compressed blocks (`bs_zstd`)
    /// with blockswarm receivers.
    #[arg(long, env = "SEEDER_NO_COMPRESS")]
    pub no_compress: bool,

    /// Receivers whose IPv4 addresses share this many leading bits are behind one switch (a
    /// room's subnet): the tracker lists each receiver its own room's peers, the seeder and
    /// 4 others, and receivers fetch from other rooms only what their room lacks, so a
    /// room's uplink carries a few copies, not one per machine. 0: one room (everyone
    /// listed).
    #[arg(long, env = "SEEDER_SITE_PREFIX", default_value_t = blockswarm_swarm::locality::DEFAULT_SITE_PREFIX,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub site_prefix: u8,

    /// Tracker announce interval in seconds given to receivers.
    #[arg(long, env = "SEEDER_ANNOUNCE_INTERVAL", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=MAX_ANNOUNCE_INTERVAL_S))]
    pub announce_interval: u64,

    /// At exit (--expect's end, an error, SIGINT/SIGTERM) write what happened to each
    /// machine to FILE: CSV if it ends in .csv, else JSON.
    #[arg(long, env = "SEEDER_REPORT", value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// No progress bar.
    #[arg(short, long, env = "SEEDER_QUIET")]
    pub quiet: bool,

    /// Progress while running: a summary bar on a terminal, plain lines (a serial console,
    /// a log file), JSON lines, or nothing. `auto`: bar on a terminal, lines otherwise.
    #[arg(long, env = "SEEDER_PROGRESS", value_enum, default_value = "auto")]
    pub progress: blockswarm_cli::ProgressMode,

    /// Time between two progress lines (lines and json).
    #[arg(long, env = "SEEDER_PROGRESS_INTERVAL", default_value = "5s",
          value_parser = blockswarm_cli::parse_duration)]
    pub progress_interval: std::time::Duration,

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

#[cfg(test)]
mod tests {
    use super::*;
    use blockswarm_manifest::exit;

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
    fn help_lists_the_exit_codes() {
        use clap::CommandFactory;
        let h = Cli::command().render_long_help().to_string();
        assert!(h.contains("Exit codes:"), "{h}");
        assert!(h.contains(" 9  seeder: a piece of the source"), "{h}");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
