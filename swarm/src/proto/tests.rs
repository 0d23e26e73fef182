//! The core on its own: events in, actions out, no sockets and no real time.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use librqbit_core::lengths::Lengths;

use super::*;
use crate::wire::{Msg, Req, BLOCK_SIZE};

const PIECE: u32 = 4 * BLOCK_SIZE;

fn cfg(id: u8, prefer_unsent: bool) -> Config {
    Config {
        our_id: [id; 20],
        pipeline_blocks: 64,
        request_queue_time: Duration::from_millis(100),
        max_pieces_in_progress: 16,
        max_peers: 128,
        dial_peers: 32,
        request_timeout: Duration::from_secs(20),
        prefer_unsent,
        trust_initial_pieces: true,
        compress: false,
        carry_data: false,
        order_uploads: false,
    }
}

fn core(pieces: u32, have: bool, prefer_unsent: bool) -> Core {
    let l = Lengths::new(pieces as u64 * PIECE as u64, PIECE).unwrap();
    Core::new(cfg(0, prefer_unsent), l, vec![have; pieces as usize], 7)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, i), 6881))
}

fn hello(i: u8) -> Hello {
    Hello {
        addr: addr(i),
        peer_id: [i; 20],
        fast: true,
        extended: false,
        outgoing: false,
        local: true,
    }
}

fn drain(c: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn msg(c: &mut Core, now: Instant, key: u64, m: Msg) -> Vec<Action> {
    c.handle(
        now,
        Input::Message {
            key,
            msg: m,
            upload_queued: 1 << 30,
        },
    )
    .expect("accepted");
    drain(c)
}

fn requests(actions: &[Action]) -> Vec<(u64, Req)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(k, Msg::Request(r)) => Some((*k, *r)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_receiver_asks_only_for_pieces_the_peer_has_rarest_first() {
    let t = Instant::now();
    let mut c = core(8, false, false);
    let a = c.connect(t, hello(1), || false).unwrap();
    let b = c.connect(t, hello(2), || false).unwrap();
    drain(&mut c);
    // a has pieces 2 and 5; b has 5 only: piece 2 is the rarer.
    let mut bits = vec![false; 8];
    bits[2] = true;
    bits[5] = true;
    msg(&mut c, t, b, Msg::Have(5));
    msg(&mut c, t, b, Msg::Unchoke);
    let mut acts = msg(
        &mut c,
        t,
        a,
        Msg::Bitfield(crate::wire::bitfield_from(&bits)),
    );
    acts.extend(msg(&mut c, t, a, Msg::Unchoke));
    let reqs = requests(&acts);
    assert!(!reqs.is_empty());
    for (k, r) in &reqs {
        assert_eq!(*k, a);
        assert!(r.index == 2 || r.index == 5, "{r:?}");
    }
    assert_eq!(reqs[0].1.index, 2, "the rarer piece first");
}

#[test]
fn a_seeder_refuses_a_second_copy_and_suggests_an_unsent_piece() {
    let t = Instant::now();
    let mut c = core(8, true, true);
    let a = c.connect(t, hello(1), || false).unwrap();
    let b = c.connect(t, hello(2), || false).unwrap();
    drain(&mut c);
    for k in [a, b] {
        msg(&mut c, t, k, Msg::HaveNone);
    }
    let r = Req {
        index: 3,
        begin: 0,
        length: BLOCK_SIZE,
    };
    let acts = msg(&mut c, t, a, Msg::Request(r));
    assert!(matches!(acts[..], [Action::Serve(k, q)] if k == a && q == r));
    let acts = msg(&mut c, t, b, Msg::Request(r));
    assert!(matches!(acts[0], Action::Send(k, Msg::Reject(q)) if k == b && q == r));
    let Action::Send(_, Msg::Suggest(j)) = acts[1] else {
        panic!("{acts:?}")
    };
    assert_ne!(j, 3);
    // The suggested piece is b's: asked for, it is served.
    let rj = Req { index: j, ..r };
    let acts = msg(&mut c, t, b, Msg::Request(rj));
    assert!(matches!(acts[..], [Action::Serve(k, _)] if k == b));
    // Past the refusal window the asker is served (the holder may not share).
    let later = t + REJECT_WINDOW + Duration::from_millis(1);
    msg(&mut c, t + Duration::from_secs(1), b, Msg::Request(r));
    let acts = msg(&mut c, later, b, Msg::Request(r));
    assert!(
        matches!(acts[..], [Action::Serve(k, _)] if k == b),
        "{acts:?}"
    );
}

#[test]
fn unsolicited_blocks_get_a_peer_banned_and_its_address_refused() {
    let t = Instant::now();
    let mut c = core(4, false, false);
    let a = c.connect(t, hello(1), || false).unwrap();
    drain(&mut c);
    let block = |c: &mut Core| {
        c.handle(
            t,
            Input::ModelledBlock {
                key: a,
                index: 1,
                begin: 0,
                len: BLOCK_SIZE,
            },
        )
    };
    for _ in 0..crate::admit::MAX_STRIKES {
        block(&mut c).expect("a strike, not yet a ban");
    }
    assert!(matches!(block(&mut c), Err(SwarmError::Banned)));
    assert!(drain(&mut c)
        .iter()
        .any(|x| matches!(x, Action::Disconnect(k) if *k == a)));
    assert!(c.is_banned(addr(1).ip()));
    c.handle(t, Input::Disconnected { key: a }).unwrap();
    assert!(matches!(
        c.connect(t, hello(1), || false),
        Err(SwarmError::Banned)
    ));
}

/// Feeds `from` every block `key` was asked for, until the piece is handed out to verify.
fn deliver(c: &mut Core, t: Instant, key: u64, reqs: &[(u64, Req)]) -> Vec<Action> {
    let mut out = Vec::new();
    for (k, r) in reqs.iter().filter(|(k, _)| *k == key) {
        c.handle(
            t,
            Input::ModelledBlock {
                key: *k,
                index: r.index,
                begin: r.begin,
                len: r.length,
            },
        )
        .unwrap();
        out.extend(drain(c));
    }
    out
}

#[test]
fn a_sole_sender_of_a_bad_piece_is_banned_and_several_senders_are_not_guessed_at() {
    let t = Instant::now();
    // One sender.
    let mut c = core(1, false, false);
    let a = c.connect(t, hello(1), || false).unwrap();
    drain(&mut c);
    msg(&mut c, t, a, Msg::HaveAll);
    let reqs = requests(&msg(&mut c, t, a, Msg::Unchoke));
    assert_eq!(reqs.len(), 4);
    let acts = deliver(&mut c, t, a, &reqs);
    assert!(acts
        .iter()
        .any(|x| matches!(x, Action::Verify { index: 0, .. })));
    assert_eq!(c.senders(0).map(|s| s.len()), Some(1));
    c.handle(
        t,
        Input::Verified {
            index: 0,
            result: Verified::Mismatch,
        },
    )
    .unwrap();
    assert!(c.is_banned(addr(1).ip()));

    // Two senders: nobody banned; the piece is fetched again from one peer only.
    let mut c = core(1, false, false);
    let a = c.connect(t, hello(1), || false).unwrap();
    let b = c.connect(t, hello(2), || false).unwrap();
    drain(&mut c);
    msg(&mut c, t, a, Msg::HaveAll);
    msg(&mut c, t, b, Msg::HaveAll);
    c.cfg.pipeline_blocks = 2;
    // Pipelines of at least MIN_PIPELINE_BLOCKS: a takes all four blocks; give b two of
    // them by a reject from a.
    let ra = requests(&msg(&mut c, t, a, Msg::Unchoke));
    let r0 = ra[0].1;
    let mut acts = msg(&mut c, t, a, Msg::Reject(r0));
    acts.extend(msg(&mut c, t, b, Msg::Unchoke));
    let rb = requests(&acts);
    let mut all = ra[1..].to_vec();
    all.extend(rb.iter().filter(|(k, _)| *k == b));
    deliver(&mut c, t, a, &all);
    deliver(&mut c, t, b, &all);
    let senders = c.senders(0).cloned().expect("verifying");
    assert_eq!(senders.len(), 2, "{senders:?}");
    c.handle(
        t,
        Input::Verified {
            index: 0,
            result: Verified::Mismatch,
        },
    )
    .unwrap();
    let acts = drain(&mut c);
    assert!(!c.is_banned(addr(1).ip()) && !c.is_banned(addr(2).ip()));
    let again = requests(&acts);
    assert!(!again.is_empty());
    let k0 = again[0].0;
    assert!(
        again.iter().all(|(k, _)| *k == k0),
        "one peer fetches the whole piece"
    );
}

#[test]
fn dials_stop_at_the_free_slots_and_each_node_orders_them_its_own_way() {
    let t = Instant::now();
    let l = Lengths::new(4 * PIECE as u64, PIECE).unwrap();
    let mk = |id: u8| {
        let mut cf = cfg(id, false);
        cf.max_peers = 5;
        cf.dial_peers = 8;
        Core::new(cf, l, vec![false; 4], 1)
    };
    let dials = |c: &mut Core| -> Vec<SocketAddr> {
        c.handle(t, Input::PeersLearnt((1..=40).map(addr).collect()))
            .unwrap();
        drain(c)
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial(a) => Some(a),
                _ => None,
            })
            .collect()
    };
    let (mut x, mut y) = (mk(100), mk(101));
    let (dx, dy) = (dials(&mut x), dials(&mut y));
    assert_eq!(dx.len(), 5);
    assert_eq!(dy.len(), 5);
    assert_ne!(dx, dy, "two nodes pick different peers");
    // Nothing more while those dials are pending; a failed dial frees its slot.
    assert!(dials(&mut x).is_empty());
    x.handle(t, Input::DialEnded(dx[0])).unwrap();
    let later = t + REDIAL_AFTER + Duration::from_millis(1);
    x.handle(later, Input::Tick { uploaded: 0 }).unwrap();
    let redial: Vec<_> = drain(&mut x)
        .into_iter()
        .filter(|a| matches!(a, Action::Dial(_)))
        .collect();
    assert_eq!(redial.len(), 1, "{redial:?}");
}

#[test]
fn of_two_connections_between_the_same_nodes_both_keep_the_smaller_ids_dial() {
    let t = Instant::now();
    // We are [0; 20], smaller than the peer's [9; 20]: our outgoing connection wins.
    let mut c = core(4, false, false);
    let incoming = c.connect(t, hello(9), || false).unwrap();
    let out = Hello {
        outgoing: true,
        ..hello(9)
    };
    let k = c.connect(t, out, || false).expect("ours is kept");
    assert!(drain(&mut c)
        .iter()
        .any(|a| matches!(a, Action::Disconnect(x) if *x == incoming)));
    assert_ne!(k, incoming);
    // And a second incoming one is refused.
    assert!(c.connect(t, hello(9), || false).is_err());
}

#[test]
fn the_core_reads_no_clock_and_no_randomness_and_knows_no_tokio() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/proto");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        // Tests may read the clock; the core may not.
        let src = src.split("#[cfg(test)]").next().unwrap();
        for banned in [
            "tokio",
            "Instant::now",
            "thread_rng",
            "SystemTime",
            "std::net::Tcp",
        ] {
            assert!(!src.contains(banned), "{} uses {banned}", path.display());
        }
    }
}

#[test]
fn a_peer_behind_another_switch_is_asked_only_for_what_no_local_peer_has() {
    let t = Instant::now();
    let mut c = core(8, false, false);
    let remote = |i| Hello {
        local: false,
        ..hello(i)
    };
    let l = c.connect(t, hello(1), || false).unwrap();
    let r = c.connect(t, remote(2), || false).unwrap();
    drain(&mut c);
    let bits: Vec<bool> = (0..8).map(|i| i < 4).collect();
    msg(
        &mut c,
        t,
        l,
        Msg::Bitfield(crate::wire::bitfield_from(&bits)),
    );
    // The remote peer has pieces 0..6: after 4 and 5 (8 blocks), rarest first would go on
    // with 0..4 to fill its pipeline of 16; they are the local peer's to send.
    let rbits: Vec<bool> = (0..8).map(|i| i < 6).collect();
    msg(
        &mut c,
        t,
        r,
        Msg::Bitfield(crate::wire::bitfield_from(&rbits)),
    );
    // While the local peer chokes us its pieces do not count: it gives us nothing.
    assert!(c.local_availability.iter().all(|&a| a == 0));
    let to_l = requests(&msg(&mut c, t, l, Msg::Unchoke));
    assert!(!to_l.is_empty());
    assert!(to_l.iter().all(|(_, q)| q.index < 4), "{to_l:?}");
    let to_r = requests(&msg(&mut c, t, r, Msg::Unchoke));
    assert_eq!(to_r.len(), 8, "{to_r:?}");
    assert!(to_r.iter().all(|(_, q)| q.index >= 4), "{to_r:?}");
    // Choked again, it stops counting; unchoked, it counts once more.
    msg(&mut c, t, l, Msg::Choke);
    assert!(c.local_availability.iter().all(|&a| a == 0));
    msg(&mut c, t, l, Msg::Unchoke);
    msg(&mut c, t, l, Msg::Unchoke);
    assert_eq!(&c.local_availability[..], &[1, 1, 1, 1, 0, 0, 0, 0]);
    // The local peer leaves: its pieces may come from another switch now.
    c.handle(t, Input::Disconnected { key: l }).unwrap();
    let r2 = c.connect(t, remote(3), || false).unwrap();
    drain(&mut c);
    msg(&mut c, t, r2, Msg::HaveAll);
    let to_r2 = requests(&msg(&mut c, t, r2, Msg::Unchoke));
    assert!(to_r2.iter().any(|(_, q)| q.index < 4), "{to_r2:?}");
}

#[test]
fn a_seed_behind_our_switch_does_not_keep_other_switches_from_being_asked() {
    // The seeder behind our switch rations: were its pieces "local", nothing would ever be
    // asked of the other switches (the simulator: N = 100 on 25 switches, the seeder's
    // switch-mates took 4x the time of the others).
    let t = Instant::now();
    let mut c = core(8, false, false);
    let s = c.connect(t, hello(1), || false).unwrap();
    let r = c
        .connect(
            t,
            Hello {
                local: false,
                ..hello(2)
            },
            || false,
        )
        .unwrap();
    let l = c.connect(t, hello(3), || false).unwrap();
    drain(&mut c);
    msg(&mut c, t, s, Msg::HaveAll);
    msg(&mut c, t, s, Msg::Unchoke);
    // A local receiver that completes becomes a seed too: its pieces stop counting.
    msg(&mut c, t, l, Msg::HaveNone);
    msg(&mut c, t, l, Msg::Unchoke);
    for i in 0..8 {
        msg(&mut c, t, l, Msg::Have(i));
    }
    assert!(c.local_availability.iter().all(|&a| a == 0));
    msg(&mut c, t, r, Msg::HaveAll);
    let to_r = requests(&msg(&mut c, t, r, Msg::Unchoke));
    assert!(!to_r.is_empty(), "the remote peer is asked");
    // Gone again: nothing is left to take away.
    c.handle(t, Input::Disconnected { key: l }).unwrap();
    c.handle(t, Input::Disconnected { key: s }).unwrap();
    assert!(c.local_availability.iter().all(|&a| a == 0));
}

#[test]
fn with_the_writers_full_requests_wait_and_go_out_piece_by_piece() {
    let t = Instant::now();
    let mut c = core(8, true, false);
    c.cfg.order_uploads = true;
    let a = c.connect(t, hello(1), || false).unwrap();
    let b = c.connect(t, hello(2), || false).unwrap();
    drain(&mut c);
    let r = |index, block| Req {
        index,
        begin: block * BLOCK_SIZE,
        length: BLOCK_SIZE,
    };
    // The two peers' requests come interleaved while the writers hold 1 GiB (`msg`).
    for blk in 0..4 {
        assert!(msg(&mut c, t, a, Msg::Request(r(1, blk))).is_empty());
        assert!(msg(&mut c, t, b, Msg::Request(r(2, blk))).is_empty());
    }
    assert_eq!(
        c.upload_release_below(),
        Some(upload_order::MIN_WRITER_BYTES)
    );
    // b cancels one: it is dropped here, the writers never had it.
    assert!(msg(&mut c, t, b, Msg::Cancel(r(2, 3))).is_empty());
    c.handle(t, Input::UploadDrained { upload_queued: 0 })
        .unwrap();
    let served: Vec<(u64, u32, u32)> = drain(&mut c)
        .into_iter()
        .filter_map(|x| match x {
            Action::Serve(k, q) => Some((k, q.index, q.begin / BLOCK_SIZE)),
            _ => None,
        })
        .collect();
    let mut want: Vec<_> = (0..4).map(|blk| (a, 1, blk)).collect();
    want.extend((0..3).map(|blk| (b, 2, blk)));
    assert_eq!(served, want);
    assert_eq!(c.upload_release_below(), None, "nothing waits");
    // A peer that leaves takes its waiting requests with it.
    assert!(msg(&mut c, t, a, Msg::Request(r(3, 0))).is_empty());
    c.handle(t, Input::Disconnected { key: a }).unwrap();
    assert_eq!(c.upload_release_below(), None);
}
