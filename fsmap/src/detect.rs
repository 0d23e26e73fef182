// SPDX-License-Identifier: GPL-2.0-or-later
//! Filesystem detection from on-disk signatures, and filesystem names.
//!
//! [`detect`] returns a precise, partclone-style name (`"ext4"`, `"fat16"`,
//! `"xfs"`, ...). [`canonical_fs_name`] maps such names and common aliases
//! to a family (`"ext"`, `"fat"`, ...), [`fs_variant`] keeps the ext/FAT
//! variant, and [`partclone_module_for`] names the `partclone.<module>`
//! executable for a filesystem.

use std::io::{Read, Seek};

use crate::fat::fat_geometry;
use crate::io::{be16, has_at, le16, le32, read_up_to};
use crate::FsError;

/// Bytes read from the start of the device: everything up to and including
/// the btrfs / reiserfs superblocks at 64 KiB.
const PROBE_LEN: usize = 0x10000 + 0x1000;

/// Recognise the filesystem on `dev` from its on-disk signatures.
///
/// Returns one of `"ext2"`, `"ext3"`, `"ext4"`, `"ntfs"`, `"exfat"`,
/// `"fat12"`, `"fat16"`, `"fat32"`, `"xfs"`, `"btrfs"`, `"f2fs"`,
/// `"hfsplus"`, `"apfs"`, `"minix"`, `"reiser4"`, `"reiserfs"`, `"vmfs"`,
/// or `None` when nothing is recognised. Only I/O errors are errors; a short
/// device is probed as far as it goes.
pub fn detect<R: Read + Seek>(dev: &mut R) -> Result<Option<&'static str>, FsError> {
    let b = read_up_to(dev, 0, PROBE_LEN)?;
    if let Some(name) = detect_in(&b) {
        return Ok(Some(name));
    }
    // VMFS: the LVM volume header at 1 MiB or the filesystem info at 2 MiB.
    for (off, magic) in [(0x10_0000u64, 0xC001_D00Du32), (0x20_0000, 0x2FAB_F15E)] {
        let v = read_up_to(dev, off, 4)?;
        if v.len() == 4 && le32(&v, 0) == magic {
            return Ok(Some("vmfs"));
        }
    }
    if is_minix(&b) {
        return Ok(Some("minix"));
    }
    Ok(None)
}

fn detect_in(b: &[u8]) -> Option<&'static str> {
    if has_at(b, 3, b"NTFS    ") && le16(b, 510) == 0xAA55 {
        return Some("ntfs");
    }
    if has_at(b, 3, b"EXFAT   ") {
        // A damaged exFAT boot sector is still exFAT (exfat_usage will say
        // what is wrong with it); only the name counts here.
        return Some("exfat");
    }
    if has_at(b, 0, b"XFSB") {
        return Some("xfs");
    }
    if has_at(b, 32, b"NXSB") {
        return Some("apfs");
    }
    if has_at(b, 0x10040, b"_BHRfS_M") {
        return Some("btrfs");
    }
    // ext2/3/4: magic, and a block size of 1 KiB..64 KiB (s_log_block_size).
    if le16(b, 1024 + 56) == 0xEF53 && le32(b, 1024 + 24) <= 6 {
        return Some(ext_variant(b));
    }
    if le32(b, 1024) == 0xF2F5_2010 {
        return Some("f2fs");
    }
    if is_hfsplus(b) {
        return Some("hfsplus");
    }
    if has_at(b, 0x10000, b"ReIsEr4\0") {
        return Some("reiser4");
    }
    for magic in [&b"ReIsErFs"[..], b"ReIsEr2Fs", b"ReIsEr3Fs"] {
        if has_at(b, 0x10000 + 52, magic) {
            return Some("reiserfs");
        }
    }
    if let Some(fat) = fat_variant(b) {
        return Some(fat);
    }
    None
}

/// ext2/3/4 from the superblock feature flags: any feature that ext3 does
/// not know makes it ext4; otherwise a journal makes it ext3.
fn ext_variant(b: &[u8]) -> &'static str {
    const SB: usize = 1024;
    const COMPAT_HAS_JOURNAL: u32 = 0x0004;
    // incompat features ext3 supports: FILETYPE, RECOVER, JOURNAL_DEV, META_BG
    const INCOMPAT_EXT3: u32 = 0x0002 | 0x0004 | 0x0008 | 0x0010;
    // ro_compat features ext3 supports: SPARSE_SUPER, LARGE_FILE, BTREE_DIR
    const RO_COMPAT_EXT3: u32 = 0x0001 | 0x0002 | 0x0004;
    let compat = le32(b, SB + 0x5C);
    let incompat = le32(b, SB + 0x60);
    let ro_compat = le32(b, SB + 0x64);
    if incompat & !INCOMPAT_EXT3 != 0 || ro_compat & !RO_COMPAT_EXT3 != 0 {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

fn is_hfsplus(b: &[u8]) -> bool {
    let sig = be16(b, 1024);
    let version = be16(b, 1026);
    match sig {
        0x482B => version == 4, // "H+"
        0x4858 => version == 5, // "HX"
        // "BD": HFS wrapper; HFS+ embedded when drEmbedSigWord is "H+".
        0x4244 => be16(b, 1024 + 0x7C) == 0x482B,
        _ => false,
    }
}

fn fat_variant(b: &[u8]) -> Option<&'static str> {
    let bs = b.get(..512)?;
    if le16(bs, 510) != 0xAA55 || !(bs[0] == 0xEB || bs[0] == 0xE9) {
        return None;
    }
    fat_geometry(bs).ok().map(|g| g.fat_type.name())
}

fn is_minix(b: &[u8]) -> bool {
    const SB: usize = 1024;
    if b.len() < SB + 32 {
        return false;
    }
    let magic12 = le16(b, SB + 16);
    if matches!(magic12, 0x137F | 0x138F | 0x2468 | 0x2478) {
        return le16(b, SB) != 0 // s_ninodes
            && le16(b, SB + 4) != 0 // s_imap_blocks
            && le16(b, SB + 6) != 0 // s_zmap_blocks
            && le16(b, SB + 8) != 0 // s_firstdatazone
            && le16(b, SB + 10) == 0; // s_log_zone_size
    }
    if le16(b, SB + 24) == 0x4D5A {
        return le32(b, SB) != 0
            && le16(b, SB + 6) != 0
            && le16(b, SB + 8) != 0
            && le16(b, SB + 10) != 0
            && le16(b, SB + 12) == 0;
    }
    false
}

fn normalize(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.strip_prefix("partclone.") {
        Some(rest) => rest.to_string(),
        None => n,
    }
}

/// Map a filesystem name or common alias (any case, optionally prefixed by
/// `partclone.`) to its family: `"ext"`, `"ntfs"`, `"fat"`, `"exfat"`,
/// `"xfs"`, `"btrfs"`, `"f2fs"`, `"hfsplus"`, `"apfs"`, `"minix"`,
/// `"reiser4"`, `"reiserfs"`, `"vmfs"`, `"nilfs2"` or `"dd"` (raw copy).
/// Use [`fs_variant`] to keep ext2/3/4 and FAT12/16/32 apart.
pub fn canonical_fs_name(name: &str) -> Option<&'static str> {
    Some(match normalize(name).as_str() {
        "ext" | "extfs" | "ext2" | "ext3" | "ext4" | "ext4dev" => "ext",
        "ntfs" | "ntfs3" | "ntfs-3g" => "ntfs",
        "fat" | "vfat" | "fat12" | "fat16" | "fat32" | "msdos" | "msdosfs" => "fat",
        "exfat" => "exfat",
        "xfs" => "xfs",
        "btrfs" => "btrfs",
        "f2fs" => "f2fs",
        "hfsplus" | "hfs+" | "hfsp" => "hfsplus",
        "apfs" => "apfs",
        "minix" => "minix",
        "reiser4" => "reiser4",
        "reiserfs" => "reiserfs",
        "vmfs" | "vmfs3" | "vmfs5" => "vmfs",
        "nilfs2" => "nilfs2",
        "dd" | "raw" => "dd",
        _ => return None,
    })
}

/// Like [`canonical_fs_name`] but keeps the variant when the name has one:
/// `"ext2"`, `"ext3"`, `"ext4"` (also for `"ext4dev"`), `"fat12"`,
/// `"fat16"`, `"fat32"`. Other names give their family.
pub fn fs_variant(name: &str) -> Option<&'static str> {
    match normalize(name).as_str() {
        "ext2" => Some("ext2"),
        "ext3" => Some("ext3"),
        "ext4" | "ext4dev" => Some("ext4"),
        "fat12" => Some("fat12"),
        "fat16" => Some("fat16"),
        "fat32" => Some("fat32"),
        _ => canonical_fs_name(name),
    }
}

/// The partclone module (the `<module>` of the `partclone.<module>`
/// executable) that handles `fs`, e.g. `"fat"` for `"vfat"`, `"extfs"` for
/// `"ext4"`, `"hfsp"` for `"hfsplus"`.
pub fn partclone_module_for(fs: &str) -> Option<&'static str> {
    Some(match canonical_fs_name(fs)? {
        "ext" => "extfs",
        "hfsplus" => "hfsp",
        "fat" => "fat",
        "ntfs" => "ntfs",
        "exfat" => "exfat",
        "xfs" => "xfs",
        "btrfs" => "btrfs",
        "f2fs" => "f2fs",
        "apfs" => "apfs",
        "minix" => "minix",
        "reiser4" => "reiser4",
        "reiserfs" => "reiserfs",
        "vmfs" => "vmfs",
        "nilfs2" => "nilfs2",
        "dd" => "dd",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(canonical_fs_name("EXT4"), Some("ext"));
        assert_eq!(canonical_fs_name("partclone.extfs"), Some("ext"));
        assert_eq!(canonical_fs_name("vfat"), Some("fat"));
        assert_eq!(canonical_fs_name("hfs+"), Some("hfsplus"));
        assert_eq!(canonical_fs_name("raw"), Some("dd"));
        assert_eq!(canonical_fs_name("zfs"), None);
        assert_eq!(fs_variant("ext4dev"), Some("ext4"));
        assert_eq!(fs_variant("FAT16"), Some("fat16"));
        assert_eq!(fs_variant("msdos"), Some("fat"));
        assert_eq!(partclone_module_for("ext3"), Some("extfs"));
        assert_eq!(partclone_module_for("fat32"), Some("fat"));
        assert_eq!(partclone_module_for("hfsplus"), Some("hfsp"));
        assert_eq!(partclone_module_for("xfs"), Some("xfs"));
        assert_eq!(partclone_module_for("nope"), None);
    }

    #[test]
    fn ext_variants() {
        let mut b = vec![0u8; 2048];
        b[1024 + 56] = 0x53;
        b[1024 + 57] = 0xEF;
        assert_eq!(detect_in(&b), Some("ext2"));
        b[1024 + 0x5C] = 0x04; // has_journal
        assert_eq!(detect_in(&b), Some("ext3"));
        b[1024 + 0x60] = 0x42; // filetype | extents
        assert_eq!(detect_in(&b), Some("ext4"));
    }

    #[test]
    fn short_and_empty() {
        assert_eq!(detect_in(&[]), None);
        assert_eq!(detect_in(&[0u8; 100]), None);
        assert!(!is_minix(&[0u8; 10]));
    }
}
