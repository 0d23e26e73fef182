//! The driver on loopback: two real nodes, their actors, real sockets, storage in memory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::net::TcpListener;

use super::{new_peer_id, Swarm, SwarmOptions, TorrentInfo};
use crate::storage::Storage;

const PIECE: u32 = 32 * 1024;
const TOTAL: u64 = 7 * PIECE as u64 - 1000;

struct Mem(Mutex<Vec<u8>>);

impl Storage for Mem {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn drop_cache(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

fn data() -> Vec<u8> {
    (0..TOTAL).map(|i| ((i * 2654435761) >> 13) as u8).collect()
}

fn info(d: &[u8]) -> TorrentInfo {
    let hashes = d
        .chunks(PIECE as usize)
        .map(|c| Sha1::digest(c).into())
        .collect();
    TorrentInfo {
        info_hash: [7; 20],
        piece_length: PIECE,
        total_length: TOTAL,
        piece_hashes: Arc::new(hashes),
    }
}

async fn node(info: &TorrentInfo, content: Vec<u8>, have: bool) -> (Swarm, Arc<Mem>) {
    let mem = Arc::new(Mem(Mutex::new(content)));
    let n = info.piece_hashes.len();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = SwarmOptions {
        prefer_unsent: have,
        ..SwarmOptions::default()
    };
    let s = Swarm::start(
        info.clone(),
        new_peer_id(),
        mem.clone(),
        vec![have; n],
        listener,
        opts,
    )
    .unwrap();
    (s, mem)
}

#[tokio::test]
async fn a_receiver_gets_every_piece_from_a_seeder_that_checks_each_on_first_serve() {
    let d = data();
    let info = info(&d);
    let (seeder, _) = node(&info, d.clone(), true).await;
    let (receiver, mem) = node(&info, vec![0; TOTAL as usize], false).await;
    assert!(!receiver.is_complete());
    receiver.add_peers([seeder.listen_addr()]);
    tokio::time::timeout(Duration::from_secs(30), receiver.wait_complete())
        .await
        .expect("the receiver completes within 30 s")
        .unwrap();
    assert_eq!(*mem.0.lock().unwrap(), d);
    assert!(receiver.have_bits().iter().all(|&h| h));
    assert!(receiver.is_busy_or_have(0).await);
    let st = receiver.stats();
    assert_eq!(st.pieces_have, 7);
    assert_eq!(st.bytes_have, TOTAL);
    // The seeder hashed every piece it served, through the actor's read plans.
    assert!(seeder.stats().uploaded >= TOTAL);
    assert!(seeder.corrupt_piece().is_none());
}

#[tokio::test]
async fn pieces_found_on_resume_complete_the_node_through_the_actor() {
    let d = data();
    let info = info(&d);
    let (s, _) = node(&info, d, false).await;
    assert!(!s.is_busy_or_have(3).await);
    for i in 0..7 {
        s.mark_verified(i);
    }
    tokio::time::timeout(Duration::from_secs(5), s.wait_complete())
        .await
        .expect("published at once")
        .unwrap();
    assert!(s.have_bits().iter().all(|&h| h));
}

#[tokio::test]
async fn a_source_piece_that_fails_its_first_serve_check_is_published_as_corrupt() {
    let d = data();
    let info = info(&d);
    let mut bad = d.clone();
    for b in &mut bad {
        *b ^= 0xff; // every piece differs from its hash
    }
    let (seeder, _) = node(&info, bad, true).await;
    let (receiver, _) = node(&info, vec![0; TOTAL as usize], false).await;
    receiver.add_peers([seeder.listen_addr()]);
    let corrupt = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(c) = seeder.corrupt_piece() {
                return c;
            }
            seeder.changed().await;
        }
    })
    .await
    .expect("the seeder finds a corrupt piece within 30 s");
    assert!(corrupt.index < 7);
    assert_eq!(receiver.stats().pieces_have, 0);
}

#[test]
fn no_lock_is_around_the_core() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    for f in [
        "engine.rs",
        "engine/actor.rs",
        "engine/conn.rs",
        "engine/serve.rs",
    ] {
        let src = std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        for banned in ["Mutex<Node>", "Mutex<Core>", "RwLock<Node>", "RwLock<Core>"] {
            assert!(!src.contains(banned), "{f} holds {banned}");
        }
    }
}
