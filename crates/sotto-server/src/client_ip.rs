//! The address a request comes from, for per-address rate limits. Behind a reverse proxy
//! that address is the proxy's, so `X-Forwarded-For` is read, but only when the connection
//! comes from a proxy named with `--trusted-proxy`: anyone else could write that header.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::AppState;
use crate::limits::IpKey;

/// The client address of a request, as a rate-limit key.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpKey);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        // Without connection info (a router driven in-process) every request shares a bucket.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let ip = client_ip(peer, &parts.headers, &state.config().trusted_proxies);
        Ok(ClientIp(ip.into()))
    }
}

/// The client address: `peer` itself, unless `peer` is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` that is not a trusted proxy (proxies append on the right, so
/// entries further left than that are whatever the client claimed). A malformed entry stops
/// the walk at the last trusted hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| {
        trusted
            .iter()
            .any(|t| t.to_canonical() == ip.to_canonical())
    };
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use axum::http::{HeaderMap, HeaderValue};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).expect("a header"),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let proxy = ip("127.0.0.9");
        let h = xff(&["198.51.100.7"]);
        assert_eq!(client_ip(ip("127.0.0.5"), &h, &[proxy]), ip("127.0.0.5"));
        assert_eq!(client_ip(ip("127.0.0.5"), &h, &[]), ip("127.0.0.5"));
        assert_eq!(client_ip(proxy, &h, &[proxy]), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_proxies_only() {
        let (outer, inner) = (ip("127.0.0.8"), ip("127.0.0.9"));
        // The client put a fake address first; the proxies appended what they saw.
        let h = xff(&["203.0.113.66, 198.51.100.7", "127.0.0.8"]);
        assert_eq!(client_ip(inner, &h, &[inner, outer]), ip("198.51.100.7"));
        assert_eq!(client_ip(inner, &h, &[inner]), ip("127.0.0.8"));
        // No header: the proxy's own address is all there is.
        assert_eq!(client_ip(inner, &HeaderMap::new(), &[inner]), inner);
        // A malformed hop stops the walk at the last trusted one.
        let h = xff(&["198.51.100.7, not-an-address, 127.0.0.8"]);
        assert_eq!(client_ip(inner, &h, &[inner, outer]), outer);
        // An IPv4-mapped peer matches its IPv4 form, and the other way round.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.9"), &xff(&["198.51.100.7"]), &[inner]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(inner, &xff(&["198.51.100.7"]), &[ip("::ffff:127.0.0.9")]),
            ip("198.51.100.7")
        );
    }
}
