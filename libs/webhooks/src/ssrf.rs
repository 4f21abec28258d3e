//! The SSRF guard: a webhook URL is a request Ebb makes on a customer's behalf from inside the
//! deployment, so it must not reach what only the deployment can reach (loopback, private
//! networks, link-local, the cloud metadata service).
//!
//! [`WebhookUrl::parse`] checks the URL's form (http or https, a host, no more than 2,048 bytes);
//! [`resolve`] resolves its host and checks EVERY address it resolves to against a [`Policy`],
//! refusing the URL if any one is refused. The caller then connects to the returned
//! [`Destination::addrs`] only, never resolving the name again: a DNS answer that changes between
//! the check and the connect (DNS rebinding) cannot slip an internal address past the guard.
//! Redirects are not followed (the caller's job: a redirect is a failed attempt).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) and the NAT64 and 6to4 forms are judged by the
//! IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use url::{Host, Url};

/// What an address is, as far as reaching it from the deployment goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Routable on the internet: allowed.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// RFC 6598 shared address space (carrier-grade NAT), 100.64/10.
    SharedCgnat,
    /// IPv6 unique local, fc00::/7.
    UniqueLocal,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// A cloud metadata service: 169.254.169.254, fd00:ec2::254, 100.100.100.200.
    Metadata,
    /// 0.0.0.0, :: (Linux connects them to the local host).
    Unspecified,
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Special-purpose ranges that are no destination: 0/8, 192.0.0/24, documentation, 198.18/15
    /// (benchmarking), 240/4, IPv6 documentation, discard-only, site-local, IPv4-compatible, Teredo.
    Reserved,
}

impl AddressClass {
    /// Names the class for an error message.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address (rfc 1918)",
            AddressClass::SharedCgnat => "a shared carrier-grade nat address (100.64.0.0/10)",
            AddressClass::UniqueLocal => "a unique local ipv6 address (fc00::/7)",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Metadata => "a cloud metadata service address",
            AddressClass::Unspecified => "the unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "a reserved special-purpose address",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Classifies `ip`, judging IPv6 forms that carry an IPv4 address by that address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    // Most specific first: the metadata addresses sit inside link-local and CGNAT.
    let table: [([u8; 4], u32, AddressClass); 18] = [
        ([169, 254, 169, 254], 32, Metadata),
        ([100, 100, 100, 200], 32, Metadata),
        ([0, 0, 0, 0], 32, Unspecified),
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, Reserved),
        ([127, 0, 0, 0], 8, Loopback),
        ([10, 0, 0, 0], 8, Private),
        ([172, 16, 0, 0], 12, Private),
        ([192, 168, 0, 0], 16, Private),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Reserved),
        ([198, 51, 100, 0], 24, Reserved),
        ([203, 0, 113, 0], 24, Reserved),
        ([198, 18, 0, 0], 15, Reserved),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map_or(Public, |(_, _, class)| *class)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // NAT64 well-known prefix: a gateway forwards to the IPv4 address in the low 32 bits.
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return classify_v4(low32);
    }
    // 6to4: a relay forwards to the IPv4 address in bits 16..48.
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("a literal address");
    let table: [(Ipv6Addr, u32, AddressClass); 12] = [
        (v6("fd00:ec2::254"), 128, Metadata),
        (Ipv6Addr::UNSPECIFIED, 128, Unspecified),
        (Ipv6Addr::LOCALHOST, 128, Loopback),
        // IPv4-compatible (deprecated): ::a.b.c.d.
        (Ipv6Addr::UNSPECIFIED, 96, Reserved),
        (v6("100::"), 64, Reserved),
        (v6("2001::"), 32, Reserved),
        (v6("2001:db8::"), 32, Reserved),
        (v6("3fff::"), 20, Reserved),
        (v6("fc00::"), 7, UniqueLocal),
        (v6("fe80::"), 10, LinkLocal),
        (v6("fec0::"), 10, Reserved),
        (v6("ff00::"), 8, Multicast),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map_or(Public, |(_, _, class)| *class)
}

/// Whether a kind of address may be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    Refuse,
    Allow,
}

/// A [`Permit`] as a setting (`refuse` or `allow`), shared by the gateway, which checks the URLs
/// it stores, and the worker, which checks every address before it connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    #[default]
    Refuse,
    Allow,
}

impl From<Reach> for Permit {
    fn from(r: Reach) -> Self {
        match r {
            Reach::Refuse => Permit::Refuse,
            Reach::Allow => Permit::Allow,
        }
    }
}

/// Which addresses a deployment lets webhooks reach. Link-local, metadata, unspecified,
/// multicast, broadcast and reserved addresses are always refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// 127/8 and ::1: `ebb dev` allows them, so a receiver on the developer's machine works.
    pub loopback: Permit,
    /// RFC 1918, unique local and CGNAT: a deployment whose receivers sit on its own network
    /// opts in.
    pub private: Permit,
    /// The longest a name's resolution may take.
    pub lookup_timeout: Duration,
}

impl Policy {
    /// Public addresses only: the default of a deployment.
    pub const fn strict() -> Self {
        Self {
            loopback: Permit::Refuse,
            private: Permit::Refuse,
            lookup_timeout: Duration::from_secs(5),
        }
    }

    /// `ebb dev`: loopback too.
    pub const fn dev() -> Self {
        Self {
            loopback: Permit::Allow,
            ..Self::strict()
        }
    }

    /// Whether `ip` may be reached, or which class refused it.
    pub fn check(&self, ip: IpAddr) -> Result<(), AddressClass> {
        let class = classify(ip);
        let permit = match class {
            AddressClass::Public => Permit::Allow,
            AddressClass::Loopback => self.loopback,
            AddressClass::Private | AddressClass::UniqueLocal | AddressClass::SharedCgnat => {
                self.private
            }
            AddressClass::LinkLocal
            | AddressClass::Metadata
            | AddressClass::Unspecified
            | AddressClass::Multicast
            | AddressClass::Broadcast
            | AddressClass::Reserved => Permit::Refuse,
        };
        match permit {
            Permit::Allow => Ok(()),
            Permit::Refuse => Err(class),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::strict()
    }
}

/// Why a URL is not a webhook URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the webhook url is not a valid url: {0}")]
    Syntax(String),
    #[error("a webhook url is at most {max} bytes, not {len}", max = WebhookUrl::MAX_LEN)]
    TooLong { len: usize },
    #[error("a webhook url must use http or https, not {0:?}")]
    Scheme(String),
    #[error("a webhook url must name a host")]
    NoHost,
}

/// A URL of the right form for a webhook: http or https, with a host. Not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(text: &str) -> Result<Self, UrlError> {
        if text.len() > Self::MAX_LEN {
            return Err(UrlError::TooLong { len: text.len() });
        }
        let url = Url::parse(text).map_err(|e| UrlError::Syntax(e.to_string()))?;
        // Normalising percent-encodes: the stored form is what must fit.
        if url.as_str().len() > Self::MAX_LEN {
            return Err(UrlError::TooLong {
                len: url.as_str().len(),
            });
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme(url.scheme().to_owned()));
        }
        match url.host() {
            None => Err(UrlError::NoHost),
            Some(Host::Domain("")) => Err(UrlError::NoHost),
            Some(_) => Ok(Self(url)),
        }
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// Why [`resolve`] refused a URL.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    #[error(
        "the webhook host {host} resolves to {addr}, {class}, which this deployment does not allow"
    )]
    Refused {
        host: String,
        addr: IpAddr,
        class: AddressClass,
    },
    #[error("resolving the webhook host {host}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("resolving the webhook host {host} took longer than {timeout:?}")]
    LookupTimeout { host: String, timeout: Duration },
    #[error("the webhook host {host} resolves to no address")]
    NoAddress { host: String },
}

/// Where to send a webhook: the URL (for the request line and the Host header) and the checked
/// addresses to connect to, and only to these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub url: Url,
    /// The host as the URL names it (the TLS server name, the Host header).
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Resolves `url`'s host (an IP literal is taken as is) and checks every address against
/// `policy`: one refused address refuses the URL.
pub async fn resolve(url: &WebhookUrl, policy: &Policy) -> Result<Destination, SsrfError> {
    let u = url.as_url();
    // Both schemes have a default port; parse() admits no other scheme.
    let port = u.port_or_known_default().unwrap_or(443);
    let (host, addrs): (String, Vec<SocketAddr>) = match u.host() {
        Some(Host::Ipv4(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Ipv6(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Domain(name)) => {
            let host = name.to_owned();
            let lookup = tokio::net::lookup_host((name, port));
            let found = tokio::time::timeout(policy.lookup_timeout, lookup)
                .await
                .map_err(|_| SsrfError::LookupTimeout {
                    host: host.clone(),
                    timeout: policy.lookup_timeout,
                })?
                .map_err(|source| SsrfError::Lookup {
                    host: host.clone(),
                    source,
                })?;
            let mut addrs: Vec<SocketAddr> = found.collect();
            addrs.dedup();
            (host, addrs)
        }
        // WebhookUrl::parse refused a URL without a host.
        None => {
            return Err(SsrfError::NoAddress {
                host: String::new(),
            });
        }
    };
    check_all(&host, &addrs, policy)?;
    Ok(Destination {
        url: u.clone(),
        host,
        addrs,
    })
}

/// Checks every address of `host`; the first refused one is named.
pub fn check_all(host: &str, addrs: &[SocketAddr], policy: &Policy) -> Result<(), SsrfError> {
    if addrs.is_empty() {
        return Err(SsrfError::NoAddress {
            host: host.to_owned(),
        });
    }
    for a in addrs {
        if let Err(class) = policy.check(a.ip()) {
            return Err(SsrfError::Refused {
                host: host.to_owned(),
                addr: a.ip(),
                class,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    #[test]
    fn classes() {
        let check = |ip: &str, want: AddressClass| {
            assert_eq!(classify(ip.parse().unwrap()), want, "{ip}");
        };
        check("8.8.8.8", Public);
        check("1.1.1.1", Public);
        check("127.0.0.1", Loopback);
        check("127.255.0.9", Loopback);
        check("10.1.2.3", Private);
        check("172.16.0.1", Private);
        check("172.31.255.255", Private);
        check("172.32.0.1", Public);
        check("192.168.1.1", Private);
        check("100.64.0.1", SharedCgnat);
        check("100.127.255.255", SharedCgnat);
        check("100.128.0.1", Public);
        check("169.254.0.1", LinkLocal);
        check("169.254.169.254", Metadata);
        check("100.100.100.200", Metadata);
        check("0.0.0.0", Unspecified);
        check("0.1.2.3", Reserved);
        check("224.0.0.1", Multicast);
        check("239.255.255.250", Multicast);
        check("255.255.255.255", Broadcast);
        check("240.0.0.1", Reserved);
        check("192.0.2.7", Reserved);
        check("198.18.0.1", Reserved);
        check("192.0.0.192", Reserved);
        check("2606:4700:4700::1111", Public);
        check("::1", Loopback);
        check("::", Unspecified);
        check("fc00::1", UniqueLocal);
        check("fd12:3456::1", UniqueLocal);
        check("fd00:ec2::254", Metadata);
        check("fe80::1", LinkLocal);
        check("febf::1", LinkLocal);
        check("ff02::1", Multicast);
        check("2001:db8::1", Reserved);
        check("fec0::1", Reserved);
        check("::7f00:1", Reserved);
        // IPv4 carried in IPv6 is judged by the IPv4 address.
        check("::ffff:127.0.0.1", Loopback);
        check("::ffff:10.0.0.1", Private);
        check("::ffff:169.254.169.254", Metadata);
        check("::ffff:8.8.8.8", Public);
        check("64:ff9b::a9fe:a9fe", Metadata);
        check("64:ff9b::808:808", Public);
        check("2002:7f00:1::", Loopback);
        check("2002:0808:0808::", Public);
    }

    #[test]
    fn policies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let strict = Policy::strict();
        let dev = Policy::dev();
        let private = Policy {
            private: Permit::Allow,
            ..Policy::strict()
        };
        assert_eq!(strict.check(ip("8.8.8.8")), Ok(()));
        assert_eq!(strict.check(ip("127.0.0.1")), Err(Loopback));
        assert_eq!(dev.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(dev.check(ip("::1")), Ok(()));
        assert_eq!(dev.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(dev.check(ip("10.0.0.1")), Err(Private));
        assert_eq!(private.check(ip("10.0.0.1")), Ok(()));
        assert_eq!(private.check(ip("fd12::1")), Ok(()));
        assert_eq!(private.check(ip("100.64.0.1")), Ok(()));
        assert_eq!(private.check(ip("127.0.0.1")), Err(Loopback));
        // Never allowed, whatever the deployment opts into.
        let everything = Policy {
            loopback: Permit::Allow,
            private: Permit::Allow,
            ..Policy::strict()
        };
        for never in [
            "169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "169.254.1.1",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(everything.check(ip(never)).is_err(), "{never}");
        }
    }

    #[test]
    fn url_forms() {
        assert!(WebhookUrl::parse("https://hooks.example.com/ebb").is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/x").is_ok());
        assert!(WebhookUrl::parse("http://[::1]:8080/x").is_ok());
        assert_eq!(
            WebhookUrl::parse("ftp://example.com/"),
            Err(UrlError::Scheme("ftp".to_owned()))
        );
        assert_eq!(
            WebhookUrl::parse("file:///etc/passwd"),
            Err(UrlError::Scheme("file".to_owned()))
        );
        assert!(matches!(
            WebhookUrl::parse("not a url"),
            Err(UrlError::Syntax(_))
        ));
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(matches!(
            WebhookUrl::parse(&long),
            Err(UrlError::TooLong { .. })
        ));
        assert_eq!(
            UrlError::Scheme("ftp".to_owned()).to_string(),
            "a webhook url must use http or https, not \"ftp\""
        );
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_a_lookup() {
        let url = |s: &str| WebhookUrl::parse(s).unwrap();
        let err = resolve(
            &url("http://169.254.169.254/latest/meta-data"),
            &Policy::dev(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the webhook host 169.254.169.254 resolves to 169.254.169.254, a cloud metadata \
             service address, which this deployment does not allow"
        );
        // Obfuscated forms are parsed as the address they are (WHATWG URL parsing).
        for sneaky in [
            "http://0x7f.0.0.1/",
            "http://2130706433/",
            "http://[::ffff:7f00:1]/",
        ] {
            let err = resolve(&url(sneaky), &Policy::strict()).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    SsrfError::Refused {
                        class: Loopback,
                        ..
                    }
                ),
                "{sneaky}: {err}"
            );
        }
        let ok = resolve(&url("https://127.0.0.1:8443/h"), &Policy::dev())
            .await
            .unwrap();
        assert_eq!(ok.addrs, vec!["127.0.0.1:8443".parse().unwrap()]);
        let ok = resolve(&url("http://93.184.215.14/h"), &Policy::strict())
            .await
            .unwrap();
        assert_eq!(ok.addrs, vec!["93.184.215.14:80".parse().unwrap()]);
        assert_eq!(ok.host, "93.184.215.14");
    }

    /// `localhost` resolves through the system resolver (/etc/hosts, no network): every address
    /// it yields is loopback, refused by default and allowed by `ebb dev`.
    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let url = WebhookUrl::parse("http://localhost:9000/hook").unwrap();
        let err = resolve(&url, &Policy::strict()).await.unwrap_err();
        assert!(
            matches!(&err, SsrfError::Refused { host, class: Loopback, .. } if host == "localhost"),
            "{err}"
        );
        let ok = resolve(&url, &Policy::dev()).await.unwrap();
        assert!(!ok.addrs.is_empty());
        assert!(
            ok.addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9000)
        );
        assert_eq!(ok.host, "localhost");
    }

    #[test]
    fn one_refused_address_refuses_them_all() {
        let addrs: Vec<SocketAddr> = vec![
            "93.184.215.14:443".parse().unwrap(),
            "10.0.0.5:443".parse().unwrap(),
        ];
        let err = check_all("rebind.example", &addrs, &Policy::strict()).unwrap_err();
        assert!(
            matches!(err, SsrfError::Refused { addr, class: Private, .. } if addr.to_string() == "10.0.0.5"),
            "{err}"
        );
        assert!(matches!(
            check_all("empty.example", &[], &Policy::strict()),
            Err(SsrfError::NoAddress { .. })
        ));
    }
}
