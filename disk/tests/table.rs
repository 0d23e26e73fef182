//! read_table on real images made by sgdisk, sfdisk, mkfs.vfat and mkntfs, checked against
//! what sfdisk reads from them.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use blockswarm_disk::{read_table, DiskError, Table, TableKind};
use common::*;

fn table(path: &Path) -> Result<Option<Table>, DiskError> {
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    read_table(&f, size, 512)
}

#[test]
fn gpt_with_five_partitions_names_types_and_a_gap_in_the_numbers() {
    if !need_tools("gpt_with_five_partitions", &["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    make_gpt(&img);
    let t = table(&img).unwrap().expect("a GPT");
    println!("{t:#?}");
    assert_eq!(t.kind, TableKind::Gpt);
    assert_eq!(t.sector_size, 512);

    let got: Vec<_> = t
        .partitions
        .iter()
        .map(|p| {
            assert!(!p.is_extended);
            (
                p.number,
                p.start / 512,
                p.size / 512,
                p.kind.clone(),
                p.name.clone(),
            )
        })
        .collect();
    let want: Vec<_> = GPT_PARTS
        .iter()
        .map(|&(n, start, len, _, guid, name)| (n, start, len, guid.to_owned(), name.to_owned()))
        .collect();
    assert_eq!(got, want);
    // sfdisk reads the same table (numbers from its node names, 6 after 4).
    assert_eq!(got, sfdisk_parts(&sfdisk_json(&img)));

    // Everything before the first partition: protective MBR, header, entries, hidden data.
    assert_eq!(t.always, vec![(0, 2048 * 512)]);
    // Last partition ends at LBA 92159; + 32 sectors of backup entries + the backup header.
    assert_eq!(t.min_size, (92160 + 32 + 1) * 512);
}

#[test]
fn mbr_with_a_primary_an_extended_with_two_logicals_and_another_primary() {
    if !need_tools("mbr_with_logicals", &["sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mbr.img");
    make_mbr(&img);
    let t = table(&img).unwrap().expect("an MBR");
    println!("{t:#?}");
    assert_eq!(t.kind, TableKind::Mbr);
    let got: Vec<_> = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start / 512,
                p.size / 512,
                p.kind.clone(),
                p.is_extended,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 2048, 32768, "0x83".to_owned(), false),
            (2, 34816, 65536, "0x05".to_owned(), true),
            (3, 100352, 16384, "0x0c".to_owned(), false),
            (5, 36864, 16384, "0x83".to_owned(), false),
            (6, 55296, 16384, "0x82".to_owned(), false),
        ]
    );
    assert!(t.partitions.iter().all(|p| p.name.is_empty()));
    // sfdisk agrees (its types are bare hex: "83", "5", "c").
    let sf: Vec<_> = sfdisk_parts(&sfdisk_json(&img))
        .into_iter()
        .map(|(n, s, l, ty, _)| (n, s, l, u8::from_str_radix(&ty, 16).unwrap()))
        .collect();
    let ours: Vec<_> = got
        .iter()
        .map(|(n, s, l, ty, _)| (*n, *s, *l, u8::from_str_radix(&ty[2..], 16).unwrap()))
        .collect();
    let mut ours_sorted = ours.clone();
    ours_sorted.sort();
    assert_eq!(ours_sorted, sf);

    // always: sectors 0..2048 (boot code, table, hidden data), and one sector per EBR: the
    // first at the extended partition's start, each pointing at its logical partition.
    assert_eq!(t.always[0], (0, 2048 * 512));
    let ebrs = &t.always[1..];
    assert_eq!(ebrs.len(), 2, "{:?}", t.always);
    assert_eq!(ebrs[0], (34816 * 512, 512));
    let f = File::open(&img).unwrap();
    for (&(off, len), logical_start) in ebrs.iter().zip([36864u64, 55296]) {
        assert_eq!(len, 512);
        let mut ebr = [0u8; 512];
        f.read_exact_at(&mut ebr, off).unwrap();
        assert_eq!(&ebr[510..], &[0x55, 0xAA], "EBR signature at byte {off}");
        let rel = u32::from_le_bytes(ebr[446 + 8..446 + 12].try_into().unwrap());
        assert_eq!(off / 512 + u64::from(rel), logical_start);
    }
    assert_eq!(t.min_size, (100352 + 16384) * 512);
}

#[test]
fn corrupt_primary_gpt_header_or_entries_are_errors_not_the_backup() {
    if !need_tools("corrupt_gpt", &["sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    make_gpt(&img);
    // sgdisk itself would use the backup: the damage is only in the primary.
    for (what, offset, needle) in [
        ("header (disk GUID)", 512 + 60, "primary header's CRC32"),
        (
            "header (last usable LBA)",
            512 + 48,
            "primary header's CRC32",
        ),
        (
            "entries (name of 1)",
            1024 + 56 + 2,
            "partition entries' CRC32",
        ),
        (
            "entries (unused entry 5)",
            1024 + 4 * 128 + 17,
            "partition entries' CRC32",
        ),
    ] {
        let bad = dir.path().join("bad.img");
        std::fs::copy(&img, &bad).unwrap();
        flip(&bad, offset);
        let e = table(&bad).unwrap_err();
        let msg = e.to_string();
        println!("{what}: {msg}");
        assert!(matches!(e, DiskError::CorruptGpt { .. }), "{what}: {e:?}");
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    // A protective MBR whose GPT header is gone.
    let bad = dir.path().join("bad.img");
    std::fs::copy(&img, &bad).unwrap();
    File::options()
        .write(true)
        .open(&bad)
        .unwrap()
        .write_all_at(&[0; 512], 512)
        .unwrap();
    let e = table(&bad).unwrap_err();
    println!("no header: {e}");
    assert!(matches!(e, DiskError::CorruptGpt { .. }));
    assert!(e.to_string().contains("protective MBR"));
}

#[test]
fn a_gpt_read_with_the_wrong_sector_size_says_so() {
    if !need_tools("gpt_wrong_sector_size", &["sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    make_gpt(&img);
    let f = File::open(&img).unwrap();
    let e = read_table(&f, IMAGE_SIZE, 4096).unwrap_err();
    println!("{e}");
    assert!(e
        .to_string()
        .contains("a GPT header is at byte 512: the disk's sectors are 512 bytes, not 4096"));
    assert!(matches!(
        read_table(&f, IMAGE_SIZE, 1000),
        Err(DiskError::BadSectorSize(1000))
    ));
}

#[test]
fn filesystems_without_a_table_are_not_taken_for_an_mbr() {
    if !need_tools("filesystems_without_table", &["mkfs.vfat", "mkntfs"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fat = dir.path().join("fat32.img");
    sparse(&fat, IMAGE_SIZE);
    run_ok("mkfs.vfat", &["-F", "32", fat.to_str().unwrap()]);
    let ntfs = dir.path().join("ntfs.img");
    sparse(&ntfs, IMAGE_SIZE);
    run_ok("mkntfs", &["-F", "-Q", "-q", ntfs.to_str().unwrap()]);
    let zero = dir.path().join("zero.img");
    sparse(&zero, IMAGE_SIZE);
    for img in [&fat, &ntfs, &zero] {
        let mut sector = [0u8; 512];
        File::open(img)
            .unwrap()
            .read_exact_at(&mut sector, 0)
            .unwrap();
        if img != &zero {
            // A boot sector with the same signature as an MBR: only the entries tell.
            assert_eq!(&sector[510..], &[0x55, 0xAA], "{}", img.display());
        }
        assert_eq!(table(img).unwrap(), None, "{}", img.display());
    }
    // A file shorter than a sector has no table either.
    let tiny = dir.path().join("tiny.img");
    sparse(&tiny, 100);
    assert_eq!(table(&tiny).unwrap(), None);
}
