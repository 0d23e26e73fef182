//! What a receiver tells its seeder about itself: a JSON `POST /t/TOKEN/report`, sent on
//! every state change and every ~2 s while it downloads. Versioned ([`VERSION`]); every
//! string is bounded ([`bound`]) on both sides: the seeder trusts nothing it is sent.

use serde::{Deserialize, Serialize};

/// The schema version of [`MachineReport`].
pub const VERSION: u32 = 1;

/// Longest string field kept (bytes), one line.
pub const MAX_FIELD: usize = crate::failure_report::MAX_TEXT;

/// Where a receiver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    FetchingManifest,
    CheckingTarget,
    Downloading,
    Verifying,
    Seeding,
    Done,
    Failed,
}

impl State {
    /// Done or failed: nothing more will come.
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::FetchingManifest => "fetching-manifest",
            State::CheckingTarget => "checking-target",
            State::Downloading => "downloading",
            State::Verifying => "verifying",
            State::Seeding => "seeding",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// One report (the POST body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineReport {
    /// [`VERSION`].
    pub version: u32,
    /// The receiver's BitTorrent peer id, 40 hex digits.
    pub peer_id: String,
    pub state: State,
    pub bytes_done: u64,
    pub total_bytes: u64,
    /// Bytes per second, recent.
    pub rate: f64,
    /// The target device or file.
    pub target: Option<String>,
    pub target_size: Option<u64>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub hostname: Option<String>,
    /// MAC of the interface routing to the seeder.
    pub mac: Option<String>,
    /// On failure: the one-line error and the exit code.
    pub error: Option<String>,
    pub exit: Option<i32>,
    /// Its compressed traffic with other blockswarm peers (`bs_zstd`), if any.
    #[serde(default)]
    pub zstd: Option<crate::zblock::ZStats>,
}

/// `s` as one printable line of at most [`MAX_FIELD`] bytes (the failure report's bound).
pub fn bound(s: &str) -> String {
    crate::failure_report::bound_text(s).trim().to_string()
}

/// Fastest rate a report may claim (bytes/s): past any NIC, and the room's sum stays finite.
pub const MAX_RATE: f64 = 1e12;

impl MachineReport {
    /// Parses a POST body and bounds every string in it; `None` if it is not a report of
    /// this version or its peer id is not 40 hex digits.
    pub fn parse(body: &[u8]) -> Option<MachineReport> {
        let mut r: MachineReport = serde_json::from_slice(body).ok()?;
        if r.version != VERSION
            || r.peer_id.len() != 40
            || !r.peer_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        r.peer_id.make_ascii_lowercase();
        if !r.rate.is_finite() || r.rate < 0.0 {
            r.rate = 0.0;
        }
        r.rate = r.rate.min(MAX_RATE);
        for f in [
            &mut r.target,
            &mut r.model,
            &mut r.serial,
            &mut r.hostname,
            &mut r.mac,
            &mut r.error,
        ] {
            if let Some(s) = f.as_mut() {
                *s = bound(s);
            }
        }
        Some(r)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("report serializes")
    }
}

/// The report URL for a manifest URL: its directory + `report`
/// (`http://h:p/t/TOKEN/x.torrent` -> `http://h:p/t/TOKEN/report`); `None` for a URL that
/// is not http(s) or has no `/t/` directory (a foreign server: nobody to report to).
pub fn report_url(manifest_url: &str) -> Option<String> {
    let u = crate::http::Url::parse(manifest_url).ok()?;
    let path = u.target.split('?').next()?;
    let dir = &path[..path.rfind('/')? + 1];
    let tok = dir.strip_prefix("/t/")?.strip_suffix('/')?;
    if tok.is_empty() || tok.contains('/') {
        return None;
    }
    Some(format!("http://{}{dir}report", u.authority()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MachineReport {
        MachineReport {
            version: VERSION,
            peer_id: "AB".repeat(20),
            state: State::Downloading,
            bytes_done: 5,
            total_bytes: 10,
            rate: 1.5,
            target: Some("/dev/sdb".into()),
            target_size: Some(100),
            model: None,
            serial: None,
            hostname: Some("pc\n01".into()),
            mac: None,
            error: Some("x".repeat(1000)),
            exit: None,
            zstd: None,
        }
    }

    #[test]
    fn round_trip_bounds_strings() {
        let r = MachineReport::parse(&sample().to_json()).unwrap();
        assert_eq!(r.peer_id, "ab".repeat(20));
        assert_eq!(r.hostname.as_deref(), Some("pc 01"));
        assert_eq!(r.error.unwrap().len(), MAX_FIELD);
        assert_eq!(r.state, State::Downloading);
        let j = String::from_utf8(sample().to_json()).unwrap();
        assert!(j.contains("\"downloading\""), "{j}");
    }

    #[test]
    fn refuses_bad_reports() {
        let mut r = sample();
        r.version = 2;
        assert!(MachineReport::parse(&r.to_json()).is_none());
        let mut r = sample();
        r.peer_id = "zz".repeat(20);
        assert!(MachineReport::parse(&r.to_json()).is_none());
        assert!(MachineReport::parse(b"{").is_none());
        assert!(MachineReport::parse(b"{\"version\":1}").is_none());
        assert_eq!(bound(&"é".repeat(150)).len(), MAX_FIELD);
    }

    #[test]
    fn report_urls() {
        assert_eq!(
            report_url("http://10.0.0.5:6880/t/abc/sda1.packed.torrent").as_deref(),
            Some("http://10.0.0.5:6880/t/abc/report")
        );
        assert_eq!(report_url("/tmp/m.torrent"), None);
        assert_eq!(report_url("http://h/x.torrent"), None);
        assert_eq!(report_url("http://h/t/a/b/x.torrent"), None);
    }

    #[test]
    fn a_claimed_rate_is_bounded() {
        let mut r = sample();
        r.rate = 1e308;
        let back = MachineReport::parse(&r.to_json()).unwrap();
        assert_eq!(back.rate, MAX_RATE);
        assert!((back.rate * 4096.0).is_finite());
    }
}
