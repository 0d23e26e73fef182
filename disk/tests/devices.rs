//! The kernel side, on real loop devices: `auto::scan` finds them with their sizes and
//! backing files, `reread_partitions` issues BLKRRPART.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockswarm_disk::auto::{self, AutoError};
use blockswarm_disk::{read_table, reread_partitions, sector_size, DiskError};
use blockswarm_swarm::test_support::LoopDevice;
use common::*;

#[test]
fn scan_finds_two_loop_devices_with_their_sizes_and_choose_picks_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let (small, big) = (dir.path().join("small.img"), dir.path().join("big.img"));
    sparse(&small, 48 * MIB);
    sparse(&big, 80 * MIB);
    // Skips (SKIP line) without loop devices, fails under BLOCKSWARM_REQUIRE_FS_TOOLS=1.
    let Some(lo_small) = LoopDevice::attach(&small) else {
        return;
    };
    let Some(lo_big) = LoopDevice::attach(&big) else {
        return;
    };
    let all = auto::scan();
    for c in &all {
        println!("{c}");
    }
    let find = |lo: &LoopDevice| {
        all.iter()
            .find(|c| c.path == lo.path)
            .unwrap_or_else(|| panic!("{} not in scan(): {all:?}", lo.path.display()))
            .clone()
    };
    let (cs, cb) = (find(&lo_small), find(&lo_big));
    assert_eq!(cs.size, 48 * MIB);
    assert_eq!(cb.size, 80 * MIB);
    assert_eq!(cs.backing_file.as_deref(), Some(small.as_path()));
    assert_eq!(cb.backing_file.as_deref(), Some(big.as_path()));
    assert!(!cs.read_only && !cs.removable);
    // Loop devices without a backing file (free ones) are not candidates; nor zram or ram.
    for c in &all {
        let name = c.path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("loop") {
            assert!(c.backing_file.is_some(), "{c}");
        }
        assert!(!name.starts_with("zram") && !name.starts_with("ram"), "{c}");
    }

    let ours = [cs.clone(), cb.clone()];
    let chosen = auto::choose(&ours, 64 * MIB, |_| None).unwrap();
    assert_eq!(chosen.path, lo_big.path);
    let e = auto::choose(&ours, 16 * MIB, |_| None).unwrap_err();
    println!("{e}");
    assert!(matches!(e, AutoError::Ambiguous { ref fits, .. } if fits.len() == 2));
    let msg = e.to_string();
    assert!(msg.contains(&format!(
        "{} (48.0 MiB = 50331648 bytes, model unknown, serial unknown, backing file {})",
        lo_small.path.display(),
        small.display()
    )));
    assert!(msg.contains(&format!(
        "{} (80.0 MiB = 83886080 bytes",
        lo_big.path.display()
    )));
    let e = auto::choose(&ours, 100 * MIB, |_| None).unwrap_err();
    println!("{e}");
    assert!(matches!(e, AutoError::NoneFits { .. }));
}

/// A loop device attached with partition scanning (`losetup -P`), detached when dropped.
struct PartscanLoop(PathBuf);

impl PartscanLoop {
    fn attach(backing: &Path) -> Option<Self> {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-P"])
            .arg(backing)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self(PathBuf::from(
                String::from_utf8_lossy(&o.stdout).trim(),
            ))),
            other => {
                assert!(!tools_required(), "losetup -P failed: {other:?}");
                println!("SKIP: losetup -P {} failed: {other:?}", backing.display());
                None
            }
        }
    }
}

impl Drop for PartscanLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Whether the running kernel reads GPTs (CONFIG_EFI_PARTITION), when its config says.
fn kernel_reads_gpt() -> Option<bool> {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "{ zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null; } | grep -E '^(# )?CONFIG_EFI_PARTITION[= ]'",
    ]);
    let out = cmd.output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!line.is_empty()).then(|| line == "CONFIG_EFI_PARTITION=y")
}

fn partitions_in_sysfs(dev: &Path) -> Vec<String> {
    let name = dev.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<String> = fs::read_dir(Path::new("/sys/block").join(&name))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name) && n.len() > name.len())
        .collect();
    v.sort();
    v
}

#[test]
fn reread_partitions_on_a_file_a_plain_loop_device_and_a_partscan_one() {
    if !need_tools("reread_partitions", &["sgdisk", "losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    make_gpt(&img);
    // A regular file: nothing to do.
    let mut f = File::options().read(true).write(true).open(&img).unwrap();
    reread_partitions(&mut f).unwrap();
    assert_eq!(sector_size(&f), 512);

    // Without partition scanning the kernel refuses, and the error says why.
    let Some(plain) = LoopDevice::attach(&img) else {
        return;
    };
    let mut d = File::options()
        .read(true)
        .write(true)
        .open(&plain.path)
        .unwrap();
    assert_eq!(sector_size(&d), 512);
    let e = reread_partitions(&mut d).unwrap_err();
    println!("{}: {e}", plain.path.display());
    assert!(matches!(e, DiskError::NoPartitionScan), "{e:?}");
    // The table reads the same through the block device.
    let t = read_table(&d, IMAGE_SIZE, sector_size(&d))
        .unwrap()
        .unwrap();
    assert_eq!(t.partitions.len(), GPT_PARTS.len());
    drop(d);
    drop(plain);

    // With partition scanning: an empty disk, then the GPT written through the device (as
    // the receiver does), then BLKRRPART.
    let blank = dir.path().join("blank.img");
    sparse(&blank, IMAGE_SIZE);
    let Some(lo) = PartscanLoop::attach(&blank) else {
        return;
    };
    assert_eq!(partitions_in_sysfs(&lo.0), Vec::<String>::new());
    let mut d = File::options().read(true).write(true).open(&lo.0).unwrap();
    let head = fs::read(&img).unwrap();
    d.write_all_at(&head[..2048 * 512], 0).unwrap();
    let tail = IMAGE_SIZE as usize - 33 * 512;
    d.write_all_at(&head[tail..], tail as u64).unwrap();
    d.sync_all().unwrap();
    reread_partitions(&mut d).unwrap();
    let parts = partitions_in_sysfs(&lo.0);
    println!(
        "{}: partitions in sysfs after BLKRRPART: {parts:?}",
        lo.0.display()
    );
    match kernel_reads_gpt() {
        Some(false) => println!(
            "NOTE: this kernel is built without CONFIG_EFI_PARTITION: BLKRRPART succeeds but \
             no partitions can appear"
        ),
        _ => {
            let name = lo.0.file_name().unwrap().to_string_lossy().into_owned();
            let want: Vec<String> = GPT_PARTS
                .iter()
                .map(|p| format!("{name}p{}", p.0))
                .collect();
            assert_eq!(parts, want);
        }
    }
}
