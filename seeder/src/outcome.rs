//! When `seeder --expect N` is finished, and how: a pure decision over the receivers'
//! counts, apart from the tracker and the swarm.

use std::net::IpAddr;

/// A receiver that reported a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub ip: IpAddr,
    pub exit: i32,
    pub error: String,
}

/// What the seeder's loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving.
    Wait,
    /// Every expected receiver is accounted for and none failed: exit 0.
    AllComplete,
    /// Every expected receiver is accounted for, some failed: exit
    /// [`blockswarm_manifest::exit::RECEIVERS_FAILED`].
    SomeFailed,
}

/// Failures that still count: a receiver that failed and was started again at the same
/// address (and is now complete or still working) no longer counts as failed; one address
/// counts once.
pub fn still_failed(failures: Vec<Failed>, live: &[IpAddr]) -> Vec<Failed> {
    let mut out: Vec<Failed> = Vec::new();
    for f in failures {
        if live.contains(&f.ip) {
            continue;
        }
        // The latest failure of an address wins.
        out.retain(|o| o.ip != f.ip);
        out.push(f);
    }
    out
}

/// The decision: done when `complete + failed >= expect` and no receiver still needs data.
pub fn decide(expect: u64, complete: usize, failed: usize, pending: usize) -> Verdict {
    if pending > 0 || ((complete + failed) as u64) < expect {
        Verdict::Wait
    } else if failed == 0 {
        Verdict::AllComplete
    } else {
        Verdict::SomeFailed
    }
}

/// The summary line: "2 complete, 1 failed: 10.0.0.5 exit 1: write failed at ...".
pub fn summary(complete: usize, failed: &[Failed]) -> String {
    let mut s = format!("{complete} complete, {} failed", failed.len());
    for (i, f) in failed.iter().enumerate() {
        s.push_str(if i == 0 { ": " } else { "; " });
        s.push_str(&format!("{} exit {}: {}", f.ip, f.exit, f.error));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ip: &str, exit: i32, e: &str) -> Failed {
        Failed {
            ip: ip.parse().unwrap(),
            exit,
            error: e.into(),
        }
    }

    #[test]
    fn failed_receivers_count_towards_expect() {
        assert_eq!(decide(3, 2, 0, 0), Verdict::Wait);
        assert_eq!(decide(3, 3, 0, 0), Verdict::AllComplete);
        assert_eq!(decide(3, 2, 1, 0), Verdict::SomeFailed);
        assert_eq!(decide(3, 0, 3, 0), Verdict::SomeFailed);
        // A receiver still downloading holds everything up.
        assert_eq!(decide(3, 2, 1, 1), Verdict::Wait);
        assert_eq!(decide(3, 4, 0, 1), Verdict::Wait);
        // More than expected is fine.
        assert_eq!(decide(2, 2, 1, 0), Verdict::SomeFailed);
    }

    #[test]
    fn a_restarted_receiver_no_longer_counts_as_failed_and_an_address_counts_once() {
        let live: Vec<IpAddr> = vec!["10.0.0.6".parse().unwrap()];
        let left = still_failed(
            vec![
                f("10.0.0.5", 1, "first"),
                f("10.0.0.6", 7, "stalled"),
                f("10.0.0.5", 4, "second"),
            ],
            &live,
        );
        assert_eq!(left, vec![f("10.0.0.5", 4, "second")]);
    }

    #[test]
    fn the_summary_names_each_failure() {
        assert_eq!(summary(3, &[]), "3 complete, 0 failed");
        assert_eq!(
            summary(
                2,
                &[
                    f("10.0.0.5", 1, "write failed at byte 4096"),
                    f("10.0.0.7", 7, "x")
                ]
            ),
            "2 complete, 2 failed: 10.0.0.5 exit 1: write failed at byte 4096; 10.0.0.7 exit 7: x"
        );
    }
}
