//! The extent map: which byte runs of a partition are used, and how they map onto the
//! "packed" stream (the used runs concatenated in offset order) that the torrent describes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::MapError;

/// A failed positional read or write of packed bytes on a device.
#[derive(Debug, thiserror::Error)]
pub enum PackedIoError {
    #[error("{0}")]
    Range(#[from] MapError),
    #[error("at device byte {device_offset} (+{length}): {source}")]
    Io {
        /// Device offset and length of the segment that failed.
        device_offset: u64,
        length: u64,
        source: io::Error,
    },
}

/// One used run on the device: `length` bytes starting at byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn new(offset: u64, length: u64) -> Self {
        Self { offset, length }
    }

    /// One past the last byte of the run.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// A piece of a packed byte range, located on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset on the device.
    pub device_offset: u64,
    /// Offset of this segment from the start of the requested packed range.
    pub buf_offset: u64,
    pub length: u64,
}

/// Sorted, non-overlapping, non-empty byte runs inside a device of `device_size` bytes.
///
/// Invariants (checked by [`ExtentMap::new`]): every run has a non-zero length, runs are in
/// increasing offset order, do not overlap, and end at or before `device_size`. Adjacent runs
/// are allowed (the map is kept as given), but [`ExtentMapBuilder`] merges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    device_size: u64,
    extents: Vec<Extent>,
    /// `packed_starts[i]` = sum of the lengths of `extents[..i]`; one extra entry at the end
    /// holding the total.
    packed_starts: Vec<u64>,
}

impl ExtentMap {
    /// Validates and builds a map.
    pub fn new(device_size: u64, extents: Vec<Extent>) -> Result<Self, MapError> {
        let mut packed_starts = Vec::with_capacity(extents.len() + 1);
        let mut total: u64 = 0;
        let mut prev_end: Option<u64> = None;
        for (index, e) in extents.iter().enumerate() {
            if e.length == 0 {
                return Err(MapError::EmptyRun { index });
            }
            let end = e
                .offset
                .checked_add(e.length)
                .ok_or(MapError::OutsideDevice {
                    index,
                    end: u64::MAX,
                    device_size,
                })?;
            if end > device_size {
                return Err(MapError::OutsideDevice {
                    index,
                    end,
                    device_size,
                });
            }
            if let Some(prev_end) = prev_end {
                if e.offset < prev_end {
                    return Err(MapError::Overlap {
                        index,
                        offset: e.offset,
                        prev_end,
                    });
                }
            }
            prev_end = Some(end);
            packed_starts.push(total);
            total += e.length;
        }
        packed_starts.push(total);
        Ok(Self {
            device_size,
            extents,
            packed_starts,
        })
    }

    /// A map with a single run covering the whole device (dd mode).
    pub fn whole_device(device_size: u64) -> Result<Self, MapError> {
        Self::new(device_size, vec![Extent::new(0, device_size)])
    }

    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Total used bytes = length of the packed stream.
    pub fn packed_len(&self) -> u64 {
        *self.packed_starts.last().expect("always one entry")
    }

    /// Index of the extent holding packed byte `packed`, in O(log runs).
    fn extent_at(&self, packed: u64) -> Option<usize> {
        if packed >= self.packed_len() {
            return None;
        }
        // partition_point gives the first start > packed; the extent before it holds `packed`.
        let i = self.packed_starts[..self.extents.len()].partition_point(|&s| s <= packed);
        Some(i - 1)
    }

    /// Maps the packed range `[packed_offset, packed_offset + length)` onto device segments.
    /// Returns an error if the range goes past the end of the packed stream.
    pub fn segments(&self, packed_offset: u64, length: u64) -> Result<Segments<'_>, MapError> {
        let end = packed_offset
            .checked_add(length)
            .filter(|&e| e <= self.packed_len())
            .ok_or(MapError::PackedRange {
                offset: packed_offset,
                length,
                packed_len: self.packed_len(),
            })?;
        let index = if length == 0 {
            self.extents.len()
        } else {
            self.extent_at(packed_offset).expect("checked above")
        };
        Ok(Segments {
            map: self,
            index,
            pos: packed_offset,
            start: packed_offset,
            end,
        })
    }
}

impl ExtentMap {
    /// Fills `buf` with the packed bytes at `packed_offset`, one positional read per device
    /// segment; every read must be complete.
    pub fn read_packed(
        &self,
        dev: &File,
        packed_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PackedIoError> {
        for s in self.segments(packed_offset, buf.len() as u64)? {
            let dst = &mut buf[s.buf_offset as usize..(s.buf_offset + s.length) as usize];
            dev.read_exact_at(dst, s.device_offset)
                .map_err(|source| PackedIoError::Io {
                    device_offset: s.device_offset,
                    length: s.length,
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes `data` (packed bytes at `packed_offset`) to their device offsets, one positional
    /// write per device segment; every write must be complete.
    pub fn write_packed(
        &self,
        dev: &File,
        packed_offset: u64,
        data: &[u8],
    ) -> Result<(), PackedIoError> {
        for s in self.segments(packed_offset, data.len() as u64)? {
            let src = &data[s.buf_offset as usize..(s.buf_offset + s.length) as usize];
            dev.write_all_at(src, s.device_offset)
                .map_err(|source| PackedIoError::Io {
                    device_offset: s.device_offset,
                    length: s.length,
                    source,
                })?;
        }
        Ok(())
    }
}

/// Iterator over the device segments of a packed range; see [`ExtentMap::segments`].
pub struct Segments<'a> {
    map: &'a ExtentMap,
    index: usize,
    pos: u64,
    start: u64,
    end: u64,
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        if self.pos >= self.end || self.index >= self.map.extents.len() {
            return None;
        }
        let e = self.map.extents[self.index];
        let within = self.pos - self.map.packed_starts[self.index];
        let take = (e.length - within).min(self.end - self.pos);
        let seg = Segment {
            device_offset: e.offset + within,
            buf_offset: self.pos - self.start,
            length: take,
        };
        self.pos += take;
        self.index += 1;
        Some(seg)
    }
}

/// Builds an [`ExtentMap`] from runs given in increasing order, merging adjacent ones.
#[derive(Debug, Default)]
pub struct ExtentMapBuilder {
    extents: Vec<Extent>,
}

impl ExtentMapBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a run; zero-length runs are ignored and a run touching the previous one extends it.
    pub fn push(&mut self, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        if let Some(last) = self.extents.last_mut() {
            if last.end() == offset {
                last.length += length;
                return;
            }
        }
        self.extents.push(Extent::new(offset, length));
    }

    pub fn build(self, device_size: u64) -> Result<ExtentMap, MapError> {
        ExtentMap::new(device_size, self.extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ExtentMap {
        ExtentMap::new(
            1000,
            vec![
                Extent::new(0, 10),
                Extent::new(100, 50),
                Extent::new(900, 100),
            ],
        )
        .unwrap()
    }

    #[test]
    fn packed_len_and_segments_cross_runs() {
        let m = map();
        assert_eq!(m.packed_len(), 160);
        let segs: Vec<_> = m.segments(5, 60).unwrap().collect();
        assert_eq!(
            segs,
            vec![
                Segment {
                    device_offset: 5,
                    buf_offset: 0,
                    length: 5
                },
                Segment {
                    device_offset: 100,
                    buf_offset: 5,
                    length: 50
                },
                Segment {
                    device_offset: 900,
                    buf_offset: 55,
                    length: 5
                },
            ]
        );
        let segs: Vec<_> = m.segments(159, 1).unwrap().collect();
        assert_eq!(segs[0].device_offset, 999);
        assert!(m.segments(100, 61).is_err());
        assert_eq!(m.segments(160, 0).unwrap().count(), 0);
    }

    #[test]
    fn segments_start_exactly_at_run_boundaries() {
        let m = map();
        for (packed, dev) in [(0u64, 0u64), (10, 100), (60, 900)] {
            let s = m.segments(packed, 1).unwrap().next().unwrap();
            assert_eq!(s.device_offset, dev, "packed {packed}");
        }
    }

    #[test]
    fn rejects_bad_maps() {
        assert!(matches!(
            ExtentMap::new(100, vec![Extent::new(0, 0)]),
            Err(MapError::EmptyRun { index: 0 })
        ));
        assert!(matches!(
            ExtentMap::new(100, vec![Extent::new(0, 10), Extent::new(5, 10)]),
            Err(MapError::Overlap { index: 1, .. })
        ));
        assert!(matches!(
            ExtentMap::new(100, vec![Extent::new(95, 10)]),
            Err(MapError::OutsideDevice { .. })
        ));
        assert!(matches!(
            ExtentMap::new(100, vec![Extent::new(u64::MAX, 10)]),
            Err(MapError::OutsideDevice { .. })
        ));
    }

    #[test]
    fn builder_merges_adjacent_runs() {
        let mut b = ExtentMapBuilder::new();
        b.push(0, 4096);
        b.push(4096, 4096);
        b.push(10000, 0);
        b.push(16384, 4096);
        let m = b.build(1 << 20).unwrap();
        assert_eq!(
            m.extents(),
            &[Extent::new(0, 8192), Extent::new(16384, 4096)]
        );
    }
}
