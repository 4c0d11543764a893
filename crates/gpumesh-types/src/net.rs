//! Which IP addresses a public network lets checkers reach: shared by the registry (a
//! host's challenge URL) and the checker (the addresses a name resolves to), so the two
//! judge alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 blocks that are not globally routable (IANA's special-purpose registry, RFC 6890
/// and its updates), as (network, prefix length).
const NOT_PUBLIC_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network", 0.0.0.0 included
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (carrier-grade NAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata services live here)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, 255.255.255.255 (broadcast) included
];

/// Blocks inside global unicast (2000::/3) that are not globally routable, as (network,
/// prefix length). Everything outside 2000::/3 is refused unless it embeds an IPv4
/// address (see [`is_public`]).
const NOT_PUBLIC_V6: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // IETF protocol assignments (Teredo, ORCHID, …)
    (0x2001_0db8 << 96, 32), // documentation
    (0x3fff_0000 << 96, 20), // documentation (RFC 9637)
];

fn in_block(address: u128, network: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    (address >> shift) == (network >> shift)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let address = u32::from(ip);
    !NOT_PUBLIC_V4.iter().any(|&(network, prefix)| {
        in_block(
            u128::from(address),
            u128::from(u32::from_be_bytes(network)),
            prefix,
            32,
        )
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let address = u128::from(ip);
    let embedded = |at: u32| Ipv4Addr::from((address >> at) as u32);
    // IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96): the IPv4 address decides.
    if in_block(address, 0xffff << 32, 96, 128) || in_block(address, 0x64_ff9b << 96, 96, 128) {
        return is_public_v4(embedded(0));
    }
    // 6to4 (2002::/16) carries its relay's IPv4 address in bits 16-48.
    if in_block(address, 0x2002 << 112, 16, 128) {
        return is_public_v4(embedded(80));
    }
    // Only global unicast is routable; that leaves out the unspecified and loopback
    // addresses, IPv4-compatible ones (::/96, deprecated), discard-only 100::/64,
    // unique-local fc00::/7, link-local fe80::/10, site-local fec0::/10 and multicast
    // ff00::/8, among others.
    in_block(address, 0x2000 << 112, 3, 128)
        && !NOT_PUBLIC_V6
            .iter()
            .any(|&(network, prefix)| in_block(address, network, prefix, 128))
}

/// Whether `ip` is globally routable: what a checker on a public network may be sent
/// to. Loopback, private, carrier-grade NAT, link-local, unspecified, broadcast,
/// documentation, benchmarking, multicast and reserved addresses are not, nor IPv6
/// unique-local, site-local or link-local ones, nor an IPv6 address that embeds one of
/// those IPv4 addresses (IPv4-mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn public_addresses() {
        let cases: &[(&str, bool)] = &[
            // IPv4
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.215.14", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.0.1.1", true),
            ("198.17.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.7", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            // IPv6
            ("2606:4700:4700::1111", true),
            ("2a00:1450:4001:80b::200e", true),
            ("2001:200::1", true),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::808:808", true),
            ("2002:808:808::1", true),
            ("::", false),
            ("::1", false),
            ("::127.0.0.1", false),
            ("::8.8.8.8", false),
            ("::ffff:127.0.0.1", false),
            ("0:0:0:0:0:ffff:7f00:1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b:1::1", false),
            ("2002:7f00:1::1", false),
            ("2002:c0a8:101::1", false),
            ("100::1", false),
            ("2001::1", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("ff0e::1", false),
        ];
        for &(ip, public) in cases {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }
}
