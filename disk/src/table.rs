//! Reading a disk's partition table: GPT (primary only) or MBR with extended and logical
//! partitions, in byte units and Linux's partition numbering.

use std::fs::File;
use std::io;

use mbrman::{MBRHeader, MBRPartitionEntry, MBR};
use tracing::debug;

use crate::gpt::{self, guid_text};
use crate::{check_sector_size, DiskError, TableKind};

/// MBR type of a GPT's protective partition.
const PROTECTIVE_MBR_TYPE: u8 = 0xEE;

/// One partition, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Linux's number: the GPT entry index (1-based, unused entries keep their index); MBR
    /// 1-4 primary or extended, 5.. the logical ones in chain order.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT type GUID in canonical text form, uppercase
    /// (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`), or the MBR type byte (`0x83`).
    pub kind: String,
    /// GPT partition name ("" for MBR).
    pub name: String,
    /// An MBR extended partition: the container of the logical ones (its own bytes are the
    /// EBRs, listed in [`Table::always`]).
    pub is_extended: bool,
}

impl Part {
    /// One past the partition's last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// GPT or MBR.
    pub kind: TableKind,
    /// Bytes per sector the table was read with.
    pub sector_size: u64,
    /// The partitions, in number order (MBR: primaries and extended, then logicals).
    pub partitions: Vec<Part>,
    /// Byte ranges `(offset, length)`, sorted and merged, that are copied in full whatever the
    /// filesystems: everything before the first partition (boot code, the table, the primary
    /// GPT header and entries, data hidden after the table such as GRUB's core.img) and every
    /// EBR of an MBR's extended partition. Not the backup GPT (it is written for the target).
    pub always: Vec<(u64, u64)>,
    /// The smallest target, in bytes, the layout fits: GPT: the end of the last partition plus
    /// the backup entries and header; MBR: the end of the last partition. At least the end of
    /// `always`.
    pub min_size: u64,
}

/// True if the disk has a GPT header signature (`EFI PART`) at LBA 1 for `sector_size`. Says
/// nothing about the header's validity: [`read_table`] checks that.
pub fn has_gpt_signature(f: &File, sector_size: u64) -> Result<bool, DiskError> {
    check_sector_size(sector_size)?;
    gpt::signature_at(f, sector_size)
}

/// Reads the partition table of a disk of `disk_size` bytes with `sector_size`-byte sectors.
///
/// A GPT is recognised by its primary header (`EFI PART` at LBA 1); a primary header or entry
/// array with a bad CRC is [`DiskError::CorruptGpt`] (the backup is never used silently), as is
/// a protective MBR (type 0xEE) without a GPT header. Otherwise sector 0 is an MBR only if it
/// ends in 0x55AA and its entries are plausible (status 0 or 0x80, non-zero type and size,
/// inside the disk, no overlaps), so that a FAT or NTFS boot sector is not taken for one:
/// `Ok(None)` means no partition table.
pub fn read_table(f: &File, disk_size: u64, sector_size: u64) -> Result<Option<Table>, DiskError> {
    check_sector_size(sector_size)?;
    if gpt::signature_at(f, sector_size)? {
        return read_gpt(f, disk_size, sector_size).map(Some);
    }
    read_mbr(f, disk_size, sector_size)
}

fn read_gpt(f: &File, disk_size: u64, ss: u64) -> Result<Table, DiskError> {
    let g = gpt::read_primary(f, disk_size, ss)?;
    let disk_sectors = disk_size / ss;
    let mut partitions = Vec::new();
    for (number, e) in g.used() {
        if e.ending_lba >= disk_sectors {
            return Err(DiskError::CorruptGpt {
                reason: format!(
                    "partition {number} ends at LBA {}, beyond the end of the disk ({disk_sectors} sectors); is the image truncated?",
                    e.ending_lba
                ),
            });
        }
        partitions.push(Part {
            number,
            start: e.starting_lba * ss,
            size: (e.ending_lba - e.starting_lba + 1) * ss,
            kind: guid_text(&e.partition_type_guid),
            name: e.partition_name.as_str().to_owned(),
            is_extended: false,
        });
    }
    let first = g
        .used()
        .map(|(_, e)| e.starting_lba)
        .min()
        .unwrap_or(g.header.first_usable_lba);
    let always = vec![(0, first * ss)];
    let min_size = (g.min_sectors() * ss).max(first * ss);
    Ok(Table {
        kind: TableKind::Gpt,
        sector_size: ss,
        partitions,
        always,
        min_size,
    })
}

/// Why sector 0's entries are not a plausible MBR (None: they are).
fn implausible(entries: &[(usize, &MBRPartitionEntry)], disk_sectors: u64) -> Option<String> {
    let mut spans = Vec::new();
    for &(i, e) in entries {
        let start = u64::from(e.starting_lba);
        let end = start + u64::from(e.sectors);
        if e.sys == 0 || e.sectors == 0 || start == 0 {
            return Some(format!(
                "entry {i} has type {:#04x}, start {start}, {} sectors",
                e.sys, e.sectors
            ));
        }
        if end > disk_sectors {
            return Some(format!(
                "entry {i} ends at sector {end}, beyond the disk's {disk_sectors}"
            ));
        }
        spans.push((start, end, i));
    }
    spans.sort_unstable();
    spans
        .windows(2)
        .find(|w| w[1].0 < w[0].1)
        .map(|w| format!("entries {} and {} overlap", w[0].2, w[1].2))
}

/// The `"EFI PART"` header found at the other usual sector size, for the error message.
fn gpt_elsewhere(f: &File, ss: u64) -> Result<String, DiskError> {
    for other in [512u64, 4096] {
        if other != ss && gpt::signature_at(f, other)? {
            return Ok(format!(
                "; a GPT header is at byte {other}: the disk's sectors are {other} bytes, not {ss}"
            ));
        }
    }
    Ok(String::new())
}

fn read_mbr(f: &File, disk_size: u64, ss: u64) -> Result<Option<Table>, DiskError> {
    let disk_sectors = disk_size / ss;
    if disk_size < 512 {
        return Ok(None);
    }
    let mut r = f;
    let header = match MBRHeader::read_from(&mut r) {
        Ok(h) => h,
        Err(mbrman::Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(mbrman::Error::Io(e)) => return Err(DiskError::io("reading sector 0")(e)),
        Err(e) => {
            debug!("sector 0 is not an MBR: {e}");
            return Ok(None);
        }
    };
    let nonempty: Vec<(usize, &MBRPartitionEntry)> = header
        .iter()
        .filter(|(_, e)| e.sys != 0 || e.starting_lba != 0 || e.sectors != 0)
        .collect();
    if nonempty.is_empty() {
        debug!("sector 0 ends in 0x55AA but has no partition entries: not an MBR");
        return Ok(None);
    }
    // Checked before the sizes: a protective entry's size is in the GPT's sector units.
    if nonempty
        .iter()
        .any(|(_, e)| e.sys == PROTECTIVE_MBR_TYPE && e.starting_lba == 1)
    {
        return Err(DiskError::CorruptGpt {
            reason: format!(
                "sector 0 is a protective MBR (type 0xee) but LBA 1 has no GPT header{}",
                gpt_elsewhere(f, ss)?
            ),
        });
    }
    if let Some(why) = implausible(&nonempty, disk_sectors) {
        debug!("sector 0 ends in 0x55AA but is not an MBR: {why}");
        return Ok(None);
    }
    let extended: Vec<&MBRPartitionEntry> = nonempty
        .iter()
        .map(|(_, e)| *e)
        .filter(|e| e.is_extended())
        .collect();
    if extended.len() > 1 {
        return Err(DiskError::CorruptMbr {
            reason: format!("{} extended partitions (at most one)", extended.len()),
        });
    }
    let mut partitions: Vec<Part> = nonempty
        .iter()
        .map(|&(i, e)| Part {
            number: i as u32,
            start: u64::from(e.starting_lba) * ss,
            size: u64::from(e.sectors) * ss,
            kind: format!("{:#04x}", e.sys),
            name: String::new(),
            is_extended: e.is_extended(),
        })
        .collect();
    let mut always = vec![(0, partitions.iter().map(|p| p.start).min().unwrap_or(0))];
    if let Some(ext) = extended.first() {
        let ext_start = u64::from(ext.starting_lba);
        let ext_end = ext_start + u64::from(ext.sectors);
        always.push((ext_start * ss, ss));
        let sector_u32 = u32::try_from(ss).map_err(|_| DiskError::BadSectorSize(ss))?;
        let mbr = MBR::read_from(&mut r, sector_u32).map_err(|e| match e {
            mbrman::Error::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
                DiskError::io("reading the extended partition's EBRs")(e)
            }
            other => DiskError::CorruptMbr {
                reason: format!("the extended partition's chain of EBRs: {other}"),
            },
        })?;
        let mut number = 5u32;
        for lp in &mbr.logical_partitions {
            let ebr = u64::from(lp.absolute_ebr_lba);
            if ebr < ext_start || ebr >= ext_end {
                return Err(DiskError::CorruptMbr {
                    reason: format!(
                        "an EBR at sector {ebr} lies outside the extended partition (sectors {ext_start}..{ext_end})"
                    ),
                });
            }
            always.push((ebr * ss, ss));
            let e = &lp.partition;
            if e.sys == 0 || e.sectors == 0 {
                continue; // an EBR without a partition: Linux gives it no number
            }
            let start = u64::from(e.starting_lba);
            let end = start + u64::from(e.sectors);
            if start <= ebr || end > ext_end {
                return Err(DiskError::CorruptMbr {
                    reason: format!(
                        "logical partition {number} (sectors {start}..{end}) is not inside the extended partition (sectors {ext_start}..{ext_end}) after its EBR at {ebr}"
                    ),
                });
            }
            partitions.push(Part {
                number,
                start: start * ss,
                size: u64::from(e.sectors) * ss,
                kind: format!("{:#04x}", e.sys),
                name: String::new(),
                is_extended: false,
            });
            number += 1;
        }
    }
    let always = merge(always);
    let min_size = partitions
        .iter()
        .map(Part::end)
        .chain(always.iter().map(|&(o, l)| o + l))
        .max()
        .unwrap_or(0);
    Ok(Some(Table {
        kind: TableKind::Mbr,
        sector_size: ss,
        partitions,
        always,
        min_size,
    }))
}

/// Sorts `(offset, length)` ranges and merges the overlapping or adjacent ones; drops empty
/// ones.
fn merge(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    runs.retain(|&(_, l)| l > 0);
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (o, l) in runs {
        match out.last_mut() {
            Some(last) if o <= last.0 + last.1 => last.1 = last.1.max(o + l - last.0),
            _ => out.push((o, l)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorts_and_joins_touching_ranges() {
        assert_eq!(
            merge(vec![
                (4096, 512),
                (0, 1024),
                (512, 512),
                (9000, 0),
                (4000, 100)
            ]),
            vec![(0, 1024), (4000, 608)]
        );
    }
}
