// SPDX-License-Identifier: GPL-2.0-or-later
//! Detection of filesystems made by the real mkfs tools.

mod common;

use std::io::Cursor;

use blockswarm_fsmap::{canonical_fs_name, detect, fs_variant, partclone_module_for};
use common::*;

struct Case {
    want: &'static str,
    tool: &'static str,
    package: &'static str,
    args: &'static [&'static str],
    /// Image size in MiB.
    mib: u64,
    /// Extra arguments after the image path (e.g. a block count).
    after: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        want: "fat12",
        tool: "mkfs.fat",
        package: "dosfstools",
        args: &["-F", "12"],
        mib: 4,
        after: &[],
    },
    Case {
        want: "fat16",
        tool: "mkfs.fat",
        package: "dosfstools",
        args: &["-F", "16"],
        mib: 32,
        after: &[],
    },
    Case {
        want: "fat32",
        tool: "mkfs.fat",
        package: "dosfstools",
        args: &["-F", "32"],
        mib: 300,
        after: &[],
    },
    Case {
        want: "exfat",
        tool: "mkfs.exfat",
        package: "exfatprogs",
        args: &[],
        mib: 16,
        after: &[],
    },
    Case {
        want: "xfs",
        tool: "mkfs.xfs",
        package: "xfsprogs",
        args: &["-q", "-f"],
        mib: 300,
        after: &[],
    },
    Case {
        want: "btrfs",
        tool: "mkfs.btrfs",
        package: "btrfs-progs",
        args: &["-q", "-f"],
        mib: 128,
        after: &[],
    },
    Case {
        want: "ext2",
        tool: "mkfs.ext2",
        package: "e2fsprogs",
        args: &["-q", "-F"],
        mib: 16,
        after: &[],
    },
    Case {
        want: "ext3",
        tool: "mkfs.ext3",
        package: "e2fsprogs",
        args: &["-q", "-F"],
        mib: 16,
        after: &[],
    },
    Case {
        want: "ext4",
        tool: "mkfs.ext4",
        package: "e2fsprogs",
        args: &["-q", "-F"],
        mib: 16,
        after: &[],
    },
    Case {
        want: "ntfs",
        tool: "mkntfs",
        package: "ntfs-3g",
        args: &["-q", "-F", "-f"],
        mib: 16,
        after: &[],
    },
    Case {
        want: "minix",
        tool: "mkfs.minix",
        package: "util-linux",
        args: &["-1"],
        mib: 8,
        after: &[],
    },
    Case {
        want: "minix",
        tool: "mkfs.minix",
        package: "util-linux",
        args: &["-2"],
        mib: 8,
        after: &[],
    },
    Case {
        want: "minix",
        tool: "mkfs.minix",
        package: "util-linux",
        args: &["-3"],
        mib: 8,
        after: &[],
    },
    Case {
        want: "f2fs",
        tool: "mkfs.f2fs",
        package: "f2fs-tools",
        args: &["-q", "-f"],
        mib: 64,
        after: &[],
    },
];

#[test]
fn detects_real_filesystems() {
    let tmp = tempfile::tempdir().unwrap();
    let mut done = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let label = format!("detect {} ({} {})", c.want, c.tool, c.args.join(" "));
        // Every tool is installed by scripts/install-deps.sh (f2fs-tools too): a missing one
        // fails under BLOCKSWARM_REQUIRE_FS_TOOLS=1.
        if !have_tools(&label, &[(c.tool, c.package)]) {
            continue;
        }
        let img = tmp.path().join(format!("img{i}"));
        sparse_image(&img, c.mib << 20);
        run(tool(c.tool).args(c.args).arg(&img).args(c.after));
        let (mut f, _) = open(&img);
        assert_eq!(detect(&mut f).unwrap(), Some(c.want), "{label}");
        std::fs::remove_file(&img).unwrap();
        done.push(format!("{} ({})", c.want, c.args.join(" ")));
    }
    println!("detected correctly: {}", done.join(", "));
}

/// HFS+ has no mkfs in Debian bookworm (hfsprogs, which has `mkfs.hfsplus`, is not in the
/// archive; `hfsplus` and `hfsutils` have no HFS+ mkfs), so the detection is checked on volume
/// headers laid out by hand per Apple's TN1150: signature "H+" version 4 and "HX" (HFSX)
/// version 5 at byte 1024, and an HFS wrapper ("BD") whose drEmbedSigWord (at 0x7C of its
/// master directory block) is "H+". A wrong version, or a wrapper embedding nothing, is not
/// HFS+.
#[test]
fn detects_hfsplus_volume_headers() {
    fn volume(sig: &[u8; 2], version: u16, embed: Option<&[u8; 2]>) -> Vec<u8> {
        let mut v = vec![0u8; 64 << 10];
        v[1024..1026].copy_from_slice(sig);
        v[1026..1028].copy_from_slice(&version.to_be_bytes());
        if let Some(e) = embed {
            v[1024 + 0x7C..1024 + 0x7E].copy_from_slice(e);
        }
        v
    }
    let cases: &[(&str, Vec<u8>, Option<&str>)] = &[
        ("H+ v4", volume(b"H+", 4, None), Some("hfsplus")),
        ("HX v5", volume(b"HX", 5, None), Some("hfsplus")),
        (
            "BD wrapping H+",
            volume(b"BD", 0, Some(b"H+")),
            Some("hfsplus"),
        ),
        ("H+ v5", volume(b"H+", 5, None), None),
        ("BD wrapping nothing", volume(b"BD", 0, Some(&[0, 0])), None),
    ];
    for (label, bytes, want) in cases {
        assert_eq!(detect(&mut Cursor::new(bytes)).unwrap(), *want, "{label}");
    }
}

#[test]
fn random_data_is_not_a_filesystem() {
    for seed in 0..200u64 {
        let mut rng = Rng::new(seed + 1000);
        let mut data = vec![0u8; 80 * 1024];
        rng.fill(&mut data);
        assert_eq!(
            detect(&mut Cursor::new(&data)).unwrap(),
            None,
            "seed {seed}"
        );
    }
    assert_eq!(detect(&mut Cursor::new(vec![0u8; 4 << 20])).unwrap(), None);
    assert_eq!(detect(&mut Cursor::new(vec![0xFFu8; 100])).unwrap(), None);
}

#[test]
fn names_and_modules() {
    for (name, family, variant, module) in [
        ("extfs", "ext", "ext", "extfs"),
        ("ext2", "ext", "ext2", "extfs"),
        ("ext3", "ext", "ext3", "extfs"),
        ("ext4", "ext", "ext4", "extfs"),
        ("NTFS", "ntfs", "ntfs", "ntfs"),
        ("vfat", "fat", "fat", "fat"),
        ("msdos", "fat", "fat", "fat"),
        ("fat12", "fat", "fat12", "fat"),
        ("fat16", "fat", "fat16", "fat"),
        ("fat32", "fat", "fat32", "fat"),
        ("exfat", "exfat", "exfat", "exfat"),
        ("xfs", "xfs", "xfs", "xfs"),
        ("btrfs", "btrfs", "btrfs", "btrfs"),
        ("f2fs", "f2fs", "f2fs", "f2fs"),
        ("hfs+", "hfsplus", "hfsplus", "hfsp"),
        ("hfsplus", "hfsplus", "hfsplus", "hfsp"),
        ("apfs", "apfs", "apfs", "apfs"),
        ("minix", "minix", "minix", "minix"),
        ("reiser4", "reiser4", "reiser4", "reiser4"),
        ("dd", "dd", "dd", "dd"),
        ("raw", "dd", "dd", "dd"),
        ("partclone.xfs", "xfs", "xfs", "xfs"),
    ] {
        assert_eq!(canonical_fs_name(name), Some(family), "{name}");
        assert_eq!(fs_variant(name), Some(variant), "{name}");
        assert_eq!(partclone_module_for(name), Some(module), "{name}");
    }
    assert_eq!(canonical_fs_name("zfs"), None);
    assert_eq!(partclone_module_for(""), None);
}
