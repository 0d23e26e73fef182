use super::*;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[test]
fn urls() {
    let u = Url::parse("http://127.0.0.1:6880/x.torrent").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.target.as_str()),
        ("127.0.0.1", 6880, "/x.torrent")
    );
    let u = Url::parse("http://host").unwrap();
    assert_eq!((u.port, u.target.as_str()), (80, "/"));
    let u = Url::parse("http://[::1]:81/a?b").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.target.as_str()),
        ("::1", 81, "/a?b")
    );
    assert_eq!(u.to_string(), "http://[::1]:81/a?b");
    assert!(Url::parse("https://x/").is_err());
    assert!(Url::parse("http://:80/").is_err());
    assert!(Url::parse("http://h:99999/").is_err());
    assert!(Url::parse("http://[::1]junk:80/").is_err());
    // A fragment is not sent.
    assert_eq!(Url::parse("http://h/a#b").unwrap().target, "/a");
}

#[test]
fn percent_round_trip() {
    let b: Vec<u8> = (0..=255).collect();
    assert_eq!(percent_decode(&percent_encode(&b)), b);
    assert_eq!(percent_decode("a%2"), b"a%2");
    assert_eq!(percent_decode("%zz"), b"%zz");
    assert_eq!(percent_decode("a+b"), b"a b");
    // In a path '+' is a plus; names with + space # ? % survive.
    let name = "disk +1 #2 ?3 %4.packed";
    let target = format!("/t/x/{}.torrent", percent_encode(name.as_bytes()));
    let r = Request::new(Method::Get, &target, "127.0.0.1:1".parse().unwrap());
    assert_eq!(r.path, format!("/t/x/{name}.torrent"));
    assert!(Url::parse(&format!("http://h{target}")).is_ok());
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(
        l,
        Arc::new(|r: Request| async move {
            if r.method == Method::Post {
                Response::ok("text/plain", r.body)
            } else if r.path == "/hello" {
                Response::ok(
                    "text/plain",
                    format!("hi {:?}", r.param_str("who")).into_bytes(),
                )
            } else if r.path == "/file" {
                Response::file("application/octet-stream", "/proc/self/exe".into())
            } else {
                Response::not_found()
            }
        }),
    ));
    addr
}

#[tokio::test]
async fn get_and_post_against_our_server() {
    let addr = echo_server().await;
    let t = Duration::from_secs(5);
    let body = get(&format!("http://{addr}/hello?who=a%20b"), None, t)
        .await
        .unwrap();
    assert_eq!(body, b"hi Some(\"a b\")");
    let echo = post(
        &format!("http://{addr}/echo"),
        "application/json",
        b"{\"a\":1}",
        None,
        t,
    )
    .await
    .unwrap();
    assert_eq!(echo, b"{\"a\":1}");
    match get(&format!("http://{addr}/nope"), None, t).await {
        Err(SwarmError::HttpStatus { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
    // A file response streams the whole file.
    let f = get(&format!("http://{addr}/file"), None, t).await.unwrap();
    assert_eq!(f, std::fs::read("/proc/self/exe").unwrap());
    // Too large a POST is refused before it is read.
    let big = vec![b'x'; MAX_REQUEST_BODY + 1];
    match post(&format!("http://{addr}/echo"), "text/plain", &big, None, t).await {
        Err(SwarmError::HttpStatus { status: 413, .. }) => {}
        other => panic!("expected 413, got {other:?}"),
    }
}

/// What the server sends back for `raw` bytes (read to the end of the connection).
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn head_has_no_body_and_bad_requests_get_4xx() {
    let addr = echo_server().await;
    let head = raw_exchange(addr, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 7"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "a body after HEAD: {head:?}");
    let bad = raw_exchange(addr, b"GARBAGE\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let put = raw_exchange(addr, b"PUT /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(put.starts_with("HTTP/1.1 405"), "{put}");
    let mut many = String::from("GET /hello HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let many = raw_exchange(addr, many.as_bytes()).await;
    assert!(many.starts_with("HTTP/1.1 431"), "{many}");
}

/// A body larger than `timeout` allows at once (40 MiB sent in 64 KiB pieces with pauses,
/// ~1.3 s in all) arrives whole with a 1 s timeout: time is allowed per step and in
/// proportion to size (a 37 MB manifest to a whole room is not cut off by a fixed limit).
/// A server that stops sending for longer than the timeout is cut off.
#[tokio::test]
async fn a_large_body_gets_time_in_proportion_and_a_stalled_one_is_cut() {
    const LEN: usize = 40 << 20;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        for stall in [false, true] {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.unwrap();
            let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
            s.write_all(h.as_bytes()).await.unwrap();
            let chunk = vec![7u8; 64 << 10];
            for i in 0..LEN / chunk.len() {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                if i % 32 == 31 {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                if stall && i == 100 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }
        }
    });
    let t = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let body = get(&format!("http://{addr}/big"), None, t).await.unwrap();
    assert_eq!(body.len(), LEN);
    assert!(
        started.elapsed() > t,
        "the test must outlast the timeout: {:?}",
        started.elapsed()
    );
    match get(&format!("http://{addr}/big"), None, t).await {
        Err(SwarmError::Http(e)) => assert!(e.contains("timed out"), "{e}"),
        other => panic!(
            "a stalled body was not cut off: {:?}",
            other.map(|b| b.len())
        ),
    }
}
