//! Whole-disk partition tables for blockswarm.
//!
//! - [`read_table`]: the GPT (primary header and entries, never a silent fallback to the
//!   backup) or MBR (with extended and logical partitions) of a disk, as byte ranges: the
//!   partitions in Linux's numbering, the ranges that are always copied whatever the
//!   filesystems (everything before the first partition, each EBR), and the smallest target
//!   the layout fits.
//! - [`fit_gpt`]: what `sgdisk -e` does on a copy of a disk on a target of another size.
//! - [`reread_partitions`]: the kernel re-reads a block device's table (BLKRRPART).
//! - [`auto`]: `--target auto`, the one disk that fits.
//!
//! GPT through `gptman`, MBR through `mbrman`.
#![forbid(unsafe_code)]

pub mod auto;
mod fit;
mod gpt;
mod reread;
mod table;

pub use auto::{AutoError, Candidate};
pub use blockswarm_manifest::TableKind;
pub use fit::fit_gpt;
pub use reread::{reread_partitions, sector_size};
pub use table::{has_gpt_signature, read_table, Part, Table};

/// Errors reading or writing a partition table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// Reading or writing the disk failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sector size no disk has.
    #[error("unsupported sector size {0} bytes (expected a power of two from 512 to 65536)")]
    BadSectorSize(u64),
    /// The primary GPT header has the `EFI PART` signature (or sector 0 is a protective MBR)
    /// but the header or its entries are invalid. The backup is never used instead.
    #[error("corrupt GPT: {reason}")]
    CorruptGpt {
        /// What is wrong, in one line.
        reason: String,
    },
    /// Sector 0 is a plausible MBR but its extended partition's chain of EBRs is invalid.
    #[error("corrupt MBR: {reason}")]
    CorruptMbr {
        /// What is wrong, in one line.
        reason: String,
    },
    /// [`fit_gpt`] on a disk without a GPT header at LBA 1.
    #[error("no GPT on the disk: LBA 1 has no \"EFI PART\" header")]
    NoGpt,
    /// The target is too small for the partitions plus the backup GPT at its end.
    #[error(
        "the target ({disk_size} bytes) is too small: the last partition ends at byte \
         {last_end} and the backup GPT needs the sectors after it; at least {need} bytes are needed"
    )]
    TooSmall {
        /// The target's size in bytes.
        disk_size: u64,
        /// The smallest size that fits, in bytes.
        need: u64,
        /// One past the last partition's last byte (or the first usable byte without
        /// partitions).
        last_end: u64,
    },
    /// BLKRRPART returned EINVAL: the kernel does not scan partitions on this device.
    #[error(
        "the kernel does not scan partitions on this device (BLKRRPART: invalid argument; a \
         partition rather than a whole disk, or a loop device attached without --partscan)"
    )]
    NoPartitionScan,
    /// BLKRRPART failed otherwise.
    #[error("re-reading the partition table (BLKRRPART) failed: {reason}")]
    Reread {
        /// Why, in one line.
        reason: String,
    },
}

impl DiskError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
        let context = context.into();
        move |source| DiskError::Io { context, source }
    }
}

/// Checks that `sector_size` is one a disk can have.
pub(crate) fn check_sector_size(sector_size: u64) -> Result<(), DiskError> {
    if sector_size.is_power_of_two() && (512..=65536).contains(&sector_size) {
        Ok(())
    } else {
        Err(DiskError::BadSectorSize(sector_size))
    }
}
