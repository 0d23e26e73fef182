//! Image builders: real mkfs.* (and mtools, ntfs-3g) over generated trees.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A command for an mtools program on image `img` (geometry checks off).
pub fn mtools(program: &str, img: &Path) -> Command {
    let mut c = tool(program);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img);
    c
}

/// Top-level entries of the generated tree (what to copy into an image's root).
fn top_entries(tree: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// A FAT12/16/32 image of `size_mib` MiB made with `mkfs.fat -F BITS [extra]` and populated
/// with the tree through mtools (`mcopy -s`).
pub fn make_fat(img: &Path, bits: u32, size_mib: u64, extra: &[&str], tree: &Path) {
    sparse_file(img, size_mib << 20);
    run_ok(
        tool("mkfs.fat")
            .args(["-F", &bits.to_string()])
            .args(extra)
            .arg(img),
    );
    run_ok(
        mtools("mcopy", img)
            .arg("-s")
            .args(top_entries(tree))
            .arg("::/"),
    );
}

/// Deletes files from a FAT image with `mdel`.
pub fn fat_delete(img: &Path, gone: &[GenFile]) {
    if gone.is_empty() {
        return;
    }
    run_ok(mtools("mdel", img).args(gone.iter().map(|f| format!("::/{}", f.rel))));
}

/// An exFAT image populated through a FUSE mount (exfat-fuse on a loop device), or a kernel
/// `mount -t exfat`; `gone` deleted afterwards. Returns false (leaving an empty filesystem)
/// when no mount works.
pub fn make_exfat(
    img: &Path,
    size_mib: u64,
    tree: &Path,
    files: &[GenFile],
    gone: &[GenFile],
) -> bool {
    sparse_file(img, size_mib << 20);
    run_ok(tool("mkfs.exfat").arg(img));
    let mnt = img.with_extension("mnt");
    let m = Mounted::fuse(img, &mnt, "mount.exfat-fuse", &["-d"], true)
        .or_else(|| Mounted::kernel(img, &mnt, "exfat", ""));
    let Some(m) = m else {
        // An empty filesystem would test nothing: the caller skips, or the suite fails.
        cannot_mount("exFAT (exfat-fuse, or the kernel's exfat)");
        return false;
    };
    copy_tree(tree, files, &m.dir);
    for f in gone {
        fs::remove_file(m.path(&f.rel)).unwrap();
    }
    m.unmount();
    true
}

/// A filesystem could not be mounted to put files in: fails the test under
/// `BLOCKSWARM_REQUIRE_FS_TOOLS=1` (root, FUSE and loop devices are part of the suite's setup),
/// else prints a SKIP line (the caller then skips what needs the files).
fn cannot_mount(what: &str) {
    if tools_required() {
        panic!("cannot mount {what} (BLOCKSWARM_REQUIRE_FS_TOOLS=1): needs root, /dev/fuse, loop devices");
    }
    println!("SKIP (partly): cannot mount {what}; the files cannot be put in");
}

/// An NTFS image made with `mkfs.ntfs -F -Q`, populated through a foreground ntfs-3g mount;
/// `gone` deleted afterwards. Returns false (leaving an empty filesystem) when the mount fails.
pub fn make_ntfs(
    img: &Path,
    size_mib: u64,
    tree: &Path,
    files: &[GenFile],
    gone: &[GenFile],
) -> bool {
    sparse_file(img, size_mib << 20);
    run_ok(tool("mkfs.ntfs").args(["-F", "-Q", "-q"]).arg(img));
    let mnt = img.with_extension("mnt");
    let Some(m) = Mounted::fuse(img, &mnt, "ntfs-3g", &["-o", "no_detach"], false) else {
        cannot_mount("NTFS (ntfs-3g)");
        return false;
    };
    copy_tree(tree, files, &m.dir);
    for f in gone {
        fs::remove_file(m.path(&f.rel)).unwrap();
    }
    m.unmount();
    true
}

/// mkfs.xfs protofile describing the directory `dir` (recursively).
fn xfs_proto(dir: &Path, out: &mut String) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().into_string().unwrap();
        if e.file_type().unwrap().is_dir() {
            out.push_str(&format!("{name} d--755 0 0\n"));
            xfs_proto(&e.path(), out);
            out.push_str("$\n");
        } else {
            out.push_str(&format!("{name} ---644 0 0 {}\n", e.path().display()));
        }
    }
}

/// An XFS image made with `mkfs.xfs -p PROTOFILE` (populated from the tree), then `gone`
/// deleted through a loop mount. Returns false when the mount (and so the deletion) failed.
pub fn make_xfs(img: &Path, size_mib: u64, tree: &Path, gone: &[GenFile]) -> bool {
    sparse_file(img, size_mib << 20);
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    xfs_proto(tree, &mut proto);
    proto.push_str("$\n$\n");
    let proto_path = img.with_extension("proto");
    fs::write(&proto_path, proto).unwrap();
    run_ok(
        tool("mkfs.xfs")
            .args(["-q", "-f", "-p"])
            .arg(&proto_path)
            .arg(img),
    );
    delete_via_mount(img, "xfs", gone)
}

/// A btrfs image made with `mkfs.btrfs --rootdir TREE`, then `gone` deleted through a loop
/// mount. Returns false when the mount (and so the deletion) failed.
pub fn make_btrfs(img: &Path, size_mib: u64, tree: &Path, gone: &[GenFile]) -> bool {
    sparse_file(img, size_mib << 20);
    run_ok(
        tool("mkfs.btrfs")
            .args(["-q", "-f", "--rootdir"])
            .arg(tree)
            .arg(img),
    );
    delete_via_mount(img, "btrfs", gone)
}

fn delete_via_mount(img: &Path, fstype: &str, gone: &[GenFile]) -> bool {
    if gone.is_empty() {
        return true;
    }
    let mnt = img.with_extension("mnt");
    let Some(m) = Mounted::kernel(img, &mnt, fstype, "") else {
        cannot_mount(&format!("{fstype} (loop device and kernel mount)"));
        return false;
    };
    for f in gone {
        fs::remove_file(m.path(&f.rel)).unwrap();
    }
    m.unmount();
    true
}

/// The ntfs row of `imager --list-fs`: which backend maps NTFS in this build.
pub fn ntfs_backend() -> String {
    let out = run_ok(imager().arg("--list-fs"));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().next() == Some("ntfs"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
