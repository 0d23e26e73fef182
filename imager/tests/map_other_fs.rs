//! Acceptance 2: `imager --map` against `partclone.<fs> -D` for FAT16, FAT32, exFAT, NTFS, XFS
//! and btrfs images holding generated files (some deleted again), and FAT12 against the
//! cluster facts of `fsck.fat -n -v` and `mshowfat` (partclone 0.3.23 reads FAT12 entries as
//! 16-bit, so its FAT12 maps are wrong).

mod common;

use common::*;

fn fat_case(test: &str, bits: u32, size_mib: u64, extra: &[&str], seed: u64) {
    if !need_tools(test, &["mkfs.fat", "mcopy", "mdel", "partclone.fat"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, seed, 36, 1 << 20);
    let img = s.join(format!("{test}.img"));
    make_fat(&img, bits, size_mib, extra, &tree);
    fat_delete(&img, &pick(&files, 1, 3));
    let c = assert_covers_partclone(test, &img, None, "fat");
    // The map has the FAT's own name for the variant.
    let out = run_ok(imager().args(["-o", "/dev/null"]).arg(&img));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(&format!("fat{bits} ")),
        "{test}: summary does not name fat{bits}: {summary}"
    );
    assert!(
        summary.contains(&format!("{} used bytes", c.ours)),
        "{summary}"
    );
}

#[test]
fn fat16_map_covers_partclone() {
    fat_case("fat16", 16, 64, &[], 16);
}

#[test]
fn fat32_map_covers_partclone() {
    // 1 KiB clusters, so that 128 MiB has enough clusters for FAT32.
    fat_case("fat32", 32, 128, &["-s", "2"], 32);
}

#[test]
fn exfat_map_covers_partclone() {
    let test = "exfat";
    if !need_tools(test, &["mkfs.exfat", "partclone.exfat", "losetup", "mount"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 5, 30, 1 << 20);
    let img = s.join("exfat.img");
    // Files go in through exfat-fuse (mkfs.exfat cannot populate); never an empty filesystem.
    if !make_exfat(&img, 96, &tree, &files, &pick(&files, 0, 4)) {
        return;
    }
    let c = assert_covers_partclone(test, &img, Some("exfat"), "exfat");
    let written: u64 = remaining(&files, &pick(&files, 0, 4))
        .iter()
        .map(|f| f.len)
        .sum();
    println!(
        "exfat: {written} bytes of files kept, {} bytes mapped",
        c.ours
    );
    assert!(c.ours > written, "exfat: the files are not in the map");
}

#[test]
fn ntfs_map_covers_partclone() {
    let test = "ntfs";
    if !need_tools(test, &["mkfs.ntfs", "ntfs-3g", "partclone.ntfs"]) {
        return;
    }
    println!("ntfs: imager backend: {}", ntfs_backend());
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 7, 30, 1 << 20);
    let img = s.join("ntfs.img");
    let populated = make_ntfs(&img, 96, &tree, &files, &pick(&files, 2, 3));
    println!("ntfs: populated through a mount: {populated}");
    let c = assert_covers_partclone(test, &img, None, "ntfs");
    if populated {
        let written: u64 = files.iter().map(|f| f.len).sum();
        assert!(c.ours > written / 2, "ntfs: the files are not in the map");
    }
    // The backup boot sector (the partition's last sector) is part of the map.
    let used = imager_map(&img, None).used();
    let size = file_size(&img);
    assert!(
        inside(&used, size - 512, 512),
        "ntfs: backup boot sector not mapped"
    );
}

#[test]
fn xfs_map_covers_partclone() {
    let test = "xfs";
    if !need_tools(test, &["mkfs.xfs", "partclone.xfs", "losetup", "mount"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 9, 36, 2 << 20);
    let img = s.join("xfs.img");
    // mkfs.xfs 6.x refuses filesystems below 300 MiB.
    let deleted = make_xfs(&img, 320, &tree, &pick(&files, 1, 3));
    println!("xfs: files deleted through a loop mount: {deleted}");
    assert_covers_partclone(test, &img, None, "xfs");
}

#[test]
fn btrfs_map_covers_partclone() {
    let test = "btrfs";
    if !need_tools(test, &["mkfs.btrfs", "partclone.btrfs", "losetup", "mount"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 11, 36, 2 << 20);
    let img = s.join("btrfs.img");
    let deleted = make_btrfs(&img, 256, &tree, &pick(&files, 1, 3));
    println!("btrfs: files deleted through a loop mount: {deleted}");
    assert_covers_partclone(test, &img, None, "btrfs");
}

/// Clusters listed by `mshowfat` (`::/name <2-5> <9> <12-20>`).
fn mshowfat_clusters(img: &std::path::Path, path: &str) -> Vec<(u64, u64)> {
    let out = run_ok(mtools("mshowfat", img).arg(format!("::/{path}")));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut ranges = Vec::new();
    for tok in text.split('<').skip(1) {
        let tok = tok.split('>').next().unwrap().trim();
        if tok.is_empty() {
            continue;
        }
        let (a, b) = tok.split_once('-').unwrap_or((tok, tok));
        ranges.push((a.parse().unwrap(), b.parse().unwrap()));
    }
    ranges
}

/// The number after `key` in fsck.fat's verbose output, e.g. "Data area starts at byte".
fn fsck_number(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key:?} in fsck.fat output:\n{text}"));
    let after = &line[line.find(key).unwrap() + key.len()..];
    after
        .split(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

/// The number just before `key` in fsck.fat's verbose output, e.g. "2048 bytes per cluster".
fn number_before(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key:?} in fsck.fat output:\n{text}"));
    line[..line.find(key).unwrap()]
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn fat12_map_matches_fsck_fat_and_mshowfat() {
    let test = "fat12";
    if !need_tools(test, &["mkfs.fat", "mcopy", "mdel", "mshowfat", "fsck.fat"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 12, 14, 700 << 10);
    let img = s.join("fat12.img");
    make_fat(&img, 12, 12, &[], &tree);
    let gone = pick(&files, 1, 4);
    fat_delete(&img, &gone);
    let kept = remaining(&files, &gone);

    let fsck = run_ok(tool("fsck.fat").arg("-n").arg("-v").arg(&img));
    let text = String::from_utf8_lossy(&fsck.stdout).into_owned();
    assert!(text.contains("12 bit entries"), "not FAT12:\n{text}");
    let data_start = fsck_number(&text, "Data area starts at byte");
    let cluster = number_before(&text, "bytes per cluster");
    // "IMG: N files, USED/TOTAL clusters"
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains(" clusters"))
        .unwrap();
    let used_clusters: u64 = last
        .rsplit(", ")
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let expected = data_start + used_clusters * cluster;

    let map = imager_map(&img, None);
    map.assert_tiles(file_size(&img));
    let used = map.used();
    let ours = total(&used);
    println!(
        "fat12: imager {ours} bytes in {} runs; fsck.fat: data area at {data_start}, \
         {used_clusters} clusters of {cluster} bytes in use = {expected} bytes",
        used.len()
    );
    // Every byte of the reserved sectors, FATs and root directory is mapped.
    assert!(inside(&used, 0, data_start), "fat12: metadata not mapped");
    // Every cluster of every remaining file and directory (from mshowfat) is mapped.
    let mut paths: Vec<String> = kept
        .iter()
        .filter(|f| f.len > 0)
        .map(|f| f.rel.clone())
        .collect();
    paths.extend(["sub".to_string(), "sub/deeper".to_string()]);
    let mut file_bytes = 0;
    for p in &paths {
        for (a, b) in mshowfat_clusters(&img, p) {
            let off = data_start + (a - 2) * cluster;
            let len = (b - a + 1) * cluster;
            file_bytes += len;
            assert!(
                inside(&used, off, len),
                "fat12: clusters {a}-{b} of {p} not mapped"
            );
        }
    }
    println!(
        "fat12: all {file_bytes} bytes of the clusters of {} files/dirs are mapped",
        paths.len()
    );
    assert!(ours >= expected, "fat12: map smaller than fsck.fat's count");
    assert!(
        (ours - expected) * 100 <= expected,
        "fat12: map {ours} exceeds fsck.fat's {expected} by more than 1%"
    );
}
