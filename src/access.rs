//! Which clients may connect: `allow` and `deny` lists of addresses and CIDR
//! blocks, on a listener or on one route.
//!
//! A client is admitted when `allow` is empty or holds its address, and `deny`
//! does not: deny wins over allow, whatever the order (nginx's first-match list
//! is translated into this form by `import-nginx` where it can be). Addresses
//! are compared in canonical form, so an IPv4 client seen through a dual-stack
//! socket (`::ffff:192.0.2.7`) matches IPv4 rules, and a rule written as an
//! IPv4-mapped IPv6 block is an IPv4 rule.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// An allow/deny pair that restricts something; a listener or route without
/// either list has no `Access` at all, so the hot path checks nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Access {
    /// `None` when both lists are empty: everyone is admitted.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Option<Access> {
        (!allow.is_empty() || !deny.is_empty()).then_some(Access { allow, deny })
    }

    /// Whether `client` may connect.
    pub fn admits(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        let listed = |nets: &[IpNet]| nets.iter().any(|net| net.contains(&client));
        (self.allow.is_empty() || listed(&self.allow)) && !listed(&self.deny)
    }
}

impl fmt::Display for Access {
    /// `allow [a, b] deny [c]`, leaving out an empty list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.allow.is_empty(), self.deny.is_empty()) {
            (false, true) => write!(f, "allow [{}]", list(&self.allow)),
            (true, false) => write!(f, "deny [{}]", list(&self.deny)),
            _ => write!(
                f,
                "allow [{}] deny [{}]",
                list(&self.allow),
                list(&self.deny)
            ),
        }
    }
}

/// `192.0.2.0/24`, `2001:db8::/32` or a lone address (a block of one), with
/// host bits cleared and IPv4-mapped IPv6 blocks turned into IPv4 ones.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()?
        .trunc();
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?),
            None => net,
        },
        _ => net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &[&str], deny: &[&str]) -> Access {
        let nets = |l: &[&str]| l.iter().map(|t| parse_net(t).unwrap()).collect();
        Access::new(nets(allow), nets(deny)).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_lists_is_no_access_check() {
        assert_eq!(Access::new(Vec::new(), Vec::new()), None);
    }

    #[test]
    fn allow_only_these_and_deny_wins() {
        let a = access(&["192.0.2.0/24", "2001:db8::/32"], &["192.0.2.66"]);
        assert!(a.admits(ip("192.0.2.1")));
        assert!(a.admits(ip("2001:db8::5")));
        assert!(!a.admits(ip("192.0.2.66")), "deny wins over allow");
        assert!(!a.admits(ip("198.51.100.1")), "not in allow");
        assert!(!a.admits(ip("2001:db9::1")));
    }

    #[test]
    fn deny_alone_admits_everyone_else() {
        let a = access(&[], &["10.0.0.0/8"]);
        assert!(!a.admits(ip("10.1.2.3")));
        assert!(a.admits(ip("192.0.2.1")));
        assert!(a.admits(ip("::1")));
    }

    #[test]
    fn ipv4_mapped_clients_and_rules_are_ipv4() {
        let a = access(&["192.0.2.0/24"], &[]);
        assert!(a.admits(ip("::ffff:192.0.2.9")));
        assert!(!a.admits(ip("::ffff:198.51.100.1")));
        let mapped = access(&["::ffff:192.0.2.0/120"], &[]);
        assert!(mapped.admits(ip("192.0.2.9")));
        assert_eq!(
            parse_net("::ffff:192.0.2.0/120").unwrap().to_string(),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn addresses_and_blocks_parse_host_bits_cleared() {
        assert_eq!(
            parse_net(" 192.0.2.7 ").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0", "10.0.0.0/"] {
            assert_eq!(parse_net(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_lists_what_is_set() {
        assert_eq!(
            access(&["10.0.0.0/8"], &[]).to_string(),
            "allow [10.0.0.0/8]"
        );
        assert_eq!(
            access(&["10.0.0.0/8"], &["10.0.0.1"]).to_string(),
            "allow [10.0.0.0/8] deny [10.0.0.1/32]"
        );
    }
}
