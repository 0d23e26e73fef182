//! The BitTorrent v1 peer wire protocol (BEP 3) with the Fast extension (BEP 6).
//!
//! Standard messages are parsed and serialized by `librqbit-peer-protocol`; the five Fast
//! extension messages (which that crate does not know) are handled here. Framing is ours so
//! that a frame's length is checked before it is buffered.

use bytes::{Buf, BytesMut};
use librqbit_core::hash_id::Id20;
use librqbit_peer_protocol::{Handshake, Message, Piece, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bit of the handshake's reserved field announcing the Fast extension (BEP 6).
pub const RESERVED_FAST: u64 = 0x04;
/// Bit of the handshake's reserved field announcing the extension protocol (BEP 10:
/// reserved byte 5, 0x10).
pub const RESERVED_EXTENDED: u64 = 0x10_0000;
/// Message id of the extension protocol's messages (BEP 10).
pub const ID_EXTENDED: u8 = 20;
/// Block size used for requests: 16 KiB, what every client expects.
pub const BLOCK_SIZE: u32 = 16 * 1024;
/// Largest block a peer may request from us.
pub const MAX_REQUEST: u32 = 128 * 1024;
const HANDSHAKE_LEN: usize = 68;

const ID_SUGGEST: u8 = 0x0D;
const ID_HAVE_ALL: u8 = 0x0E;
const ID_HAVE_NONE: u8 = 0x0F;
const ID_REJECT: u8 = 0x10;
const ID_ALLOWED_FAST: u8 = 0x11;

/// A block request (piece index, offset in piece, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Req {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

/// An owned peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Vec<u8>),
    Request(Req),
    Piece {
        index: u32,
        begin: u32,
        data: Vec<u8>,
    },
    Cancel(Req),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(Req),
    AllowedFast(u32),
    /// An extension-protocol message (BEP 10): its extended id and the rest.
    Extended {
        id: u8,
        payload: Vec<u8>,
    },
    /// A message id we do not handle (DHT port, ...): ignored.
    Other(u8),
}

/// A protocol violation or I/O failure on a peer connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad handshake: {0}")]
    Handshake(String),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Sends our handshake.
pub async fn write_handshake<W: AsyncWrite + Unpin>(
    w: &mut W,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    extended: bool,
) -> Result<(), WireError> {
    let h = Handshake {
        reserved: RESERVED_FAST | if extended { RESERVED_EXTENDED } else { 0 },
        info_hash: Id20::new(info_hash),
        peer_id: Id20::new(peer_id),
    };
    let mut buf = [0u8; HANDSHAKE_LEN];
    let n = h.serialize_unchecked_len(&mut buf);
    w.write_all(&buf[..n]).await?;
    w.flush().await?;
    Ok(())
}

/// The parts of a peer's handshake we use.
#[derive(Debug, Clone, Copy)]
pub struct PeerHandshake {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub fast: bool,
    /// It speaks the extension protocol (BEP 10).
    pub extended: bool,
}

/// Reads the peer's handshake.
pub async fn read_handshake<R: AsyncRead + Unpin>(r: &mut R) -> Result<PeerHandshake, WireError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    r.read_exact(&mut buf).await?;
    let (h, _) = Handshake::deserialize(&buf).map_err(|e| WireError::Handshake(e.to_string()))?;
    Ok(PeerHandshake {
        info_hash: h.info_hash.0,
        peer_id: h.peer_id.0,
        fast: h.reserved & RESERVED_FAST != 0,
        extended: h.reserved & RESERVED_EXTENDED != 0,
    })
}

fn req_from(b: &[u8]) -> Req {
    Req {
        index: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
        begin: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
        length: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
    }
}

/// Decodes one complete frame (length prefix included); a slice whose length prefix does
/// not match it is malformed.
pub fn decode_frame(frame: &[u8]) -> Result<Msg, WireError> {
    let Some((prefix, body)) = frame.split_first_chunk::<4>() else {
        return Err(WireError::Malformed(
            "frame shorter than a length prefix".into(),
        ));
    };
    if u32::from_be_bytes(*prefix) as usize != body.len() {
        return Err(WireError::Malformed(format!(
            "length prefix {} for {} bytes",
            u32::from_be_bytes(*prefix),
            body.len()
        )));
    }
    if body.is_empty() {
        return Ok(Msg::KeepAlive);
    }
    let id = frame[4];
    let payload = &frame[5..];
    let need = |n: usize| {
        if payload.len() == n {
            Ok(())
        } else {
            Err(WireError::Malformed(format!(
                "message {id} has {} payload bytes, expected {n}",
                payload.len()
            )))
        }
    };
    match id {
        ID_SUGGEST | ID_ALLOWED_FAST => {
            need(4)?;
            let i = u32::from_be_bytes(payload.try_into().expect("4 bytes"));
            Ok(if id == ID_SUGGEST {
                Msg::Suggest(i)
            } else {
                Msg::AllowedFast(i)
            })
        }
        ID_HAVE_ALL => need(0).map(|_| Msg::HaveAll),
        ID_HAVE_NONE => need(0).map(|_| Msg::HaveNone),
        ID_REJECT => {
            need(12)?;
            Ok(Msg::Reject(req_from(payload)))
        }
        ID_EXTENDED => match payload.split_first() {
            Some((&id, rest)) => Ok(Msg::Extended {
                id,
                payload: rest.to_vec(),
            }),
            None => Err(WireError::Malformed("empty extended message".into())),
        },
        0..=8 => {
            let (m, _) = Message::deserialize(frame, &[])
                .map_err(|e| WireError::Malformed(e.to_string()))?;
            Ok(match m {
                Message::KeepAlive => Msg::KeepAlive,
                Message::Choke => Msg::Choke,
                Message::Unchoke => Msg::Unchoke,
                Message::Interested => Msg::Interested,
                Message::NotInterested => Msg::NotInterested,
                Message::Have(i) => Msg::Have(i),
                Message::Bitfield(b) => Msg::Bitfield(b.as_ref().to_vec()),
                Message::Request(r) => Msg::Request(Req {
                    index: r.index,
                    begin: r.begin,
                    length: r.length,
                }),
                Message::Cancel(r) => Msg::Cancel(Req {
                    index: r.index,
                    begin: r.begin,
                    length: r.length,
                }),
                Message::Piece(p) => {
                    let (a, b) = p.data();
                    let mut data = Vec::with_capacity(a.len() + b.len());
                    data.extend_from_slice(a);
                    data.extend_from_slice(b);
                    Msg::Piece {
                        index: p.index,
                        begin: p.begin,
                        data,
                    }
                }
                // Not reached: id 20 is decoded above.
                Message::Extended(_) => Msg::Other(ID_EXTENDED),
            })
        }
        other => Ok(Msg::Other(other)),
    }
}

/// Appends the encoding of `m` to `out`.
pub fn encode(m: &Msg, out: &mut Vec<u8>) {
    let fixed = |out: &mut Vec<u8>, id: u8, payload: &[u8]| {
        out.extend_from_slice(&(1 + payload.len() as u32).to_be_bytes());
        out.push(id);
        out.extend_from_slice(payload);
    };
    let req_bytes = |r: &Req| {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&r.index.to_be_bytes());
        b[4..8].copy_from_slice(&r.begin.to_be_bytes());
        b[8..12].copy_from_slice(&r.length.to_be_bytes());
        b
    };
    let lib = match m {
        Msg::Suggest(i) => return fixed(out, ID_SUGGEST, &i.to_be_bytes()),
        Msg::AllowedFast(i) => return fixed(out, ID_ALLOWED_FAST, &i.to_be_bytes()),
        Msg::HaveAll => return fixed(out, ID_HAVE_ALL, &[]),
        Msg::HaveNone => return fixed(out, ID_HAVE_NONE, &[]),
        Msg::Reject(r) => return fixed(out, ID_REJECT, &req_bytes(r)),
        Msg::Extended { id, payload } => {
            out.extend_from_slice(&(2 + payload.len() as u32).to_be_bytes());
            out.push(ID_EXTENDED);
            out.push(*id);
            out.extend_from_slice(payload);
            return;
        }
        Msg::Other(_) => return,
        Msg::KeepAlive => Message::KeepAlive,
        Msg::Choke => Message::Choke,
        Msg::Unchoke => Message::Unchoke,
        Msg::Interested => Message::Interested,
        Msg::NotInterested => Message::NotInterested,
        Msg::Have(i) => Message::Have(*i),
        Msg::Bitfield(b) => Message::Bitfield(b.as_slice().into()),
        Msg::Request(r) => Message::Request(Request::new(r.index, r.begin, r.length)),
        Msg::Cancel(r) => Message::Cancel(Request::new(r.index, r.begin, r.length)),
        Msg::Piece { index, begin, data } => Message::Piece(Piece::from_data(*index, *begin, data)),
    };
    let start = out.len();
    let room = match m {
        Msg::Piece { data, .. } => data.len() + 13,
        Msg::Bitfield(b) => b.len() + 5,
        _ => 17,
    };
    out.resize(start + room, 0);
    let n = lib
        .serialize(&mut out[start..], &Default::default)
        .expect("buffer sized for the message");
    out.truncate(start + n);
}

/// The 13 bytes that precede a block of `len` bytes in a `piece` message (the block itself
/// follows): what [`encode`] writes for `Msg::Piece`, without copying the data.
pub fn piece_header(index: u32, begin: u32, len: u32) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0..4].copy_from_slice(&(9 + len).to_be_bytes());
    h[4] = 7;
    h[5..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

/// Reads framed messages from a stream, refusing frames above `max_frame` bytes.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// The next message; `Ok(None)` on a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Msg>, WireError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > self.max_frame {
                    return Err(WireError::TooLong(len));
                }
                if self.buf.len() >= 4 + len {
                    let msg = decode_frame(&self.buf[..4 + len]);
                    self.buf.advance(4 + len);
                    return msg.map(Some);
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// Bitfield helpers (BEP 3: bit 7 of byte 0 is piece 0).
pub fn bitfield_from(have: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; have.len().div_ceil(8)];
    for (i, &h) in have.iter().enumerate() {
        if h {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// Decodes a bitfield of `n` pieces; spare bits must be zero.
pub fn bitfield_to(bytes: &[u8], n: usize) -> Result<Vec<bool>, WireError> {
    if bytes.len() != n.div_ceil(8) {
        return Err(WireError::Malformed(format!(
            "bitfield of {} bytes for {n} pieces",
            bytes.len()
        )));
    }
    let v: Vec<bool> = (0..bytes.len() * 8)
        .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect();
    if v[n..].iter().any(|&b| b) {
        return Err(WireError::Malformed("spare bits set in bitfield".into()));
    }
    Ok(v[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let r = Req {
            index: 7,
            begin: 16384,
            length: 16384,
        };
        let msgs = vec![
            Msg::KeepAlive,
            Msg::Choke,
            Msg::Unchoke,
            Msg::Interested,
            Msg::NotInterested,
            Msg::Have(42),
            Msg::Bitfield(vec![0xff, 0x80]),
            Msg::Request(r),
            Msg::Cancel(r),
            Msg::Piece {
                index: 3,
                begin: 0,
                data: vec![1, 2, 3, 4, 5],
            },
            Msg::Suggest(9),
            Msg::HaveAll,
            Msg::HaveNone,
            Msg::Reject(r),
            Msg::AllowedFast(11),
            Msg::Extended {
                id: 0,
                payload: b"d1:md7:bs_zstdi1eee".to_vec(),
            },
            Msg::Extended {
                id: 3,
                payload: vec![],
            },
        ];
        for m in msgs {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            assert_eq!(decode_frame(&buf).unwrap(), m, "{m:?}");
        }
    }

    #[test]
    fn piece_header_matches_the_encoder() {
        let data = vec![9u8; 300];
        let mut buf = Vec::new();
        encode(
            &Msg::Piece {
                index: 5,
                begin: 32768,
                data: data.clone(),
            },
            &mut buf,
        );
        let mut ours = piece_header(5, 32768, 300).to_vec();
        ours.extend_from_slice(&data);
        assert_eq!(ours, buf);
    }

    #[test]
    fn extended_messages_follow_bep10() {
        let mut buf = Vec::new();
        encode(
            &Msg::Extended {
                id: 1,
                payload: vec![9],
            },
            &mut buf,
        );
        assert_eq!(buf, [0, 0, 0, 3, 20, 1, 9]);
        assert!(decode_frame(&[0, 0, 0, 1, 20]).is_err(), "no extended id");
        // Slices that are not one whole frame are refused, not a panic.
        for bad in [
            &[][..],
            &[0, 0, 0],
            &[0, 0, 0, 1],
            &[0, 0, 0, 9, 4, 0],
            &[0, 0, 0, 0, 1],
        ] {
            assert!(decode_frame(bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode_frame(&[0, 0, 0, 0]).unwrap(), Msg::KeepAlive);
        // Reserved byte 5, bit 0x10, in the big-endian reserved field.
        assert_eq!(RESERVED_EXTENDED.to_be_bytes()[5], 0x10);
        assert_eq!(RESERVED_FAST.to_be_bytes()[7], 0x04);
    }

    #[test]
    fn fast_extension_ids_match_bep6() {
        let mut buf = Vec::new();
        encode(&Msg::HaveAll, &mut buf);
        assert_eq!(buf, [0, 0, 0, 1, 0x0E]);
        buf.clear();
        encode(&Msg::HaveNone, &mut buf);
        assert_eq!(buf, [0, 0, 0, 1, 0x0F]);
    }

    #[test]
    fn bitfield_bits_are_msb_first_and_spare_bits_checked() {
        let have = [true, false, false, false, false, false, false, false, true];
        let b = bitfield_from(&have);
        assert_eq!(b, vec![0x80, 0x80]);
        assert_eq!(bitfield_to(&b, 9).unwrap(), have);
        assert!(bitfield_to(&[0x80, 0x40], 9).is_err());
        assert!(bitfield_to(&[0x80], 9).is_err());
    }

    #[tokio::test]
    async fn frame_reader_splits_stream_and_limits_size() {
        let mut bytes = Vec::new();
        encode(&Msg::Have(1), &mut bytes);
        encode(&Msg::Unchoke, &mut bytes);
        let mut fr = FrameReader::new(&bytes[..], 1024);
        assert_eq!(fr.next().await.unwrap(), Some(Msg::Have(1)));
        assert_eq!(fr.next().await.unwrap(), Some(Msg::Unchoke));
        assert_eq!(fr.next().await.unwrap(), None);
        let huge = 1_000_000u32.to_be_bytes();
        let mut fr = FrameReader::new(&huge[..], 1024);
        assert!(matches!(fr.next().await, Err(WireError::TooLong(_))));
    }
}
