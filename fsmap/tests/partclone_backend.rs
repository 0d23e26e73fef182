// SPDX-License-Identifier: GPL-2.0-or-later
//! The partclone backend on real XFS, btrfs and ext4 images: the result must
//! equal the map of a direct `partclone.<fs> -D` run.

mod common;

use std::fs;
use std::path::Path;

use blockswarm_fsmap::{detect, installed_partclone_modules, partclone_usage, FsError};
use common::*;

/// Files to put in the filesystem, written under `work/src`.
fn source_tree(work: &Path, seed: u64) -> Vec<std::path::PathBuf> {
    let mut rng = Rng::new(seed);
    let mut files = make_files(&work.join("src"), "f", 50, 1, 3_000_000, &mut rng);
    files.extend(make_files(
        &work.join("src/sub"),
        "g",
        30,
        1,
        100_000,
        &mut rng,
    ));
    files
}

/// Mount, copy, delete every third file, copy more, unmount. Returns false
/// when mounting is impossible here.
fn populate_mounted(img: &Path, work: &Path, fstype: &str, seed: u64) -> bool {
    let mnt = work.join("mnt");
    let Some(m) = Mount::loop_mount(img, &mnt, fstype) else {
        return false;
    };
    let files = source_tree(work, seed);
    copy_into(&files[..50], &mnt);
    copy_into(&files[50..], &mnt.join("sub"));
    for (i, f) in files[..50].iter().enumerate() {
        if i % 3 == 0 {
            fs::remove_file(mnt.join(f.file_name().unwrap())).unwrap();
        }
    }
    let mut rng = Rng::new(seed + 1);
    let more = make_files(&work.join("more"), "m", 5, 1_000_000, 6_000_000, &mut rng);
    copy_into(&more, &mnt.join("more"));
    m.unmount();
    true
}

/// Write an mkfs.xfs protofile describing `work/src`.
fn xfs_protofile(work: &Path) -> std::path::PathBuf {
    fn dir(out: &mut String, d: &Path) {
        let mut entries: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                out.push_str(&format!("{name} d--755 0 0\n"));
                dir(out, &p);
                out.push_str("$\n");
            } else {
                out.push_str(&format!("{name} ---644 0 0 {}\n", p.display()));
            }
        }
    }
    let mut out = String::from("/dev/null\n0 0\nd--755 0 0\n");
    dir(&mut out, &work.join("src"));
    out.push_str("$\n");
    let p = work.join("proto");
    fs::write(&p, out).unwrap();
    p
}

fn compare_backend(label: &str, fs_name: &str, module: &str, img: &Path, work: &Path) {
    let size = fs::metadata(img).unwrap().len();
    let ours = partclone_usage(fs_name, img, size).unwrap();
    check_invariants(&ours);
    let direct = partclone_map(module, img, work);
    println!(
        "{label}: fs_type={} block_size={} device={} backend_used={} direct_partclone_used={} \
         runs={} equal={}",
        ours.fs_type,
        ours.block_size,
        ours.device_size,
        ours.used_bytes(),
        total(&direct),
        ours.runs.len(),
        ours.runs == direct
    );
    assert_eq!(
        ours.runs, direct,
        "{label}: backend map differs from partclone's"
    );
    assert!(ours.used_bytes() > 0);
}

#[test]
fn xfs_through_partclone() {
    let label = "xfs 320MiB";
    if !have_tools(
        label,
        &[("mkfs.xfs", "xfsprogs"), ("partclone.xfs", "partclone")],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let img = work.join("xfs.img");
    sparse_image(&img, 320 << 20);
    run(tool("mkfs.xfs").args(["-q", "-f"]).arg(&img));
    if !populate_mounted(&img, work, "xfs", 10) {
        eprintln!("{label}: cannot mount; populating with an mkfs.xfs protofile instead");
        source_tree(work, 10);
        let proto = xfs_protofile(work);
        run(tool("mkfs.xfs")
            .args(["-q", "-f", "-p"])
            .arg(&proto)
            .arg(&img));
    }
    let (mut f, _) = open(&img);
    assert_eq!(detect(&mut f).unwrap(), Some("xfs"));
    compare_backend(label, "xfs", "xfs", &img, work);
}

#[test]
fn btrfs_through_partclone() {
    let label = "btrfs 256MiB";
    if !have_tools(
        label,
        &[
            ("mkfs.btrfs", "btrfs-progs"),
            ("partclone.btrfs", "partclone"),
        ],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let img = work.join("btrfs.img");
    sparse_image(&img, 256 << 20);
    run(tool("mkfs.btrfs").args(["-q", "-f"]).arg(&img));
    if !populate_mounted(&img, work, "btrfs", 20) {
        eprintln!("{label}: cannot mount; populating with mkfs.btrfs --rootdir instead");
        source_tree(work, 20);
        run(tool("mkfs.btrfs")
            .args(["-q", "-f", "--rootdir"])
            .arg(work.join("src"))
            .arg(&img));
    }
    let (mut f, _) = open(&img);
    assert_eq!(detect(&mut f).unwrap(), Some("btrfs"));
    compare_backend(label, "btrfs", "btrfs", &img, work);
}

#[test]
fn ext4_through_partclone() {
    let label = "ext4 256MiB";
    if !have_tools(
        label,
        &[("mkfs.ext4", "e2fsprogs"), ("partclone.extfs", "partclone")],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let img = work.join("ext4.img");
    sparse_image(&img, 256 << 20);
    source_tree(work, 30);
    // mke2fs -d copies a directory in without mounting.
    run(tool("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(work.join("src"))
        .arg(&img));
    let (mut f, _) = open(&img);
    assert_eq!(detect(&mut f).unwrap(), Some("ext4"));
    compare_backend(label, "ext4", "extfs", &img, work);
}

#[test]
fn partclone_errors_are_clear() {
    if !have_tools(
        "partclone errors",
        &[("mkfs.fat", "dosfstools"), ("partclone.xfs", "partclone")],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat.img");
    sparse_image(&img, 8 << 20);
    run(tool("mkfs.fat").arg(&img));
    // Wrong filesystem: partclone.xfs fails; exit code and log are reported.
    let e = partclone_usage("xfs", &img, 8 << 20).unwrap_err();
    println!("partclone.xfs on FAT: {e}");
    match &e {
        FsError::PartcloneFailed {
            module,
            status,
            log_tail,
        } => {
            assert_eq!(module, "xfs");
            assert!(status.starts_with("exit code"), "{status}");
            assert!(!log_tail.trim().is_empty());
        }
        other => panic!("expected PartcloneFailed, got {other:?}"),
    }
    // Missing source file.
    let e = partclone_usage("fat", &tmp.path().join("missing.img"), 1 << 20).unwrap_err();
    println!("missing source: {e}");
    assert!(matches!(e, FsError::PartcloneFailed { .. }), "{e:?}");
    // Unknown filesystem.
    let e = partclone_usage("zfs", &img, 8 << 20).unwrap_err();
    assert!(matches!(e, FsError::UnsupportedFs(_)), "{e:?}");
    // A module that is not installed here (Debian's partclone has no nilfs2).
    let modules = installed_partclone_modules();
    println!("installed partclone modules: {modules:?}");
    for m in ["fat", "exfat", "xfs", "btrfs"] {
        assert!(
            modules.iter().any(|x| x == m),
            "{m} missing from {modules:?}"
        );
    }
    assert!(!modules.iter().any(|x| x == "info" || x == "chkimg"));
    if !modules.iter().any(|m| m == "nilfs2") {
        let e = partclone_usage("nilfs2", &img, 8 << 20).unwrap_err();
        println!("not installed: {e}");
        assert!(matches!(e, FsError::PartcloneNotInstalled { .. }), "{e:?}");
        assert!(e.to_string().contains("install Debian package partclone"));
    }
}
