// SPDX-License-Identifier: GPL-2.0-or-later
//! Backend that runs the installed `partclone.<module> -D` and reads its
//! domain mapfile.
//!
//! The command is
//! `partclone.<module> -D -f 0 -q -L <tmp>/partclone.log -s <source> -O <tmp>/domain.map`
//! (`-D` writes a ddrescue domain mapfile of the used blocks instead of
//! cloning, `-O` overwrites the output, `-L` is the log, `-q` quiet, `-f 0`
//! progress refresh interval). The block size and filesystem name come from
//! partclone's log (`Block size:` / `File system:` lines).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::debug;

use crate::detect::partclone_module_for;
use crate::mapfile::parse_mapfile;
use crate::{FsError, FsUsage};

/// Directories searched after `PATH`: Debian installs partclone in
/// `/usr/sbin`, which is not on an ordinary user's `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// `partclone.*` executables that are tools, not filesystem modules.
const NOT_MODULES: &[&str] = &[
    "chkimg",
    "imager",
    "info",
    "restore",
    "ntfsfixboot",
    "ntfsreloc",
];

/// Lines of partclone's log (and of its output) quoted in [`FsError::PartcloneFailed`].
const LOG_TAIL_LINES: usize = 12;

/// Options for [`partclone_usage_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartcloneOptions {
    /// Pass `-I` (ignore the filesystem check, e.g. a dirty or not cleanly
    /// unmounted filesystem).
    pub ignore_fschk: bool,
}

/// Used-block map of `source` (a block device or image file of
/// `device_size` bytes) holding filesystem `fs` (any name or alias that
/// [`partclone_module_for`] knows, e.g. `"xfs"`, `"ext4"`, `"btrfs"`), as
/// computed by the installed `partclone.<module> -D`.
pub fn partclone_usage(fs: &str, source: &Path, device_size: u64) -> Result<FsUsage, FsError> {
    partclone_usage_with(fs, source, device_size, &PartcloneOptions::default())
}

/// [`partclone_usage`] with options.
pub fn partclone_usage_with(
    fs: &str,
    source: &Path,
    device_size: u64,
    opts: &PartcloneOptions,
) -> Result<FsUsage, FsError> {
    let module = partclone_module_for(fs).ok_or_else(|| FsError::UnsupportedFs(fs.to_string()))?;
    let exe = find_executable(&format!("partclone.{module}")).ok_or_else(|| {
        FsError::PartcloneNotInstalled {
            module: module.to_string(),
        }
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("blockswarm-partclone-")
        .tempdir()
        .map_err(|e| FsError::Io {
            context: "creating a temporary directory for partclone's log and map".into(),
            source: e,
        })?;
    let log = tmp.path().join("partclone.log");
    let map = tmp.path().join("domain.map");
    let mut cmd = Command::new(&exe);
    cmd.arg("-D")
        .args(["-f", "0"])
        .arg("-q")
        .arg("-L")
        .arg(&log)
        .arg("-s")
        .arg(source)
        .arg("-O")
        .arg(&map);
    if opts.ignore_fschk {
        cmd.arg("-I");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    debug!(?cmd, "running partclone");
    let out = cmd.output().map_err(|e| FsError::Io {
        context: format!("running {}", exe.display()),
        source: e,
    })?;
    let log_text = std::fs::read(&log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if !out.status.success() {
        // partclone writes some errors (e.g. from libxfs) only to stderr.
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push('\n');
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        let parts: Vec<String> = [
            last_lines(&log_text, LOG_TAIL_LINES),
            last_lines(&output, LOG_TAIL_LINES),
        ]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();
        let tail = if parts.is_empty() {
            "(partclone wrote no log and no output)".to_string()
        } else {
            parts.join("\n--- partclone's stderr/stdout ---\n")
        };
        return Err(FsError::PartcloneFailed {
            module: module.to_string(),
            status: describe_status(&out.status),
            log_tail: tail,
        });
    }
    let map_text = std::fs::read_to_string(&map).map_err(|e| FsError::Io {
        context: format!(
            "reading the domain mapfile {} written by partclone.{module}",
            map.display()
        ),
        source: e,
    })?;
    let runs = parse_mapfile(&map_text)?;
    if let Some(&(off, len)) = runs.last() {
        let end = off + len;
        if end > device_size {
            return Err(FsError::Corrupt {
                fs: "partclone map",
                detail: format!(
                    "partclone.{module} maps used bytes up to {end}, beyond the device size \
                     {device_size}"
                ),
            });
        }
    }
    let block_size = log_value(&log_text, "Block size:")
        .and_then(|v| parse_size(&v))
        .filter(|&b| b > 0)
        .unwrap_or(match module {
            "fat" | "exfat" => 512,
            _ => 4096,
        });
    let fs_type = log_value(&log_text, "File system:")
        .map(|v| v.to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| module.to_string());
    Ok(FsUsage {
        fs_type,
        block_size,
        device_size,
        runs,
    })
}

/// The filesystem modules (`<module>` of `partclone.<module>`) installed on
/// `PATH` (and in `/usr/sbin`, `/sbin`, `/usr/local/sbin`), sorted.
pub fn installed_partclone_modules() -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for dir in search_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(module) = name.strip_prefix("partclone.") else {
                continue;
            };
            if module.is_empty() || NOT_MODULES.contains(&module) {
                continue;
            }
            if is_executable(&e.path()) && !found.iter().any(|m| m == module) {
                found.push(module.to_string());
            }
        }
    }
    found.sort();
    found
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in EXTRA_DIRS {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

fn find_executable(name: &str) -> Option<PathBuf> {
    search_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

fn describe_status(s: &std::process::ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exit code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("killed by signal {sig}");
        }
    }
    s.to_string()
}

/// The last `n` non-empty lines of partclone output; progress updates are
/// separated by carriage returns, so those split lines too.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The value after `key` on the last log line containing it.
fn log_value(log: &str, key: &str) -> Option<String> {
    log.split(['\r', '\n'])
        .filter_map(|l| l.split_once(key).map(|(_, v)| v.trim().to_string()))
        .next_back()
}

/// "4096 Byte" / "512 Bytes" / "4.0 KB"-style sizes; only whole numbers
/// followed by an optional Byte(s) unit are accepted.
fn parse_size(v: &str) -> Option<u64> {
    let mut it = v.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        None => Some(n),
        Some(u) if u.eq_ignore_ascii_case("byte") || u.eq_ignore_ascii_case("bytes") => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_parsing() {
        let log = "Partclone v0.3.23\rElapsed: 1\r\nFile system:  FAT12\nBlock size:   512 Byte\n\
                   Total block 8192\n";
        assert_eq!(log_value(log, "Block size:").as_deref(), Some("512 Byte"));
        assert_eq!(parse_size("512 Byte"), Some(512));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4.0 KB"), None);
        assert_eq!(log_value(log, "File system:").as_deref(), Some("FAT12"));
        assert_eq!(
            last_lines(log, 2),
            "Block size:   512 Byte\nTotal block 8192"
        );
        assert_eq!(last_lines("", 2), "");
    }

    #[test]
    fn unknown_fs_and_missing_module() {
        let e = partclone_usage("zfs", Path::new("/nonexistent"), 1).unwrap_err();
        assert!(matches!(e, FsError::UnsupportedFs(_)), "{e}");
    }
}
