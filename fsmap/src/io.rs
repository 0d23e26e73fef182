// SPDX-License-Identifier: GPL-2.0-or-later
//! Bounds-checked reading helpers shared by the parsers.

use std::io::{ErrorKind, Read, Seek, SeekFrom};

use crate::FsError;

/// A reader with a known size: every read is checked against the size
/// before it is issued, and a reader that ends early is reported as
/// truncation.
pub(crate) struct Dev<'a, R> {
    inner: &'a mut R,
    /// Usable size: the caller's device size, or less when the reader ends
    /// before it.
    size: u64,
    /// The caller's device size when the reader is shorter.
    claimed: Option<u64>,
    fs: &'static str,
}

impl<'a, R: Read + Seek> Dev<'a, R> {
    /// Wrap `inner`, whose size the caller says is `size`. When the reader
    /// itself ends earlier (a truncated image), its end is the limit.
    pub(crate) fn new(inner: &'a mut R, size: u64, fs: &'static str) -> Self {
        let real_end = inner.seek(SeekFrom::End(0)).ok();
        match real_end {
            Some(end) if end < size => Dev {
                inner,
                size: end,
                claimed: Some(size),
                fs,
            },
            _ => Dev {
                inner,
                size,
                claimed: None,
                fs,
            },
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The error for a read of `len` bytes at `off` past the end.
    pub(crate) fn truncated(&self, what: &str, off: u64, len: u64) -> FsError {
        let what = match self.claimed {
            Some(c) => format!(
                "{what} (the reader ended at byte {}, before the given device size {c})",
                self.size
            ),
            None => what.to_string(),
        };
        FsError::Truncated {
            fs: self.fs,
            what,
            offset: off,
            len,
            device_size: self.size,
        }
    }

    /// Fill `buf` from byte offset `off`.
    pub(crate) fn read_at(&mut self, off: u64, buf: &mut [u8], what: &str) -> Result<(), FsError> {
        let len = buf.len() as u64;
        let fits = off.checked_add(len).is_some_and(|end| end <= self.size);
        if !fits {
            return Err(self.truncated(what, off, len));
        }
        self.inner
            .seek(SeekFrom::Start(off))
            .map_err(|e| FsError::Io {
                context: format!("seeking to byte {off} to read the {} {what}", self.fs),
                source: e,
            })?;
        match self.inner.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                let what = format!("{what} (the reader ended before the given device size)");
                Err(self.truncated(&what, off, len))
            }
            Err(e) => Err(FsError::Io {
                context: format!("reading the {} {what} at byte {off}", self.fs),
                source: e,
            }),
        }
    }
}

/// Read up to `len` bytes from byte offset `off`; returns fewer bytes (maybe
/// none) when the reader ends first.
pub(crate) fn read_up_to<R: Read + Seek>(
    r: &mut R,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, FsError> {
    let ctx = |e| FsError::Io {
        context: format!("reading {len} bytes at byte {off} for filesystem detection"),
        source: e,
    };
    let end = r.seek(SeekFrom::End(0)).map_err(ctx)?;
    if off >= end {
        return Ok(Vec::new());
    }
    let want = (end - off).min(len as u64);
    // `want` <= `len`, so the conversion cannot fail.
    let want = usize::try_from(want).unwrap_or(len);
    let mut buf = vec![0u8; want];
    r.seek(SeekFrom::Start(off)).map_err(ctx)?;
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(ctx(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off.saturating_add(2)) {
        Some(&[a, c]) => u16::from_le_bytes([a, c]),
        _ => 0,
    }
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off.saturating_add(4)) {
        Some(s) => {
            let mut a = [0u8; 4];
            a.copy_from_slice(s);
            u32::from_le_bytes(a)
        }
        None => 0,
    }
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    match b.get(off..off.saturating_add(8)) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off.saturating_add(2)) {
        Some(&[a, c]) => u16::from_be_bytes([a, c]),
        _ => 0,
    }
}

/// `true` when `b[off..]` starts with `pat`.
pub(crate) fn has_at(b: &[u8], off: usize, pat: &[u8]) -> bool {
    b.get(off..off.saturating_add(pat.len())) == Some(pat)
}
