// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as the receiver's `--config` file (KEY=VALUE lines, as a rescue system
//! passes them), resolved with an empty command line as `receiver --config FILE` does.
//! Never a panic; accepted settings name a manifest and a target; durations are bounded;
//! `parse_duration` on any line's value is in range or an error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use receiver::{parse_duration, Cli, Settings};

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("blockswarm-fuzz-config-{}", std::process::id()))
    })
}

const MAX: Duration = Duration::from_secs(3600 * 1_000_000_000);

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("write the config file");
    let cli = Cli {
        config: Some(path().clone()),
        ..Default::default()
    };
    let r = Settings::resolve(&cli);
    match r {
        Ok(s) => {
            let text = std::str::from_utf8(data).expect("an accepted config is UTF-8");
            assert!(text.contains("MANIFEST") && text.contains("TARGET"));
            assert!(s.seed_after <= MAX && s.retry_for <= MAX);
            assert!(s.stall_timeout.is_none_or(|t| !t.is_zero() && t <= MAX));
        }
        Err(e) => assert_eq!(e.exit_code(), 2, "a bad config file is a usage error: {e}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            if let Some((_, v)) = line.split_once('=') {
                if let Ok(d) = parse_duration(v) {
                    assert!(d <= MAX);
                }
            }
        }
    }
});
