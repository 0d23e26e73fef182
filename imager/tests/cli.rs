//! Acceptance 5 (continued): `--fs auto` on random bytes falls back to dd mode with a warning,
//! the manifest is never written to a terminal, and `--list-fs` names every backend.

mod common;

use blockswarm_manifest::{exit, Manifest};
use common::*;

#[test]
fn auto_on_random_bytes_falls_back_to_dd_and_maps_every_byte() {
    let s = Scratch::new("dd-fallback");
    let src = s.join("random.img");
    let size = (8 << 20) + 512;
    random_file(&src, size, 601);
    let out = run_ok(imager().arg("--map").arg(&src));
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("dd fallback stderr: {}", stderr.trim());
    assert!(
        stderr.contains("WARN") && stderr.contains("dd mode"),
        "no dd-mode warning: {stderr:?}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in a non-terminal log: {stderr:?}"
    );
    let map = Mapfile::parse(&String::from_utf8(out.stdout).unwrap());
    map.assert_tiles(size);
    assert_eq!(map.used(), vec![(0, size)], "dd mode must map every byte");

    // The manifest says dd and covers the whole source too.
    let m = s.join("m.torrent");
    let out = run_ok(imager().arg("-q").arg(&src).arg("-o").arg(&m));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dd mode"));
    let d = Manifest::decode(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(d.manifest.fs_type, "dd");
    assert_eq!(d.manifest.total_length(), size);
    assert_eq!(d.manifest.block_size, 512);
}

#[test]
fn refuses_to_write_the_manifest_to_a_terminal() {
    if !need_tools("terminal", &["script"]) {
        return;
    }
    let s = Scratch::new("tty");
    let src = s.join("random.img");
    random_file(&src, 1 << 20, 611);
    let bin = env!("CARGO_BIN_EXE_imager");
    let shell_quote = |p: &str| format!("'{}'", p.replace('\'', r"'\''"));
    let cmd = format!(
        "{} {}",
        shell_quote(bin),
        shell_quote(src.to_str().unwrap())
    );
    // script(1) runs the command with stdout on a pseudo-terminal; -e returns its status.
    let out = run(tool("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("under script: {} -> {}", out.status, text.trim());
    assert_eq!(out.status.code(), Some(exit::REFUSED), "output: {text}");
    assert!(text.contains("imager: error: refusing"), "output: {text}");
    assert!(!text.contains("4:info"), "a manifest reached the terminal");

    // With -o FILE the same terminal is fine.
    let m = s.join("m.torrent");
    let cmd = format!("{cmd} -q -o {}", shell_quote(m.to_str().unwrap()));
    let out = run(tool("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(Manifest::decode(&std::fs::read(&m).unwrap()).is_ok());
}

#[test]
fn list_fs_names_every_backend() {
    let out = run_ok(imager().arg("--list-fs"));
    let text = String::from_utf8(out.stdout).unwrap();
    println!("{text}");
    let row = |fs: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(fs))
            .unwrap_or_else(|| panic!("--list-fs has no {fs} row:\n{text}"))
            .to_string()
    };
    assert!(row("extfs").contains("libext2fs"));
    assert!(row("fat").contains("rust"));
    assert!(row("exfat").contains("rust"));
    assert!(row("dd").contains("every block"));
    let ntfs = row("ntfs");
    let has_partclone_ntfs = find_tool("partclone.ntfs").is_some();
    assert!(
        ntfs.contains("libntfs-3g")
            || (has_partclone_ntfs && ntfs.contains("partclone.ntfs -D"))
            || (!has_partclone_ntfs && ntfs.contains("unavailable")),
        "{ntfs}"
    );
    // Every installed partclone module for a filesystem without an in-process backend.
    let mut checked = Vec::new();
    for m in [
        "xfs", "btrfs", "f2fs", "hfsplus", "minix", "reiser4", "apfs", "nilfs2",
    ] {
        if find_tool(&format!("partclone.{m}")).is_some() {
            assert!(
                row(m).contains(&format!("partclone.{m} -D")),
                "{m} row: {}",
                row(m)
            );
            checked.push(m);
        }
    }
    println!("partclone-backed rows checked: {checked:?}");
    if tools_required() {
        assert!(checked.contains(&"xfs") && checked.contains(&"btrfs"));
    }
}

#[test]
fn ntfs_works_with_the_backend_list_fs_names() {
    // --list-fs promises a backend for NTFS; mapping an NTFS image must then work.
    if !need_tools("ntfs-backend", &["mkfs.ntfs"]) {
        return;
    }
    let backend = ntfs_backend();
    if backend.contains("unavailable") {
        println!("SKIP ntfs-backend: --list-fs says NTFS is unavailable");
        return;
    }
    let s = Scratch::new("ntfs-backend");
    let img = s.join("ntfs.img");
    sparse_file(&img, 32 << 20);
    run_ok(tool("mkfs.ntfs").args(["-F", "-Q", "-q"]).arg(&img));
    for fs in ["auto", "ntfs"] {
        let map = imager_map(&img, Some(fs));
        map.assert_tiles(32 << 20);
        let used = total(&map.used());
        println!("ntfs ({backend}), --fs {fs}: {used} bytes used");
        assert!(used > 0 && used < 32 << 20);
    }
}
