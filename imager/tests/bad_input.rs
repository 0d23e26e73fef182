//! Acceptance 5: bad input. Each case checks the documented exit code (manifest/src/exit.rs:
//! BAD_INPUT for a bad source, BAD_TARGET for a bad target), that stderr is one line starting
//! with `imager: error:`, and that the target (and the source) are byte-for-byte untouched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use blockswarm_manifest::exit;
use common::*;

/// Runs `imager [args] SRC --copy-to TARGET -o MANIFEST` and checks the refusal: exit code,
/// one stderr line, target and source unchanged, no manifest written.
fn refused(what: &str, args: &[&str], src: &Path, target: &Path, code: i32) -> String {
    let src_hash = sha1_file(src);
    let target_hash = fs::metadata(target).is_ok().then(|| sha1_file(target));
    let target_len = fs::metadata(target).map(|m| m.len()).ok();
    let manifest = src.with_file_name("refused.torrent");
    let _ = fs::remove_file(&manifest);
    let out = run(imager()
        .args(args)
        .arg(src)
        .arg("--copy-to")
        .arg(target)
        .arg("-o")
        .arg(&manifest));
    let line = assert_error(&out, code, what);
    assert_eq!(sha1_file(src), src_hash, "{what}: source changed");
    if let Some(h) = target_hash {
        assert_eq!(sha1_file(target), h, "{what}: target changed");
        assert_eq!(fs::metadata(target).unwrap().len(), target_len.unwrap());
    }
    assert!(!manifest.exists(), "{what}: a manifest was written");
    line
}

fn ext4_image(s: &Scratch, name: &str, size_mib: u64, block: u32, seed: u64) -> Option<PathBuf> {
    if !need_tools(name, &["mkfs.ext4"]) {
        return None;
    }
    let tree = s.join(format!("{name}-tree"));
    gen_tree(&tree, seed, 12, 1 << 20);
    let img = s.join(format!("{name}.img"));
    sparse_file(&img, size_mib << 20);
    run_ok(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-b", &block.to_string(), "-d"])
            .arg(&tree)
            .arg(&img),
    );
    Some(img)
}

#[test]
fn random_bytes_with_fs_ext4_is_bad_input() {
    let s = Scratch::new("random-ext4");
    let src = s.join("random.img");
    random_file(&src, 16 << 20, 501);
    let target = s.join("target.img");
    random_file(&target, 16 << 20, 502);
    for fs in ["ext4", "ext2", "extfs"] {
        let line = refused(
            &format!("random bytes --fs {fs}"),
            &["--fs", fs],
            &src,
            &target,
            exit::BAD_INPUT,
        );
        assert!(line.contains("random.img"), "{line}");
    }
}

#[test]
fn truncated_ext4_is_bad_input() {
    let s = Scratch::new("trunc-ext4");
    for (block, seed) in [(4096u32, 511u64), (1024, 512)] {
        let name = format!("ext4-{block}");
        let Some(full) = ext4_image(&s, &name, 48, block, seed) else {
            return;
        };
        let size = file_size(&full);
        let target = s.join("target.img");
        random_file(&target, size, seed + 7);
        // Cut at half, 90%, one block short and one byte short; also inside the first
        // block group (superblock present, most of the filesystem missing).
        for cut in [
            size / 2,
            size / 10 * 9,
            size - block as u64,
            size - 1,
            1 << 20,
        ] {
            let src = s.join("truncated.img");
            truncated_copy(&full, &src, cut);
            for fs in ["auto", "ext4"] {
                refused(
                    &format!("{name} cut at {cut} of {size}, --fs {fs}"),
                    &["--fs", fs],
                    &src,
                    &target,
                    exit::BAD_INPUT,
                );
            }
        }
        // Control: the whole image is accepted onto the same target.
        run_ok(imager().arg("-q").arg(&full).arg("--copy-to").arg(&target));
    }
}

#[test]
fn target_smaller_than_source_is_bad_target() {
    let s = Scratch::new("small-target");
    let Some(src) = ext4_image(&s, "src", 32, 4096, 521) else {
        return;
    };
    let size = file_size(&src);
    for (i, len) in [size - 1, size - 4096, size / 2, 0].into_iter().enumerate() {
        let target = s.join(format!("small{i}.img"));
        random_file(&target, len, 522 + i as u64);
        let line = refused(
            &format!("target of {len} bytes for a {size}-byte source"),
            &[],
            &src,
            &target,
            exit::BAD_TARGET,
        );
        assert!(line.contains("smaller"), "{line}");
    }
}

#[test]
fn target_that_is_the_source_is_bad_target() {
    let s = Scratch::new("self-target");
    let Some(src) = ext4_image(&s, "src", 32, 4096, 531) else {
        return;
    };
    // The same path, the same path spelled differently, a hard link and a symlink.
    let link = s.join("hardlink.img");
    fs::hard_link(&src, &link).unwrap();
    let sym = s.join("symlink.img");
    std::os::unix::fs::symlink(&src, &sym).unwrap();
    let dotted = s.path().join(".").join("src.img");
    for (what, target) in [
        ("same path", src.clone()),
        ("same file via ./", dotted),
        ("hard link", link),
        ("symlink", sym),
    ] {
        let line = refused(
            &format!("target is the source ({what})"),
            &[],
            &src,
            &target,
            exit::BAD_TARGET,
        );
        assert!(line.contains("source"), "{line}");
    }
}

#[test]
fn fat_with_damaged_boot_sector_is_bad_input() {
    if !need_tools("fat-damaged", &["mkfs.fat", "mcopy"]) {
        return;
    }
    let s = Scratch::new("fat-damaged");
    let tree = s.join("tree");
    gen_tree(&tree, 541, 10, 1 << 20);
    let good = s.join("good.img");
    make_fat(&good, 16, 32, &[], &tree);
    let size = file_size(&good);
    let target = s.join("target.img");
    random_file(&target, size, 542);
    // Control: the undamaged image is accepted.
    run_ok(imager().args(["--fs", "fat", "--map"]).arg(&good));

    let mut random_bpb = vec![0u8; 51];
    {
        use rand::{RngCore, SeedableRng};
        rand::rngs::StdRng::seed_from_u64(543).fill_bytes(&mut random_bpb);
    }
    let damage: Vec<(&str, u64, Vec<u8>)> = vec![
        ("bytes per sector 0", 11, vec![0, 0]),
        ("bytes per sector 4097", 11, vec![0x01, 0x10]),
        ("sectors per cluster 3", 13, vec![3]),
        ("no FATs", 16, vec![0]),
        ("no reserved sectors", 14, vec![0, 0]),
        ("FAT size 0", 22, vec![0, 0]),
        (
            "total sectors beyond the image",
            32,
            vec![0xff, 0xff, 0xff, 0x7f],
        ),
        ("random BPB", 11, random_bpb),
        ("zeroed boot sector", 0, vec![0; 512]),
    ];
    for (what, off, bytes) in damage {
        let src = s.join("damaged.img");
        fs::copy(&good, &src).unwrap();
        if off == 32 {
            // The 16-bit total must be 0 for the 32-bit one to count.
            patch(&src, 19, &[0, 0]);
        }
        patch(&src, off, &bytes);
        refused(
            &format!("FAT16 boot sector: {what}"),
            &["--fs", "fat"],
            &src,
            &target,
            exit::BAD_INPUT,
        );
    }
}

#[test]
fn truncated_xfs_is_bad_input() {
    if !need_tools("truncated-xfs", &["mkfs.xfs", "partclone.xfs"]) {
        return;
    }
    let s = Scratch::new("trunc-xfs");
    let tree = s.join("tree");
    gen_tree(&tree, 551, 10, 1 << 20);
    let full = s.join("full.img");
    // No deletions needed: this only needs a valid XFS to cut.
    make_xfs(&full, 320, &tree, &[]);
    let size = file_size(&full);
    let target = s.join("target.img");
    sparse_file(&target, size);
    patch(&target, 0, b"target sentinel");
    patch(&target, size - 16, b"target sentinel2");
    for cut in [size / 2, size / 10 * 9, size - 4096, 1 << 20] {
        let src = s.join("truncated.img");
        truncated_copy(&full, &src, cut);
        refused(
            &format!("xfs cut at {cut} of {size}"),
            &["--fs", "xfs"],
            &src,
            &target,
            exit::BAD_INPUT,
        );
    }
    // A damaged superblock: partclone.xfs fails; its multi-line log must still give one
    // stderr line.
    let src = s.join("damaged.img");
    fs::copy(&full, &src).unwrap();
    patch(&src, 4, &[0xA5; 60]);
    refused(
        "xfs with a damaged superblock",
        &["--fs", "xfs"],
        &src,
        &target,
        exit::BAD_INPUT,
    );
    // Control.
    run_ok(imager().arg("-q").arg(&full).arg("--copy-to").arg(&target));
}

#[test]
fn truncated_btrfs_is_bad_input() {
    if !need_tools("truncated-btrfs", &["mkfs.btrfs", "partclone.btrfs"]) {
        return;
    }
    let s = Scratch::new("trunc-btrfs");
    let tree = s.join("tree");
    gen_tree(&tree, 571, 10, 1 << 20);
    let full = s.join("full.img");
    make_btrfs(&full, 256, &tree, &[]);
    let size = file_size(&full);
    let target = s.join("target.img");
    random_file(&target, size, 572);
    for cut in [size / 2, size / 10 * 9, size - 4096] {
        let src = s.join("truncated.img");
        truncated_copy(&full, &src, cut);
        for fs in ["auto", "btrfs"] {
            refused(
                &format!("btrfs cut at {cut} of {size}, --fs {fs}"),
                &["--fs", fs],
                &src,
                &target,
                exit::BAD_INPUT,
            );
        }
    }
    run_ok(imager().arg("-q").arg(&full).arg("--copy-to").arg(&target));
}

#[test]
fn missing_source_and_unknown_fs_are_bad_input() {
    let s = Scratch::new("missing");
    let target = s.join("target.img");
    random_file(&target, 1 << 20, 561);
    let before = sha1_file(&target);
    let src = s.join("does-not-exist.img");
    let out = run(imager().arg(&src).arg("--copy-to").arg(&target));
    assert_error(&out, exit::BAD_INPUT, "missing source");
    assert_eq!(sha1_file(&target), before, "missing source: target changed");
    let src = s.join("some.img");
    random_file(&src, 1 << 20, 562);
    refused("--fs zfs", &["--fs", "zfs"], &src, &target, exit::BAD_INPUT);
}

#[test]
fn ntfs_with_zeroed_bitmap_record_is_bad_input() {
    if !need_tools("ntfs-zeroed-bitmap", &["mkfs.ntfs"]) {
        return;
    }
    let s = Scratch::new("ntfs-bitmap");
    let full = s.join("full.img");
    sparse_file(&full, 64 << 20);
    run_ok(tool("mkfs.ntfs").args(["-F", "-Q", "-q"]).arg(&full));
    // Boot sector: bytes per sector (0x0B), sectors per cluster (0x0D), $MFT cluster (0x30),
    // clusters (or 2^-n bytes) per MFT record (0x40). $Bitmap is MFT record 6.
    let bs = read_at(&full, 0, 512);
    let sector = u16::from_le_bytes([bs[0x0B], bs[0x0C]]) as u64;
    let cluster = sector * bs[0x0D] as u64;
    let mft = u64::from_le_bytes(bs[0x30..0x38].try_into().unwrap()) * cluster;
    let rec = bs[0x40] as i8;
    let rec_len = if rec < 0 {
        1u64 << (-rec)
    } else {
        rec as u64 * cluster
    };
    let at = mft + 6 * rec_len;
    assert_eq!(&read_at(&full, at, 4), b"FILE", "record 6 is an MFT record");
    let src = s.join("zeroed.img");
    fs::copy(&full, &src).unwrap();
    patch(&src, at, &vec![0u8; rec_len as usize]);
    let target = s.join("target.img");
    sparse_file(&target, 64 << 20);
    patch(&target, 0, b"target sentinel");
    refused(
        "ntfs with a zeroed $Bitmap record",
        &["--fs", "ntfs"],
        &src,
        &target,
        exit::BAD_INPUT,
    );
    // Control: the intact image copies.
    run_ok(imager().arg("-q").arg(&full).arg("--copy-to").arg(&target));
}
