//! How bytes move: a message's path (host uplink, switch uplinks, host downlink), blocks
//! queued hop by hop, control messages ahead of them, ACKs, a cancelled block taken back.

use blockswarm_swarm::backlog::encoded_len;
use blockswarm_swarm::proto::Input;
use blockswarm_swarm::wire::{Msg, Req};

use super::{Content, Ev, Packet, Sim};
use crate::net::{acks_for, on_wire};
use crate::topology::Role;

impl Sim {
    fn path(&self, from: usize, to: usize) -> ([usize; 4], u8) {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        let (sa, sb) = (self.p.switch_of(from), self.p.switch_of(to));
        if sa == sb {
            ([a.up, b.down, 0, 0], 2)
        } else {
            ([a.up, self.sw_hops[sa].0, self.sw_hops[sb].1, b.down], 4)
        }
    }

    pub(super) fn send(&mut self, i: usize, key: u64, content: Content) {
        let Some(&(j, jk, _)) = self.nodes[i].conns.get(&key) else {
            return;
        };
        let payload = match &content {
            Content::Msg(m) => {
                if let Msg::Request(r) = m {
                    if !self.nodes[j].core.have_bits()[r.index as usize] {
                        self.bad_requests += 1;
                    }
                }
                encoded_len(m)
            }
            Content::Block(r) => {
                if self.nodes[i].role == Role::Seeder {
                    self.seeder_block_bytes += r.length as u64;
                    self.trace_seeder_block(r.index, r.begin, r.length as u64);
                }
                self.nodes[i].queued += r.length as u64;
                13 + r.length as u64
            }
        };
        let (path, len) = self.path(i, j);
        let data = matches!(content, Content::Block(_));
        let wire = on_wire(payload);
        let id = self.next_packet;
        self.next_packet += 1;
        let ctrl_at = (!data).then(|| {
            // A control message is not queued packet by packet (a room sends millions of
            // HAVEs): it goes ahead of blocks, so it takes its own time on each hop, and
            // its bytes are charged to each hop's next block. In order per connection.
            let mut t = self.now;
            for &h in &path[..len as usize] {
                let hop = &mut self.hops[h];
                hop.bytes += wire;
                hop.debt += wire;
                t += hop.time_ns(wire) + hop.latency_ns;
            }
            let last = self.ctrl_last.entry((i, key)).or_insert(0);
            *last = t.max(*last + 1);
            *last
        });
        self.packets.insert(
            id,
            Packet {
                from: i,
                to: j,
                to_key: jk,
                from_key: key,
                content,
                wire,
                path,
                len,
                pos: if data { 0 } else { len - 1 },
            },
        );
        match ctrl_at {
            Some(t) => self.at(t, Ev::Arrive(id)),
            None => self.enqueue(path[0], id),
        }
    }

    fn enqueue(&mut self, h: usize, id: u64) {
        let hop = &mut self.hops[h];
        hop.data.push_back(id);
        if !hop.busy {
            self.start_next(h);
        }
    }

    fn start_next(&mut self, h: usize) {
        let Some(id) = self.hops[h].take_next() else {
            self.hops[h].busy = false;
            return;
        };
        let wire = self.packets.get(&id).map_or(0, |p| p.wire);
        let hop = &mut self.hops[h];
        hop.busy = true;
        hop.bytes += wire;
        // Control bytes sent meanwhile delay this block.
        let t = self.now + hop.time_ns(wire + hop.debt);
        hop.debt = 0;
        hop.serving = Some(id);
        self.at(t, Ev::HopDone(h));
    }

    pub(super) fn hop_done(&mut self, h: usize) {
        let id = self.hops[h].serving.take().expect("a packet in service");
        let lat = self.hops[h].latency_ns;
        let mut drained = None;
        if let Some(p) = self.packets.get(&id) {
            if p.pos == 0 {
                if let Content::Block(r) = &p.content {
                    let from = p.from;
                    self.nodes[from].queued -= r.length as u64;
                    self.nodes[from].uploaded += r.length as u64;
                    drained = Some(from);
                }
            }
        }
        // The writers' queue fell below what the core wants: it releases more.
        if let Some(i) = drained {
            let node = &self.nodes[i];
            if node.alive
                && node
                    .core
                    .upload_release_below()
                    .is_some_and(|b| node.queued < b)
            {
                let upload_queued = node.queued;
                self.feed(i, None, Input::UploadDrained { upload_queued });
            }
        }
        self.at(self.now + lat, Ev::Arrive(id));
        self.start_next(h);
    }

    pub(super) fn arrive(&mut self, id: u64) {
        let Some(p) = self.packets.get_mut(&id) else {
            return;
        };
        p.pos += 1;
        if p.pos < p.len {
            let h = p.path[p.pos as usize];
            self.enqueue(h, id);
            return;
        }
        let p = self.packets.remove(&id).expect("present");
        let (to, key) = (p.to, p.to_key);
        let alive = self.nodes[to].alive
            && self.nodes[to]
                .conns
                .get(&key)
                .is_some_and(|&(f, fk, _)| f == p.from && fk == p.from_key);
        if !alive {
            return;
        }
        let input = match p.content {
            Content::Msg(msg) => Input::Message {
                key,
                msg,
                upload_queued: self.nodes[to].queued,
            },
            Content::Block(r) => {
                self.ack(to, p.wire);
                Input::ModelledBlock {
                    key,
                    index: r.index,
                    begin: r.begin,
                    len: r.length,
                }
            }
        };
        self.feed(to, Some(key), input);
    }

    /// The receiver's ACKs take their bytes on its uplink (charged to its next block).
    fn ack(&mut self, at: usize, wire: u64) {
        let hop = &mut self.hops[self.nodes[at].up];
        let a = acks_for(wire);
        hop.bytes += a;
        hop.debt += a;
    }

    /// Drops a block still waiting on the server's uplink for a request it cancelled.
    pub(super) fn cancel_serve(&mut self, i: usize, key: u64, r: Req) {
        let up = self.nodes[i].up;
        let packets = &self.packets;
        let pos = self.hops[up].data.iter().position(|id| {
            packets.get(id).is_some_and(|p| {
                p.from_key == key && matches!(&p.content, Content::Block(q) if *q == r)
            })
        });
        if let Some(pos) = pos {
            let id = self.hops[up].data.remove(pos).expect("present");
            self.packets.remove(&id);
            self.nodes[i].queued -= r.length as u64;
            if self.nodes[i].role == Role::Seeder {
                self.seeder_block_bytes -= r.length as u64;
            }
        }
    }
}
