// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as a tracker's answer to the client's announce: a bencoded body (first
//! byte even) or the whole HTTP response as read off an (in-memory) connection by our client
//! (first byte odd). Never a panic; an accepted reply has an interval in [1 s, 1 h] and one
//! peer per 6 bytes of the compact list.
#![no_main]

use blockswarm_swarm::http;
use blockswarm_swarm::tracker::parse_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        match http::read_response(rest, "http://tracker/announce") {
            Ok(b) => {
                assert!(b.len() < rest.len());
                b
            }
            Err(_) => return,
        }
    };
    if let Ok(r) = parse_reply(&body) {
        assert!((1..=3600).contains(&r.interval.as_secs()));
        assert!(r.peers.len() * 6 <= body.len());
    }
});
