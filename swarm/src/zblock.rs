//! Compressed blocks between blockswarm peers: the `bs_zstd` extension (BEP 10).
//!
//! Two blockswarm peers both set the extension-protocol bit of the handshake and name
//! `bs_zstd` in their extended handshake's `m` dictionary. A block requested by such a peer
//! may then travel as an extended message instead of a `piece`:
//!
//! ```text
//! <len u32> 20 <peer's id for bs_zstd u8> <index u32> <begin u32> <raw length u32> <zstd frame>
//! ```
//!
//! The frame is one zstd frame of exactly the requested block (16 KiB, fixed offsets: every
//! peer asks for the same blocks, so a frame received can be forwarded as it is). It is sent
//! only when it saves at least 1/32 of the block; otherwise the block goes as a plain
//! `piece`. Standard clients never see these messages: they do not name `bs_zstd`.
//!
//! Nothing here trusts the sender: the raw length is checked against what was requested
//! before anything is decompressed, decompression stops at that length, and a frame that
//! does not decompress to exactly it is a protocol violation (the peer is cut off). A piece
//! is still verified by the SHA-1 of its decompressed bytes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The extension's name in the extended handshake.
pub const EXT_NAME: &str = "bs_zstd";
/// The id we ask peers to use for `bs_zstd` messages sent to us.
pub const OUR_ID: u8 = 1;
/// Extended message id of the extended handshake (BEP 10).
pub const HANDSHAKE_ID: u8 = 0;
/// zstd level of the blocks this node compresses.
pub const LEVEL: i32 = 3;
/// Largest raw block a compressed frame may stand for (the largest request we serve).
pub const MAX_RAW: u32 = crate::wire::MAX_REQUEST;

/// Why a compressed block was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZError {
    #[error("compressed block message of {0} bytes is too short")]
    Short(usize),
    #[error("compressed block claims {0} raw bytes (at most {MAX_RAW})")]
    TooLarge(u32),
    #[error("compressed block does not decompress to its {0} bytes: {1}")]
    Frame(u32, String),
}

/// The payload of our extended handshake: `d1:md7:bs_zstdi1ee1:v..e`.
pub fn handshake_payload(version: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Hs<'a> {
        m: BTreeMap<&'a str, u8>,
        v: &'a str,
    }
    let mut m = BTreeMap::new();
    m.insert(EXT_NAME, OUR_ID);
    let mut out = Vec::new();
    librqbit_bencode::bencode_serialize_to_writer(Hs { m, v: version }, &mut out)
        .expect("bencode of a small dict");
    out
}

/// The id a peer asks us to use for `bs_zstd`, from its extended handshake (None: it does
/// not speak it, or the handshake is not one we understand; either way, plain BitTorrent).
pub fn peer_id_for_zstd(payload: &[u8]) -> Option<u8> {
    #[derive(Deserialize)]
    struct Hs {
        #[serde(default)]
        m: BTreeMap<String, i64>,
    }
    blockswarm_manifest::bencode::check(payload).ok()?;
    let hs: Hs = librqbit_bencode::from_bytes(payload).ok()?;
    // BEP 10: 0 disables an extension.
    hs.m.get(EXT_NAME)
        .and_then(|&id| u8::try_from(id).ok())
        .filter(|&id| id != 0)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `raw` as a zstd frame, if that saves at least 1/32 of it (None: send it raw).
pub fn compress(raw: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(LEVEL).ok()?);
        }
        let frame = c.as_mut()?.compress(raw).ok()?;
        (frame.len() + 4 <= raw.len() - raw.len() / 32).then(|| Bytes::from(frame))
    })
}

/// `frame` decompressed, which must give exactly `len` bytes: decompression stops there
/// (a frame holding more is refused without being expanded).
pub fn decompress(frame: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let data = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        d.as_mut()
            .expect("set")
            .decompress(frame, len)
            .map_err(|e| e.to_string())
    })?;
    if data.len() != len {
        return Err(format!("got {} bytes", data.len()));
    }
    Ok(data)
}

/// A compressed block as received: `index`, `begin`, the decompressed bytes and the frame.
#[derive(Debug)]
pub struct ZPiece {
    pub index: u32,
    pub begin: u32,
    pub data: Vec<u8>,
    pub frame: Bytes,
}

/// Decodes the payload of a `bs_zstd` message (after the extended id byte). Decompression
/// writes at most the raw length it claims, itself at most [`MAX_RAW`].
pub fn decode(payload: &[u8]) -> Result<ZPiece, ZError> {
    if payload.len() < 13 {
        return Err(ZError::Short(payload.len()));
    }
    let word = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
    let (index, begin, raw_len) = (word(0), word(4), word(8));
    if raw_len > MAX_RAW || raw_len == 0 {
        return Err(ZError::TooLarge(raw_len));
    }
    let frame = &payload[12..];
    let data = decompress(frame, raw_len as usize).map_err(|e| ZError::Frame(raw_len, e))?;
    Ok(ZPiece {
        index,
        begin,
        data,
        frame: Bytes::copy_from_slice(frame),
    })
}

/// The header of a `bs_zstd` message carrying `frame` (the frame itself follows).
pub fn header(peer_ext_id: u8, index: u32, begin: u32, raw_len: u32, frame_len: usize) -> [u8; 18] {
    let mut h = [0u8; 18];
    h[0..4].copy_from_slice(&(14 + frame_len as u32).to_be_bytes());
    h[4] = 20;
    h[5] = peer_ext_id;
    h[6..10].copy_from_slice(&index.to_be_bytes());
    h[10..14].copy_from_slice(&begin.to_be_bytes());
    h[14..18].copy_from_slice(&raw_len.to_be_bytes());
    h
}

/// How a block is best sent to a `bs_zstd` peer, as far as this node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// It does not compress (sent as a plain `piece`).
    Raw,
    /// This frame.
    Zstd(Bytes),
}

impl Form {
    fn cost(&self) -> usize {
        64 + match self {
            Form::Raw => 0,
            Form::Zstd(b) => b.len(),
        }
    }
}

/// Blocks' forms of verified pieces, kept within a byte budget: the oldest piece goes first.
/// A receiver keeps the frames it received (forwarded as they are, no recompression); a
/// seeder keeps what it compressed once.
#[derive(Debug)]
pub struct FormCache {
    budget: usize,
    bytes: usize,
    forms: HashMap<(u32, u32), Form>,
    /// Insertion order, for eviction.
    order: VecDeque<(u32, u32)>,
}

impl FormCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            forms: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The known form of block `(index, begin)`.
    pub fn get(&self, index: u32, begin: u32) -> Option<&Form> {
        self.forms.get(&(index, begin))
    }

    /// Remembers `form` for a block of a verified piece, evicting the oldest as needed.
    pub fn insert(&mut self, index: u32, begin: u32, form: Form) {
        let cost = form.cost();
        if cost > self.budget {
            return;
        }
        if let Some(old) = self.forms.insert((index, begin), form) {
            self.bytes -= old.cost();
        } else {
            self.order.push_back((index, begin));
        }
        self.bytes += cost;
        while self.bytes > self.budget {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(f) = self.forms.remove(&k) {
                self.bytes -= f.cost();
            }
        }
    }

    /// Bytes held (frames plus a fixed overhead per block).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.forms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }
}

/// Figures of compressed traffic, for `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ZStats {
    /// Blocks sent as zstd frames, their raw bytes and the frames' bytes.
    pub sent_blocks: u64,
    pub sent_raw_bytes: u64,
    pub sent_frame_bytes: u64,
    /// Blocks received as zstd frames, their raw bytes and the frames' bytes.
    pub received_blocks: u64,
    pub received_raw_bytes: u64,
    pub received_frame_bytes: u64,
    /// Blocks this node compressed (the others it sent were forwarded as received).
    pub compressed_here: u64,
    /// Blocks found not to compress (sent raw to `bs_zstd` peers).
    pub raw_blocks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u32, begin: u32, raw_len: u32, frame: &[u8]) -> Vec<u8> {
        let h = header(7, index, begin, raw_len, frame.len());
        let mut p = h[6..].to_vec();
        p.extend_from_slice(frame);
        p
    }

    #[test]
    fn handshake_round_trip_and_strangers() {
        let p = handshake_payload("blockswarm 0.1");
        assert_eq!(peer_id_for_zstd(&p), Some(OUR_ID));
        // libtorrent-style handshake with other extensions and non-int values elsewhere.
        let lt = b"d1:md11:ut_metadatai2e6:ut_pexi1ee1:pi6881e4:reqqi500e1:v13:libtorrent 2.0e";
        assert_eq!(peer_id_for_zstd(lt), None);
        let ours_too = b"d1:md7:bs_zstdi9e6:ut_pexi1ee1:v1:xe";
        assert_eq!(peer_id_for_zstd(ours_too), Some(9));
        // Disabled (0), out of range, garbage: plain BitTorrent.
        assert_eq!(peer_id_for_zstd(b"d1:md7:bs_zstdi0eee"), None);
        assert_eq!(peer_id_for_zstd(b"d1:md7:bs_zstdi300eee"), None);
        assert_eq!(peer_id_for_zstd(b"garbage"), None);
        assert_eq!(peer_id_for_zstd(b""), None);
    }

    #[test]
    fn numbers_too_long_for_a_machine_word_are_refused_not_a_panic() {
        // Found by the fuzzer (tracker_reply): the bencode parser reads lengths and
        // integers with `atoi`, which overflows on 20 digits or more.
        assert_eq!(
            peer_id_for_zstd(b"d1:md7:bs_zstdi99999999999999999999999999eee"),
            None
        );
        assert_eq!(peer_id_for_zstd(b"d99999999999999999999999999:mee"), None);
    }

    #[test]
    fn compressible_blocks_round_trip_and_random_ones_stay_raw() {
        let zeros = vec![0u8; 16384];
        let f = compress(&zeros).expect("zeros compress");
        assert!(
            f.len() < 64,
            "an all-zero block costs almost nothing: {}",
            f.len()
        );
        let z = decode(&payload(3, 16384, 16384, &f)).unwrap();
        assert_eq!((z.index, z.begin, z.data), (3, 16384, zeros));
        assert_eq!(z.frame, f);

        let mut noise = vec![0u8; 16384];
        rand::Rng::fill(&mut rand::thread_rng(), &mut noise[..]);
        assert_eq!(compress(&noise), None, "random data is not expanded");
    }

    #[test]
    fn lying_frames_are_refused() {
        let text: Vec<u8> = (0..16384u32)
            .map(|i| b"abcdefgh"[(i % 8) as usize])
            .collect();
        let f = compress(&text).unwrap();
        // Claims fewer bytes than the frame holds: decompression stops, refused.
        assert!(matches!(
            decode(&payload(0, 0, 100, &f)),
            Err(ZError::Frame(100, _))
        ));
        // Claims more than the frame holds.
        assert!(matches!(
            decode(&payload(0, 0, 16385, &f)),
            Err(ZError::Frame(..))
        ));
        // Beyond the largest block: refused before decompressing (a bomb costs nothing).
        assert_eq!(
            decode(&payload(0, 0, MAX_RAW + 1, &f)).unwrap_err(),
            ZError::TooLarge(MAX_RAW + 1)
        );
        assert_eq!(
            decode(&payload(0, 0, 0, &f)).unwrap_err(),
            ZError::TooLarge(0)
        );
        assert!(matches!(
            decode(&payload(0, 0, 16384, b"not zstd")),
            Err(ZError::Frame(..))
        ));
        assert_eq!(decode(&[0u8; 12]).unwrap_err(), ZError::Short(12));
        // A frame of 16 MiB of zeros claimed as 16 KiB: stops at 16 KiB, refused.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 24], 1).unwrap();
        assert!(matches!(
            decode(&payload(0, 0, 16384, &bomb)),
            Err(ZError::Frame(..))
        ));
    }

    #[test]
    fn cache_keeps_within_budget_oldest_first() {
        let frame = Bytes::from(vec![1u8; 936]); // cost 1000 with the overhead
        let mut c = FormCache::new(3000);
        c.insert(0, 0, Form::Zstd(frame.clone()));
        c.insert(0, 16384, Form::Raw);
        c.insert(1, 0, Form::Zstd(frame.clone()));
        assert_eq!(c.bytes(), 2064);
        c.insert(2, 0, Form::Zstd(frame.clone()));
        assert!(c.bytes() <= 3000);
        assert_eq!(c.get(0, 0), None, "oldest evicted");
        assert_eq!(c.get(2, 0), Some(&Form::Zstd(frame.clone())));
        // Replacing an entry does not count it twice.
        c.insert(2, 0, Form::Raw);
        assert_eq!(c.get(2, 0), Some(&Form::Raw));
        assert!(c.bytes() <= 3000);
        // An entry larger than the budget is not kept.
        let mut small = FormCache::new(10);
        small.insert(0, 0, Form::Raw);
        assert!(small.is_empty());
    }
}
