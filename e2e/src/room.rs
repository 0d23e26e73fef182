//! A computer room in network namespaces for the netboot benches (e2e/tests/room.rs): a
//! namespace `bsroom-PID-N` holding a bridge `br0` (10.79.0.1/24, the seeder's address), tap
//! devices `tap0..` on the bridge for QEMU guests, and the lab's own DHCP server (busybox
//! udhcpd, 10.79.0.2, leases 10.79.0.100-199) in a second namespace `bsroom-PID-N-lab` joined
//! to the bridge by a veth. Nothing in it is routed to the host: the guests' traffic stays
//! inside the namespaces. [`Room`] removes the namespaces and ends its processes when dropped
//! (also on a panic); [`Vms`] runs QEMU guests in the room and follows their serial consoles.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::boot::{find_tool, QEMU};
use crate::{run_ok, wait_until, Proc};

/// The seeder's address on the room's bridge.
pub const SEEDER_IP: &str = "10.79.0.1";
/// The lab DHCP server's address.
pub const LAB_DHCP_IP: &str = "10.79.0.2";

static ROOMS: AtomicUsize = AtomicUsize::new(0);

/// The namespaces, bridge, taps and the lab's DHCP server; torn down on drop.
pub struct Room {
    /// The namespace with the bridge, the taps, the seeder and dnsmasq.
    pub ns: String,
    /// The lab DHCP server's namespace.
    pub lab: String,
    dir: PathBuf,
    daemons: Vec<Proc>,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl Room {
    /// Creates the room with `taps` tap devices and starts the lab's DHCP server; logs and
    /// configuration files go in `dir`.
    pub fn new(dir: &Path, taps: usize) -> Room {
        let n = ROOMS.fetch_add(1, Ordering::SeqCst);
        let ns = format!("bsroom-{}-{n}", std::process::id());
        let mut room = Room {
            lab: format!("{ns}-lab"),
            ns,
            dir: dir.to_path_buf(),
            daemons: Vec::new(),
        };
        // The guard exists before the first namespace: a failing step below still cleans up.
        let (ns, lab) = (room.ns.clone(), room.lab.clone());
        ip(&["netns", "add", &ns]);
        ip(&["netns", "add", &lab]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SEEDER_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        ip(&[
            "-n", &ns, "link", "add", "vlab", "type", "veth", "peer", "name", "eth0", "netns", &lab,
        ]);
        ip(&["-n", &ns, "link", "set", "vlab", "master", "br0", "up"]);
        ip(&["-n", &lab, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &lab,
            "addr",
            "add",
            &format!("{LAB_DHCP_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &lab, "link", "set", "eth0", "up"]);
        for i in 0..taps {
            let tap = format!("tap{i}");
            ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
            ip(&["-n", &ns, "link", "set", &tap, "master", "br0", "up"]);
        }

        // The lab's DHCP server: addresses only, no boot information (that is dnsmasq's
        // proxy DHCP's job).
        let conf = dir.join("udhcpd.conf");
        let leases = dir.join("udhcpd.leases");
        std::fs::write(&leases, b"").unwrap();
        std::fs::write(
            &conf,
            format!(
                "start 10.79.0.100\nend 10.79.0.199\ninterface eth0\nmax_leases 100\n\
                 lease_file {}\npidfile {}\noption subnet 255.255.255.0\noption lease 3600\n",
                leases.display(),
                dir.join("udhcpd.pid").display()
            ),
        )
        .unwrap();
        let mut cmd = room.exec_in(&lab.clone(), Path::new("busybox"));
        cmd.args(["udhcpd", "-f"]).arg(&conf);
        let p = room.spawn("udhcpd", &mut cmd);
        let log = p.stderr.clone();
        room.daemons.push(p);
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("started")),
            "udhcpd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        room
    }

    /// `program` run inside namespace `ns` (`ip netns exec`, which execs it: the child's pid
    /// is the program's).
    pub fn exec_in(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// `program` run inside the room's main namespace.
    pub fn exec(&self, program: &Path) -> Command {
        self.exec_in(&self.ns, program)
    }

    /// Starts `cmd` with its output in the room's directory; the caller keeps the [`Proc`].
    pub fn spawn(&self, name: &str, cmd: &mut Command) -> Proc {
        Proc::spawn(name, cmd, &self.dir)
    }

    /// Starts a daemon that lives as long as the room (ended before the namespaces go).
    pub fn daemon(&mut self, name: &str, cmd: &mut Command) -> &Proc {
        let p = self.spawn(name, cmd);
        self.daemons.push(p);
        self.daemons.last().unwrap()
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        for mut p in self.daemons.drain(..) {
            p.kill();
        }
        // Deleting a namespace removes its bridge, taps and veth end.
        for ns in [&self.lab, &self.ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The QEMU guest command of the room: a BIOS PC (SeaBIOS, `graphics=off` so it and the
/// NIC's iPXE ROM print on the serial port), TCG, 1 GiB, one virtio NIC on `tap` with `mac`,
/// the serial console on stdio, no display. The caller adds disks and boot options.
pub fn qemu_in_room(room: &Room, tap: &str, mac: &str) -> Command {
    let qemu = find_tool(QEMU).unwrap_or_else(|| PathBuf::from(QEMU));
    let mut c = room.exec(&qemu);
    c.args([
        "-accel",
        "tcg",
        "-machine",
        "graphics=off",
        "-m",
        "1024",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-netdev",
    ])
    .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
    .args(["-device"])
    .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"));
    c
}

/// A `-drive` argument for a raw virtio disk.
pub fn virtio_disk(path: &Path) -> String {
    format!(
        "file={},format=raw,if=virtio",
        path.display().to_string().replace(',', ",,")
    )
}

/// One guest: its serial console so far and the times its milestones appeared.
pub struct Vm {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Everything the guest printed on its serial console.
    pub console: String,
    pub started: Instant,
    /// Set when QEMU has exited.
    pub exit: Option<ExitStatus>,
    watch: Vec<(String, String)>,
    /// (label, time since QEMU's start) of each watched text, in the order seen.
    pub marks: Vec<(String, Duration)>,
    checked: usize,
    /// The console, also written as it comes to `dir/NAME.console`.
    log: Option<std::fs::File>,
}

impl Vm {
    /// Time of milestone `label`, if seen.
    pub fn mark(&self, label: &str) -> Option<Duration> {
        self.marks.iter().find(|(l, _)| l == label).map(|m| m.1)
    }

    /// Types `text` on the guest's serial console.
    pub fn type_text(&mut self, text: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(text.as_bytes());
            let _ = s.flush();
        }
    }

    /// The last `n` console lines (for failure messages).
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Records the watched texts that appeared in the new console text.
    fn check(&mut self) {
        let bytes = self.console.as_bytes();
        for (label, text) in &self.watch {
            if self.marks.iter().any(|(l, _)| l == label) {
                continue;
            }
            let from = self.checked.saturating_sub(text.len());
            if bytes[from..]
                .windows(text.len())
                .any(|w| w == text.as_bytes())
            {
                self.marks.push((label.clone(), self.started.elapsed()));
            }
        }
        self.checked = bytes.len();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Guests running at once, their consoles read by one thread each into one channel.
pub struct Vms {
    pub vms: Vec<Vm>,
    tx: mpsc::Sender<(usize, Option<Vec<u8>>)>,
    rx: mpsc::Receiver<(usize, Option<Vec<u8>>)>,
}

impl Default for Vms {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Vms {
            vms: Vec::new(),
            tx,
            rx,
        }
    }
}

impl Vms {
    /// Starts QEMU (`cmd`, serial console on stdout, copied to `dir/NAME.console`; stderr to
    /// `dir/NAME.qemu.err`) and
    /// watches its console for each (label, text) of `watch`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, watch: &[(&str, &str)], dir: &Path) {
        let err = std::fs::File::create(dir.join(format!("{name}.qemu.err"))).unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut out = child.stdout.take().unwrap();
        let idx = self.vms.len();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((idx, Some(buf[..n].to_vec()))).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send((idx, None));
        });
        self.vms.push(Vm {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            console: String::new(),
            started: Instant::now(),
            exit: None,
            watch: watch
                .iter()
                .map(|(l, t)| (l.to_string(), t.to_string()))
                .collect(),
            marks: Vec::new(),
            checked: 0,
            log: std::fs::File::create(dir.join(format!("{name}.console"))).ok(),
        });
    }

    /// Follows the consoles until `step` returns true (called after each piece of console
    /// output, each exit, and at least once a second: it may type on a console), or
    /// `deadline`. Returns whether `step` returned true.
    pub fn run_until(
        &mut self,
        deadline: Duration,
        mut step: impl FnMut(&mut [Vm]) -> bool,
    ) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if step(&mut self.vms) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok((i, Some(bytes))) => {
                    let vm = &mut self.vms[i];
                    if let Some(f) = vm.log.as_mut() {
                        let _ = f.write_all(&bytes);
                    }
                    vm.console.push_str(&String::from_utf8_lossy(&bytes));
                    vm.check();
                }
                Ok((i, None)) => {
                    let vm = &mut self.vms[i];
                    vm.exit = vm.child.wait().ok();
                    vm.marks
                        .push(("qemu exit".to_string(), vm.started.elapsed()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return step(&mut self.vms),
            }
        }
    }

    /// A failure report: each guest's milestones and last console lines.
    pub fn report(&self, lines: usize) -> String {
        let mut s = String::new();
        for vm in &self.vms {
            s.push_str(&format!(
                "=== {} (exit {:?}) marks {:?}\n{}\n",
                vm.name,
                vm.exit,
                vm.marks,
                vm.tail(lines)
            ));
        }
        s
    }
}

/// Whether `target` holds the same bytes as `source` in every used extent of `m` clipped to
/// `[from, to)`: a whole-disk clone's partitions, without the GPT the receiver rewrites for
/// the target's size (sector 0 to the first partition, and the backup table at the end).
pub fn same_used_bytes(
    source: &Path,
    target: &Path,
    m: &blockswarm_manifest::Manifest,
    from: u64,
    to: u64,
) -> bool {
    use std::os::unix::fs::FileExt;
    let (s, t) = (
        std::fs::File::open(source).unwrap(),
        std::fs::File::open(target).unwrap(),
    );
    let mut compared = 0u64;
    for e in m.map.extents() {
        let (a, b) = (e.offset.max(from), (e.offset + e.length).min(to));
        let mut off = a;
        while off < b {
            let n = (b - off).min(1 << 20) as usize;
            let (mut x, mut y) = (vec![0u8; n], vec![0u8; n]);
            s.read_exact_at(&mut x, off).unwrap();
            t.read_exact_at(&mut y, off).unwrap();
            if x != y {
                return false;
            }
            off += n as u64;
            compared += n as u64;
        }
    }
    compared > 0
}
