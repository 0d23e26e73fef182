// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as what a peer sends: a 68-byte handshake, then framed messages (standard
//! BEP 3 and Fast extension), read by the engine's `FrameReader` with its frame limit. Never
//! a panic; every message read re-encodes to a frame that decodes to the same message; a
//! frame above the limit is refused before it is buffered; bitfields round-trip.
#![no_main]

use std::sync::OnceLock;

use blockswarm_swarm::wire::{self, FrameReader, Msg, WireError, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

/// What the engine allows for a torrent of `PIECES` pieces: a block of MAX_REQUEST plus
/// its header, or the bitfield.
const PIECES: usize = 8000;
const MAX_FRAME: usize = 13 + MAX_REQUEST as usize + PIECES.div_ceil(8);

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        let mut rd = data;
        if wire::read_handshake(&mut rd).await.is_err() {
            assert!(data.len() < 68 || data[0] != 19 || &data[1..20] != b"BitTorrent protocol");
            return;
        }
        let mut frames = FrameReader::new(rd, MAX_FRAME);
        loop {
            match frames.next().await {
                Ok(None) => break,
                Ok(Some(Msg::Other(_))) => {}
                Ok(Some(m)) => {
                    let mut buf = Vec::new();
                    wire::encode(&m, &mut buf);
                    assert!(buf.len() <= MAX_FRAME + 4);
                    assert_eq!(wire::decode_frame(&buf).expect("our encoding decodes"), m);
                    if let Msg::Bitfield(b) = &m {
                        let n = b.len() * 8
                            - (b.last().map_or(0, |l| l.trailing_zeros() as usize).min(7));
                        if let Ok(bits) = wire::bitfield_to(b, n) {
                            assert_eq!(&wire::bitfield_from(&bits), b);
                        }
                    }
                }
                Err(WireError::TooLong(n)) => {
                    assert!(n > MAX_FRAME);
                    break;
                }
                Err(_) => break,
            }
        }
    })
});
