//! The filesystem check: real ext4 images made with mkfs.ext4 and made
//! dirty with debugfs the way a crash or a kernel error leaves them, each
//! refused with `Error::FsCheck`, opened with `ignore_fs_check`, and clean
//! again after the repair the message names (`e2fsck -f`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use partclone_sys::{Error, OpenOptions, UsedBlocks};

const IGNORE: OpenOptions = OpenOptions {
    ignore_fs_check: true,
};

/// A fresh 32 MiB ext4 image (mkfs.ext4 `extra` options) with a few files
/// written by debugfs, so the bitmap holds more than metadata.
fn ext4_image(dir: &Path, name: &str, extra: &[&str], test: &str) -> Option<PathBuf> {
    let mkfs = optional_tool("mkfs.ext4", "e2fsprogs", test)?;
    let path = dir.join(name);
    truncate(&path, 32 * 1024 * 1024);
    run(Command::new(mkfs).args(["-F", "-q"]).args(extra).arg(&path));
    let data = dir.join(format!("{name}.data"));
    std::fs::write(&data, Noise::new(7).bytes(300_000)).unwrap();
    for i in 0..3 {
        debugfs(&path, &format!("write {} f{i}", data.display()));
    }
    let clean = UsedBlocks::open_extfs(&path).expect("a fresh image passes the check");
    assert_eq!(clean.fs_check_failure(), None);
    Some(path)
}

fn debugfs(image: &Path, request: &str) {
    run(Command::new(required_tool("debugfs", "e2fsprogs"))
        .args(["-w", "-R", request])
        .arg(image));
}

/// Refused with FsCheck naming `expect`; opens with ignore_fs_check (same
/// map as before); `e2fsck -fy` makes it pass again.
fn assert_refused_then_repaired(image: &Path, expect: &str, used_before: u64) {
    let err = UsedBlocks::open_extfs(image).unwrap_err();
    println!("refused: {err}");
    match &err {
        Error::FsCheck {
            fs_type, reason, ..
        } => {
            assert_eq!(fs_type, "ext4");
            assert!(reason.contains(expect), "{reason:?} lacks {expect:?}");
        }
        other => panic!("expected Error::FsCheck, got {other:?}"),
    }
    assert!(err.to_string().contains("e2fsck -f"), "{err}");

    let anyway = UsedBlocks::open_extfs_with(image, IGNORE).expect("opens with ignore_fs_check");
    let why = anyway.fs_check_failure().expect("the failure is reported");
    assert!(why.contains(expect), "{why}");
    assert_eq!(anyway.used_blocks(), used_before);
    drop(anyway);

    // e2fsck exits 1 when it corrected something.
    let out = Command::new(required_tool("e2fsck", "e2fsprogs"))
        .args(["-f", "-y"])
        .arg(image)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "e2fsck: {out:?}");
    let repaired = UsedBlocks::open_extfs(image).expect("passes after e2fsck -f");
    assert_eq!(repaired.fs_check_failure(), None);
}

fn dirty_case(test: &str, request: &str, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(image) = ext4_image(dir.path(), "fs.img", &[], test) else {
        return;
    };
    let used = UsedBlocks::open_extfs(&image).unwrap().used_blocks();
    debugfs(&image, request);
    assert_refused_then_repaired(&image, expect, used);
}

#[test]
fn state_with_errors_is_refused() {
    // s_state 2: EXT2_ERROR_FS without EXT2_VALID_FS.
    dirty_case(
        "state_with_errors_is_refused",
        "ssv state 2",
        "errors were found",
    );
}

#[test]
fn state_not_clean_is_refused() {
    dirty_case(
        "state_not_clean_is_refused",
        "ssv state 0",
        "not cleanly unmounted",
    );
}

#[test]
fn recorded_error_count_is_refused() {
    dirty_case(
        "recorded_error_count_is_refused",
        "ssv error_count 3",
        "recorded errors (s_error_count 3)",
    );
}

#[test]
fn recorded_last_error_time_is_refused() {
    dirty_case(
        "recorded_last_error_time_is_refused",
        "ssv last_error_time 20260101000000",
        "recorded errors (s_error_count 0)",
    );
}

#[test]
fn journal_needing_recovery_is_refused() {
    dirty_case(
        "journal_needing_recovery_is_refused",
        "feature needs_recovery",
        "journal needs recovery",
    );
}

#[test]
fn superblock_free_count_mismatch_is_refused() {
    let test = "superblock_free_count_mismatch_is_refused";
    let dir = tempfile::tempdir().unwrap();
    let Some(image) = ext4_image(dir.path(), "fs.img", &[], test) else {
        return;
    };
    let used = UsedBlocks::open_extfs(&image).unwrap();
    let free = used.total_blocks() - used.used_blocks();
    let used_blocks = used.used_blocks();
    drop(used);
    // 100 blocks more free than the bitmap says: blocks the bitmap marks
    // used that the allocator thinks are free, or the other way round.
    debugfs(&image, &format!("ssv free_blocks_count {}", free + 100));
    assert_refused_then_repaired(
        &image,
        &format!(
            "the bitmap has {used_blocks} used blocks but the superblock says {} of",
            free + 100
        ),
        used_blocks,
    );
}

#[test]
fn group_free_count_mismatch_is_refused() {
    let test = "group_free_count_mismatch_is_refused";
    let dir = tempfile::tempdir().unwrap();
    // 1 KiB blocks: 8192 blocks per group, 4 groups in 32 MiB.
    let Some(image) = ext4_image(dir.path(), "fs.img", &["-b", "1024"], test) else {
        return;
    };
    let used = UsedBlocks::open_extfs(&image).unwrap().used_blocks();
    debugfs(&image, "set_bg 2 free_blocks_count 17");
    assert_refused_then_repaired(&image, "group(s) whose free count disagrees", used);
}

#[test]
fn clean_filesystems_of_every_layout_pass() {
    let test = "clean_filesystems_of_every_layout_pass";
    let dir = tempfile::tempdir().unwrap();
    let layouts: &[(&str, &[&str])] = &[
        ("ext4-4k", &[]),
        ("ext4-1k", &["-b", "1024"]),
        ("ext4-bigalloc", &["-O", "bigalloc", "-C", "16384"]),
        ("ext4-no-flex", &["-O", "^flex_bg,^metadata_csum,uninit_bg"]),
        ("ext2", &["-t", "ext2"]),
        ("ext3-1k", &["-t", "ext3", "-b", "1024"]),
    ];
    for (name, opts) in layouts {
        let Some(image) = ext4_image(dir.path(), name, opts, test) else {
            return;
        };
        let used = UsedBlocks::open_extfs(&image).unwrap();
        println!(
            "{name}: clean, {} of {} blocks used",
            used.used_blocks(),
            used.total_blocks()
        );
    }
}
