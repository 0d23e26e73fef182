//! The target: which device (`--target auto` picks it), the checks made before anything is
//! written, and for a whole disk the partition table's finish: a GPT for the target's size,
//! and the kernel told to re-read the table.

use std::fs::File;
use std::path::{Path, PathBuf};

use blockswarm_disk::auto::{self, Candidate};
use blockswarm_manifest::{device, Manifest, TableKind};
use tracing::{info, warn};

use crate::{ReceiverError, Settings};

/// Why a device may not be the target, whatever its size (None: it may be).
fn in_use(path: &Path, source: Option<&Path>) -> Option<String> {
    if let Some(m) = device::mount_of(path) {
        return Some(format!("mounted on {}", m.mountpoint));
    }
    match source {
        Some(src) if device::same_device(src, path) => Some("the source".into()),
        Some(src) if device::holds(path, src) => Some("holds the source".into()),
        _ => None,
    }
}

/// The target's path: `--target` as given, or for `--target auto` the one disk that fits.
pub(crate) fn resolve(
    s: &Settings,
    m: &Manifest,
    source: Option<&Path>,
) -> Result<PathBuf, ReceiverError> {
    if !s.target_is_auto() {
        return Ok(s.target.clone());
    }
    let mut cands: Vec<Candidate> = auto::scan();
    if !s.auto_from.is_empty() {
        let wanted: Vec<PathBuf> = s
            .auto_from
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        cands.retain(|c| wanted.contains(&c.path));
    }
    let chosen = auto::choose(&cands, m.min_target_size(), |c| in_use(&c.path, source))
        .map_err(|e| ReceiverError::BadTarget(format!("--target auto: {e}")))?;
    info!(target = %chosen.path.display(), size = chosen.size, "--target auto chose");
    eprintln!(
        "receiver: --target auto: {} ({} bytes{}{})",
        chosen.path.display(),
        chosen.size,
        chosen
            .model
            .as_deref()
            .map(|v| format!(", model {v}"))
            .unwrap_or_default(),
        chosen
            .serial
            .as_deref()
            .map(|v| format!(", serial {v}"))
            .unwrap_or_default(),
    );
    Ok(chosen.path)
}

/// Opens the target after every check; nothing is written here.
pub(crate) fn open(t: &Path, m: &Manifest, source: Option<&Path>) -> Result<File, ReceiverError> {
    if !t.exists() {
        return Err(ReceiverError::BadTarget(format!(
            "target {} does not exist",
            t.display()
        )));
    }
    let f = device::open_target(t, m.min_target_size(), source, false)
        .map_err(|e| ReceiverError::BadTarget(e.to_string()))?;
    // The seeder holds a shared lock on its source, and every receiver an exclusive lock on
    // its target: this refuses the source device and a second receiver on the same target.
    if let Err(e) = f.try_lock() {
        return Err(ReceiverError::BadTarget(format!(
            "target {} is in use by another process (a seeder serving it, or another receiver): {e}",
            t.display()
        )));
    }
    Ok(f)
}

/// For a whole-disk manifest, once every piece is on the target: a GPT gets its backup
/// header and entries at the target's end (what `sgdisk -e` does), then a block device's
/// partition table is re-read by the kernel so the new partitions appear.
pub(crate) fn finish_disk(mut f: File, t: &Path, m: &Manifest) -> Result<(), ReceiverError> {
    let Some(layout) = &m.disk else {
        return Ok(());
    };
    let size = device::file_size(&f)
        .map_err(|e| ReceiverError::Failure(format!("size of {}: {e}", t.display())))?;
    if layout.table == TableKind::Gpt {
        blockswarm_disk::fit_gpt(&mut f, size, layout.sector_size).map_err(|e| {
            ReceiverError::Failure(format!("writing the GPT for {}: {e}", t.display()))
        })?;
    }
    f.sync_all()
        .map_err(|e| ReceiverError::Failure(format!("flushing {}: {e}", t.display())))?;
    match blockswarm_disk::reread_partitions(&mut f) {
        Ok(()) => info!("partition table re-read"),
        Err(e) => warn!(
            "{}: the kernel did not re-read the partition table ({e}); the new partitions appear after a reboot",
            t.display()
        ),
    }
    eprintln!(
        "receiver: {}: {} partition table with {} partitions written for {} bytes",
        t.display(),
        layout.table,
        layout
            .partitions
            .iter()
            .filter(|p| !p.is_container())
            .count(),
        size
    );
    Ok(())
}
