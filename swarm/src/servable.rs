//! Which pieces a node may serve, decided without I/O.
//!
//! A node serves only pieces it has. Pieces it hashed itself (received and verified, or found
//! correct by a resume scan) are served as they are. Pieces it was *told* it has when it
//! started (a seeder: the manifest's hashes are trusted, the source is not re-read up front)
//! are SHA-1-checked the first time any block of them is served: one whole-piece read and one
//! hash per piece per process. A mismatch means the source changed since imaging, or a wrong
//! source was given: the node must stop. A piece that cannot be read (an I/O error) is refused
//! to peers and not read again for [`RETRY_AFTER`]; after [`MAX_READ_TRIES`] failed reads it
//! is refused for good. Everything else about a node stays as it was.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// An unreadable piece is tried again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Failed reads of one piece after which it is refused for the rest of the session.
pub const MAX_READ_TRIES: u32 = 3;

/// What to do with a request for a piece we have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Serve,
    /// Refuse it (Fast REJECT, or drop it for a peer without the Fast extension).
    Refuse,
}

/// How the serving side reads a piece's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// Verified: read just the blocks asked for.
    Plain,
    /// Verified, but its last read failed: read the blocks asked for, then report with
    /// [`Servable::read_ok`] or [`Servable::read_failed`].
    Retry,
    /// Not yet verified, and now ours to check: read the whole piece, hash it, then report
    /// with [`Servable::check_done`]. Other servers of the piece wait meanwhile.
    Check,
    /// Someone else is checking it: wait for [`Servable::check_done`], then ask again.
    Wait,
    /// Unreadable or corrupt: refuse the requests.
    Refuse,
}

/// What a first-serve check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Match,
    Mismatch,
    /// The piece could not be read.
    ReadFailed,
}

/// What the caller should do after a check or a failed read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the piece.
    Serve,
    /// The piece is unreadable; `first` is true the first time (log it then, once).
    Unreadable { first: bool },
    /// The stored piece does not match its hash: stop serving, stop the node.
    Corrupt,
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    /// When the last read was tried.
    at: Instant,
    tries: u32,
}

/// Per-piece serving state of one node.
#[derive(Debug)]
pub struct Servable {
    /// Hashed by this process (on receipt, on resume, or on first serve).
    verified: Vec<bool>,
    /// First-serve checks running.
    checking: HashSet<u32>,
    unreadable: BTreeMap<u32, Failure>,
    corrupt: Option<u32>,
}

impl Servable {
    /// `n` pieces, none verified yet. Pieces that arrive later are marked with
    /// [`Servable::verified`]; pieces the node starts with are checked on first serve.
    pub fn new(n: usize) -> Self {
        Self {
            verified: vec![false; n],
            checking: HashSet::new(),
            unreadable: BTreeMap::new(),
            corrupt: None,
        }
    }

    /// All `n` pieces count as verified: first-serve hashing is off (measurements only).
    pub fn trusting(n: usize) -> Self {
        Self {
            verified: vec![true; n],
            ..Self::new(n)
        }
    }

    /// This node hashed piece `i` itself (received and verified, or found on a resume scan).
    pub fn verified(&mut self, i: u32) {
        self.verified[i as usize] = true;
    }

    pub fn is_verified(&self, i: u32) -> bool {
        self.verified[i as usize]
    }

    /// May a request for piece `i` (which we have) be queued for serving?
    pub fn admit(&self, i: u32, now: Instant) -> Admit {
        if self.corrupt.is_some() {
            return Admit::Refuse;
        }
        match self.unreadable.get(&i) {
            Some(f) if !Self::due(f, now) => Admit::Refuse,
            _ => Admit::Serve,
        }
    }

    fn due(f: &Failure, now: Instant) -> bool {
        f.tries < MAX_READ_TRIES && now.duration_since(f.at) >= RETRY_AFTER
    }

    /// The serving side is about to read blocks of piece `i`.
    pub fn plan_read(&mut self, i: u32, now: Instant) -> ReadPlan {
        if self.corrupt.is_some() {
            return ReadPlan::Refuse;
        }
        if let Some(f) = self.unreadable.get_mut(&i) {
            if !Self::due(f, now) {
                return ReadPlan::Refuse;
            }
            // One retry per window: other requests are refused until it reports.
            f.at = now;
            f.tries += 1;
            if self.verified[i as usize] {
                return ReadPlan::Retry;
            }
            return if self.checking.insert(i) {
                ReadPlan::Check
            } else {
                ReadPlan::Wait
            };
        }
        if self.verified[i as usize] {
            ReadPlan::Plain
        } else if self.checking.insert(i) {
            ReadPlan::Check
        } else {
            ReadPlan::Wait
        }
    }

    /// A first-serve check of piece `i` (started by [`ReadPlan::Check`]) ended.
    pub fn check_done(&mut self, i: u32, result: Checked, now: Instant) -> Outcome {
        self.checking.remove(&i);
        match result {
            Checked::Match => {
                self.verified[i as usize] = true;
                self.unreadable.remove(&i);
                Outcome::Serve
            }
            Checked::Mismatch => {
                self.corrupt.get_or_insert(i);
                Outcome::Corrupt
            }
            Checked::ReadFailed => self.read_failed(i, now),
        }
    }

    /// A check of piece `i` was abandoned (its connection closed mid-read): the next server
    /// of the piece checks it.
    pub fn check_abandoned(&mut self, i: u32) {
        self.checking.remove(&i);
    }

    /// A plain read of piece `i` succeeded (a retried piece is readable again).
    pub fn read_ok(&mut self, i: u32) {
        self.unreadable.remove(&i);
    }

    /// A read of piece `i` failed.
    pub fn read_failed(&mut self, i: u32, now: Instant) -> Outcome {
        let mut first = false;
        self.unreadable
            .entry(i)
            .and_modify(|f| f.at = now)
            .or_insert_with(|| {
                first = true;
                Failure { at: now, tries: 1 }
            });
        Outcome::Unreadable { first }
    }

    /// Pieces currently refused because they could not be read, in order.
    pub fn unreadable_pieces(&self) -> Vec<u32> {
        self.unreadable.keys().copied().collect()
    }

    /// The first piece found not to match its hash, if any.
    pub fn corrupt(&self) -> Option<u32> {
        self.corrupt
    }

    /// Pieces verified so far.
    pub fn verified_count(&self) -> usize {
        self.verified.iter().filter(|&&v| v).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unverified_piece_is_checked_once_and_others_wait_for_it() {
        let now = Instant::now();
        let mut s = Servable::new(4);
        assert_eq!(s.admit(2, now), Admit::Serve);
        assert_eq!(s.plan_read(2, now), ReadPlan::Check);
        assert_eq!(s.plan_read(2, now), ReadPlan::Wait, "one check at a time");
        assert_eq!(s.check_done(2, Checked::Match, now), Outcome::Serve);
        assert_eq!(s.plan_read(2, now), ReadPlan::Plain, "never hashed twice");
        assert!(s.is_verified(2));
        assert_eq!(
            s.plan_read(3, now),
            ReadPlan::Check,
            "each piece its own check"
        );
        assert_eq!(s.verified_count(), 1);
    }

    #[test]
    fn an_abandoned_check_is_taken_up_by_the_next_server() {
        let now = Instant::now();
        let mut s = Servable::new(1);
        assert_eq!(s.plan_read(0, now), ReadPlan::Check);
        assert_eq!(s.plan_read(0, now), ReadPlan::Wait);
        s.check_abandoned(0);
        assert_eq!(s.plan_read(0, now), ReadPlan::Check);
    }

    #[test]
    fn pieces_the_node_hashed_itself_are_not_checked_again() {
        let now = Instant::now();
        let mut s = Servable::new(3);
        s.verified(1);
        assert_eq!(s.plan_read(1, now), ReadPlan::Plain);
        let mut t = Servable::trusting(3);
        assert_eq!(t.plan_read(0, now), ReadPlan::Plain);
    }

    #[test]
    fn a_mismatch_stops_all_serving() {
        let now = Instant::now();
        let mut s = Servable::new(3);
        s.verified(0);
        assert_eq!(s.plan_read(1, now), ReadPlan::Check);
        assert_eq!(s.check_done(1, Checked::Mismatch, now), Outcome::Corrupt);
        assert_eq!(s.corrupt(), Some(1));
        assert_eq!(s.admit(0, now), Admit::Refuse);
        assert_eq!(s.plan_read(0, now), ReadPlan::Refuse);
        assert_eq!(s.plan_read(2, now), ReadPlan::Refuse);
        assert!(
            s.unreadable_pieces().is_empty(),
            "corrupt is not unreadable"
        );
    }

    #[test]
    fn an_unreadable_piece_is_refused_logged_once_and_retried_a_bounded_number_of_times() {
        let t0 = Instant::now();
        let mut s = Servable::new(3);
        assert_eq!(s.plan_read(1, t0), ReadPlan::Check);
        assert_eq!(
            s.check_done(1, Checked::ReadFailed, t0),
            Outcome::Unreadable { first: true }
        );
        assert_eq!(s.unreadable_pieces(), vec![1]);
        assert_eq!(s.admit(1, t0), Admit::Refuse);
        assert_eq!(s.plan_read(1, t0 + RETRY_AFTER / 2), ReadPlan::Refuse);
        assert_eq!(s.admit(0, t0), Admit::Serve, "other pieces unaffected");
        assert_eq!(s.plan_read(0, t0), ReadPlan::Check);

        // Retries: one per window, then never again.
        let mut t = t0;
        for attempt in 2..=MAX_READ_TRIES {
            t += RETRY_AFTER;
            assert_eq!(s.admit(1, t), Admit::Serve, "attempt {attempt} due");
            assert_eq!(s.plan_read(1, t), ReadPlan::Check);
            assert_eq!(s.plan_read(1, t), ReadPlan::Refuse, "one retry per window");
            assert_eq!(
                s.check_done(1, Checked::ReadFailed, t),
                Outcome::Unreadable { first: false }
            );
        }
        t += RETRY_AFTER * 10;
        assert_eq!(s.admit(1, t), Admit::Refuse, "tries exhausted");
        assert_eq!(s.plan_read(1, t), ReadPlan::Refuse);
        assert_eq!(s.unreadable_pieces(), vec![1]);
    }

    #[test]
    fn a_retried_piece_that_reads_again_is_served() {
        let t0 = Instant::now();
        let mut s = Servable::new(2);
        s.verified(0);
        assert_eq!(
            s.read_failed(0, t0),
            Outcome::Unreadable { first: true },
            "a verified piece can go bad too"
        );
        assert_eq!(s.plan_read(0, t0), ReadPlan::Refuse);
        let t = t0 + RETRY_AFTER;
        assert_eq!(s.plan_read(0, t), ReadPlan::Retry, "verified: no re-hash");
        s.read_ok(0);
        assert!(s.unreadable_pieces().is_empty());
        assert_eq!(s.plan_read(0, t), ReadPlan::Plain);

        assert_eq!(s.plan_read(1, t0), ReadPlan::Check);
        s.check_done(1, Checked::ReadFailed, t0);
        assert_eq!(
            s.plan_read(1, t),
            ReadPlan::Check,
            "unverified: checked on retry"
        );
        assert_eq!(s.check_done(1, Checked::Match, t), Outcome::Serve);
        assert!(s.unreadable_pieces().is_empty());
        assert_eq!(s.plan_read(1, t), ReadPlan::Plain);
    }
}
