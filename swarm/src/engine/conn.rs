//! The driver's connections: accepting and dialing, the handshake, one reader loop per
//! connection that feeds each message to the core, and registering with the core (a
//! connection's [`Link`] under the key the core gives it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use super::serve::WriterEnds;
use super::{Link, Swarm, TURN_LOWAT};
use crate::backlog::Backlog;
use crate::conn_limit;
use crate::locality;
use crate::proto::{self, Hello, Input};
use crate::wire::{self, FrameReader, Msg, MAX_REQUEST};
use crate::zblock;
use crate::SwarmError;

impl Swarm {
    pub(super) async fn dial(&self, addr: SocketAddr) -> Result<(), SwarmError> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.shared.opts.bind_ip {
            if ip.is_ipv4() == addr.is_ipv4() {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
        }
        let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
            .await
            .map_err(|_| SwarmError::Timeout("connect"))??;
        self.run_peer(stream, addr, true, None).await
    }

    pub(super) async fn accept_loop(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let slot = match self.shared.limiter.admit(addr.ip()).await {
                        Ok(slot) => Some(slot),
                        Err(why) => {
                            debug!(peer = %addr, "connection refused: {why:?}");
                            continue;
                        }
                    };
                    let s = self.clone();
                    tokio::spawn(async move {
                        if let Some(g) = &s.shared.opts.gate {
                            if !g.admit(addr.ip()).await {
                                return; // closed before any handshake of ours
                            }
                        }
                        if let Err(e) = s.run_peer(stream, addr, false, slot).await {
                            debug!(peer = %addr, "incoming connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(conn_limit::ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    async fn run_peer(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        outgoing: bool,
        slot: Option<conn_limit::Slot>,
    ) -> Result<(), SwarmError> {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_or(true, |ours| {
            locality::same_site(ours.ip(), addr.ip(), self.shared.opts.site_prefix)
        });
        if self.shared.opts.prefer_unsent {
            // A write returns once the data is nearly all handed to the network, so that
            // the start-up turns in `writer` really take turns on the wire.
            let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(TURN_LOWAT);
        }
        if self.is_banned(addr.ip()) {
            return Err(SwarmError::Banned);
        }
        // The handshake is read unbuffered (read_exact: never past it); the 256 KiB read
        // buffer is for handshaken peers only, not for every socket a stranger opens.
        let (mut rd, mut wr) = stream.into_split();
        let info_hash = self.shared.info.info_hash;
        let hs = tokio::select! {
            _ = conn_limit::evicted(&slot) => return Err(SwarmError::Evicted),
            r = tokio::time::timeout(conn_limit::BT_HANDSHAKE_TIMEOUT, async {
                wire::write_handshake(&mut wr, info_hash, self.shared.peer_id, self.shared.opts.compress).await?;
                wire::read_handshake(&mut rd).await
            }) => r.map_err(|_| SwarmError::Timeout("handshake"))??,
        };
        slot.iter().for_each(|s| s.opened());
        let rd = tokio::io::BufReader::with_capacity(256 * 1024, rd);
        if hs.info_hash != info_hash {
            return Err(SwarmError::Protocol("peer offered another infohash".into()));
        }
        if hs.peer_id == self.shared.peer_id {
            return Err(SwarmError::Protocol("connected to ourselves".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let kill = Arc::new(Notify::new());
        let link = Link {
            tx,
            kill: kill.clone(),
            fast: hs.fast,
            addr,
            uploaded_to: Arc::new(AtomicU64::new(0)),
            backlog: Arc::new(Backlog::default()),
            zstd_id: Arc::new(AtomicU8::new(0)),
            closing: false,
        };
        let ends = WriterEnds::of(&link);
        let hello = Hello {
            addr,
            peer_id: hs.peer_id,
            fast: hs.fast,
            extended: hs.extended,
            outgoing,
            local,
        };
        let key = self.register(hello, link).await?;
        debug!(peer = %addr, client = %proto::client_name(&hs.peer_id), fast = hs.fast, extended = hs.extended, "peer connected");
        let writer = tokio::spawn(self.clone().writer(wr, rx, ends));
        let max_frame = 13 + MAX_REQUEST as usize + self.shared.lengths.piece_bitfield_bytes();
        let mut frames = FrameReader::new(rd, max_frame);
        let result = loop {
            tokio::select! {
                _ = kill.notified() => break Ok(()),
                _ = conn_limit::evicted(&slot) => break Err(SwarmError::Evicted),
                m = tokio::time::timeout(Duration::from_secs(150), frames.next()) => {
                    match m {
                        Err(_) => break Err(SwarmError::Timeout("peer silent for 150 s")),
                        Ok(Err(e)) => break Err(e.into()),
                        Ok(Ok(None)) => break Ok(()),
                        Ok(Ok(Some(msg))) => {
                            let zpiece = self.shared.opts.compress
                                && matches!(msg, Msg::Extended { id, .. } if id == zblock::OUR_ID);
                            if conn_limit::useful(&msg) || zpiece {
                                slot.iter().for_each(|s| s.touch());
                            }
                            let input = match msg {
                                Msg::Extended { payload, .. } if zpiece => self.zpiece(key, addr, &payload),
                                msg => Input::Message {
                                    key,
                                    msg,
                                    upload_queued: self.shared.queued.load(Ordering::Relaxed),
                                },
                            };
                            let bad = matches!(input, Input::BadZBlock { .. });
                            self.peer_input(input).await;
                            if bad {
                                break Err(SwarmError::Banned);
                            }
                        }
                    }
                }
            }
        };
        self.peer_input(Input::Disconnected { key }).await;
        writer.abort();
        result
    }
}
