// SPDX-License-Identifier: GPL-2.0-or-later
//! FAT12/FAT16/FAT32 used-block map.
//!
//! Layout (Microsoft "FAT: General Overview of On-Disk Format"):
//!
//! ```text
//! | reserved sectors (boot sector, FSInfo, backup) | FAT #0 .. FAT #n-1 | root dir (FAT12/16) | data clusters 2.. | tail |
//! ```
//!
//! Everything before the data area is used. A data cluster is used when its
//! FAT entry is non-zero, except that the exact bad-cluster marker counts as
//! free by default, as `partclone.fat` does (see [`FatOptions`]). Sectors
//! after the last whole cluster (up to the volume's total sector count) are
//! used, again like partclone.

use std::io::{Read, Seek};

use tracing::{debug, warn};

use crate::io::{has_at, le16, le32, Dev};
use crate::runs::RunBuilder;
use crate::{FsError, FsUsage};

const FS: &str = "FAT";

/// FAT entries are read from disk in chunks of this many bytes.
const FAT_CHUNK: usize = 1 << 20;

/// Maximum cluster counts for FAT12 / FAT16 (Microsoft spec: a volume with
/// fewer than 4085 clusters is FAT12, fewer than 65525 is FAT16).
const FAT12_MAX_CLUSTERS: u64 = 4084;
const FAT16_MAX_CLUSTERS: u64 = 65524;
/// FAT32 cluster numbers are 28 bits; 0x0FFFFFF7 and up are markers.
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF5;

/// The FAT variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit FAT entries.
    Fat12,
    /// 16-bit FAT entries.
    Fat16,
    /// 32-bit FAT entries (28 significant bits).
    Fat32,
}

impl FatType {
    /// partclone-style name: `"fat12"`, `"fat16"` or `"fat32"`.
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        }
    }

    fn entry_bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// The bad-cluster marker.
    fn bad_marker(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF7,
            FatType::Fat16 => 0xFFF7,
            FatType::Fat32 => 0x0FFF_FFF7,
        }
    }
}

/// Options for [`fat_usage_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FatOptions {
    /// Count clusters whose FAT entry is the bad-cluster marker (0xFF7,
    /// 0xFFF7, 0x0FFFFFF7) as used. `false` (the default) matches
    /// `partclone.fat`, which leaves them out of its map.
    pub bad_clusters_used: bool,
}

/// Validated geometry of a FAT volume, from its boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatGeometry {
    /// FAT variant (from the cluster count, see [`fat_geometry`]).
    pub fat_type: FatType,
    /// Bytes per sector (512, 1024, 2048 or 4096).
    pub bytes_per_sector: u64,
    /// Sectors per cluster (power of two, 1..=128).
    pub sectors_per_cluster: u64,
    /// Reserved sectors before the first FAT (>= 1).
    pub reserved_sectors: u64,
    /// Number of FATs (>= 1).
    pub num_fats: u64,
    /// Sectors per FAT.
    pub fat_sectors: u64,
    /// Sectors of the fixed root directory (0 on FAT32).
    pub root_dir_sectors: u64,
    /// Total sectors of the volume.
    pub total_sectors: u64,
    /// Number of data clusters (clusters 2 ..= cluster_count + 1).
    pub cluster_count: u64,
    /// Index of the FAT that is read (FAT32 with mirroring disabled may
    /// name a FAT other than the first).
    pub active_fat: u64,
}

impl FatGeometry {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    /// Byte offset of the first data cluster (cluster 2).
    pub fn data_start(&self) -> u64 {
        (self.reserved_sectors + self.num_fats * self.fat_sectors + self.root_dir_sectors)
            * self.bytes_per_sector
    }

    /// Size of the volume in bytes, per its boot sector.
    pub fn volume_size(&self) -> u64 {
        self.total_sectors * self.bytes_per_sector
    }

    /// Byte offset of the FAT that is read.
    pub fn active_fat_offset(&self) -> u64 {
        (self.reserved_sectors + self.active_fat * self.fat_sectors) * self.bytes_per_sector
    }
}

fn corrupt(detail: impl Into<String>) -> FsError {
    FsError::Corrupt {
        fs: FS,
        detail: detail.into(),
    }
}

/// Parse and validate a FAT boot sector (the first 512 bytes of the volume).
///
/// The FAT type follows the Microsoft rule on the cluster count (fewer than
/// 4085 clusters: FAT12, fewer than 65525: FAT16, else FAT32), except that a
/// boot sector with the FAT32 layout (16-bit FAT size 0, no fixed root
/// directory) is FAT32 whatever its cluster count: `mkfs.fat -F 32` makes
/// such small volumes and Linux and partclone read them as FAT32.
pub fn fat_geometry(bs: &[u8]) -> Result<FatGeometry, FsError> {
    if bs.len() < 512 {
        return Err(corrupt(format!(
            "boot sector is {} bytes, need 512",
            bs.len()
        )));
    }
    if has_at(bs, 3, b"EXFAT   ") {
        return Err(FsError::NotThisFs {
            fs: FS,
            detail: "the boot sector is an exFAT boot sector".into(),
        });
    }
    if has_at(bs, 3, b"NTFS    ") {
        return Err(FsError::NotThisFs {
            fs: FS,
            detail: "the boot sector is an NTFS boot sector".into(),
        });
    }
    let bps = u64::from(le16(bs, 11));
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return Err(corrupt(format!(
            "boot sector: bytes per sector is {bps} (must be 512, 1024, 2048 or 4096)"
        )));
    }
    let spc = u64::from(bs[13]);
    if spc == 0 || !spc.is_power_of_two() {
        return Err(corrupt(format!(
            "boot sector: sectors per cluster is {spc} (must be a power of two 1..=128)"
        )));
    }
    let reserved = u64::from(le16(bs, 14));
    if reserved == 0 {
        return Err(corrupt(
            "boot sector: reserved sector count is 0 (must be >= 1)",
        ));
    }
    let num_fats = u64::from(bs[16]);
    if num_fats == 0 {
        return Err(corrupt("boot sector: number of FATs is 0 (must be >= 1)"));
    }
    let root_entries = u64::from(le16(bs, 17));
    let media = bs[21];
    if media != 0xF0 && media < 0xF8 {
        return Err(corrupt(format!(
            "boot sector: media descriptor is {media:#04x} (must be 0xF0 or 0xF8..=0xFF)"
        )));
    }
    let fat16_size = u64::from(le16(bs, 22));
    let fat32_size = u64::from(le32(bs, 36));
    let fat32_layout = fat16_size == 0;
    let fat_sectors = if fat32_layout { fat32_size } else { fat16_size };
    if fat_sectors == 0 {
        return Err(corrupt("boot sector: sectors per FAT is 0"));
    }
    if fat32_layout && root_entries != 0 {
        return Err(corrupt(format!(
            "boot sector: FAT32 layout (16-bit FAT size is 0) but {root_entries} fixed root \
             directory entries (must be 0)"
        )));
    }
    if !fat32_layout && root_entries == 0 {
        return Err(corrupt(
            "boot sector: FAT12/16 layout but the root directory has 0 entries",
        ));
    }
    let tot16 = u64::from(le16(bs, 19));
    let total_sectors = if tot16 != 0 {
        tot16
    } else {
        u64::from(le32(bs, 32))
    };
    if total_sectors == 0 {
        return Err(corrupt("boot sector: total sector count is 0"));
    }
    let root_dir_sectors = (root_entries * 32).div_ceil(bps);
    // All operands are at most 2^32, so none of this overflows u64.
    let meta_sectors = reserved + num_fats * fat_sectors + root_dir_sectors;
    if meta_sectors >= total_sectors {
        return Err(corrupt(format!(
            "boot sector: reserved sectors, FATs and root directory take {meta_sectors} sectors \
             but the volume has only {total_sectors}"
        )));
    }
    let cluster_count = (total_sectors - meta_sectors) / spc;
    if cluster_count == 0 {
        return Err(corrupt(format!(
            "boot sector: no room for a single cluster ({} data sectors, {spc} sectors per \
             cluster)",
            total_sectors - meta_sectors
        )));
    }
    let by_count = if cluster_count <= FAT12_MAX_CLUSTERS {
        FatType::Fat12
    } else if cluster_count <= FAT16_MAX_CLUSTERS {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    let fat_type = if fat32_layout {
        if by_count != FatType::Fat32 {
            debug!(
                cluster_count,
                "FAT32 layout with fewer than 65525 clusters; reading it as FAT32"
            );
        }
        if cluster_count > FAT32_MAX_CLUSTERS {
            return Err(corrupt(format!(
                "boot sector: {cluster_count} clusters, FAT32 allows at most {FAT32_MAX_CLUSTERS}"
            )));
        }
        FatType::Fat32
    } else {
        if by_count == FatType::Fat32 {
            return Err(corrupt(format!(
                "boot sector: {cluster_count} clusters would need FAT32 but the boot sector has \
                 the FAT12/16 layout (16-bit FAT size, fixed root directory)"
            )));
        }
        by_count
    };
    // The FAT must have an entry for every cluster (entries 0 and 1 are
    // reserved).
    let fat_bytes_needed = ((cluster_count + 2) * fat_type.entry_bits()).div_ceil(8);
    let fat_bytes = fat_sectors * bps;
    if fat_bytes < fat_bytes_needed {
        return Err(corrupt(format!(
            "boot sector: a FAT of {fat_sectors} sectors ({fat_bytes} bytes) cannot hold \
             {cluster_count} {} clusters ({fat_bytes_needed} bytes needed)",
            fat_type.name()
        )));
    }
    let mut active_fat = 0;
    if fat_type == FatType::Fat32 {
        let ext_flags = le16(bs, 40);
        if ext_flags & 0x80 != 0 {
            active_fat = u64::from(ext_flags & 0x0F);
            if active_fat >= num_fats {
                return Err(corrupt(format!(
                    "boot sector: FAT mirroring is disabled and FAT #{active_fat} is active, but \
                     there are only {num_fats} FATs"
                )));
            }
        }
        // Neither a FAT32 version other than 0.0 nor a bad root cluster
        // changes which clusters the FAT marks used; like Linux and
        // partclone, go on (with a warning).
        if bs[42] != 0 || bs[43] != 0 {
            warn!(
                major = bs[43],
                minor = bs[42],
                "FAT32 boot sector has an unknown version"
            );
        }
        let root = u64::from(le32(bs, 44));
        if root < 2 || root >= cluster_count + 2 {
            warn!(
                root,
                cluster_count, "FAT32 root directory cluster is out of range"
            );
        }
    }
    Ok(FatGeometry {
        fat_type,
        bytes_per_sector: bps,
        sectors_per_cluster: spc,
        reserved_sectors: reserved,
        num_fats,
        fat_sectors,
        root_dir_sectors,
        total_sectors,
        cluster_count,
        active_fat,
    })
}

/// Used-block map of a FAT12/16/32 volume, matching `partclone.fat -D`.
///
/// `device_size` is the size in bytes of `dev` (partition or image); the
/// volume must fit in it.
pub fn fat_usage<R: Read + Seek>(dev: &mut R, device_size: u64) -> Result<FsUsage, FsError> {
    fat_usage_with(dev, device_size, &FatOptions::default())
}

/// [`fat_usage`] with options.
pub fn fat_usage_with<R: Read + Seek>(
    dev: &mut R,
    device_size: u64,
    opts: &FatOptions,
) -> Result<FsUsage, FsError> {
    let mut dev = Dev::new(dev, device_size, FS);
    let mut bs = [0u8; 512];
    dev.read_at(0, &mut bs, "boot sector")?;
    let g = fat_geometry(&bs)?;
    let vol_size = g.volume_size();
    if vol_size > dev.size() {
        let what = format!(
            "end of the volume ({} sectors of {} bytes per the boot sector)",
            g.total_sectors, g.bytes_per_sector
        );
        return Err(dev.truncated(&what, 0, vol_size));
    }
    let cs = g.cluster_size();
    let data_start = g.data_start();
    let mut runs = RunBuilder::new();
    // Boot sector, reserved area, all FATs and the FAT12/16 root directory.
    runs.push(0, data_start);

    let bad = g.fat_type.bad_marker();
    let mut bad_count = 0u64;
    let mut used_count = 0u64;
    let mut visit = |cluster: u64, entry: u32| {
        let used = if entry == 0 {
            false
        } else if entry == bad {
            bad_count += 1;
            opts.bad_clusters_used
        } else {
            true
        };
        if used {
            used_count += 1;
            runs.push(data_start + (cluster - 2) * cs, cs);
        }
    };
    read_fat_entries(&mut dev, &g, &mut visit)?;

    if bad_count > 0 {
        warn!(
            bad_count,
            counted_as_used = opts.bad_clusters_used,
            "FAT volume has clusters marked bad"
        );
    }
    // Sectors after the last whole cluster: partclone.fat maps them as used.
    let data_end = data_start + g.cluster_count * cs;
    if vol_size > data_end {
        runs.push(data_end, vol_size - data_end);
    }
    debug!(
        fat_type = g.fat_type.name(),
        clusters = g.cluster_count,
        used_clusters = used_count,
        cluster_size = cs,
        "FAT map done"
    );
    Ok(FsUsage {
        fs_type: g.fat_type.name().to_string(),
        block_size: cs,
        device_size,
        runs: runs.finish(device_size),
    })
}

/// Read the active FAT in large chunks and call `visit(cluster, entry)` for
/// every data cluster 2 ..= cluster_count + 1.
fn read_fat_entries<R: Read + Seek>(
    dev: &mut Dev<'_, R>,
    g: &FatGeometry,
    visit: &mut impl FnMut(u64, u32),
) -> Result<(), FsError> {
    let first = 2u64;
    let end = g.cluster_count + 2; // exclusive
    let fat_off = g.active_fat_offset();
    match g.fat_type {
        FatType::Fat12 => {
            // At most 4086 entries * 1.5 bytes: read it in one go.
            let bytes = (end * 12).div_ceil(8);
            let mut buf = vec![0u8; usize_len(bytes)?];
            dev.read_at(fat_off, &mut buf, "FAT")?;
            for c in first..end {
                let i = usize_len(c + c / 2)?;
                let v = u32::from(le16(&buf, i));
                let e = if c & 1 == 1 { v >> 4 } else { v & 0x0FFF };
                visit(c, e);
            }
        }
        FatType::Fat16 | FatType::Fat32 => {
            let esize: u64 = if g.fat_type == FatType::Fat16 { 2 } else { 4 };
            let per_chunk = FAT_CHUNK as u64 / esize;
            let mut buf = Vec::new();
            // Start at entry 0 so chunks are aligned; skip the 2 reserved ones.
            let mut c0 = 0u64;
            while c0 < end {
                let n = per_chunk.min(end - c0);
                buf.resize(usize_len(n * esize)?, 0);
                dev.read_at(fat_off + c0 * esize, &mut buf, "FAT")?;
                for k in 0..n {
                    let c = c0 + k;
                    if c < first {
                        continue;
                    }
                    let i = usize_len(k * esize)?;
                    let e = if esize == 2 {
                        u32::from(le16(&buf, i))
                    } else {
                        le32(&buf, i)
                    };
                    visit(c, e);
                }
                c0 += n;
            }
        }
    }
    Ok(())
}

fn usize_len(n: u64) -> Result<usize, FsError> {
    usize::try_from(n).map_err(|_| corrupt(format!("size {n} does not fit in memory")))
}
