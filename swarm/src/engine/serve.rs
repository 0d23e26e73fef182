//! The serving side of a connection: its writer task sends queued messages and serves
//! block requests from storage. Before a piece's blocks are read, [`Servable`] decides how:
//! pieces this node did not hash itself (a seeder's source) are SHA-1-checked on first serve,
//! an unreadable piece is refused (Fast REJECT; dropped for a peer without the Fast
//! extension) instead of stopping the node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use super::{Out, Shared, Swarm, MAX_BATCH};
use crate::backlog::Backlog;
use crate::proto::Input;
use crate::servable::{Checked, Outcome, ReadPlan};
use crate::wire::{self, Msg, Req, MAX_REQUEST};
use crate::zblock::{self, Form};

/// A stored piece that does not match the manifest's hash (found on first serve).
#[derive(Debug, Clone)]
pub struct CorruptPiece {
    pub index: u32,
    /// Its range in the packed stream.
    pub packed: std::ops::Range<u64>,
    /// Where it starts on the storage (e.g. "device offset N of /dev/sda1").
    pub location: String,
}

/// One connection's requests waiting to be served, and its inbox. Their bytes count in
/// `Shared::queued` from when the actor sends them (see `actor`) until written, cancelled,
/// or the writer ends (even by abort: what is still in the inbox then is counted off too).
struct ServeQueue {
    rx: mpsc::UnboundedReceiver<Out>,
    reqs: VecDeque<Req>,
    /// Bytes of this queue's requests not yet written (including a batch being written).
    bytes: u64,
    shared: Arc<Shared>,
}

impl ServeQueue {
    fn push(&mut self, r: Req) {
        self.bytes += r.length as u64;
        self.reqs.push_back(r);
    }

    /// Drops queued requests equal to `r`; returns how many, and what `written` returns.
    fn cancel(&mut self, r: Req) -> (usize, Option<u64>) {
        let before = self.reqs.len();
        self.reqs.retain(|q| *q != r);
        let n = before - self.reqs.len();
        (n, self.written(n as u64 * r.length as u64))
    }

    /// `n` bytes left the queue (written or cancelled). Some(bytes left in all queues) if
    /// that took them below the core's `release_below`: the actor must be told.
    fn written(&mut self, n: u64) -> Option<u64> {
        self.bytes -= n;
        let before = self.shared.queued.fetch_sub(n, Ordering::SeqCst);
        let below = self.shared.release_below.load(Ordering::SeqCst);
        (before >= below && before - n < below).then_some(before - n)
    }
}

impl Drop for ServeQueue {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(out) = self.rx.try_recv() {
            if let Out::Serve(r) = out {
                self.bytes += r.length as u64;
            }
        }
        self.shared.queued.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Abandons a first-serve check when dropped before it reported.
struct CheckGuard<'a> {
    swarm: &'a Swarm,
    index: u32,
    armed: bool,
}

impl Drop for CheckGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let index = self.index;
            // Waiters look again once the actor has taken it.
            self.swarm.with(move |a| {
                a.node.core.servable.check_abandoned(index);
                a.swarm.shared.checked.notify_waiters();
            });
        }
    }
}

/// The writer's ends of a connection's [`super::Link`].
pub(super) struct WriterEnds {
    pub(super) fast: bool,
    pub(super) kill: Arc<Notify>,
    pub(super) uploaded_to: Arc<AtomicU64>,
    pub(super) backlog: Arc<Backlog>,
    pub(super) zstd_id: Arc<std::sync::atomic::AtomicU8>,
}

impl WriterEnds {
    pub(super) fn of(link: &super::Link) -> WriterEnds {
        WriterEnds {
            fast: link.fast,
            kill: link.kill.clone(),
            uploaded_to: link.uploaded_to.clone(),
            backlog: link.backlog.clone(),
            zstd_id: link.zstd_id.clone(),
        }
    }
}

impl Swarm {
    pub(super) async fn writer(
        self,
        wr: tokio::net::tcp::OwnedWriteHalf,
        rx: mpsc::UnboundedReceiver<Out>,
        ends: WriterEnds,
    ) {
        let WriterEnds {
            fast,
            kill,
            uploaded_to,
            backlog,
            zstd_id,
        } = ends;
        let mut wr = tokio::io::BufWriter::with_capacity(256 * 1024, wr);
        let mut queue = ServeQueue {
            rx,
            reqs: VecDeque::new(),
            bytes: 0,
            shared: self.shared.clone(),
        };
        let mut buf = Vec::with_capacity(MAX_REQUEST as usize + 64);
        let keepalive = Duration::from_secs(60);
        'outer: loop {
            // Control messages first, then one queued block, then wait.
            loop {
                match queue.rx.try_recv() {
                    Ok(Out::Msg(m)) => {
                        buf.clear();
                        wire::encode(&m, &mut buf);
                        backlog.msg_done(buf.len());
                        if wr.write_all(&buf).await.is_err() {
                            break 'outer;
                        }
                    }
                    Ok(Out::Serve(r)) => queue.push(r),
                    Ok(Out::Cancel(r)) => {
                        backlog.msg_done(crate::backlog::encoded_len(&Msg::Cancel(r)) as usize);
                        let (n, left) = queue.cancel(r);
                        backlog.requests_done(n);
                        self.drained(left);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'outer,
                }
            }
            if let Some(first) = queue.reqs.pop_front() {
                // Consecutive requests for the same piece are read with one pread.
                let mut batch = vec![first];
                let mut end = first.begin + first.length;
                while let Some(q) = queue.reqs.front() {
                    if q.index != first.index || q.begin != end || end - first.begin >= MAX_BATCH {
                        break;
                    }
                    end += q.length;
                    batch.push(queue.reqs.pop_front().expect("front"));
                }
                let Some(data) = self.read_batch(first, end).await else {
                    // Refused: unreadable, or the source does not match the manifest.
                    for r in batch {
                        if fast {
                            buf.clear();
                            wire::encode(&Msg::Reject(r), &mut buf);
                            if wr.write_all(&buf).await.is_err() {
                                break 'outer;
                            }
                        }
                        self.drained(queue.written(r.length as u64));
                        backlog.requests_done(1);
                    }
                    continue;
                };
                // Seeder start-up: until every peer holds a couple of pieces to trade, one
                // connection at a time sends a whole batch, so the first pieces arrive
                // after a piece's time on the wire instead of all of them after N times.
                let data = bytes::Bytes::from(data);
                let zid = zstd_id.load(Ordering::Relaxed);
                let forms = if zid != 0 {
                    self.forms_for(&batch, data.clone()).await
                } else {
                    Vec::new()
                };
                let turn = if self.shared.opts.prefer_unsent
                    && self.shared.ramping.load(Ordering::Relaxed)
                {
                    self.shared.turns.acquire().await.ok()
                } else {
                    None
                };
                for (k, r) in batch.into_iter().enumerate() {
                    let at = (r.begin - first.begin) as usize;
                    let sent = match forms.get(k) {
                        Some(Form::Zstd(frame)) => {
                            self.throttle(frame.len() as u64).await;
                            let h = zblock::header(zid, r.index, r.begin, r.length, frame.len());
                            wr.write_all(&h).await.is_ok() && wr.write_all(frame).await.is_ok()
                        }
                        _ => {
                            self.throttle(r.length as u64).await;
                            let header = wire::piece_header(r.index, r.begin, r.length);
                            wr.write_all(&header).await.is_ok()
                                && wr
                                    .write_all(&data[at..at + r.length as usize])
                                    .await
                                    .is_ok()
                        }
                    };
                    if !sent {
                        break 'outer;
                    }
                    uploaded_to.fetch_add(r.length as u64, Ordering::Relaxed);
                    self.shared
                        .uploaded
                        .fetch_add(r.length as u64, Ordering::Relaxed);
                    self.drained(queue.written(r.length as u64));
                    backlog.requests_done(1);
                }
                if turn.is_some() && wr.flush().await.is_err() {
                    break;
                }
                drop(turn);
                continue;
            }
            if wr.flush().await.is_err() {
                break;
            }
            match tokio::time::timeout(keepalive, queue.rx.recv()).await {
                Ok(Some(Out::Msg(m))) => {
                    buf.clear();
                    wire::encode(&m, &mut buf);
                    backlog.msg_done(buf.len());
                    if wr.write_all(&buf).await.is_err() {
                        break;
                    }
                }
                Ok(Some(Out::Serve(r))) => queue.push(r),
                Ok(Some(Out::Cancel(r))) => {
                    backlog.msg_done(crate::backlog::encoded_len(&Msg::Cancel(r)) as usize);
                    let (n, left) = queue.cancel(r);
                    backlog.requests_done(n);
                    self.drained(left);
                }
                Ok(None) => break,
                Err(_) => {
                    buf.clear();
                    wire::encode(&Msg::KeepAlive, &mut buf);
                    if wr.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = wr.flush().await;
        kill.notify_one();
    }

    /// Tells the actor our writers' queue went below the core's `release_below`.
    fn drained(&self, left: Option<u64>) {
        if let Some(upload_queued) = left {
            self.input(Input::UploadDrained { upload_queued });
        }
    }

    /// Reads packed bytes `first.begin..end` of `first.index` for serving, checking the
    /// piece first if this node has not hashed it yet. None: refuse these requests.
    async fn read_batch(&self, first: Req, end: u32) -> Option<Vec<u8>> {
        let index = first.index;
        let plan = loop {
            let notified = self.shared.checked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let plan = self
                .query(move |a| a.node.core.servable.plan_read(index, Instant::now()))
                .await;
            if plan != ReadPlan::Wait {
                break plan;
            }
            notified.await;
        };
        let storage = self.shared.storage.clone();
        let piece_start = index as u64 * self.shared.info.piece_length as u64;
        match plan {
            ReadPlan::Refuse | ReadPlan::Wait => None,
            ReadPlan::Plain | ReadPlan::Retry => {
                let offset = piece_start + first.begin as u64;
                let len = (end - first.begin) as usize;
                let read = tokio::task::spawn_blocking(move || {
                    let mut data = vec![0u8; len];
                    storage.read_at(offset, &mut data).map(|_| data)
                })
                .await;
                match read {
                    Ok(Ok(d)) => {
                        if plan == ReadPlan::Retry {
                            self.with(move |a| a.node.core.servable.read_ok(index));
                        }
                        Some(d)
                    }
                    Ok(Err(e)) => {
                        let outcome = self
                            .query(move |a| a.node.core.servable.read_failed(index, Instant::now()))
                            .await;
                        self.report(index, outcome, Some(&e));
                        None
                    }
                    Err(_) => None,
                }
            }
            ReadPlan::Check => {
                // If this task is aborted (its peer left) while reading, another server of
                // the piece must not wait for this check forever.
                let mut guard = CheckGuard {
                    swarm: self,
                    index,
                    armed: true,
                };
                let len = self.piece_len(index);
                let expected = self.shared.info.piece_hashes[index as usize];
                let read = tokio::task::spawn_blocking(move || {
                    let mut piece = vec![0u8; len];
                    storage.read_at(piece_start, &mut piece)?;
                    let digest: [u8; 20] = Sha1::digest(&piece).into();
                    Ok::<_, std::io::Error>((digest == expected, piece))
                })
                .await;
                let (checked, result) = match read {
                    Ok(Ok((true, piece))) => (Checked::Match, Ok(piece)),
                    Ok(Ok((false, _))) => (Checked::Mismatch, Err(None)),
                    Ok(Err(e)) => (Checked::ReadFailed, Err(Some(e))),
                    Err(_) => (Checked::ReadFailed, Err(None)),
                };
                guard.armed = false;
                let outcome = self
                    .query(move |a| {
                        a.node
                            .core
                            .servable
                            .check_done(index, checked, Instant::now())
                    })
                    .await;
                self.shared.checked.notify_waiters();
                match (outcome, result) {
                    (Outcome::Serve, Ok(piece)) => {
                        Some(piece[first.begin as usize..end as usize].to_vec())
                    }
                    (o, r) => {
                        self.report(index, o, r.err().flatten().as_ref());
                        None
                    }
                }
            }
        }
    }

    fn piece_len(&self, index: u32) -> usize {
        let l = &self.shared.lengths;
        l.piece_length(l.validate_piece_index(index).expect("a piece we have")) as usize
    }

    /// Logs an unreadable piece once; records a corrupt one for the node to stop on.
    fn report(&self, index: u32, outcome: Outcome, e: Option<&std::io::Error>) {
        let start = index as u64 * self.shared.info.piece_length as u64;
        let packed = start..start + self.piece_len(index) as u64;
        match outcome {
            Outcome::Unreadable { first: true } => warn!(
                piece = index,
                "piece {index} (packed bytes {}..{}) is unreadable, refusing it to peers: {}",
                packed.start,
                packed.end,
                e.map_or_else(|| "read task failed".to_string(), |e| e.to_string())
            ),
            Outcome::Unreadable { first: false } | Outcome::Serve => {}
            Outcome::Corrupt => {
                let location = self.shared.storage.locate(start);
                debug!(piece = index, %location, "stored piece does not match its SHA-1");
                let corrupt = CorruptPiece {
                    index,
                    packed,
                    location,
                };
                self.with(move |a| {
                    if a.node.corrupt.is_none() {
                        a.node.corrupt = Some(corrupt);
                        a.dirty = true;
                    }
                });
            }
        }
    }
}
