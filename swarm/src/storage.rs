//! Where pieces live: the storage trait and its implementations. Offsets are in the packed
//! stream (the used runs concatenated); a [`DeviceStorage`] maps them onto the raw device
//! through the extent map in O(log runs), a [`PackedFileStorage`] is the packed file itself
//! (image mode).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockswarm_manifest::{ExtentMap, PackedIoError};

/// Random-access storage of the packed stream. Every read and write is complete or an error.
pub trait Storage: Send + Sync + 'static {
    /// Fills `buf` with the packed bytes starting at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at packed offset `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Flushes written data to stable storage.
    fn sync(&self) -> io::Result<()>;
    /// Drops the clean cached pages holding the packed range `offset..offset + len`, so the
    /// next reads of it come from the device rather than from memory (call after
    /// [`Storage::sync`]; dirty pages stay).
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Where packed offset `offset` lives, for messages ("device offset N of /dev/sda1").
    fn locate(&self, offset: u64) -> String {
        format!("packed offset {offset}")
    }
    /// The block at `offset` (`len` bytes) as this storage keeps it for `bs_zstd` peers, if
    /// it keeps blocks compressed (a compressed saved image, `zimage`); None: compress it.
    fn stored_form(&self, _offset: u64, _len: u32) -> Option<crate::zblock::Form> {
        None
    }
}

/// `posix_fadvise(DONTNEED)` on the pages covering `offset..offset + len` (rounded out to
/// whole pages: the kernel drops only pages wholly inside the range).
fn drop_cache(file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    let page = rustix::param::page_size() as u64;
    let start = offset / page * page;
    let end = (offset + len).div_ceil(page) * page;
    let Some(n) = std::num::NonZeroU64::new(end - start) else {
        return Ok(());
    };
    rustix::fs::fadvise(file, start, Some(n), rustix::fs::Advice::DontNeed).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "dropping the page cache of {} at byte {start}: {e}",
                path.display()
            ),
        )
    })
}

fn with_context(e: io::Error, what: &str, path: &Path, offset: u64) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{what} {} at byte {offset}: {e}", path.display()),
    )
}

/// A raw device (or partition image file) addressed through an extent map.
pub struct DeviceStorage {
    file: File,
    path: PathBuf,
    map: Arc<ExtentMap>,
}

impl DeviceStorage {
    /// `file` must be opened read-only (seeder) or read-write (receiver) by the caller, after
    /// its safety checks.
    pub fn new(file: File, path: PathBuf, map: Arc<ExtentMap>) -> Self {
        Self { file, path, map }
    }
}

impl DeviceStorage {
    fn context(&self, what: &str, e: PackedIoError) -> io::Error {
        match e {
            PackedIoError::Range(e) => io::Error::new(io::ErrorKind::InvalidInput, e),
            PackedIoError::Io {
                device_offset,
                source,
                ..
            } => with_context(source, what, &self.path, device_offset),
        }
    }
}

impl Storage for DeviceStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.map
            .read_packed(&self.file, offset, buf)
            .map_err(|e| self.context("read", e))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.map
            .write_packed(&self.file, offset, data)
            .map_err(|e| self.context("write", e))
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let segments = self
            .map
            .segments(offset, len)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        for s in segments {
            drop_cache(&self.file, &self.path, s.device_offset, s.length)?;
        }
        Ok(())
    }

    fn locate(&self, offset: u64) -> String {
        match self.map.segments(offset, 1).ok().and_then(|mut s| s.next()) {
            Some(s) => format!(
                "device offset {} of {}",
                s.device_offset,
                self.path.display()
            ),
            None => format!("packed offset {offset} (outside the map)"),
        }
    }
}

/// The packed stream stored as one file (what `imager --save` writes).
pub struct PackedFileStorage {
    file: File,
    path: PathBuf,
    len: u64,
}

impl PackedFileStorage {
    pub fn new(file: File, path: PathBuf, len: u64) -> Self {
        Self { file, path, len }
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        if offset.checked_add(len as u64).is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} beyond packed length {}", self.len),
            ));
        }
        Ok(())
    }
}

impl Storage for PackedFileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| with_context(e, "read", &self.path, offset))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| with_context(e, "write", &self.path, offset))
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len as usize)?;
        drop_cache(&self.file, &self.path, offset, len)
    }

    fn locate(&self, offset: u64) -> String {
        format!("offset {offset} of {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockswarm_manifest::Extent;

    #[test]
    fn device_storage_maps_packed_offsets_through_the_extent_map() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev");
        let dev: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &dev).unwrap();
        let map = Arc::new(
            ExtentMap::new(10_000, vec![Extent::new(100, 50), Extent::new(5000, 1000)]).unwrap(),
        );
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let s = DeviceStorage::new(f, p.clone(), map);
        let mut buf = vec![0u8; 100];
        s.read_at(20, &mut buf).unwrap();
        assert_eq!(&buf[..30], &dev[120..150]);
        assert_eq!(&buf[30..], &dev[5000..5070]);
        s.write_at(40, &[7u8; 20]).unwrap();
        let after = std::fs::read(&p).unwrap();
        assert_eq!(&after[140..150], &[7u8; 10]);
        assert_eq!(&after[5000..5010], &[7u8; 10]);
        assert_eq!(&after[150..5000], &dev[150..5000], "gap untouched");
        assert!(s.read_at(1040, &mut buf).is_err(), "past the packed end");
    }

    /// What `receiver --verify` relies on: after `drop_cache`, reads of a block device come
    /// from the device, not from data cached when it was written.
    #[test]
    fn drop_cache_makes_block_device_reads_come_from_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
        let Some(lo) = crate::test_support::LoopDevice::attach(&backing) else {
            return;
        };
        let dev = lo.path.clone();
        let map = Arc::new(ExtentMap::new(1 << 20, vec![Extent::new(4096, 8192)]).unwrap());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let s = DeviceStorage::new(f, dev.clone(), map);
        s.write_at(0, &[0xAB; 8192]).unwrap();
        s.sync().unwrap();
        // The disk goes bad under the device's cache: its backing file changes.
        let b = std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap();
        b.write_all_at(&[0xCD; 4096], 8192).unwrap();
        b.sync_all().unwrap();
        let mut buf = vec![0u8; 8192];
        s.read_at(0, &mut buf).unwrap();
        assert_eq!(
            buf[4096], 0xAB,
            "before drop_cache the cached block is read"
        );
        s.drop_cache(0, 8192).unwrap();
        s.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..4096], &[0xAB; 4096][..], "first block as written");
        assert_eq!(
            &buf[4096..],
            &[0xCD; 4096][..],
            "after drop_cache the device's own content is read"
        );
    }
}
