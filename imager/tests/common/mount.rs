//! Loop and FUSE mounts of test images, and comparing mounted trees with generated files.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A mounted image (kernel loop mount or FUSE daemon), unmounted at drop.
pub struct Mounted {
    pub dir: PathBuf,
    loopdev: Option<String>,
    daemon: Option<Child>,
}

impl Mounted {
    /// Sets up a loop device for `img` (read-only with `ro`).
    fn losetup(img: &Path, ro: bool) -> Option<String> {
        let mut c = tool("losetup");
        c.args(["-f", "--show"]);
        if ro {
            c.arg("-r");
        }
        let out = run(c.arg(img));
        if !out.status.success() {
            eprintln!(
                "losetup {} failed: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    fn detach(dev: &str) {
        let _ = run(tool("losetup").args(["-d", dev]));
    }

    /// Kernel mount of `img` on `dir` through a loop device (`opts` e.g. "ro,nouuid").
    pub fn kernel(img: &Path, dir: &Path, fstype: &str, opts: &str) -> Option<Mounted> {
        fs::create_dir_all(dir).unwrap();
        let ro = opts.split(',').any(|o| o == "ro");
        let dev = Self::losetup(img, ro)?;
        let mut c = tool("mount");
        c.args(["-t", fstype]);
        if !opts.is_empty() {
            c.args(["-o", opts]);
        }
        let out = run(c.arg(&dev).arg(dir));
        if !out.status.success() {
            eprintln!(
                "mount -t {fstype} {} failed: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Self::detach(&dev);
            return None;
        }
        Some(Mounted {
            dir: dir.to_path_buf(),
            loopdev: Some(dev),
            daemon: None,
        })
    }

    /// FUSE mount: runs `program [args..] SOURCE DIR` in the foreground (the daemon is waited
    /// for at drop, so every write has reached the image). With `use_loop`, SOURCE is a loop
    /// device for `img` (exfat-fuse requires a block device), else `img` itself.
    pub fn fuse(
        img: &Path,
        dir: &Path,
        program: &str,
        args: &[&str],
        use_loop: bool,
    ) -> Option<Mounted> {
        fs::create_dir_all(dir).unwrap();
        let loopdev = if use_loop {
            Some(Self::losetup(img, false)?)
        } else {
            None
        };
        let source: &OsStr = match &loopdev {
            Some(d) => OsStr::new(d.as_str()),
            None => img.as_os_str(),
        };
        let child = tool(program)
            .args(args)
            .arg(source)
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start {program}: {e}");
                if let Some(d) = &loopdev {
                    Self::detach(d);
                }
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if is_mountpoint(dir) {
                return Some(Mounted {
                    dir: dir.to_path_buf(),
                    loopdev,
                    daemon: Some(child),
                });
            }
            if let Ok(Some(st)) = child.try_wait() {
                eprintln!("{program} exited before mounting: {st}");
                break;
            }
            if Instant::now() > deadline {
                eprintln!("{program} did not mount within 20 s");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(d) = &loopdev {
            Self::detach(d);
        }
        None
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Unmounts, waits for a FUSE daemon and detaches the loop device.
    pub fn unmount(mut self) {
        self.do_unmount();
    }

    fn do_unmount(&mut self) {
        if is_mountpoint(&self.dir) {
            let _ = run(tool("sync").arg("-f").arg(&self.dir));
            let mut ok = false;
            for _ in 0..50 {
                if run(tool("umount").arg(&self.dir)).status.success() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                let _ = run(tool("umount").arg("-l").arg(&self.dir));
            }
        }
        if let Some(mut c) = self.daemon.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.loopdev.take() {
            Self::detach(&d);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

/// Whether `dir` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(dir) else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Copies the generated files of `src_root` into the mounted filesystem at `dst_root`.
pub fn copy_tree(src_root: &Path, files: &[GenFile], dst_root: &Path) {
    for f in files {
        let dst = dst_root.join(&f.rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(src_root.join(&f.rel), &dst)
            .unwrap_or_else(|e| panic!("copy {} into the image: {e}", f.rel));
    }
}

/// Asserts that every file of `files` under `got_root` equals the one under `want_root`.
pub fn assert_same_files(what: &str, want_root: &Path, got_root: &Path, files: &[GenFile]) {
    for f in files {
        let want = fs::read(want_root.join(&f.rel)).unwrap();
        let got = fs::read(got_root.join(&f.rel))
            .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", f.rel));
        assert!(want == got, "{what}: {} differs", f.rel);
    }
}
