//! The kernel's view of a block device: its sector size, and re-reading its partition table.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;

use gptman::linux::{self, BlockError};

use crate::DiskError;

fn is_block_device(f: &File) -> bool {
    f.metadata().is_ok_and(|m| m.file_type().is_block_device())
}

/// The logical sector size of a block device (BLKSSZGET); 512 for an image file, or when the
/// kernel does not say.
pub fn sector_size(f: &File) -> u64 {
    if !is_block_device(f) {
        return 512;
    }
    f.try_clone()
        .ok()
        .and_then(|mut dup| linux::get_sector_size(&mut dup).ok())
        .unwrap_or(512)
}

/// Asks the kernel to re-read the partition table of a block device (BLKRRPART), so that its
/// partitions appear as they are now on the disk. A regular file (an image) is a no-op.
///
/// A device without partition scanning (a partition, a loop device attached without
/// `--partscan`) gives [`DiskError::NoPartitionScan`]; a device with a partition in use
/// (mounted) gives [`DiskError::Reread`].
pub fn reread_partitions(f: &mut File) -> Result<(), DiskError> {
    if !is_block_device(f) {
        return Ok(());
    }
    linux::reread_partition_table(f).map_err(|e| match e {
        BlockError::RereadTable(errno) => {
            let e = io::Error::from(errno);
            match e.kind() {
                io::ErrorKind::InvalidInput => DiskError::NoPartitionScan,
                io::ErrorKind::ResourceBusy => DiskError::Reread {
                    reason: format!("{e}: a partition of the device is in use (mounted?)"),
                },
                _ => DiskError::Reread {
                    reason: e.to_string(),
                },
            }
        }
        other => DiskError::Reread {
            reason: other.to_string(),
        },
    })
}
