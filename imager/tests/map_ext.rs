//! Acceptance 1: `imager --map` on ext2/3/4 images (1 KiB and 4 KiB blocks), populated with
//! `mkfs.ext* -d` and then fragmented by deleting files with debugfs, covers every byte that
//! `partclone.extfs -D` marks used and adds at most 1%.

mod common;

use common::*;

/// Builds an ext image of `size_mib` MiB with `mkfs.<kind> -b <block> -d TREE`, deletes every
/// third file with `debugfs -w -R "rm /name"`, checks it with `e2fsck -fn` and compares the
/// maps.
fn ext_case(kind: &str, block: u32, size_mib: u64, seed: u64) {
    let test = format!("{kind}_{}k", block / 1024);
    let mkfs = format!("mkfs.{kind}");
    if !need_tools(&test, &[&mkfs, "debugfs", "e2fsck", "partclone.extfs"]) {
        return;
    }
    let s = Scratch::new(&test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, seed, 40, 2 << 20);
    let img = s.join(format!("{test}.img"));
    sparse_file(&img, size_mib << 20);
    run_ok(
        tool(&mkfs)
            .args(["-q", "-F", "-b", &block.to_string(), "-d"])
            .arg(&tree)
            .arg(&img),
    );
    let before_map = imager_map(&img, None).used();
    let before = total(&before_map);
    let gone = pick(&files, 2, 3);
    for f in &gone {
        run_ok(
            tool("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("rm /{}", f.rel))
                .arg(&img),
        );
    }
    run_ok(tool("e2fsck").arg("-fn").arg(&img));
    let c = assert_covers_partclone(&test, &img, None, "extfs");
    let runs_after = imager_map(&img, None).used().len();
    // The deletions must show in the map: at least the deleted files' bytes were freed.
    let deleted: u64 = gone.iter().map(|f| f.len).sum();
    println!(
        "{test}: used {before} bytes in {} runs before deleting {} files ({deleted} bytes), \
         {} bytes in {runs_after} runs after",
        before_map.len(),
        gone.len(),
        c.ours
    );
    assert!(
        runs_after > before_map.len(),
        "{test}: deleting files left no holes in the used map"
    );
    assert!(deleted > 0);
    assert!(
        before >= c.ours + deleted,
        "{test}: deleting {deleted} bytes only shrank the map from {before} to {}",
        c.ours
    );
}

#[test]
fn ext2_1k_map_covers_partclone() {
    ext_case("ext2", 1024, 64, 21);
}

#[test]
fn ext2_4k_map_covers_partclone() {
    ext_case("ext2", 4096, 64, 24);
}

#[test]
fn ext3_1k_map_covers_partclone() {
    ext_case("ext3", 1024, 64, 31);
}

#[test]
fn ext3_4k_map_covers_partclone() {
    ext_case("ext3", 4096, 96, 34);
}

#[test]
fn ext4_1k_map_covers_partclone() {
    ext_case("ext4", 1024, 64, 41);
}

#[test]
fn ext4_4k_map_covers_partclone() {
    ext_case("ext4", 4096, 128, 44);
}
