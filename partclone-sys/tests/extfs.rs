//! ext2/3/4 against the real oracle: images made with mkfs.ext*, populated
//! with `mkfs -d`, fragmented with `debugfs -w -R rm`, then compared with
//! the domain mapfile of `partclone.extfs -D`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use partclone_sys::UsedBlocks;

const IMAGE_SIZE: u64 = 64 * 1024 * 1024;

/// A populated, fragmented ext image in a temporary directory.
struct ExtImage {
    _dir: tempfile::TempDir,
    work: PathBuf,
    image: PathBuf,
}

/// mkfs.<kind> -d a generated tree into a 64 MiB image, then deletes every
/// third file with debugfs.  Checks along the way that deleting freed
/// blocks.  None when an e2fsprogs tool is missing (printed).
fn make_ext_image(kind: &str, block_size: u32, test: &str) -> Option<ExtImage> {
    let mkfs = optional_tool(&format!("mkfs.{kind}"), "e2fsprogs", test)?;
    let debugfs = optional_tool("debugfs", "e2fsprogs", test)?;
    let e2fsck = optional_tool("e2fsck", "e2fsprogs", test)?;

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();
    let tree = work.join("tree");
    let files = populate_tree(&tree, 0x5eed ^ u64::from(block_size) ^ kind.len() as u64);
    let image = work.join(format!("{kind}-{block_size}.img"));
    truncate(&image, IMAGE_SIZE);
    run(Command::new(&mkfs)
        .args(["-F", "-q", "-b", &block_size.to_string(), "-d"])
        .arg(&tree)
        .arg(&image));

    let before = UsedBlocks::open_extfs(&image).expect("open the fresh image");

    // Delete every third file: holes all over the used space.
    let doomed: Vec<&String> = files.iter().step_by(3).collect();
    let mut freed_bytes = 0;
    for rel in &doomed {
        freed_bytes += std::fs::metadata(tree.join(rel)).unwrap().len();
        run(Command::new(&debugfs)
            .arg("-w")
            .arg("-R")
            .arg(format!("rm /{rel}"))
            .arg(&image));
    }
    // The image must still be a consistent filesystem.
    run(Command::new(&e2fsck).args(["-f", "-n"]).arg(&image));

    let after = UsedBlocks::open_extfs(&image).expect("open the fragmented image");
    let freed_blocks = before.used_blocks() - after.used_blocks();
    println!(
        "{kind} {block_size}: deleted {} files ({freed_bytes} bytes): used blocks {} -> {}",
        doomed.len(),
        before.used_blocks(),
        after.used_blocks()
    );
    assert!(
        freed_blocks * u64::from(block_size) >= freed_bytes / 2,
        "deleting {freed_bytes} bytes of files freed only {freed_blocks} blocks"
    );
    Some(ExtImage {
        _dir: dir,
        work,
        image,
    })
}

fn check_against_partclone(kind: &str, block_size: u32, test: &str) {
    let Some(img) = make_ext_image(kind, block_size, test) else {
        return;
    };
    let used = UsedBlocks::open_extfs(&img.image).unwrap();
    assert_eq!(used.fs_type(), kind, "fs type of a mkfs.{kind} image");
    assert_eq!(used.block_size(), u64::from(block_size));
    assert_eq!(used.total_blocks() * used.block_size(), IMAGE_SIZE);
    assert_eq!(used.fs_size(), IMAGE_SIZE);
    assert_eq!(used.device_size(), IMAGE_SIZE);
    // Block 0 holds the boot block (and, with 4 KiB blocks, the superblock).
    assert!(used.is_used(0), "block 0 must count as used");
    assert_runs_consistent(&used);

    let map = partclone_domain_map("partclone.extfs", &img.image, &img.work);
    assert!(
        map.used().first().is_some_and(|r| r.0 == 0),
        "partclone should mark byte 0 used"
    );
    let label = format!("{kind} {}K", block_size / 1024);
    assert_covers_partclone(&label, &used, &map);
}

#[test]
fn ext2_1k_blocks_runs_cover_partclone_used_map() {
    check_against_partclone("ext2", 1024, "ext2_1k_blocks_runs_cover_partclone_used_map");
}

#[test]
fn ext2_4k_blocks_runs_cover_partclone_used_map() {
    check_against_partclone("ext2", 4096, "ext2_4k_blocks_runs_cover_partclone_used_map");
}

#[test]
fn ext3_1k_blocks_runs_cover_partclone_used_map() {
    check_against_partclone("ext3", 1024, "ext3_1k_blocks_runs_cover_partclone_used_map");
}

#[test]
fn ext3_4k_blocks_runs_cover_partclone_used_map() {
    check_against_partclone("ext3", 4096, "ext3_4k_blocks_runs_cover_partclone_used_map");
}

#[test]
fn ext4_1k_blocks_runs_cover_partclone_used_map() {
    check_against_partclone("ext4", 1024, "ext4_1k_blocks_runs_cover_partclone_used_map");
}

#[test]
fn ext4_4k_blocks_runs_cover_partclone_used_map() {
    check_against_partclone("ext4", 4096, "ext4_4k_blocks_runs_cover_partclone_used_map");
}

/// An empty ext4 with 1 KiB blocks: the boot block (block 0, below
/// s_first_data_block = 1) and the superblock in block 1 are used, and the
/// journal is counted.
#[test]
fn ext4_1k_empty_counts_boot_block_superblock_and_journal() {
    let test = "ext4_1k_empty_counts_boot_block_superblock_and_journal";
    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("empty.img");
    truncate(&image, IMAGE_SIZE);
    run(Command::new(mkfs)
        .args(["-F", "-q", "-b", "1024", "-J", "size=4"])
        .arg(&image));
    let used = UsedBlocks::open_extfs(&image).unwrap();
    assert_eq!(used.fs_type(), "ext4");
    assert!(used.is_used(0), "boot block");
    assert!(used.is_used(1), "superblock");
    // A 4 MiB journal alone is 4096 blocks of 1 KiB.
    assert!(
        used.used_blocks() > 4096,
        "only {} used blocks: journal missing?",
        used.used_blocks()
    );
    assert_runs_consistent(&used);
    let map = partclone_domain_map("partclone.extfs", &image, dir.path());
    assert_covers_partclone("empty ext4 1K", &used, &map);
}

/// Opening the same image from several threads at once works and agrees.
#[test]
fn extfs_open_from_threads_agrees() {
    let test = "extfs_open_from_threads_agrees";
    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("t.img");
    truncate(&image, 16 * 1024 * 1024);
    run(Command::new(mkfs).args(["-F", "-q"]).arg(&image));
    let image: &Path = &image;
    let reference = UsedBlocks::open_extfs(image).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(move || UsedBlocks::open_extfs(image).unwrap()))
            .collect();
        for h in handles {
            let other = h.join().unwrap();
            assert_eq!(other.bitmap(), reference.bitmap());
        }
    });
    // UsedBlocks can move to another thread (and is dropped there).
    std::thread::spawn(move || drop(reference)).join().unwrap();
}

/// Filesystems whose bitmap is read in more than one chunk of 8 Mi blocks
/// (the shim's read unit): 9 GiB of 1 KiB blocks (bits shifted by
/// s_first_data_block = 1) and 36 GiB of 4 KiB blocks, both without
/// flex_bg so every group, up to the last, has its own bitmaps and inode
/// table in use.  Sparse image files: a few MiB on disk.
#[test]
fn ext4_without_flex_bg_larger_than_one_read_chunk_matches_partclone() {
    let test = "ext4_without_flex_bg_larger_than_one_read_chunk_matches_partclone";
    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    for (block_size, gib) in [(1024u64, 9u64), (4096, 36)] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("big.img");
        truncate(&image, gib << 30);
        run(Command::new(&mkfs)
            .args(["-F", "-q", "-O", "^flex_bg", "-b", &block_size.to_string()])
            .arg(&image));
        let used = UsedBlocks::open_extfs(&image).unwrap();
        assert!(
            used.total_blocks() > 8 << 20,
            "{} blocks",
            used.total_blocks()
        );
        let last_run = used.runs().last().unwrap();
        assert!(
            last_run.0 > (8u64 << 20) * block_size,
            "expected used blocks past the first chunk, last run {last_run:?}"
        );
        assert_runs_consistent(&used);
        let map = partclone_domain_map("partclone.extfs", &image, dir.path());
        assert_covers_partclone(
            &format!("ext4 {gib} GiB {}K", block_size / 1024),
            &used,
            &map,
        );
    }
}

/// bigalloc (clusters of 4 blocks): partclone 0.3.23 refuses these
/// ("bitmap free count err"), so the oracle is the superblock's free block
/// count on a freshly made filesystem, and every run must cover whole
/// clusters.
#[test]
fn ext4_bigalloc_used_blocks_match_superblock_and_cover_whole_clusters() {
    let test = "ext4_bigalloc_used_blocks_match_superblock_and_cover_whole_clusters";
    let Some(mkfs) = optional_tool("mkfs.ext4", "e2fsprogs", test) else {
        return;
    };
    let Some(dumpe2fs) = optional_tool("dumpe2fs", "e2fsprogs", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 99);
    let image = dir.path().join("bigalloc.img");
    truncate(&image, IMAGE_SIZE);
    run(Command::new(&mkfs)
        .args([
            "-F", "-q", "-b", "4096", "-O", "bigalloc", "-C", "16384", "-d",
        ])
        .arg(&tree)
        .arg(&image));
    let header = run(Command::new(&dumpe2fs).arg("-h").arg(&image));
    let header = String::from_utf8_lossy(&header.stdout);
    let field = |name: &str| -> u64 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs -h"))
            .trim()
            .parse()
            .unwrap()
    };
    let (count, free) = (field("Block count:"), field("Free blocks:"));
    let used = UsedBlocks::open_extfs(&image).unwrap();
    println!(
        "bigalloc: {count} blocks, superblock says {free} free; ours {} used",
        used.used_blocks()
    );
    assert_eq!(used.fs_type(), "ext4");
    assert_eq!(used.total_blocks(), count);
    assert_eq!(used.used_blocks(), count - free);
    for (off, len) in used.runs() {
        assert_eq!(off % 16384, 0, "run at {off} not cluster aligned");
        assert_eq!(len % 16384, 0, "run of {len} bytes not whole clusters");
    }
    assert_runs_consistent(&used);
}
