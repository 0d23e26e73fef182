//! One message from a peer: what it tells us (what it has, whether it chokes us, what it
//! refuses or suggests), what it asks of us (requests, cancels), and the blocks it sends.

use std::time::Instant;

use tracing::debug;

use crate::admit::Verdict;
use crate::servable::Admit;
use crate::wire::{self, Msg, Req, BLOCK_SIZE, MAX_REQUEST};
use crate::zblock::{self, Form};
use crate::SwarmError;

use super::pieces::{count_holder, count_local, counts_local, join_local, leave_local, Block};
use super::{Action, Core, MAX_SUGGESTED};

/// A block's contents: its bytes, or (simulated) only its length.
pub(crate) enum Payload {
    Bytes(Vec<u8>),
    Modelled(u32),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Bytes(d) => d.len(),
            Payload::Modelled(n) => *n as usize,
        }
    }
}

impl Core {
    pub(crate) fn on_message(
        &mut self,
        now: Instant,
        key: u64,
        msg: Msg,
        upload_queued: u64,
    ) -> Result<(), SwarmError> {
        let n = self.lengths.total_pieces();
        match msg {
            Msg::KeepAlive | Msg::NotInterested | Msg::AllowedFast(_) | Msg::Interested => {}
            Msg::Suggest(i) => {
                // A blockswarm seeder that refused a request names a piece it has not sent
                // to anyone yet: asked for next, it will not be refused.
                let we_need = i < n && !self.have[i as usize];
                if let Some(p) = self.peers.get_mut(&key) {
                    if we_need && p.has[i as usize] && p.suggested.len() < MAX_SUGGESTED {
                        p.suggested.push_back(i);
                    }
                }
                self.fill_requests(now, key);
            }
            Msg::Other(id) => debug!(id, "ignoring unknown message"),
            Msg::Extended { id, payload } => {
                if id == zblock::HANDSHAKE_ID && self.cfg.compress {
                    if let Some(p) = self.peers.get_mut(&key) {
                        p.zstd_id = zblock::peer_id_for_zstd(&payload).unwrap_or(0);
                        self.out.push_back(Action::PeerZstd(key, p.zstd_id));
                    }
                } else {
                    debug!(id, "ignoring an extension message");
                }
            }
            Msg::Bitfield(b) => {
                let bits = wire::bitfield_to(&b, n as usize)?;
                self.set_has_all(now, key, Some(bits));
            }
            Msg::HaveAll => self.set_has_all(now, key, None),
            Msg::HaveNone => self.set_has_all(now, key, Some(vec![false; n as usize])),
            Msg::Have(i) => {
                if i >= n {
                    return Err(SwarmError::Protocol(format!("HAVE {i} beyond {n} pieces")));
                }
                let we_have = self.have[i as usize];
                self.upload_order.piece_done(key, i);
                if let Some(p) = self.peers.get_mut(&key) {
                    if !p.has[i as usize] {
                        let counted = counts_local(p, n as usize);
                        p.has[i as usize] = true;
                        p.has_count += 1;
                        if !we_have {
                            p.useful += 1;
                        }
                        count_holder(&mut self.availability, &mut self.held, i as usize, true);
                        if counted {
                            self.local_availability[i as usize] += 1;
                            if !counts_local(p, n as usize) {
                                // It became a seed.
                                count_local(&mut self.local_availability, &p.has, false);
                            }
                        }
                    }
                }
                self.update_interest(key);
                self.fill_requests(now, key);
            }
            Msg::Choke => {
                if let Some(p) = self.peers.get_mut(&key) {
                    leave_local(&mut self.local_availability, p, n as usize);
                    p.choked_us = true;
                    if !p.fast {
                        // Without the Fast extension a choke drops every pending request.
                        let pending: Vec<_> = p.inflight.keys().copied().collect();
                        for &(i, b) in &pending {
                            p.give_up(i, b);
                        }
                        for (i, b) in pending {
                            self.release_block(key, i, b);
                        }
                    }
                }
            }
            Msg::Unchoke => {
                if let Some(p) = self.peers.get_mut(&key) {
                    if p.choked_us {
                        // Choked, it did not count (`counts_local`); now it may.
                        p.choked_us = false;
                        join_local(&mut self.local_availability, p, n as usize);
                    }
                }
                self.fill_requests(now, key);
            }
            Msg::Request(r) => self.on_request(now, key, r, upload_queued),
            Msg::Cancel(r) => {
                if !self.upload_order.cancel(key, r) {
                    self.out.push_back(Action::CancelServe(key, r));
                }
            }
            Msg::Reject(r) => {
                if let Some(p) = self.peers.get_mut(&key) {
                    if p.inflight.remove(&(r.index, r.begin)).is_some() {
                        p.rejected.insert(r.index, now);
                        if p.has_count == n {
                            p.rationing = Some(now);
                        }
                        self.release_block(key, r.index, r.begin);
                        // A refused piece nothing arrived for yet must not hold a slot of
                        // `max_pieces_in_progress` while we wait to ask someone else.
                        if self
                            .in_progress
                            .get(&r.index)
                            .is_some_and(|ip| ip.untouched())
                        {
                            self.in_progress.remove(&r.index);
                        }
                    }
                }
                self.fill_requests(now, key);
            }
            Msg::Piece { index, begin, data } => {
                // From a `bs_zstd` peer, a plain block is one that does not compress.
                let form = self
                    .peers
                    .get(&key)
                    .is_some_and(|p| p.zstd_id != 0)
                    .then_some(Form::Raw);
                self.on_block(now, key, index, begin, Payload::Bytes(data), form)?
            }
        }
        Ok(())
    }

    /// A request for a block of ours: served, or refused (Fast REJECT; dropped for a peer
    /// without the Fast extension) when we lack it, it is malformed, or the seeder policy
    /// wants it fetched from the swarm.
    fn on_request(&mut self, now: Instant, key: u64, r: Req, upload_queued: u64) {
        let n = self.lengths.total_pieces();
        let ok = r.index < n
            && self.have[r.index as usize]
            && self.servable.admit(r.index, now) == Admit::Serve
            && r.length > 0
            && r.length <= MAX_REQUEST
            && r.begin as u64 + r.length as u64 <= self.piece_len(r.index) as u64;
        let Some(fast) = self.peers.get(&key).map(|p| p.fast) else {
            return;
        };
        self.upload_order.writers_report(upload_queued);
        // Once some peer holds every piece and our upload queue has run dry, a second
        // copy costs nothing: the link would be idle otherwise.
        let queued = self.upload_order.queued();
        let idle = self.held == n && queued < self.lengths.default_piece_length() as u64;
        let refuse = ok && fast && self.cfg.prefer_unsent && self.refuse(now, key, r.index, idle);
        if ok && !refuse {
            self.serve(key, r, fast);
        } else if fast {
            self.out.push_back(Action::Send(key, Msg::Reject(r)));
            self.rejects_sent += 1;
            // With a refusal of a piece's first block, suggest a piece nobody has been
            // sent yet (reserved for this peer), so the next request is not refused too.
            if refuse && r.begin == 0 {
                if let Some(j) = self.next_unassigned(key) {
                    self.out.push_back(Action::Send(key, Msg::Suggest(j)));
                }
            }
        }
    }

    /// Serves `r` now or holds it in the upload order (see `upload_order`); refused (like
    /// the writers' own bound) if the peer has too many held already.
    fn serve(&mut self, key: u64, r: Req, fast: bool) {
        if !self.cfg.order_uploads {
            self.out.push_back(Action::Serve(key, r));
            return;
        }
        match self.upload_order.offer(key, r) {
            Ok(Some(r)) => self.out.push_back(Action::Serve(key, r)),
            Ok(None) => self.release_uploads(),
            Err(r) if fast => {
                self.out.push_back(Action::Send(key, Msg::Reject(r)));
                self.rejects_sent += 1;
            }
            Err(_) => {}
        }
    }

    /// Hands the writers what the upload order releases.
    pub(crate) fn release_uploads(&mut self) {
        for (k, r) in self.upload_order.release() {
            self.out.push_back(Action::Serve(k, r));
        }
    }

    /// The peer has the pieces `bits` (None: all of them), replacing what we knew.
    fn set_has_all(&mut self, now: Instant, key: u64, bits: Option<Vec<bool>>) {
        let n = self.have.len();
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let bits = bits.unwrap_or_else(|| vec![true; n]);
        let mut useful = 0;
        for (i, (&had, &has)) in p.has.iter().zip(&bits).enumerate() {
            if has != had {
                count_holder(&mut self.availability, &mut self.held, i, has);
            }
            if has && !self.have[i] {
                useful += 1;
            }
        }
        leave_local(&mut self.local_availability, p, n);
        p.has_count = bits.iter().filter(|&&b| b).count() as u32;
        p.has = bits;
        join_local(&mut self.local_availability, p, n);
        p.useful = useful;
        self.update_interest(key);
        self.fill_requests(now, key);
        self.out.push_back(Action::Changed);
    }

    pub(crate) fn update_interest(&mut self, key: u64) {
        if let Some(p) = self.peers.get_mut(&key) {
            let want = p.useful > 0;
            if want != p.am_interested {
                p.am_interested = want;
                let m = if want {
                    Msg::Interested
                } else {
                    Msg::NotInterested
                };
                self.out.push_back(Action::Send(key, m));
            }
        }
    }

    /// A block from `key` (`form`: how it came, from a `bs_zstd` peer).
    pub(crate) fn on_block(
        &mut self,
        now: Instant,
        key: u64,
        index: u32,
        begin: u32,
        data: Payload,
        form: Option<Form>,
    ) -> Result<(), SwarmError> {
        let vi = self
            .lengths
            .validate_piece_index(index)
            .ok_or_else(|| SwarmError::Protocol(format!("block of piece {index} out of range")))?;
        if self
            .lengths
            .chunk_info_from_received_data(vi, begin, data.len() as u32)
            .is_none()
        {
            return Err(SwarmError::Protocol(format!(
                "block {index}+{begin} has a wrong length {}",
                data.len()
            )));
        }
        let Some(p) = self.peers.get_mut(&key) else {
            return Ok(());
        };
        let requested = p.inflight.remove(&(index, begin)).is_some();
        match p.admit.judge(requested, index, begin) {
            Verdict::Accept => {}
            Verdict::Late => return Ok(()),
            Verdict::Strike => {
                debug!(peer = %p.addr, piece = index, begin, strikes = p.admit.strikes(), "dropped a block we did not ask this peer for");
                return Ok(());
            }
            Verdict::Ban => {
                self.ban(key, "sends blocks nobody asked it for");
                return Err(SwarmError::Banned);
            }
        }
        p.downloaded_from += data.len() as u64;
        p.last_block = Some(now);
        p.rate.add(data.len() as u64, now);
        self.downloaded += data.len() as u64;
        let b = (begin / BLOCK_SIZE) as usize;
        let Some(ip) = self.in_progress.get_mut(&index) else {
            // Already have it, or verifying it, or never asked: a late end-game duplicate.
            self.fill_requests(now, key);
            return Ok(());
        };
        if ip.blocks[b] == Block::Received {
            self.fill_requests(now, key);
            return Ok(());
        }
        if let Payload::Bytes(d) = &data {
            if !ip.buf.is_empty() {
                ip.buf[begin as usize..begin as usize + d.len()].copy_from_slice(d);
            }
        }
        ip.blocks[b] = Block::Received;
        ip.received += 1;
        ip.from[b] = key;
        ip.forms[b] = form;
        let others: Vec<u64> = ip.requesters[b].drain(..).filter(|&k| k != key).collect();
        let done = ip.received as usize == ip.blocks.len();
        // End game: tell the other requesters of this block to stop.
        let length = data.len() as u32;
        for k in others {
            if let Some(p) = self.peers.get_mut(&k) {
                if p.give_up(index, begin) {
                    let r = Req {
                        index,
                        begin,
                        length,
                    };
                    self.out.push_back(Action::Send(k, Msg::Cancel(r)));
                }
            }
        }
        if done {
            let ip = self.in_progress.remove(&index).expect("present");
            self.verifying.insert(index, ip.contributors());
            self.out.push_back(Action::Verify {
                index,
                buf: ip.buf,
                forms: ip.forms,
            });
        }
        self.fill_requests(now, key);
        Ok(())
    }
}
