//! The blockswarm manifest: a standard BitTorrent v1 `.torrent` describing ONE packed file
//! (the used runs of a partition concatenated in offset order), whose info dictionary also
//! carries the extent map, so the infohash protects the map.
//!
//! See `manifest/FORMAT.md` for the byte/field table.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod device;
pub mod exit;
mod extent;
mod layout;
pub mod logging;

pub use extent::{Extent, ExtentMap, ExtentMapBuilder, PackedIoError, Segment, Segments};
pub use layout::{DiskLayout, PartitionInfo, TableKind, EXTENDED_FS, MAX_PARTITIONS};

use librqbit_bencode::{ByteBuf, WithRawBytes};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// Version of the `blockswarm` info sub-dictionary written by this code.
pub const FORMAT_VERSION: u64 = 1;
/// Bytes per extent in the `extents` string: big-endian u64 offset, big-endian u64 length.
pub const EXTENT_RECORD_LEN: usize = 16;
/// Smallest and largest accepted piece length (powers of two).
pub const MIN_PIECE_LENGTH: u32 = 16 * 1024;
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Default piece length: 4 MiB, a good fit for a LAN.
pub const DEFAULT_PIECE_LENGTH: u32 = 4 * 1024 * 1024;

/// An invalid extent map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("extent {index} has zero length")]
    EmptyRun { index: usize },
    #[error("extent {index} starts at {offset}, before the previous extent ends at {prev_end} (overlap or unsorted)")]
    Overlap {
        index: usize,
        offset: u64,
        prev_end: u64,
    },
    #[error("extent {index} ends at byte {end}, beyond the device size {device_size}")]
    OutsideDevice {
        index: usize,
        end: u64,
        device_size: u64,
    },
    #[error("packed range {offset}+{length} goes past the packed length {packed_len}")]
    PackedRange {
        offset: u64,
        length: u64,
        packed_len: u64,
    },
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid bencode or lacks a required key: {0}")]
    Bencode(String),
    #[error("manifest is not a blockswarm manifest: the info dictionary has no `blockswarm` key")]
    NotBlockswarm,
    #[error(
        "unsupported blockswarm manifest version {0} (this build reads version {FORMAT_VERSION})"
    )]
    Version(u64),
    #[error("invalid piece length {0}: must be a power of two between 16 KiB and 64 MiB")]
    PieceLength(u64),
    #[error("`pieces` is {0} bytes, not a multiple of 20")]
    PiecesLen(usize),
    #[error("manifest has {got} piece hashes but length {length} with piece length {piece_length} needs {want}")]
    PieceCount {
        got: usize,
        want: u64,
        length: u64,
        piece_length: u64,
    },
    #[error("`extents` is {0} bytes, not a multiple of 16")]
    ExtentsLen(usize),
    #[error("invalid extent map: {0}")]
    Map(#[from] MapError),
    #[error("the extents add up to {extents} bytes but the torrent's length is {length}")]
    LengthMismatch { extents: u64, length: u64 },
    #[error("the torrent describes no data (length 0)")]
    Empty,
    #[error("invalid name {0:?}: must be non-empty UTF-8 without '/', NUL, or a leading '.'")]
    Name(String),
    #[error("invalid block size {0}: must be a power of two between 512 and 1 MiB")]
    BlockSize(u64),
    #[error("field `{0}` is not valid UTF-8")]
    Utf8(&'static str),
    #[error("invalid disk layout: {0}")]
    Layout(String),
    #[error("manifest encoding failed: {0}")]
    Encode(String),
}

/// A decoded, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Name of the packed file (and of the torrent).
    pub name: String,
    pub piece_length: u32,
    /// SHA-1 of each piece of the packed stream, in order.
    pub piece_hashes: Vec<[u8; 20]>,
    /// Filesystem type the imager saw (`ext4`, `ntfs`, `dd`, ...).
    pub fs_type: String,
    /// Filesystem block size in bytes (the granularity of the extent map).
    pub block_size: u64,
    /// The used runs; `map.device_size()` is the source device size.
    pub map: std::sync::Arc<ExtentMap>,
    /// Whole-disk manifests: the partition layout (the extents are then disk byte offsets).
    pub disk: Option<DiskLayout>,
    /// Tracker URL (outside the info dict).
    pub announce: Option<String>,
    /// Path of the source device on the imaging machine (outside the info dict; a hint for
    /// the seeder only).
    pub source: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<u64>,
}

/// A manifest together with its infohash, as read from bytes.
#[derive(Debug, Clone)]
pub struct DecodedManifest {
    pub manifest: Manifest,
    /// SHA-1 of the exact bytes of the info dictionary as found in the input.
    pub info_hash: [u8; 20],
}

// ---- wire structs (serde) ----

#[derive(Serialize, Deserialize)]
struct WireExt<'a> {
    #[serde(rename = "block size")]
    block_size: u64,
    #[serde(rename = "device size")]
    device_size: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    disk: Option<layout::WireDisk<'a>>,
    #[serde(borrow)]
    extents: ByteBuf<'a>,
    #[serde(borrow)]
    fs: ByteBuf<'a>,
    version: u64,
}

#[derive(Serialize, Deserialize)]
struct WireInfo<'a> {
    #[serde(borrow)]
    blockswarm: Option<WireExt<'a>>,
    length: u64,
    #[serde(borrow)]
    name: ByteBuf<'a>,
    #[serde(rename = "piece length")]
    piece_length: u64,
    #[serde(borrow)]
    pieces: ByteBuf<'a>,
}

#[derive(Deserialize)]
struct WireTorrentIn<'a> {
    #[serde(borrow, default)]
    announce: Option<ByteBuf<'a>>,
    #[serde(rename = "blockswarm source", borrow, default)]
    source: Option<ByteBuf<'a>>,
    #[serde(rename = "created by", borrow, default)]
    created_by: Option<ByteBuf<'a>>,
    #[serde(rename = "creation date", default)]
    creation_date: Option<u64>,
    #[serde(borrow)]
    info: WithRawBytes<WireInfo<'a>, ByteBuf<'a>>,
}

#[derive(Serialize)]
struct WireTorrentOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    announce: Option<ByteBuf<'a>>,
    #[serde(rename = "blockswarm source", skip_serializing_if = "Option::is_none")]
    source: Option<ByteBuf<'a>>,
    #[serde(rename = "created by", skip_serializing_if = "Option::is_none")]
    created_by: Option<ByteBuf<'a>>,
    #[serde(rename = "creation date", skip_serializing_if = "Option::is_none")]
    creation_date: Option<u64>,
    info: &'a WireInfo<'a>,
}

fn utf8(field: &'static str, b: &[u8]) -> Result<String, ManifestError> {
    String::from_utf8(b.to_vec()).map_err(|_| ManifestError::Utf8(field))
}

/// Checks that `name` is safe to use as a file name.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
        return Err(ManifestError::Name(name.to_string()));
    }
    Ok(())
}

/// The `auto` piece length for `used` bytes: ~1024 pieces, clamped to 256 KiB ..=
/// [`DEFAULT_PIECE_LENGTH`] (the imager's `--piece-size auto`; the simulator's default).
pub fn auto_piece_length(used: u64) -> u32 {
    (used / 1024)
        .next_power_of_two()
        .clamp(256 << 10, DEFAULT_PIECE_LENGTH as u64) as u32
}

/// Number of pieces for `length` bytes in pieces of `piece_length`.
pub fn piece_count(length: u64, piece_length: u32) -> u64 {
    length.div_ceil(piece_length as u64)
}

fn check_piece_length(p: u64) -> Result<u32, ManifestError> {
    if !p.is_power_of_two() || p < MIN_PIECE_LENGTH as u64 || p > MAX_PIECE_LENGTH as u64 {
        return Err(ManifestError::PieceLength(p));
    }
    Ok(p as u32)
}

impl Manifest {
    /// Total packed length (used bytes).
    pub fn total_length(&self) -> u64 {
        self.map.packed_len()
    }

    pub fn num_pieces(&self) -> u32 {
        self.piece_hashes.len() as u32
    }

    /// Packed byte range `(offset, length)` of piece `index`.
    pub fn piece_range(&self, index: u32) -> (u64, u64) {
        let off = index as u64 * self.piece_length as u64;
        let len = (self.total_length() - off).min(self.piece_length as u64);
        (off, len)
    }

    /// Smallest target this manifest can be written to: the source device's size, or for a
    /// whole disk the end of its last partition (and the backup GPT after it).
    pub fn min_target_size(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(self.map.device_size(), |d| d.min_size)
    }

    /// Length in bytes of piece `index`.
    pub fn piece_len(&self, index: u32) -> u32 {
        self.piece_range(index).1 as u32
    }

    /// Checks the invariants that decoding enforces; [`Manifest::encode`] calls it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name(&self.name)?;
        check_piece_length(self.piece_length as u64)?;
        if !self.block_size.is_power_of_two() || !(512..=1 << 20).contains(&self.block_size) {
            return Err(ManifestError::BlockSize(self.block_size));
        }
        let length = self.total_length();
        if length == 0 {
            return Err(ManifestError::Empty);
        }
        let want = piece_count(length, self.piece_length);
        if self.piece_hashes.len() as u64 != want {
            return Err(ManifestError::PieceCount {
                got: self.piece_hashes.len(),
                want,
                length,
                piece_length: self.piece_length as u64,
            });
        }
        if let Some(d) = &self.disk {
            let map_end = self.map.extents().last().map_or(0, Extent::end);
            d.validate(self.map.device_size(), map_end)?;
        }
        Ok(())
    }

    fn wire_info<'a>(&'a self, pieces: &'a [u8], extents: &'a [u8]) -> WireInfo<'a> {
        WireInfo {
            blockswarm: Some(WireExt {
                block_size: self.block_size,
                device_size: self.map.device_size(),
                disk: self.disk.as_ref().map(layout::WireDisk::from_layout),
                extents: ByteBuf(extents),
                fs: ByteBuf(self.fs_type.as_bytes()),
                version: FORMAT_VERSION,
            }),
            length: self.total_length(),
            name: ByteBuf(self.name.as_bytes()),
            piece_length: self.piece_length as u64,
            pieces: ByteBuf(pieces),
        }
    }

    fn flat_parts(&self) -> (Vec<u8>, Vec<u8>) {
        let pieces: Vec<u8> = self.piece_hashes.iter().flatten().copied().collect();
        let mut extents = Vec::with_capacity(self.map.len() * EXTENT_RECORD_LEN);
        for e in self.map.extents() {
            extents.extend_from_slice(&e.offset.to_be_bytes());
            extents.extend_from_slice(&e.length.to_be_bytes());
        }
        (pieces, extents)
    }

    /// The bencoded info dictionary (what the infohash is computed over).
    pub fn encode_info(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let (pieces, extents) = self.flat_parts();
        let mut out = Vec::new();
        librqbit_bencode::bencode_serialize_to_writer(self.wire_info(&pieces, &extents), &mut out)
            .map_err(|e| ManifestError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// SHA-1 of the bencoded info dictionary.
    pub fn info_hash(&self) -> Result<[u8; 20], ManifestError> {
        Ok(Sha1::digest(self.encode_info()?).into())
    }

    /// The whole `.torrent` file.
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let (pieces, extents) = self.flat_parts();
        let info = self.wire_info(&pieces, &extents);
        let t = WireTorrentOut {
            announce: self.announce.as_deref().map(|s| ByteBuf(s.as_bytes())),
            source: self.source.as_deref().map(|s| ByteBuf(s.as_bytes())),
            created_by: self.created_by.as_deref().map(|s| ByteBuf(s.as_bytes())),
            creation_date: self.creation_date,
            info: &info,
        };
        let mut out = Vec::new();
        librqbit_bencode::bencode_serialize_to_writer(&t, &mut out)
            .map_err(|e| ManifestError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// Parses and validates a `.torrent` produced by the imager.
    pub fn decode(bytes: &[u8]) -> Result<DecodedManifest, ManifestError> {
        bencode::check(bytes).map_err(|e| ManifestError::Bencode(e.to_string()))?;
        let t: WireTorrentIn<'_> = librqbit_bencode::from_bytes(bytes)
            .map_err(|e| ManifestError::Bencode(e.to_string()))?;
        let info_hash: [u8; 20] = Sha1::digest(t.info.raw_bytes.0).into();
        let info = t.info.data;
        let ext = info.blockswarm.ok_or(ManifestError::NotBlockswarm)?;
        if ext.version != FORMAT_VERSION {
            return Err(ManifestError::Version(ext.version));
        }
        let name = utf8("name", info.name.0)?;
        validate_name(&name)?;
        let piece_length = check_piece_length(info.piece_length)?;
        if !info.pieces.0.len().is_multiple_of(20) {
            return Err(ManifestError::PiecesLen(info.pieces.0.len()));
        }
        if ext.extents.0.len() % EXTENT_RECORD_LEN != 0 {
            return Err(ManifestError::ExtentsLen(ext.extents.0.len()));
        }
        let extents: Vec<Extent> = ext
            .extents
            .0
            .chunks_exact(EXTENT_RECORD_LEN)
            .map(|c| {
                Extent::new(
                    u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
                    u64::from_be_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        let map = ExtentMap::new(ext.device_size, extents)?;
        if map.packed_len() != info.length {
            return Err(ManifestError::LengthMismatch {
                extents: map.packed_len(),
                length: info.length,
            });
        }
        let piece_hashes = info
            .pieces
            .0
            .chunks_exact(20)
            .map(|c| c.try_into().expect("20 bytes"))
            .collect();
        let manifest = Manifest {
            name,
            piece_length,
            piece_hashes,
            fs_type: utf8("fs", ext.fs.0)?,
            block_size: ext.block_size,
            map: map.into(),
            disk: ext
                .disk
                .as_ref()
                .map(layout::WireDisk::to_layout)
                .transpose()?,
            announce: t.announce.map(|b| utf8("announce", b.0)).transpose()?,
            source: t
                .source
                .map(|b| utf8("blockswarm source", b.0))
                .transpose()?,
            created_by: t.created_by.map(|b| utf8("created by", b.0)).transpose()?,
            creation_date: t.creation_date,
        };
        manifest.validate()?;
        Ok(DecodedManifest {
            manifest,
            info_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let map = ExtentMap::new(
            10 << 20,
            vec![Extent::new(0, 1 << 20), Extent::new(3 << 20, 40000)],
        )
        .unwrap();
        let n = piece_count(map.packed_len(), MIN_PIECE_LENGTH) as usize;
        Manifest {
            name: "disk.img".into(),
            piece_length: MIN_PIECE_LENGTH,
            piece_hashes: (0..n).map(|i| [i as u8; 20]).collect(),
            fs_type: "ext4".into(),
            block_size: 4096,
            map: map.into(),
            disk: None,
            announce: Some("http://127.0.0.1:6880/announce".into()),
            source: Some("/dev/sda1".into()),
            created_by: Some("blockswarm test".into()),
            creation_date: Some(1_700_000_000),
        }
    }

    #[test]
    fn round_trip_is_identity_and_hash_matches_raw_info() {
        let m = sample();
        let bytes = m.encode().unwrap();
        let d = Manifest::decode(&bytes).unwrap();
        assert_eq!(d.manifest, m);
        assert_eq!(d.info_hash, m.info_hash().unwrap());
        assert_eq!(d.manifest.encode().unwrap(), bytes);
    }

    #[test]
    fn a_disk_layout_round_trips_and_is_protected_by_the_infohash() {
        let mut m = sample();
        m.map = ExtentMap::new(
            20 << 20,
            vec![Extent::new(0, 1 << 20), Extent::new(5 << 20, 40000)],
        )
        .unwrap()
        .into();
        m.disk = Some(layout::tests::gpt_layout());
        let bytes = m.encode().unwrap();
        let d = Manifest::decode(&bytes).unwrap();
        assert_eq!(d.manifest, m);
        assert_eq!(d.manifest.encode().unwrap(), bytes);
        assert_eq!(m.min_target_size(), (10 << 20) + 33 * 512);
        let plain = sample();
        assert_ne!(d.info_hash, plain.info_hash().unwrap());
        // A layout that does not fit the disk is refused on decode too.
        let needle = b"8:min sizei";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut bad = bytes.clone();
        bad[at + needle.len()] = b'9'; // 10 MiB+ -> 90 MiB+: beyond the 20 MiB disk
        assert!(matches!(
            Manifest::decode(&bad),
            Err(ManifestError::Layout(_))
        ));
    }

    #[test]
    fn piece_ranges_cover_the_packed_length() {
        let m = sample();
        let total: u64 = (0..m.num_pieces()).map(|i| m.piece_len(i) as u64).sum();
        assert_eq!(total, m.total_length());
        assert_eq!(
            m.piece_len(m.num_pieces() - 1) as u64,
            m.total_length() % MIN_PIECE_LENGTH as u64
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..cut]).is_err(),
                "truncated at {cut} decoded"
            );
        }
    }

    #[test]
    fn tampered_fields_are_rejected() {
        let mut m = sample();
        m.piece_hashes.pop();
        assert!(matches!(m.encode(), Err(ManifestError::PieceCount { .. })));
        let mut m = sample();
        m.name = "../etc".into();
        assert!(matches!(m.encode(), Err(ManifestError::Name(_))));
        let mut m = sample();
        m.piece_length = 1000;
        assert!(matches!(m.encode(), Err(ManifestError::PieceLength(_))));
    }

    #[test]
    fn decode_rejects_inconsistent_length_and_foreign_torrents() {
        let m = sample();
        let good = m.encode().unwrap();
        let needle = format!("6:lengthi{}e", m.total_length()).into_bytes();
        let at = good
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("length key present");
        let mut bad = good[..at].to_vec();
        bad.extend_from_slice(format!("6:lengthi{}e", m.total_length() + 1).as_bytes());
        bad.extend_from_slice(&good[at + needle.len()..]);
        assert!(matches!(
            Manifest::decode(&bad),
            Err(ManifestError::LengthMismatch { .. })
        ));
        let foreign =
            b"d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee";
        assert!(matches!(
            Manifest::decode(foreign),
            Err(ManifestError::NotBlockswarm)
        ));
    }
}
