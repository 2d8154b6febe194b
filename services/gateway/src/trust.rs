//! Who is asking: the client's address, and whether it is trusted
//! (`TES_PROXY_IPS`, CIDRs). `X-Forwarded-For` is believed only when the
//! peer that sent it is itself trusted; otherwise anyone could claim any
//! address.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Loopback only, when `TES_PROXY_IPS` is not set.
pub const DEFAULT_TRUSTED: &str = "127.0.0.1/32,::1/128";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    nets: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TES_PROXY_IPS: {0:?} is not an address or a CIDR (e.g. 10.0.0.0/8, 192.168.1.7, ::1)")]
pub struct BadTrusted(pub String);

impl FromStr for Trusted {
    type Err = BadTrusted;

    /// Addresses or CIDRs, separated by commas or spaces.
    fn from_str(spec: &str) -> Result<Trusted, BadTrusted> {
        let nets = spec
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadTrusted(s.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trusted { nets })
    }
}

impl Default for Trusted {
    fn default() -> Self {
        DEFAULT_TRUSTED.parse().expect("the default parses")
    }
}

impl Trusted {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer`. A trusted peer (a proxy) may name the
    /// client in `X-Forwarded-For`: read right to left, the first address
    /// that is not a trusted proxy is the client. An untrusted peer's
    /// header is ignored: the peer is the client.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        let hops: Vec<IpAddr> = header
            .split(',')
            .map(|h| h.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
            .collect::<Result<_, _>>()
            // A header that does not parse names nobody we can trust.
            .unwrap_or_else(|_| vec![IpAddr::from([0, 0, 0, 0])]);
        hops.iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_bare_addresses() {
        let t: Trusted = "10.0.0.0/8, 192.168.1.7 ::1".parse().unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("::1")));
        assert!(
            t.contains(ip("::ffff:10.0.0.1")),
            "IPv4-mapped IPv6 is the IPv4 address"
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Trusted>(),
            Err(BadTrusted("10.0.0.0/33".into()))
        );
        assert!("proxy.local".parse::<Trusted>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let t: Trusted = "10.0.0.0/8,127.0.0.1".parse().unwrap();
        // A spoofed header from outside is ignored.
        assert_eq!(
            t.client(ip("203.0.113.9"), Some("127.0.0.1")),
            ip("203.0.113.9")
        );
        // Through our proxy, the client is the last untrusted hop.
        assert_eq!(
            t.client(ip("10.0.0.2"), Some("198.51.100.1, 203.0.113.9, 10.0.0.5")),
            ip("203.0.113.9")
        );
        // A trusted client behind the proxy stays trusted.
        assert_eq!(t.client(ip("10.0.0.2"), Some("10.1.2.3")), ip("10.1.2.3"));
        // No header: the peer itself.
        assert_eq!(t.client(ip("127.0.0.1"), None), ip("127.0.0.1"));
        // Garbage from a proxy names nobody trusted.
        assert!(!t.contains(t.client(ip("10.0.0.2"), Some("not-an-ip"))));
    }
}
