//! What a whole-disk clone must pass, as a list of problems (empty = good clone), so the
//! checks themselves can be tested on broken copies: the table (`sgdisk -v`, `sfdisk -d` equal
//! up to the GPT's last-lba), the bytes before the first partition and the EBRs, and each
//! partition's fsck and file contents.

use std::path::Path;
use std::process::Output;

use blockswarm_manifest::TableKind;

use super::{read_at, run, size_of, tool, Disk, Fs, LoopDev, Mount, Part, MIB, SECTOR};

/// Every problem of `target` as a clone of `src` (empty when it is a good clone).
pub fn clone_problems(src: &Disk, target: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let tsize = size_of(target);
    if tsize < src.min_size() {
        p.push(format!(
            "target is {tsize} bytes, the layout needs {}",
            src.min_size()
        ));
        return p;
    }
    table_problems(src, target, tsize, &mut p);
    head_problems(src, target, tsize, &mut p);
    for part in &src.parts {
        part_problems(src, part, target, &mut p);
    }
    p
}

/// Panics with every problem unless `target` is a good clone of `src`.
pub fn assert_clone(src: &Disk, target: &Path) {
    let p = clone_problems(src, target);
    assert!(
        p.is_empty(),
        "{} is not a good clone of {}:\n  {}",
        target.display(),
        src.path.display(),
        p.join("\n  ")
    );
    println!(
        "clone ok: {} ({} table, {} partitions: table, hidden sectors, fsck, files)",
        target.display(),
        src.table,
        src.parts.len()
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `sfdisk -d` of `disk` with the device line dropped and partition names reduced to their
/// numbers; returns the lines and the `last-lba` value (GPT) taken out of them.
pub fn sfdisk_layout(disk: &Path) -> (Vec<String>, Option<u64>) {
    let out = run(tool("sfdisk").arg("-d").arg(disk));
    let path = disk.to_string_lossy().into_owned();
    let mut last = None;
    let mut lines = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.starts_with("device:") {
            continue;
        }
        if let Some(v) = l.strip_prefix("last-lba:") {
            last = v.trim().parse().ok();
            continue;
        }
        let l = match l.strip_prefix(path.as_str()) {
            Some(rest) => rest.trim_start_matches('p').to_string(),
            None => l.to_string(),
        };
        lines.push(l);
    }
    (lines, last)
}

fn table_problems(src: &Disk, target: &Path, tsize: u64, p: &mut Vec<String>) {
    if src.table == TableKind::Gpt {
        let out = run(tool("sgdisk").arg("-v").arg(target));
        let t = text(&out);
        if !t.contains("No problems found") {
            p.push(format!("sgdisk -v: {}", t.trim().replace('\n', " | ")));
        }
    }
    let (want, _) = sfdisk_layout(&src.path);
    let (got, last) = sfdisk_layout(target);
    if want != got {
        p.push(format!(
            "sfdisk -d differs:\n    source: {}\n    target: {}",
            want.join("\n            "),
            got.join("\n            ")
        ));
    }
    if src.table == TableKind::Gpt && last != Some(tsize / SECTOR - 34) {
        p.push(format!(
            "GPT last-lba {last:?}, want {} for a {tsize}-byte target",
            tsize / SECTOR - 34
        ));
    }
}

/// First differing byte of two equal-length slices.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Compares `len` bytes at `off` of both disks in 1 MiB chunks.
fn same_range(src: &Path, target: &Path, off: u64, len: u64, what: &str, p: &mut Vec<String>) {
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(1 << 20) as usize;
        let a = read_at(src, off + pos, n);
        let b = read_at(target, off + pos, n);
        if let Some(i) = first_diff(&a, &b) {
            p.push(format!("{what}: byte {} differs", off + pos + i as u64));
            return;
        }
        pos += n as u64;
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The sectors of the EBR chain of an MBR disk (empty without an extended partition).
pub fn ebr_sectors(disk: &Path, d: &Disk) -> Vec<u64> {
    let Some(ext) = d.parts.iter().find(|p| p.fs == Fs::Extended) else {
        return Vec::new();
    };
    let base = ext.start / SECTOR;
    let mut v = Vec::new();
    let mut ebr = base;
    while v.len() < 64 {
        v.push(ebr);
        let s = read_at(disk, ebr * SECTOR, SECTOR as usize);
        let next = &s[446 + 16..446 + 32];
        if s[510..] != [0x55, 0xaa] || next[4] == 0 {
            break;
        }
        ebr = base + le32(next, 8) as u64;
    }
    v
}

fn head_problems(src: &Disk, target: &Path, tsize: u64, p: &mut Vec<String>) {
    let first = src.first_start();
    if src.table == TableKind::Mbr {
        same_range(&src.path, target, 0, first, "MBR and hidden sectors", p);
        for s in ebr_sectors(&src.path, src) {
            same_range(
                &src.path,
                target,
                s * SECTOR,
                SECTOR,
                &format!("EBR at sector {s}"),
                p,
            );
        }
        return;
    }
    // Protective MBR: boot code, disk signature and the entry equal, except the 0xEE entry's
    // size, which covers the target (CHS fields are not compared: sgdisk rewrites them).
    let a = read_at(&src.path, 0, 512);
    let b = read_at(target, 0, 512);
    if let Some(i) = first_diff(&a[..446], &b[..446]) {
        p.push(format!("sector 0: boot code byte {i} differs"));
    }
    let (ea, eb) = (&a[446..462], &b[446..462]);
    if ea[0] != eb[0] || ea[4] != eb[4] || ea[8..12] != eb[8..12] || a[462..] != b[462..] {
        p.push("sector 0: protective MBR entries differ".into());
    }
    let want = (tsize / SECTOR - 1).min(u32::MAX as u64) as u32;
    if le32(eb, 12) != want {
        p.push(format!(
            "protective MBR size {} sectors, want {want}",
            le32(eb, 12)
        ));
    }
    // Primary header: equal but for the CRC, the backup LBA and the last usable LBA.
    let a = read_at(&src.path, SECTOR, 512);
    let b = read_at(target, SECTOR, 512);
    for (r, what) in [
        (0..16, "signature/revision/size"),
        (20..32, "current LBA"),
        (40..48, "first usable LBA"),
        (56..92, "disk GUID/entries"),
        (92..512, "reserved"),
    ] {
        if a[r.clone()] != b[r] {
            p.push(format!("primary GPT header: {what} differs"));
        }
    }
    let last = tsize / SECTOR - 1;
    let entry_sectors = (le32(&a, 80) as u64 * le32(&a, 84) as u64).div_ceil(SECTOR);
    if le64(&b, 32) != last {
        p.push(format!(
            "primary GPT header: backup LBA {}, want {last}",
            le64(&b, 32)
        ));
    }
    if le64(&b, 48) != last - entry_sectors - 1 {
        p.push(format!(
            "primary GPT header: last usable LBA {}, want {}",
            le64(&b, 48),
            last - entry_sectors - 1
        ));
    }
    same_range(
        &src.path,
        target,
        2 * SECTOR,
        first - 2 * SECTOR,
        "GPT entries and hidden sectors",
        p,
    );
}

fn part_problems(src: &Disk, part: &Part, target: &Path, p: &mut Vec<String>) {
    let what = format!("partition {} ({})", part.number, part.fs.name());
    match part.fs {
        Fs::Extended => return,
        Fs::Swap => {
            let a = read_at(&src.path, part.start, 4096);
            let b = read_at(target, part.start, 4096);
            if &b[4086..] != b"SWAPSPACE2" || a != b {
                p.push(format!(
                    "{what}: swap header differs or has no SWAPSPACE2 signature"
                ));
            }
            return;
        }
        _ => {}
    }
    let l = LoopDev::slice(target, part.start, part.size, false);
    let dev = l.dev.as_path();
    let fsck: Vec<(&str, Vec<&str>)> = match part.fs {
        Fs::Ext4 | Fs::Ext2 => vec![("e2fsck", vec!["-fn"])],
        Fs::Fat32 | Fs::Fat16 => vec![("fsck.fat", vec!["-n"])],
        Fs::Ntfs => vec![
            ("ntfsfix", vec!["-n"]),
            ("ntfs-3g.probe", vec!["--readonly"]),
        ],
        Fs::Xfs => vec![("xfs_repair", vec!["-n"])],
        Fs::Swap | Fs::Extended => unreachable!(),
    };
    for (prog, args) in fsck {
        let out = run(tool(prog).args(args).arg(dev));
        if !out.status.success() {
            let t = text(&out);
            let tail: Vec<&str> = t.lines().rev().take(6).collect();
            p.push(format!(
                "{what}: {prog} failed ({}): {}",
                out.status,
                tail.join(" | ")
            ));
            return;
        }
    }
    let mnt = src.tree.join(format!("mnt-{}", l.name()));
    let _m = (part.fs == Fs::Xfs).then(|| Mount::new(dev, &mnt, "xfs", "ro,norecovery,nouuid"));
    for name in &part.files {
        let want = std::fs::read(src.originals(part.number).join(name)).unwrap();
        let got = match part.fs {
            Fs::Ext4 | Fs::Ext2 => {
                run(tool("debugfs")
                    .args(["-R", &format!("cat /{name}")])
                    .arg(dev))
                .stdout
            }
            Fs::Fat32 | Fs::Fat16 => {
                run(tool("mcopy")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(dev)
                    .arg(format!("::/{name}"))
                    .arg("-"))
                .stdout
            }
            Fs::Ntfs => run(tool("ntfscat").arg(dev).arg(format!("/{name}"))).stdout,
            Fs::Xfs => std::fs::read(mnt.join(name)).unwrap_or_default(),
            Fs::Swap | Fs::Extended => unreachable!(),
        };
        if got != want {
            p.push(format!(
                "{what}: file {name} differs ({} bytes, want {})",
                got.len(),
                want.len()
            ));
        }
    }
}

/// Checks `imager --list DISK` output: one row per partition of `src`, starting with its
/// number and naming its filesystem.
pub fn assert_listing(src: &Disk, listing: &str) {
    for part in &src.parts {
        let row = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(part.number.to_string().as_str()));
        let Some(row) = row else {
            panic!(
                "imager --list has no row for partition {}:\n{listing}",
                part.number
            );
        };
        assert!(
            row.split_whitespace().any(|w| w == part.fs.name()),
            "imager --list: partition {} should say {}:\n{row}\n{listing}",
            part.number,
            part.fs.name()
        );
    }
}

/// The used (`+`) runs of a ddrescue mapfile, as (offset, length).
pub fn map_used(map: &str) -> Vec<(u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    map.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 3 && w[2] == "+")
        .map(|w| (hex(w[0]), hex(w[1])))
        .collect()
}

/// Checks `imager --map DISK` against the fixture: everything before the first partition and
/// every EBR is used; nothing is used outside those and the partitions (free space, the
/// extended container itself, the backup GPT); swap contributes its header only.
pub fn assert_map(src: &Disk, map: &str) {
    let used = map_used(map);
    let covered = |off: u64, len: u64| used.iter().any(|&(o, l)| o <= off && off + len <= o + l);
    let first = src.first_start();
    assert!(covered(0, first), "[0, {first}) not all used:\n{map}");
    let ebrs = ebr_sectors(&src.path, src);
    for s in &ebrs {
        assert!(
            covered(s * SECTOR, SECTOR),
            "EBR sector {s} not used:\n{map}"
        );
    }
    let in_part = |off: u64| {
        off < first
            || ebrs
                .iter()
                .any(|s| (s * SECTOR..(s + 1) * SECTOR).contains(&off))
            || src
                .parts
                .iter()
                .any(|p| p.fs != Fs::Extended && (p.start..p.end()).contains(&off))
    };
    for &(o, l) in &used {
        // Runs may merge across boundaries: test each sector's first byte.
        let bad = (o..o + l).step_by(SECTOR as usize).find(|&x| !in_part(x));
        assert!(
            bad.is_none(),
            "byte {} used outside the hidden area, EBRs and partitions:\n{map}",
            bad.unwrap()
        );
    }
    for p in src.parts.iter().filter(|p| p.fs == Fs::Swap) {
        let n: u64 = used
            .iter()
            .map(|&(o, l)| (o + l).min(p.end()).saturating_sub(o.max(p.start)))
            .sum();
        assert!(covered(p.start, 4096), "swap header not used:\n{map}");
        assert!(
            n <= MIB,
            "swap partition {}: {n} bytes used, want the header only",
            p.number
        );
    }
}

/// Asserts the one-line `PROG: error:` contract and the exit code; returns the line.
pub fn assert_one_line_error(out: &Output, prog: &str, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status {} (want {code}); stderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be one line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with(&format!("{prog}: error: ")),
        "{what}: stderr does not start with `{prog}: error: `: {stderr}"
    );
    println!("{what}: exit {code}: {}", lines[0]);
    lines[0].to_string()
}
