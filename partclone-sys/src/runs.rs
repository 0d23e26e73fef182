//! Runs of used blocks, in bytes, from a used-block bitmap (one bit per block, LSB first).

pub(crate) fn bit(bitmap: &[u8], i: u64) -> bool {
    bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// Iterator over maximal runs of set bits, in bytes.
pub(crate) struct Runs<'a> {
    bits: &'a [u8],
    total: u64,
    block_size: u64,
    limit: u64,
    pos: u64,
}

impl<'a> Runs<'a> {
    pub(crate) fn new(bits: &'a [u8], total: u64, block_size: u64, limit: u64) -> Self {
        // Never look past the buffer, whatever total claims.
        let total = total.min(bits.len() as u64 * 8);
        Runs {
            bits,
            total,
            block_size,
            limit,
            pos: 0,
        }
    }

    /// First block >= from whose bit equals `set`, or `total`.
    fn find_bit(&self, from: u64, set: bool) -> u64 {
        let flip = if set { 0u8 } else { 0xff };
        let mut i = from;
        while i < self.total {
            let byte_idx = (i / 8) as usize;
            // Bits of interest become 1 after the flip; drop those below i.
            let byte = (self.bits[byte_idx] ^ flip) & (0xffu8 << (i % 8));
            if byte != 0 {
                return (byte_idx as u64 * 8 + u64::from(byte.trailing_zeros())).min(self.total);
            }
            // Skip whole words that hold nothing of interest.
            let mut next = byte_idx + 1;
            let skip = u64::from_ne_bytes([flip; 8]);
            while next + 8 <= self.bits.len()
                && u64::from_ne_bytes(self.bits[next..next + 8].try_into().unwrap()) == skip
            {
                next += 8;
            }
            i = next as u64 * 8;
        }
        self.total
    }
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let start = self.find_bit(self.pos, true);
        if start >= self.total {
            self.pos = self.total;
            return None;
        }
        let end = self.find_bit(start, false);
        self.pos = end;
        let offset = start.saturating_mul(self.block_size);
        let stop = end.saturating_mul(self.block_size).min(self.limit);
        if offset >= stop {
            self.pos = self.total;
            return None;
        }
        Some((offset, stop - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap_of(total: u64, used: &[u64]) -> Vec<u8> {
        let mut v = vec![0u8; total.div_ceil(8) as usize];
        for &b in used {
            v[(b / 8) as usize] |= 1 << (b % 8);
        }
        v
    }

    fn runs(bits: &[u8], total: u64, bs: u64, limit: u64) -> Vec<(u64, u64)> {
        Runs::new(bits, total, bs, limit).collect()
    }

    /// Reference: one block at a time.
    fn naive(bits: &[u8], total: u64, bs: u64, limit: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in 0..total {
            if !bit(bits, b) {
                continue;
            }
            let (off, end) = (b * bs, ((b + 1) * bs).min(limit));
            if off >= end {
                break;
            }
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l = end - *o,
                _ => out.push((off, end - off)),
            }
        }
        out
    }

    #[test]
    fn runs_of_empty_bitmap_is_empty() {
        let bits = bitmap_of(100, &[]);
        assert!(runs(&bits, 100, 4096, 100 * 4096).is_empty());
    }

    #[test]
    fn runs_merge_adjacent_blocks_across_byte_and_word_boundaries() {
        let used: Vec<u64> = (0..3).chain(7..70).chain([99]).collect();
        let bits = bitmap_of(100, &used);
        assert_eq!(
            runs(&bits, 100, 1024, 100 * 1024),
            vec![(0, 3 * 1024), (7 * 1024, 63 * 1024), (99 * 1024, 1024)]
        );
    }

    #[test]
    fn runs_of_full_bitmap_is_one_run() {
        let used: Vec<u64> = (0..1000).collect();
        let bits = bitmap_of(1000, &used);
        assert_eq!(runs(&bits, 1000, 512, 1000 * 512), vec![(0, 512_000)]);
    }

    #[test]
    fn runs_clip_last_run_to_limit() {
        let bits = bitmap_of(10, &[8, 9]);
        assert_eq!(
            runs(&bits, 10, 4096, 9 * 4096 + 100),
            vec![(8 * 4096, 4096 + 100)]
        );
        assert_eq!(runs(&bits, 10, 4096, 8 * 4096), vec![]);
    }

    #[test]
    fn runs_ignore_bits_past_total() {
        let bits = vec![0xff; 4];
        assert_eq!(runs(&bits, 13, 1, 13), vec![(0, 13)]);
    }

    #[test]
    fn runs_match_naive_scan_on_pseudo_random_bitmaps() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for total in [1u64, 7, 8, 9, 63, 64, 65, 200, 1000, 4099] {
            for density in [0u64, 1, 50, 99, 100] {
                let used: Vec<u64> = (0..total)
                    .filter(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state % 100 < density
                    })
                    .collect();
                let bits = bitmap_of(total, &used);
                let limit = total * 4096 - 1;
                assert_eq!(
                    runs(&bits, total, 4096, limit),
                    naive(&bits, total, 4096, limit),
                    "total {total} density {density}"
                );
            }
        }
    }
}
