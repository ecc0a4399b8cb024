//! What a trusted proxy says about a request in its header fields: the client's address
//! (`X-Forwarded-For`, RFC 7239 `Forwarded: for=`), the scheme it was received with
//! (gunicorn's `secure_scheme_headers`, `Forwarded: proto=`) and optionally the host
//! (`X-Forwarded-Host`, `Forwarded: host=`); and the address lists that say which peers
//! are trusted (`--forwarded-allow-ips`, `--proxy-allow-from`).
//!
//! Pure functions over a head's bytes and spans, like the rest of `http/`: no I/O, no
//! Python. Whether to call them (the peer is trusted) is the caller's decision; what they
//! decide is werkzeug ProxyFix's model: each trusted proxy appends one entry to a list, so
//! with `hops` trusted proxies in front the client is the `hops`-th entry from the right,
//! and anything left of it may have been written by the client and is never read.

#![forbid(unsafe_code)]

use std::net::IpAddr;

use super::{HeaderSpan, Span};

/// A list of addresses and networks (`127.0.0.1,::1,10.0.0.0/8`), or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedAddrs {
    any: bool,
    /// Networks as (address, prefix length); a plain address is a full-length prefix.
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedAddrs {
    /// Parses a comma-separated list of IPs and CIDR networks; `*` alone (or as an entry)
    /// trusts every address. Spaces around entries are allowed, empty entries skipped.
    pub fn parse(list: &str) -> Result<TrustedAddrs, String> {
        let mut trusted = TrustedAddrs {
            any: false,
            nets: Vec::new(),
        };
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                trusted.any = true;
                continue;
            }
            let (addr, prefix) = match entry.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (entry, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| {
                format!("{entry}: expected an IP address, a network such as 10.0.0.0/8, or *")
            })?;
            let ip = ip.to_canonical();
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => match (p.starts_with('+'), p.parse::<u8>()) {
                    (false, Ok(p)) if p <= max => p,
                    _ => return Err(format!("{entry}: the prefix length must be 0 to {max}")),
                },
            };
            trusted.nets.push((ip, prefix));
        }
        Ok(trusted)
    }

    /// Whether `ip` is in the list (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let ip = ip.to_canonical();
        self.nets.iter().any(|&(net, prefix)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

/// What to read from a trusted peer's header fields, validated once from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRules {
    /// Trusted proxies in front (`--forwarded-hops`, at least 1): which entry from the
    /// right of `X-Forwarded-For` and `Forwarded` is the client's.
    pub hops: usize,
    /// gunicorn's `secure_scheme_headers`: a field whose (hops-th from the right) value is
    /// this one means https, any other value http.
    pub scheme_headers: Vec<(String, String)>,
    /// Read `X-Forwarded-Host` / `Forwarded: host=` (`--forwarded-host`, ProxyFix's x_host).
    pub host: bool,
}

impl Default for ForwardedRules {
    fn default() -> ForwardedRules {
        ForwardedRules {
            hops: 1,
            scheme_headers: GUNICORN_SECURE_SCHEME_HEADERS
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            host: false,
        }
    }
}

/// gunicorn's default `secure_scheme_headers`.
pub const GUNICORN_SECURE_SCHEME_HEADERS: &[(&str, &str)] = &[
    ("X-FORWARDED-PROTOCOL", "ssl"),
    ("X-FORWARDED-PROTO", "https"),
    ("X-FORWARDED-SSL", "on"),
];

/// What the fields of one request say, each `None` when they say nothing usable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address, with its port when the entry gave one.
    pub client: Option<(IpAddr, Option<u16>)>,
    /// `Some(true)`: https; `Some(false)`: http; `None`: the connection's own (http).
    pub https: Option<bool>,
    /// The host the client asked for, as a span of the head.
    pub host: Option<Span>,
}

const XFF: &[u8] = b"x-forwarded-for";
const XFH: &[u8] = b"x-forwarded-host";
const FORWARDED: &[u8] = b"forwarded";

/// Reads what `headers` (spans of `bytes`) say under `rules`. One pass over the names
/// finds none of the fields in most requests and returns at once, allocating nothing.
///
/// Precedence, fact by fact: `X-Forwarded-For` decides the client when present at all
/// (even when its entry does not parse, then nothing changes), else `Forwarded: for=`;
/// the secure scheme fields decide the scheme when any is present, else `Forwarded:
/// proto=`; likewise `X-Forwarded-Host` over `Forwarded: host=`. The `X-Forwarded-*`
/// fields win because they are what nginx, HAProxy and the cloud balancers append to.
pub fn resolve(bytes: &[u8], headers: &[HeaderSpan], rules: &ForwardedRules) -> Forwarded {
    let (mut xff, mut xfh, mut fwd, mut scheme) = (false, false, false, false);
    for h in headers {
        let name = h.name.get(bytes);
        xff |= name.eq_ignore_ascii_case(XFF);
        fwd |= name.eq_ignore_ascii_case(FORWARDED);
        xfh |= rules.host && name.eq_ignore_ascii_case(XFH);
        scheme |= rules
            .scheme_headers
            .iter()
            .any(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()));
    }
    let mut out = Forwarded::default();
    if !(xff || xfh || fwd || scheme) {
        return out;
    }
    let hops = rules.hops.max(1);
    let element = if fwd {
        nth_forwarded_element(bytes, headers, hops)
    } else {
        None
    };
    out.client = if xff {
        nth_from_right(bytes, headers, XFF, hops).and_then(|s| parse_node(s.get(bytes)))
    } else {
        element.and_then(|e| e.for_.and_then(|s| parse_node(s.get(bytes))))
    };
    out.https = if scheme {
        // Every secure scheme field present must agree; fields that disagree are a
        // misconfigured proxy (gunicorn answers 400): then none of them is believed.
        let mut verdict = None;
        for (name, secure) in &rules.scheme_headers {
            if !headers
                .iter()
                .any(|h| h.name.get(bytes).eq_ignore_ascii_case(name.as_bytes()))
            {
                continue;
            }
            let https = nth_from_right(bytes, headers, name.as_bytes(), hops)
                .is_some_and(|s| s.get(bytes).eq_ignore_ascii_case(secure.as_bytes()));
            match verdict {
                None => verdict = Some(Some(https)),
                Some(Some(before)) if before != https => verdict = Some(None),
                Some(_) => {}
            }
        }
        verdict.flatten()
    } else {
        element.and_then(|e| e.proto).map(|s| {
            let proto = s.get(bytes);
            proto.eq_ignore_ascii_case(b"https")
        })
    };
    out.host = if xfh {
        nth_from_right(bytes, headers, XFH, hops).filter(|s| valid_host(s.get(bytes)))
    } else if rules.host {
        element
            .and_then(|e| e.host)
            .filter(|s| valid_host(s.get(bytes)))
    } else {
        None
    };
    out
}

/// The `n`-th entry from the right of the comma list that all `name` fields make together
/// (RFC 9110 §5.3: repeated lines are one list), trimmed; `None` when there are fewer.
fn nth_from_right(bytes: &[u8], headers: &[HeaderSpan], name: &[u8], n: usize) -> Option<Span> {
    let mut left = n;
    for h in headers.iter().rev() {
        if !h.name.get(bytes).eq_ignore_ascii_case(name) {
            continue;
        }
        let mut end = h.value.end as usize;
        let start = h.value.start as usize;
        loop {
            let value = &bytes[start..end];
            let comma = value.iter().rposition(|&b| b == b',');
            let item_start = comma.map_or(start, |c| start + c + 1);
            left -= 1;
            if left == 0 {
                return Some(trim(bytes, item_start, end));
            }
            match comma {
                Some(c) => end = start + c,
                None => break,
            }
        }
    }
    None
}

fn trim(bytes: &[u8], mut start: usize, mut end: usize) -> Span {
    while start < end && matches!(bytes[start], b' ' | b'\t') {
        start += 1;
    }
    while end > start && matches!(bytes[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    Span {
        start: start as u32,
        end: end as u32,
    }
}

/// The parameters of one `Forwarded` element that matter here, as spans of their values
/// (quotes removed).
#[derive(Clone, Copy, Default)]
struct Element {
    for_: Option<Span>,
    proto: Option<Span>,
    host: Option<Span>,
}

/// The `n`-th element from the right of all `Forwarded` fields (RFC 7239 §4:
/// `forwarded-element *( "," forwarded-element )`, each `pair *( ";" pair )`, a value a
/// token or a quoted-string). An element that does not parse counts as one but yields no
/// parameters; a quoted-string with a backslash escape is not read (no address needs one).
fn nth_forwarded_element(bytes: &[u8], headers: &[HeaderSpan], n: usize) -> Option<Element> {
    // Elements are split on commas outside quotes, so they are found left to right; most
    // requests carry one or two, so a small list is all this costs, and only when the
    // field is there.
    let mut elements: Vec<Element> = Vec::new();
    for h in headers {
        if !h.name.get(bytes).eq_ignore_ascii_case(FORWARDED) {
            continue;
        }
        let (start, end) = (h.value.start as usize, h.value.end as usize);
        let mut i = start;
        let mut element = Element::default();
        let mut ok = true;
        loop {
            // One pair: token "=" value, then ";" (next pair), "," (next element) or end.
            while i < end && matches!(bytes[i], b' ' | b'\t') {
                i += 1;
            }
            let key_start = i;
            while i < end && !matches!(bytes[i], b'=' | b';' | b',') {
                i += 1;
            }
            let key = &bytes[key_start..i];
            let mut value = None;
            if i < end && bytes[i] == b'=' {
                i += 1;
                if i < end && bytes[i] == b'"' {
                    let value_start = i + 1;
                    match bytes[value_start..end].iter().position(|&b| b == b'"') {
                        Some(q) => {
                            let value_end = value_start + q;
                            if bytes[value_start..value_end].contains(&b'\\') {
                                ok = false;
                            }
                            value = Some(Span {
                                start: value_start as u32,
                                end: value_end as u32,
                            });
                            i = value_end + 1;
                        }
                        None => {
                            ok = false;
                            i = end;
                        }
                    }
                } else {
                    let value_start = i;
                    while i < end && !matches!(bytes[i], b';' | b',') {
                        i += 1;
                    }
                    value = Some(trim(bytes, value_start, i));
                }
                while i < end && matches!(bytes[i], b' ' | b'\t') {
                    i += 1;
                }
            } else if !key.trim_ascii().is_empty() {
                ok = false;
            }
            let key = key.trim_ascii();
            if key.eq_ignore_ascii_case(b"for") {
                element.for_ = value;
            } else if key.eq_ignore_ascii_case(b"proto") {
                element.proto = value;
            } else if key.eq_ignore_ascii_case(b"host") {
                element.host = value;
            }
            match bytes.get(i).filter(|_| i < end) {
                Some(b';') => i += 1,
                Some(b',') | None => {
                    elements.push(if ok { element } else { Element::default() });
                    element = Element::default();
                    ok = true;
                    if i >= end {
                        break;
                    }
                    i += 1;
                }
                Some(_) => {
                    // Junk after a quoted value: the element is not read.
                    ok = false;
                    while i < end && !matches!(bytes[i], b',' | b';') {
                        i += 1;
                    }
                }
            }
        }
    }
    elements.len().checked_sub(n).map(|i| elements[i])
}

/// A node as `X-Forwarded-For` and `Forwarded: for=` write it: `192.0.2.1`,
/// `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`. Anything
/// else (`unknown`, an obfuscated `_hidden`, a name) is `None`.
pub fn parse_node(node: &[u8]) -> Option<(IpAddr, Option<u16>)> {
    let text = std::str::from_utf8(node).ok()?.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':')?)?),
        };
        return Some((IpAddr::V6(ip).to_canonical(), port));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip.to_canonical(), None));
    }
    let (ip, p) = text.rsplit_once(':')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    Some((IpAddr::V4(ip), Some(port(p)?)))
}

fn port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A host value fit for `HTTP_HOST`: not empty, only the bytes of an authority
/// (RFC 3986 reg-name, IP-literal, port); a value that is not one is ignored.
fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'['
                        | b']'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b'='
                        | b'%'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head made of `fields`, as spans of one buffer.
    fn head(fields: &[(&str, &str)]) -> (Vec<u8>, Vec<HeaderSpan>) {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for (name, value) in fields {
            let n0 = bytes.len();
            bytes.extend_from_slice(name.as_bytes());
            let n1 = bytes.len();
            bytes.extend_from_slice(b": ");
            let v0 = bytes.len();
            bytes.extend_from_slice(value.as_bytes());
            let v1 = bytes.len();
            bytes.extend_from_slice(b"\r\n");
            spans.push(HeaderSpan {
                name: Span {
                    start: n0 as u32,
                    end: n1 as u32,
                },
                value: Span {
                    start: v0 as u32,
                    end: v1 as u32,
                },
            });
        }
        (bytes, spans)
    }

    fn rules(hops: usize, host: bool) -> ForwardedRules {
        ForwardedRules {
            hops,
            host,
            ..ForwardedRules::default()
        }
    }

    fn client(fields: &[(&str, &str)], hops: usize) -> Option<String> {
        let (bytes, spans) = head(fields);
        resolve(&bytes, &spans, &rules(hops, false))
            .client
            .map(|(ip, port)| match port {
                Some(port) => format!("{ip} {port}"),
                None => ip.to_string(),
            })
    }

    #[test]
    fn trusted_addresses_and_networks() {
        let t = TrustedAddrs::parse("127.0.0.1, ::1,10.0.0.0/8,2001:db8::/32").unwrap();
        for yes in [
            "127.0.0.1",
            "::1",
            "10.200.3.4",
            "2001:db8:1::9",
            "::ffff:127.0.0.1",
        ] {
            assert!(t.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["127.0.0.2", "11.0.0.1", "2001:db9::1", "::2"] {
            assert!(!t.contains(no.parse().unwrap()), "{no}");
        }
        let any = TrustedAddrs::parse("*").unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        let none = TrustedAddrs::parse("").unwrap();
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
        let all_v4 = TrustedAddrs::parse("0.0.0.0/0").unwrap();
        assert!(all_v4.contains("8.8.8.8".parse().unwrap()));
        assert!(!all_v4.contains("::8".parse().unwrap()));
        for bad in [
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "1.2.3.4/x",
            "1.2.3.4/+8",
        ] {
            assert!(TrustedAddrs::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_counting_takes_the_nth_address_from_the_right() {
        let fields = [("X-Forwarded-For", "203.0.113.1, 198.51.100.2, 10.0.0.3")];
        assert_eq!(client(&fields, 1).as_deref(), Some("10.0.0.3"));
        assert_eq!(client(&fields, 2).as_deref(), Some("198.51.100.2"));
        assert_eq!(client(&fields, 3).as_deref(), Some("203.0.113.1"));
        // Fewer entries than trusted hops: the client may have written all of them.
        assert_eq!(client(&fields, 4), None);
        // Repeated lines are one list, in order.
        let split = [
            ("X-Forwarded-For", "203.0.113.1"),
            ("Host", "x"),
            ("x-forwarded-for", "198.51.100.2,10.0.0.3"),
        ];
        assert_eq!(client(&split, 2).as_deref(), Some("198.51.100.2"));
        assert_eq!(client(&split, 3).as_deref(), Some("203.0.113.1"));
    }

    #[test]
    fn addresses_that_do_not_parse_are_ignored() {
        for value in [
            "unknown",
            "",
            "example.com",
            "1.2.3.4.5",
            "10.0.0.1, ",
            "[::1",
        ] {
            assert_eq!(client(&[("X-Forwarded-For", value)], 1), None, "{value:?}");
        }
        // A bad entry that is not the one counted does not matter.
        assert_eq!(
            client(&[("X-Forwarded-For", "garbage, 10.0.0.1")], 1).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            client(&[("X-Forwarded-For", "[2001:db8::1]:443")], 1).as_deref(),
            Some("2001:db8::1 443")
        );
        assert_eq!(
            client(&[("X-Forwarded-For", "192.0.2.1:8080")], 1).as_deref(),
            Some("192.0.2.1 8080")
        );
    }

    #[test]
    fn forwarded_elements() {
        let fields = [(
            "Forwarded",
            r#"for=203.0.113.1;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.1"#,
        )];
        assert_eq!(
            client(&fields, 1).as_deref(),
            Some("2001:db8:cafe::17 4711")
        );
        assert_eq!(client(&fields, 2).as_deref(), Some("203.0.113.1"));
        let (bytes, spans) = head(&fields);
        assert_eq!(resolve(&bytes, &spans, &rules(1, false)).https, Some(true));
        assert_eq!(resolve(&bytes, &spans, &rules(2, false)).https, Some(false));
        // Case-insensitive names, quoted IPv4 with a port, obfuscated nodes ignored.
        assert_eq!(
            client(&[("forwarded", r#"For="192.0.2.60:80""#)], 1).as_deref(),
            Some("192.0.2.60 80")
        );
        assert_eq!(client(&[("Forwarded", "for=_hidden")], 1), None);
        assert_eq!(client(&[("Forwarded", "for=unknown")], 1), None);
        // An unterminated quote, or an escape, spoils its element only.
        assert_eq!(client(&[("Forwarded", r#"for="1.2.3.4"#)], 1), None);
        assert_eq!(
            client(&[("Forwarded", r#"for="1.2\.3.4", for=5.6.7.8"#)], 1).as_deref(),
            Some("5.6.7.8")
        );
        assert_eq!(
            client(&[("Forwarded", r#"for="a,b";proto=x, for=5.6.7.8"#)], 1).as_deref(),
            Some("5.6.7.8")
        );
        // Lines join into one list.
        let two = [("Forwarded", "for=1.1.1.1"), ("Forwarded", "for=2.2.2.2")];
        assert_eq!(client(&two, 2).as_deref(), Some("1.1.1.1"));
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let fields = [
            ("Forwarded", "for=1.1.1.1;proto=https"),
            ("X-Forwarded-For", "2.2.2.2"),
        ];
        assert_eq!(client(&fields, 1).as_deref(), Some("2.2.2.2"));
        // ...even when its entry is no address: nothing changes then.
        let bad = [("Forwarded", "for=1.1.1.1"), ("X-Forwarded-For", "nope")];
        assert_eq!(client(&bad, 1), None);
        // The scheme is another fact: Forwarded's proto counts while no scheme field is there.
        let (bytes, spans) = head(&fields);
        assert_eq!(resolve(&bytes, &spans, &rules(1, false)).https, Some(true));
    }

    #[test]
    fn secure_scheme_headers() {
        let https = |fields: &[(&str, &str)], hops| {
            let (bytes, spans) = head(fields);
            resolve(&bytes, &spans, &rules(hops, false)).https
        };
        assert_eq!(https(&[("X-Forwarded-Proto", "https")], 1), Some(true));
        assert_eq!(https(&[("X-Forwarded-Proto", "HTTPS")], 1), Some(true));
        assert_eq!(https(&[("X-Forwarded-Proto", "http")], 1), Some(false));
        assert_eq!(https(&[("X-Forwarded-Ssl", "on")], 1), Some(true));
        assert_eq!(https(&[("X-Forwarded-Protocol", "ssl")], 1), Some(true));
        assert_eq!(
            https(&[("X-Forwarded-Proto", "http, https")], 1),
            Some(true)
        );
        assert_eq!(
            https(&[("X-Forwarded-Proto", "http, https")], 2),
            Some(false)
        );
        // Fields that disagree: none is believed.
        let conflict = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "off")];
        assert_eq!(https(&conflict, 1), None);
        let three = [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Ssl", "off"),
            ("X-Forwarded-Protocol", "ssl"),
        ];
        assert_eq!(https(&three, 1), None);
        // A conflict spoils the scheme only, not the other facts.
        let (bytes, spans) = head(&[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Ssl", "off"),
            ("X-Forwarded-For", "192.0.2.1"),
            ("X-Forwarded-Host", "example.com"),
        ]);
        let said = resolve(&bytes, &spans, &rules(1, true));
        assert_eq!(said.https, None);
        assert!(said.client.is_some() && said.host.is_some());
        assert_eq!(https(&[("Host", "x")], 1), None);
    }

    #[test]
    fn host_only_when_asked() {
        let fields = [
            ("X-Forwarded-Host", "example.com:8443"),
            ("Host", "backend"),
        ];
        let (bytes, spans) = head(&fields);
        assert_eq!(resolve(&bytes, &spans, &rules(1, false)).host, None);
        let host = resolve(&bytes, &spans, &rules(1, true)).host.unwrap();
        assert_eq!(host.get(&bytes), b"example.com:8443");
        let fwd = [("Forwarded", r#"host="example.org";for=1.2.3.4"#)];
        let (bytes, spans) = head(&fwd);
        let host = resolve(&bytes, &spans, &rules(1, true)).host.unwrap();
        assert_eq!(host.get(&bytes), b"example.org");
        let bad = [("X-Forwarded-Host", "evil com")];
        let (bytes, spans) = head(&bad);
        assert_eq!(resolve(&bytes, &spans, &rules(1, true)).host, None);
    }
}
