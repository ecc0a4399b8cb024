//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2) that a
//! load balancer sends before anything else on a connection, saying whom the connection
//! is really from. A pure function over bytes: [`parse_proxy_header`] returns "need more"
//! (`Ok(None)`), the header and its length, or why the bytes are not one; it never reads
//! past the header, so whatever follows it in the same read is the HTTP request.
//!
//! Strict by design: when the PROXY protocol is on, a connection that does not start with a
//! well-formed header is not served (the spec, §2: "the receiver MUST NOT try to guess").
//! A prefix of a valid header only ever yields "need more"; the first byte that cannot
//! belong to one yields the error, so a header split at any byte is read alike.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 header's prefix, `PROXY` and its space.
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included (spec §2.1).
pub const V1_MAX_LEN: usize = 107;
/// The v2 header's 12-byte signature (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// Most address and TLV bytes a v2 header may carry here. The addresses take at most 216
/// (UNIX); the rest is TLVs (SSL details, unique IDs, cloud endpoint IDs), which are
/// skipped. The length field allows 65535; more than this is refused as oversized, so a
/// peer cannot make a connection buffer 64 KiB before its request starts.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// A complete PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Its length in bytes: what follows belongs to the connection's stream.
    pub len: usize,
    /// The client's address and port, or `None` when the header does not give one (v1
    /// `UNKNOWN`, v2 `LOCAL` or a family other than INET/INET6): then the connection's
    /// own peer stands.
    pub source: Option<SocketAddr>,
}

/// Why the bytes are not a PROXY header. Each ends the connection without a response:
/// the peer is not speaking HTTP yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither `PROXY ` nor the v2 signature: no header at all.
    NotProxy,
    /// A v1 line of more than 107 bytes without its CRLF.
    V1TooLong,
    /// A v1 line that is not `PROXY TCP4|TCP6 src dst sport dport` or `PROXY UNKNOWN ...`.
    V1Malformed,
    /// A v2 version other than 2, or a command other than LOCAL and PROXY.
    V2Version,
    /// A v2 address family or transport that does not exist.
    V2Family,
    /// A v2 length too short for the addresses of its family.
    V2Length,
    /// A v2 length beyond [`V2_MAX_PAYLOAD`].
    V2TooLong,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::NotProxy => "no PROXY protocol header",
            ProxyError::V1TooLong => "PROXY v1 line longer than 107 bytes",
            ProxyError::V1Malformed => "malformed PROXY v1 line",
            ProxyError::V2Version => "PROXY v2 header with an unknown version or command",
            ProxyError::V2Family => "PROXY v2 header with an unknown address family",
            ProxyError::V2Length => "PROXY v2 header too short for its addresses",
            ProxyError::V2TooLong => "PROXY v2 header longer than Spindle accepts",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY header at the start of `buf`: `Ok(None)` while `buf` is a prefix of
/// one, `Ok(Some)` once it is complete (bytes after it are not looked at), `Err` as soon
/// as `buf` cannot start one.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Whether `buf` agrees with `prefix` as far as both go.
fn agrees(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// Version 1: `PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n` (spec §2.1).
fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !agrees(buf, V1_PREFIX) {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    // A bare LF, or CR followed by anything but LF, is no line end.
    if window[cr] != b'\r' {
        return Err(ProxyError::V1Malformed);
    }
    match window.get(cr + 1) {
        // A CR as the 107th byte: its LF would be the 108th, so no header can end here,
        // and waiting for that byte would read past the limit (found by fuzz/proxy).
        None if cr + 1 >= V1_MAX_LEN => return Err(ProxyError::V1TooLong),
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1Malformed),
    }
    let len = cr + 2;
    if cr < V1_PREFIX.len() {
        return Err(ProxyError::V1Malformed);
    }
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..cr]).map_err(|_| ProxyError::V1Malformed)?;
    if !line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(ProxyError::V1Malformed);
    }
    // `UNKNOWN` may be followed by anything up to the CRLF (spec: the receiver ignores it).
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Some(ProxyHeader { len, source: None }));
    }
    let mut fields = line.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Malformed);
    };
    let ip = match proto {
        "TCP4" => src.parse::<Ipv4Addr>().map(IpAddr::V4),
        "TCP6" => src.parse::<Ipv6Addr>().map(IpAddr::V6),
        _ => return Err(ProxyError::V1Malformed),
    }
    .map_err(|_| ProxyError::V1Malformed)?;
    // The destination must be of the same family, though only the source is used.
    let dst_ok = match proto {
        "TCP4" => dst.parse::<Ipv4Addr>().is_ok(),
        _ => dst.parse::<Ipv6Addr>().is_ok(),
    };
    let (Some(port), Some(_)) = (v1_port(sport), v1_port(dport)) else {
        return Err(ProxyError::V1Malformed);
    };
    if !dst_ok {
        return Err(ProxyError::V1Malformed);
    }
    Ok(Some(ProxyHeader {
        len,
        source: Some(SocketAddr::new(ip, port)),
    }))
}

/// A v1 port: 1 to 5 decimal digits, at most 65535, no sign, no leading zero (spec §2.1).
fn v1_port(text: &str) -> Option<u16> {
    let digits = text.as_bytes();
    if digits.is_empty()
        || digits.len() > 5
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return None;
    }
    text.parse().ok()
}

/// Version 2: the signature, `0x2?` (version 2, command LOCAL or PROXY), the family and
/// transport, a big-endian length, then the addresses and TLVs (spec §2.2).
fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !agrees(buf, V2_SIGNATURE) {
        return Err(ProxyError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyError::V2Version);
    }
    let local = ver_cmd & 0x0f == 0;
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // Families UNSPEC, INET, INET6, UNIX; transports UNSPEC, STREAM, DGRAM.
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ProxyError::V2Family);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let payload = usize::from(u16::from_be_bytes([hi, lo]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    let needed = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    // A LOCAL header's addresses are ignored (spec: "the receiver must ignore them"), but
    // a PROXY header must hold the addresses its family says it holds.
    if !local && payload < needed {
        return Err(ProxyError::V2Length);
    }
    let len = V2_FIXED + payload;
    if buf.len() < len {
        return Ok(None);
    }
    let addrs = &buf[V2_FIXED..len];
    let source = match family {
        _ if local => None,
        1 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            let port = u16::from_be_bytes([addrs[8], addrs[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        2 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addrs[..16]);
            let port = u16::from_be_bytes([addrs[32], addrs[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC and UNIX: no address worth showing; the connection's own peer stands.
        _ => None,
    };
    Ok(Some(ProxyHeader { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | cmd);
        out.push(fam);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn v2_inet(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut payload = src.to_vec();
        payload.extend_from_slice(&[127, 0, 0, 1]);
        payload.extend_from_slice(&sport.to_be_bytes());
        payload.extend_from_slice(&8000u16.to_be_bytes());
        payload.extend_from_slice(tlvs);
        v2(1, 0x11, &payload)
    }

    /// Every prefix of `header` needs more; the whole gives `expected`, and so does the
    /// whole followed by a request (which is not consumed).
    fn check_split(header: &[u8], expected: Option<SocketAddr>) {
        for cut in 0..header.len() {
            assert_eq!(
                parse_proxy_header(&header[..cut]),
                Ok(None),
                "prefix of {cut} bytes of {header:?}"
            );
        }
        let whole = ProxyHeader {
            len: header.len(),
            source: expected,
        };
        assert_eq!(parse_proxy_header(header), Ok(Some(whole)));
        let mut with_request = header.to_vec();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(parse_proxy_header(&with_request), Ok(Some(whole)));
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        check_split(
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n",
            Some("192.0.2.1:56324".parse().unwrap()),
        );
        check_split(
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 80\r\n",
            Some("[2001:db8::1]:4711".parse().unwrap()),
        );
        check_split(b"PROXY UNKNOWN\r\n", None);
        check_split(
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            None,
        );
    }

    #[test]
    fn v1_the_longest_line_is_107_bytes() {
        let src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {src} {src} 65535 65535\r\n");
        check_split(
            line.as_bytes(),
            Some(format!("[{src}]:65535").parse().unwrap()),
        );
        // The spec's worst case: UNKNOWN with the longest addresses, 107 bytes.
        let unknown = format!("PROXY UNKNOWN {src} {src} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        check_split(unknown.as_bytes(), None);
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN));
        assert_eq!(
            parse_proxy_header(&long.as_bytes()[..V1_MAX_LEN]),
            Err(ProxyError::V1TooLong)
        );
        // 106 bytes and a CR at the limit, its LF beyond: too long.
        let cr_at_end = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
        assert_eq!(cr_at_end.len(), V1_MAX_LEN + 1);
        assert_eq!(
            parse_proxy_header(cr_at_end.as_bytes()),
            Err(ProxyError::V1TooLong)
        );
    }

    /// Regression (fuzz/proxy): 107 bytes ending in the CR answered "need more", so the
    /// parser waited for a 108th byte before refusing a line that could no longer fit.
    #[test]
    fn v1_cr_as_the_107th_byte_is_too_long_at_once() {
        let cr_at_end = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
        assert_eq!(
            parse_proxy_header(&cr_at_end.as_bytes()[..V1_MAX_LEN]),
            Err(ProxyError::V1TooLong)
        );
        assert_eq!(
            parse_proxy_header(&cr_at_end.as_bytes()[..V1_MAX_LEN - 1]),
            Ok(None)
        );
    }

    #[test]
    fn v1_malformed_lines() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\rX",
            b"PROXY TCP4 192.0.2.1  192.0.2.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 192.0.2.2 56324 443\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 0443 443\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 +443 443\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 443\r\n",
            b"PROXY TCP4 192.0.2.1 2001:db8::2 1 443\r\n",
            b"PROXY UDP4 192.0.2.1 192.0.2.2 56324 443\r\n",
            b"PROXY tcp4 192.0.2.1 192.0.2.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\t\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWN\xff\r\n",
        ] {
            assert_eq!(
                parse_proxy_header(bad),
                Err(ProxyError::V1Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn no_header_is_refused_at_the_first_wrong_byte() {
        assert_eq!(parse_proxy_header(b""), Ok(None));
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PROXX",
            b"proxy TCP4",
            b"PROXY\r\n",
            b"\r\n\r\n\x00\r\nQUIX",
            b"\r\nGET",
            b"\x16\x03\x01",
        ] {
            assert_eq!(
                parse_proxy_header(bad),
                Err(ProxyError::NotProxy),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn v2_inet_inet6_with_tlvs_skipped() {
        check_split(
            &v2_inet([192, 0, 2, 7], 40000, &[]),
            Some("192.0.2.7:40000".parse().unwrap()),
        );
        // A PP2_TYPE_UNIQUE_ID and a PP2_TYPE_NOOP TLV after the addresses.
        let tlvs = [0x05, 0x00, 0x03, b'a', b'b', b'c', 0x04, 0x00, 0x00];
        check_split(
            &v2_inet([10, 1, 2, 3], 1, &tlvs),
            Some("10.1.2.3:1".parse().unwrap()),
        );
        let mut payload = Vec::new();
        payload.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        payload.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        payload.extend_from_slice(&4711u16.to_be_bytes());
        payload.extend_from_slice(&443u16.to_be_bytes());
        check_split(
            &v2(1, 0x21, &payload),
            Some("[2001:db8::9]:4711".parse().unwrap()),
        );
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_real_peer() {
        // LOCAL: a health check from the proxy itself; addresses, if any, are ignored.
        check_split(&v2(0, 0x00, &[]), None);
        check_split(&v2(0, 0x11, &[1, 2, 3]), None);
        check_split(&v2(1, 0x00, &[]), None);
        check_split(&v2(1, 0x31, &[0u8; 216]), None);
    }

    #[test]
    fn v2_bad_headers() {
        let mut bad_version = v2_inet([1, 2, 3, 4], 5, &[]);
        bad_version[12] = 0x11;
        assert_eq!(parse_proxy_header(&bad_version), Err(ProxyError::V2Version));
        let mut bad_command = v2_inet([1, 2, 3, 4], 5, &[]);
        bad_command[12] = 0x22;
        assert_eq!(
            parse_proxy_header(&bad_command[..13]),
            Err(ProxyError::V2Version)
        );
        let mut bad_family = v2_inet([1, 2, 3, 4], 5, &[]);
        bad_family[13] = 0x41;
        assert_eq!(
            parse_proxy_header(&bad_family[..14]),
            Err(ProxyError::V2Family)
        );
        bad_family[13] = 0x13;
        assert_eq!(parse_proxy_header(&bad_family), Err(ProxyError::V2Family));
        assert_eq!(
            parse_proxy_header(&v2(1, 0x11, &[0u8; 11])),
            Err(ProxyError::V2Length)
        );
        assert_eq!(
            parse_proxy_header(&v2(1, 0x21, &[0u8; 12])),
            Err(ProxyError::V2Length)
        );
        // Oversized: refused from the length field, before the payload arrives.
        let huge = v2(1, 0x11, &vec![0u8; V2_MAX_PAYLOAD + 1]);
        assert_eq!(parse_proxy_header(&huge[..16]), Err(ProxyError::V2TooLong));
        check_split(&v2(1, 0x00, &vec![0u8; V2_MAX_PAYLOAD]), None);
    }

    #[test]
    fn truncated_headers_need_more() {
        let header = v2_inet([192, 0, 2, 7], 40000, &[]);
        assert_eq!(parse_proxy_header(&header[..header.len() - 1]), Ok(None));
        assert_eq!(parse_proxy_header(b"PROXY TCP4 192.0.2.1"), Ok(None));
        assert_eq!(
            parse_proxy_header(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r"),
            Ok(None)
        );
    }
}
