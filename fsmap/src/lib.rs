// SPDX-License-Identifier: GPL-2.0-or-later
//! Used-block maps of filesystems.
//!
//! `blockswarm` only transfers the blocks a filesystem actually uses. This
//! crate answers "which byte ranges of this partition are in use?":
//!
//! * [`fat`] and [`exfat`] read the allocation structures directly (pure
//!   Rust, no external tools);
//! * [`partclone`] runs the installed `partclone.<fs> -D` for everything
//!   else (XFS, btrfs, ext*, NTFS, ...) and reads back its domain mapfile;
//! * [`mapfile`] reads and writes ddrescue domain mapfiles in the format
//!   `partclone -D` produces;
//! * [`detect`] recognises filesystems from their on-disk signatures.
//!
//! Every parser treats its input as untrusted: a corrupt or truncated
//! filesystem yields an [`FsError`], never a panic or an out-of-range read.

#![forbid(unsafe_code)]

pub mod detect;
pub mod exfat;
pub mod fat;
pub mod mapfile;
pub mod partclone;

mod io;
mod runs;

pub use detect::{canonical_fs_name, detect, fs_variant, partclone_module_for};
pub use exfat::exfat_usage;
pub use fat::{fat_usage, fat_usage_with, FatOptions};
pub use mapfile::{parse_mapfile, write_mapfile};
pub use partclone::{
    installed_partclone_modules, partclone_usage, partclone_usage_with, PartcloneOptions,
};
pub use runs::normalize_runs;

/// The used byte ranges of one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// partclone-style filesystem name: `"fat12"`, `"fat16"`, `"fat32"`,
    /// `"exfat"`, `"xfs"`, `"btrfs"`, ...
    pub fs_type: String,
    /// Allocation unit of the filesystem (cluster size for FAT/exFAT, the
    /// partclone block size for the partclone backend). The runs are byte
    /// runs and need not be multiples of it (e.g. FAT metadata regions).
    pub block_size: u64,
    /// Size in bytes of the device (partition or image) that was examined.
    pub device_size: u64,
    /// Used byte ranges as `(offset, length)`: sorted, non-overlapping,
    /// adjacent runs merged, no zero-length run, all inside `device_size`.
    pub runs: Vec<(u64, u64)>,
}

impl FsUsage {
    /// Total number of used bytes (sum of the run lengths).
    pub fn used_bytes(&self) -> u64 {
        self.runs.iter().map(|&(_, len)| len).sum()
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The underlying reader failed (other than by ending early).
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A structure lies (partly) beyond the end of the device or image.
    #[error(
        "{fs}: {what} at byte offset {offset} (+{len} bytes) lies beyond the end of the device \
         ({device_size} bytes); is the image truncated?"
    )]
    Truncated {
        /// Filesystem being parsed.
        fs: &'static str,
        /// The structure that could not be read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// Device size the caller gave (or the reader's real end).
        device_size: u64,
    },
    /// The data does not carry this filesystem's signature at all.
    #[error("not a {fs} filesystem: {detail}")]
    NotThisFs {
        /// Filesystem that was expected.
        fs: &'static str,
        /// What was found instead.
        detail: String,
    },
    /// The filesystem's metadata is inconsistent or out of range.
    #[error("corrupt {fs} filesystem: {detail}")]
    Corrupt {
        /// Filesystem being parsed.
        fs: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A ddrescue mapfile could not be parsed or written.
    #[error("mapfile line {line}: {detail}")]
    Mapfile {
        /// 1-based line number (0 when writing).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The needed `partclone.<module>` executable is not on `PATH`.
    #[error("partclone.{module} not found in PATH: install Debian package partclone")]
    PartcloneNotInstalled {
        /// Module name, e.g. `xfs`.
        module: String,
    },
    /// partclone ran but failed.
    #[error("partclone.{module} failed ({status}); last lines of its log:\n{log_tail}")]
    PartcloneFailed {
        /// Module name, e.g. `xfs`.
        module: String,
        /// Exit status description.
        status: String,
        /// The last lines of partclone's log (or its stderr).
        log_tail: String,
    },
    /// The filesystem name is not known to this crate.
    #[error("unsupported filesystem {0:?}")]
    UnsupportedFs(String),
}
