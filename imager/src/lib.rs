//! `imager`: finds the used blocks of a partition, reads them once, hashes them in parallel and
//! writes a blockswarm manifest (a `.torrent` carrying the extent map).
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod disk;
pub mod pipeline;

use std::fs::{self, File};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use blockswarm_manifest::{device, exit, Manifest, ManifestError, MapError};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

pub use backend::UsedMap;
pub use cli::Cli;

/// Everything that can go wrong in the imager, each with its documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum ImagerError {
    #[error("cannot open source {path}: {source}")]
    OpenSource { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid {fs} filesystem: {reason}")]
    NotFilesystem {
        path: PathBuf,
        fs: String,
        reason: String,
    },
    #[error("the filesystem on {path} needs {need} bytes but the source holds only {have} (truncated image?)")]
    TooShort { path: PathBuf, need: u64, have: u64 },
    #[error("source ends before byte {offset} that the used-block map needs (truncated image?)")]
    Truncated { offset: u64 },
    #[error("read error at byte {offset} of the source: {source}")]
    Read { offset: u64, source: io::Error },
    #[error("write error at byte {offset} of {path}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("{0}")]
    Target(#[from] device::TargetError),
    #[error("source {path} is mounted read-write on {mountpoint}: a copy would be torn by writes during imaging; unmount it, remount it read-only, or pass --force")]
    MountedSource { path: PathBuf, mountpoint: String },
    #[error("{message}; or pass --ignore-fs-check to image it as it is")]
    FsCheck { path: PathBuf, message: String },
    #[error("refusing to write a binary manifest to a terminal: redirect stdout, pipe it to `seeder`, or use -o FILE")]
    BinaryToTerminal,
    #[error("unsupported filesystem {0:?} (see imager --list-fs)")]
    UnknownFs(String),
    #[error("{0}")]
    Backend(String),
    #[error("partition table: {0}")]
    Disk(#[from] blockswarm_disk::DiskError),
    #[error("invalid used-block map: {0}")]
    Map(#[from] MapError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("cannot write {path}: {source}")]
    Output { path: PathBuf, source: io::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImagerError {
    /// The process exit code for this error (see README "Exit codes").
    pub fn exit_code(&self) -> i32 {
        use ImagerError::*;
        match self {
            OpenSource { .. } | NotFilesystem { .. } | TooShort { .. } | Truncated { .. } => {
                exit::BAD_INPUT
            }
            UnknownFs(_) | Map(_) | Backend(_) | Disk(_) => exit::BAD_INPUT,
            Target(_) => exit::BAD_TARGET,
            MountedSource { .. } | BinaryToTerminal | FsCheck { .. } => exit::REFUSED,
            Read { .. } | Write { .. } | Manifest(_) | Output { .. } | Internal(_) => exit::FAILURE,
        }
    }
}

/// Opens the source read-only and checks that it is safe to image.
pub fn open_source(path: &Path, force: bool) -> Result<(File, u64), ImagerError> {
    let open_err = |source| ImagerError::OpenSource {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(open_err)?;
    let size = device::file_size(&f).map_err(open_err)?;
    if let Some(m) = device::mount_of(path) {
        if m.read_write && !force {
            return Err(ImagerError::MountedSource {
                path: path.to_path_buf(),
                mountpoint: m.mountpoint,
            });
        }
        warn!(mountpoint = %m.mountpoint, read_write = m.read_write, "source is mounted");
    }
    Ok((f, size))
}

fn progress_bar(cli: &Cli, total: u64, what: &str) -> ProgressBar {
    if cli.quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Default torrent name: the source's file name plus `.packed`.
fn default_name(source: &Path) -> String {
    let base = source
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "partition".into());
    let base = base.trim_start_matches('.');
    let base = if base.is_empty() { "partition" } else { base };
    format!("{base}.packed")
}

/// Runs the imager as the command line asks.
pub fn run(cli: &Cli) -> Result<(), ImagerError> {
    if cli.list_fs {
        print!("{}", backend::list_fs());
        return Ok(());
    }
    let source = cli
        .source
        .as_deref()
        .ok_or_else(|| ImagerError::Internal("SOURCE is required".into()))?;
    let (src, src_size) = open_source(source, cli.force)?;
    let t0 = Instant::now();
    // A partition table (whole disk) unless a filesystem was named: then one partition.
    let table = if cli.fs.eq_ignore_ascii_case("auto") {
        disk::detect_table(&src, src_size)?
    } else {
        None
    };
    let (used, layout) = match &table {
        Some(t) => {
            let (used, layout) = disk::disk_map(source, &src, src_size, t, cli.ignore_fs_check)?;
            (used, Some(layout))
        }
        None => (
            backend::used_map(source, &src, src_size, &cli.fs, cli.ignore_fs_check)?,
            None,
        ),
    };
    info!(
        fs = %used.fs_type,
        block_size = used.block_size,
        runs = used.map.len(),
        used_bytes = used.map.packed_len(),
        device_size = used.map.device_size(),
        elapsed = ?t0.elapsed(),
        "used-block map ready"
    );

    if cli.list {
        match &layout {
            Some(l) => print!(
                "{}",
                disk::list_text(source, src_size, l, used.map.packed_len())
            ),
            None => println!(
                "{}: no partition table: one {} filesystem, {} bytes, {} used",
                source.display(),
                used.fs_type,
                src_size,
                used.map.packed_len()
            ),
        }
        return Ok(());
    }

    if cli.map {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        backend::write_mapfile(&mut out, &used)?;
        return Ok(());
    }

    let manifest_to_stdout = cli.output.is_none() && cli.copy_to.is_none();
    if manifest_to_stdout && io::stdout().is_terminal() {
        return Err(ImagerError::BinaryToTerminal);
    }

    let name = cli.name.clone().unwrap_or_else(|| default_name(source));
    blockswarm_manifest::validate_name(&name)?;

    let mut zsave = match &cli.save {
        Some(dir) if cli.compress => {
            fs::create_dir_all(dir).map_err(|e| ImagerError::Output {
                path: dir.clone(),
                source: e,
            })?;
            let path = dir.join(blockswarm_swarm::zimage::file_name(&name));
            let writer = blockswarm_swarm::zimage::ZImageWriter::create(&path).map_err(|e| {
                ImagerError::Output {
                    path: path.clone(),
                    source: e,
                }
            })?;
            Some(pipeline::ZSaveSink {
                writer: Some(writer),
                path,
            })
        }
        _ => None,
    };
    let mut save = match &cli.save {
        Some(dir) if !cli.compress => {
            fs::create_dir_all(dir).map_err(|e| ImagerError::Output {
                path: dir.clone(),
                source: e,
            })?;
            let path = dir.join(&name);
            let file = File::create(&path).map_err(|e| ImagerError::Output {
                path: path.clone(),
                source: e,
            })?;
            Some(pipeline::SaveSink { file, path })
        }
        _ => None,
    };
    let mut copy = match &cli.copy_to {
        Some(target) => {
            let need = layout
                .as_ref()
                .map_or(used.map.device_size(), |l| l.min_size);
            let file = device::open_target(target, need, Some(source), true)?;
            Some(pipeline::CopySink {
                file,
                path: target.clone(),
                map: &used.map,
            })
        }
        None => None,
    };
    let mut sinks: Vec<&mut dyn pipeline::Sink> = Vec::new();
    if let Some(s) = save.as_mut() {
        sinks.push(s);
    }
    if let Some(s) = zsave.as_mut() {
        sinks.push(s);
    }
    if let Some(c) = copy.as_mut() {
        sinks.push(c);
    }

    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let piece_length = match cli.piece_size {
        0 => cli::auto_piece_size(used.map.packed_len()),
        p => p,
    };
    let pb = progress_bar(cli, used.map.packed_len(), "imaging");
    let t1 = Instant::now();
    let piece_hashes =
        pipeline::hash_pieces(&src, &used.map, piece_length, threads, &mut sinks, &|n| {
            pb.inc(n)
        })?;
    pb.finish_and_clear();
    if let (Some(c), Some(l)) = (copy.as_mut(), &layout) {
        disk::finish_copy(&mut c.file, &c.path, l)?;
    }
    let secs = t1.elapsed().as_secs_f64();
    info!(
        pieces = piece_hashes.len(),
        seconds = secs,
        mib_per_s = used.map.packed_len() as f64 / 1048576.0 / secs.max(1e-9),
        "hashed"
    );

    let canonical_source = fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let manifest = Manifest {
        name: name.clone(),
        piece_length,
        piece_hashes,
        fs_type: used.fs_type.clone(),
        block_size: used.block_size,
        map: used.map.clone().into(),
        disk: layout,
        announce: cli.tracker.clone(),
        source: Some(canonical_source.to_string_lossy().into_owned()),
        created_by: Some(concat!("blockswarm imager ", env!("CARGO_PKG_VERSION")).into()),
        creation_date: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
    };
    let bytes = manifest.encode()?;

    if let Some(dir) = &cli.save {
        let path = dir.join(format!("{name}.torrent"));
        fs::write(&path, &bytes).map_err(|e| ImagerError::Output { path, source: e })?;
    }
    if let Some(path) = &cli.output {
        fs::write(path, &bytes).map_err(|e| ImagerError::Output {
            path: path.clone(),
            source: e,
        })?;
    } else if manifest_to_stdout {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        out.write_all(&bytes)
            .and_then(|_| out.flush())
            .map_err(|e| ImagerError::Output {
                path: "<stdout>".into(),
                source: e,
            })?;
    }
    if !cli.quiet {
        eprintln!(
            "imager: {} {}: {} used bytes in {} runs, {} pieces of {} KiB, infohash {}",
            used.fs_type,
            source.display(),
            used.map.packed_len(),
            used.map.len(),
            manifest.num_pieces(),
            piece_length / 1024,
            hex::encode(manifest.info_hash()?),
        );
    }
    Ok(())
}
