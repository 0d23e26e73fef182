//! A real BitTorrent peer that lies: it claims every piece and answers requests with bad
//! bytes. Used to check that receivers verify, ban it (or at least never an honest peer),
//! and still end correct.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blockswarm_swarm::wire::{self, FrameReader, Msg};
use blockswarm_swarm::zblock;
use rand::RngCore;
use tokio::io::AsyncWriteExt;

/// Counters of what the evil peer did.
#[derive(Default)]
pub struct EvilStats {
    pub connections: AtomicU64,
    pub blocks_sent: AtomicU64,
    /// REQUESTs sent by [`flood_requests`].
    pub requests_sent: AtomicU64,
    /// REQUESTs received and left unanswered ([`Lie::StallMidPiece`]).
    pub requests_ignored: AtomicU64,
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
    /// Claims nothing (HAVE_NONE, or an empty bitfield) and sends, unasked, one block of
    /// random bytes for the next piece every [`UNSOLICITED_EVERY`], round the pieces.
    Unsolicited,
    /// Knows the real packed data and claims every piece (HAVE_ALL), but stalls mid-piece:
    /// it answers, right, only the requests for a piece's first block and never answers the
    /// rest (no REJECT either), keeping the connection open and reading.
    StallMidPiece {
        packed: Arc<Vec<u8>>,
        piece_len: u32,
    },
    /// Speaks blockswarm's `bs_zstd` (BEP 10) and answers every request with a zstd frame
    /// that lies (see [`ZLie`]).
    Zstd(ZLie),
}

/// How a [`Lie::Zstd`] peer's frames lie.
#[derive(Clone, Copy, Debug)]
pub enum ZLie {
    /// The frame decompresses to four times the length it claims (a decompression bomb).
    Bomb,
    /// A valid frame of the claimed length, of zeros: the piece fails its SHA-1.
    Zeros,
}

/// How often [`Lie::Unsolicited`] sends a garbage block.
pub const UNSOLICITED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

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
    let zlie = match lie {
        Lie::Zstd(z) => Some(z),
        _ => None,
    };
    wire::write_handshake(&mut wr, info_hash, id, zlie.is_some()).await?;
    let hs = wire::read_handshake(&mut rd).await?;
    let mut buf = Vec::new();
    let claim = !matches!(lie, Lie::Unsolicited);
    let first = match (hs.fast, claim) {
        (true, true) => Msg::HaveAll,
        (true, false) => Msg::HaveNone,
        (false, _) => Msg::Bitfield(wire::bitfield_from(&vec![claim; num_pieces as usize])),
    };
    wire::encode(&first, &mut buf);
    if zlie.is_some() {
        wire::encode(
            &Msg::Extended {
                id: zblock::HANDSHAKE_ID,
                payload: zblock::handshake_payload("evil"),
            },
            &mut buf,
        );
    }
    wire::encode(&Msg::Unchoke, &mut buf);
    wr.write_all(&buf).await?;
    let mut frames = FrameReader::new(rd, 1 << 20);
    if let Some(z) = zlie {
        return zstd_lies(&mut frames, wr, z, &stats).await;
    }
    if let Lie::Unsolicited = lie {
        return unsolicited(&mut frames, wr, num_pieces, &stats).await;
    }
    while let Some(m) = frames.next().await? {
        if let Msg::Request(r) = m {
            buf.clear();
            let mut data = vec![0u8; r.length as usize];
            match &lie {
                Lie::Random | Lie::Unsolicited | Lie::Zstd(_) => {
                    rand::thread_rng().fill_bytes(&mut data)
                }
                Lie::StallMidPiece { packed, piece_len } => {
                    if r.begin != 0 {
                        stats.requests_ignored.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let at = r.index as usize * *piece_len as usize;
                    data.copy_from_slice(&packed[at..at + r.length as usize]);
                }
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

/// [`Lie::Zstd`]: every request answered with a lying `bs_zstd` frame, once the peer's
/// extended handshake named its id (requests before that are left unanswered).
async fn zstd_lies(
    frames: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    z: ZLie,
    stats: &EvilStats,
) -> Result<(), wire::WireError> {
    let mut zid = None;
    while let Some(m) = frames.next().await? {
        match m {
            Msg::Extended { id: 0, payload } => zid = zblock::peer_id_for_zstd(&payload),
            Msg::Request(r) => {
                let Some(zid) = zid else {
                    stats.requests_ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let raw = match z {
                    ZLie::Bomb => vec![0u8; r.length as usize * 4],
                    ZLie::Zeros => vec![0u8; r.length as usize],
                };
                let frame = zblock::compress(&raw).expect("zeros compress");
                let mut buf = zblock::header(zid, r.index, r.begin, r.length, frame.len()).to_vec();
                buf.extend_from_slice(&frame);
                wr.write_all(&buf).await?;
                stats.blocks_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    Ok(())
}

/// [`Lie::Unsolicited`]: garbage blocks nobody asked for, until the connection is closed.
/// The last piece is skipped (it may be shorter than a block), unless it is the only one.
async fn unsolicited(
    frames: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    num_pieces: u32,
    stats: &EvilStats,
) -> Result<(), wire::WireError> {
    let pieces = num_pieces.saturating_sub(1).max(1);
    let mut iv = tokio::time::interval(UNSOLICITED_EVERY);
    let mut buf = Vec::new();
    let mut index = 0;
    loop {
        tokio::select! {
            m = frames.next() => {
                if m?.is_none() {
                    return Ok(());
                }
            }
            _ = iv.tick() => {
                let mut data = vec![0u8; wire::BLOCK_SIZE as usize];
                rand::thread_rng().fill_bytes(&mut data);
                buf.clear();
                wire::encode(&Msg::Piece { index, begin: 0, data }, &mut buf);
                wr.write_all(&buf).await?;
                stats.blocks_sent.fetch_add(1, Ordering::Relaxed);
                index = (index + 1) % pieces;
            }
        }
    }
}

/// Dials `addr`, handshakes, then sends REQUESTs for every block of every piece, round and
/// round, as fast as the socket takes them, and never reads. Redials when cut off. Runs
/// in a background thread for the life of the test process; returns its counters.
pub fn flood_requests(addr: SocketAddr, info_hash: [u8; 20], num_pieces: u32) -> Arc<EvilStats> {
    let stats = Arc::new(EvilStats::default());
    let st = stats.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            loop {
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    st.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = flood(s, info_hash, num_pieces, &st).await;
                }
                // Redial at once, but not in a hot loop while the seeder is down.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
    });
    stats
}

async fn flood(
    s: tokio::net::TcpStream,
    info_hash: [u8; 20],
    num_pieces: u32,
    stats: &EvilStats,
) -> Result<(), wire::WireError> {
    let (mut rd, mut wr) = s.into_split();
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-EV0002-");
    rand::thread_rng().fill_bytes(&mut id[8..]);
    wire::write_handshake(&mut wr, info_hash, id, false).await?;
    wire::read_handshake(&mut rd).await?;
    // `rd` is kept but never read again: the seeder's replies pile up in the socket.
    let mut buf = Vec::new();
    wire::encode(&Msg::HaveNone, &mut buf);
    wire::encode(&Msg::Interested, &mut buf);
    wr.write_all(&buf).await?;
    // Only the first block of each piece but the last: always a valid request.
    let pieces = num_pieces.saturating_sub(1).max(1);
    loop {
        buf.clear();
        for index in 0..pieces {
            wire::encode(
                &Msg::Request(wire::Req {
                    index,
                    begin: 0,
                    length: wire::BLOCK_SIZE,
                }),
                &mut buf,
            );
        }
        wr.write_all(&buf).await?;
        stats
            .requests_sent
            .fetch_add(pieces as u64, Ordering::Relaxed);
    }
}
