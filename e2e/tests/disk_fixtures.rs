//! The whole-disk fixtures and the clone checks of `blockswarm_e2e::disk`, tested without
//! blockswarm: the fixtures pass their own checks (sgdisk -v, fsck of every partition, files),
//! a clone made with `cp` + `sgdisk -e` on a 25% larger file passes them, directly and through
//! a loop device, and broken copies (stale backup GPT, a flipped byte in the hidden sectors,
//! boot code, an EBR or a file, a damaged filesystem or swap header, a changed table) fail
//! them. So a whole_disk.rs test passing means the clone is right.

use std::path::Path;

use blockswarm_e2e::disk::*;
use blockswarm_e2e::random_file;

/// Applies `mutate` to `copy`, expects a problem containing `want`, restores the bytes of
/// `[off, off + len)`.
fn expect_caught(src: &Disk, copy: &Path, (off, len): (u64, usize), want: &str, mutate: &dyn Fn()) {
    let saved = read_at(copy, off, len);
    mutate();
    let p = clone_problems(src, copy);
    assert!(
        p.iter().any(|l| l.contains(want)),
        "a broken copy ({want}) passed the checks: {p:#?}"
    );
    println!("caught `{want}`: {}", p.join(" / "));
    write_at(copy, off, &saved);
}

fn randomize(path: &Path, off: u64, len: u64, seed: u64) {
    let tmp = path.with_extension("rnd");
    random_file(&tmp, len, seed);
    write_at(path, off, &std::fs::read(&tmp).unwrap());
    std::fs::remove_file(tmp).unwrap();
}

/// Byte offset on the disk of the first data block of `/name` in the ext* partition `part`.
fn ext_file_offset(disk: &Path, part: &Part, name: &str) -> u64 {
    let l = LoopDev::slice(disk, part.start, part.size, false);
    let stats = run_out(tool("debugfs").args(["-R", "stats"]).arg(&l.dev));
    let bs: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let blocks = run_out(
        tool("debugfs")
            .args(["-R", &format!("blocks /{name}")])
            .arg(&l.dev),
    );
    let first: u64 = blocks.split_whitespace().next().unwrap().parse().unwrap();
    part.start + first * bs
}

#[test]
fn gpt_fixture_passes_the_checks_and_broken_clones_fail_them() {
    if !need_tools("gpt_fixture", &[]) {
        return;
    }
    let dir = scratch();
    let src = gpt_disk(dir.path(), 1);
    let v = run_out(tool("sgdisk").arg("-v").arg(&src.path));
    assert!(
        v.contains("No problems found"),
        "sgdisk -v on the fixture:\n{v}"
    );
    assert_clone(&src, &src.path);
    let copy = dir.path().join("ref.img");
    reference_clone(&src, &copy, grown_size(src.size));
    assert_clone(&src, &copy);
    {
        // The same checks through a loop device, whose partitions the kernel then knows.
        let l = LoopDev::whole(&copy);
        assert_clone(&src, &l.dev);
        l.ensure_partitions();
        let want: Vec<_> = src
            .parts
            .iter()
            .map(|p| (p.number, p.start / SECTOR, p.size / SECTOR))
            .collect();
        assert_eq!(l.kernel_partitions(), want);
        assert!(l.part(5).exists(), "{} missing", l.part(5).display());
    }

    // assert_map refuses a map of every byte (backup GPT, free space) and an empty one.
    let all = format!("0x0 ?\n0x00000000  0x{:08X}  +\n", src.size);
    assert!(std::panic::catch_unwind(|| assert_map(&src, &all)).is_err());
    assert!(std::panic::catch_unwind(|| assert_map(&src, "0x0 ?\n")).is_err());

    // Grown but the backup table left where it was: sgdisk -v and the header check object.
    let stale = dir.path().join("stale.img");
    run_out(tool("cp").arg("--sparse=always").arg(&src.path).arg(&stale));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_len(grown_size(src.size))
        .unwrap();
    let p = clone_problems(&src, &stale);
    assert!(p.iter().any(|l| l.starts_with("sgdisk -v")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("backup LBA")), "{p:#?}");
    std::fs::remove_file(&stale).unwrap();

    let hidden = 100 * SECTOR + 7;
    expect_caught(&src, &copy, (hidden, 1), "hidden sectors", &|| {
        flip_byte(&copy, hidden)
    });
    expect_caught(&src, &copy, (10, 1), "boot code", &|| flip_byte(&copy, 10));
    let root = src.part(2);
    let at = ext_file_offset(&copy, root, "file3.bin");
    expect_caught(&src, &copy, (at, 1), "file file3.bin differs", &|| {
        flip_byte(&copy, at)
    });
    let ntfs = src.part(3);
    expect_caught(
        &src,
        &copy,
        (ntfs.start, 1 << 20),
        "partition 3 (ntfs)",
        &|| randomize(&copy, ntfs.start, 1 << 20, 7),
    );
    let efi = src.part(1);
    expect_caught(
        &src,
        &copy,
        (efi.start, 4096),
        "partition 1 (fat32)",
        &|| randomize(&copy, efi.start, 4096, 8),
    );
    let swap = src.part(4);
    expect_caught(
        &src,
        &copy,
        (swap.start, 4096),
        "partition 4 (swap)",
        &|| randomize(&copy, swap.start, 4096, 9),
    );
    let xfs = src.part(5);
    expect_caught(&src, &copy, (xfs.start, 512), "partition 5 (xfs)", &|| {
        randomize(&copy, xfs.start, 512, 10)
    });
    assert_clone(&src, &copy);
    // Last, as it rewrites both tables: a renamed partition.
    run_out(tool("sgdisk").args(["-c", "3:renamed"]).arg(&copy));
    let p = clone_problems(&src, &copy);
    assert!(
        p.iter().any(|l| l.starts_with("sfdisk -d differs")),
        "{p:#?}"
    );
}

#[test]
fn mbr_fixture_passes_the_checks_and_broken_clones_fail_them() {
    if !need_tools("mbr_fixture", &[]) {
        return;
    }
    let dir = scratch();
    let src = mbr_disk(dir.path(), 2);
    assert_clone(&src, &src.path);
    let copy = dir.path().join("ref.img");
    reference_clone(&src, &copy, grown_size(src.size));
    assert_clone(&src, &copy);
    let grub = 1000 * SECTOR + 3;
    expect_caught(&src, &copy, (grub, 1), "hidden sectors", &|| {
        flip_byte(&copy, grub)
    });
    let ebrs = ebr_sectors(&src.path, &src);
    let ebr = ebrs[1] * SECTOR + 100; // boot-code area of the second EBR: same table
    expect_caught(&src, &copy, (ebr, 1), "EBR at sector", &|| {
        flip_byte(&copy, ebr)
    });
    let l5 = src.part(5);
    let at = ext_file_offset(&copy, l5, "file2.bin");
    expect_caught(&src, &copy, (at, 1), "file file2.bin differs", &|| {
        flip_byte(&copy, at)
    });
    let fat = src.part(6);
    expect_caught(
        &src,
        &copy,
        (fat.start, 512),
        "partition 6 (fat16)",
        &|| randomize(&copy, fat.start, 512, 11),
    );
    assert_clone(&src, &copy);
    // A logical partition's type changed: the layouts differ.
    let script = run_out(tool("sfdisk").arg("-d").arg(&copy));
    let l5_line = format!("{}5 :", copy.display());
    let changed: String = script
        .lines()
        .map(|l| match l.starts_with(&l5_line) {
            true => l.replace("type=83", "type=8e") + "\n",
            false => format!("{l}\n"),
        })
        .collect();
    assert_ne!(script, changed);
    run_with_input(tool("sfdisk").arg("-q").arg(&copy), &changed);
    let p = clone_problems(&src, &copy);
    assert!(
        p.iter().any(|l| l.starts_with("sfdisk -d differs")),
        "{p:#?}"
    );
}
