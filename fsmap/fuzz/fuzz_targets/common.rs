// SPDX-License-Identifier: GPL-2.0-or-later
//! Shared checks for the fuzz targets.

use blockswarm_fsmap::FsUsage;

/// The `FsUsage` invariants: sorted, merged, non-empty runs inside the device.
pub fn check(u: &FsUsage) {
    let mut prev_end: Option<u64> = None;
    for &(off, len) in &u.runs {
        assert!(len > 0);
        let end = off.checked_add(len).expect("run overflows");
        assert!(end <= u.device_size);
        if let Some(p) = prev_end {
            assert!(off > p, "runs not sorted and merged");
        }
        prev_end = Some(end);
    }
}
