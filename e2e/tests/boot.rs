//! "A clone boots" (issue 10's acceptance): a BIOS-bootable GPT disk (gptmbr.bin, extlinux on
//! ext4, Debian's kernel, a busybox-static initramfs printing a marker) deployed with
//! `imager | seeder | receiver` onto a random-filled disk 50% larger boots in QEMU (TCG) and
//! prints the marker on its serial console.
//!
//! Needs root, qemu-system-x86, extlinux, syslinux-common, busybox-static, cpio (see
//! scripts/install-deps.sh); the first run downloads Debian's kernel package into
//! /var/cache/blockswarm.

use std::time::{Duration, Instant};

use blockswarm_e2e::boot::*;
use blockswarm_e2e::*;

/// The receivers' and seeder's deadline.
const T: Duration = Duration::from_secs(120);

/// The fixture disk's size: small, with a filesystem that uses far less.
const DISK_MIB: u64 = 128;

#[test]
fn the_source_fixture_boots() {
    if !need_boot_tools("the_source_fixture_boots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let fx = build_boot_fixture(dir.path(), DISK_MIB);
    let built = t0.elapsed();
    let b = boot_until(&fx.disk, &fx.marker, BOOT_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "fixture built in {built:?}; source booted to the marker in {:?} (QEMU exit: {:?})",
        b.to_marker, b.exit
    );
    assert!(
        b.console.contains("SYSLINUX"),
        "the boot did not go through extlinux:\n{}",
        b.console
    );

    // The same disk without the partition's legacy-BIOS-bootable attribute: gptmbr.bin finds
    // no partition to boot ("Missing OS"), QEMU exits, and the helper reports the failure.
    run_ok(
        std::process::Command::new(find_tool("sfdisk").expect("sfdisk"))
            .args(["-q", "--part-attrs"])
            .arg(&fx.disk)
            .args(["1", ""]),
    );
    let t1 = Instant::now();
    let e = boot_until(&fx.disk, &fx.marker, BOOT_DEADLINE)
        .expect_err("a disk whose partition is not legacy-BIOS-bootable booted");
    assert!(
        e.console.contains("Missing OS"),
        "gptmbr.bin should have said Missing OS: {e}"
    );
    eprintln!(
        "without the attribute: no boot, detected in {:?}",
        t1.elapsed()
    );
}

#[test]
fn a_clone_on_a_larger_disk_boots() {
    if !need_boot_tools("a_clone_on_a_larger_disk_boots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fx = build_boot_fixture(&d.join("fixture"), DISK_MIB);
    let disk_size = std::fs::metadata(&fx.disk).unwrap().len();

    let t0 = Instant::now();
    let mpath = image(&fx.disk, &d.join("m.torrent"), &[]);
    let m = read_manifest(&mpath);
    assert_eq!(
        m.map.device_size(),
        disk_size,
        "the map covers the whole disk"
    );
    // Whole-disk mode sends the table areas and the ext4's used blocks, not every byte (a dd
    // fallback would send all 128 MiB).
    assert!(
        m.total_length() < disk_size / 2,
        "the manifest carries {} of the disk's {disk_size} bytes: not a whole-disk map of used \
         blocks",
        m.total_length()
    );

    let net = 51;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(&ip(1), &mpath, &["--expect", "1"], d, "seeder");
    let url = manifest_url(&ip(1), &m);
    let target = d.join("target.img");
    let target_size = disk_size * 3 / 2;
    random_target(&target, target_size, 51);
    let mut r = receiver(&ip(2), &url, &target, &["--verify"], d, "r2");
    assert_eq!(r.wait(T), 0, "receiver failed:\n{}", r.stderr_text());
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let deployed = t0.elapsed();
    assert_eq!(
        std::fs::metadata(&target).unwrap().len(),
        target_size,
        "the receiver changed the target's size"
    );

    let b = boot_until(&target, &fx.marker, BOOT_DEADLINE).unwrap_or_else(|e| {
        panic!(
            "the clone ({target_size} bytes, from a {disk_size}-byte disk, {} bytes sent) does \
             not boot: {e}",
            m.total_length()
        )
    });
    eprintln!(
        "deployed {} of {disk_size} bytes in {deployed:?}; the clone booted to the marker in {:?} \
         (QEMU exit: {:?})",
        m.total_length(),
        b.to_marker,
        b.exit
    );
}
