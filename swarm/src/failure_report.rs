//! A receiver's last word to the seeder when it fails: its final `event=stopped` announce
//! carries `blockswarm_exit=CODE&blockswarm_error=TEXT`. What a tracker accepts of it is
//! bounded here (text length, control characters, the number of failures kept), apart from
//! the tracker's I/O.

use std::collections::VecDeque;
use std::net::SocketAddr;

use serde::Serialize;

use crate::http::{percent_encode, Request};

/// Longest error text sent and kept, in bytes (cut at a character boundary).
pub const MAX_TEXT: usize = 200;
/// Failures a tracker keeps (the oldest go first).
pub const MAX_KEPT: usize = 64;

/// One receiver's reported failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReport {
    /// The receiver's exit code (1..=255).
    pub exit: i32,
    /// Its error, at most [`MAX_TEXT`] bytes, one line.
    pub error: String,
}

/// `text` made one printable line of at most [`MAX_TEXT`] bytes.
pub fn bound_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

impl FailureReport {
    pub fn new(exit: i32, error: &str) -> Self {
        Self {
            exit,
            error: bound_text(error),
        }
    }

    /// The query parameters to append to an announce (`&blockswarm_exit=...`).
    pub fn query(&self) -> String {
        format!(
            "&blockswarm_exit={}&blockswarm_error={}",
            self.exit,
            percent_encode(self.error.as_bytes())
        )
    }

    /// The report in an announce, if it has a valid one (an exit code 1..=255; the text is
    /// bounded whatever was sent).
    pub fn from_request(req: &Request) -> Option<Self> {
        let exit = req
            .param_str("blockswarm_exit")?
            .parse::<i32>()
            .ok()
            .filter(|c| (1..=255).contains(c))?;
        let text = req.param("blockswarm_error").unwrap_or_default();
        // Cut before decoding as UTF-8: a huge parameter costs no more than MAX_TEXT.
        let text = String::from_utf8_lossy(&text[..text.len().min(MAX_TEXT)]);
        Some(Self::new(exit, &text))
    }
}

/// A failure as the tracker logged it.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedFailure {
    /// Increases by one per failure logged (to find the new ones).
    pub seq: u64,
    pub peer_id: String,
    pub addr: SocketAddr,
    #[serde(flatten)]
    pub report: FailureReport,
}

/// The last [`MAX_KEPT`] failures.
#[derive(Debug, Default)]
pub struct FailureLog {
    next: u64,
    kept: VecDeque<LoggedFailure>,
}

impl FailureLog {
    pub fn push(&mut self, peer_id: &[u8; 20], addr: SocketAddr, report: FailureReport) {
        if self.kept.len() == MAX_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(LoggedFailure {
            seq: self.next,
            peer_id: hex_id(peer_id),
            addr,
            report,
        });
        self.next += 1;
    }

    /// Failures with `seq >= from`, oldest first.
    pub fn since(&self, from: u64) -> Vec<LoggedFailure> {
        self.kept
            .iter()
            .filter(|f| f.seq >= from)
            .cloned()
            .collect()
    }
}

fn hex_id(id: &[u8; 20]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::percent_decode;

    fn req(q: &[(&str, &[u8])]) -> Request {
        Request::get(
            "/announce",
            q.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
            "127.0.0.2:1".parse().unwrap(),
        )
    }

    #[test]
    fn text_is_one_bounded_line_cut_at_a_char_boundary() {
        assert_eq!(bound_text("a\nb\tc"), "a b c");
        let long = "é".repeat(300);
        let b = bound_text(&long);
        assert!(b.len() <= MAX_TEXT && b.len() >= MAX_TEXT - 1);
        assert!(b.chars().all(|c| c == 'é'));
    }

    #[test]
    fn round_trip_through_a_query() {
        let r = FailureReport::new(1, "write failed at byte 123: Input/output error & more");
        let q = r.query();
        let mut pairs = Vec::new();
        for kv in q.trim_start_matches('&').split('&') {
            let (k, v) = kv.split_once('=').unwrap();
            pairs.push((k.to_string(), percent_decode(v)));
        }
        let rq = Request::get("/announce", pairs, "127.0.0.2:1".parse().unwrap());
        assert_eq!(FailureReport::from_request(&rq), Some(r));
    }

    #[test]
    fn bad_codes_are_no_report_and_huge_text_is_cut() {
        for c in [&b"0"[..], b"256", b"-1", b"x"] {
            assert_eq!(
                FailureReport::from_request(&req(&[("blockswarm_exit", c)])),
                None
            );
        }
        assert_eq!(FailureReport::from_request(&req(&[])), None);
        let huge = vec![b'x'; 1 << 20];
        let r = FailureReport::from_request(&req(&[
            ("blockswarm_exit", b"7"),
            ("blockswarm_error", &huge),
        ]))
        .unwrap();
        assert_eq!(r.exit, 7);
        assert_eq!(r.error.len(), MAX_TEXT);
    }

    #[test]
    fn the_log_keeps_the_last_failures() {
        let mut log = FailureLog::default();
        let a: SocketAddr = "10.0.0.5:6881".parse().unwrap();
        for i in 0..(MAX_KEPT as u64 + 10) {
            log.push(&[1; 20], a, FailureReport::new(1, &format!("e{i}")));
        }
        let all = log.since(0);
        assert_eq!(all.len(), MAX_KEPT);
        assert_eq!(all[0].seq, 10);
        assert_eq!(log.since(MAX_KEPT as u64 + 9).len(), 1);
        assert_eq!(log.since(MAX_KEPT as u64 + 10).len(), 0);
    }
}
