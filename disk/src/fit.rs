//! A copied GPT made valid for the target's size: what `sgdisk -e` does.

use std::fs::File;
use std::os::unix::fs::FileExt;

use mbrman::MBRHeader;
use tracing::debug;

use crate::gpt::{self, Window};
use crate::{check_sector_size, DiskError};

/// Offset of the partition entries in sector 0, and of the size field in an entry.
const MBR_ENTRIES: u64 = 446;
const MBR_ENTRY_LEN: u64 = 16;
const MBR_SIZE_FIELD: u64 = 12;

/// Makes the GPT copied onto a disk of `disk_size` bytes valid for that size, as `sgdisk -e`
/// does: the backup header moves to the last sector and the backup entries just before it,
/// the last usable LBA follows, and the CRCs are recomputed. The primary header's first usable
/// LBA, disk GUID, entry array location and the entries themselves stay as they are. A pure
/// protective MBR (exactly one entry, type 0xEE, from LBA 1) gets its size updated; a hybrid
/// MBR and the boot code are not touched. On a target of the source's size nothing changes:
/// the primary header and sector 0 are not rewritten.
///
/// Fails with [`DiskError::TooSmall`] (nothing written) if a partition would end past the new
/// last usable LBA, with [`DiskError::NoGpt`] / [`DiskError::CorruptGpt`] if the primary GPT is
/// missing or invalid.
pub fn fit_gpt(f: &mut File, disk_size: u64, sector_size: u64) -> Result<(), DiskError> {
    check_sector_size(sector_size)?;
    let ss = sector_size;
    let g = gpt::read_primary(f, disk_size, ss)?;
    let sectors = disk_size / ss;
    let need = g.min_sectors();
    if sectors < need {
        return Err(DiskError::TooSmall {
            disk_size,
            need: need * ss,
            last_end: g.last_end_lba() * ss,
        });
    }
    let mut primary = g.header.clone();
    primary.backup_lba = sectors - 1;
    primary.last_usable_lba = sectors - 2 - g.array_sectors;
    primary.update_partition_entry_array_crc32(&g.entries);
    primary.update_crc32_checksum();

    // The backup entries and header, in one write: [last_usable + 1, sectors).
    let mut backup = primary.clone();
    backup.primary_lba = primary.backup_lba;
    backup.backup_lba = primary.primary_lba;
    backup.partition_entry_lba = primary.last_usable_lba + 1;
    let base = backup.partition_entry_lba * ss;
    let mut w = Window::new(base, vec![0; ((g.array_sectors + 1) * ss) as usize]);
    backup
        .write_into(&mut w, ss, &g.entries)
        .map_err(|e| DiskError::CorruptGpt {
            reason: format!("the backup GPT cannot be encoded: {e}"),
        })?;
    f.write_all_at(&w.buf, base)
        .map_err(DiskError::io("writing the backup GPT"))?;

    if primary != g.header {
        // Only the header sector changes; the entries it also writes are the same bytes.
        let mut sector = vec![0; ss as usize];
        f.read_exact_at(&mut sector, ss)
            .map_err(DiskError::io("reading the primary GPT header"))?;
        let mut w = Window::new(ss, sector);
        primary
            .write_into(&mut w, ss, &g.entries)
            .map_err(|e| DiskError::CorruptGpt {
                reason: format!("the primary GPT header cannot be encoded: {e}"),
            })?;
        f.write_all_at(&w.buf, ss)
            .map_err(DiskError::io("writing the primary GPT header"))?;
        debug!(
            backup_lba = primary.backup_lba,
            last_usable_lba = primary.last_usable_lba,
            "primary GPT header updated"
        );
    }
    fit_protective_mbr(f, sectors)?;
    f.sync_data()
        .map_err(DiskError::io("flushing the partition table"))
}

/// Sets the size of a pure protective MBR's one entry to cover the disk (capped at 2^32 - 1
/// sectors); a hybrid MBR or anything else in sector 0 is left alone.
fn fit_protective_mbr(f: &File, sectors: u64) -> Result<(), DiskError> {
    let mut r = f;
    let Ok(header) = MBRHeader::read_from(&mut r) else {
        debug!("sector 0 is not an MBR: no protective MBR to update");
        return Ok(());
    };
    let used: Vec<_> = header.iter().filter(|(_, e)| e.is_used()).collect();
    let [(i, e)] = used.as_slice() else {
        debug!("{} MBR entries: a hybrid MBR is not touched", used.len());
        return Ok(());
    };
    if e.sys != 0xEE || e.starting_lba != 1 {
        debug!("sector 0's one entry is not a protective one: not touched");
        return Ok(());
    }
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    if e.sectors == size {
        return Ok(());
    }
    let at = MBR_ENTRIES + (*i as u64 - 1) * MBR_ENTRY_LEN + MBR_SIZE_FIELD;
    f.write_all_at(&size.to_le_bytes(), at)
        .map_err(DiskError::io("writing the protective MBR's size"))
}
