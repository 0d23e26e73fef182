// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as a `.torrent` manifest: decoding never panics, and whatever it accepts
//! is valid, re-encodes, and decodes back to the same manifest (decode(encode(m)) == m) with
//! the same canonical bytes; its pieces tile the packed stream and map onto the device
//! inside the extent map.
#![no_main]

use blockswarm_manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Manifest::decode(data) else {
        return;
    };
    let m = d.manifest;
    m.validate().expect("a decoded manifest validates");
    let bytes = m.encode().expect("a decoded manifest encodes");
    let again = Manifest::decode(&bytes).expect("an encoded manifest decodes");
    assert_eq!(again.manifest, m, "decode(encode(m)) != m");
    assert_eq!(again.info_hash, m.info_hash().expect("info hash"));
    assert_eq!(
        again.manifest.encode().expect("encodes"),
        bytes,
        "not canonical"
    );

    // Pieces tile the packed stream; each maps onto device segments inside the map.
    let map = &m.map;
    let mut next = 0u64;
    for i in 0..m.num_pieces() {
        let (off, len) = m.piece_range(i);
        assert_eq!(off, next);
        assert!(len > 0 && len <= m.piece_length as u64);
        let mut covered = 0u64;
        for s in map
            .segments(off, len)
            .expect("a piece is inside the packed stream")
        {
            assert_eq!(s.buf_offset, covered);
            assert!(s.length > 0);
            assert!(s.device_offset + s.length <= map.device_size());
            covered += s.length;
        }
        assert_eq!(covered, len);
        next = off + len;
    }
    assert_eq!(next, m.total_length());
    assert!(m.min_target_size() <= map.device_size());
    assert!(map.extents().last().map_or(0, |e| e.end()) <= m.min_target_size());
});
