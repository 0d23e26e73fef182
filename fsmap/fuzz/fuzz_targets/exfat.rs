// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as an exFAT volume (device size = input length).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let n = data.len() as u64;
    if let Ok(u) = blockswarm_fsmap::exfat_usage(&mut Cursor::new(data), n) {
        common::check(&u);
    }
    let _ = blockswarm_fsmap::detect(&mut Cursor::new(data));
});
