//! Target writes that fail are named: the piece, its device offset and the OS error.
//!
//! A write to a block device lands in the page cache and succeeds; a device that cannot store
//! it (a failing disk, a loop device over a full filesystem) reports EIO only when the data is
//! flushed. So the receiver flushes the target every [`FLUSH_EVERY`] bytes written, and when a
//! flush fails it reads back the pieces written since the last good flush (their cached pages
//! dropped, so the reads come from the device) to name the ones that did not reach it. A
//! write that fails at once (ENOSPC on a file target) is named with its piece directly.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use blockswarm_manifest::Manifest;
use blockswarm_swarm::Storage;

use crate::verify::piece_ok;

/// Bytes written between two flushes of the target.
pub(crate) const FLUSH_EVERY: u64 = 32 << 20;

/// Pieces written since the last good flush (a pure account: no I/O).
#[derive(Debug, Default)]
pub(crate) struct Window {
    bytes: u64,
    pieces: Vec<u32>,
}

impl Window {
    /// Records a write of `len` bytes of piece `piece`; true when a flush is due.
    pub(crate) fn add(&mut self, piece: u32, len: u64) -> bool {
        self.bytes += len;
        if self.pieces.last() != Some(&piece) {
            self.pieces.push(piece);
        }
        self.bytes >= FLUSH_EVERY
    }

    /// The pieces to flush, the window starting again empty.
    pub(crate) fn take(&mut self) -> Vec<u32> {
        self.bytes = 0;
        let mut p = std::mem::take(&mut self.pieces);
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// The device byte offset where packed offset `off` lands.
fn device_offset(m: &Manifest, off: u64) -> u64 {
    m.map
        .segments(off, 1)
        .ok()
        .and_then(|mut s| s.next())
        .map_or(0, |s| s.device_offset)
}

/// Wraps the target's storage: flushes it periodically and names what failed.
pub(crate) struct FlushingStorage {
    inner: Arc<dyn Storage>,
    m: Arc<Manifest>,
    path: PathBuf,
    window: Mutex<Window>,
    /// The first failure: every later write or flush reports it again.
    failed: Mutex<Option<String>>,
}

impl FlushingStorage {
    pub(crate) fn new(inner: Arc<dyn Storage>, m: Arc<Manifest>, path: PathBuf) -> Self {
        Self {
            inner,
            m,
            path,
            window: Default::default(),
            failed: Default::default(),
        }
    }

    fn fail(&self, msg: String, kind: io::ErrorKind) -> io::Error {
        let mut f = self.failed.lock().expect("flush lock");
        let msg = f.get_or_insert(msg).clone();
        io::Error::new(kind, msg)
    }

    fn failed_before(&self) -> Option<io::Error> {
        self.failed
            .lock()
            .expect("flush lock")
            .clone()
            .map(io::Error::other)
    }

    /// Flushes; on failure names the first of `pieces` that is not on the device.
    fn flush(&self, pieces: &[u32]) -> io::Result<()> {
        let Err(e) = self.inner.sync() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let mut bad = Vec::new();
        for &i in pieces {
            let (off, len) = self.m.piece_range(i);
            let ok = self.inner.drop_cache(off, len).is_ok()
                && piece_ok(&*self.inner, &self.m, i, &mut buf).unwrap_or(false);
            if !ok {
                bad.push(i);
            }
        }
        let msg = match bad.first() {
            // The OS error early: the seeder keeps the first 200 bytes of a report.
            Some(&first) => format!(
                "{}: piece {first} at device byte {} not stored: {e} ({} of {} pieces written since the last flush are not on the device)",
                self.path.display(),
                device_offset(&self.m, self.m.piece_range(first).0),
                bad.len(),
                pieces.len(),
            ),
            None => {
                let (lo, hi) = match (pieces.first(), pieces.last()) {
                    (Some(&a), Some(&b)) => {
                        let (off, len) = self.m.piece_range(b);
                        (
                            device_offset(&self.m, self.m.piece_range(a).0),
                            device_offset(&self.m, off + len - 1) + 1,
                        )
                    }
                    _ => (0, 0),
                };
                format!(
                    "{}: flush failed: {e} (data written between device bytes {lo} and {hi})",
                    self.path.display()
                )
            }
        };
        Err(self.fail(msg, e.kind()))
    }
}

impl Storage for FlushingStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(e) = self.failed_before() {
            return Err(e);
        }
        let piece = (offset / self.m.piece_length as u64) as u32;
        // The inner error names the device byte and the OS error.
        if let Err(e) = self.inner.write_at(offset, data) {
            return Err(self.fail(format!("piece {piece}: {e}"), e.kind()));
        }
        let due = self
            .window
            .lock()
            .expect("flush lock")
            .add(piece, data.len() as u64);
        if due {
            let pieces = self.window.lock().expect("flush lock").take();
            self.flush(&pieces)?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if let Some(e) = self.failed_before() {
            return Err(e);
        }
        let pieces = self.window.lock().expect("flush lock").take();
        self.flush(&pieces)
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.drop_cache(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_due_after_flush_every_bytes_and_lists_each_piece_once() {
        let mut w = Window::default();
        let piece = 4u64 << 20;
        for i in 0..7 {
            assert!(!w.add(i, piece), "{i}");
        }
        assert!(w.add(7, piece));
        // Two writes of one piece (two extents) count once.
        w.add(7, 1);
        assert_eq!(w.take(), (0..8).collect::<Vec<_>>());
        assert!(w.take().is_empty());
        assert!(!w.add(3, 1));
    }
}
