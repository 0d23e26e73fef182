//! Who may talk to a node at all: pure policy, no sockets.
//!
//! - [`AllowList`]: the seeder's `--allow CIDR,...` (default: the subnets of its own
//!   interfaces), checked at every accept (HTTP, tracker, BitTorrent, netboot) before a byte
//!   is read.
//! - [`inbound`]: what a node does with an incoming peer connection from an address: take it,
//!   refuse it, or first ask the tracker for a fresh peer list (a peer that announced after
//!   our last announce dials us before we have heard of it).
//! - [`same_token`]: compares a presented deployment token with ours in constant time.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// A set of networks; an address is allowed if any of them contains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

/// The address as the policy sees it: an IPv4-mapped IPv6 address (a dual-stack listener's
/// view of an IPv4 peer) is that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl AllowList {
    /// Every address (IPv4 and IPv6).
    pub fn any() -> AllowList {
        AllowList {
            nets: vec![
                "0.0.0.0/0".parse().expect("valid"),
                "::/0".parse().expect("valid"),
            ],
        }
    }

    /// Parses `CIDR[,CIDR...]`; a bare address is a single host (/32 or /128). The host bits
    /// of `10.0.0.5/24` are dropped (it means 10.0.0.0/24, as an interface address does).
    pub fn parse(s: &str) -> Result<AllowList, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = if part.contains('/') {
                part.parse::<IpNet>().map_err(|e| {
                    format!("{part:?} is not a CIDR network (like 10.0.0.0/24): {e}")
                })?
            } else {
                let ip: IpAddr = part
                    .parse()
                    .map_err(|_| format!("{part:?} is neither an address nor a CIDR network"))?;
                IpNet::from(ip)
            };
            nets.push(net.trunc());
        }
        if nets.is_empty() {
            return Err("an empty allow list would refuse everybody".into());
        }
        Ok(AllowList::from_nets(nets))
    }

    /// The networks of interface addresses `(address, prefix length)`: what `--allow`
    /// defaults to (loopback's 127.0.0.0/8 included).
    pub fn from_interfaces(addrs: &[(IpAddr, u8)]) -> AllowList {
        AllowList::from_nets(
            addrs
                .iter()
                .filter_map(|&(ip, prefix)| IpNet::new(canonical(ip), prefix).ok())
                .map(|n| n.trunc())
                .collect(),
        )
    }

    fn from_nets(nets: Vec<IpNet>) -> AllowList {
        AllowList {
            nets: IpNet::aggregate(&nets),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.nets.iter().map(|n| n.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// The subnets of this machine's interfaces (I/O: asks the kernel). Errors name the cause.
pub fn local_subnets() -> std::io::Result<AllowList> {
    let addrs: Vec<(IpAddr, u8)> = if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), a.prefixlen),
            if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), a.prefixlen),
        })
        .collect();
    Ok(AllowList::from_interfaces(&addrs))
}

/// What to do with an incoming peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Accept,
    Refuse,
    /// Unknown, but a tracker can tell: announce now and accept if it lists the address
    /// (within a bounded wait).
    AskTracker,
}

/// Decides on a connection from `ip`: outside `allow` it is refused; an address we know
/// (the seeder, a peer the tracker handed us, a `--peer`) is accepted; an unknown one is
/// worth asking the tracker about only if there is a tracker to ask and fewer than
/// `max_waiting` connections already wait for it (strangers cannot park sockets without
/// bound), else refused.
pub fn inbound(
    allowed: bool,
    known: bool,
    can_ask: bool,
    waiting: usize,
    max_waiting: usize,
) -> Inbound {
    if !allowed {
        Inbound::Refuse
    } else if known {
        Inbound::Accept
    } else if can_ask && waiting < max_waiting {
        Inbound::AskTracker
    } else {
        Inbound::Refuse
    }
}

/// True if `presented` is `ours`, compared in time independent of where they differ.
pub fn same_token(presented: &[u8], ours: &[u8]) -> bool {
    presented.len() == ours.len()
        && presented
            .iter()
            .zip(ours)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_lists_parse_and_match() {
        let a = AllowList::parse("127.0.0.0/30, 10.1.2.3,fd00::/8").unwrap();
        for inside in ["127.0.0.0", "127.0.0.3", "10.1.2.3", "fd12::1"] {
            assert!(a.contains(ip(inside)), "{inside}");
        }
        for outside in ["127.0.0.4", "127.0.0.9", "10.1.2.4", "fe80::1", "8.8.8.8"] {
            assert!(!a.contains(ip(outside)), "{outside}");
        }
        // Host bits are dropped: an interface-style address means its network.
        let b = AllowList::parse("10.0.0.5/24").unwrap();
        assert_eq!(b.to_string(), "10.0.0.0/24");
        assert!(b.contains(ip("10.0.0.200")));
        for bad in [
            "",
            " , ",
            "10.0.0.0/33",
            "example.com",
            "10.0.0/8",
            "::/129",
        ] {
            assert!(AllowList::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_count_as_ipv4() {
        let a = AllowList::parse("192.168.1.0/24").unwrap();
        assert!(a.contains(ip("::ffff:192.168.1.7")));
        assert!(!a.contains(ip("::ffff:192.168.2.7")));
    }

    #[test]
    fn interfaces_give_their_subnets_loopback_included() {
        let a = AllowList::from_interfaces(&[
            (ip("127.0.0.1"), 8),
            (ip("192.168.7.23"), 24),
            (ip("::1"), 128),
            (ip("10.0.0.1"), 40), // nonsense prefix: ignored
        ]);
        assert_eq!(a.to_string(), "127.0.0.0/8,192.168.7.0/24,::1/128");
        assert!(a.contains(ip("127.0.140.9")));
        assert!(a.contains(ip("192.168.7.200")));
        assert!(!a.contains(ip("192.168.8.1")));
        assert!(!a.contains(ip("10.0.0.1")));
        assert!(AllowList::any().contains(ip("8.8.8.8")));
        assert!(AllowList::any().contains(ip("2001:db8::1")));
    }

    #[test]
    fn this_machine_has_loopback_among_its_subnets() {
        let a = local_subnets().expect("interfaces");
        assert!(a.contains(ip("127.0.0.1")), "{a}");
    }

    #[test]
    fn inbound_decisions() {
        use Inbound::*;
        // Outside --allow: refused whatever else is true.
        assert_eq!(inbound(false, true, true, 0, 8), Refuse);
        assert_eq!(inbound(true, true, false, 100, 8), Accept);
        assert_eq!(inbound(true, false, true, 0, 8), AskTracker);
        assert_eq!(inbound(true, false, true, 7, 8), AskTracker);
        // Too many strangers waiting already, or nobody to ask.
        assert_eq!(inbound(true, false, true, 8, 8), Refuse);
        assert_eq!(inbound(true, false, false, 0, 8), Refuse);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abcd", b"abcd"));
        assert!(!same_token(b"abce", b"abcd"));
        assert!(!same_token(b"abc", b"abcd"));
        assert!(!same_token(b"", b"abcd"));
    }
}
