//! Properties of the swarm's policy core, checked on simulated rooms (no sockets, virtual
//! time): everyone finishes (every requested block arrives or is asked again), no peer is
//! asked for a piece it lacks, liars are banned and honest peers never are, and a run
//! replays exactly from its seed.

use std::time::Duration;

use blockswarm_sim::{run, Params};

fn room(nodes: usize, seed: u64) -> Params {
    Params {
        nodes,
        bytes: 8_000_000,
        piece: 256 << 10,
        rate_bps: 100e6,
        seed,
        ..Params::default()
    }
}

#[test]
fn every_receiver_finishes_and_no_peer_is_asked_for_what_it_lacks() {
    for (nodes, seed) in [(1, 1), (2, 2), (5, 3), (12, 4)] {
        let r = run(&room(nodes, seed)).expect("runs");
        assert_eq!(r.ratios.len(), nodes, "all finished: {r:?}");
        assert_eq!(r.stuck, 0);
        assert_eq!(r.bad_requests, 0, "a peer was asked for a piece it lacks");
        assert!(r.honest_banned.is_empty(), "{:?}", r.honest_banned);
        assert_eq!(r.hash_failures, 0);
        // Never faster than the wire: one copy through each receiver's link.
        assert!(r.quantile(0.0) >= 1.0, "{r:?}");
        assert!(r.seeder_copies >= 1.0, "{r:?}");
    }
}

#[test]
fn liars_are_banned_and_honest_peers_never_are() {
    for seed in 1..=4 {
        let p = Params {
            liars: 2,
            ..room(6, seed)
        };
        let r = run(&p).expect("runs");
        assert_eq!(r.ratios.len(), 6, "all finished despite the liars: {r:?}");
        assert_eq!(r.liars_banned, 2, "{r:?}");
        assert!(r.honest_banned.is_empty(), "{:?}", r.honest_banned);
        assert!(
            r.hash_failures > 0,
            "the liars' pieces were caught by the hash check"
        );
        assert_eq!(r.bad_requests, 0);
    }
}

#[test]
fn receivers_that_die_do_not_stop_the_others_and_slow_ones_finish() {
    let p = Params {
        die_pct: 20.0,
        slow_pct: 20.0,
        // A slow receiver needs ten ideal times at least.
        limit_factor: 40.0,
        ..room(10, 7)
    };
    let r = run(&p).expect("runs");
    assert_eq!(r.died, 2, "{r:?}");
    assert_eq!(r.stuck, 0, "{r:?}");
    assert_eq!(r.ratios.len(), 8, "{r:?}");
    // The slow receivers (10x slower links) take at least ten times the ideal.
    assert!(r.quantile(1.0) >= 10.0, "{r:?}");
}

#[test]
fn a_run_replays_exactly_from_its_seed_and_another_seed_differs() {
    let a = run(&room(8, 11)).expect("runs");
    let b = run(&room(8, 11)).expect("runs");
    assert_eq!(a.ratios, b.ratios);
    assert_eq!(a.events, b.events);
    assert_eq!(a.seeder_copies, b.seeder_copies);
    let c = run(&room(8, 12)).expect("runs");
    assert!(a.ratios != c.ratios || a.events != c.events);
}

#[test]
fn switches_count_uplink_bytes_against_one_copy_per_switch() {
    let p = Params {
        switches: 3,
        uplink_bps: 1e9,
        start_spread: Duration::from_millis(50),
        ..room(9, 5)
    };
    let r = run(&p).expect("runs");
    assert_eq!(r.ratios.len(), 9);
    let u = r.uplink.expect("several switches");
    // At least one copy must cross into each of the two switches without the seeder, over
    // two uplinks (out of one switch, into the other).
    assert!(u >= 2.0, "{r:?}");
}

#[test]
fn sites_keep_traffic_behind_its_switch_and_everyone_still_finishes() {
    // 4 switches of 10; the seeder behind the first. With sites (the default) a receiver
    // asks other switches only for what its own lacks.
    let room = |locality: bool, seed: u64| Params {
        switches: 4,
        locality,
        ..room(40, seed)
    };
    for seed in 1..=3 {
        let with = run(&room(true, seed)).expect("runs");
        let without = run(&room(false, seed)).expect("runs");
        for r in [&with, &without] {
            assert_eq!(r.ratios.len(), 40, "all finished: {r:?}");
            assert_eq!(r.bad_requests, 0);
            assert!(r.honest_banned.is_empty(), "{:?}", r.honest_banned);
        }
        let (u, v) = (with.uplink.unwrap(), without.uplink.unwrap());
        assert!(u < 0.75 * v, "uplinks: {u:.2} with sites, {v:.2} without");
    }
}

#[test]
fn serving_piece_by_piece_gets_a_room_done_sooner() {
    // 60 receivers on one switch. Served in the order requests came, the seeder's 60
    // pieces in flight complete together; piece by piece (the default), one after another,
    // and receivers trade from the first second.
    let room = |order_uploads: bool, seed: u64| Params {
        nodes: 60,
        bytes: 20_000_000,
        order_uploads,
        ..room(60, seed)
    };
    for seed in 1..=3 {
        let with = run(&room(true, seed)).expect("runs");
        let without = run(&room(false, seed)).expect("runs");
        for r in [&with, &without] {
            assert_eq!(r.ratios.len(), 60, "all finished: {r:?}");
            assert_eq!(r.bad_requests, 0);
            assert!(r.honest_banned.is_empty(), "{:?}", r.honest_banned);
        }
        let (a, b) = (with.quantile(0.5), without.quantile(0.5));
        assert!(
            a < b - 0.1,
            "p50 {a:.3} piece by piece, {b:.3} as they came"
        );
        assert!(
            with.quantile(1.0) < without.quantile(1.0),
            "{with:?} {without:?}"
        );
        assert!(with.seeder_copies < without.seeder_copies);
    }
}
