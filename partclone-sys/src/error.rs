//! The crate's errors.

use std::path::PathBuf;

/// Message of [`Error::NotCompiled`] for NTFS.
pub const NTFS_NOT_COMPILED: &str =
    "NTFS support not compiled in: rebuild partclone-sys with feature ntfs (needs ntfs-3g-dev)";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The filesystem could not be opened: missing or unreadable file, not
    /// a filesystem of the requested type, truncated image, a journal that
    /// needs recovery, ...
    #[error("cannot open {}: {message}", path.display())]
    Open {
        /// The path given to the open function.
        path: PathBuf,
        /// The library's error code: a libext2fs (com_err) code, an `errno`
        /// value, or one of the shim's negative `ffi::PCS_ERR_*` codes.
        code: i64,
        /// What went wrong, with context.
        message: String,
    },
    /// The filesystem opened but its used-block bitmap could not be read.
    #[error("cannot read the used-block bitmap of {}: {message}", path.display())]
    Bitmap {
        /// The path given to the open function.
        path: PathBuf,
        /// As in [`Error::Open`].
        code: i64,
        /// What went wrong, with context.
        message: String,
    },
    /// The filesystem opened but is not clean (see "What is refused" in the
    /// crate documentation): `reason` lists everything found.
    #[error("{}: the {fs_type} filesystem is not clean: {reason}; {}", path.display(), repair_hint(fs_type))]
    FsCheck {
        /// The path given to the open function.
        path: PathBuf,
        /// As [`UsedBlocks::fs_type`].
        fs_type: String,
        /// Every reason found, separated by `; `.
        reason: String,
    },
    /// Support for this filesystem was not compiled in.
    #[error("{0}")]
    NotCompiled(&'static str),
    /// The path cannot be passed to C: it contains a NUL byte.
    #[error("invalid path {0:?}: contains a NUL byte")]
    InvalidPath(PathBuf),
}

/// What repairs a filesystem of this type that [`Error::FsCheck`] refused.
pub fn repair_hint(fs_type: &str) -> &'static str {
    if fs_type == "ntfs" {
        "repair it with chkdsk /f in Windows (ntfsfix -d only clears the dirty flag)"
    } else {
        "repair it with e2fsck -f"
    }
}
