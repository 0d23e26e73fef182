//! The primary GPT (header at LBA 1 and its entry array), read through `gptman` and checked;
//! shared by [`crate::read_table`] and [`crate::fit_gpt`].

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use gptman::{GPTHeader, GPTPartitionEntry};

use crate::DiskError;

/// The only entry size `gptman` reads (the UEFI minimum; larger ones are not in use).
const ENTRY_SIZE: u32 = 128;
/// Most entries accepted (gdisk's default is 128; this bounds the memory a bad header costs).
const MAX_ENTRIES: u32 = 65536;

/// A checked primary GPT.
pub(crate) struct PrimaryGpt {
    /// The header as read (its CRCs are valid).
    pub header: GPTHeader,
    /// Every entry of the array, used or not, in index order (index = position + 1).
    pub entries: Vec<GPTPartitionEntry>,
    /// Sectors the entry array takes.
    pub array_sectors: u64,
}

impl PrimaryGpt {
    /// The used entries with their Linux partition number (entry index, 1-based).
    pub fn used(&self) -> impl Iterator<Item = (u32, &GPTPartitionEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_used())
            .map(|(i, e)| (i as u32 + 1, e))
    }

    /// The smallest disk (in sectors) this GPT fits with its backup at the end: the last
    /// partition (or the first usable sector), the backup entries, the backup header.
    pub fn min_sectors(&self) -> u64 {
        let last = self
            .used()
            .map(|(_, e)| e.ending_lba)
            .max()
            .unwrap_or(0)
            .max(self.header.first_usable_lba);
        last + 1 + self.array_sectors + 1
    }

    /// One past the last sector of the last partition (or the first usable sector).
    pub fn last_end_lba(&self) -> u64 {
        self.used()
            .map(|(_, e)| e.ending_lba + 1)
            .max()
            .unwrap_or(self.header.first_usable_lba)
    }
}

fn corrupt(reason: impl Into<String>) -> DiskError {
    DiskError::CorruptGpt {
        reason: reason.into(),
    }
}

/// True if LBA 1 (at `sector_size`) starts with the `EFI PART` signature.
pub(crate) fn signature_at(f: &File, offset: u64) -> Result<bool, DiskError> {
    let mut sig = [0u8; 8];
    match f.read_exact_at(&mut sig, offset) {
        Ok(()) => Ok(&sig == b"EFI PART"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(DiskError::io(format!("reading byte {offset} of the disk"))(
            e,
        )),
    }
}

/// Reads and checks the primary GPT: header at LBA 1 with a valid CRC, revision 1.0, 128-byte
/// entries, the entry array inside the disk and before the first usable LBA with a valid CRC,
/// the used entries inside the usable LBAs and not overlapping. Never looks at the backup.
/// The header's backup and last-usable LBAs are not checked against `disk_size` (a copy on a
/// target of another size still has the source's).
pub(crate) fn read_primary(
    f: &File,
    disk_size: u64,
    sector_size: u64,
) -> Result<PrimaryGpt, DiskError> {
    let ss = sector_size;
    if !signature_at(f, ss)? {
        return Err(DiskError::NoGpt);
    }
    let mut r = f;
    r.seek(SeekFrom::Start(ss))
        .map_err(DiskError::io("seeking to the GPT header"))?;
    let header = GPTHeader::read_from(&mut r).map_err(|e| match e {
        gptman::Error::InvalidChecksum(stored, computed) => corrupt(format!(
            "the primary header's CRC32 is {stored:#010x} but its bytes give {computed:#010x}; \
             the backup header is not used instead (gdisk can rebuild the primary from it)"
        )),
        gptman::Error::InvalidRevision => corrupt("the primary header's revision is not 1.0"),
        gptman::Error::InvalidHeaderSize => {
            corrupt("the primary header's size field is not 92 bytes")
        }
        other => corrupt(format!("the primary header cannot be read: {other}")),
    })?;
    if header.primary_lba != 1 {
        return Err(corrupt(format!(
            "the header at LBA 1 says it is at LBA {}",
            header.primary_lba
        )));
    }
    if header.size_of_partition_entry != ENTRY_SIZE {
        return Err(corrupt(format!(
            "partition entries of {} bytes (only {ENTRY_SIZE} are supported)",
            header.size_of_partition_entry
        )));
    }
    let n = header.number_of_partition_entries;
    if n == 0 || n > MAX_ENTRIES {
        return Err(corrupt(format!(
            "{n} partition entries (expected 1 to {MAX_ENTRIES})"
        )));
    }
    let array_sectors = (u64::from(n) * u64::from(ENTRY_SIZE)).div_ceil(ss);
    let array_end = header.partition_entry_lba.saturating_add(array_sectors);
    if header.partition_entry_lba < 2 || array_end > header.first_usable_lba {
        return Err(corrupt(format!(
            "the entry array (LBA {}..{}) is not between the header and the first usable LBA {}",
            header.partition_entry_lba, array_end, header.first_usable_lba
        )));
    }
    if array_end.saturating_mul(ss) > disk_size {
        return Err(corrupt(format!(
            "the entry array (LBA {}..{array_end}) lies beyond the end of the disk ({disk_size} bytes)",
            header.partition_entry_lba
        )));
    }
    if header.last_usable_lba < header.first_usable_lba {
        return Err(corrupt(format!(
            "the last usable LBA {} is before the first usable LBA {}",
            header.last_usable_lba, header.first_usable_lba
        )));
    }
    let entries = header.read_partitions(&mut r, ss).map_err(|e| match e {
        gptman::Error::InvalidPartitionEntryArrayChecksum(stored, computed) => corrupt(format!(
            "the primary partition entries' CRC32 is {stored:#010x} but their bytes give \
             {computed:#010x}; the backup entries are not used instead"
        )),
        gptman::Error::Io(e) => DiskError::io("reading the GPT partition entries")(e),
        other => corrupt(format!("the partition entries cannot be read: {other}")),
    })?;
    let gpt = PrimaryGpt {
        header,
        entries,
        array_sectors,
    };
    check_entries(&gpt)?;
    Ok(gpt)
}

/// The used entries lie inside the usable LBAs and do not overlap.
fn check_entries(gpt: &PrimaryGpt) -> Result<(), DiskError> {
    let h = &gpt.header;
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for (number, e) in gpt.used() {
        if e.starting_lba > e.ending_lba
            || e.starting_lba < h.first_usable_lba
            || e.ending_lba > h.last_usable_lba
        {
            return Err(corrupt(format!(
                "partition {number} (LBA {}..={}) is not inside the usable LBAs {}..={}",
                e.starting_lba, e.ending_lba, h.first_usable_lba, h.last_usable_lba
            )));
        }
        spans.push((e.starting_lba, e.ending_lba, number));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 <= w[0].1 {
            return Err(corrupt(format!(
                "partitions {} and {} overlap (LBA {}..={} and {}..={})",
                w[0].2, w[1].2, w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
    }
    Ok(())
}

/// A GUID in its canonical text form, uppercase (the first three fields are little-endian on
/// disk).
pub(crate) fn guid_text(bytes: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes_le(*bytes)
        .hyphenated()
        .encode_upper(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// An in-memory copy of the disk bytes `[base, base + buf.len())` that `gptman` writes into
/// (it seeks to absolute offsets); bytes written outside the window are dropped.
pub(crate) struct Window {
    /// Disk offset of `buf[0]`.
    pub base: u64,
    /// The window's bytes.
    pub buf: Vec<u8>,
    pos: u64,
}

impl Window {
    /// A window of `buf` at disk offset `base`.
    pub fn new(base: u64, buf: Vec<u8>) -> Self {
        Window { base, buf, pos: 0 }
    }
}

impl Write for Window {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let start = self.pos;
        let end = start + data.len() as u64;
        let lo = start.max(self.base);
        let hi = end.min(self.base + self.buf.len() as u64);
        if lo < hi {
            let dst = (lo - self.base) as usize..(hi - self.base) as usize;
            let src = (lo - start) as usize..(hi - start) as usize;
            self.buf[dst].copy_from_slice(&data[src]);
        }
        self.pos = end;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => (self.base + self.buf.len() as u64).checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_canonical_uppercase_with_little_endian_fields() {
        // The EFI system partition type as it is stored on disk.
        let esp = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(guid_text(&esp), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    }

    #[test]
    fn window_keeps_only_bytes_inside_it() {
        let mut w = Window::new(100, vec![0; 10]);
        w.seek(SeekFrom::Start(95)).unwrap();
        w.write_all(&[1; 8]).unwrap(); // 95..103: 100..103 land
        w.seek(SeekFrom::Start(108)).unwrap();
        w.write_all(&[2; 5]).unwrap(); // 108..113: 108..110 land
        w.seek(SeekFrom::Start(500)).unwrap();
        w.write_all(&[3; 5]).unwrap(); // outside
        assert_eq!(w.buf, [1, 1, 1, 0, 0, 0, 0, 0, 2, 2]);
    }
}
