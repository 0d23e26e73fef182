//! The engine's side of `bs_zstd` (the format and the cache are in `zblock`): receiving a
//! compressed block, keeping the forms of a verified piece, and choosing each served block's
//! form (kept, or compressed here once).

use std::net::SocketAddr;

use bytes::Bytes;
use tracing::warn;

use super::Swarm;
use crate::proto::Input;
use crate::wire::Req;
use crate::zblock::{self, Form};

impl Swarm {
    /// A `bs_zstd` message from `key`: decompressed here, on the connection's reader
    /// (bounded by the length it claims, at most one block), then handled as a block. A
    /// frame that does not decompress to what it claims is a lie: the peer is banned.
    pub(super) fn zpiece(&self, key: u64, addr: SocketAddr, payload: &[u8]) -> Input {
        let z = match zblock::decode(payload) {
            Ok(z) => z,
            Err(e) => {
                warn!(peer = %addr, "bad compressed block: {e}");
                return Input::BadZBlock { key };
            }
        };
        {
            let mut zs = self.shared.zstats.lock().expect("zstats lock");
            zs.received_blocks += 1;
            zs.received_raw_bytes += z.data.len() as u64;
            zs.received_frame_bytes += z.frame.len() as u64;
        }
        Input::ZBlock {
            key,
            index: z.index,
            begin: z.begin,
            data: z.data,
            frame: z.frame,
        }
    }

    /// A piece passed its SHA-1: the forms its blocks came in may be served again.
    pub(super) fn keep_forms(&self, index: u32, forms: Vec<Option<Form>>) {
        if !self.shared.opts.compress {
            return;
        }
        let mut cache = self.shared.forms.lock().expect("forms lock");
        for (b, f) in forms.into_iter().enumerate() {
            if let Some(f) = f {
                cache.insert(index, b as u32 * crate::wire::BLOCK_SIZE, f);
            }
        }
    }

    /// How to send each request of a batch to a `bs_zstd` peer (`data`: the batch's raw
    /// bytes from `first.begin`). Kept forms are reused; the others are compressed on the
    /// blocking pool (every core) and kept. Only full standard blocks are kept (every peer
    /// asks for those).
    pub(super) async fn forms_for(&self, batch: &[Req], data: Bytes) -> Vec<Form> {
        let first = batch[0].begin;
        let mut out: Vec<Option<Form>> = {
            let cache = self.shared.forms.lock().expect("forms lock");
            batch
                .iter()
                .map(|r| {
                    self.standard_block(r)
                        .then(|| cache.get(r.index, r.begin).cloned())
                        .flatten()
                })
                .collect()
        };
        let todo: Vec<(usize, usize, usize)> = out
            .iter()
            .zip(batch)
            .enumerate()
            .filter(|(_, (f, _))| f.is_none())
            .map(|(k, (_, r))| {
                let at = (r.begin - first) as usize;
                (k, at, at + r.length as usize)
            })
            .collect();
        if !todo.is_empty() {
            let d = data.clone();
            let jobs = todo.clone();
            let storage = self.shared.storage.clone();
            let piece_start = batch[0].index as u64 * self.shared.info.piece_length as u64;
            let made = tokio::task::spawn_blocking(move || {
                jobs.iter()
                    .map(|&(_, a, b)| {
                        // A compressed image keeps its frames: no need to compress again.
                        match storage
                            .stored_form(piece_start + first as u64 + a as u64, (b - a) as u32)
                        {
                            Some(f) => (f, false),
                            None => (
                                zblock::compress(&d[a..b]).map_or(Form::Raw, Form::Zstd),
                                true,
                            ),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_else(|_| vec![(Form::Raw, false); todo.len()]);
            let mut cache = self.shared.forms.lock().expect("forms lock");
            let mut zs = self.shared.zstats.lock().expect("zstats lock");
            for (&(k, _, _), (f, here)) in todo.iter().zip(made) {
                let r = &batch[k];
                zs.compressed_here += here as u64;
                if self.standard_block(r) {
                    cache.insert(r.index, r.begin, f.clone());
                }
                out[k] = Some(f);
            }
        }
        let mut zs = self.shared.zstats.lock().expect("zstats lock");
        out.into_iter()
            .zip(batch)
            .map(|(f, r)| {
                let f = f.unwrap_or(Form::Raw);
                match &f {
                    Form::Raw => zs.raw_blocks += 1,
                    Form::Zstd(frame) => {
                        zs.sent_blocks += 1;
                        zs.sent_raw_bytes += r.length as u64;
                        zs.sent_frame_bytes += frame.len() as u64;
                    }
                }
                f
            })
            .collect()
    }

    /// A request for exactly the block at `begin` that every client asks for (the check
    /// `on_block` makes of a received block).
    fn standard_block(&self, r: &Req) -> bool {
        let l = &self.shared.lengths;
        l.validate_piece_index(r.index)
            .and_then(|vi| l.chunk_info_from_received_data(vi, r.begin, r.length))
            .is_some()
    }
}
