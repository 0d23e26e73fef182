// SPDX-License-Identifier: GPL-2.0-or-later
//! Deterministic mutation fuzzing (the same harness as `fuzz/`, as a plain
//! test): thousands of mutated copies of real FAT12/16/32 and exFAT images
//! are fed to `fat_usage`, `exfat_usage` and `detect`. Nothing may panic, and
//! every `Ok` result must satisfy the `FsUsage` invariants.

mod common;

use std::io::Cursor;
use std::time::Instant;

use blockswarm_fsmap::{detect, exfat_usage, fat_usage};
use common::*;

/// Mutations per image (override with BLOCKSWARM_MUTATIONS).
fn iterations() -> u64 {
    std::env::var("BLOCKSWARM_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

const INTERESTING: &[u32] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    9,
    12,
    13,
    24,
    25,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x200,
    0x1000,
    0x7FFF,
    0x8000,
    0xFFF5,
    0xFFF7,
    0xFFFF,
    0x10000,
    0x0FFF_FFF7,
    0x0FFF_FFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFF0,
    0xFFFF_FFF7,
    0xFFFF_FFFF,
];

/// Apply one random mutation to `img` (within `meta` bytes), recording the
/// old bytes in `undo`. Returns the device size to use.
fn mutate(img: &mut [u8], meta: usize, rng: &mut Rng, undo: &mut Vec<(usize, u8)>) -> usize {
    let mut set = |img: &mut [u8], off: usize, v: u8| {
        if off < img.len() {
            undo.push((off, img[off]));
            img[off] = v;
        }
    };
    let len = img.len();
    match rng.below(10) {
        // A few random bytes in the boot sector.
        0..=3 => {
            for _ in 0..=rng.below(4) {
                let off = rng.below(512) as usize;
                set(img, off, rng.next_u64() as u8);
            }
        }
        // Interesting 16/32-bit values at a random boot-sector offset.
        4 | 5 => {
            let off = rng.below(120) as usize;
            let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
            let width = if rng.below(2) == 0 { 2 } else { 4 };
            for (k, b) in v.to_le_bytes().iter().take(width).enumerate() {
                set(img, off + k, *b);
            }
        }
        // Random bytes or values anywhere in the metadata (FAT, root dir,
        // bitmap).
        6 | 7 => {
            for _ in 0..=rng.below(16) {
                let off = rng.below(meta as u64) as usize;
                if rng.below(2) == 0 {
                    set(img, off, rng.next_u64() as u8);
                } else {
                    let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                    for (k, b) in v.to_le_bytes().iter().enumerate() {
                        set(img, off + k, *b);
                    }
                }
            }
        }
        // Zero a run of metadata.
        8 => {
            let off = rng.below(meta as u64) as usize;
            let n = 1 + rng.below(4096) as usize;
            for o in off..(off + n).min(len) {
                set(img, o, 0);
            }
        }
        // Truncate (plus a boot-sector byte now and then).
        _ => {
            if rng.below(2) == 0 {
                let off = rng.below(512) as usize;
                set(img, off, rng.next_u64() as u8);
            }
            return rng.below(len as u64 + 1) as usize;
        }
    }
    len
}

fn fuzz_image(label: &str, mut img: Vec<u8>, meta: usize, seed: u64) {
    let n = iterations();
    let mut rng = Rng::new(seed);
    let mut undo = Vec::new();
    let (mut fat_ok, mut exfat_ok, mut detected) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for _ in 0..n {
        let size = mutate(&mut img, meta, &mut rng, &mut undo);
        let data = &img[..size];
        // Both parsers and detection on every input, as the fuzz targets do;
        // the caller's device size sometimes disagrees with the reader.
        let dev_size = if rng.below(8) == 0 {
            rng.below(2 * size as u64 + 2)
        } else {
            size as u64
        };
        if let Ok(u) = fat_usage(&mut Cursor::new(data), dev_size) {
            check_invariants(&u);
            fat_ok += 1;
        }
        if let Ok(u) = exfat_usage(&mut Cursor::new(data), dev_size) {
            check_invariants(&u);
            exfat_ok += 1;
        }
        if detect(&mut Cursor::new(data)).unwrap().is_some() {
            detected += 1;
        }
        for (off, b) in undo.drain(..).rev() {
            img[off] = b;
        }
    }
    println!(
        "{label}: {n} mutated images in {:.1?}: fat_usage Ok {fat_ok}, exfat_usage Ok \
         {exfat_ok}, detected {detected}; no panics",
        start.elapsed()
    );
}

fn image(tool_name: &str, args: &[&str], mib: u64) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    sparse_image(&img, mib << 20);
    run(tool(tool_name).args(args).arg(&img));
    if tool_name == "mkfs.fat" && find_tool("mcopy").is_some() {
        // A few files so that the FAT has chains.
        let mut rng = Rng::new(mib);
        let files = make_files(&tmp.path().join("f"), "f", 6, 1, 40_000, &mut rng);
        run(tool("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .args(&files)
            .arg("::/"));
    }
    std::fs::read(&img).unwrap()
}

/// End of the FAT metadata (boot sector .. root directory) plus some data.
fn fat_meta(img: &[u8]) -> usize {
    let g = blockswarm_fsmap::fat::fat_geometry(&img[..512]).unwrap();
    (g.data_start() + 16 * g.cluster_size()) as usize
}

#[test]
fn mutated_fat12() {
    if !have_tools("mutated fat12", &[("mkfs.fat", "dosfstools")]) {
        return;
    }
    let img = image("mkfs.fat", &["-F", "12"], 4);
    let meta = fat_meta(&img);
    fuzz_image("fat12 4MiB", img, meta, 1);
}

#[test]
fn mutated_fat16() {
    if !have_tools("mutated fat16", &[("mkfs.fat", "dosfstools")]) {
        return;
    }
    let img = image("mkfs.fat", &["-F", "16"], 16);
    let meta = fat_meta(&img);
    fuzz_image("fat16 16MiB", img, meta, 2);
}

#[test]
fn mutated_fat32() {
    if !have_tools("mutated fat32", &[("mkfs.fat", "dosfstools")]) {
        return;
    }
    let img = image("mkfs.fat", &["-F", "32", "-s", "1"], 40);
    let meta = fat_meta(&img);
    fuzz_image("fat32 40MiB", img, meta, 3);
}

#[test]
fn mutated_exfat() {
    if !have_tools("mutated exfat", &[("mkfs.exfat", "exfatprogs")]) {
        return;
    }
    let img = image("mkfs.exfat", &[], 8);
    let g = blockswarm_fsmap::exfat::exfat_geometry(&img[..512]).unwrap();
    let meta = (g.heap_start() + 8 * g.cluster_size()) as usize;
    fuzz_image("exfat 8MiB", img, meta, 4);
}
