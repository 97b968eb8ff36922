//! Where webhooks may go: `https://` URLs (`http://` only with `webhooks.allow_http`) whose
//! host resolves only to public addresses. Loopback, private, link-local, shared (CGNAT),
//! unique-local, multicast, unspecified and reserved addresses are refused unless a network
//! of `webhooks.allow_networks` holds them. A URL is checked when it is set (its name
//! resolved then), and every connection is checked again as it is made, by the client's
//! resolver ([`PolicyResolver`]), so a name that later resolves elsewhere (DNS rebinding)
//! is refused too.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use reqwest::Url;

use crate::error::SchedulerError;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2000;

/// The address policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow_http: bool,
    allow: Vec<IpNet>,
}

/// Why an address is special (not a public unicast address), if it is.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special_v4(v4),
            None => special_v6(v6),
        },
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast, broadcast or reserved")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) || (a == 192 && b == 0) {
        Some("reserved")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.is_unique_local() {
        Some("private (unique local)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 || first == 0x0064 || first == 0x0100 {
        Some("reserved")
    } else {
        None
    }
}

impl Policy {
    /// From `webhooks.allow_http` and `webhooks.allow_networks` (CIDR or single
    /// addresses).
    pub fn new(allow_http: bool, networks: &[String]) -> Result<Self, String> {
        let allow = networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("webhooks.allow_networks: {n:?} is not a network (CIDR) or address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow_http, allow })
    }

    /// `Err(why)` when webhooks may not be sent to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let Some(why) = special(ip) else {
            return Ok(());
        };
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if self.allow.iter().any(|n| n.contains(&ip) || n.contains(&mapped)) {
            return Ok(());
        }
        Err(format!("{ip} is a {why} address; an operator must name its network in webhooks.allow_networks"))
    }

    /// Parses and checks a URL's form and, when its host is an address, the address.
    pub fn parse(&self, raw: &str) -> Result<Url, SchedulerError> {
        let bad = |why: String| SchedulerError::invalid("url", why);
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(bad("required".to_owned()));
        }
        if raw.len() > MAX_URL_LEN {
            return Err(bad(format!("must be at most {MAX_URL_LEN} characters")));
        }
        let url = Url::parse(raw).map_err(|e| bad(format!("not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(bad("must be https:// (http:// is not allowed by this deployment)".to_owned()));
            }
            other => return Err(bad(format!("scheme {other}:// is not supported; use https://"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not carry a user name or password (they would be stored in the clear)".to_owned()
            ));
        }
        if url.fragment().is_some() {
            return Err(bad("must not have a #fragment".to_owned()));
        }
        match url.host() {
            None => return Err(bad("has no host".to_owned())),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map_err(bad)?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map_err(bad)?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(url)
    }

    /// [`Policy::parse`], then resolves a host name and checks every address it has.
    pub async fn check(&self, raw: &str) -> Result<Url, SchedulerError> {
        let url = self.parse(raw)?;
        if let Some(url::Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| SchedulerError::invalid("url", format!("host {name} does not resolve: {e}")))?
                .collect();
            for a in &addrs {
                self.check_ip(a.ip())
                    .map_err(|why| SchedulerError::invalid("url", format!("{name}: {why}")))?;
            }
        }
        Ok(url)
    }
}

/// The HTTP client's resolver: the system's answer, without the addresses the policy
/// refuses (and an error naming them when none is left).
#[derive(Debug, Clone)]
pub struct PolicyResolver(pub Arc<Policy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".to_owned());
                return Err(format!("refused address: {host}: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &Policy, url: &str) -> String {
        p.parse(url).unwrap_err().to_string()
    }

    #[test]
    fn private_loopback_and_link_local_targets_are_refused_unless_allowlisted() {
        let strict = Policy::new(true, &[]).unwrap();
        for url in [
            "https://127.0.0.1/hook",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.10:8443/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://0.0.0.0/",
            "https://100.64.0.1/",
        ] {
            let e = refused(&strict, url);
            assert!(e.starts_with("url: ") && e.contains("webhooks.allow_networks"), "{url}: {e}");
        }
        assert!(strict.parse("https://93.184.215.14/hook").is_ok());
        assert!(strict.parse("https://[2606:4700::1111]/").is_ok());
        let local = Policy::new(true, &["127.0.0.0/8".to_owned(), "::1".to_owned()]).unwrap();
        assert!(local.parse("http://127.0.0.1:9000/hook").is_ok());
        assert!(local.parse("http://[::1]:9000/hook").is_ok());
        assert!(local.parse("https://[::ffff:127.0.0.1]/").is_ok());
        assert!(local.parse("https://10.0.0.1/").is_err());
    }

    #[test]
    fn urls_are_checked_field_by_field() {
        let p = Policy::new(false, &[]).unwrap();
        assert!(refused(&p, "http://example.com/").contains("https://"));
        assert!(refused(&p, "ftp://example.com/").contains("scheme ftp"));
        assert!(refused(&p, "https://user:pw@example.com/").contains("password"));
        assert!(refused(&p, "").contains("required"));
        assert!(refused(&p, "not a url").contains("not a URL"));
        assert!(refused(&p, &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))).contains("at most"));
        assert!(p.parse("https://hooks.example.com/sakuga?x=1").is_ok());
        assert!(
            Policy::new(false, &["not-a-net".to_owned()]).unwrap_err().contains("webhooks.allow_networks")
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_and_so_is_its_connection() {
        use reqwest::dns::Resolve as _;
        let strict = Arc::new(Policy::new(true, &[]).unwrap());
        let e = strict.check("http://localhost:9/").await.unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let Err(e) = PolicyResolver(strict).resolve(name).await else { panic!("localhost resolved") };
        assert!(e.to_string().contains("refused address"), "{e}");
        let open = Arc::new(Policy::new(true, &["127.0.0.0/8".to_owned(), "::1/128".to_owned()]).unwrap());
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(PolicyResolver(open).resolve(name).await.is_ok());
    }
}
