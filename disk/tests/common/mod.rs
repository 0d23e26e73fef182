//! Helpers of the disk crate's tests: the real partitioning tools (sgdisk from gdisk, sfdisk
//! from fdisk) on image files.
//!
//! Tests that need an external tool call [`need_tools`]: when a tool is missing the test prints
//! `SKIP` and returns, unless `BLOCKSWARM_REQUIRE_FS_TOOLS=1` is set, in which case it fails.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Directories searched for tools after `PATH` (Debian keeps sgdisk and sfdisk in sbin).
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

pub const MIB: u64 = 1 << 20;
/// Size of the images the tests make.
pub const IMAGE_SIZE: u64 = 64 * MIB;

/// Full path of `name` if it is an executable on `PATH` or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// True when missing tools must fail the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").is_ok_and(|v| v == "1")
}

/// True when every tool is installed. Otherwise prints `SKIP` and returns false, or panics
/// when `BLOCKSWARM_REQUIRE_FS_TOOLS=1`.
pub fn need_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !tools_required(),
        "{test}: required tools missing (BLOCKSWARM_REQUIRE_FS_TOOLS=1): {missing:?} (scripts/install-deps.sh installs them)"
    );
    println!("SKIP {test}: tools missing: {missing:?}");
    false
}

/// Runs `tool` with `args` and returns its output; panics (showing it) unless it exits 0.
pub fn run_ok(tool: &str, args: &[&str]) -> Output {
    let path = find_tool(tool).unwrap_or_else(|| PathBuf::from(tool));
    let out = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `tool` with `args` feeding `input` on stdin; panics unless it exits 0.
pub fn run_with_input(tool: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let path = find_tool(tool).unwrap_or_else(|| PathBuf::from(tool));
    let mut child = Command::new(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sparse file of `size` bytes.
pub fn sparse(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// The GPT partitions [`make_gpt`] creates: (number, first LBA, sectors, sgdisk type code,
/// type GUID, name). Entry 5 is left unused, so the last partition is number 6.
pub const GPT_PARTS: &[(u32, u64, u64, &str, &str, &str)] = &[
    (
        1,
        2048,
        16384,
        "ef00",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "EFI System",
    ),
    (
        2,
        18432,
        32768,
        "8300",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "root fs",
    ),
    (
        3,
        51200,
        16384,
        "0700",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "data",
    ),
    (
        4,
        67584,
        8192,
        "8200",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        "swap",
    ),
    (
        6,
        75776,
        16384,
        "8300",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "xfs ünï",
    ),
];

/// A 64 MiB GPT disk image with [`GPT_PARTS`] (partition 2 with the legacy-BIOS-bootable
/// attribute), made by sgdisk; the sectors between the entries (LBA 34) and the first
/// partition and the 440 bytes of boot code filled with pseudo-random bytes.
pub fn make_gpt(path: &Path) {
    sparse(path, IMAGE_SIZE);
    let mut args: Vec<String> = vec!["-o".into()];
    for &(n, start, len, code, _, name) in GPT_PARTS {
        args.push(format!("--new={n}:{start}:{}", start + len - 1));
        args.push(format!("--typecode={n}:{code}"));
        args.push(format!("--change-name={n}:{name}"));
    }
    args.push("--attributes=2:set:2".into());
    args.push(s(path).into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("sgdisk", &a);
    fill_random(path, 0, 440, 1);
    fill_random(path, 34 * 512, (2048 - 34) * 512, 2);
}

/// The MBR partitions [`make_mbr`] creates: (number, first sector, sectors, sfdisk type).
/// 1 primary (bootable), 2 extended with logicals 5 and 6 inside, 3 primary after it.
pub const MBR_PARTS: &[(u32, u64, u64, &str)] = &[
    (1, 2048, 32768, "83"),
    (2, 34816, 65536, "5"),
    (3, 100352, 16384, "c"),
    (5, 36864, 16384, "83"),
    (6, 55296, 16384, "82"),
];

/// A 64 MiB MBR disk image with [`MBR_PARTS`] made by sfdisk, GRUB-style pseudo-random data in
/// sectors 1..2047 and pseudo-random boot code.
pub fn make_mbr(path: &Path) {
    sparse(path, IMAGE_SIZE);
    let script = "label: dos\n\
        start=2048, size=32768, type=83, bootable\n\
        start=34816, size=65536, type=5\n\
        start=36864, size=16384, type=83\n\
        start=55296, size=16384, type=82\n\
        start=100352, size=16384, type=c\n";
    run_with_input("sfdisk", &["-q", s(path)], script);
    fill_random(path, 0, 440, 3);
    fill_random(path, 512, 2047 * 512, 4);
}

/// Overwrites `len` bytes at `offset` with pseudo-random bytes from `seed`.
pub fn fill_random(path: &Path, offset: u64, len: u64, seed: u64) {
    use rand::{RngCore, SeedableRng};
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&buf, offset).unwrap();
}

/// Flips one bit of the byte at `offset`.
pub fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).unwrap();
}

/// `sfdisk -J` of an image: the table as sfdisk sees it.
pub fn sfdisk_json(path: &Path) -> serde_json::Value {
    let out = run_ok("sfdisk", &["-J", s(path)]);
    serde_json::from_slice(&out.stdout).expect("sfdisk -J output is JSON")
}

/// The partitions of `sfdisk -J` as (number, start, size, type, name), numbers from the node
/// names' suffixes, sorted by number.
pub fn sfdisk_parts(j: &serde_json::Value) -> Vec<(u32, u64, u64, String, String)> {
    let device = j["partitiontable"]["device"].as_str().unwrap();
    let mut v: Vec<_> = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            (
                node[device.len()..].parse().unwrap(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_owned(),
                p["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `sgdisk -v` of an image: (clean, output).
pub fn sgdisk_verify(path: &Path) -> (bool, String) {
    let out = Command::new(find_tool("sgdisk").unwrap())
        .args(["-v", s(path)])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success() && text.contains("No problems found"),
        text,
    )
}
