//! The receiver's command line, its config file (KEY=VALUE, as a rescue system passes it) and
//! the settings they resolve to; the errors and their exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blockswarm_manifest::exit;
use clap::Parser;

/// Parses durations like `90s`, `10m`, `1h`, `0` or a plain number of seconds.
pub use blockswarm_cli::parse_duration;
use blockswarm_cli::ProgressMode;

/// Every key of the `--config` file with an example value: the one list the option's help
/// shows (and a test feeds each to the parser).
pub const CONFIG_KEYS: &[(&str, &str)] = &[
    ("MANIFEST", "http://10.0.0.1:6880/t/TOKEN/sda1.torrent"),
    ("INFO_HASH", "00112233445566778899aabbccddeeff00112233"),
    ("TARGET", "/dev/sda1"),
    ("AUTO_FROM", "/dev/sda,/dev/nvme0n1"),
    ("LISTEN", "0.0.0.0:6881"),
    ("SEED_AFTER", "30m"),
    ("VERIFY", "yes"),
    ("RESUME", "no"),
    ("TRACKER", "http://10.0.0.1:6880/announce"),
    ("PEERS", "10.0.0.2:6881,10.0.0.3:6881"),
    ("RETRY_FOR", "60s"),
    ("STALL_TIMEOUT", "120s"),
    ("PROGRESS", "lines"),
    ("PROGRESS_INTERVAL", "5s"),
    ("COMPRESS", "no"),
    ("SITE_PREFIX", "24"),
];

/// The help of `--config`, listing [`CONFIG_KEYS`].
fn config_help() -> String {
    let keys: Vec<String> = CONFIG_KEYS.iter().map(|(k, _)| format!("{k}=")).collect();
    format!(
        "KEY=VALUE settings file ({}), as a rescue/PXE system would pass them. The command line wins.",
        keys.join(", ")
    )
}

/// Parses an infohash: 40 hex digits.
pub fn parse_info_hash(s: &str) -> Result<[u8; 20], String> {
    let mut b = [0u8; 20];
    hex::decode_to_slice(s.trim(), &mut b)
        .map_err(|_| format!("an infohash is 40 hex digits, not {s:?}"))?;
    Ok(b)
}

/// Receives a blockswarm deployment onto a target device.
#[derive(Debug, Parser, Default)]
#[command(name = "receiver", version, about, long_about = None,
          after_long_help = blockswarm_cli::exit_codes_help())]
pub struct Cli {
    /// Manifest: a file, or an http:// URL printed by the seeder.
    #[arg(long, env = "RECEIVER_MANIFEST")]
    pub manifest: Option<String>,

    /// The manifest's infohash (40 hex digits, printed by the seeder): a fetched manifest with
    /// another one is refused (exit 3) before anything is written.
    #[arg(long, env = "RECEIVER_INFO_HASH", value_parser = parse_info_hash, value_name = "HEX")]
    pub info_hash: Option<[u8; 20]>,

    /// Target block device (or image file) to write: at least the source's size, or for a
    /// whole-disk manifest the end of its last partition. `auto`: the only whole disk on this
    /// machine that is large enough, not removable, not read-only and not in use (mounted,
    /// holding a mounted partition, or the source); refused, listing the candidates with size,
    /// model and serial, when there is none or more than one.
    #[arg(long, env = "RECEIVER_TARGET")]
    pub target: Option<PathBuf>,

    /// With `--target auto`: choose only among these devices (comma-separated), not among
    /// every disk of the machine.
    #[arg(
        long,
        env = "RECEIVER_AUTO_FROM",
        value_delimiter = ',',
        value_name = "DEV,..."
    )]
    pub auto_from: Vec<PathBuf>,

    #[arg(long, env = "RECEIVER_CONFIG", help = config_help())]
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

    /// Plain BitTorrent only: neither offer nor accept zstd-compressed blocks (`bs_zstd`)
    /// with other blockswarm peers.
    #[arg(long, env = "RECEIVER_NO_COMPRESS")]
    pub no_compress: bool,

    /// Peers whose IPv4 addresses share this many leading bits with ours are behind our
    /// switch (the room's subnet): others are asked only for pieces no peer of our room
    /// has. 0: every peer counts as ours. Default 24.
    #[arg(long, env = "RECEIVER_SITE_PREFIX", value_parser = clap::value_parser!(u8).range(0..=32))]
    pub site_prefix: Option<u8>,

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

    /// Give up (exit 7, naming the missing pieces and the peers tried) once no piece was
    /// verified for this long while no connected peer sends any piece we lack: the seeder
    /// is gone for good, or cannot read what is missing. `0`: never [default: 120s].
    #[arg(long, env = "RECEIVER_STALL_TIMEOUT", value_parser = parse_duration)]
    pub stall_timeout: Option<Duration>,

    /// No progress bar.
    #[arg(short, long, env = "RECEIVER_QUIET")]
    pub quiet: bool,

    /// Progress while running: a bar on a terminal, plain lines (a serial console, a log
    /// file), JSON lines, or nothing [default: auto: a bar on a terminal, lines otherwise].
    #[arg(long, env = "RECEIVER_PROGRESS", value_enum)]
    pub progress: Option<ProgressMode>,

    /// Time between two progress lines (lines and json) [default: 5s].
    #[arg(long, env = "RECEIVER_PROGRESS_INTERVAL", value_parser = parse_duration)]
    pub progress_interval: Option<Duration>,

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
    /// No progress for `--stall-timeout` and nobody to get the missing pieces from.
    #[error("{0}")]
    GaveUp(String),
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
            ReceiverError::Verify(_) | ReceiverError::GaveUp(_) => exit::VERIFY_FAILED,
            ReceiverError::Failure(_) => exit::FAILURE,
        }
    }
}

/// Settings after merging the config file under the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub manifest: String,
    /// The infohash the manifest must have (`--info-hash`).
    pub info_hash: Option<[u8; 20]>,
    /// A device or file, or `auto` (see [`Settings::target_is_auto`]).
    pub target: PathBuf,
    pub auto_from: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub seed_after: Duration,
    pub verify: bool,
    pub resume: bool,
    /// Compressed blocks with blockswarm peers (`bs_zstd`).
    pub compress: bool,
    /// See the flag.
    pub site_prefix: u8,
    pub tracker: Option<String>,
    pub peers: Vec<SocketAddr>,
    pub retry_for: Duration,
    /// None: never give up.
    pub stall_timeout: Option<Duration>,
    pub quiet: bool,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
}

fn truthy(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" | "" => Ok(false),
        other => Err(format!("not a yes/no value: {other:?}")),
    }
}

impl Settings {
    /// True for `--target auto`.
    pub fn target_is_auto(&self) -> bool {
        self.target.as_os_str() == "auto"
    }

    pub fn resolve(cli: &Cli) -> Result<Settings, ReceiverError> {
        let mut file = Cli::default();
        let (mut f_verify, mut f_resume, mut f_compress) = (None, None, None);
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
                    "INFO_HASH" => file.info_hash = Some(parse_info_hash(v).map_err(err)?),
                    "TARGET" => file.target = Some(v.into()),
                    "AUTO_FROM" => file.auto_from = v.split(',').map(|p| p.trim().into()).collect(),
                    "LISTEN" => {
                        file.listen = Some(v.parse().map_err(|_| err(format!("bad LISTEN {v:?}")))?)
                    }
                    "SEED_AFTER" => file.seed_after = Some(parse_duration(v).map_err(err)?),
                    "RETRY_FOR" => file.retry_for = Some(parse_duration(v).map_err(err)?),
                    "STALL_TIMEOUT" => file.stall_timeout = Some(parse_duration(v).map_err(err)?),
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
                    "COMPRESS" => f_compress = Some(truthy(v).map_err(err)?),
                    "SITE_PREFIX" => {
                        file.site_prefix = Some(
                            v.parse::<u8>()
                                .ok()
                                .filter(|b| *b <= 32)
                                .ok_or_else(|| err(format!("bad SITE_PREFIX {v:?} (0..=32)")))?,
                        )
                    }
                    "PROGRESS" => {
                        file.progress = Some(
                            <ProgressMode as clap::ValueEnum>::from_str(v, true).map_err(|_| {
                                err(format!("bad PROGRESS {v:?} (auto, bar, lines, json, none)"))
                            })?,
                        )
                    }
                    "PROGRESS_INTERVAL" => {
                        file.progress_interval = Some(parse_duration(v).map_err(err)?)
                    }
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
            info_hash: cli.info_hash.or(file.info_hash),
            target,
            auto_from: if cli.auto_from.is_empty() {
                file.auto_from
            } else {
                cli.auto_from.clone()
            },
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
            compress: !cli.no_compress && f_compress.unwrap_or(true),
            site_prefix: cli
                .site_prefix
                .or(file.site_prefix)
                .unwrap_or(blockswarm_swarm::locality::DEFAULT_SITE_PREFIX),
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
            stall_timeout: Some(
                cli.stall_timeout
                    .or(file.stall_timeout)
                    .unwrap_or(crate::stall::DEFAULT_STALL_TIMEOUT),
            )
            .filter(|t| !t.is_zero()),
            quiet: cli.quiet,
            progress: cli.progress.or(file.progress).unwrap_or_default(),
            progress_interval: cli
                .progress_interval
                .or(file.progress_interval)
                .unwrap_or(Duration::from_secs(5)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_hashes() {
        assert!(parse_info_hash("00112233445566778899aabbccddeeff00112233").is_ok());
        for bad in [
            "",
            "0011",
            "00112233445566778899aabbccddeeff0011223344",
            "zz112233445566778899aabbccddeeff00112233",
        ] {
            assert!(parse_info_hash(bad).is_err(), "{bad:?}");
        }
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
            "# rescue config\nMANIFEST=http://10.0.0.1:6880/x.torrent\nINFO_HASH=00112233445566778899AABBCCDDEEFF00112233\nTARGET=/dev/sda1\nLISTEN=0.0.0.0:7000\nSEED_AFTER=5m\nVERIFY=yes\nSTALL_TIMEOUT=90s\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(p.clone()),
            target: Some("/dev/sdb1".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!(s.manifest, "http://10.0.0.1:6880/x.torrent");
        assert_eq!(
            s.info_hash.map(hex::encode).as_deref(),
            Some("00112233445566778899aabbccddeeff00112233")
        );
        assert_eq!(s.target, PathBuf::from("/dev/sdb1"), "command line wins");
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(s.seed_after, Duration::from_secs(300));
        assert!(s.verify);
        assert_eq!(s.stall_timeout, Some(Duration::from_secs(90)));
        let never = Cli {
            config: Some(p.clone()),
            stall_timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&never).unwrap().stall_timeout,
            None,
            "0: never"
        );
        std::fs::write(&p, "MANIFEST=x\nTARGET=y\n").unwrap();
        let default = Cli {
            config: Some(p.clone()),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&default).unwrap().stall_timeout,
            Some(crate::stall::DEFAULT_STALL_TIMEOUT)
        );
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
    fn every_config_key_is_accepted_and_listed_in_the_help() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.conf");
        for (k, v) in CONFIG_KEYS {
            assert!(
                help.contains(&format!("{k}=")),
                "--config help lacks {k}=:\n{help}"
            );
            std::fs::write(&p, format!("MANIFEST=m\nTARGET=t\n{k}={v}\n")).unwrap();
            let cli = Cli {
                config: Some(p.clone()),
                ..Default::default()
            };
            if let Err(e) = Settings::resolve(&cli) {
                panic!("{k}={v} refused: {e}");
            }
        }
        assert!(help.contains("PEERS="));
        std::fs::write(
            &p,
            "MANIFEST=m\nTARGET=t\nPROGRESS=json\nPROGRESS_INTERVAL=2s\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(p.clone()),
            ..Default::default()
        };
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!(s.progress, ProgressMode::Json);
        assert_eq!(s.progress_interval, Duration::from_secs(2));
        std::fs::write(&p, "MANIFEST=m\nTARGET=t\nPROGRESS=loud\n").unwrap();
        assert!(matches!(
            Settings::resolve(&cli),
            Err(ReceiverError::Usage(_))
        ));
    }

    #[test]
    fn site_prefix_comes_from_the_flag_then_the_file_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.conf");
        std::fs::write(&p, "MANIFEST=m\nTARGET=t\n").unwrap();
        let cli = |flag: Option<u8>| Cli {
            config: Some(p.clone()),
            site_prefix: flag,
            ..Default::default()
        };
        let get = |c: &Cli| Settings::resolve(c).map(|s| s.site_prefix);
        assert_eq!(get(&cli(None)).unwrap(), 24);
        std::fs::write(&p, "MANIFEST=m\nTARGET=t\nSITE_PREFIX=0\n").unwrap();
        assert_eq!(get(&cli(None)).unwrap(), 0);
        assert_eq!(get(&cli(Some(16))).unwrap(), 16, "the command line wins");
        std::fs::write(&p, "MANIFEST=m\nTARGET=t\nSITE_PREFIX=33\n").unwrap();
        assert!(matches!(get(&cli(None)), Err(ReceiverError::Usage(_))));
    }

    #[test]
    fn help_lists_the_exit_codes() {
        use clap::CommandFactory;
        let h = Cli::command().render_long_help().to_string();
        assert!(h.contains("Exit codes:"), "{h}");
        assert!(h.contains(" 4  Bad target: too small"), "{h}");
        assert!(h.contains(" 7  Verification failed"), "{h}");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
