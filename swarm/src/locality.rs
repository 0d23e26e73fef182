//! Which peers are behind the same switch, and which peers a tracker answer lists (pure:
//! the seeder's tracker, the engine and the simulator use the same functions).
//!
//! A room's machines share a subnet, and a building's rooms hang off one core by uplinks
//! that carry a fraction of what the rooms' ports do. A tracker that lists every peer makes
//! most connections cross uplinks (in 25 rooms of 40, 39 of 40 random neighbours are
//! elsewhere), and the uplinks become the limit (the simulator, N = 1,000 on 25 switches:
//! 64 copies of the image over the uplinks per switch, 3.1x the time the link rate allows).
//! So an answer lists every live peer of the asker's site, every seeder, and a few others
//! chosen by a hash of both addresses (the same few on every announce, so that the sites
//! stay joined by a stable random graph); and a node asks a peer of another site only for
//! pieces none of its site's peers has (`proto`'s picker).

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

/// Peers of other sites an answer lists (besides seeders).
pub const REMOTE_PEERS: usize = 4;

/// Leading bits of an IPv4 address that name its site by default (a /24 per room).
pub const DEFAULT_SITE_PREFIX: u8 = 24;

/// Are `a` and `b` on the same site: the same first `prefix` bits of an IPv4 address (the
/// same /64 for IPv6; an IPv4-mapped address counts as IPv4)? `prefix` 0: one site.
pub fn same_site(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    match (canonical(a), canonical(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let bits = u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets()[..8] == b.octets()[..8],
        _ => false,
    }
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// A live peer the tracker knows.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub addr: SocketAddr,
    /// A seeder (the origin of the pieces): listed to everyone.
    pub seeder: bool,
}

/// The peers to list for `asker` (never itself), in `live`'s order: those with
/// `same_site(asker, peer)`, every seeder, and `remote` of the others (a stable choice per
/// asker). With one site that is every live peer.
pub fn answer(
    asker: SocketAddr,
    live: &[Candidate],
    same_site: impl Fn(SocketAddr, SocketAddr) -> bool,
    remote: usize,
) -> Vec<SocketAddr> {
    let mut far: Vec<(u64, SocketAddr)> = live
        .iter()
        .filter(|c| c.addr != asker && !c.seeder && !same_site(asker, c.addr))
        .map(|c| (mix(asker, c.addr), c.addr))
        .collect();
    far.sort_unstable();
    far.truncate(remote);
    live.iter()
        .filter(|c| c.addr != asker)
        .filter(|c| c.seeder || same_site(asker, c.addr) || far.iter().any(|f| f.1 == c.addr))
        .map(|c| c.addr)
        .collect()
}

fn mix(a: SocketAddr, b: SocketAddr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (a, b).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

    fn a(i: u8, j: u8) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, i, j), 6881))
    }

    #[test]
    fn sites_are_address_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_site(ip("10.0.3.1"), ip("10.0.3.200"), 24));
        assert!(!same_site(ip("10.0.3.1"), ip("10.0.4.1"), 24));
        assert!(same_site(ip("10.0.3.1"), ip("10.0.4.1"), 16));
        assert!(
            same_site(ip("10.0.3.1"), ip("192.168.0.1"), 0),
            "0: one site"
        );
        assert!(!same_site(ip("10.0.3.1"), ip("10.0.3.2"), 32));
        assert!(
            same_site(ip("10.0.3.1"), ip("10.0.3.1"), 40),
            "clamped to 32"
        );
        assert!(
            same_site(ip("::ffff:10.0.3.1"), ip("10.0.3.9"), 24),
            "mapped v4"
        );
        assert!(same_site(ip("fd00::1"), ip("fd00::2"), 24));
        assert!(!same_site(ip("fd00::1"), ip("fd00:0:0:1::1"), 24));
        assert!(!same_site(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip("127.0.0.1"),
            24
        ));
    }

    #[test]
    fn lists_its_site_every_seeder_and_a_few_stable_others() {
        let site = |x: SocketAddr, y: SocketAddr| same_site(x.ip(), y.ip(), 24);
        let mut live = vec![Candidate {
            addr: a(9, 1),
            seeder: true,
        }];
        for i in 0..4 {
            for j in 1..=10 {
                live.push(Candidate {
                    addr: a(i, j),
                    seeder: false,
                });
            }
        }
        let got = answer(a(0, 1), &live, site, 3);
        assert!(got.contains(&a(9, 1)), "the seeder");
        assert!(!got.contains(&a(0, 1)), "not itself");
        assert_eq!(got.iter().filter(|x| site(**x, a(0, 1))).count(), 9);
        assert_eq!(got.len(), 1 + 9 + 3);
        assert_eq!(got, answer(a(0, 1), &live, site, 3), "stable");
        // Others get other remote picks: the sites are joined by more than 3 links.
        let mut picked = std::collections::HashSet::new();
        for j in 1..=10 {
            for x in answer(a(0, j), &live, site, 3) {
                if !site(x, a(0, 1)) && x != a(9, 1) {
                    picked.insert(x);
                }
            }
        }
        assert!(picked.len() > 10, "{} remote peers in all", picked.len());
        // One site: everyone but the asker.
        let all = answer(a(0, 1), &live, |_, _| true, 3);
        assert_eq!(all.len(), live.len() - 1);
    }
}
