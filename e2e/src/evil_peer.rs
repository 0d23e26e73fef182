//! A real BitTorrent peer that lies: it claims every piece and answers requests with bad
//! bytes. Used to check that receivers verify, ban it (or at least never an honest peer),
//! and still end correct.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blockswarm_swarm::wire::{self, FrameReader, Msg};
use rand::RngCore;
use tokio::io::AsyncWriteExt;

/// Counters of what the evil peer did.
#[derive(Default)]
pub struct EvilStats {
    pub connections: AtomicU64,
    pub blocks_sent: AtomicU64,
}

/// How the peer lies.
#[derive(Clone)]
pub enum Lie {
    /// Every block is random bytes.
    Random,
    /// Knows the real packed data; rejects (Fast REJECT) every request for a piece's first
    /// block, corrupts its second block and serves the rest right. Its bad block therefore
    /// always lands in a piece that an honest peer also sent blocks of: the receiver cannot
    /// tell from one failure who lied.
    MixIn {
        packed: Arc<Vec<u8>>,
        piece_len: u32,
    },
}

/// Starts a lying peer on `addr` in a background thread; returns its counters.
pub fn start_with(
    addr: SocketAddr,
    info_hash: [u8; 20],
    num_pieces: u32,
    lie: Lie,
) -> Arc<EvilStats> {
    let stats = Arc::new(EvilStats::default());
    let s2 = stats.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .expect("bind evil peer");
            tx.send(()).expect("signal");
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let st = s2.clone();
                let lie = lie.clone();
                tokio::spawn(async move {
                    st.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = serve(s, info_hash, num_pieces, lie, st).await;
                });
            }
        });
    });
    rx.recv().expect("evil peer started");
    stats
}

async fn serve(
    s: tokio::net::TcpStream,
    info_hash: [u8; 20],
    num_pieces: u32,
    lie: Lie,
    stats: Arc<EvilStats>,
) -> Result<(), wire::WireError> {
    let (mut rd, mut wr) = s.into_split();
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-EV0001-");
    rand::thread_rng().fill_bytes(&mut id[8..]);
    wire::write_handshake(&mut wr, info_hash, id).await?;
    let hs = wire::read_handshake(&mut rd).await?;
    let mut buf = Vec::new();
    let first = if hs.fast {
        Msg::HaveAll
    } else {
        Msg::Bitfield(wire::bitfield_from(&vec![true; num_pieces as usize]))
    };
    wire::encode(&first, &mut buf);
    wire::encode(&Msg::Unchoke, &mut buf);
    wr.write_all(&buf).await?;
    let mut frames = FrameReader::new(rd, 1 << 20);
    while let Some(m) = frames.next().await? {
        if let Msg::Request(r) = m {
            buf.clear();
            let mut data = vec![0u8; r.length as usize];
            match &lie {
                Lie::Random => rand::thread_rng().fill_bytes(&mut data),
                Lie::MixIn { packed, piece_len } => {
                    if r.begin == 0 {
                        wire::encode(&Msg::Reject(r), &mut buf);
                        wr.write_all(&buf).await?;
                        continue;
                    }
                    let at = r.index as usize * *piece_len as usize + r.begin as usize;
                    data.copy_from_slice(&packed[at..at + r.length as usize]);
                    if r.begin == wire::BLOCK_SIZE {
                        data[0] ^= 0xff;
                    }
                }
            }
            wire::encode(
                &Msg::Piece {
                    index: r.index,
                    begin: r.begin,
                    data,
                },
                &mut buf,
            );
            wr.write_all(&buf).await?;
            stats.blocks_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
