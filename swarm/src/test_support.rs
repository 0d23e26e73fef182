//! Helpers for tests of this crate and of the programs built on it (feature `test-support`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a backing file, detached when dropped.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches `backing` with `losetup -f --show`. When that fails the test is skipped (None,
    /// with a SKIP line), unless the suite requires the tools (`BLOCKSWARM_REQUIRE_FS_TOOLS=1`),
    /// in which case it panics.
    pub fn attach(backing: &Path) -> Option<Self> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                path: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            }),
            other => {
                assert!(
                    std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").as_deref() != Ok("1"),
                    "losetup {} failed: {other:?}",
                    backing.display()
                );
                println!("SKIP: losetup {} failed: {other:?}", backing.display());
                None
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
