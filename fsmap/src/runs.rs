// SPDX-License-Identifier: GPL-2.0-or-later
//! Byte-run helpers.

/// Sort, merge (overlapping or adjacent), drop empty runs and clip the runs to
/// `[0, limit)`.
pub fn normalize_runs(mut runs: Vec<(u64, u64)>, limit: u64) -> Vec<(u64, u64)> {
    runs.retain(|&(off, len)| len > 0 && off < limit);
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (off, len) in runs {
        let end = off.saturating_add(len).min(limit);
        if let Some(last) = out.last_mut() {
            let last_end = last.0 + last.1;
            if off <= last_end {
                if end > last_end {
                    last.1 = end - last.0;
                }
                continue;
            }
        }
        out.push((off, end - off));
    }
    out
}

/// Builds a run list from runs pushed in ascending order, merging adjacent
/// and overlapping ones as it goes.
#[derive(Debug, Default)]
pub(crate) struct RunBuilder {
    runs: Vec<(u64, u64)>,
}

impl RunBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Add `[off, off+len)`. Runs must be pushed with non-decreasing `off`;
    /// an out-of-order run is still handled (merged later by `finish`).
    pub(crate) fn push(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = off.saturating_add(len);
        if let Some(last) = self.runs.last_mut() {
            let last_end = last.0 + last.1;
            if off >= last.0 && off <= last_end {
                if end > last_end {
                    last.1 = end - last.0;
                }
                return;
            }
        }
        self.runs.push((off, end - off));
    }

    /// The final, normalized run list clipped to `limit`.
    pub(crate) fn finish(self, limit: u64) -> Vec<(u64, u64)> {
        normalize_runs(self.runs, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_merges_and_clips() {
        let r = normalize_runs(
            vec![(10, 5), (0, 3), (3, 2), (12, 10), (40, 0), (90, 20)],
            100,
        );
        assert_eq!(r, vec![(0, 5), (10, 12), (90, 10)]);
        assert_eq!(
            normalize_runs(vec![(u64::MAX - 1, 10)], u64::MAX),
            vec![(u64::MAX - 1, 1)]
        );
    }

    #[test]
    fn builder_merges_adjacent() {
        let mut b = RunBuilder::new();
        b.push(0, 4);
        b.push(4, 4);
        b.push(6, 1);
        b.push(10, 2);
        b.push(1, 1);
        assert_eq!(b.finish(11), vec![(0, 8), (10, 1)]);
    }
}
