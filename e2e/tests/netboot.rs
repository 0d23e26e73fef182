//! Netboot (issue 12): `seeder --netboot DIR` serves the iPXE script and the netboot files of
//! scripts/build-netboot.sh; a bare QEMU machine booted straight into that kernel and
//! initramfs (`-kernel/-initrd/-append`, TCG) gets an address by DHCP, deploys the bootable
//! fixture onto its random-filled, larger virtio disk with `blockswarm.target=auto`, powers
//! off, and the disk then boots the clone (its marker on the serial console).
//!
//! Network: QEMU's user-mode network (`-netdev user`): its DHCP server leases the guest an
//! address and 10.0.2.2 reaches the host's loopback, where the seeder listens (127.0.0.1,
//! advertising 10.0.2.2). No bridge or tap: traffic stays on loopback.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blockswarm_e2e::boot::*;
use blockswarm_e2e::*;

/// The fixture disk's size, as in e2e/tests/boot.rs.
const DISK_MIB: u64 = 128;

/// Deadline of the netboot VM: the kernel boot, DHCP and the deployment under TCG.
const NETBOOT_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn the_seeder_serves_the_boot_script_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("src.img");
    random_file(&img, 4 << 20, 7);
    let mpath = image(&img, &d.join("m.torrent"), &[]);
    let m = read_manifest(&mpath);
    let nb = d.join("netboot");
    std::fs::create_dir(&nb).unwrap();
    // Stand-ins for the kernel and initramfs: the server streams whatever DIR holds.
    random_file(&nb.join("vmlinuz"), 3 << 20, 8);
    random_file(&nb.join("initrd.img"), (5 << 20) + 17, 9);

    let ip = "127.0.52.1";
    let nbdir = nb.display().to_string();
    let mut s = seeder(
        ip,
        &mpath,
        &["--netboot", &nbdir, "--netboot-http", &format!("{ip}:8080")],
        d,
        "seeder",
    );
    let base = format!("http://{ip}:8080");
    assert!(
        wait_until(Duration::from_secs(120), || http_get(&format!(
            "{base}/boot.ipxe"
        ))
        .is_some()),
        "no /boot.ipxe:\n{}",
        s.stderr_text()
    );
    let script = String::from_utf8(http_get(&format!("{base}/boot.ipxe")).unwrap()).unwrap();
    let url = manifest_url(ip, &m);
    assert_eq!(
        script
            .lines()
            .filter(|l| !l.starts_with("echo "))
            .collect::<Vec<_>>(),
        vec![
            "#!ipxe".to_string(),
            format!(
                "kernel {base}/boot/vmlinuz blockswarm.manifest={url} blockswarm.info-hash={} console=ttyS0 console=tty0",
                hex::encode(m.info_hash().unwrap())
            ),
            format!("initrd {base}/boot/initrd.img"),
            "boot".to_string(),
        ],
        "{script}"
    );
    for f in ["vmlinuz", "initrd.img"] {
        let got = http_get(&format!("{base}/boot/{f}")).expect(f);
        assert!(
            got == std::fs::read(nb.join(f)).unwrap(),
            "/boot/{f}: {} bytes, not the file",
            got.len()
        );
    }
    assert!(http_get(&format!("{base}/boot/../m.torrent")).is_none());
    assert!(s.stderr_text().contains(&format!("{base}/boot.ipxe")));
    s.kill();
}

#[test]
fn print_dnsmasq_conf_is_filled_in() {
    let out = run_ok(Command::new(bin("seeder")).args([
        "--print-dnsmasq-conf",
        "--advertise",
        "10.9.8.7",
        "--netboot-http",
        "0.0.0.0:8080",
    ]));
    let c = String::from_utf8(out.stdout).unwrap();
    for want in [
        "dhcp-range=10.9.8.0,proxy,255.255.255.0",
        "pxe-service=tag:ipxe,x86PC,\"blockswarm\",http://10.9.8.7:8080/boot.ipxe",
        "dhcp-userclass=set:ipxe,iPXE",
        "tftp-root=/usr/lib/ipxe",
    ] {
        assert!(c.lines().any(|l| l == want), "no {want:?} in:\n{c}");
    }
}

/// QEMU booting the netboot kernel and initramfs in `nb` with `blockswarm.manifest=url`,
/// `target` as its virtio disk and QEMU's user network; waits for `marker` on the console.
fn netboot_vm(
    nb: &Path,
    url: &str,
    target: &Path,
    marker: &str,
    wait_exit: bool,
) -> Result<Boot, BootError> {
    let qemu = find_tool(QEMU).expect("qemu");
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-no-reboot", "-serial", "stdio"])
    .arg("-kernel")
    .arg(nb.join("vmlinuz"))
    .arg("-initrd")
    .arg(nb.join("initrd.img"))
    .arg("-append")
    .arg(format!(
        "blockswarm.manifest={url} blockswarm.target=auto blockswarm.done=poweroff \
             console=ttyS0 panic=-1"
    ))
    .args([
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0",
    ])
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", target.display()));
    console_until(cmd, "netboot VM", marker, NETBOOT_DEADLINE, wait_exit)
}

/// A bench rather than a CI test: about 80 s for the netboot VM (kernel boot, DHCP, 22 MiB
/// deployed) plus 40 s for the clone's boot under TCG on 2 shared cores. Run with
/// `cargo test -p blockswarm-e2e --test netboot -- --ignored`.
#[test]
#[ignore = "bench: ~2-3 min under TCG (run with --ignored)"]
fn a_bare_vm_boots_the_netboot_kernel_and_becomes_a_clone() {
    if !need_boot_tools("a_bare_vm_boots_the_netboot_kernel_and_becomes_a_clone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t0 = Instant::now();
    if !build_netboot(&d.join("nb")) {
        return;
    }
    let fx = build_boot_fixture(&d.join("fixture"), DISK_MIB);
    let built = t0.elapsed();
    let mpath = image(&fx.disk, &d.join("m.torrent"), &[]);
    let m = read_manifest(&mpath);

    // Ports of their own: QEMU's user network reaches the host's 127.0.0.1 only.
    let mut s = Proc::spawn(
        "seeder",
        Command::new(bin("seeder")).arg(&mpath).args([
            "--listen",
            "127.0.0.1:26881",
            "--http",
            "127.0.0.1:26880",
            "--advertise",
            "10.0.2.2",
            "--token",
            TEST_TOKEN,
            "--expect",
            "1",
            "-v",
        ]),
        d,
    );
    let url = format!("http://10.0.2.2:26880/t/{TEST_TOKEN}/{}.torrent", m.name);
    let target = d.join("target.img");
    let target_size = std::fs::metadata(&fx.disk).unwrap().len() * 3 / 2;
    random_target(&target, target_size, 53);

    let t1 = Instant::now();
    let b = netboot_vm(
        &d.join("nb"),
        &url,
        &target,
        "blockswarm-netboot: DONE",
        true,
    )
    .unwrap_or_else(|e| panic!("{e}\n--- seeder ---\n{}", s.stderr_text()));
    let deployed = t1.elapsed();
    assert!(
        b.exit.is_some_and(|e| e.success()),
        "the VM did not power off: {:?}",
        b.exit
    );
    for l in b
        .console
        .lines()
        .filter(|l| l.contains("blockswarm-netboot"))
    {
        eprintln!("console: {l}");
    }
    assert_eq!(s.wait(Duration::from_secs(60)), 0, "{}", s.stderr_text());

    let c = boot_until(&target, &fx.marker, BOOT_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "built in {built:?}; netboot VM: DONE after {:?}, powered off after {deployed:?}; the \
         clone booted to the marker in {:?}",
        b.to_marker, c.to_marker
    );
}

/// Failure shown, not hidden: a disk too small for the golden disk ends in the shell with the
/// receiver's one-line error on the console. A bench like the one above (~60 s under TCG).
#[test]
#[ignore = "bench: ~1 min under TCG (run with --ignored)"]
fn a_too_small_disk_ends_in_the_shell_with_the_error() {
    if !need_boot_tools("a_too_small_disk_ends_in_the_shell_with_the_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !build_netboot(&d.join("nb")) {
        return;
    }
    let fx = build_boot_fixture(&d.join("fixture"), DISK_MIB);
    let mpath = image(&fx.disk, &d.join("m.torrent"), &[]);
    let m = read_manifest(&mpath);
    let mut s = Proc::spawn(
        "seeder",
        Command::new(bin("seeder")).arg(&mpath).args([
            "--listen",
            "127.0.0.1:26883",
            "--http",
            "127.0.0.1:26882",
            "--advertise",
            "10.0.2.2",
            "--token",
            TEST_TOKEN,
        ]),
        d,
    );
    let url = format!("http://10.0.2.2:26882/t/{TEST_TOKEN}/{}.torrent", m.name);
    let target = d.join("small.img");
    random_target(&target, 64 << 20, 54);
    let b = netboot_vm(
        &d.join("nb"),
        &url,
        &target,
        "blockswarm-netboot: dropping to a shell",
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        b.console
            .contains("blockswarm-netboot: FAILED: receiver exited with status 4"),
        "{}",
        b.console
    );
    let err = b
        .console
        .lines()
        .find(|l| l.starts_with("receiver: error: --target auto: no disk fits"))
        .unwrap_or_else(|| panic!("no receiver error line:\n{}", b.console));
    assert!(err.contains("too small"), "{err}");
    assert!(!b.console.contains("blockswarm-netboot: DONE"));
    eprintln!("console: {err}");
    s.kill();
}
