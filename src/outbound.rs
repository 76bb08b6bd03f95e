//! Requests to addresses users choose (alert webhook URLs): never to this machine, its network or the cloud's
//! metadata service (server-side request forgery).
//!
//! Two checks, because either alone can be dodged:
//! - [`check_url`] when a URL is saved (and again before each send): a web URL without credentials, whose host is
//!   not `localhost` and, when it is an address, a public one. The `url` crate parses hosts the way browsers do, so
//!   `2130706433`, `127.1`, `0x7f.1` and `[::ffff:127.0.0.1]` all arrive here as the addresses they mean.
//! - [`client`]'s resolver at send time: a name is resolved once, the private addresses among its answers are
//!   dropped, and the connection goes to an address that passed. A name that resolved to a public address when saved
//!   and to `127.0.0.1` when sent (DNS rebinding) reaches nothing.
//!
//! Private targets are allowed only with `TALLY_ALERT_WEBHOOK_ALLOW_PRIVATE=true`, for local development.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not `http`/`https`, or no host.
    NotWeb,
    /// A user name or password in the URL (`http://user@host/`).
    Credentials,
    /// The host is this machine, a private network, or otherwise not a public address.
    Private { host: String },
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local (the metadata service
/// lives at 169.254.169.254), shared, reserved, multicast or unspecified, in IPv4 or IPv6, including IPv4 addresses
/// wrapped in IPv6 (mapped, compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                    // "this network", 0.0.0.0
        || a == 10                              // private
        || a == 127                             // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
        || (a == 169 && b == 254)               // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))  // private
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // documentation
        || (a == 192 && b == 168)               // private
        || (a == 198 && (18..20).contains(&b))  // benchmarking
        || (a == 198 && b == 51 && c == 100)    // documentation
        || (a == 203 && b == 0 && c == 113)     // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xfe00) == 0xfc00          // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80          // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0          // site-local (deprecated) fec0::/10
        || (first & 0xff00) == 0xff00          // multicast
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0])) // discard-only 100::/64
}

/// The IPv4 address an IPv6 address carries: mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_loopback() && !ip.is_unspecified() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// Checks a URL a user wants Tally to send requests to (see the module's notes). Names other than `localhost` are
/// not resolved here: what they resolve to is checked when a request is made, which is what counts.
pub fn check_url(url: &url::Url, allow_private: bool) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::NotWeb);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Credentials);
    }
    let private = || Refusal::Private { host: url.host_str().unwrap_or_default().to_owned() };
    match url.host() {
        None => Err(Refusal::NotWeb),
        Some(_) if allow_private => Ok(()),
        Some(url::Host::Ipv4(ip)) if !is_public_v4(ip) => Err(private()),
        Some(url::Host::Ipv6(ip)) if !is_public_v6(ip) => Err(private()),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") || !name.contains('.') {
                // Single-label names resolve through the machine's search domains: the local network.
                Err(private())
            } else {
                Ok(())
            }
        }
        Some(_) => Ok(()),
    }
}

/// Resolves names for [`client`], keeping only public addresses (all of them when `allow_private`).
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                resolved.into_iter().filter(|addr| allow_private || is_public(addr.ip())).collect();
            if allowed.is_empty() {
                let message = format!("{host} resolves to no public address");
                return Err(Box::new(std::io::Error::new(std::io::ErrorKind::PermissionDenied, message)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for user-chosen URLs: connects only to addresses its resolver let through, follows no redirect
/// (a redirect could point anywhere), and gives up after `timeout`. Callers still [`check_url`] before each request,
/// because a URL holding an address literal is never resolved.
pub fn client(allow_private: bool, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(PublicOnly { allow_private }))
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<(), Refusal> {
        check_url(&url::Url::parse(raw).unwrap(), false)
    }

    #[test]
    fn every_form_of_a_private_target_is_refused() {
        for raw in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1/",
            "http://127.0.0.1:8080/hook",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://0/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://2130706433/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://[::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://intranet/",
        ] {
            assert!(matches!(check(raw), Err(Refusal::Private { .. })), "{raw} was let through");
        }
    }

    #[test]
    fn credentials_and_other_schemes_are_refused() {
        assert_eq!(check("http://user@example.com/"), Err(Refusal::Credentials));
        assert_eq!(check("http://user:pass@example.com/"), Err(Refusal::Credentials));
        // The classic: the part before '@' is a user name, the host is what follows.
        assert_eq!(check("http://example.com@127.0.0.1/"), Err(Refusal::Credentials));
        assert_eq!(check("ftp://example.com/"), Err(Refusal::NotWeb));
        assert_eq!(check("file:///etc/passwd"), Err(Refusal::NotWeb));
    }

    #[test]
    fn public_targets_pass_and_the_development_setting_allows_private_ones() {
        for raw in ["https://hooks.example.com/tally", "http://93.184.215.14/", "http://[2606:4700::1111]/"] {
            assert_eq!(check(raw), Ok(()), "{raw}");
        }
        assert_eq!(check_url(&url::Url::parse("http://127.0.0.1:9/").unwrap(), true), Ok(()));
    }

    #[tokio::test]
    async fn the_resolver_drops_private_answers_so_a_rebound_name_reaches_nothing() {
        use reqwest::dns::Resolve;
        let name = || "localhost".parse::<reqwest::dns::Name>().unwrap();
        let refused = PublicOnly { allow_private: false }.resolve(name()).await;
        assert!(refused.is_err(), "localhost resolves only to loopback addresses");
        let allowed = PublicOnly { allow_private: true }.resolve(name()).await.unwrap();
        assert!(allowed.into_iter().all(|addr| addr.ip().is_loopback()));
    }
}
