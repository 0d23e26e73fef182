// SPDX-License-Identifier: GPL-2.0-or-later
//! exFAT maps of real images (mkfs.exfat, filled through exfat-fuse) against
//! partclone.exfat and dump.exfat.

mod common;

use std::fs;
use std::path::Path;

use blockswarm_fsmap::exfat::exfat_geometry;
use blockswarm_fsmap::{detect, exfat_usage, FsUsage};
use common::*;

const TOOLS: &[(&str, &str)] = &[
    ("mkfs.exfat", "exfatprogs"),
    ("dump.exfat", "exfatprogs"),
    ("partclone.exfat", "partclone"),
];

/// Fill through an exfat-fuse mount: files, a subdirectory, deletions, then
/// bigger files that must fill holes, then more deletions. Returns `false`
/// when the image could not be mounted.
fn populate(img: &Path, work: &Path, seed: u64, scale: u64) -> bool {
    let mnt = work.join("mnt");
    let Some(m) = Mount::exfat_fuse(img, &mnt) else {
        return false;
    };
    let mut rng = Rng::new(seed);
    let a = make_files(&work.join("a"), "a", 60, 1, 400_000 * scale, &mut rng);
    copy_into(&a, &mnt);
    let b = make_files(&work.join("b"), "b", 25, 1, 40_000, &mut rng);
    copy_into(&b, &mnt.join("sub"));
    for (i, f) in a.iter().enumerate() {
        if i % 3 == 1 {
            fs::remove_file(mnt.join(f.file_name().unwrap())).unwrap();
        }
    }
    let c = make_files(
        &work.join("c"),
        "c",
        6,
        500_000 * scale,
        2_000_000 * scale,
        &mut rng,
    );
    copy_into(&c, &mnt.join("later"));
    for (i, f) in c.iter().enumerate() {
        if i % 3 == 2 {
            fs::remove_file(mnt.join("later").join(f.file_name().unwrap())).unwrap();
        }
    }
    for (i, f) in b.iter().enumerate() {
        if i % 2 == 0 {
            fs::remove_file(mnt.join("sub").join(f.file_name().unwrap())).unwrap();
        }
    }
    m.unmount();
    true
}

/// dump.exfat's cluster statistics (computed from the bitmap) agree with
/// our map.
fn check_dump_exfat(label: &str, img: &Path, u: &FsUsage) {
    let out = run(tool("dump.exfat").arg(img));
    let field = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key:?} in dump.exfat output:\n{out}"))
            .trim()
            .parse()
            .unwrap()
    };
    let total_clusters = field("Total Clusters:");
    let free_clusters = field("Free Clusters:");
    let bs = fs::read(img).unwrap()[..512].to_vec();
    let g = exfat_geometry(&bs).unwrap();
    assert_eq!(total_clusters, g.cluster_count);
    let heap_used = u.used_bytes() - g.heap_start();
    println!(
        "{label}: dump.exfat used clusters {}, ours {}",
        total_clusters - free_clusters,
        heap_used / g.cluster_size()
    );
    assert_eq!(heap_used % g.cluster_size(), 0);
    assert_eq!(heap_used / g.cluster_size(), total_clusters - free_clusters);
}

fn exfat_case(label: &str, size: u64, mkfs_args: &[&str], seed: Option<u64>, scale: u64) {
    if !have_tools(label, TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("exfat.img");
    sparse_image(&img, size);
    run(tool("mkfs.exfat").args(mkfs_args).arg(&img));
    if let Some(seed) = seed {
        // Files go in through exfat-fuse (mkfs.exfat cannot populate). Without the mount the
        // case would check an empty filesystem, which its name does not promise: it fails under
        // BLOCKSWARM_REQUIRE_FS_TOOLS=1 and is skipped otherwise.
        if !populate(&img, tmp.path(), seed, scale) {
            let msg = format!(
                "{label}: cannot mount with exfat-fuse (needs root, /dev/fuse, loop devices \
                 and Debian package exfat-fuse)"
            );
            if std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").as_deref() == Ok("1") {
                panic!("{msg} (BLOCKSWARM_REQUIRE_FS_TOOLS=1)");
            }
            eprintln!("SKIP {msg}");
            return;
        }
    }
    let (mut f, size) = open(&img);
    assert_eq!(detect(&mut f).unwrap(), Some("exfat"), "{label}: detection");
    let ours = exfat_usage(&mut f, size).unwrap();
    assert_eq!(ours.fs_type, "exfat");
    check_dump_exfat(label, &img, &ours);
    let theirs = partclone_map("exfat", &img, tmp.path());
    assert_matches_partclone(label, &ours, &theirs);
}

#[test]
fn exfat_128m_matches_partclone() {
    exfat_case("exfat 128MiB", 128 << 20, &[], Some(1), 1);
}

#[test]
fn exfat_64k_clusters_matches_partclone() {
    exfat_case(
        "exfat 256MiB 64KiB clusters",
        256 << 20,
        &["-c", "64K"],
        Some(2),
        2,
    );
}

#[test]
fn exfat_empty_matches_partclone() {
    exfat_case("exfat 64MiB empty", 64 << 20, &[], None, 1);
}

/// A volume length that is not a whole number of clusters: the sectors after
/// the last cluster are not used (partclone agrees).
#[test]
fn exfat_odd_size_matches_partclone() {
    exfat_case(
        "exfat 128MiB+2.5KiB",
        (128 << 20) + 5 * 512,
        &[],
        Some(3),
        1,
    );
}
