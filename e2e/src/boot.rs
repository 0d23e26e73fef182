//! "A clone boots": the BIOS-bootable fixture disk built by scripts/build-boot-fixture.sh
//! (extlinux on ext4, Debian's kernel, a busybox-static initramfs whose /init prints a marker)
//! and a helper that boots a disk image in QEMU (TCG: no KVM here) and waits for the marker on
//! the serial console.
//!
//! The wait ends on an event: the marker line read from QEMU's stdout (the guest's ttyS0), or
//! QEMU's exit; a deadline only guards against a hung guest.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{is_root, run_ok};

/// The emulator the boot tests run (Debian's qemu-system-x86, with seabios).
pub const QEMU: &str = "qemu-system-x86_64";

/// Tools scripts/build-boot-fixture.sh runs (see scripts/install-deps.sh for the packages).
pub const FIXTURE_TOOLS: &[&str] = &[
    "sfdisk",
    "mkfs.ext4",
    "extlinux",
    "cpio",
    "gzip",
    "mount",
    "umount",
    "flock",
    "dpkg-deb",
    "apt-get",
    "apt-cache",
];

/// Files the fixture needs: syslinux's GPT boot code (syslinux-common) and the static busybox
/// (busybox-static).
pub const FIXTURE_FILES: &[&str] = &["/usr/lib/syslinux/mbr/gptmbr.bin", "/bin/busybox"];

/// How long a boot may take before it counts as hung. A TCG boot of Debian's kernel takes
/// 15-25 s on 2 busy cores (most of it decompressing the kernel): a failure guard, not a wait.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// Directories searched for tools after `PATH` (Debian keeps mkfs.* and sfdisk in sbin).
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// Full path of `name` if it is an executable on `PATH` or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// True when missing tools must fail the test instead of skipping it (CI).
pub fn tools_required() -> bool {
    std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").is_ok_and(|v| v == "1")
}

/// Returns true when QEMU, the fixture's tools and files are there and we are root.
/// Otherwise prints `SKIP` and returns false, or panics under `BLOCKSWARM_REQUIRE_FS_TOOLS=1`.
pub fn need_boot_tools(test: &str) -> bool {
    let mut missing: Vec<String> = std::iter::once(QEMU)
        .chain(FIXTURE_TOOLS.iter().copied())
        .filter(|t| find_tool(t).is_none())
        .map(String::from)
        .collect();
    missing.extend(
        FIXTURE_FILES
            .iter()
            .filter(|f| !Path::new(f).exists())
            .map(|f| f.to_string()),
    );
    if !is_root() {
        missing.push("root (loop mount)".into());
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

/// scripts/build-netboot.sh in this workspace.
pub fn netboot_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("build-netboot.sh")
}

/// Builds the netboot system (vmlinuz, initrd.img) into `dir`, or returns false (skip) when
/// its tools are missing.
pub fn build_netboot(dir: &Path) -> bool {
    if find_tool("depmod").is_none() {
        assert!(!tools_required(), "depmod (kmod) missing");
        println!("SKIP: depmod missing (scripts/install-deps.sh installs kmod)");
        return false;
    }
    run_ok(Command::new("bash").arg(netboot_script()).arg(dir));
    let size = std::fs::metadata(dir.join("initrd.img")).unwrap().len();
    assert!(size < 40 << 20, "initrd.img is {size} bytes");
    true
}

/// The bootable fixture: a GPT disk image and the line its guest prints when it has booted.
pub struct BootFixture {
    pub disk: PathBuf,
    pub marker: String,
}

/// scripts/build-boot-fixture.sh in this workspace.
pub fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("build-boot-fixture.sh")
}

/// Builds the fixture in `dir` (`dir/disk.img`, `dir/marker`) with a disk of `mib` MiB.
/// The kernel is cached under /var/cache/blockswarm (or `BLOCKSWARM_CACHE`): only the first
/// run downloads it.
pub fn build_boot_fixture(dir: &Path, mib: u64) -> BootFixture {
    run_ok(
        Command::new("bash")
            .arg(fixture_script())
            .arg(dir)
            .env("BLOCKSWARM_BOOT_MIB", mib.to_string())
            .stdin(Stdio::null()),
    );
    let marker = std::fs::read_to_string(dir.join("marker"))
        .expect("fixture marker")
        .trim()
        .to_string();
    assert!(
        marker.starts_with("BLOCKSWARM-BOOT-OK "),
        "bad marker {marker:?}"
    );
    BootFixture {
        disk: dir.join("disk.img"),
        marker,
    }
}

/// A boot that printed the marker.
#[derive(Debug)]
pub struct Boot {
    /// Everything the guest printed on its serial console (SYSLINUX banner, kernel log, marker).
    pub console: String,
    /// From QEMU's start to the marker line.
    pub to_marker: Duration,
    /// QEMU's exit status when the guest powered off by itself after the marker (`None`: it
    /// had to be killed).
    pub exit: Option<ExitStatus>,
}

/// A boot that did not print the marker.
#[derive(Debug)]
pub struct BootError {
    pub reason: String,
    pub console: String,
    pub stderr: String,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.console.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        writeln!(f, "{}", self.reason)?;
        writeln!(
            f,
            "--- serial console (last {} of {} lines) ---",
            tail.len(),
            lines.len()
        )?;
        for l in tail {
            writeln!(f, "{l}")?;
        }
        write!(f, "--- qemu stderr ---\n{}", self.stderr)
    }
}

impl std::error::Error for BootError {}

/// QEMU, killed if still running when dropped (a panicking test leaves no guest behind).
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The QEMU command line: a BIOS PC (SeaBIOS), TCG, the disk as a virtio disk (under TCG,
/// SeaBIOS reads the kernel 4x faster through virtio than through IDE) with `snapshot=on` (the
/// guest's writes go to a temporary overlay: the image stays as deployed), ttyS0 on stdout, no display. `graphics=off` makes SeaBIOS print on the serial port too
/// ("Booting from Hard Disk...", gptmbr's "Missing OS"); a failed boot reboots at once
/// (`reboot-timeout=0`), as does the kernel's `panic=-1`, and `-no-reboot` turns that reboot
/// into QEMU's exit: a disk that does not boot ends the wait in a second, not at the deadline.
pub fn qemu_command(disk: &Path) -> Command {
    let qemu = find_tool(QEMU).unwrap_or_else(|| PathBuf::from(QEMU));
    let mut c = Command::new(qemu);
    c.args([
        "-accel",
        "tcg",
        "-machine",
        "graphics=off",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-boot",
        "order=c,reboot-timeout=0",
        "-no-reboot",
        "-serial",
        "stdio",
        "-drive",
    ])
    .arg(format!(
        "file={},format=raw,if=virtio,snapshot=on",
        disk.display().to_string().replace(',', ",,")
    ));
    c
}

/// Boots `disk` and waits until a console line contains `marker`, QEMU exits, or `deadline`
/// passes. After the marker, waits (within the same deadline) for the guest's `poweroff -f`
/// to end QEMU, so the console text is complete.
pub fn boot_until(disk: &Path, marker: &str, deadline: Duration) -> Result<Boot, BootError> {
    console_until(
        qemu_command(disk),
        &disk.display().to_string(),
        marker,
        deadline,
        true,
    )
}

/// Runs the QEMU command `cmd` (its serial console on stdout) and waits until a console line
/// contains `marker`, QEMU exits, or `deadline` passes; then (within the same deadline) for
/// QEMU's exit if `wait_exit` (else QEMU is killed at the marker: a guest left in a shell).
/// `what` names the guest in errors.
pub fn console_until(
    mut cmd: Command,
    what: &str,
    marker: &str,
    deadline: Duration,
    wait_exit: bool,
) -> Result<Boot, BootError> {
    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guest = Guest(cmd.spawn().map_err(|e| BootError {
        reason: format!("cannot start {cmd:?}: {e}"),
        console: String::new(),
        stderr: String::new(),
    })?);
    let stdout = guest.0.stdout.take().expect("piped stdout");
    let mut stderr = guest.0.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    // One line per message; the channel closes when QEMU closes its stdout (exit).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let end = start + deadline;
    let mut console = String::new();
    let mut to_marker = None;
    let mut timed_out = false;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = to_marker.is_none() && line.contains(marker);
                if hit {
                    to_marker = Some(start.elapsed());
                }
                console.push_str(&line);
                console.push('\n');
                if hit && !wait_exit {
                    timed_out = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let exit = if timed_out {
        let _ = guest.0.kill();
        let _ = guest.0.wait();
        None
    } else {
        guest.0.wait().ok()
    };
    let stderr = err_reader.join().unwrap_or_default();
    match to_marker {
        Some(to_marker) => Ok(Boot {
            console,
            to_marker,
            exit,
        }),
        None => Err(BootError {
            reason: if timed_out {
                format!(
                    "{what}: no {marker:?} on the serial console within {deadline:?} (QEMU killed)"
                )
            } else {
                format!(
                    "{what}: QEMU exited ({}) after {:?} without printing {marker:?}",
                    exit.map_or("?".into(), |s| s.to_string()),
                    start.elapsed()
                )
            },
            console,
            stderr,
        }),
    }
}
