//! Whole-disk mode: a source with a partition table (GPT or MBR) becomes ONE extent map in
//! disk byte offsets: the table areas and everything before the first partition in full, each
//! partition's used blocks by its own filesystem backend plus its first sectors, a swap
//! partition's header, an unknown partition (LVM, LUKS, ...) whole; not the backup GPT (the
//! receiver writes one for its target's size).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockswarm_disk::{Part, Table};
use blockswarm_fsmap as fsmap;
use blockswarm_manifest::{DiskLayout, ExtentMap, PartitionInfo, EXTENDED_FS};
use tracing::{info, warn};

use crate::backend::{self, UsedMap};
use crate::ImagerError;

/// Bytes at the start of every partition that are always copied (boot records, superblocks).
pub const PARTITION_HEAD: u64 = 64 * 1024;
/// Bytes probed for a filesystem signature (fsmap::detect also looks at 1 MiB and 2 MiB).
const PROBE_LEN: u64 = (2 << 20) + 4096;

/// The partition table of `file`, if it has one: a GPT (its signature is unambiguous), else
/// none when a filesystem starts at byte 0 (partition mode), else an MBR. A GPT whose primary
/// header or entries fail their CRC is an error, never a silent fallback.
pub fn detect_table(file: &File, size: u64) -> Result<Option<Table>, ImagerError> {
    let sector = blockswarm_disk::sector_size(file);
    if blockswarm_disk::has_gpt_signature(file, sector)? {
        return Ok(blockswarm_disk::read_table(file, size, sector)?);
    }
    let mut f = file;
    let fs = fsmap::detect(&mut f).map_err(|e| ImagerError::Backend(e.to_string()))?;
    if fs.is_some() {
        return Ok(None);
    }
    Ok(blockswarm_disk::read_table(file, size, sector)?)
}

/// A read-only loop device over one partition of the source, detached on drop.
struct PartitionLoop {
    path: PathBuf,
}

impl PartitionLoop {
    fn attach(source: &Path, p: &Part) -> Result<Self, ImagerError> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only", "--offset"])
            .arg(p.start.to_string())
            .arg("--sizelimit")
            .arg(p.size.to_string())
            .arg(source)
            .output()
            .map_err(|e| ImagerError::Internal(format!("cannot run losetup: {e}")))?;
        if !out.status.success() {
            return Err(ImagerError::Internal(format!(
                "cannot attach a loop device for partition {} of {} (losetup: {}); whole-disk mode needs root and loop devices",
                p.number,
                source.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { path })
    }
}

impl Drop for PartitionLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// True if the partition's first page ends in a Linux swap signature.
fn is_swap(head: &[u8]) -> bool {
    [4096usize, 8192, 16384, 65536].iter().any(|&page| {
        head.len() >= page && matches!(&head[page - 10..page], b"SWAPSPACE2" | b"SWAP-SPACE")
    })
}

/// What one partition contributes: its filesystem name and used runs relative to its start.
fn partition_runs(
    source: &Path,
    file: &File,
    p: &Part,
    ignore_fs_check: bool,
) -> Result<(String, Vec<(u64, u64)>), ImagerError> {
    let who = format!("partition {} of {}", p.number, source.display());
    if p.is_extended {
        return Ok((EXTENDED_FS.into(), Vec::new()));
    }
    let mut head = vec![0u8; PROBE_LEN.min(p.size) as usize];
    file.read_exact_at(&mut head, p.start)
        .map_err(|e| ImagerError::Read {
            offset: p.start,
            source: e,
        })?;
    if is_swap(&head) {
        return Ok(("swap".into(), Vec::new()));
    }
    let found =
        fsmap::detect(&mut Cursor::new(&head)).map_err(|e| ImagerError::Backend(e.to_string()))?;
    let Some(fs) = found
        .and_then(fsmap::canonical_fs_name)
        .filter(|f| *f != "dd")
    else {
        warn!("{who}: no filesystem this imager knows (LVM, LUKS, unknown): copying every block");
        return Ok(("dd".into(), vec![(0, p.size)]));
    };
    let lo = PartitionLoop::attach(source, p)?;
    let dev = File::open(&lo.path).map_err(|e| ImagerError::OpenSource {
        path: lo.path.clone(),
        source: e,
    })?;
    let used: UsedMap =
        backend::used_map(&lo.path, &dev, p.size, fs, ignore_fs_check).map_err(|e| match e {
            ImagerError::NotFilesystem { fs, reason, .. } => ImagerError::NotFilesystem {
                path: PathBuf::from(&who),
                fs,
                reason,
            },
            ImagerError::FsCheck { message, .. } => ImagerError::FsCheck {
                path: PathBuf::from(&who),
                // The loop device's name means nothing to the user: name the partition.
                message: format!(
                    "{who}: {}",
                    message.trim_start_matches(&format!("{}: ", lo.path.display()))
                ),
            },
            other => other,
        })?;
    info!(partition = p.number, fs = %used.fs_type, backend = used.backend, used = used.map.packed_len(), "partition mapped");
    let runs = used
        .map
        .extents()
        .iter()
        .map(|e| (e.offset, e.length))
        .collect();
    Ok((used.fs_type, runs))
}

/// Builds the whole-disk map and layout of `source` (`size` bytes) with partition table `t`.
pub fn disk_map(
    source: &Path,
    file: &File,
    size: u64,
    t: &Table,
    ignore_fs_check: bool,
) -> Result<(UsedMap, DiskLayout), ImagerError> {
    let mut runs: Vec<(u64, u64)> = t.always.clone();
    let mut found = Vec::with_capacity(t.partitions.len());
    for p in &t.partitions {
        let (fs, rel) = partition_runs(source, file, p, ignore_fs_check)?;
        if !p.is_extended {
            runs.push((p.start, PARTITION_HEAD.min(p.size)));
        }
        runs.extend(
            rel.into_iter()
                .filter(|&(o, _)| o < p.size)
                .map(|(o, l)| (p.start + o, l.min(p.size - o))),
        );
        found.push(fs);
    }
    let runs = fsmap::normalize_runs(runs, size);
    let map = ExtentMap::new(
        size,
        runs.iter()
            .map(|&(o, l)| blockswarm_manifest::Extent::new(o, l))
            .collect(),
    )?;
    let map_end = runs.last().map_or(0, |&(o, l)| o + l);
    let partitions = t
        .partitions
        .iter()
        .zip(found)
        .map(|(p, fs)| PartitionInfo {
            number: p.number,
            start: p.start,
            size: p.size,
            kind: p.kind.clone(),
            name: p.name.clone(),
            used: if p.is_extended {
                0
            } else {
                overlap(&runs, p.start, p.start + p.size)
            },
            fs,
        })
        .collect();
    let layout = DiskLayout {
        table: t.kind,
        sector_size: t.sector_size,
        min_size: t.min_size.max(map_end),
        partitions,
    };
    let used = UsedMap {
        fs_type: t.kind.as_str().into(),
        block_size: t.sector_size,
        map,
        backend: "partition table",
    };
    Ok((used, layout))
}

/// After `--copy-to` a whole disk: a GPT for the target's size (backup header and entries at
/// its end), then the kernel re-reads a block device's partition table.
pub fn finish_copy(f: &mut File, path: &Path, l: &DiskLayout) -> Result<(), ImagerError> {
    let write_err = |e: std::io::Error| ImagerError::Write {
        path: path.to_path_buf(),
        offset: 0,
        source: e,
    };
    let size = blockswarm_manifest::device::file_size(f).map_err(write_err)?;
    if l.table == blockswarm_manifest::TableKind::Gpt {
        blockswarm_disk::fit_gpt(f, size, l.sector_size)
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
    }
    f.sync_all().map_err(write_err)?;
    if let Err(e) = blockswarm_disk::reread_partitions(f) {
        warn!(
            "{}: the kernel did not re-read the partition table ({e}); the partitions appear after a reboot",
            path.display()
        );
    }
    Ok(())
}

/// Bytes of `runs` (sorted, disjoint) inside `[start, end)`.
fn overlap(runs: &[(u64, u64)], start: u64, end: u64) -> u64 {
    runs.iter()
        .map(|&(o, l)| (o + l).min(end).saturating_sub(o.max(start)))
        .sum()
}

/// The text of `imager --list DISK`.
pub fn list_text(source: &Path, disk_size: u64, layout: &DiskLayout, packed: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} disk, {} bytes, {}-byte sectors; fits targets of {} bytes or more; {} bytes to send",
        source.display(),
        layout.table,
        disk_size,
        layout.sector_size,
        layout.min_size,
        packed
    );
    let _ = writeln!(
        s,
        "{:>3} {:>14} {:>14} {:>14} {:<38} {:<20} {:<8} {:>14}",
        "#", "start", "end", "size", "type", "name", "fs", "used"
    );
    for p in &layout.partitions {
        let _ = writeln!(
            s,
            "{:>3} {:>14} {:>14} {:>14} {:<38} {:<20} {:<8} {:>14}",
            p.number,
            p.start,
            p.end(),
            p.size,
            p.kind,
            p.name,
            p.fs,
            p.used
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_signatures_are_found_at_any_page_size() {
        let mut head = vec![0u8; 65536];
        assert!(!is_swap(&head));
        head[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert!(is_swap(&head));
        let mut big = vec![0u8; 65536];
        big[65526..].copy_from_slice(b"SWAPSPACE2");
        assert!(is_swap(&big));
        assert!(!is_swap(&big[..8192]));
    }

    #[test]
    fn overlap_counts_only_bytes_inside_the_range() {
        let runs = [(0, 10), (20, 10), (40, 5)];
        assert_eq!(overlap(&runs, 5, 25), 5 + 5);
        assert_eq!(overlap(&runs, 30, 40), 0);
        assert_eq!(overlap(&runs, 0, 100), 25);
    }
}
