//! Used-block map backends: libext2fs / libntfs-3g through `partclone-sys`, the pure-Rust FAT
//! and exFAT parsers, the installed `partclone.<fs> -D`, and dd (every block).

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::path::Path;

use blockswarm_fsmap as fsmap;
use blockswarm_manifest::{Extent, ExtentMap};
use tracing::warn;

use crate::ImagerError;

/// The used-block map of a source and how it was found.
#[derive(Debug, Clone)]
pub struct UsedMap {
    /// Filesystem type as recorded in the manifest (`ext4`, `fat32`, `ntfs`, `dd`, ...).
    pub fs_type: String,
    pub block_size: u64,
    /// Used runs; its device size is the size of the source.
    pub map: ExtentMap,
    /// Which backend produced the map.
    pub backend: &'static str,
}

/// Block size used for dd mode: the largest of 4096/512 dividing the device size.
fn dd_block_size(size: u64) -> u64 {
    if size.is_multiple_of(4096) {
        4096
    } else {
        512
    }
}

/// Largest tail after the last NTFS cluster that is copied along (backup boot sector).
const NTFS_TAIL_MAX: u64 = 64 * 1024;

fn not_fs(path: &Path, fs: &str, reason: impl std::fmt::Display) -> ImagerError {
    ImagerError::NotFilesystem {
        path: path.to_path_buf(),
        fs: fs.to_string(),
        reason: reason.to_string(),
    }
}

fn from_runs(
    path: &Path,
    fs_type: String,
    block_size: u64,
    fs_size: u64,
    src_size: u64,
    runs: impl IntoIterator<Item = (u64, u64)>,
    backend: &'static str,
) -> Result<UsedMap, ImagerError> {
    if fs_size > src_size {
        return Err(ImagerError::TooShort {
            path: path.to_path_buf(),
            need: fs_size,
            have: src_size,
        });
    }
    let extents = runs
        .into_iter()
        .map(|(o, l)| Extent::new(o, l))
        .collect::<Vec<_>>();
    let map = ExtentMap::new(src_size, extents)?;
    Ok(UsedMap {
        fs_type,
        block_size,
        map,
        backend,
    })
}

fn fsmap_err(path: &Path, fs: &str, e: fsmap::FsError) -> ImagerError {
    match e {
        fsmap::FsError::Io { source, .. } => ImagerError::Read { offset: 0, source },
        other => not_fs(path, fs, other),
    }
}

/// End of the last whole NTFS cluster (the boot sector's sector count times its sector size,
/// rounded down to `cluster`), where the backup boot sector's tail starts.
fn ntfs_clusters_end(file: &File, cluster: u64) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let mut bs = [0u8; 512];
    file.read_exact_at(&mut bs, 0)
        .map_err(|e| format!("cannot read the boot sector: {e}"))?;
    if &bs[3..11] != b"NTFS    " {
        return Err("no NTFS signature in the boot sector".into());
    }
    let sector = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
    let sectors = u64::from_le_bytes(bs[0x28..0x30].try_into().expect("8 bytes"));
    Ok(sectors.saturating_mul(sector) / cluster.max(1) * cluster.max(1))
}

/// Bytes the XFS (data section) or btrfs (this device) superblock says the filesystem spans.
fn declared_fs_size(file: &File, fs: &str) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 0xE0];
    match fs {
        "xfs" => {
            // sb_magicnum, sb_blocksize (be32 at 4), sb_dblocks (be64 at 8).
            file.read_exact_at(&mut b[..16], 0).ok()?;
            let block = u64::from(u32::from_be_bytes(b[4..8].try_into().ok()?));
            let blocks = u64::from_be_bytes(b[8..16].try_into().ok()?);
            (&b[..4] == b"XFSB").then(|| blocks.saturating_mul(block))
        }
        "btrfs" => {
            // Superblock at 64 KiB: magic at 0x40, dev_item at 0xC9 (total_bytes at +8).
            file.read_exact_at(&mut b, 0x10000).ok()?;
            let dev_bytes = u64::from_le_bytes(b[0xD1..0xD9].try_into().ok()?);
            (&b[0x40..0x48] == b"_BHRfS_M").then_some(dev_bytes)
        }
        _ => None,
    }
}

/// A partclone-sys open error: a filesystem that failed the check is refused for safety
/// (exit 5), anything else is not a (whole) filesystem of that type.
fn open_err(path: &Path, fs: &str, e: partclone_sys::Error) -> ImagerError {
    match e {
        partclone_sys::Error::FsCheck { .. } => ImagerError::FsCheck {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        other => not_fs(path, fs, other),
    }
}

/// Warns that a filesystem that failed the check is imaged anyway.
fn warn_ignored(path: &Path, ub: &partclone_sys::UsedBlocks) {
    if let Some(why) = ub.fs_check_failure() {
        warn!(
            "{}: the {} filesystem is not clean ({why}); imaging it anyway (--ignore-fs-check): \
             the copy has the same damage",
            path.display(),
            ub.fs_type()
        );
    }
}

/// Finds the used-block map of `path` (already opened as `file`, `size` bytes) for the
/// filesystem named by `fs_arg` (`auto`, a partclone name or a common alias). A filesystem
/// that fails its check (see `partclone_sys::Error::FsCheck`) is refused unless
/// `ignore_fs_check`.
pub fn used_map(
    path: &Path,
    file: &File,
    size: u64,
    fs_arg: &str,
    ignore_fs_check: bool,
) -> Result<UsedMap, ImagerError> {
    let opts = partclone_sys::OpenOptions { ignore_fs_check };
    let pc_opts = fsmap::PartcloneOptions {
        ignore_fschk: ignore_fs_check,
    };
    let fs: &'static str = if fs_arg.eq_ignore_ascii_case("auto") {
        let mut f = file;
        match fsmap::detect(&mut f).map_err(|e| fsmap_err(path, "auto", e))? {
            Some(found) => fsmap::canonical_fs_name(found).unwrap_or("dd"),
            None => {
                warn!(
                    "{}: no known filesystem signature; imaging every block (dd mode)",
                    path.display()
                );
                "dd"
            }
        }
    } else {
        fsmap::canonical_fs_name(fs_arg).ok_or_else(|| ImagerError::UnknownFs(fs_arg.into()))?
    };

    match fs {
        "dd" => from_runs(
            path,
            "dd".into(),
            dd_block_size(size),
            size,
            size,
            (size > 0).then_some((0, size)),
            "dd",
        ),
        "ext" => {
            let ub = partclone_sys::UsedBlocks::open_extfs_with(path, opts)
                .map_err(|e| open_err(path, "ext2/3/4", e))?;
            warn_ignored(path, &ub);
            from_runs(
                path,
                ub.fs_type().to_string(),
                ub.block_size(),
                ub.fs_size(),
                size,
                ub.runs(),
                "libext2fs",
            )
        }
        "ntfs" => {
            // Without the `ntfs` feature the installed partclone.ntfs -D maps the clusters
            // (as --list-fs says).
            let (block_size, fs_size, mut runs, backend) = if partclone_sys::ntfs_supported() {
                let ub = partclone_sys::UsedBlocks::open_ntfs_with(path, opts)
                    .map_err(|e| open_err(path, "ntfs", e))?;
                warn_ignored(path, &ub);
                let runs: Vec<(u64, u64)> = ub.runs().collect();
                (ub.block_size(), ub.fs_size(), runs, "libntfs-3g")
            } else {
                let u = fsmap::partclone_usage_with("ntfs", path, size, &pc_opts)
                    .map_err(|e| ImagerError::Backend(format!("{}: {e}", path.display())))?;
                let fs_size =
                    ntfs_clusters_end(file, u.block_size).map_err(|e| not_fs(path, "ntfs", e))?;
                (u.block_size, fs_size, u.runs, "partclone")
            };
            // The clusters end before the volume's last sector, which holds the backup boot
            // sector; copy that short tail too so the target's volume is complete.
            let tail = (fs_size < size && size - fs_size <= NTFS_TAIL_MAX)
                .then(|| (fs_size, size - fs_size));
            if let Some((off, len)) = tail {
                match runs.last_mut() {
                    Some(last) if last.0 + last.1 == off => last.1 += len,
                    _ => runs.push((off, len)),
                }
            }
            from_runs(
                path,
                "ntfs".into(),
                block_size,
                fs_size,
                size,
                runs,
                backend,
            )
        }
        "fat" | "exfat" => {
            let mut f = file;
            let u = if fs == "fat" {
                fsmap::fat_usage(&mut f, size)
            } else {
                fsmap::exfat_usage(&mut f, size)
            }
            .map_err(|e| fsmap_err(path, fs, e))?;
            from_runs(path, u.fs_type, u.block_size, 0, size, u.runs, "rust")
        }
        other => {
            let u = fsmap::partclone_usage_with(other, path, size, &pc_opts)
                .map_err(|e| ImagerError::Backend(format!("{}: {e}", path.display())))?;
            // partclone -D does not notice a truncated image whose missing tail holds no used
            // block: check the size the superblock declares where we know how to read it.
            let fs_size = declared_fs_size(file, other).unwrap_or(0);
            from_runs(
                path,
                u.fs_type,
                u.block_size,
                fs_size,
                size,
                u.runs,
                "partclone",
            )
        }
    }
}

/// Writes the map as a ddrescue domain mapfile, the format of `partclone.<fs> -D`.
pub fn write_mapfile(out: &mut dyn io::Write, used: &UsedMap) -> Result<(), ImagerError> {
    let runs: Vec<(u64, u64)> = used
        .map
        .extents()
        .iter()
        .map(|e| (e.offset, e.length))
        .collect();
    fsmap::write_mapfile(out, &runs, used.map.device_size()).map_err(|e| ImagerError::Output {
        path: "<stdout>".into(),
        source: io::Error::other(e.to_string()),
    })
}

/// The text of `imager --list-fs`.
pub fn list_fs() -> String {
    let installed = fsmap::installed_partclone_modules();
    let has = |m: &str| installed.iter().any(|i| i == m);
    let mut s = String::new();
    let _ = writeln!(s, "{:<10} {:<28} aliases", "fs", "backend");
    let ntfs = if cfg!(feature = "ntfs") {
        "libntfs-3g (in process)"
    } else if has("ntfs") {
        "partclone.ntfs -D"
    } else {
        "unavailable"
    };
    let rows: Vec<(&str, String, &str)> = vec![
        ("extfs", "libext2fs (in process)".into(), "ext2 ext3 ext4"),
        ("ntfs", ntfs.into(), ""),
        (
            "fat",
            "rust (in process)".into(),
            "vfat msdos fat12 fat16 fat32",
        ),
        ("exfat", "rust (in process)".into(), ""),
        ("dd", "every block".into(), "raw"),
    ];
    for (fs, backend, aliases) in rows {
        let _ = writeln!(s, "{fs:<10} {backend:<28} {aliases}");
    }
    // Every other filesystem an installed partclone module handles, once per filesystem.
    let mut seen = std::collections::BTreeMap::new();
    for m in &installed {
        if let Some(fs) = fsmap::canonical_fs_name(m) {
            if !["ext", "ntfs", "fat", "exfat", "dd"].contains(&fs) {
                // Prefer the module named like the filesystem (hfsplus over hfs+).
                let e = seen.entry(fs).or_insert_with(|| m.clone());
                if m == fs {
                    *e = m.clone();
                }
            }
        }
    }
    for (fs, module) in seen {
        let _ = writeln!(s, "{fs:<10} {:<28}", format!("partclone.{module} -D"));
    }
    s
}
