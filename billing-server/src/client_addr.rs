//! The client's address behind trusted proxies (`BILLING_TRUSTED_PROXIES`).
//!
//! Behind a load balancer every connection comes from the balancer, so the
//! failed-lookup limiter would lock everyone out together. Only when the
//! peer is a proxy the operator trusts is its forwarding header believed:
//! the client is the right-most address of the chain that is not itself a
//! trusted proxy (addresses further left were written by the client, and a
//! client can write anything). A header that cannot be read whole is
//! ignored, and the peer's address is used.

use hyper::header::{HeaderMap, HeaderName};
use std::net::IpAddr;

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Reads `address[/prefix]`; None when either part is not valid.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|p| *p <= bits)?
            }
            Some(_) => return None,
        };
        Some(Self { network, prefix })
    }

    /// Whether `addr` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_matches(u32::from(net).into(), u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_matches(u128::from(net), u128::from(a), 128, self.prefix),
            _ => false,
        }
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_matches(network: u128, addr: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (network >> shift) == (addr >> shift)
}

/// The proxies whose forwarding headers are believed (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Reads a comma-separated list of ranges; the error quotes the entry
    /// that is not one.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| Cidr::parse(entry).ok_or_else(|| format!("`{entry}` is not an address or address/prefix")))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(addr))
    }

    /// The client's address for a request from `peer`: the peer's, unless
    /// the peer is trusted; then the right-most address of the chain
    /// (`Forwarded`'s `for=`, else `X-Forwarded-For`) that is not a trusted
    /// proxy, or the left-most when all are.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded = HeaderName::from_static("forwarded");
        let chain = match headers.contains_key(&forwarded) {
            true => forwarded_chain(headers, &forwarded),
            false => x_forwarded_for_chain(headers),
        };
        let Some(chain) = chain.filter(|chain| !chain.is_empty()) else {
            return peer;
        };
        chain.iter().rev().copied().find(|addr| !self.trusts(*addr)).unwrap_or(chain[0])
    }
}

/// Every header line's text, in order, or None if one is not text.
fn lines<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Vec<&'a str>> {
    headers.get_all(name).iter().map(|value| value.to_str().ok()).collect()
}

/// `X-Forwarded-For: client, proxy1, proxy2`: None if any entry is not an address.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let name = HeaderName::from_static("x-forwarded-for");
    lines(headers, &name)?.into_iter().flat_map(|line| line.split(',')).map(|entry| node_addr(entry.trim())).collect()
}

/// RFC 7239: `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`.
/// Each element must name its `for` as an address (an obfuscated or
/// `unknown` one cannot be trusted with a rate limit): None otherwise.
fn forwarded_chain(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<IpAddr>> {
    lines(headers, name)?
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(|element| {
            let mut found = None;
            for pair in element.split(';') {
                let (key, value) = pair.trim().split_once('=')?;
                if key.trim().eq_ignore_ascii_case("for") {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(node_addr(unquote(value.trim())?)?);
                }
            }
            found
        })
        .collect()
}

fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|inner| !inner.contains('"')),
        None => Some(value),
    }
}

/// An address, with or without a port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn node_addr(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok.then(|| inside.parse::<std::net::Ipv6Addr>().ok()).flatten().map(|a| canonical(a.into()));
    }
    let (address, port) = node.rsplit_once(':')?;
    let v4: std::net::Ipv4Addr = address.parse().ok()?;
    is_port(port).then_some(IpAddr::V4(v4))
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 192.168.1.1, 2001:db8::/32").unwrap()
    }

    #[test]
    fn ranges_hold_what_their_prefix_says() {
        let lan = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(lan.contains(ip("10.255.1.2")) && !lan.contains(ip("11.0.0.1")));
        assert!(lan.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped address is its IPv4 one");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains(ip("2001:db8:1::5")));
        assert!(!Cidr::parse("2001:db8::/32").unwrap().contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "fe80::/129", "10.0.0.0/", "10.0.0.0/+8", "example.com", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        assert_eq!(
            TrustedProxies::parse("10.0.0.0/8, nope").unwrap_err(),
            "`nope` is not an address or address/prefix"
        );
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::default());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7"), ("forwarded", "for=198.51.100.8")]);
        assert_eq!(proxies().client_addr(ip("203.0.113.1"), &h), ip("203.0.113.1"));
        assert_eq!(
            TrustedProxies::default().client_addr(ip("10.0.0.1"), &h),
            ip("10.0.0.1"),
            "nothing trusted by default"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let peer = ip("10.0.0.1");
        let one = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(proxies().client_addr(peer, &one), ip("198.51.100.7"));
        // The client wrote 6.6.6.6 itself; the trusted hops wrote the rest.
        let hops = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1, 192.168.1.1")]);
        assert_eq!(proxies().client_addr(peer, &hops), ip("198.51.100.7"));
        let split = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7, 10.1.1.1")]);
        assert_eq!(proxies().client_addr(peer, &split), ip("198.51.100.7"), "header lines join in order");
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(proxies().client_addr(peer, &all_trusted), ip("10.9.9.9"));
        assert_eq!(proxies().client_addr(peer, &HeaderMap::new()), peer, "no header: the peer");
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_writes_it_and_wins_over_x_forwarded_for() {
        let peer = ip("2001:db8::10");
        let h = headers(&[
            ("forwarded", r#"for=6.6.6.6, for="[2001:db9::17]:4711";proto=https, for=192.168.1.1"#),
            ("x-forwarded-for", "198.51.100.99"),
        ]);
        assert_eq!(proxies().client_addr(peer, &h), ip("2001:db9::17"));
        let v4 = headers(&[("forwarded", r#"by=10.0.0.1;For="198.51.100.60:8080""#)]);
        assert_eq!(proxies().client_addr(peer, &v4), ip("198.51.100.60"));
    }

    #[test]
    fn a_header_that_cannot_be_read_whole_is_ignored() {
        let peer = ip("10.0.0.1");
        for value in
            ["198.51.100.7, garbage", "198.51.100.7,,", "198.51.100.7:99999", "[198.51.100.7]", "2001:db8::1:80]", ""]
        {
            let h = headers(&[("x-forwarded-for", value)]);
            assert_eq!(proxies().client_addr(peer, &h), peer, "x-forwarded-for: {value:?}");
        }
        for value in
            ["for=unknown", "for=_hidden", r#"for="198.51.100.7"#, "for=198.51.100.7;for=6.6.6.6", "proto=https", "for"]
        {
            let h = headers(&[("forwarded", value)]);
            assert_eq!(proxies().client_addr(peer, &h), peer, "forwarded: {value:?}");
        }
    }
}
