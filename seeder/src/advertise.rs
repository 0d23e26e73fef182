//! Which address of ours the seeder prints in its URLs when `--advertise` is not given (and
//! `--http` listens on 0.0.0.0): pure, over the machine's interface addresses.
//!
//! 1. an address of ours inside the `--allow` networks (when they were given): the
//!    deployment LAN;
//! 2. else the machine's only non-loopback IPv4 address;
//! 3. else the address routing by default (towards 10.255.255.255), with a warning naming the
//!    others and suggesting `--advertise`.

use std::net::IpAddr;

use blockswarm_swarm::allow::AllowList;

/// The decision, and a warning for the operator when it was a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub ip: IpAddr,
    pub warning: Option<String>,
}

/// Chooses among `ours` (every interface address); `allow` is `--allow` if given;
/// `default_route` is the local address of the default route, if there is one.
pub fn choose(ours: &[IpAddr], allow: Option<&AllowList>, default_route: Option<IpAddr>) -> Choice {
    let plain = |ip| Choice { ip, warning: None };
    if let Some(a) = allow {
        if let Some(&ip) = ours.iter().find(|ip| !ip.is_loopback() && a.contains(**ip)) {
            return plain(ip);
        }
    }
    let v4: Vec<IpAddr> = ours
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    if let [one] = v4[..] {
        return plain(one);
    }
    let ip = default_route
        .or_else(|| v4.first().copied())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let others: Vec<String> = v4
        .iter()
        .filter(|o| **o != ip)
        .map(|o| o.to_string())
        .collect();
    let warning = (!others.is_empty()).then(|| {
        format!(
            "advertising {ip} (the default route's address); this machine also has {}: pass --advertise IP (or --allow CIDR) if receivers are on another network",
            others.join(", ")
        )
    });
    Choice { ip, warning }
}

/// The machine's interface addresses (if-addrs).
pub fn interface_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|v| v.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// The local address a UDP socket would use towards a LAN-ish destination (no packet is sent
/// by connect() on UDP).
pub fn default_route_ip() -> Option<IpAddr> {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_inside_allow_wins_over_the_default_route() {
        let ours = [ip("127.0.0.1"), ip("192.168.1.5"), ip("10.20.0.1")];
        let allow = AllowList::parse("10.20.0.0/16").unwrap();
        let c = choose(&ours, Some(&allow), Some(ip("192.168.1.5")));
        assert_eq!(
            c,
            Choice {
                ip: ip("10.20.0.1"),
                warning: None
            }
        );
    }

    #[test]
    fn allow_matching_none_of_ours_falls_through() {
        let ours = [ip("127.0.0.1"), ip("192.168.1.5")];
        let allow = AllowList::parse("10.0.0.0/8").unwrap();
        let c = choose(&ours, Some(&allow), Some(ip("192.168.1.5")));
        assert_eq!(c.ip, ip("192.168.1.5"));
        assert_eq!(c.warning, None);
    }

    #[test]
    fn the_one_address_of_the_machine() {
        let ours = [ip("127.0.0.1"), ip("::1"), ip("fe80::1"), ip("172.16.3.4")];
        // No default route (an isolated lab network) still finds it.
        assert_eq!(
            choose(&ours, None, None),
            Choice {
                ip: ip("172.16.3.4"),
                warning: None
            }
        );
    }

    #[test]
    fn several_addresses_take_the_default_route_and_warn() {
        let ours = [
            ip("127.0.0.1"),
            ip("192.168.1.5"),
            ip("10.20.0.1"),
            ip("10.30.0.1"),
        ];
        let c = choose(&ours, None, Some(ip("192.168.1.5")));
        assert_eq!(c.ip, ip("192.168.1.5"));
        let w = c.warning.unwrap();
        assert!(w.contains("10.20.0.1, 10.30.0.1"), "{w}");
        assert!(w.contains("--advertise"), "{w}");
        assert!(!w.contains("127.0.0.1"), "{w}");
    }

    #[test]
    fn nothing_but_loopback() {
        let c = choose(&[ip("127.0.0.1")], None, None);
        assert_eq!(
            c,
            Choice {
                ip: ip("127.0.0.1"),
                warning: None
            }
        );
    }
}
