//! Ordered parallel hashing: one reader thread walks the packed stream piece by piece with
//! large sequential reads, worker threads hash pieces in parallel, and the caller's thread
//! receives pieces back in order (for the sinks: `--save`, `--copy-to`). Memory is bounded by
//! a fixed pool of piece buffers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use blockswarm_manifest::{ExtentMap, PackedIoError};
use sha1::{Digest, Sha1};

use crate::ImagerError;

/// Receives every piece, in order, after it has been hashed.
pub trait Sink {
    /// `packed_offset` is the piece's offset in the packed stream.
    fn piece(&mut self, index: u32, packed_offset: u64, data: &[u8]) -> Result<(), ImagerError>;
    /// Called once after the last piece.
    fn finish(&mut self) -> Result<(), ImagerError> {
        Ok(())
    }
}

/// Reads the packed range `[packed_offset, packed_offset + buf.len())` of `src` into `buf`.
pub fn read_packed(
    src: &File,
    map: &ExtentMap,
    packed_offset: u64,
    buf: &mut [u8],
) -> Result<(), ImagerError> {
    map.read_packed(src, packed_offset, buf)
        .map_err(|e| match e {
            PackedIoError::Range(e) => ImagerError::Map(e),
            PackedIoError::Io {
                device_offset,
                length,
                source,
            } if source.kind() == io::ErrorKind::UnexpectedEof => ImagerError::Truncated {
                offset: device_offset + length,
            },
            PackedIoError::Io {
                device_offset,
                source,
                ..
            } => ImagerError::Read {
                offset: device_offset,
                source,
            },
        })
}

struct Job {
    index: u32,
    offset: u64,
    buf: Vec<u8>,
}

/// Hashes every piece of the packed stream of `src` described by `map`, feeding each piece in
/// order to `sinks`. `progress` is called with the bytes of each completed piece.
pub fn hash_pieces(
    src: &File,
    map: &ExtentMap,
    piece_length: u32,
    threads: usize,
    sinks: &mut [&mut dyn Sink],
    progress: &dyn Fn(u64),
) -> Result<Vec<[u8; 20]>, ImagerError> {
    let total = map.packed_len();
    let num_pieces = blockswarm_manifest::piece_count(total, piece_length) as u32;
    let threads = threads.max(1);
    // Buffers in circulation: enough for every worker to be busy while the reader fills the
    // next ones and the sinks drain finished ones.
    let pool_size = threads * 2 + 2;
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(pool_size);
    for _ in 0..pool_size.min(num_pieces.max(1) as usize) {
        pool_tx
            .send(Vec::with_capacity(piece_length as usize))
            .expect("pool has room");
    }
    let (work_tx, work_rx) = sync_channel::<Job>(pool_size);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = channel::<Result<(Job, [u8; 20]), ImagerError>>();

    let mut hashes = Vec::with_capacity(num_pieces as usize);
    std::thread::scope(|s| -> Result<(), ImagerError> {
        // Reader.
        let reader_done = done_tx.clone();
        s.spawn(move || {
            for index in 0..num_pieces {
                let Ok(mut buf) = pool_rx.recv() else { return };
                let offset = index as u64 * piece_length as u64;
                let len = (total - offset).min(piece_length as u64) as usize;
                buf.resize(len, 0);
                if let Err(e) = read_packed(src, map, offset, &mut buf) {
                    let _ = reader_done.send(Err(e));
                    return;
                }
                if work_tx.send(Job { index, offset, buf }).is_err() {
                    return;
                }
            }
        });
        // Hashers.
        for _ in 0..threads {
            let rx = Arc::clone(&work_rx);
            let tx = done_tx.clone();
            s.spawn(move || loop {
                let job = {
                    let guard = rx.lock().expect("work queue lock");
                    guard.recv()
                };
                let Ok(job) = job else { return };
                let digest: [u8; 20] = Sha1::digest(&job.buf).into();
                if tx.send(Ok((job, digest))).is_err() {
                    return;
                }
            });
        }
        // Only the hashers hold the work queue now: once they stop, a blocked reader wakes up.
        drop(work_rx);
        drop(done_tx);
        let result = collect_in_order(done_rx, num_pieces, sinks, &pool_tx, progress, &mut hashes);
        // Unblock the reader if we stop early: dropping the pool sender ends its recv loop.
        drop(pool_tx);
        result
    })?;
    for sink in sinks.iter_mut() {
        sink.finish()?;
    }
    Ok(hashes)
}

fn collect_in_order(
    done_rx: Receiver<Result<(Job, [u8; 20]), ImagerError>>,
    num_pieces: u32,
    sinks: &mut [&mut dyn Sink],
    pool_tx: &std::sync::mpsc::SyncSender<Vec<u8>>,
    progress: &dyn Fn(u64),
    hashes: &mut Vec<[u8; 20]>,
) -> Result<(), ImagerError> {
    let mut pending: BTreeMap<u32, (Job, [u8; 20])> = BTreeMap::new();
    let mut next = 0u32;
    while next < num_pieces {
        let Ok(msg) = done_rx.recv() else {
            return Err(ImagerError::Internal(
                "hashing threads stopped early".into(),
            ));
        };
        let (job, digest) = msg?;
        pending.insert(job.index, (job, digest));
        while let Some((job, digest)) = pending.remove(&next) {
            for sink in sinks.iter_mut() {
                sink.piece(job.index, job.offset, &job.buf)?;
            }
            progress(job.buf.len() as u64);
            hashes.push(digest);
            next += 1;
            // The reader may already be gone after the last piece; ignore that.
            let _ = pool_tx.try_send(job.buf);
        }
    }
    Ok(())
}

/// `--save DIR --compress`: writes the packed stream as a compressed image (`zimage`).
pub struct ZSaveSink {
    pub writer: Option<blockswarm_swarm::zimage::ZImageWriter>,
    pub path: std::path::PathBuf,
}

impl Sink for ZSaveSink {
    fn piece(&mut self, _index: u32, packed_offset: u64, data: &[u8]) -> Result<(), ImagerError> {
        let w = self.writer.as_mut().expect("not finished");
        w.push(data).map_err(|e| ImagerError::Write {
            path: self.path.clone(),
            offset: packed_offset,
            source: e,
        })
    }
    fn finish(&mut self) -> Result<(), ImagerError> {
        let w = self.writer.take().expect("finished once");
        w.finish().map_err(|e| ImagerError::Write {
            path: self.path.clone(),
            offset: 0,
            source: e,
        })
    }
}

/// `--save DIR`: writes the packed stream to one file.
pub struct SaveSink {
    pub file: File,
    pub path: std::path::PathBuf,
}

impl Sink for SaveSink {
    fn piece(&mut self, _index: u32, packed_offset: u64, data: &[u8]) -> Result<(), ImagerError> {
        self.file
            .write_all_at(data, packed_offset)
            .map_err(|e| ImagerError::Write {
                path: self.path.clone(),
                offset: packed_offset,
                source: e,
            })
    }
    fn finish(&mut self) -> Result<(), ImagerError> {
        self.file.sync_all().map_err(|e| ImagerError::Write {
            path: self.path.clone(),
            offset: 0,
            source: e,
        })
    }
}

/// `--copy-to TARGET`: writes each piece's bytes back at their device offsets on the target.
pub struct CopySink<'a> {
    pub file: File,
    pub path: std::path::PathBuf,
    pub map: &'a ExtentMap,
}

impl Sink for CopySink<'_> {
    fn piece(&mut self, _index: u32, packed_offset: u64, data: &[u8]) -> Result<(), ImagerError> {
        self.map
            .write_packed(&self.file, packed_offset, data)
            .map_err(|e| match e {
                PackedIoError::Range(e) => ImagerError::Map(e),
                PackedIoError::Io {
                    device_offset,
                    source,
                    ..
                } => ImagerError::Write {
                    path: self.path.clone(),
                    offset: device_offset,
                    source,
                },
            })
    }
    fn finish(&mut self) -> Result<(), ImagerError> {
        self.file.sync_all().map_err(|e| ImagerError::Write {
            path: self.path.clone(),
            offset: 0,
            source: e,
        })
    }
}
