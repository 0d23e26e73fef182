//! Safety checks on source and target devices, shared by the imager, seeder and receiver:
//! size, "is it mounted", "is it the same device". Linux only (reads /proc and /sys).

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a target may not be written.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot open target {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("target {path} is {have} bytes, smaller than the source needs: {need} bytes (a partition: its size; a whole disk: the end of its last partition, and the backup GPT)")]
    TooSmall { path: PathBuf, have: u64, need: u64 },
    #[error("target {path} is mounted on {mountpoint}: unmount it first")]
    Mounted { path: PathBuf, mountpoint: String },
    #[error("target {path} is in use by the kernel: mounted, active swap, or a RAID/LVM member")]
    InUse { path: PathBuf },
    #[error("target {path} is the source device itself")]
    IsSource { path: PathBuf },
    #[error("target {path} is the disk that holds the source {source_path}")]
    HoldsSource { path: PathBuf, source_path: PathBuf },
    #[error("target {path} is neither a block device nor a regular file")]
    NotADevice { path: PathBuf },
}

/// Size in bytes of an open regular file or block device.
pub fn file_size(f: &File) -> io::Result<u64> {
    let md = f.metadata()?;
    if md.file_type().is_block_device() {
        // Seeking to the end of a block device yields its size (no ioctl needed).
        let mut f = f;
        let size = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(0))?;
        Ok(size)
    } else {
        Ok(md.len())
    }
}

/// Identity of a file or block device, for "same device" checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    /// (st_dev, st_ino) of the inode.
    inode: (u64, u64),
    /// st_rdev for block devices.
    rdev: Option<u64>,
}

fn identity(path: &Path) -> io::Result<Identity> {
    let md = fs::metadata(path)?;
    Ok(Identity {
        inode: (md.dev(), md.ino()),
        rdev: md.file_type().is_block_device().then(|| md.rdev()),
    })
}

fn major_minor(rdev: u64) -> (u64, u64) {
    // glibc's gnu_dev_major / gnu_dev_minor encoding.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// Block devices (as (major, minor)) that stand for `path`: itself if it is a block device,
/// and every loop device whose backing file is `path` — or, for a loop device, is the same
/// file as its own backing file (two loop devices over one image are one disk).
fn block_devices_of(path: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(id) = identity(path) else {
        return out;
    };
    let loops = loop_backings();
    let mut files = vec![id.inode];
    if let Some(rdev) = id.rdev {
        let mm = major_minor(rdev);
        out.push(mm);
        if let Some((_, backing)) = loops.iter().find(|(dev, _)| *dev == mm) {
            if let Ok(bid) = identity(backing) {
                files.push(bid.inode);
            }
        }
    }
    for (dev, backing) in loops {
        if let Ok(bid) = identity(&backing) {
            if files.contains(&bid.inode) && !out.contains(&dev) {
                out.push(dev);
            }
        }
    }
    out
}

/// (major, minor) and backing file of every configured loop device.
fn loop_backings() -> Vec<((u64, u64), PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return out;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        if !name.to_string_lossy().starts_with("loop") {
            continue;
        }
        let base = ent.path();
        let Ok(backing) = fs::read_to_string(base.join("loop/backing_file")) else {
            continue;
        };
        let Ok(dev) = fs::read_to_string(base.join("dev")) else {
            continue;
        };
        if let Some(mm) = parse_mm(dev.trim()) {
            out.push((mm, PathBuf::from(backing.trim_end_matches('\n'))));
        }
    }
    out
}

fn parse_mm(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The whole-disk device a partition belongs to, if (major, minor) is a partition.
fn parent_disk(mm: (u64, u64)) -> Option<(u64, u64)> {
    let p = fs::canonicalize(format!("/sys/dev/block/{}:{}", mm.0, mm.1)).ok()?;
    if !p.join("partition").exists() {
        return None;
    }
    parse_mm(fs::read_to_string(p.parent()?.join("dev")).ok()?.trim())
}

/// A mount of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: String,
    pub read_write: bool,
}

/// Unescapes the octal escapes (`\040` for space) used in /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where `path` (a block device or an image file, possibly behind a loop device, or a disk
/// holding a mounted partition) is mounted, if anywhere.
pub fn mount_of(path: &Path) -> Option<Mount> {
    let devs = block_devices_of(path);
    let canon = fs::canonicalize(path).ok();
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 6 {
            continue;
        }
        let sep = fields.iter().position(|f| *f == "-");
        let mount_source = sep.and_then(|i| fields.get(i + 2)).map(|s| unescape(s));
        let mm = parse_mm(fields[2]);
        let hit_dev = mm.is_some_and(|mm| {
            devs.contains(&mm) || parent_disk(mm).is_some_and(|p| devs.contains(&p))
        });
        let hit_source = match (&canon, &mount_source) {
            (Some(c), Some(src)) if src.starts_with('/') => {
                fs::canonicalize(src).ok().as_ref() == Some(c)
            }
            _ => false,
        };
        if hit_dev || hit_source {
            let opts = fields[5];
            return Some(Mount {
                mountpoint: unescape(fields[4]),
                read_write: opts.split(',').any(|o| o == "rw"),
            });
        }
    }
    None
}

/// True if `a` and `b` are the same file or device, including an image file and a loop
/// device backed by it.
pub fn same_device(a: &Path, b: &Path) -> bool {
    let (Ok(ia), Ok(ib)) = (identity(a), identity(b)) else {
        return false;
    };
    if ia.inode == ib.inode {
        return true;
    }
    if let (Some(ra), Some(rb)) = (ia.rdev, ib.rdev) {
        if ra == rb {
            return true;
        }
    }
    let da = block_devices_of(a);
    block_devices_of(b).iter().any(|d| da.contains(d))
}

/// True if the whole disk `disk` holds the partition `part` (both block devices, or loop
/// devices standing for image files).
pub fn holds(disk: &Path, part: &Path) -> bool {
    let disks = block_devices_of(disk);
    block_devices_of(part)
        .into_iter()
        .filter_map(parent_disk)
        .any(|d| disks.contains(&d))
}

/// Opens `target` for writing after checking that it is a block device or regular file, is
/// not mounted, is not `source` (when known) nor the disk holding it, and holds at least `need` bytes. Nothing is
/// written. With `create`, a missing regular file is created (and sized by the caller).
pub fn open_target(
    target: &Path,
    need: u64,
    source: Option<&Path>,
    create: bool,
) -> Result<File, TargetError> {
    let open_err = |source| TargetError::Open {
        path: target.to_path_buf(),
        source,
    };
    let exists = target.exists();
    let mut block_device = false;
    if exists {
        let md = fs::metadata(target).map_err(open_err)?;
        block_device = md.file_type().is_block_device();
        if !(md.file_type().is_block_device() || md.is_file()) {
            return Err(TargetError::NotADevice {
                path: target.to_path_buf(),
            });
        }
        if let Some(src) = source {
            if same_device(src, target) {
                return Err(TargetError::IsSource {
                    path: target.to_path_buf(),
                });
            }
            if holds(target, src) {
                return Err(TargetError::HoldsSource {
                    path: target.to_path_buf(),
                    source_path: src.to_path_buf(),
                });
            }
        }
        if let Some(m) = mount_of(target) {
            return Err(TargetError::Mounted {
                path: target.to_path_buf(),
                mountpoint: m.mountpoint,
            });
        }
    }
    let mut opts = fs::OpenOptions::new();
    opts.read(true).write(true).create(create && !exists);
    if block_device {
        // O_EXCL on a block device claims it: the kernel refuses (EBUSY) while anything else
        // holds it (a mount, active swap, an md/LVM/dm member, another exclusive opener), and
        // keeps others from claiming it while we write. Race-free, unlike the checks above,
        // which stay for their clearer messages.
        opts.custom_flags(libc::O_EXCL);
    }
    let f = opts.open(target).map_err(|e| {
        if block_device && e.raw_os_error() == Some(libc::EBUSY) {
            TargetError::InUse {
                path: target.to_path_buf(),
            }
        } else {
            open_err(e)
        }
    })?;
    let md = f.metadata().map_err(open_err)?;
    let have = file_size(&f).map_err(open_err)?;
    if have < need {
        // A regular file we just created may be grown; anything else is too small.
        if md.is_file() && !exists {
            f.set_len(need).map_err(open_err)?;
        } else {
            return Err(TargetError::TooSmall {
                path: target.to_path_buf(),
                have,
                need,
            });
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
    }

    #[test]
    fn major_minor_matches_proc() {
        // /dev/null is char 1:3; use its rdev even though it is not a block device.
        let md = fs::metadata("/dev/null").unwrap();
        assert_eq!(major_minor(md.rdev()), (1, 3));
    }

    #[test]
    fn same_file_is_same_device_and_other_is_not() {
        let dir = std::env::temp_dir().join(format!("bsw-dev-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let b = dir.join("b");
        fs::write(&a, b"x").unwrap();
        fs::write(&b, b"y").unwrap();
        fs::hard_link(&a, dir.join("a2")).unwrap();
        assert!(same_device(&a, &dir.join("a2")));
        assert!(!same_device(&a, &b));
        assert!(matches!(
            open_target(&a, 1, Some(&dir.join("a2")), false),
            Err(TargetError::IsSource { .. })
        ));
        assert!(matches!(
            open_target(&b, 2, None, false),
            Err(TargetError::TooSmall {
                have: 1,
                need: 2,
                ..
            })
        ));
        assert_eq!(fs::read(&b).unwrap(), b"y", "target untouched");
        fs::remove_dir_all(&dir).unwrap();
    }
}
