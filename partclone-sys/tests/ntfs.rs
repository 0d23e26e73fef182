//! NTFS (feature `ntfs`) against the real oracle: images made with mkntfs,
//! populated through an ntfs-3g FUSE mount (or, where FUSE does not work,
//! with ntfscp), then compared with the domain mapfile of
//! `partclone.ntfs -D`.
#![cfg(feature = "ntfs")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use partclone_sys::{Error, UsedBlocks};

const IMAGE_SIZE: u64 = 64 * 1024 * 1024;

fn mkntfs(image: &Path, cluster_size: Option<u32>, test: &str) -> Option<()> {
    let mkntfs = optional_tool("mkntfs", "ntfs-3g", test)?;
    truncate(image, IMAGE_SIZE);
    let mut cmd = Command::new(mkntfs);
    // -F: allow a regular file; -Q: quick (no zeroing, no bad block scan).
    cmd.args(["-F", "-Q", "-q"]);
    if let Some(c) = cluster_size {
        cmd.args(["-c", &c.to_string()]);
    }
    run(cmd.arg(image));
    Some(())
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
}

/// An ntfs-3g FUSE mount that is unmounted (and its daemon waited for, so
/// everything is on the image) when dropped or finished.
struct FuseMount {
    mnt: PathBuf,
    child: Option<Child>,
}

impl FuseMount {
    fn mount(image: &Path, mnt: &Path, log: &Path) -> Result<FuseMount, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist".into());
        }
        let ntfs3g = find_tool("ntfs-3g").ok_or("ntfs-3g not installed")?;
        fs::create_dir_all(mnt).unwrap();
        let child = Command::new(ntfs3g)
            .args(["-o", "no_detach"])
            .arg(image)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .map_err(|e| format!("cannot start ntfs-3g: {e}"))?;
        let mut m = FuseMount {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                return Err(format!(
                    "ntfs-3g exited with {status}: {}",
                    fs::read_to_string(log).unwrap_or_default().trim()
                ));
            }
            if Instant::now() > deadline {
                return Err("ntfs-3g did not mount within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }

    /// Unmounts and waits for the daemon to flush and exit.
    fn finish(mut self) {
        self.unmount(true);
    }

    fn unmount(&mut self, check: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if is_mounted(&self.mnt) {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait().unwrap() {
                Some(status) => {
                    if check {
                        assert!(status.success(), "ntfs-3g exited with {status}");
                    }
                    return;
                }
                None if Instant::now() > deadline => {
                    // Only the daemon this test started.
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(!check, "ntfs-3g did not exit after umount");
                    return;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.unmount(false);
    }
}

/// Copies a generated tree onto the image through FUSE and deletes every
/// third file; falls back to ntfscp (no deletion) when FUSE cannot mount.
fn populate_ntfs(image: &Path, work: &Path) {
    let tree = work.join("tree");
    let files = populate_tree(&tree, 0xface);
    let mnt = work.join("mnt");
    // PARTCLONE_SYS_TEST_NO_FUSE=1 exercises the fallback where FUSE works.
    let mounted = if std::env::var_os("PARTCLONE_SYS_TEST_NO_FUSE").is_some() {
        Err("PARTCLONE_SYS_TEST_NO_FUSE is set".to_string())
    } else {
        FuseMount::mount(image, &mnt, &work.join("ntfs-3g.log"))
    };
    match mounted {
        Ok(m) => {
            for rel in &files {
                let dest = mnt.join(rel);
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                fs::copy(tree.join(rel), &dest).unwrap();
            }
            let mut deleted = 0;
            for rel in files.iter().step_by(3) {
                fs::remove_file(mnt.join(rel)).unwrap();
                deleted += 1;
            }
            m.finish();
            println!(
                "populated through an ntfs-3g FUSE mount: {} files, {deleted} deleted",
                files.len()
            );
        }
        Err(why) => {
            // Under the suite's setup FUSE works: a fallback there would test less than the
            // test says (no deletions).
            assert!(
                !require_fs_tools(),
                "FUSE mount not possible ({why}) under BLOCKSWARM_REQUIRE_FS_TOOLS=1"
            );
            println!("FUSE mount not possible ({why}); populating with ntfscp, no deletions");
            let ntfscp = required_tool("ntfscp", "ntfs-3g");
            for rel in files.iter().filter(|r| r.starts_with("alpha/")) {
                let name = format!("/{}", rel.replace('/', "_"));
                run(Command::new(&ntfscp)
                    .arg(image)
                    .arg(tree.join(rel))
                    .arg(name));
            }
        }
    }
}

fn check_against_partclone(cluster_size: Option<u32>, test: &str) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ntfs.img");
    if mkntfs(&image, cluster_size, test).is_none() {
        return;
    }
    let empty = UsedBlocks::open_ntfs(&image).unwrap();
    populate_ntfs(&image, dir.path());
    let used = UsedBlocks::open_ntfs(&image).unwrap();
    println!(
        "ntfs: used clusters {} empty -> {} populated",
        empty.used_blocks(),
        used.used_blocks()
    );
    assert!(used.used_blocks() > empty.used_blocks() + 1000);

    assert_eq!(used.fs_type(), "ntfs");
    assert_eq!(used.block_size(), u64::from(cluster_size.unwrap_or(4096)));
    assert_eq!(used.device_size(), IMAGE_SIZE);
    // The last sector (backup boot sector) lies past the last cluster.
    let tail = used.device_size() - used.fs_size();
    assert!(
        tail > 0 && tail <= used.block_size(),
        "{} bytes past the last cluster",
        tail
    );
    assert!(used.is_used(0), "cluster 0 holds the boot sector");
    assert_runs_consistent(&used);

    let map = partclone_domain_map("partclone.ntfs", &image, dir.path());
    let label = format!("ntfs cluster {}", used.block_size());
    assert_covers_partclone(&label, &used, &map);
}

#[test]
fn ntfs_4k_clusters_runs_cover_partclone_used_map() {
    check_against_partclone(None, "ntfs_4k_clusters_runs_cover_partclone_used_map");
}

#[test]
fn ntfs_1k_clusters_runs_cover_partclone_used_map() {
    check_against_partclone(Some(1024), "ntfs_1k_clusters_runs_cover_partclone_used_map");
}

#[test]
fn open_ntfs_of_non_ntfs_files_fails_with_message() {
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.img");
    fs::write(&noise, Noise::new(3).bytes(1 << 20)).unwrap();
    let missing = dir.path().join("missing.img");
    for path in [&noise, &missing] {
        let err = UsedBlocks::open_ntfs(path).unwrap_err();
        println!("{}: {err}", path.display());
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()));
    }
    let err = UsedBlocks::open_ntfs(&missing).unwrap_err().to_string();
    assert!(err.contains("No such file or directory"), "{err}");
    let err = UsedBlocks::open_ntfs(&noise).unwrap_err().to_string();
    assert!(err.contains("NTFS"), "{err}");
}

#[test]
fn open_ntfs_of_ext4_image_and_open_extfs_of_ntfs_image_fail() {
    let test = "open_ntfs_of_ext4_image_and_open_extfs_of_ntfs_image_fail";
    let dir = tempfile::tempdir().unwrap();
    let ntfs = dir.path().join("ntfs.img");
    if mkntfs(&ntfs, None, test).is_none() {
        return;
    }
    let err = UsedBlocks::open_extfs(&ntfs).unwrap_err();
    println!("extfs on ntfs: {err}");
    assert!(matches!(err, Error::Open { .. }));

    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    let ext4 = dir.path().join("ext4.img");
    truncate(&ext4, IMAGE_SIZE);
    run(Command::new(mkfs).args(["-F", "-q"]).arg(&ext4));
    let err = UsedBlocks::open_ntfs(&ext4).unwrap_err();
    println!("ntfs on ext4: {err}");
    assert!(matches!(err, Error::Open { .. }));
}

#[test]
fn open_ntfs_of_truncated_image_fails_without_crash() {
    let test = "open_ntfs_of_truncated_image_fails_without_crash";
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.img");
    if mkntfs(&full, None, test).is_none() {
        return;
    }
    UsedBlocks::open_ntfs(&full).expect("the whole image opens");
    let data = fs::read(&full).unwrap();
    for cut in [
        0usize,
        300,
        512,
        8192,
        1 << 20,
        data.len() / 2,
        data.len() - 8192,
    ] {
        let path = dir.path().join(format!("cut-{cut}.img"));
        fs::write(&path, &data[..cut]).unwrap();
        let err = UsedBlocks::open_ntfs(&path).unwrap_err();
        println!("truncated to {cut} bytes: {err}");
        assert!(
            matches!(err, Error::Open { .. } | Error::Bitmap { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn ntfs_is_reported_supported() {
    assert!(partclone_sys::ntfs_supported());
}

/// A volume marked dirty is refused; `ntfsfix -d` clears the flag.
///
/// How it is made dirty: `ntfsfix` (without `-d`) sets VOLUME_IS_DIRTY in
/// $Volume's VOLUME_INFORMATION so that Windows runs chkdsk at its next
/// boot; `ntfsinfo -m` shows the flag (0x0001).  (An ntfs-3g FUSE mount
/// killed with SIGKILL mid-write does not set it: ntfs-3g never marks a
/// volume dirty, so that is no way to make one.)
#[test]
fn ntfs_marked_dirty_is_refused() {
    let test = "ntfs_marked_dirty_is_refused";
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("dirty.ntfs");
    if mkntfs(&image, None, test).is_none() {
        return;
    }
    let clean = UsedBlocks::open_ntfs(&image).expect("a fresh volume passes the check");
    assert_eq!(clean.fs_check_failure(), None);
    let used = clean.used_blocks();
    drop(clean);

    let ntfsfix = required_tool("ntfsfix", "ntfs-3g");
    run(Command::new(&ntfsfix).arg(&image));
    let flags = run(Command::new(required_tool("ntfsinfo", "ntfs-3g"))
        .args(["-f", "-m"])
        .arg(&image));
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    assert!(flags.contains("Volume Flags: 0x0001"), "{flags}");

    let err = UsedBlocks::open_ntfs(&image).unwrap_err();
    println!("refused: {err}");
    assert!(
        matches!(&err, Error::FsCheck { reason, .. } if reason.contains("marked dirty")),
        "{err:?}"
    );
    assert!(err.to_string().contains("chkdsk /f"), "{err}");
    let anyway = UsedBlocks::open_ntfs_with(&image, IGNORE).unwrap();
    assert!(anyway.fs_check_failure().unwrap().contains("marked dirty"));
    assert_eq!(anyway.used_blocks(), used);
    drop(anyway);

    run(Command::new(&ntfsfix).arg("-d").arg(&image));
    let repaired = UsedBlocks::open_ntfs(&image).expect("passes after ntfsfix -d");
    assert_eq!(repaired.fs_check_failure(), None);
}

/// The first run (LCN, length) of `$Bitmap`'s data (MFT record 6), from
/// `ntfsinfo -v -i 6`.
fn bitmap_lcn(image: &Path) -> u64 {
    let out = run(Command::new(required_tool("ntfsinfo", "ntfs-3g"))
        .args(["-f", "-v", "-i", "6"])
        .arg(image));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().skip_while(|l| !l.contains("Runlist:"));
    lines.next();
    let run_line = lines
        .next()
        .unwrap_or_else(|| panic!("no runlist:\n{text}"));
    let fields: Vec<&str> = run_line.split_whitespace().collect();
    u64::from_str_radix(fields[1].trim_start_matches("0x"), 16).unwrap()
}

/// A $Bitmap that marks the first clusters of $MFT free (what a torn write
/// of $Bitmap could leave) is refused: the clusters of the system files are
/// cross-checked against the bitmap.
#[test]
fn ntfs_bitmap_that_frees_mft_clusters_is_refused() {
    use std::os::unix::fs::FileExt;
    let test = "ntfs_bitmap_that_frees_mft_clusters_is_refused";
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("torn.ntfs");
    if mkntfs(&image, None, test).is_none() {
        return;
    }
    let clean = UsedBlocks::open_ntfs(&image).unwrap();
    let cluster = clean.block_size();
    let used = clean.used_blocks();
    drop(clean);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0).unwrap();
    let mft_lcn = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap());
    let at = bitmap_lcn(&image) * cluster + mft_lcn / 8;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    let bit = 1u8 << (mft_lcn % 8);
    assert_ne!(
        byte[0] & bit,
        0,
        "$MFT's first cluster is used in a fresh volume"
    );
    f.write_all_at(&[byte[0] & !bit], at).unwrap();
    drop(f);

    let err = UsedBlocks::open_ntfs(&image).unwrap_err();
    println!("refused: {err}");
    assert!(
        matches!(&err, Error::FsCheck { reason, .. } if reason.contains("clusters of $MFT free")),
        "{err:?}"
    );
    let anyway = UsedBlocks::open_ntfs_with(&image, IGNORE).unwrap();
    assert_eq!(anyway.used_blocks(), used - 1);
    assert!(!anyway.is_used(mft_lcn));
}

const IGNORE: partclone_sys::OpenOptions = partclone_sys::OpenOptions {
    ignore_fs_check: true,
};
