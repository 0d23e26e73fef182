//! Failures: things that are not (whole) filesystems must give an Err with a
//! useful message, never a crash or a print-and-exit.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use partclone_sys::{Error, UsedBlocks};

#[test]
fn open_extfs_of_random_bytes_fails_with_bad_magic_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.img");
    std::fs::write(&path, Noise::new(42).bytes(4 * 1024 * 1024)).unwrap();
    let err = UsedBlocks::open_extfs(&path).unwrap_err();
    let text = err.to_string();
    println!("random bytes: {text}");
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(text.contains("noise.img"), "message names the file: {text}");
    assert!(
        text.to_lowercase().contains("magic") && text.contains("ext2/3/4"),
        "message says it is not an ext filesystem: {text}"
    );
    if let Error::Open { code, .. } = err {
        assert_ne!(code, 0);
    }
}

#[test]
fn open_extfs_of_nonexistent_path_fails_with_no_such_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.img");
    let err = UsedBlocks::open_extfs(&path).unwrap_err();
    let text = err.to_string();
    println!("nonexistent: {text}");
    assert!(text.contains("does-not-exist.img"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    match err {
        Error::Open { code, .. } => assert_eq!(code, 2, "ENOENT"),
        other => panic!("expected Error::Open, got {other:?}"),
    }
}

#[test]
fn open_extfs_of_empty_file_and_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    for path in [empty.as_path(), dir.path()] {
        let err = UsedBlocks::open_extfs(path).unwrap_err();
        println!("{}: {err}", path.display());
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
    }
}

#[test]
fn open_extfs_of_truncated_ext4_image_fails_without_crash() {
    let test = "open_extfs_of_truncated_ext4_image_fails_without_crash";
    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 7);
    let full = dir.path().join("full.img");
    let size = 64 * 1024 * 1024;
    truncate(&full, size);
    run(Command::new(mkfs)
        .args(["-F", "-q", "-d"])
        .arg(&tree)
        .arg(&full));
    UsedBlocks::open_extfs(&full).expect("the whole image opens");

    let data = std::fs::read(&full).unwrap();
    // Cut inside the superblock, right after it, inside the group
    // descriptors / bitmaps, and halfway through the data.
    for cut in [0usize, 1500, 2048, 4096, 8192, 64 * 1024, size as usize / 2] {
        let path = dir.path().join(format!("cut-{cut}.img"));
        std::fs::write(&path, &data[..cut]).unwrap();
        let err = UsedBlocks::open_extfs(&path).unwrap_err();
        println!("truncated to {cut} bytes: {err}");
        assert!(
            matches!(err, Error::Open { .. } | Error::Bitmap { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("cut-{cut}.img")));
    }
    // Cut by one byte: the filesystem no longer fits its device.
    let path = dir.path().join("short.img");
    std::fs::write(&path, &data[..size as usize - 1]).unwrap();
    let text = UsedBlocks::open_extfs(&path).unwrap_err().to_string();
    println!("one byte short: {text}");
    assert!(text.contains("truncated"), "{text}");
}

#[test]
fn open_with_nul_byte_in_path_is_invalid_path() {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\0b.img"));
    #[allow(unused_mut)]
    let mut errors = vec![UsedBlocks::open_extfs(path).unwrap_err()];
    #[cfg(feature = "ntfs")]
    errors.push(UsedBlocks::open_ntfs(path).unwrap_err());
    for err in errors {
        assert!(matches!(err, Error::InvalidPath(_)), "{err:?}");
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}

#[cfg(not(feature = "ntfs"))]
#[test]
fn open_ntfs_without_feature_reports_not_compiled() {
    let err = UsedBlocks::open_ntfs(Path::new("/nonexistent.img")).unwrap_err();
    assert!(matches!(err, Error::NotCompiled(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "NTFS support not compiled in: rebuild partclone-sys with feature ntfs (needs ntfs-3g-dev)"
    );
    assert!(!partclone_sys::ntfs_supported());
}

#[test]
fn open_extfs_refuses_ext4_whose_journal_needs_recovery() {
    let test = "open_extfs_refuses_ext4_whose_journal_needs_recovery";
    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    let Some(debugfs) = optional_tool("debugfs", "e2fsprogs", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dirty.img");
    truncate(&path, 16 * 1024 * 1024);
    run(Command::new(mkfs).args(["-F", "-q"]).arg(&path));
    UsedBlocks::open_extfs(&path).expect("the clean image opens");
    // What a crash while mounted read-write leaves behind.
    run(Command::new(debugfs)
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&path));
    let err = UsedBlocks::open_extfs(&path).unwrap_err();
    println!("needs recovery: {err}");
    assert!(matches!(err, Error::FsCheck { .. }), "{err:?}");
    assert!(err.to_string().contains("journal needs recovery"), "{err}");
}
