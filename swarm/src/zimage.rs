//! A compressed saved image (`imager --save DIR --compress`): the packed stream cut into
//! 16 KiB blocks, each stored as one zstd frame (or raw, when that does not save 1/32),
//! exactly the frames `bs_zstd` peers exchange. A seeder (`--image DIR`) serves it as it is:
//! frames go to blockswarm receivers unchanged; standard clients and the first-serve SHA-1
//! check get decompressed blocks.
//!
//! Layout of `NAME.bsz` (little-endian; documented in manifest/FORMAT.md):
//!
//! ```text
//! 0   8  magic "BSZIMG1\0"
//! 8   4  block size (16384)
//! 12  4  0
//! 16  8  packed length L (the manifest's total length)
//! 24  8  file offset of the index
//! 32  .. the blocks' data, in order
//! idx    (ceil(L / block) + 1) u64 entries: entry i = file offset of block i's data, with
//!        bit 63 set if it is a zstd frame; the last entry is the end of the data. Block i's
//!        stored length is entry i+1 - entry i (without bit 63).
//! ```

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::storage::Storage;
use crate::wire::BLOCK_SIZE;
use crate::zblock::{self, Form};

/// First bytes of a compressed image.
pub const MAGIC: &[u8; 8] = b"BSZIMG1\0";
const HEADER: u64 = 32;
const ZSTD_BIT: u64 = 1 << 63;

/// File name of the compressed image of packed file `name`.
pub fn file_name(name: &str) -> String {
    format!("{name}.bsz")
}

/// Writes a compressed image from the packed stream, in order.
pub struct ZImageWriter {
    file: File,
    path: PathBuf,
    pending: Vec<u8>,
    index: Vec<u64>,
    at: u64,
    length: u64,
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl ZImageWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path).map_err(|e| ctx(e, "creating", path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            pending: Vec::with_capacity(BLOCK_SIZE as usize),
            index: Vec::new(),
            at: HEADER,
            length: 0,
        })
    }

    fn put_block(&mut self, block: &[u8]) -> io::Result<()> {
        let frame = zblock::compress(block);
        let (entry, bytes) = match &frame {
            Some(f) => (self.at | ZSTD_BIT, &f[..]),
            None => (self.at, block),
        };
        self.index.push(entry);
        self.file
            .write_all_at(bytes, self.at)
            .map_err(|e| ctx(e, "writing", &self.path))?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// The next bytes of the packed stream.
    pub fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.length += data.len() as u64;
        while !data.is_empty() {
            let room = BLOCK_SIZE as usize - self.pending.len();
            let take = room.min(data.len());
            if self.pending.is_empty() && take == BLOCK_SIZE as usize {
                self.put_block(&data[..take])?;
            } else {
                self.pending.extend_from_slice(&data[..take]);
                if self.pending.len() == BLOCK_SIZE as usize {
                    let b = std::mem::take(&mut self.pending);
                    self.put_block(&b)?;
                    self.pending = b;
                    self.pending.clear();
                }
            }
            data = &data[take..];
        }
        Ok(())
    }

    /// Writes the last block, the index and the header; syncs.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let b = std::mem::take(&mut self.pending);
            self.put_block(&b)?;
        }
        self.index.push(self.at);
        let idx: Vec<u8> = self.index.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.file
            .write_all_at(&idx, self.at)
            .map_err(|e| ctx(e, "writing", &self.path))?;
        let mut h = Vec::with_capacity(HEADER as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&self.length.to_le_bytes());
        h.extend_from_slice(&self.at.to_le_bytes());
        self.file
            .write_all_at(&h, 0)
            .map_err(|e| ctx(e, "writing", &self.path))?;
        self.file
            .sync_all()
            .map_err(|e| ctx(e, "syncing", &self.path))
    }
}

/// A compressed image opened for seeding (read-only).
pub struct ZImageStorage {
    file: File,
    path: PathBuf,
    length: u64,
    /// Entry per block plus the end (see the module's layout).
    index: Vec<u64>,
}

fn bad(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not a valid compressed image: {why}", path.display()),
    )
}

impl ZImageStorage {
    /// Opens and checks `path`: header, and an index that is in order, inside the file,
    /// and whose raw blocks have exactly their length (frames at most a block's).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| ctx(e, "opening", path))?;
        let size = file.metadata()?.len();
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| bad(path, "shorter than its header".into()))?;
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8"));
        if &h[..8] != MAGIC || u32_at(8) != BLOCK_SIZE {
            return Err(bad(path, "wrong magic or block size".into()));
        }
        let (length, idx_at) = (u64_at(16), u64_at(24));
        let blocks = length.div_ceil(BLOCK_SIZE as u64);
        let idx_len = (blocks + 1) * 8;
        if idx_at < HEADER || idx_at.checked_add(idx_len) != Some(size) {
            return Err(bad(
                path,
                format!("index at {idx_at} does not end the file"),
            ));
        }
        let mut raw = vec![0u8; idx_len as usize];
        file.read_exact_at(&mut raw, idx_at)?;
        let index: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let mut prev = HEADER;
        for (i, &e) in index.iter().enumerate() {
            let start = e & !ZSTD_BIT;
            if start != prev {
                return Err(bad(
                    path,
                    format!("block {i} is not where the last one ended"),
                ));
            }
            if i as u64 == blocks {
                if start != idx_at || e & ZSTD_BIT != 0 {
                    return Err(bad(path, "the data does not end at the index".into()));
                }
                break;
            }
            let end = index[i + 1] & !ZSTD_BIT;
            if end < start {
                return Err(bad(path, format!("block {i} ends before it starts")));
            }
            let want = (length - i as u64 * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64);
            let stored = end - start;
            if (e & ZSTD_BIT == 0 && stored != want) || stored > want {
                return Err(bad(
                    path,
                    format!("block {i} has {stored} bytes for {want}"),
                ));
            }
            prev = end;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            length,
            index,
        })
    }

    /// The packed length it holds.
    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Block `b` as stored: its bytes and whether they are a zstd frame.
    fn stored(&self, b: usize) -> io::Result<(Vec<u8>, bool)> {
        let (e, next) = (self.index[b], self.index[b + 1]);
        let start = e & !ZSTD_BIT;
        let mut v = vec![0u8; ((next & !ZSTD_BIT) - start) as usize];
        self.file
            .read_exact_at(&mut v, start)
            .map_err(|e| ctx(e, "reading", &self.path))?;
        Ok((v, e & ZSTD_BIT != 0))
    }

    fn block_len(&self, b: usize) -> usize {
        (self.length - b as u64 * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64) as usize
    }
}

impl Storage for ZImageStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of {}", self.path.display()),
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let b = (at / BLOCK_SIZE as u64) as usize;
            let within = (at % BLOCK_SIZE as u64) as usize;
            let (bytes, z) = self.stored(b)?;
            let raw = if z {
                zblock::decompress(&bytes, self.block_len(b))
                    .map_err(|e| bad(&self.path, format!("block {b} does not decompress: {e}")))?
            } else {
                bytes
            };
            let n = (raw.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&raw[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is a read-only compressed image", self.path.display()),
        ))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn drop_cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn locate(&self, offset: u64) -> String {
        format!("packed offset {offset} of {}", self.path.display())
    }

    fn stored_form(&self, offset: u64, len: u32) -> Option<Form> {
        if !offset.is_multiple_of(BLOCK_SIZE as u64) {
            return None;
        }
        let b = (offset / BLOCK_SIZE as u64) as usize;
        if b + 1 >= self.index.len() || self.block_len(b) != len as usize {
            return None;
        }
        let (bytes, z) = self.stored(b).ok()?;
        Some(if z {
            Form::Zstd(bytes.into())
        } else {
            Form::Raw
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn stream(len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut v = vec![0u8; len];
        // Thirds: text-like, zeros, random.
        for (i, b) in v.iter_mut().enumerate() {
            *b = match (i / 60000) % 3 {
                0 => b"blockswarm "[i % 11],
                1 => 0,
                _ => rng.gen(),
            };
        }
        v
    }

    #[test]
    fn round_trips_in_any_chunking_and_serves_frames() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bsz");
        let data = stream(300_000); // 18 full blocks and a short one
        let mut w = ZImageWriter::create(&p).unwrap();
        for c in data.chunks(7777) {
            w.push(c).unwrap();
        }
        w.finish().unwrap();
        let s = ZImageStorage::open(&p).unwrap();
        assert_eq!(s.len(), data.len() as u64);
        assert!(std::fs::metadata(&p).unwrap().len() < data.len() as u64 * 3 / 4);
        for (off, len) in [(0, 300_000), (5, 16384), (16380, 40000), (299_990, 10)] {
            let mut buf = vec![0u8; len];
            s.read_at(off, &mut buf).unwrap();
            assert_eq!(buf, data[off as usize..off as usize + len]);
        }
        assert!(s.read_at(299_995, &mut [0u8; 10]).is_err());
        // Block 0 is text: a frame that decompresses to it; a random block is raw.
        let Some(Form::Zstd(f)) = s.stored_form(0, 16384) else {
            panic!("block 0 not a frame")
        };
        assert_eq!(zstd::bulk::decompress(&f, 16384).unwrap(), data[..16384]);
        assert_eq!(s.stored_form(16384 * 8, 16384), Some(Form::Raw));
        assert_eq!(s.stored_form(1, 16384), None, "not a block start");
        assert_eq!(
            s.stored_form(16384 * 18, 16384),
            None,
            "last block is short"
        );
        assert!(s
            .stored_form(16384 * 18, (300_000 - 16384 * 18) as u32)
            .is_some());
        assert!(s.write_at(0, b"x").is_err());
    }

    #[test]
    fn a_damaged_image_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bsz");
        let mut w = ZImageWriter::create(&p).unwrap();
        w.push(&stream(100_000)).unwrap();
        w.finish().unwrap();
        let good = std::fs::read(&p).unwrap();
        let try_with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            std::fs::write(&p, &b).unwrap();
            ZImageStorage::open(&p).map(|_| ())
        };
        assert!(try_with(&|_| {}).is_ok());
        assert!(try_with(&|b| b[0] = b'X').is_err(), "magic");
        assert!(try_with(&|b| b.truncate(b.len() - 1)).is_err(), "truncated");
        assert!(try_with(&|b| b[18] ^= 1).is_err(), "length");
        let idx = u64::from_le_bytes(good[24..32].try_into().unwrap()) as usize;
        // An entry moved by a byte: two frames cut wrong. Open may not see it (lengths
        // still fit), but reading them does (and a seeder's first-serve SHA-1 check would).
        let mut moved = good.clone();
        moved[idx + 8] ^= 1;
        std::fs::write(&p, &moved).unwrap();
        if let Ok(s) = ZImageStorage::open(&p) {
            assert!(
                s.read_at(0, &mut vec![0u8; 100_000]).is_err(),
                "index entry"
            );
        }
        // A raw block claimed to be a frame of the wrong size, or vice versa.
        assert!(
            try_with(&|b| b[idx + 8 * 6 + 7] ^= 0x80).is_err(),
            "kind bit"
        );
    }
}
