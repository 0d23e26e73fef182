// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as a tracker's answer to the client's announce: a bencoded body (first
//! byte even) or the whole HTTP response as read off an (in-memory) connection by our client
//! (first byte odd). Never a panic; an accepted reply has an interval in [1 s, 1 h] and one
//! peer per 6 bytes of the compact list.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use blockswarm_swarm::http;
use blockswarm_swarm::tracker::parse_reply;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// `response` as a tracker sends it, read by our client (hyper) from an in-memory connection.
async fn over_the_wire(response: &[u8]) -> Result<Vec<u8>, blockswarm_swarm::SwarmError> {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let response = response.to_vec();
    tokio::spawn(async move {
        let _ = server.write_all(&response).await;
        let _ = server.shutdown().await;
        // Hold the connection until the client is done with it.
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut server, &mut sink).await;
    });
    http::get_over(client, "http://tracker/announce", Duration::from_secs(1)).await
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        match rt().block_on(over_the_wire(rest)) {
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
