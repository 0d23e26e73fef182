//! Who may use this seeder: `--allow` (checked at every accept, see
//! `blockswarm_swarm::allow`) and the deployment token, 128 random bits in hex that every
//! HTTP path carries (`/t/TOKEN/NAME.torrent`, `/t/TOKEN/announce`, `/t/TOKEN/status`). The
//! announce URL written into the served torrent carries it too, as `/announce?token=TOKEN`
//! (libtorrent's SSRF mitigation refuses a tracker on a loopback address whose path is not
//! `/announce`), outside the info dict: the infohash is unchanged, so any BitTorrent client
//! given the printed URL works.
//!
//! The token survives a restart (receivers keep their URLs): `--token HEX`, else the one kept
//! in `--state-dir` for this infohash (created with mode 0600 on first use).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockswarm_swarm::allow::{same_token, AllowList};
use blockswarm_swarm::gate::PeerGate;
use blockswarm_swarm::tracker::TrackerServer;
use rand::RngCore;
use tracing::warn;

/// Access options of `seeder`.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessArgs {
    /// Serve only clients inside these networks (CIDR[,CIDR...]; HTTP, tracker, BitTorrent
    /// and netboot ports) [default: the subnets of this machine's interfaces].
    #[arg(long, env = "SEEDER_ALLOW", value_name = "CIDR,...", value_parser = AllowList::parse)]
    pub allow: Option<AllowList>,

    /// The deployment token (32 hex digits) every URL must carry [default: the one kept in
    /// --state-dir for this manifest, made on first use].
    #[arg(long, env = "SEEDER_TOKEN", value_parser = Token::parse)]
    pub token: Option<Token>,

    /// Where deployment tokens are kept, one file per infohash, so that a restarted seeder
    /// keeps its URLs.
    #[arg(long, env = "SEEDER_STATE_DIR", default_value = "/var/lib/blockswarm")]
    pub state_dir: PathBuf,
}

/// A deployment token: 16 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; 16]);

impl Token {
    pub fn random() -> Token {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        Token(b)
    }

    /// 32 hex digits.
    pub fn parse(s: &str) -> Result<Token, String> {
        let s = s.trim();
        let mut b = [0u8; 16];
        if s.len() != 32 || hex::decode_to_slice(s, &mut b).is_err() {
            return Err(format!(
                "a deployment token is 32 hex digits (128 bits), not {s:?}"
            ));
        }
        Ok(Token(b))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// True if `presented` (a path segment) is this token (either hex case).
    pub fn matches(&self, presented: &str) -> bool {
        same_token(
            presented.to_ascii_lowercase().as_bytes(),
            self.hex().as_bytes(),
        )
    }
}

// Never printed by accident in a log line of the whole options.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The token to use: `--token`, else the one kept for `info_hash` in `state_dir` (made now
/// if there is none), else, when the directory cannot be written, a fresh one (warned: a
/// restart then changes the URL).
pub fn token(args: &AccessArgs, info_hash: &[u8; 20]) -> Result<Token, String> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let path = args
        .state_dir
        .join(format!("{}.token", hex::encode(info_hash)));
    match load_or_create(&path) {
        Ok(t) => Ok(t),
        Err(Kept::Corrupt(e)) => Err(e),
        Err(Kept::Io(e)) => {
            warn!(
                "cannot keep the deployment token in {}: {e}; this run's token is new and a restart will change the URL (pass --token to fix it)",
                path.display()
            );
            Ok(Token::random())
        }
    }
}

enum Kept {
    Io(std::io::Error),
    Corrupt(String),
}

fn read_kept(path: &Path) -> Result<Token, Kept> {
    let s = std::fs::read_to_string(path).map_err(Kept::Io)?;
    Token::parse(&s).map_err(|e| {
        Kept::Corrupt(format!(
            "{}: {e} (delete it for a new token, or pass --token)",
            path.display()
        ))
    })
}

/// Reads the token at `path`, or makes one there: written to a private temporary file and
/// linked into place, so that two seeders starting at once agree on one token.
fn load_or_create(path: &Path) -> Result<Token, Kept> {
    match read_kept(path) {
        Err(Kept::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Kept::Io)?;
    let t = Token::random();
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token"),
        &Token::random().hex()[..12]
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{}", t.hex())?;
        f.sync_all()
    };
    let linked = write().and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_kept(path),
        Err(e) => Err(Kept::Io(e)),
    }
}

/// The address filter: `--allow`, else this machine's subnets.
pub fn allow_list(args: &AccessArgs) -> Result<AllowList, String> {
    match &args.allow {
        Some(a) => Ok(a.clone()),
        None => blockswarm_swarm::allow::local_subnets()
            .map_err(|e| format!("cannot list this machine's interfaces for --allow: {e}")),
    }
}

/// The gate of the seeder's BitTorrent port: inside `allow`, and (embedded tracker) only
/// addresses that announced with the token. An external tracker knows no token: `allow`
/// alone then.
pub fn bt_gate(
    allow: &AllowList,
    external_tracker: bool,
    tracker: &Arc<TrackerServer>,
) -> PeerGate {
    if external_tracker {
        PeerGate::allow_only(allow.clone())
    } else {
        let t = tracker.clone();
        PeerGate::with_lookup(allow.clone(), move |ip| t.knows(ip))
    }
}

/// What an HTTP path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Manifest,
    Announce,
    Status,
    /// `/t/TOKEN/`: the dashboard.
    Index,
    /// `POST /t/TOKEN/report`: a receiver's report for the dashboard.
    Report,
    /// `/` without a token: a page saying where the dashboard is.
    Root,
    /// A known path without the token, or with a wrong one: 403.
    Forbidden,
    NotFound,
}

/// The announce URL of a seeder whose HTTP base is `base` (`http://HOST:PORT`).
pub fn announce_url(base: &str, token: &Token) -> String {
    format!("{base}/announce?token={}", token.hex())
}

/// Routes `path` (with the `token=` query parameter, if any) for a seeder serving `name`
/// with `token` (pure).
pub fn route(path: &str, query_token: Option<&[u8]>, token: &Token, name: &str) -> Route {
    if path == "/announce" {
        let ok = query_token
            .and_then(|t| std::str::from_utf8(t).ok())
            .is_some_and(|t| token.matches(t));
        return if ok {
            Route::Announce
        } else {
            Route::Forbidden
        };
    }
    let torrent = format!("{name}.torrent");
    let known = |rest: &str| match rest {
        "announce" => Some(Route::Announce),
        "status" => Some(Route::Status),
        "report" => Some(Route::Report),
        "" => Some(Route::Index),
        r if r == torrent || r == "manifest.torrent" => Some(Route::Manifest),
        _ => None,
    };
    if let Some(after) = path.strip_prefix("/t/") {
        let (tok, rest) = after.split_once('/').unwrap_or((after, ""));
        if !token.matches(tok) {
            return Route::Forbidden;
        }
        return known(rest).unwrap_or(Route::NotFound);
    }
    if path == "/" {
        return Route::Root;
    }
    match known(path.strip_prefix('/').unwrap_or(path)) {
        Some(_) => Route::Forbidden,
        None => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Token {
        Token::parse("00112233445566778899aabbccddeeff").unwrap()
    }

    #[test]
    fn tokens_are_32_hex_digits() {
        assert_eq!(tok().hex(), "00112233445566778899aabbccddeeff");
        assert!(Token::parse("00112233445566778899AABBCCDDEEFF").is_ok());
        for bad in [
            "",
            "0011",
            "00112233445566778899aabbccddeeff00",
            "zz112233445566778899aabbccddeeff",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
        assert_ne!(Token::random(), Token::random());
        assert_eq!(format!("{:?}", tok()), "Token(..)");
    }

    #[test]
    fn every_path_needs_the_token() {
        let t = tok();
        let r = |p: &str| route(p, None, &t, "sda1.packed");
        let good = "/t/00112233445566778899aabbccddeeff";
        assert_eq!(r(&format!("{good}/sda1.packed.torrent")), Route::Manifest);
        assert_eq!(r(&format!("{good}/manifest.torrent")), Route::Manifest);
        assert_eq!(r(&format!("{good}/announce")), Route::Announce);
        assert_eq!(r(&format!("{good}/status")), Route::Status);
        assert_eq!(r(&format!("{good}/report")), Route::Report);
        assert_eq!(r("/"), Route::Root);
        assert_eq!(r("/report"), Route::Forbidden);
        assert_eq!(r(&format!("{good}/")), Route::Index);
        assert_eq!(r(good), Route::Index);
        assert_eq!(r(&format!("{good}/other")), Route::NotFound);
        assert_eq!(
            r("/t/00112233445566778899AABBCCDDEEFF/announce"),
            Route::Announce
        );
        for bad in [
            "/sda1.packed.torrent",
            "/manifest.torrent",
            "/announce",
            "/status",
            "/t/00112233445566778899aabbccddeef0/sda1.packed.torrent",
            "/t//announce",
            "/t/announce",
        ] {
            assert_eq!(r(bad), Route::Forbidden, "{bad}");
        }
        assert_eq!(r("/favicon.ico"), Route::NotFound);
        // The announce URL in the served torrent: the token as a query parameter.
        let q = |p: &str, tok: &[u8]| route(p, Some(tok), &t, "sda1.packed");
        assert_eq!(
            q("/announce", b"00112233445566778899aabbccddeeff"),
            Route::Announce
        );
        assert_eq!(
            q("/announce", b"00112233445566778899aabbccddeef0"),
            Route::Forbidden
        );
        assert_eq!(q("/announce", b""), Route::Forbidden);
        assert_eq!(
            q("/status", b"00112233445566778899aabbccddeeff"),
            Route::Forbidden
        );
        assert_eq!(
            announce_url("http://h:1", &t),
            "http://h:1/announce?token=00112233445566778899aabbccddeeff"
        );
    }

    #[test]
    fn a_kept_token_survives_and_two_makers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let args = AccessArgs {
            allow: None,
            token: None,
            state_dir: dir.path().join("state"),
        };
        let ih = [7u8; 20];
        let a = token(&args, &ih).unwrap();
        let b = token(&args, &ih).unwrap();
        assert_eq!(a, b, "a restart keeps the token");
        let file = args.state_dir.join(format!("{}.token", hex::encode(ih)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "token file readable by others: {mode:o}");
        assert_ne!(
            token(&args, &[8u8; 20]).unwrap(),
            a,
            "one token per manifest"
        );
        let given = AccessArgs {
            token: Some(tok()),
            ..args.clone()
        };
        assert_eq!(token(&given, &ih).unwrap(), tok());
        std::fs::write(&file, "garbage\n").unwrap();
        assert!(token(&args, &ih).unwrap_err().contains("garbage"));
        // Concurrent first starts link one file: everybody reads the same token.
        let ih2 = [9u8; 20];
        let all: Vec<Token> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| token(&args, &ih2).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(all.iter().all(|t| *t == all[0]));
    }
}
