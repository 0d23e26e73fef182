//! The partition layout of a whole-disk manifest: table type, sector size, the smallest disk it
//! fits, and per partition its place, type, name, filesystem and used bytes. It travels in the
//! info dictionary (`info.blockswarm.disk`), so the infohash protects it.

use librqbit_bencode::ByteBuf;
use serde::{Deserialize, Serialize};

use crate::ManifestError;

/// Most partitions a layout may list (GPT's usual 128 entries plus MBR logicals to spare).
pub const MAX_PARTITIONS: usize = 256;
/// Longest partition name, in bytes of UTF-8 (GPT names are 36 UTF-16 code units).
pub const MAX_NAME_LEN: usize = 144;
/// Longest `type` and `fs` strings.
const MAX_TAG_LEN: usize = 40;

/// Which partition table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    Gpt,
    Mbr,
}

impl TableKind {
    /// The name on the wire and in listings: `gpt` or `mbr`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
        }
    }

    fn parse(s: &[u8]) -> Option<TableKind> {
        match s {
            b"gpt" => Some(TableKind::Gpt),
            b"mbr" => Some(TableKind::Mbr),
            _ => None,
        }
    }
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `fs` of an MBR extended partition (a container of logical partitions).
pub const EXTENDED_FS: &str = "extended";

/// One partition of the source disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Linux's number: GPT entry index (1-based); MBR 1-4 primary or extended, 5.. logical.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT type GUID in canonical text form (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`), or the
    /// MBR type byte (`0x83`).
    pub kind: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// What the imager found on it: `ext4`, `fat32`, `ntfs`, `xfs`, `swap`, `extended`, `dd`...
    pub fs: String,
    /// Bytes of this partition that are in the extent map.
    pub used: u64,
}

impl PartitionInfo {
    /// One past the partition's last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// True for an MBR extended partition (it contains the logical ones).
    pub fn is_container(&self) -> bool {
        self.fs == EXTENDED_FS
    }
}

/// The partition layout of a whole-disk manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub table: TableKind,
    /// Logical sector size of the source disk (512 or 4096).
    pub sector_size: u64,
    /// Smallest target this layout fits: the last partition's end, and for GPT room for the
    /// backup entries and header after it.
    pub min_size: u64,
    /// In increasing number order.
    pub partitions: Vec<PartitionInfo>,
}

fn layout_err(msg: impl Into<String>) -> ManifestError {
    ManifestError::Layout(msg.into())
}

impl DiskLayout {
    /// Checks the layout against the disk it describes (`disk_size` bytes, extents ending at
    /// `map_end` at the latest).
    pub fn validate(&self, disk_size: u64, map_end: u64) -> Result<(), ManifestError> {
        if ![512, 1024, 2048, 4096].contains(&self.sector_size) {
            return Err(layout_err(format!(
                "sector size {} is not 512, 1024, 2048 or 4096",
                self.sector_size
            )));
        }
        if self.partitions.len() > MAX_PARTITIONS {
            return Err(layout_err(format!(
                "{} partitions (at most {MAX_PARTITIONS})",
                self.partitions.len()
            )));
        }
        if self.min_size > disk_size || self.min_size < map_end {
            return Err(layout_err(format!(
                "min size {} outside [{map_end}, {disk_size}] (the extents' end, the disk size)",
                self.min_size
            )));
        }
        let ss = self.sector_size;
        let mut prev_number = 0;
        let mut plain: Vec<(u64, u64)> = Vec::new();
        for p in &self.partitions {
            let bad = |why: &str| layout_err(format!("partition {}: {why}", p.number));
            if p.number <= prev_number {
                return Err(bad("numbers are not increasing"));
            }
            prev_number = p.number;
            if p.size == 0 || !p.start.is_multiple_of(ss) || !p.size.is_multiple_of(ss) {
                return Err(bad("empty or not whole sectors"));
            }
            if p.start
                .checked_add(p.size)
                .is_none_or(|e| e > self.min_size)
            {
                return Err(bad("ends past the layout's min size"));
            }
            if p.used > p.size {
                return Err(bad("more used bytes than its size"));
            }
            if p.name.len() > MAX_NAME_LEN || p.kind.len() > MAX_TAG_LEN || p.fs.len() > MAX_TAG_LEN
            {
                return Err(bad("name, type or fs too long"));
            }
            if p.is_container() {
                if self.table != TableKind::Mbr {
                    return Err(bad("an extended partition outside an MBR"));
                }
            } else {
                plain.push((p.start, p.end()));
            }
        }
        plain.sort_unstable();
        if plain.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(layout_err("partitions overlap"));
        }
        Ok(())
    }
}

// ---- wire form (fields in bencode key order) ----

#[derive(Serialize, Deserialize)]
pub(crate) struct WirePartition<'a> {
    #[serde(borrow)]
    fs: ByteBuf<'a>,
    #[serde(borrow)]
    name: ByteBuf<'a>,
    number: u64,
    size: u64,
    start: u64,
    #[serde(rename = "type", borrow)]
    kind: ByteBuf<'a>,
    used: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireDisk<'a> {
    #[serde(rename = "min size")]
    min_size: u64,
    #[serde(borrow)]
    partitions: Vec<WirePartition<'a>>,
    #[serde(rename = "sector size")]
    sector_size: u64,
    #[serde(borrow)]
    table: ByteBuf<'a>,
}

fn text(field: &'static str, b: &[u8]) -> Result<String, ManifestError> {
    String::from_utf8(b.to_vec()).map_err(|_| ManifestError::Utf8(field))
}

impl<'a> WireDisk<'a> {
    pub(crate) fn from_layout(l: &'a DiskLayout) -> Self {
        WireDisk {
            min_size: l.min_size,
            partitions: l
                .partitions
                .iter()
                .map(|p| WirePartition {
                    fs: ByteBuf(p.fs.as_bytes()),
                    name: ByteBuf(p.name.as_bytes()),
                    number: p.number.into(),
                    size: p.size,
                    start: p.start,
                    kind: ByteBuf(p.kind.as_bytes()),
                    used: p.used,
                })
                .collect(),
            sector_size: l.sector_size,
            table: ByteBuf(l.table.as_str().as_bytes()),
        }
    }

    pub(crate) fn to_layout(&self) -> Result<DiskLayout, ManifestError> {
        let table = TableKind::parse(self.table.0).ok_or_else(|| {
            layout_err(format!(
                "unknown table {:?}",
                String::from_utf8_lossy(self.table.0)
            ))
        })?;
        if self.partitions.len() > MAX_PARTITIONS {
            return Err(layout_err(format!(
                "{} partitions (at most {MAX_PARTITIONS})",
                self.partitions.len()
            )));
        }
        let partitions = self
            .partitions
            .iter()
            .map(|p| {
                Ok(PartitionInfo {
                    number: u32::try_from(p.number)
                        .map_err(|_| layout_err(format!("partition number {}", p.number)))?,
                    start: p.start,
                    size: p.size,
                    kind: text("disk partition type", p.kind.0)?,
                    name: text("disk partition name", p.name.0)?,
                    fs: text("disk partition fs", p.fs.0)?,
                    used: p.used,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        Ok(DiskLayout {
            table,
            sector_size: self.sector_size,
            min_size: self.min_size,
            partitions,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn gpt_layout() -> DiskLayout {
        let mib = 1u64 << 20;
        DiskLayout {
            table: TableKind::Gpt,
            sector_size: 512,
            min_size: 10 * mib + 33 * 512,
            partitions: vec![
                PartitionInfo {
                    number: 1,
                    start: mib,
                    size: 4 * mib,
                    kind: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into(),
                    name: "EFI system".into(),
                    fs: "fat32".into(),
                    used: 65536,
                },
                PartitionInfo {
                    number: 3,
                    start: 5 * mib,
                    size: 5 * mib,
                    kind: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
                    name: "root".into(),
                    fs: "ext4".into(),
                    used: mib,
                },
            ],
        }
    }

    #[test]
    fn a_sound_layout_validates_and_bad_ones_do_not() {
        let l = gpt_layout();
        let disk = 20 << 20;
        l.validate(disk, 6 << 20).unwrap();
        let mut bad = l.clone();
        bad.partitions[1].start = 4 << 20; // overlaps partition 1
        assert!(bad.validate(disk, 0).is_err());
        let mut bad = l.clone();
        bad.partitions[1].number = 1;
        assert!(bad.validate(disk, 0).is_err());
        let mut bad = l.clone();
        bad.partitions[0].size += 1; // not whole sectors
        assert!(bad.validate(disk, 0).is_err());
        let mut bad = l.clone();
        bad.min_size = disk + 1;
        assert!(bad.validate(disk, 0).is_err());
        assert!(
            l.validate(disk, l.min_size + 1).is_err(),
            "extents past min size"
        );
        let mut bad = l.clone();
        bad.partitions[1].size = u64::MAX - 1024; // overflowing end
        assert!(bad.validate(disk, 0).is_err());
        let mut bad = l.clone();
        bad.partitions[0].fs = EXTENDED_FS.into(); // a container on GPT
        assert!(bad.validate(disk, 0).is_err());
    }

    #[test]
    fn logicals_may_lie_inside_their_extended_partition() {
        let mib = 1u64 << 20;
        let p = |number, start, size, fs: &str| PartitionInfo {
            number,
            start,
            size,
            kind: "0x83".into(),
            name: String::new(),
            fs: fs.into(),
            used: 0,
        };
        let l = DiskLayout {
            table: TableKind::Mbr,
            sector_size: 512,
            min_size: 30 * mib,
            partitions: vec![
                p(1, mib, 9 * mib, "ext4"),
                p(2, 10 * mib, 20 * mib, EXTENDED_FS),
                p(5, 11 * mib, 9 * mib, "ext2"),
                p(6, 21 * mib, 9 * mib, "fat16"),
            ],
        };
        l.validate(30 * mib, 30 * mib).unwrap();
        let mut bad = l.clone();
        bad.partitions[3].start = 19 * mib; // logicals overlap
        assert!(bad.validate(30 * mib, 0).is_err());
    }
}
