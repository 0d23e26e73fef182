//! Piece checks against the target: the resume scan's and `--verify`'s.

use std::sync::Arc;

use blockswarm_manifest::Manifest;
use blockswarm_swarm::Storage;
use sha1::{Digest, Sha1};

/// True if piece `i` as read from `storage` has the manifest's hash.
pub(crate) fn piece_ok(
    storage: &dyn Storage,
    m: &Manifest,
    i: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let (off, len) = m.piece_range(i);
    buf.resize(len as usize, 0);
    storage.read_at(off, buf)?;
    Ok(<[u8; 20]>::from(Sha1::digest(&buf[..])) == m.piece_hashes[i as usize])
}

/// `--verify`: re-reads pieces from the device itself and re-hashes them. During the
/// download it works in passes: fdatasync the target, then for every piece written since the
/// last pass drop its cached pages and read it back. So the final check after the last
/// flush covers only the pieces of the last few seconds instead of the whole target.
pub(crate) struct Verifier {
    storage: Arc<dyn Storage>,
    m: Arc<Manifest>,
    pub(crate) checked: Vec<bool>,
    pub(crate) bad: Vec<u32>,
    buf: Vec<u8>,
}

/// Bytes of unchecked pieces that start a pass during the download.
pub(crate) const VERIFY_BATCH: u64 = 32 << 20;

impl Verifier {
    pub(crate) fn new(storage: Arc<dyn Storage>, m: Arc<Manifest>) -> Self {
        let n = m.num_pieces() as usize;
        Self {
            storage,
            m,
            checked: vec![false; n],
            bad: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Bytes of pieces in `have` not checked yet.
    pub(crate) fn pending(&self, have: &[bool]) -> u64 {
        (0..self.checked.len())
            .filter(|&i| have[i] && !self.checked[i])
            .map(|i| self.m.piece_range(i as u32).1)
            .sum()
    }

    /// Flushes the target, then checks every piece in `have` not checked yet against the
    /// device. A piece that does not match is recorded in `bad`.
    pub(crate) fn pass(&mut self, have: &[bool]) -> std::io::Result<()> {
        self.storage.sync()?;
        for (i, (&has, checked)) in have.iter().zip(self.checked.iter_mut()).enumerate() {
            if !has || *checked {
                continue;
            }
            let (off, len) = self.m.piece_range(i as u32);
            self.storage.drop_cache(off, len)?;
            if !piece_ok(&*self.storage, &self.m, i as u32, &mut self.buf)? {
                self.bad.push(i as u32);
            }
            *checked = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockswarm_manifest::{Extent, ExtentMap};
    use blockswarm_swarm::DeviceStorage;
    use std::os::unix::fs::FileExt;

    /// The verifier reads the device: a loop device whose backing file goes bad after the
    /// pieces were written and flushed (its page cache still holding the good data) fails
    /// exactly the corrupted piece, and pieces checked in an earlier pass are not re-read.
    #[test]
    fn verifier_checks_pieces_against_the_device_in_passes() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
        let Some(lo) = blockswarm_swarm::test_support::LoopDevice::attach(&backing) else {
            return;
        };
        let dev = lo.path.clone();
        let piece = 16384u32;
        let data: Vec<u8> = (0..4 * piece).map(|i| (i % 253) as u8).collect();
        let map = ExtentMap::new(1 << 20, vec![Extent::new(8192, 4 * piece as u64)]).unwrap();
        let m = Arc::new(Manifest {
            name: "t".into(),
            piece_length: piece,
            piece_hashes: data
                .chunks(piece as usize)
                .map(|c| Sha1::digest(c).into())
                .collect(),
            fs_type: "dd".into(),
            block_size: 4096,
            map: Arc::new(map),
            disk: None,
            announce: None,
            source: None,
            created_by: None,
            creation_date: None,
        });
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let storage: Arc<dyn Storage> = Arc::new(DeviceStorage::new(f, dev.clone(), m.map.clone()));
        let mut v = Verifier::new(storage.clone(), m.clone());
        storage.write_at(0, &data[..2 * piece as usize]).unwrap();
        let have = [true, true, false, false];
        assert_eq!(v.pending(&have), 2 * piece as u64);
        v.pass(&have).unwrap();
        assert!(v.bad.is_empty());
        assert_eq!(v.pending(&have), 0);
        storage
            .write_at(2 * piece as u64, &data[2 * piece as usize..])
            .unwrap();
        storage.sync().unwrap();
        // Pieces 0 and 3 go bad on the "disk" (device offset 8192 + piece offset).
        let b = std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap();
        for p in [0u64, 3] {
            b.write_all_at(&[0xEE; 100], 8192 + p * piece as u64 + 50)
                .unwrap();
        }
        b.sync_all().unwrap();
        v.pass(&[true; 4]).unwrap();
        assert_eq!(
            v.bad,
            vec![3],
            "piece 3 read from the device; piece 0 not re-read"
        );
    }
}
