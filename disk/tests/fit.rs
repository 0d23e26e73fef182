//! fit_gpt on copies of a real sgdisk image onto larger and smaller targets, checked with
//! `sgdisk -v` and `sfdisk -J`.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use blockswarm_disk::{fit_gpt, read_table, DiskError};
use common::*;

/// The last partition of [`GPT_PARTS`] ends at LBA 92159.
const LAST_END_LBA: u64 = 92159;

/// A copy of `src` as a target of `size` bytes: the source's bytes up to `size`, as the
/// receiver leaves them (the source's backup GPT is not copied, so none at the end).
fn copy_to_target(src: &Path, dst: &Path, size: u64) {
    fs::copy(src, dst).unwrap();
    let f = File::options().write(true).open(dst).unwrap();
    f.set_len(size).unwrap();
    if size > IMAGE_SIZE {
        // Random bytes where the target's backup goes, as on a used disk.
        drop(f);
        fill_random(dst, size - 64 * 512, 64 * 512, 9);
    }
}

fn fit(path: &Path) -> Result<(), DiskError> {
    let mut f = File::options().read(true).write(true).open(path).unwrap();
    let size = f.metadata().unwrap().len();
    fit_gpt(&mut f, size, 512)
}

fn bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

fn pmbr_size(path: &Path) -> u32 {
    u32::from_le_bytes(bytes(path, 446 + 12, 4).try_into().unwrap())
}

/// Checks a fitted target of `size` bytes against the source: sgdisk finds no problems,
/// sfdisk the same partitions with the new last LBA, boot code and primary entries unchanged,
/// the protective MBR covering the disk.
fn check_fitted(src: &Path, dst: &Path, size: u64) {
    let (clean, text) = sgdisk_verify(dst);
    println!("sgdisk -v {}:\n{text}", dst.display());
    assert!(clean, "sgdisk -v found problems:\n{text}");
    let (sj, dj) = (sfdisk_json(src), sfdisk_json(dst));
    assert_eq!(sfdisk_parts(&sj), sfdisk_parts(&dj));
    let sectors = size / 512;
    let pt = &dj["partitiontable"];
    println!(
        "sfdisk -J: firstlba {} lastlba {} id {}",
        pt["firstlba"], pt["lastlba"], pt["id"]
    );
    assert_eq!(pt["lastlba"].as_u64(), Some(sectors - 34));
    assert_eq!(pt["firstlba"].as_u64(), Some(34));
    assert_eq!(pt["id"], sj["partitiontable"]["id"], "disk GUID kept");
    for (n, uuid) in sj["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(dj["partitiontable"]["partitions"].as_array().unwrap())
        .map(|(a, b)| (a["uuid"].clone(), b["uuid"].clone()))
        .enumerate()
    {
        assert_eq!(uuid.0, uuid.1, "partition GUID of entry {n} kept");
    }
    assert_eq!(
        bytes(src, 0, 440),
        bytes(dst, 0, 440),
        "boot code untouched"
    );
    assert_eq!(
        bytes(src, 1024, 32 * 512),
        bytes(dst, 1024, 32 * 512),
        "entries untouched"
    );
    assert_eq!(
        bytes(src, 34 * 512, 2014 * 512),
        bytes(dst, 34 * 512, 2014 * 512),
        "hidden data untouched"
    );
    assert_eq!(
        u64::from(pmbr_size(dst)),
        (sectors - 1).min(u32::MAX.into())
    );
    // And the table reads back the same.
    let (a, b) = (
        read_table(&File::open(src).unwrap(), IMAGE_SIZE, 512).unwrap(),
        read_table(&File::open(dst).unwrap(), size, 512).unwrap(),
    );
    assert_eq!(a.unwrap().partitions, b.unwrap().partitions);
}

#[test]
fn a_target_25_percent_larger_gets_a_valid_gpt_for_its_size() {
    if !need_tools("fit_larger", &["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    make_gpt(&src);
    let size = IMAGE_SIZE / 4 * 5;
    copy_to_target(&src, &dst, size);
    let (clean, before) = sgdisk_verify(&dst);
    println!("before fit_gpt, sgdisk -v:\n{before}");
    assert!(
        !clean,
        "the copy must need fixing for the check to mean anything"
    );
    fit(&dst).unwrap();
    check_fitted(&src, &dst, size);
}

#[test]
fn a_smaller_target_that_still_holds_every_partition_gets_a_valid_gpt() {
    if !need_tools("fit_smaller", &["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    make_gpt(&src);
    // The smallest that fits: the last partition, 32 sectors of entries, the header.
    let min = read_table(&File::open(&src).unwrap(), IMAGE_SIZE, 512)
        .unwrap()
        .unwrap()
        .min_size;
    assert_eq!(min, (LAST_END_LBA + 1 + 32 + 1) * 512);
    for size in [48 * MIB, min] {
        copy_to_target(&src, &dst, size);
        fit(&dst).unwrap();
        check_fitted(&src, &dst, size);
    }
}

#[test]
fn a_target_too_small_for_the_last_partition_is_refused_and_left_unchanged() {
    if !need_tools("fit_too_small", &["sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    make_gpt(&src);
    // One sector short of room for the backup entries and header.
    let size = (LAST_END_LBA + 1 + 32) * 512;
    copy_to_target(&src, &dst, size);
    let before = fs::read(&dst).unwrap();
    let e = fit(&dst).unwrap_err();
    println!("{e}");
    assert!(matches!(e, DiskError::TooSmall { need, .. } if need == size + 512));
    assert!(!e.to_string().contains('\n'));
    assert!(fs::read(&dst).unwrap() == before, "nothing written");
    // A target that ends inside the last partition.
    copy_to_target(&src, &dst, 40 * MIB);
    let before = fs::read(&dst).unwrap();
    assert!(matches!(fit(&dst), Err(DiskError::TooSmall { .. })));
    assert!(fs::read(&dst).unwrap() == before, "nothing written");
}

#[test]
fn a_target_of_the_same_size_is_left_byte_identical() {
    if !need_tools("fit_same_size", &["sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    make_gpt(&src);
    fs::copy(&src, &dst).unwrap();
    fit(&dst).unwrap();
    assert!(
        fs::read(&src).unwrap() == fs::read(&dst).unwrap(),
        "fit_gpt on a complete same-size copy changed bytes"
    );
    // Without the backup (what the receiver has): the primary header is unchanged, the backup
    // is written as sgdisk wrote it.
    copy_to_target(&src, &dst, IMAGE_SIZE);
    fill_random(&dst, IMAGE_SIZE - 33 * 512, 33 * 512, 5);
    fit(&dst).unwrap();
    assert!(fs::read(&src).unwrap() == fs::read(&dst).unwrap());
}

#[test]
fn a_target_over_2_tib_gets_the_protective_mbr_size_capped() {
    if !need_tools("fit_huge", &["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    make_gpt(&src);
    let size = 3u64 << 40; // sparse
    copy_to_target(&src, &dst, size);
    fit(&dst).unwrap();
    assert_eq!(pmbr_size(&dst), u32::MAX);
    check_fitted(&src, &dst, size);
}

#[test]
fn a_hybrid_mbr_is_left_alone_and_a_missing_gpt_is_an_error() {
    if !need_tools("fit_hybrid", &["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    make_gpt(&src);
    // A hybrid MBR: partitions 1 and 3 also in the MBR, then the 0xEE entry.
    run_ok("sgdisk", &["--hybrid=1:3", src.to_str().unwrap()]);
    let size = IMAGE_SIZE * 2;
    copy_to_target(&src, &dst, size);
    fit(&dst).unwrap();
    assert_eq!(
        bytes(&src, 0, 512),
        bytes(&dst, 0, 512),
        "hybrid MBR untouched"
    );
    let (clean, text) = sgdisk_verify(&dst);
    println!("{text}");
    assert!(clean, "{text}");

    let mbr = dir.path().join("mbr.img");
    make_mbr(&mbr);
    let e = fit(&mbr).unwrap_err();
    assert!(matches!(e, DiskError::NoGpt), "{e:?}");
    println!("{e}");
}
