//! `--target auto`: the whole disks the kernel knows ([`scan`], from /sys/block), and the one
//! that fits ([`choose`]). Device names differ between machines (sda, nvme0n1); size, model and
//! serial do not, so errors list those.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Name prefixes in /sys/block that are never deployment targets: RAM disks, compressed swap,
/// optical and floppy drives, device-mapper and MD RAID volumes.
const SKIPPED_PREFIXES: &[&str] = &["ram", "zram", "sr", "fd", "dm-", "md"];

/// A whole disk that could be the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its device node, `/dev/NAME`.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Model as the kernel reports it (`device/model`, or an MMC card's `device/name`).
    pub model: Option<String>,
    /// Serial number (`device/serial`, `serial`, or SCSI VPD page 0x80).
    pub serial: Option<String>,
    /// The kernel marks the medium removable (USB sticks, card readers).
    pub removable: bool,
    /// The device is read-only.
    pub read_only: bool,
    /// Spinning disk (`queue/rotational`), when the kernel says.
    pub rotational: Option<bool>,
    /// A loop device's backing file.
    pub backing_file: Option<PathBuf>,
}

fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {} = {bytes} bytes", UNITS[u])
    }
}

impl fmt::Display for Candidate {
    /// `/dev/sda (465.8 GiB = 500107862016 bytes, model X, serial Y)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, model {}, serial {}",
            self.path.display(),
            size_text(self.size),
            self.model.as_deref().unwrap_or("unknown"),
            self.serial.as_deref().unwrap_or("unknown")
        )?;
        if let Some(b) = &self.backing_file {
            write!(f, ", backing file {}", b.display())?;
        }
        f.write_str(")")
    }
}

/// Why `--target auto` chose no disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutoError {
    /// The kernel lists no whole disks at all.
    #[error("no disks found in /sys/block")]
    NoDisks,
    /// Every disk is ruled out; each with its reason.
    #[error("no disk fits (need {need} bytes): {}", excluded_text(.excluded))]
    NoneFits {
        /// The smallest size that fits, in bytes.
        need: u64,
        /// Each disk with the reason it was ruled out.
        excluded: Vec<(Candidate, String)>,
    },
    /// More than one disk fits: the choice is left to the user.
    #[error(
        "{} disks fit (need {need} bytes), name one with --target: {}{}",
        .fits.len(),
        fits_text(.fits),
        ruled_out_suffix(.excluded)
    )]
    Ambiguous {
        /// The smallest size that fits, in bytes.
        need: u64,
        /// The disks that fit.
        fits: Vec<Candidate>,
        /// The others, each with the reason it was ruled out.
        excluded: Vec<(Candidate, String)>,
    },
}

fn excluded_text(excluded: &[(Candidate, String)]) -> String {
    excluded
        .iter()
        .map(|(c, why)| format!("{c}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn fits_text(fits: &[Candidate]) -> String {
    fits.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn ruled_out_suffix(excluded: &[(Candidate, String)]) -> String {
    if excluded.is_empty() {
        String::new()
    } else {
        format!("; ruled out: {}", excluded_text(excluded))
    }
}

/// The one candidate that can take a deployment of `need` bytes.
///
/// A candidate is ruled out when it is smaller than `need`, read-only, removable (not an
/// internal disk), or when `excluded` gives a reason (mounted, holds a mounted partition, the
/// boot medium, the source...). Exactly one left: it is chosen. None or several: an error
/// listing the disks with size, model and serial, and each ruled-out one with its reason.
pub fn choose(
    cands: &[Candidate],
    need: u64,
    excluded: impl Fn(&Candidate) -> Option<String>,
) -> Result<Candidate, AutoError> {
    if cands.is_empty() {
        return Err(AutoError::NoDisks);
    }
    let mut fits = Vec::new();
    let mut out = Vec::new();
    for c in cands {
        let why = if c.size < need {
            Some(format!("too small ({} < {need} bytes)", c.size))
        } else if c.read_only {
            Some("read-only".to_owned())
        } else if c.removable {
            Some("removable (not an internal disk)".to_owned())
        } else {
            excluded(c)
        };
        match why {
            Some(why) => out.push((c.clone(), why)),
            None => fits.push(c.clone()),
        }
    }
    match fits.len() {
        1 => Ok(fits.remove(0)),
        0 => Err(AutoError::NoneFits {
            need,
            excluded: out,
        }),
        _ => Err(AutoError::Ambiguous {
            need,
            fits,
            excluded: out,
        }),
    }
}

/// The whole disks in /sys/block, by name: not RAM disks, zram, optical or floppy drives,
/// device-mapper or MD volumes, not empty (size 0), and loop devices only when they have a
/// backing file.
pub fn scan() -> Vec<Candidate> {
    scan_in(Path::new("/sys/block"), Path::new("/dev"))
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The serial in SCSI VPD page 0x80 (unit serial number): length at byte 3, ASCII from 4.
fn vpd_serial(p: &Path) -> Option<String> {
    let b = fs::read(p).ok()?;
    let len = usize::from(*b.get(3)?);
    let s = String::from_utf8_lossy(b.get(4..4 + len)?)
        .trim()
        .to_owned();
    (!s.is_empty()).then_some(s)
}

fn candidate(sys: &Path, name: &str, dev: &Path) -> Option<Candidate> {
    if SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let backing_file = read_trimmed(&sys.join("loop/backing_file")).map(PathBuf::from);
    if name.starts_with("loop") && backing_file.is_none() {
        return None;
    }
    let size = read_trimmed(&sys.join("size"))?.parse::<u64>().ok()? * 512;
    if size == 0 {
        return None;
    }
    let flag = |f: &str| read_trimmed(&sys.join(f)).map(|v| v == "1");
    let d = sys.join("device");
    Some(Candidate {
        // Names with a slash (cciss/c0d0) appear with '!' in /sys/block.
        path: dev.join(name.replace('!', "/")),
        size,
        model: read_trimmed(&d.join("model")).or_else(|| read_trimmed(&d.join("name"))),
        serial: read_trimmed(&d.join("serial"))
            .or_else(|| read_trimmed(&sys.join("serial")))
            .or_else(|| vpd_serial(&d.join("vpd_pg80"))),
        removable: flag("removable").unwrap_or(false),
        read_only: flag("ro").unwrap_or(false),
        rotational: flag("queue/rotational"),
        backing_file,
    })
}

fn scan_in(sys_block: &Path, dev: &Path) -> Vec<Candidate> {
    let Ok(rd) = fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| candidate(&sys_block.join(n), n, dev))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, gib: u64, model: &str, serial: &str) -> Candidate {
        Candidate {
            path: PathBuf::from(path),
            size: gib << 30,
            model: Some(model.into()),
            serial: Some(serial.into()),
            removable: false,
            read_only: false,
            rotational: Some(false),
            backing_file: None,
        }
    }

    fn no_reason(_: &Candidate) -> Option<String> {
        None
    }

    #[test]
    fn the_only_disk_that_fits_is_chosen() {
        let c = [
            disk("/dev/sda", 8, "SMALL", "S1"),
            disk("/dev/nvme0n1", 512, "BIG", "B1"),
        ];
        let got = choose(&c, 100 << 30, no_reason).unwrap();
        assert_eq!(got.path, PathBuf::from("/dev/nvme0n1"));
    }

    #[test]
    fn none_fits_lists_every_disk_with_its_reason() {
        let mut ro = disk("/dev/sdc", 64, "RO", "R1");
        ro.read_only = true;
        let mut usb = disk("/dev/sdd", 64, "STICK", "U1");
        usb.removable = true;
        let c = [disk("/dev/sda", 8, "SMALL", "S1"), ro, usb];
        let e = choose(&c, 32 << 30, no_reason).unwrap_err();
        let msg = e.to_string();
        println!("{msg}");
        assert!(matches!(e, AutoError::NoneFits { ref excluded, .. } if excluded.len() == 3));
        assert!(!msg.contains('\n'), "one line: {msg}");
        for want in [
            "no disk fits (need 34359738368 bytes)",
            "/dev/sda (8.0 GiB = 8589934592 bytes, model SMALL, serial S1): too small",
            "/dev/sdc (64.0 GiB = 68719476736 bytes, model RO, serial R1): read-only",
            "/dev/sdd (64.0 GiB = 68719476736 bytes, model STICK, serial U1): removable",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg:?}");
        }
    }

    #[test]
    fn two_that_fit_are_refused_listing_both() {
        let c = [
            disk("/dev/sda", 256, "Samsung SSD 870", "S5R1"),
            disk("/dev/sdb", 1024, "WDC WD10EZEX", "WD-XYZ"),
        ];
        let e = choose(&c, 100 << 30, no_reason).unwrap_err();
        let msg = e.to_string();
        println!("{msg}");
        assert!(matches!(e, AutoError::Ambiguous { ref fits, .. } if fits.len() == 2));
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with("2 disks fit (need 107374182400 bytes), name one with --target: "));
        assert!(msg.contains(
            "/dev/sda (256.0 GiB = 274877906944 bytes, model Samsung SSD 870, serial S5R1)"
        ));
        assert!(msg.contains(
            "/dev/sdb (1.0 TiB = 1099511627776 bytes, model WDC WD10EZEX, serial WD-XYZ)"
        ));
        assert!(!msg.contains("ruled out"));
    }

    #[test]
    fn excluded_disks_are_named_with_the_callers_reason() {
        let c = [
            disk("/dev/sda", 256, "BOOT", "B0"),
            disk("/dev/sdb", 256, "TARGET", "T0"),
            disk("/dev/sdc", 256, "OTHER", "O0"),
        ];
        let why = |c: &Candidate| match c.path.to_str() {
            Some("/dev/sda") => Some("the boot medium (holds /)".to_owned()),
            _ => None,
        };
        let e = choose(&c, 1 << 30, why).unwrap_err();
        let msg = e.to_string();
        println!("{msg}");
        assert!(msg.contains(
            "; ruled out: /dev/sda (256.0 GiB = 274877906944 bytes, model BOOT, serial B0): the boot medium (holds /)"
        ));
        let why2 = |c: &Candidate| match c.path.to_str() {
            Some("/dev/sdb") => None,
            _ => Some("mounted on /mnt".to_owned()),
        };
        assert_eq!(
            choose(&c, 1 << 30, why2).unwrap().path,
            PathBuf::from("/dev/sdb")
        );
    }

    #[test]
    fn no_candidates_at_all() {
        let e = choose(&[], 1, no_reason).unwrap_err();
        assert_eq!(e.to_string(), "no disks found in /sys/block");
    }

    #[test]
    fn unknown_model_and_serial_are_said_so() {
        let mut c = disk("/dev/loop3", 0, "", "");
        c.size = 1000;
        c.model = None;
        c.serial = None;
        c.backing_file = Some(PathBuf::from("/tmp/a.img"));
        assert_eq!(
            c.to_string(),
            "/dev/loop3 (1000 B, model unknown, serial unknown, backing file /tmp/a.img)"
        );
    }

    /// The parsing of sysfs attributes that this machine's disks do not have (a SCSI disk's
    /// VPD serial, an MMC card's name, a name with '!'), on a tree laid out as the kernel does.
    #[test]
    fn sysfs_attributes_of_scsi_mmc_and_cciss_disks() {
        let t = tempfile::tempdir().unwrap();
        let mk = |name: &str, files: &[(&str, &[u8])]| {
            for (f, v) in files {
                let p = t.path().join(name).join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, v).unwrap();
            }
        };
        let mut vpd = vec![0u8, 0x80, 0, 12];
        vpd.extend_from_slice(b"  WD-WCC4E1  ");
        mk(
            "sda",
            &[
                ("size", b"1953525168\n"),
                ("removable", b"0\n"),
                ("ro", b"0\n"),
                ("queue/rotational", b"1\n"),
                ("device/model", b"WDC WD10EZEX-08W \n"),
                ("device/vpd_pg80", &vpd),
            ],
        );
        mk(
            "mmcblk0",
            &[
                ("size", b"62333952\n"),
                ("removable", b"0\n"),
                ("device/name", b"SD64G\n"),
                ("device/serial", b"0x1234abcd\n"),
            ],
        );
        mk("cciss!c0d0", &[("size", b"2048\n")]);
        mk("sr0", &[("size", b"2048\n")]);
        mk("loop0", &[("size", b"2048\n")]);
        mk("sdz", &[("size", b"0\n")]);
        let got = scan_in(t.path(), Path::new("/dev"));
        let paths: Vec<_> = got.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(paths, ["/dev/cciss/c0d0", "/dev/mmcblk0", "/dev/sda"]);
        let sda = &got[2];
        assert_eq!(sda.size, 1953525168 * 512);
        assert_eq!(sda.model.as_deref(), Some("WDC WD10EZEX-08W"));
        assert_eq!(sda.serial.as_deref(), Some("WD-WCC4E1"));
        assert_eq!(sda.rotational, Some(true));
        assert_eq!(got[1].model.as_deref(), Some("SD64G"));
        assert_eq!(got[1].serial.as_deref(), Some("0x1234abcd"));
    }
}
