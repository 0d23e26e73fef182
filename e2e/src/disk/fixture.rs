//! The whole-disk fixtures: a GPT disk (EFI system FAT32, BIOS-bootable ext4 root, NTFS, swap,
//! XFS; syslinux gptmbr.bin; random data between the entries and the first partition) and an
//! MBR disk (primary ext4, an extended partition with ext2 and FAT16 logicals; syslinux
//! mbr.bin; random "GRUB" data in sectors 1..2047). Sparse image files: each filesystem is made
//! with its mkfs on a separate image file, filled, then copied into place (zero chunks skipped).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use blockswarm_manifest::TableKind;
use rand::{Rng, RngCore, SeedableRng};

use super::{run_out, run_with_input, tool, GPTMBR_BIN, MBR_BIN};

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;

/// What a fixture partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Fat32,
    Fat16,
    Ext4,
    Ext2,
    Ntfs,
    Swap,
    Xfs,
    /// MBR extended partition (holds the logical ones).
    Extended,
}

impl Fs {
    /// The name `imager --list` and the manifest's layout give this filesystem.
    pub fn name(self) -> &'static str {
        match self {
            Fs::Fat32 => "fat32",
            Fs::Fat16 => "fat16",
            Fs::Ext4 => "ext4",
            Fs::Ext2 => "ext2",
            Fs::Ntfs => "ntfs",
            Fs::Swap => "swap",
            Fs::Xfs => "xfs",
            Fs::Extended => "extended",
        }
    }
}

/// One partition of a fixture disk.
#[derive(Debug, Clone)]
pub struct Part {
    /// Linux numbering (GPT entry; MBR 1-4 primary/extended, 5.. logical).
    pub number: u32,
    /// Byte offset and size on the disk.
    pub start: u64,
    pub size: u64,
    pub fs: Fs,
    /// Files in the root directory; the originals are in `Disk::originals(number)`.
    pub files: Vec<String>,
}

impl Part {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A fixture disk image and what was put on it.
#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub size: u64,
    pub table: TableKind,
    pub parts: Vec<Part>,
    /// Directory holding `pN/` with the original files of partition N.
    pub tree: PathBuf,
}

impl Disk {
    /// Where the original files of partition `n` are.
    pub fn originals(&self, n: u32) -> PathBuf {
        self.tree.join(format!("p{n}"))
    }

    /// Byte offset of the first partition (the end of the "hidden" area).
    pub fn first_start(&self) -> u64 {
        self.parts.iter().map(|p| p.start).min().unwrap()
    }

    /// One past the last partition's last byte.
    pub fn last_end(&self) -> u64 {
        self.parts.iter().map(Part::end).max().unwrap()
    }

    /// The smallest disk this layout fits: GPT also needs 32 sectors of backup entries and
    /// the backup header after the last partition.
    pub fn min_size(&self) -> u64 {
        match self.table {
            TableKind::Gpt => self.last_end() + 33 * SECTOR,
            TableKind::Mbr => self.last_end(),
        }
    }

    /// The partition numbered `n`.
    pub fn part(&self, n: u32) -> &Part {
        self.parts.iter().find(|p| p.number == n).unwrap()
    }
}

/// 25% larger than `size`, rounded up to a MiB: the size of the test targets.
pub fn grown_size(size: u64) -> u64 {
    (size + size / 4).div_ceil(MIB) * MIB
}

/// Writes a few files of random content (1 byte to ~700 KiB) into `dir`; returns their names.
fn gen_files(dir: &Path, seed: u64) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sizes = [
        1,
        rng.gen_range(2..5000),
        rng.gen_range(100_000..300_000),
        rng.gen_range(400_000..700_000),
    ];
    let mut names = Vec::new();
    for (i, len) in sizes.into_iter().enumerate() {
        let name = format!("file{i}.bin");
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        std::fs::write(dir.join(&name), &data).unwrap();
        names.push(name);
    }
    names
}

/// Makes filesystem `fs` on the image file `img` (`size` bytes) holding the files `names` of
/// `src`; `start` is the partition's byte offset (FAT and NTFS record it as hidden sectors).
fn make_fs(fs: Fs, img: &Path, size: u64, start: u64, src: &Path, names: &[String]) {
    std::fs::File::create(img).unwrap().set_len(size).unwrap();
    let hidden = (start / SECTOR).to_string();
    match fs {
        Fs::Ext4 | Fs::Ext2 => {
            let t = if fs == Fs::Ext4 { "ext4" } else { "ext2" };
            run_out(
                tool("mke2fs")
                    .args(["-q", "-F", "-t", t, "-d"])
                    .arg(src)
                    .arg(img),
            );
        }
        Fs::Fat32 | Fs::Fat16 => {
            let (bits, label) = if fs == Fs::Fat32 {
                (["-F", "32", "-s", "1"], "EFI")
            } else {
                (["-F", "16", "-s", "4"], "DATA")
            };
            run_out(
                tool("mkfs.fat")
                    .args(bits)
                    .args(["-n", label, "-h", &hidden])
                    .arg(img),
            );
            run_out(
                tool("mcopy")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(img)
                    .args(names.iter().map(|n| src.join(n)))
                    .arg("::/"),
            );
        }
        Fs::Ntfs => {
            run_out(
                tool("mkntfs")
                    .args(["-Q", "-F", "-q", "-L", "data", "-p", &hidden])
                    .args(["-H", "255", "-S", "63"])
                    .arg(img),
            );
            for n in names {
                run_out(
                    tool("ntfscp")
                        .arg(img)
                        .arg(src.join(n))
                        .arg(format!("/{n}")),
                );
            }
        }
        Fs::Swap => {
            run_out(tool("mkswap").args(["-L", "swap"]).arg(img));
        }
        Fs::Xfs => {
            let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
            for n in names {
                proto.push_str(&format!("{n} ---644 0 0 {}\n", src.join(n).display()));
            }
            proto.push_str("$\n");
            let p = img.with_extension("proto");
            std::fs::write(&p, proto).unwrap();
            run_out(tool("mkfs.xfs").args(["-q", "-f", "-p"]).arg(&p).arg(img));
        }
        Fs::Extended => unreachable!("no filesystem on an extended partition"),
    }
}

/// Copies `img` into `disk` at byte `offset`, skipping all-zero chunks (the disk is sparse).
fn place(disk: &Path, img: &Path, offset: u64) {
    let src = std::fs::File::open(img).unwrap();
    let dst = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let len = src.metadata().unwrap().len();
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset + pos).unwrap();
        }
        pos += n as u64;
    }
    dst.sync_all().unwrap();
}

/// Writes `len` random bytes at `offset` of `disk`.
fn random_at(disk: &Path, offset: u64, len: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len as usize];
    rng.fill_bytes(&mut data);
    super::write_at(disk, offset, &data);
}

/// Writes the syslinux boot code `bin` into the first 440 bytes of sector 0 (the partition
/// table at 446.. and the disk signature at 440 stay as they are).
fn boot_code(disk: &Path, bin: &str) {
    let code = std::fs::read(bin).unwrap();
    assert!(code.len() <= 440, "{bin} is {} bytes", code.len());
    super::write_at(disk, 0, &code);
}

/// Makes every filesystem of `parts` and copies it into place.
fn fill(disk: &Path, tree: &Path, parts: &mut [Part], seed: u64) {
    for p in parts.iter_mut() {
        if p.fs == Fs::Extended {
            continue;
        }
        let src = tree.join(format!("p{}", p.number));
        p.files = if p.fs == Fs::Swap {
            std::fs::create_dir_all(&src).unwrap();
            Vec::new()
        } else {
            gen_files(&src, seed * 100 + p.number as u64)
        };
        let img = tree.join(format!("p{}.img", p.number));
        make_fs(p.fs, &img, p.size, p.start, &src, &p.files);
        place(disk, &img, p.start);
        std::fs::remove_file(&img).unwrap();
    }
}

fn part(number: u32, start_sector: u64, mib: u64, fs: Fs) -> Part {
    Part {
        number,
        start: start_sector * SECTOR,
        size: mib * MIB,
        fs,
        files: Vec::new(),
    }
}

/// Sparse disk file `name` of `size` bytes in `dir`.
fn new_disk(dir: &Path, name: &str, size: u64) -> (PathBuf, PathBuf) {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let tree = dir.join(format!("{name}.files"));
    std::fs::create_dir_all(&tree).unwrap();
    (path, tree)
}

/// The GPT fixture `gpt.img` (420 MiB) in `dir`:
/// 1 EFI system (EF00, FAT32, 40 MiB) at 1 MiB; 2 root (8300, ext4, 32 MiB, legacy BIOS
/// bootable); 3 data (0700, NTFS, 24 MiB); 4 swap (8200, 8 MiB); 5 srv (8300, XFS, 300 MiB);
/// 14 MiB free before the backup table. Random data in LBA 34..2047; gptmbr.bin in sector 0.
pub fn gpt_disk(dir: &Path, seed: u64) -> Disk {
    let size = 420 * MIB;
    let (path, tree) = new_disk(dir, "gpt.img", size);
    let mut parts = vec![
        part(1, 2048, 40, Fs::Fat32),
        part(2, 2048 + 40 * 2048, 32, Fs::Ext4),
        part(3, 2048 + 72 * 2048, 24, Fs::Ntfs),
        part(4, 2048 + 96 * 2048, 8, Fs::Swap),
        part(5, 2048 + 104 * 2048, 300, Fs::Xfs),
    ];
    let codes = ["EF00", "8300", "0700", "8200", "8300"];
    let names = ["EFI system", "root", "data", "swap", "srv"];
    let mut cmd = tool("sgdisk");
    cmd.arg("-o");
    for (i, p) in parts.iter().enumerate() {
        let n = p.number;
        let (first, last) = (p.start / SECTOR, p.end() / SECTOR - 1);
        cmd.arg(format!("-n{n}:{first}:{last}"))
            .arg(format!("-t{n}:{}", codes[i]))
            .arg(format!("-c{n}:{}", names[i]));
    }
    run_out(cmd.args(["-A", "2:set:2"]).arg(&path));
    random_at(&path, 34 * SECTOR, (2048 - 34) * SECTOR, seed);
    boot_code(&path, GPTMBR_BIN);
    fill(&path, &tree, &mut parts, seed);
    Disk {
        path,
        size,
        table: TableKind::Gpt,
        parts,
        tree,
    }
}

/// The MBR fixture `mbr.img` (100 MiB) in `dir`: 1 primary ext4 (0x83, bootable, 32 MiB) at
/// 1 MiB; 2 extended (0x05, 60 MiB) holding 5 ext2 (0x83, 16 MiB) and 6 FAT16 (0x06, 16 MiB),
/// each after its EBR with sfdisk's 1 MiB alignment. Random "GRUB core.img" data in sectors
/// 1..2047; syslinux mbr.bin in sector 0.
pub fn mbr_disk(dir: &Path, seed: u64) -> Disk {
    let size = 100 * MIB;
    let (path, tree) = new_disk(dir, "mbr.img", size);
    let mut parts = vec![
        part(1, 2048, 32, Fs::Ext4),
        part(2, 2048 + 32 * 2048, 60, Fs::Extended),
        part(5, 2048 + 33 * 2048, 16, Fs::Ext2),
        part(6, 2048 + 50 * 2048, 16, Fs::Fat16),
    ];
    let types = ["83, bootable", "5", "83", "6"];
    let mut script = String::from("label: dos\nlabel-id: 0x5eed0b0b\nunit: sectors\n\n");
    for (i, p) in parts.iter().enumerate() {
        script.push_str(&format!(
            "{}{} : start={}, size={}, type={}\n",
            path.display(),
            p.number,
            p.start / SECTOR,
            p.size / SECTOR,
            types[i]
        ));
    }
    run_with_input(tool("sfdisk").arg("-q").arg(&path), &script);
    random_at(&path, SECTOR, 2047 * SECTOR, seed);
    boot_code(&path, MBR_BIN);
    fill(&path, &tree, &mut parts, seed);
    let d = Disk {
        path,
        size,
        table: TableKind::Mbr,
        parts,
        tree,
    };
    // sfdisk placed each logical partition where the script said, after its EBR.
    let ebrs = super::ebr_sectors(&d.path, &d);
    assert_eq!(ebrs.len(), 2, "EBR chain of {}: {ebrs:?}", d.path.display());
    d
}

/// A "clone" made without blockswarm: a sparse copy of `src` grown to `size` bytes, and for
/// GPT `sgdisk -e` (backup table moved to the new end). The reference the checks must pass.
pub fn reference_clone(src: &Disk, dst: &Path, size: u64) {
    run_out(tool("cp").arg("--sparse=always").arg(&src.path).arg(dst));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .unwrap()
        .set_len(size)
        .unwrap();
    if src.table == TableKind::Gpt {
        run_out(tool("sgdisk").arg("-e").arg(dst));
    }
}
