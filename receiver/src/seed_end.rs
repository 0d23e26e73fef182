//! When a receiver that has everything stops seeding: decided without I/O.

use std::time::Duration;

/// Once done, how long we try to have the tracker take our `completed` before leaving.
pub const TELL_COMPLETE_FOR: Duration = Duration::from_secs(2);
/// A tracker silent this long means the seeder is gone.
pub const SEEDER_GONE_AFTER: Duration = Duration::from_secs(30);

/// What the seeding phase knows on each turn.
#[derive(Debug, Clone, Copy)]
pub struct Seeding {
    /// The tracker says every receiver is done.
    pub done: bool,
    pub has_tracker: bool,
    /// The tracker has taken our `completed`.
    pub told_complete: bool,
    /// Since seeding began (every piece durable on the target), and the limit
    /// (`--seed-after`).
    pub seeding_for: Duration,
    pub seed_after: Duration,
    /// Since the tracker last answered.
    pub silent_for: Duration,
}

/// Why seeding ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedEnd {
    /// The swarm is done and the tracker counted us (or we tried for long enough).
    Done,
    /// `--seed-after` ran out.
    TimeOver,
    /// The tracker has not answered for [`SEEDER_GONE_AFTER`].
    SeederGone,
}

/// None: seed on.
pub fn seed_end(s: Seeding) -> Option<SeedEnd> {
    if s.done && (!s.has_tracker || s.told_complete || s.seeding_for > TELL_COMPLETE_FOR) {
        return Some(SeedEnd::Done);
    }
    if s.seeding_for >= s.seed_after {
        return Some(SeedEnd::TimeOver);
    }
    if s.has_tracker && s.silent_for > SEEDER_GONE_AFTER {
        return Some(SeedEnd::SeederGone);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Seeding {
        Seeding {
            done: false,
            has_tracker: true,
            told_complete: false,
            seeding_for: Duration::ZERO,
            seed_after: Duration::from_secs(600),
            silent_for: Duration::ZERO,
        }
    }

    #[test]
    fn seeds_on_while_the_swarm_is_not_done() {
        assert_eq!(seed_end(base()), None);
        let s = Seeding {
            seeding_for: Duration::from_secs(599),
            silent_for: SEEDER_GONE_AFTER,
            ..base()
        };
        assert_eq!(seed_end(s), None);
    }

    #[test]
    fn done_waits_for_the_tracker_to_count_us_at_most_two_seconds() {
        let done = Seeding {
            done: true,
            ..base()
        };
        assert_eq!(seed_end(done), None);
        let told = Seeding {
            told_complete: true,
            ..done
        };
        assert_eq!(seed_end(told), Some(SeedEnd::Done));
        let late = Seeding {
            seeding_for: TELL_COMPLETE_FOR + Duration::from_millis(1),
            ..done
        };
        assert_eq!(seed_end(late), Some(SeedEnd::Done));
    }

    #[test]
    fn seed_time_and_a_silent_tracker_end_it() {
        let over = Seeding {
            seeding_for: Duration::from_secs(600),
            ..base()
        };
        assert_eq!(seed_end(over), Some(SeedEnd::TimeOver));
        let gone = Seeding {
            silent_for: SEEDER_GONE_AFTER + Duration::from_millis(1),
            ..base()
        };
        assert_eq!(seed_end(gone), Some(SeedEnd::SeederGone));
        // Without a tracker, silence means nothing.
        let alone = Seeding {
            has_tracker: false,
            ..gone
        };
        assert_eq!(seed_end(alone), None);
    }
}
