//! Which peers a tracker answer lists (pure: the seeder's tracker and the simulator's use
//! the same function). Every live peer on the asker's own site (behind the same switch,
//! as the caller judges it), every seed, and a few others chosen by a hash of the asker's
//! and their address (the same few on every announce): a node then connects mostly within
//! its site, and the few links out carry what its site lacks. With one site (or no site
//! information) it is every live peer, as before.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

/// Peers from other sites listed per answer (besides seeds).
pub const REMOTE_PEERS: usize = 8;

/// A live peer the tracker knows.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub addr: SocketAddr,
    /// It has every piece.
    pub seed: bool,
}

/// The peers to list for `asker` (not itself), in `live`'s order. `same_site(a, b)`: are
/// a and b behind the same switch.
pub fn answer(
    asker: SocketAddr,
    live: &[Candidate],
    same_site: impl Fn(SocketAddr, SocketAddr) -> bool,
    remote: usize,
) -> Vec<SocketAddr> {
    let others: Vec<&Candidate> = live.iter().filter(|c| c.addr != asker).collect();
    let mut far: Vec<(u64, SocketAddr)> = others
        .iter()
        .filter(|c| !c.seed && !same_site(asker, c.addr))
        .map(|c| (mix(asker, c.addr), c.addr))
        .collect();
    far.sort_unstable();
    far.truncate(remote);
    others
        .iter()
        .filter(|c| c.seed || same_site(asker, c.addr) || far.iter().any(|f| f.1 == c.addr))
        .map(|c| c.addr)
        .collect()
}

fn mix(a: SocketAddr, b: SocketAddr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn a(i: u8, j: u8) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, i, j), 6881))
    }

    #[test]
    fn lists_its_site_every_seed_and_a_few_stable_others() {
        let site = |x: SocketAddr, y: SocketAddr| match (x, y) {
            (SocketAddr::V4(x), SocketAddr::V4(y)) => x.ip().octets()[2] == y.ip().octets()[2],
            _ => false,
        };
        let mut live = vec![Candidate {
            addr: a(9, 1),
            seed: true,
        }];
        for i in 0..4 {
            for j in 1..=10 {
                live.push(Candidate {
                    addr: a(i, j),
                    seed: false,
                });
            }
        }
        let got = answer(a(0, 1), &live, site, 3);
        assert!(got.contains(&a(9, 1)), "the seed");
        assert!(!got.contains(&a(0, 1)), "not itself");
        assert_eq!(got.iter().filter(|x| site(**x, a(0, 1))).count(), 9);
        assert_eq!(got.len(), 1 + 9 + 3);
        assert_eq!(got, answer(a(0, 1), &live, site, 3), "stable");
        // One site: everyone.
        assert_eq!(answer(a(0, 1), &live, |_, _| true, 3).len(), live.len() - 1);
    }
}
