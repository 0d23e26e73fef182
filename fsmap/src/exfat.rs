// SPDX-License-Identifier: GPL-2.0-or-later
//! exFAT used-block map.
//!
//! Layout (Microsoft "exFAT File System Specification"):
//!
//! ```text
//! | main boot region (12 sectors) | backup boot region (12) | ... | FAT(s) | ... | cluster heap |
//! 0                               12                        24    FatOffset       ClusterHeapOffset
//! ```
//!
//! Everything before the cluster heap is used. Inside the heap, a cluster is
//! used when its bit in the Allocation Bitmap is set; the bitmap is found
//! through the Allocation Bitmap directory entry (type 0x81) of the root
//! directory. Sectors after the last cluster are not used (as in
//! `partclone.exfat`).

use std::io::{Read, Seek};

use tracing::{debug, warn};

use crate::io::{has_at, le16, le32, le64, Dev};
use crate::runs::RunBuilder;
use crate::{FsError, FsUsage};

const FS: &str = "exFAT";

/// Highest valid cluster count (cluster numbers 0xFFFFFFF7.. are markers).
const MAX_CLUSTERS: u64 = 0xFFFF_FFF5;
/// The bitmap is read in pieces of at most this many bytes.
const BITMAP_CHUNK: u64 = 1 << 20;
const END_OF_CHAIN: u32 = 0xFFFF_FFFF;
const ENTRY_BITMAP: u8 = 0x81;

fn corrupt(detail: impl Into<String>) -> FsError {
    FsError::Corrupt {
        fs: FS,
        detail: detail.into(),
    }
}

/// Validated geometry of an exFAT volume, from its main boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExfatGeometry {
    /// Bytes per sector (512..=4096).
    pub bytes_per_sector: u64,
    /// Sectors per cluster (cluster size at most 32 MiB).
    pub sectors_per_cluster: u64,
    /// Volume length in sectors.
    pub volume_length: u64,
    /// First sector of the first FAT.
    pub fat_offset: u64,
    /// Sectors per FAT.
    pub fat_length: u64,
    /// First sector of the cluster heap.
    pub cluster_heap_offset: u64,
    /// Number of clusters in the heap (clusters 2 ..= cluster_count + 1).
    pub cluster_count: u64,
    /// First cluster of the root directory.
    pub root_cluster: u32,
    /// Number of FATs (1, or 2 for TexFAT).
    pub num_fats: u64,
    /// Active FAT and allocation bitmap (0 or 1).
    pub active_fat: u64,
}

impl ExfatGeometry {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    /// Byte offset of the cluster heap.
    pub fn heap_start(&self) -> u64 {
        self.cluster_heap_offset * self.bytes_per_sector
    }

    /// Volume size in bytes.
    pub fn volume_size(&self) -> u64 {
        self.volume_length * self.bytes_per_sector
    }

    /// Byte offset of cluster `c` (>= 2).
    fn cluster_offset(&self, c: u64) -> u64 {
        self.heap_start() + (c - 2) * self.cluster_size()
    }

    fn valid_cluster(&self, c: u64) -> bool {
        c >= 2 && c < self.cluster_count + 2
    }
}

/// Parse and validate an exFAT main boot sector (first 512 bytes).
pub fn exfat_geometry(bs: &[u8]) -> Result<ExfatGeometry, FsError> {
    if bs.len() < 512 {
        return Err(corrupt(format!(
            "boot sector is {} bytes, need 512",
            bs.len()
        )));
    }
    if !has_at(bs, 3, b"EXFAT   ") {
        return Err(FsError::NotThisFs {
            fs: FS,
            detail: "no \"EXFAT   \" file system name at byte 3 of the boot sector".into(),
        });
    }
    if le16(bs, 510) != 0xAA55 {
        return Err(corrupt(format!(
            "boot sector signature is {:#06x}, expected 0xaa55",
            le16(bs, 510)
        )));
    }
    if bs[11..64].iter().any(|&b| b != 0) {
        return Err(corrupt(
            "boot sector bytes 11..64 (MustBeZero, where FAT keeps its BPB) are not zero",
        ));
    }
    let bps_shift = u32::from(bs[108]);
    if !(9..=12).contains(&bps_shift) {
        return Err(corrupt(format!(
            "boot sector: BytesPerSectorShift is {bps_shift} (must be 9..=12)"
        )));
    }
    let spc_shift = u32::from(bs[109]);
    if spc_shift > 25 - bps_shift {
        return Err(corrupt(format!(
            "boot sector: SectorsPerClusterShift is {spc_shift} (clusters larger than 32 MiB; \
             must be <= {})",
            25 - bps_shift
        )));
    }
    let bps = 1u64 << bps_shift;
    let spc = 1u64 << spc_shift;
    let num_fats = u64::from(bs[110]);
    if !(1..=2).contains(&num_fats) {
        return Err(corrupt(format!(
            "boot sector: NumberOfFats is {num_fats} (must be 1 or 2)"
        )));
    }
    let volume_length = le64(bs, 72);
    // Keep the volume size representable in bytes.
    if volume_length == 0 || volume_length > (u64::MAX >> 12) {
        return Err(corrupt(format!(
            "boot sector: VolumeLength is {volume_length} sectors"
        )));
    }
    let fat_offset = u64::from(le32(bs, 80));
    let fat_length = u64::from(le32(bs, 84));
    let heap = u64::from(le32(bs, 88));
    let cluster_count = u64::from(le32(bs, 92));
    let root_cluster = le32(bs, 96);
    if fat_offset < 24 {
        return Err(corrupt(format!(
            "boot sector: FatOffset is sector {fat_offset} (must be >= 24, after the boot regions)"
        )));
    }
    if fat_length == 0 {
        return Err(corrupt("boot sector: FatLength is 0"));
    }
    let fat_end = fat_offset + fat_length * num_fats;
    if heap < fat_end {
        return Err(corrupt(format!(
            "boot sector: ClusterHeapOffset (sector {heap}) lies inside the FAT region (sectors \
             {fat_offset}..{fat_end})"
        )));
    }
    if heap >= volume_length {
        return Err(corrupt(format!(
            "boot sector: ClusterHeapOffset (sector {heap}) is not inside the volume \
             ({volume_length} sectors)"
        )));
    }
    if cluster_count == 0 {
        return Err(corrupt("boot sector: ClusterCount is 0"));
    }
    let fit = (volume_length - heap) >> spc_shift;
    if cluster_count > fit || cluster_count > MAX_CLUSTERS {
        return Err(corrupt(format!(
            "boot sector: ClusterCount {cluster_count} does not fit: the heap has room for {fit} \
             clusters of {spc} sectors"
        )));
    }
    if fat_length * bps < (cluster_count + 2) * 4 {
        return Err(corrupt(format!(
            "boot sector: a FAT of {fat_length} sectors cannot hold {cluster_count} clusters"
        )));
    }
    if u64::from(root_cluster) < 2 || u64::from(root_cluster) >= cluster_count + 2 {
        return Err(corrupt(format!(
            "boot sector: FirstClusterOfRootDirectory {root_cluster} is outside clusters 2..={}",
            cluster_count + 1
        )));
    }
    let mut active_fat = u64::from(le16(bs, 106) & 1);
    if active_fat >= num_fats {
        warn!("exFAT boot sector names the second FAT active but has only one; using the first");
        active_fat = 0;
    }
    Ok(ExfatGeometry {
        bytes_per_sector: bps,
        sectors_per_cluster: spc,
        volume_length,
        fat_offset,
        fat_length,
        cluster_heap_offset: heap,
        cluster_count,
        root_cluster,
        num_fats,
        active_fat,
    })
}

/// Reads FAT entries of the active FAT, one sector cached.
struct FatReader {
    base: u64,
    sector_size: u64,
    cached: Option<u64>,
    buf: Vec<u8>,
}

impl FatReader {
    fn new(g: &ExfatGeometry) -> Self {
        FatReader {
            base: (g.fat_offset + g.active_fat * g.fat_length) * g.bytes_per_sector,
            sector_size: g.bytes_per_sector,
            cached: None,
            buf: vec![0u8; g.bytes_per_sector as usize],
        }
    }

    fn entry<R: Read + Seek>(&mut self, dev: &mut Dev<'_, R>, c: u64) -> Result<u32, FsError> {
        let byte = c * 4;
        let sector = byte / self.sector_size;
        if self.cached != Some(sector) {
            self.cached = None;
            dev.read_at(self.base + sector * self.sector_size, &mut self.buf, "FAT")?;
            self.cached = Some(sector);
        }
        Ok(le32(&self.buf, (byte % self.sector_size) as usize))
    }
}

/// An Allocation Bitmap directory entry.
#[derive(Debug, Clone, Copy)]
struct BitmapEntry {
    index: u64,
    first_cluster: u32,
    length: u64,
}

/// Used-block map of an exFAT volume, matching `partclone.exfat -D`.
///
/// `device_size` is the size in bytes of `dev`; the volume must fit in it.
pub fn exfat_usage<R: Read + Seek>(dev: &mut R, device_size: u64) -> Result<FsUsage, FsError> {
    let mut dev = Dev::new(dev, device_size, FS);
    let mut bs = [0u8; 512];
    dev.read_at(0, &mut bs, "boot sector")?;
    let g = exfat_geometry(&bs)?;
    let vol_size = g.volume_size();
    if vol_size > dev.size() {
        let what = format!(
            "end of the volume ({} sectors of {} bytes per the boot sector)",
            g.volume_length, g.bytes_per_sector
        );
        return Err(dev.truncated(&what, 0, vol_size));
    }
    let mut fat = FatReader::new(&g);
    let bitmap = find_bitmap(&mut dev, &g, &mut fat)?;
    let cs = g.cluster_size();
    let bitmap_bytes = g.cluster_count.div_ceil(8);
    if !g.valid_cluster(u64::from(bitmap.first_cluster)) {
        return Err(corrupt(format!(
            "allocation bitmap starts at cluster {}, outside clusters 2..={}",
            bitmap.first_cluster,
            g.cluster_count + 1
        )));
    }
    if bitmap.length < bitmap_bytes {
        return Err(corrupt(format!(
            "allocation bitmap is {} bytes, {} clusters need {bitmap_bytes}",
            bitmap.length, g.cluster_count
        )));
    }

    let mut runs = RunBuilder::new();
    // Boot regions, FAT region and anything else before the heap.
    runs.push(0, g.heap_start());

    let mut cluster = u64::from(bitmap.first_cluster);
    let mut done = 0u64; // bitmap bytes processed
    let mut chunk = Vec::new();
    let mut hops = 0u64;
    while done < bitmap_bytes {
        let in_cluster = cs.min(bitmap_bytes - done);
        let mut off = 0;
        while off < in_cluster {
            let n = BITMAP_CHUNK.min(in_cluster - off);
            chunk.resize(n as usize, 0);
            dev.read_at(
                g.cluster_offset(cluster) + off,
                &mut chunk,
                "allocation bitmap",
            )?;
            add_bitmap_bytes(&g, done + off, &chunk, &mut runs);
            off += n;
        }
        done += in_cluster;
        if done >= bitmap_bytes {
            break;
        }
        hops += 1;
        if hops > g.cluster_count {
            return Err(corrupt("allocation bitmap cluster chain loops"));
        }
        let next = fat.entry(&mut dev, cluster)?;
        cluster = if next == 0 {
            // Not chained in the FAT: the bitmap is contiguous.
            cluster + 1
        } else if next == END_OF_CHAIN {
            return Err(corrupt(format!(
                "allocation bitmap cluster chain ends after {done} of {bitmap_bytes} bytes"
            )));
        } else {
            u64::from(next)
        };
        if !g.valid_cluster(cluster) {
            return Err(corrupt(format!(
                "allocation bitmap cluster chain leads to invalid cluster {cluster}"
            )));
        }
    }
    debug!(
        clusters = g.cluster_count,
        cluster_size = cs,
        bitmap_cluster = bitmap.first_cluster,
        "exFAT map done"
    );
    Ok(FsUsage {
        fs_type: "exfat".to_string(),
        block_size: cs,
        device_size,
        runs: runs.finish(device_size),
    })
}

/// Add the clusters whose bits are set in `bytes` (bitmap bytes starting at
/// bitmap byte `first_byte`).
fn add_bitmap_bytes(g: &ExfatGeometry, first_byte: u64, bytes: &[u8], runs: &mut RunBuilder) {
    let cs = g.cluster_size();
    for (i, &b) in bytes.iter().enumerate() {
        if b == 0 {
            continue;
        }
        let base = (first_byte + i as u64) * 8;
        for bit in 0..8u64 {
            if b & (1 << bit) == 0 {
                continue;
            }
            let idx = base + bit;
            if idx >= g.cluster_count {
                return;
            }
            runs.push(g.cluster_offset(idx + 2), cs);
        }
    }
}

/// Walk the root directory for the Allocation Bitmap entry that belongs to
/// the active FAT.
fn find_bitmap<R: Read + Seek>(
    dev: &mut Dev<'_, R>,
    g: &ExfatGeometry,
    fat: &mut FatReader,
) -> Result<BitmapEntry, FsError> {
    let mut first: Option<BitmapEntry> = None;
    let sector = g.bytes_per_sector;
    let mut buf = vec![0u8; sector as usize];
    let mut cluster = u64::from(g.root_cluster);
    let mut hops = 0u64;
    'chain: loop {
        for s in 0..g.sectors_per_cluster {
            dev.read_at(
                g.cluster_offset(cluster) + s * sector,
                &mut buf,
                "root directory",
            )?;
            for e in buf.chunks_exact(32) {
                match e[0] {
                    0x00 => break 'chain,
                    ENTRY_BITMAP => {
                        let entry = BitmapEntry {
                            index: u64::from(e[1] & 1),
                            first_cluster: le32(e, 20),
                            length: le64(e, 24),
                        };
                        if g.num_fats == 1 || entry.index == g.active_fat {
                            return Ok(entry);
                        }
                        first.get_or_insert(entry);
                    }
                    _ => {}
                }
            }
        }
        hops += 1;
        if hops > g.cluster_count {
            return Err(corrupt("root directory cluster chain loops"));
        }
        let next = fat.entry(dev, cluster)?;
        if next == END_OF_CHAIN {
            break;
        }
        if !g.valid_cluster(u64::from(next)) {
            return Err(corrupt(format!(
                "root directory cluster chain: FAT entry of cluster {cluster} is {next:#x}, not a \
                 valid cluster"
            )));
        }
        cluster = u64::from(next);
    }
    first.ok_or_else(|| {
        corrupt(format!(
            "the root directory (cluster {}) has no Allocation Bitmap entry (type 0x81)",
            g.root_cluster
        ))
    })
}
