// SPDX-License-Identifier: GPL-2.0-or-later
//! Arbitrary bytes as what an HTTP client sends to the seeder's server (`handle_conn`, over an
//! in-memory connection, with the seeder's routes: `/announce` to the embedded tracker, `/`, a
//! manifest, 404), then the server's answer read by our HTTP client. Never a panic; every
//! answer is a complete response that the client accepts exactly when it is a 200 (but for
//! HEAD, answered without a body).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blockswarm_swarm::conn_limit;
use blockswarm_swarm::http::{self, Request, Response};
use blockswarm_swarm::tracker::TrackerServer;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

const MANIFEST: &[u8] = b"d4:infod6:lengthi1eee";

fuzz_target!(|data: &[u8]| {
    let tracker = Arc::new(TrackerServer::new([7u8; 20], Duration::from_secs(30)));
    let peer: SocketAddr = "127.0.0.9:40000".parse().unwrap();
    let handler = Arc::new(move |r: Request| {
        let t = tracker.clone();
        async move {
            match r.path.as_str() {
                "/announce" => t.announce(&r),
                "/" => Response::ok("text/plain", b"blockswarm seeder\n".to_vec()),
                "/x.torrent" => Response::ok("application/x-bittorrent", MANIFEST.to_vec()),
                _ => Response::not_found(),
            }
        }
    });
    let answer = rt().block_on(async {
        let (mut client, server) = tokio::io::duplex(4096);
        let limiter = conn_limit::Limiter::new(conn_limit::HTTP);
        let slot = limiter.admit(peer.ip()).await.expect("one connection");
        let serve = http::handle_conn(server, peer, handler, &slot);
        let talk = async {
            // The server may answer (and close) before it has read everything.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            client
                .read_to_end(&mut answer)
                .await
                .expect("read the answer");
            answer
        };
        let (served, answer) = tokio::join!(serve, talk);
        served.expect("in-memory connection");
        answer
    });
    if answer.is_empty() {
        return;
    }
    let head = String::from_utf8_lossy(&answer);
    let status: u16 = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    assert!(
        [200, 400, 404, 405, 408, 413, 431].contains(&status),
        "status {status}"
    );
    if data.starts_with(b"HEAD ") {
        // Answered without its body, as HEAD is; our client only sends GET and POST.
        return;
    }
    let body = http::read_response(&answer, "http://seeder/");
    assert_eq!(body.is_ok(), status == 200, "{body:?}");
    if let Ok(b) = body {
        assert!(answer.ends_with(&b));
    }
});
