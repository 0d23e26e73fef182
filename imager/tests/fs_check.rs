//! The filesystem check through the real `imager` binary: ext4 and NTFS images made with mkfs
//! and made dirty for real (debugfs on the superblock, ntfsfix's dirty flag), each refused
//! with exit 5 (REFUSED) and one line naming the repair and `--ignore-fs-check`; imaged with
//! `--ignore-fs-check` (or IMAGER_IGNORE_FS_CHECK=1) and a warning; also as a partition of a
//! whole GPT disk. Clean filesystems still image.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use blockswarm_manifest::exit;
use common::*;

fn ext4_image(s: &Scratch, name: &str, test: &str) -> Option<PathBuf> {
    if !need_tools(test, &["mkfs.ext4", "debugfs", "e2fsck"]) {
        return None;
    }
    let tree = s.join(format!("{name}-tree"));
    gen_tree(&tree, 5, 12, 1 << 20);
    let img = s.join(format!("{name}.img"));
    sparse_file(&img, 32 << 20);
    run_ok(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&img),
    );
    Some(img)
}

fn debugfs(img: &Path, request: &str) {
    run_ok(tool("debugfs").args(["-w", "-R", request]).arg(img));
}

/// `imager [args] SRC -o MANIFEST`.
fn image(src: &Path, manifest: &Path, args: &[&str]) -> std::process::Output {
    let _ = fs::remove_file(manifest);
    run(imager().args(args).arg(src).arg("-o").arg(manifest))
}

/// Refused (exit 5, one line naming `repair` and --ignore-fs-check, no manifest); imaged with
/// the flag and with its environment mirror, with a warning naming `reason`, to the same map
/// as `clean_map`.
fn assert_refused_and_ignorable(what: &str, src: &Path, reason: &str, repair: &str) {
    let manifest = src.with_extension("torrent");
    let out = image(src, &manifest, &[]);
    let line = assert_error(&out, exit::REFUSED, what);
    assert!(line.contains(reason), "{what}: {line}");
    assert!(line.contains(repair), "{what}: {line}");
    assert!(line.contains("--ignore-fs-check"), "{what}: {line}");
    assert!(!manifest.exists(), "{what}: a manifest was written");

    let out = image(src, &manifest, &["--ignore-fs-check"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} --ignore-fs-check: {stderr}");
    assert!(
        stderr.contains("imaging it anyway (--ignore-fs-check)") && stderr.contains(reason),
        "{what}: no warning: {stderr}"
    );
    let with_flag = fs::read(&manifest).unwrap();
    println!(
        "{what}: --ignore-fs-check: manifest of {} bytes",
        with_flag.len()
    );

    let _ = fs::remove_file(&manifest);
    let out = run(imager()
        .env("IMAGER_IGNORE_FS_CHECK", "1")
        .arg(src)
        .arg("-o")
        .arg(&manifest));
    assert!(
        out.status.success(),
        "{what} IMAGER_IGNORE_FS_CHECK=1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The used-block map (`imager --map`) of a source, forcing past the check.
fn map_of(src: &Path) -> String {
    let out = run_ok(imager().args(["--map", "--ignore-fs-check"]).arg(src));
    String::from_utf8(out.stdout).unwrap()
}

fn ext4_case(test: &str, request: &str, reason: &str) {
    let s = Scratch::new(test);
    let Some(img) = ext4_image(&s, "fs", test) else {
        return;
    };
    let clean_map = map_of(&img);
    let manifest = s.join("clean.torrent");
    let out = image(&img, &manifest, &[]);
    assert!(
        out.status.success(),
        "clean ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not clean"),
        "a clean filesystem warns"
    );
    debugfs(&img, request);
    assert_refused_and_ignorable(test, &img, reason, "e2fsck -f");
    assert_eq!(map_of(&img), clean_map, "{test}: the flag changed the map");
    // The repair the message names makes it pass.
    let fsck = run(tool("e2fsck").args(["-f", "-y"]).arg(&img));
    assert!(matches!(fsck.status.code(), Some(0 | 1)), "{fsck:?}");
    let out = image(&img, &manifest, &[]);
    assert!(
        out.status.success(),
        "{test}: after e2fsck -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ext4_with_errors_state_is_refused() {
    ext4_case(
        "ext4_with_errors_state_is_refused",
        "ssv state 2",
        "errors were found",
    );
}

#[test]
fn ext4_not_cleanly_unmounted_is_refused() {
    ext4_case(
        "ext4_not_cleanly_unmounted_is_refused",
        "ssv state 0",
        "not cleanly unmounted",
    );
}

#[test]
fn ext4_with_recorded_errors_is_refused() {
    ext4_case(
        "ext4_with_recorded_errors_is_refused",
        "ssv error_count 3",
        "recorded errors (s_error_count 3)",
    );
}

#[test]
fn ext4_needing_journal_recovery_is_refused() {
    ext4_case(
        "ext4_needing_journal_recovery_is_refused",
        "feature needs_recovery",
        "journal needs recovery",
    );
}

#[test]
fn ext4_with_wrong_free_count_is_refused() {
    // 12345 free blocks claimed: a 32 MiB filesystem with 12 files has about 6000.
    ext4_case(
        "ext4_with_wrong_free_count_is_refused",
        "ssv free_blocks_count 12345",
        "the superblock says 12345 of",
    );
}

#[test]
fn ntfs_marked_dirty_is_refused() {
    let test = "ntfs_marked_dirty_is_refused";
    if !need_tools(test, &["mkfs.ntfs", "ntfsfix"]) {
        return;
    }
    let s = Scratch::new("ntfs-dirty");
    let img = s.join("dirty.ntfs");
    sparse_file(&img, 64 << 20);
    run_ok(tool("mkfs.ntfs").args(["-F", "-Q", "-q"]).arg(&img));
    let manifest = s.join("clean.torrent");
    let out = image(&img, &manifest, &[]);
    assert!(
        out.status.success(),
        "clean NTFS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ntfsfix sets VOLUME_IS_DIRTY (so that Windows runs chkdsk); -d clears it.
    run_ok(tool("ntfsfix").arg(&img));
    assert_refused_and_ignorable(test, &img, "marked dirty", "chkdsk /f");
    run_ok(tool("ntfsfix").arg("-d").arg(&img));
    let out = image(&img, &manifest, &[]);
    assert!(
        out.status.success(),
        "after ntfsfix -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A GPT disk image whose only partition (1 MiB .. 1 MiB + the image's size) holds `part`.
fn gpt_disk_with(s: &Scratch, part: &Path) -> PathBuf {
    let disk = s.join("disk.img");
    let part_len = file_size(part);
    sparse_file(&disk, part_len + (2 << 20));
    run_ok(
        tool("sgdisk")
            .args(["-n", "1:2048:+", "-t", "1:8300"])
            .arg(&disk),
    );
    run_ok(
        tool("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]),
    );
    disk
}

#[test]
fn whole_disk_with_a_dirty_partition_is_refused() {
    let test = "whole_disk_with_a_dirty_partition_is_refused";
    if !need_tools(test, &["sgdisk", "losetup"]) {
        return;
    }
    let s = Scratch::new("disk-dirty");
    let Some(img) = ext4_image(&s, "part", test) else {
        return;
    };
    // The partition runs to the last usable sector, a little past the filesystem's end.
    debugfs(&img, "ssv state 0");
    let disk = gpt_disk_with(&s, &img);
    let manifest = s.join("disk.torrent");
    let out = image(&disk, &manifest, &[]);
    let line = assert_error(&out, exit::REFUSED, test);
    assert!(line.contains("partition 1 of"), "{line}");
    assert!(line.contains("not cleanly unmounted"), "{line}");
    assert!(line.contains("--ignore-fs-check"), "{line}");
    let out = image(&disk, &manifest, &["--ignore-fs-check"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "--ignore-fs-check: {stderr}");
    assert!(stderr.contains("imaging it anyway"), "{stderr}");
    assert!(manifest.exists());
    // Clean again: the disk images without the flag.
    debugfs(&img, "ssv state 1");
    let disk = gpt_disk_with(&s, &img);
    let out = image(&disk, &manifest, &[]);
    assert!(
        out.status.success(),
        "clean disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
