// SPDX-License-Identifier: GPL-2.0-or-later
//! A sequence of announces to the seeder's embedded tracker, one per input line: the line's
//! first byte picks the announcing address (127.0.0.x), the rest is the query string as a
//! client sends it (`info_hash=%AB...&peer_id=...&port=6881&left=...&event=started`). Each
//! goes through the HTTP server's request parsing, then the tracker; its reply through the
//! client's reply parsing. Never a panic; every reply is bencode the client parses (a peer
//! list or a failure reason); a reply never lists the announcing peer itself nor a gone or
//! unknown peer; the peer table grows by at most one entry per announce.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use blockswarm_swarm::http;
use blockswarm_swarm::tracker::{parse_reply, TrackerServer};
use libfuzzer_sys::fuzz_target;

/// The torrent the tracker serves: `%AB` twenty times in a query.
const INFO_HASH: [u8; 20] = [0xab; 20];

fuzz_target!(|data: &[u8]| {
    let t = TrackerServer::new(INFO_HASH, Duration::from_secs(30));
    let seeder: SocketAddr = "10.0.0.1:6881".parse().unwrap();
    t.add_static([0u8; 20], seeder, true);
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let Some((&from, q)) = line.split_first() else {
            continue;
        };
        let peer = SocketAddr::from(([127, 0, 0, from], 40000));
        let q = String::from_utf8_lossy(q);
        let req = http::Request::new(http::Method::Get, &format!("/announce?{q}"), peer);
        let resp = t.announce(&req);
        assert_eq!(resp.status, 200);
        let snap = t.snapshot();
        assert!(
            snap.len() <= n + 2,
            "peer table grew by more than one entry"
        );
        match parse_reply(&resp.body) {
            Ok(r) => {
                assert!(!r.done);
                let port = req.param_str("port").and_then(|p| p.parse::<u16>().ok());
                let me = SocketAddr::new(peer.ip(), port.expect("accepted with a port"));
                for p in &r.peers {
                    assert_ne!(*p, me, "reply lists the announcing peer");
                    assert!(
                        snap.iter().any(|(_, s)| s.addr == *p && !s.gone),
                        "reply lists {p}, not a live peer"
                    );
                }
            }
            Err(e) => assert!(e.to_string().contains("tracker refused"), "{e}"),
        }
    }
});
