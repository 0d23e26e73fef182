//! Acceptance 4: `imager SRC --copy-to TARGET` onto a target pre-filled with random bytes gives
//! a filesystem that the filesystem's own checker accepts and whose files equal the source's:
//! ext4 (1 KiB and 4 KiB blocks; e2fsck -fn, debugfs dump), FAT32 (fsck.fat -n, mcopy), NTFS
//! (ntfsfix -n, ntfscat) and XFS (xfs_repair -n, read-only loop mount).

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// A random-filled target as large as `src`, then `imager -q SRC --copy-to TARGET`.
fn copy_to_random_target(src: &Path, seed: u64) -> std::path::PathBuf {
    let target = src.with_file_name("target.img");
    random_file(&target, file_size(src), seed);
    let src_hash = sha1_file(src);
    run_ok(imager().arg("-q").arg(src).arg("--copy-to").arg(&target));
    assert_eq!(sha1_file(src), src_hash, "the source changed");
    assert_eq!(file_size(&target), file_size(src));
    target
}

/// Prints and checks a checker's exit status.
fn check(what: &str, cmd: &mut std::process::Command) {
    let out = run(cmd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let last = |t: &str| {
        t.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    };
    let summary = last(&stdout).or_else(|| last(&stderr)).unwrap_or_default();
    println!("{what}: {} -> {}", out.status, summary.trim());
    let text = format!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
}

fn debugfs_dump(img: &Path, rel: &str, out: &Path) -> Vec<u8> {
    let _ = fs::remove_file(out);
    run_ok(
        tool("debugfs")
            .arg("-R")
            .arg(format!("dump /{rel} {}", out.display()))
            .arg(img),
    );
    fs::read(out).unwrap_or_else(|e| panic!("debugfs dump /{rel} from {}: {e}", img.display()))
}

fn debugfs_ls(img: &Path, dir: &str) -> String {
    let out = run_ok(
        tool("debugfs")
            .arg("-R")
            .arg(format!("ls -p /{dir}"))
            .arg(img),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ext4_case(block: u32, seed: u64) {
    let test = format!("copy_ext4_{}k", block / 1024);
    if !need_tools(&test, &["mkfs.ext4", "debugfs", "e2fsck"]) {
        return;
    }
    let s = Scratch::new(&test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, seed, 36, 2 << 20);
    let src = s.join("src.img");
    sparse_file(&src, 96 << 20);
    run_ok(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-b", &block.to_string(), "-d"])
            .arg(&tree)
            .arg(&src),
    );
    let gone = pick(&files, 1, 3);
    for f in &gone {
        run_ok(
            tool("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("rm /{}", f.rel))
                .arg(&src),
        );
    }
    let target = copy_to_random_target(&src, seed + 1000);
    check(
        &format!("{test}: e2fsck -fn target"),
        tool("e2fsck").arg("-fn").arg(&target),
    );
    let kept = remaining(&files, &gone);
    let out = s.join("dump");
    for f in &kept {
        let a = debugfs_dump(&src, &f.rel, &out);
        let b = debugfs_dump(&target, &f.rel, &out);
        assert_eq!(a.len() as u64, f.len, "{test}: source {} size", f.rel);
        assert!(
            a == b,
            "{test}: {} differs between source and target",
            f.rel
        );
        assert!(
            a == fs::read(tree.join(&f.rel)).unwrap(),
            "{test}: {} content",
            f.rel
        );
    }
    let mut listing = String::new();
    for dir in ["", "sub", "sub/deeper"] {
        let l = debugfs_ls(&target, dir);
        assert_eq!(debugfs_ls(&src, dir), l, "{test}: directory /{dir} differs");
        listing.push_str(&l);
    }
    for f in &gone {
        let name = f.rel.rsplit('/').next().unwrap();
        assert!(
            !listing.contains(&format!("/{name}/")),
            "{test}: deleted {} listed on the target",
            f.rel
        );
    }
    println!(
        "{test}: {} files equal, {} deleted files absent",
        kept.len(),
        gone.len()
    );
}

#[test]
fn copy_to_ext4_1k() {
    ext4_case(1024, 401);
}

#[test]
fn copy_to_ext4_4k() {
    ext4_case(4096, 404);
}

#[test]
fn copy_to_fat32() {
    let test = "copy_fat32";
    if !need_tools(test, &["mkfs.fat", "mcopy", "mdel", "mdir", "fsck.fat"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 432, 30, 2 << 20);
    let src = s.join("src.img");
    make_fat(&src, 32, 96, &["-s", "1"], &tree);
    let gone = pick(&files, 2, 3);
    fat_delete(&src, &gone);
    let target = copy_to_random_target(&src, 433);
    check(
        &format!("{test}: fsck.fat -n target"),
        tool("fsck.fat").arg("-n").arg(&target),
    );
    let kept = remaining(&files, &gone);
    let got = s.join("got");
    for f in &kept {
        let dst = got.join(&f.rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        run_ok(
            mtools("mcopy", &target)
                .arg("-n")
                .arg(format!("::/{}", f.rel))
                .arg(&dst),
        );
    }
    assert_same_files(test, &tree, &got, &kept);
    let listing = |img: &Path| {
        String::from_utf8(run_ok(mtools("mdir", img).args(["-/", "-a", "::/"])).stdout).unwrap()
    };
    assert_eq!(
        listing(&src),
        listing(&target),
        "{test}: directory listings differ"
    );
    println!("{test}: {} files equal", kept.len());
}

#[test]
fn copy_to_ntfs() {
    let test = "copy_ntfs";
    if !need_tools(
        test,
        &["mkfs.ntfs", "ntfs-3g", "ntfsfix", "ntfscat", "ntfsls"],
    ) {
        return;
    }
    println!("{test}: imager backend: {}", ntfs_backend());
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 450, 24, 1 << 20);
    let src = s.join("src.img");
    let gone = pick(&files, 2, 3);
    let populated = make_ntfs(&src, 96, &tree, &files, &gone);
    let target = copy_to_random_target(&src, 451);
    check(
        &format!("{test}: ntfsfix -n target"),
        tool("ntfsfix").arg("-n").arg(&target),
    );
    // The backup boot sector (last sector) was copied too.
    let size = file_size(&src);
    assert!(
        read_at(&src, size - 512, 512) == read_at(&target, size - 512, 512),
        "{test}: backup boot sector not copied"
    );
    let kept = if populated {
        remaining(&files, &gone)
    } else {
        Vec::new()
    };
    for f in &kept {
        let out = run_ok(tool("ntfscat").arg(&target).arg(format!("/{}", f.rel)));
        let want = fs::read(tree.join(&f.rel)).unwrap();
        assert!(out.stdout == want, "{test}: {} differs", f.rel);
    }
    let ls = |img: &Path| {
        String::from_utf8(run_ok(tool("ntfsls").args(["-l", "-R"]).arg(img)).stdout).unwrap()
    };
    assert_eq!(ls(&src), ls(&target), "{test}: listings differ");
    println!(
        "{test}: {} files equal (populated: {populated})",
        kept.len()
    );
}

#[test]
fn copy_to_xfs() {
    let test = "copy_xfs";
    if !need_tools(test, &["mkfs.xfs", "xfs_repair", "losetup", "mount"]) {
        return;
    }
    let s = Scratch::new(test);
    let tree = s.join("tree");
    let files = gen_tree(&tree, 460, 30, 2 << 20);
    let src = s.join("src.img");
    let gone = pick(&files, 0, 3);
    let deleted = make_xfs(&src, 320, &tree, &gone);
    let target = copy_to_random_target(&src, 461);
    check(
        &format!("{test}: xfs_repair -n target"),
        tool("xfs_repair").args(["-n", "-f"]).arg(&target),
    );
    let mnt = s.join("target.mnt");
    let Some(m) = Mounted::kernel(&target, &mnt, "xfs", "ro,nouuid") else {
        if tools_required() {
            panic!("{test}: cannot mount the target read-only");
        }
        println!("SKIP {test}: file comparison (cannot mount the target read-only)");
        return;
    };
    let kept = if deleted {
        remaining(&files, &gone)
    } else {
        files.clone()
    };
    assert_same_files(test, &tree, &m.dir, &kept);
    if deleted {
        for f in &gone {
            assert!(
                !m.path(&f.rel).exists(),
                "{test}: deleted {} is back",
                f.rel
            );
        }
    }
    println!("{test}: {} files equal", kept.len());
    m.unmount();
}
