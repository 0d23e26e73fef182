// SPDX-License-Identifier: GPL-2.0-or-later
//! Damaged, truncated and random input gives a useful error, never a panic.

mod common;

use std::fs;
use std::io::Cursor;

use blockswarm_fsmap::exfat::exfat_geometry;
use blockswarm_fsmap::{detect, exfat_usage, fat_usage, FsError};
use common::*;

/// A fresh image made by `mkfs` in a temp dir, returned as bytes.
fn mkfs_image(tool_name: &str, args: &[&str], size: u64) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    sparse_image(&img, size);
    run(tool(tool_name).args(args).arg(&img));
    fs::read(&img).unwrap()
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// `fat_usage` on `img` fails; the message contains `needle`.
fn fat_fails(case: &str, img: &[u8], device_size: u64, needle: &str) -> FsError {
    let r = fat_usage(&mut Cursor::new(img), device_size);
    let e = r.unwrap_err();
    let msg = e.to_string();
    println!("FAT {case}: {msg}");
    assert!(
        msg.contains(needle),
        "FAT {case}: {msg:?} does not mention {needle:?}"
    );
    e
}

fn exfat_fails(case: &str, img: &[u8], device_size: u64, needle: &str) -> FsError {
    let e = exfat_usage(&mut Cursor::new(img), device_size).unwrap_err();
    let msg = e.to_string();
    println!("exFAT {case}: {msg}");
    assert!(
        msg.contains(needle),
        "exFAT {case}: {msg:?} does not mention {needle:?}"
    );
    e
}

#[test]
fn damaged_fat16_boot_sector() {
    if !have_tools("damaged FAT16", &[("mkfs.fat", "dosfstools")]) {
        return;
    }
    let good = mkfs_image("mkfs.fat", &["-F", "16"], 16 << 20);
    let n = good.len() as u64;
    fat_usage(&mut Cursor::new(&good), n).unwrap();

    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    fat_fails(
        "bytes per sector 0",
        &case(&|b| put16(b, 11, 0)),
        n,
        "bytes per sector is 0",
    );
    fat_fails(
        "bytes per sector 513",
        &case(&|b| put16(b, 11, 513)),
        n,
        "bytes per sector is 513",
    );
    fat_fails(
        "zeroed BPB",
        &case(&|b| b[11..62].fill(0)),
        n,
        "bytes per sector is 0",
    );
    fat_fails(
        "sectors per cluster 0",
        &case(&|b| b[13] = 0),
        n,
        "sectors per cluster is 0",
    );
    fat_fails(
        "sectors per cluster 3",
        &case(&|b| b[13] = 3),
        n,
        "sectors per cluster is 3",
    );
    fat_fails(
        "reserved sectors 0",
        &case(&|b| put16(b, 14, 0)),
        n,
        "reserved sector count is 0",
    );
    fat_fails("no FATs", &case(&|b| b[16] = 0), n, "number of FATs is 0");
    fat_fails("media byte 0", &case(&|b| b[21] = 0), n, "media descriptor");
    fat_fails("FAT size 0", &case(&|b| put16(b, 22, 0)), n, "FAT32 layout");
    fat_fails(
        "FAT too small",
        &case(&|b| put16(b, 22, 1)),
        n,
        "cannot hold",
    );
    fat_fails(
        "FAT size huge",
        &case(&|b| put16(b, 22, 0xFFFF)),
        n,
        "but the volume has only",
    );
    fat_fails(
        "total sectors 0",
        &case(&|b| {
            put16(b, 19, 0);
            put32(b, 32, 0);
        }),
        n,
        "total sector count is 0",
    );
    fat_fails(
        "absurd cluster count",
        &case(&|b| {
            put16(b, 19, 0);
            put32(b, 32, 0xFFFF_FFFF);
        }),
        n,
        "would need FAT32",
    );
    fat_fails(
        "root directory with 0 entries",
        &case(&|b| put16(b, 17, 0)),
        n,
        "root directory has 0 entries",
    );
    // Volume one sector larger than the device.
    let sectors = u16::from_le_bytes([good[19], good[20]]);
    let total = if sectors != 0 {
        u32::from(sectors)
    } else {
        u32::from_le_bytes(good[32..36].try_into().unwrap())
    };
    let e = fat_fails(
        "volume larger than device",
        &case(&|b| {
            put16(b, 19, 0);
            put32(b, 32, total + 1);
        }),
        n,
        "beyond the end of the device",
    );
    assert!(matches!(e, FsError::Truncated { .. }));
}

#[test]
fn damaged_fat32_boot_sector() {
    if !have_tools("damaged FAT32", &[("mkfs.fat", "dosfstools")]) {
        return;
    }
    let good = mkfs_image("mkfs.fat", &["-F", "32", "-s", "1"], 40 << 20);
    let n = good.len() as u64;
    let u = fat_usage(&mut Cursor::new(&good), n).unwrap();
    assert_eq!(u.fs_type, "fat32");
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    fat_fails(
        "FAT32 size huge",
        &case(&|b| put32(b, 36, 0x7FFF_FFFF)),
        n,
        "take",
    );
    fat_fails(
        "FAT32 size 0",
        &case(&|b| put32(b, 36, 0)),
        n,
        "sectors per FAT is 0",
    );
    fat_fails(
        "FAT32 with root entries",
        &case(&|b| put16(b, 17, 512)),
        n,
        "fixed root",
    );
    fat_fails(
        "FAT32 active FAT out of range",
        &case(&|b| put16(b, 40, 0x85)),
        n,
        "FAT #5 is active",
    );
    fat_fails(
        "FAT32 too many clusters",
        &case(&|b| {
            put32(b, 32, 0xFFFF_FFFF);
            put32(b, 36, 8);
        }),
        n,
        "FAT32 allows at most",
    );
}

#[test]
fn truncated_fat_images() {
    if !have_tools("truncated FAT", &[("mkfs.fat", "dosfstools")]) {
        return;
    }
    for (args, size) in [
        (&["-F", "12"][..], 4u64 << 20),
        (&["-F", "32"][..], 40 << 20),
    ] {
        let good = mkfs_image("mkfs.fat", args, size);
        let cut = &good[..20 * 1024];
        // The caller says the device is 20 KiB.
        let e = fat_fails("cut to 20 KiB", cut, cut.len() as u64, "truncated");
        assert!(matches!(e, FsError::Truncated { .. }));
        // The caller claims the full size but the reader ends at 20 KiB.
        let e = fat_fails(
            "reader ends early",
            cut,
            size,
            "the reader ended at byte 20480",
        );
        assert!(matches!(e, FsError::Truncated { .. }));
        fat_fails("device of 100 bytes", &good[..100], 100, "boot sector");
        fat_fails("empty device", &[], 0, "boot sector");
    }
}

/// Offsets of the exFAT structures in an image, from its boot sector.
struct ExLayout {
    root: usize,
    fat: usize,
    cs: usize,
    heap: usize,
}

fn ex_layout(img: &[u8]) -> ExLayout {
    let g = exfat_geometry(&img[..512]).unwrap();
    let cs = g.cluster_size() as usize;
    let heap = g.heap_start() as usize;
    ExLayout {
        root: heap + (g.root_cluster as usize - 2) * cs,
        fat: (g.fat_offset * g.bytes_per_sector) as usize,
        cs,
        heap,
    }
}

/// Byte offset of the Allocation Bitmap entry in the root directory.
fn bitmap_entry(img: &[u8], l: &ExLayout) -> usize {
    (0..l.cs / 32)
        .map(|i| l.root + i * 32)
        .find(|&o| img[o] == 0x81)
        .expect("no bitmap entry in fresh image")
}

#[test]
fn damaged_exfat() {
    if !have_tools("damaged exFAT", &[("mkfs.exfat", "exfatprogs")]) {
        return;
    }
    let good = mkfs_image("mkfs.exfat", &[], 8 << 20);
    let n = good.len() as u64;
    exfat_usage(&mut Cursor::new(&good), n).unwrap();
    let l = ex_layout(&good);
    let be = bitmap_entry(&good, &l);
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    exfat_fails("bad name", &case(&|b| b[3] = b'X'), n, "not a exFAT");
    exfat_fails("bad signature", &case(&|b| b[510] = 0), n, "signature");
    exfat_fails(
        "MustBeZero not zero",
        &case(&|b| b[20] = 1),
        n,
        "MustBeZero",
    );
    exfat_fails(
        "bytes per sector shift 0",
        &case(&|b| b[108] = 0),
        n,
        "BytesPerSectorShift is 0",
    );
    exfat_fails(
        "bytes per sector shift 13",
        &case(&|b| b[108] = 13),
        n,
        "BytesPerSectorShift is 13",
    );
    exfat_fails(
        "cluster shift 30",
        &case(&|b| b[109] = 30),
        n,
        "SectorsPerClusterShift is 30",
    );
    exfat_fails("no FATs", &case(&|b| b[110] = 0), n, "NumberOfFats is 0");
    exfat_fails("FAT offset 0", &case(&|b| put32(b, 80, 0)), n, "FatOffset");
    exfat_fails(
        "FAT length 0",
        &case(&|b| put32(b, 84, 0)),
        n,
        "FatLength is 0",
    );
    exfat_fails(
        "heap beyond volume",
        &case(&|b| put32(b, 88, 0xFFFF_FF00)),
        n,
        "ClusterHeapOffset",
    );
    exfat_fails(
        "absurd cluster count",
        &case(&|b| put32(b, 92, 0xFFFF_FFF0)),
        n,
        "ClusterCount",
    );
    exfat_fails(
        "cluster count 0",
        &case(&|b| put32(b, 92, 0)),
        n,
        "ClusterCount is 0",
    );
    exfat_fails(
        "root cluster 0",
        &case(&|b| put32(b, 96, 0)),
        n,
        "FirstClusterOfRootDirectory 0",
    );
    exfat_fails(
        "volume length 0",
        &case(&|b| b[72..80].fill(0)),
        n,
        "VolumeLength",
    );
    let e = exfat_fails(
        "volume larger than device",
        &case(&|b| {
            let v = u64::from_le_bytes(b[72..80].try_into().unwrap()) + 1;
            b[72..80].copy_from_slice(&v.to_le_bytes());
        }),
        n,
        "beyond the end of the device",
    );
    assert!(matches!(e, FsError::Truncated { .. }));
    exfat_fails(
        "root directory wiped",
        &case(&|b| b[l.root..l.root + l.cs].fill(0)),
        n,
        "no Allocation Bitmap entry",
    );
    exfat_fails(
        "bitmap cluster out of range",
        &case(&|b| put32(b, be + 20, 0xFFFF_FFF0)),
        n,
        "allocation bitmap starts at cluster",
    );
    exfat_fails(
        "bitmap too short",
        &case(&|b| b[be + 24..be + 32].fill(0)),
        n,
        "allocation bitmap is 0 bytes",
    );
    // Root directory without an end marker whose FAT entry points to itself.
    let root_cluster = u32::from_le_bytes(good[96..100].try_into().unwrap());
    exfat_fails(
        "root directory chain loops",
        &case(&|b| {
            for e in b[l.root..l.root + l.cs].chunks_mut(32) {
                e.fill(0);
                e[0] = 0x85 & 0x7F; // deleted file entries
            }
            put32(b, l.fat + root_cluster as usize * 4, root_cluster);
        }),
        n,
        "loops",
    );
    exfat_fails(
        "root directory chain broken",
        &case(&|b| {
            for e in b[l.root..l.root + l.cs].chunks_mut(32) {
                e.fill(0);
                e[0] = 0x05;
            }
            put32(b, l.fat + root_cluster as usize * 4, 1);
        }),
        n,
        "not a valid cluster",
    );
    // Truncation.
    let cut = &good[..l.heap + 100];
    let e = exfat_fails("cut inside the heap", cut, cut.len() as u64, "truncated");
    assert!(matches!(e, FsError::Truncated { .. }));
    let e = exfat_fails("reader ends early", cut, n, "the reader ended at byte");
    assert!(matches!(e, FsError::Truncated { .. }));
    exfat_fails("device of 300 bytes", &good[..300], 300, "boot sector");
}

#[test]
fn random_bytes_are_rejected() {
    for seed in 0..20u64 {
        let mut rng = Rng::new(seed);
        let len = 512 + rng.below(2 << 20) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        let n = data.len() as u64;
        let fe = fat_usage(&mut Cursor::new(&data), n).unwrap_err();
        let ee = exfat_usage(&mut Cursor::new(&data), n).unwrap_err();
        assert!(matches!(ee, FsError::NotThisFs { .. }), "{ee}");
        assert_eq!(
            detect(&mut Cursor::new(&data)).unwrap(),
            None,
            "seed {seed}"
        );
        if seed < 3 {
            println!("random {len} bytes: FAT: {fe}; exFAT: {ee}");
        }
    }
    let zeros = vec![0u8; 1 << 20];
    assert_eq!(detect(&mut Cursor::new(&zeros)).unwrap(), None);
    assert!(fat_usage(&mut Cursor::new(&zeros), 1 << 20).is_err());
    assert!(exfat_usage(&mut Cursor::new(&zeros), 1 << 20).is_err());
    assert_eq!(detect(&mut Cursor::new(&[] as &[u8])).unwrap(), None);
}
