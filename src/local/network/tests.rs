//! Addresses and the shared loopback mode.

use super::*;

#[test]
fn isolated_addresses_are_distinct_and_of_the_right_family() {
    let a = isolated_addrs(2);
    let b = isolated_addrs(3);
    assert!(a.proxy.is_ipv4() && a.private.is_ipv6());
    assert_ne!(a.proxy, b.proxy);
    assert_ne!(a.private, b.private);
    assert_eq!(a.proxy, "172.19.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(
        isolated_addrs(0x0001_0203).proxy,
        "172.20.2.3".parse::<IpAddr>().unwrap()
    );
    assert!(a.private.to_string().starts_with("fdaa:"));
}

#[test]
fn shared_loopback_addresses_skip_network_and_broadcast() {
    let network = Network::new(NetworkMode::Shared).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..600 {
        let ip = network.loopback(0x0001_0000);
        assert!(ip.is_loopback() && ip != Ipv4Addr::LOCALHOST, "{ip}");
        assert!(!matches!(ip.octets()[3], 0 | 255), "{ip}");
        assert!(seen.insert(ip), "{ip} handed out twice");
    }
}
