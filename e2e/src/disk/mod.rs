//! Whole-disk fixtures and checks: real GPT and MBR disk images (sgdisk/sfdisk tables, real
//! filesystems from mkfs.*, boot code from syslinux, random "hidden" data after the table),
//! and the checks a clone must pass (`sgdisk -v`, `sfdisk -d`, hidden sectors, fsck and file
//! contents of every partition). Loop devices (attached and detached by guards) for the
//! partition-level tools and for block-device targets.
//!
//! Tests call [`need_tools`] first: a missing tool prints `SKIP`, or fails the test when
//! `BLOCKSWARM_REQUIRE_FS_TOOLS=1` (CI).

mod check;
mod fixture;

pub use check::*;
pub use fixture::*;

use crate::is_root;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha1::{Digest, Sha1};

/// Directories searched for tools after `PATH` (Debian keeps mkfs.*, sgdisk in sbin).
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// Every tool the whole-disk fixtures and checks run.
pub const DISK_TOOLS: &[&str] = &[
    "sgdisk",
    "sfdisk",
    "losetup",
    "partx",
    "addpart",
    "mount",
    "umount",
    "mke2fs",
    "e2fsck",
    "debugfs",
    "mkfs.fat",
    "fsck.fat",
    "mcopy",
    "mkntfs",
    "ntfscp",
    "ntfscat",
    "ntfsfix",
    "ntfs-3g.probe",
    "mkswap",
    "mkfs.xfs",
    "xfs_repair",
];

/// Files the fixtures need besides tools (syslinux-common's boot code).
pub const GPTMBR_BIN: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
pub const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";

/// Full path of `name` if it is an executable on `PATH` or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// True when missing tools must fail the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").is_ok_and(|v| v == "1")
}

/// True when every tool of [`DISK_TOOLS`] plus `extra`, the syslinux boot code and root
/// (loop devices, mounts) are available. Otherwise prints `SKIP` and returns false, or panics
/// under `BLOCKSWARM_REQUIRE_FS_TOOLS=1`.
pub fn need_tools(test: &str, extra: &[&str]) -> bool {
    let mut missing: Vec<String> = DISK_TOOLS
        .iter()
        .chain(extra)
        .filter(|t| find_tool(t).is_none())
        .map(|t| t.to_string())
        .collect();
    for f in [GPTMBR_BIN, MBR_BIN] {
        if !Path::new(f).exists() {
            missing.push(f.to_string());
        }
    }
    if !is_root() {
        missing.push("root (loop devices, mounts)".into());
    }
    if missing.is_empty() {
        return true;
    }
    if tools_required() {
        panic!("{test}: required tools missing (BLOCKSWARM_REQUIRE_FS_TOOLS=1): {missing:?}");
    }
    println!("SKIP {test}: missing: {missing:?} (scripts/install-deps.sh installs them)");
    false
}

/// A command for `name`, found on `PATH` or in the sbin directories, stdin closed.
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(find_tool(name).unwrap_or_else(|| PathBuf::from(name)));
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd`, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and returns its stdout; panics with its output unless it exits 0.
pub fn run_out(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cmd` run with `input` on stdin; panics unless it exits 0.
pub fn run_with_input(cmd: &mut Command, input: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\ninput:\n{input}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads `len` bytes at `off` of `path` (file or block device).
pub fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off)
        .unwrap_or_else(|e| panic!("read {len} bytes at {off} of {}: {e}", path.display()));
    buf
}

/// Overwrites bytes at `off` of `path`.
pub fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
    f.sync_all().unwrap();
}

/// Inverts the byte at `off` of `path`.
pub fn flip_byte(path: &Path, off: u64) {
    let b = read_at(path, off, 1);
    write_at(path, off, &[b[0] ^ 0xff]);
}

/// A scratch directory for one test, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("blockswarm-disk-")
        .tempdir()
        .unwrap()
}

/// Size in bytes of a file or block device.
pub fn size_of(path: &Path) -> u64 {
    use std::io::Seek;
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(std::io::SeekFrom::End(0)).unwrap()
}

/// SHA-1 of a whole file or block device, streamed (disks do not fit in memory).
pub fn sha1_stream(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// A loop device, detached when dropped.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    fn attach_with(file: &Path, args: &[String]) -> LoopDev {
        let out = run_out(tool("losetup").args(["-f", "--show"]).args(args).arg(file));
        LoopDev {
            dev: PathBuf::from(out.trim()),
        }
    }

    /// The whole of `file`, with partition scanning (`losetup -P`).
    pub fn whole(file: &Path) -> LoopDev {
        Self::attach_with(file, &["-P".into()])
    }

    /// `size` bytes of `file` from `offset`; read-only unless `rw`.
    pub fn slice(file: &Path, offset: u64, size: u64, rw: bool) -> LoopDev {
        let mut args = vec![
            "--offset".into(),
            offset.to_string(),
            "--sizelimit".into(),
            size.to_string(),
        ];
        if !rw {
            args.push("-r".into());
        }
        Self::attach_with(file, &args)
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The partitions the kernel currently has for this device: (number, start sector,
    /// sectors), from /sys/block/loopN/loopNpM.
    pub fn kernel_partitions(&self) -> Vec<(u32, u64, u64)> {
        let name = self.name();
        let sys = Path::new("/sys/block").join(&name);
        let mut v = Vec::new();
        for e in std::fs::read_dir(&sys).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(num) = n.strip_prefix(&format!("{name}p")) else {
                continue;
            };
            let read = |f: &str| -> u64 {
                std::fs::read_to_string(e.path().join(f))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            v.push((num.parse().unwrap(), read("start"), read("size")));
        }
        v.sort();
        v
    }

    /// Partition `n`'s device node, `/dev/loopNpM`.
    pub fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    /// Makes the kernel know the partitions of the table on the device: `losetup -P` already
    /// did on kernels with the GPT/MBR parsers; elsewhere `partx -a` adds them (BLKPG).
    pub fn ensure_partitions(&self) {
        if self.kernel_partitions().is_empty() {
            run_out(tool("partx").arg("-a").arg(&self.dev));
        }
        settle();
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = run(tool("losetup").arg("-d").arg(&self.dev));
    }
}

/// Waits for udev (if any) to finish with new block devices, so nothing holds them open.
pub fn settle() {
    if find_tool("udevadm").is_some() {
        let _ = run(tool("udevadm").arg("settle"));
    }
}

/// A mounted filesystem, unmounted when dropped.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// `mount -t FSTYPE -o OPTS DEV DIR`.
    pub fn new(dev: &Path, dir: &Path, fstype: &str, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        run_out(
            tool("mount")
                .args(["-t", fstype, "-o", opts])
                .arg(dev)
                .arg(dir),
        );
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !run(tool("umount").arg(&self.dir)).status.success() {
            let _ = run(tool("umount").arg("-l").arg(&self.dir));
        }
    }
}

/// Whether this kernel reads partition tables of `kind` itself (CONFIG_EFI_PARTITION /
/// CONFIG_MSDOS_PARTITION): attaches `disk` (which has such a table) with partition scanning
/// and looks for its partitions in sysfs. Some VM kernels have neither parser.
pub fn kernel_reads_tables(disk: &Path) -> bool {
    let l = LoopDev::attach_with(disk, &["-P".into(), "-r".into()]);
    !l.kernel_partitions().is_empty()
}
