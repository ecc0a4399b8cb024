//! The access log's format: gunicorn's `--access-log-format` language (Python
//! `%(atom)s` over the atoms of Apache's log format), parsed once at start-up, or JSON
//! lines. `py::access` renders a request with it.

/// What a `%(...)s` stands for (gunicorn's atoms, `gunicorn/glogging.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    /// `h`: the client's address.
    RemoteAddr,
    /// `l`: always `-`.
    Ident,
    /// `u`: the user name of HTTP Basic authentication.
    User,
    /// `t`: the time, `[04/Dec/2026:22:38:57 +0000]`.
    Time,
    /// `r`: `METHOD TARGET PROTOCOL`.
    RequestLine,
    /// `m`
    Method,
    /// `U`: the path, percent-decoded.
    Path,
    /// `q`: the query string.
    Query,
    /// `H`: `HTTP/1.1`.
    Protocol,
    /// `s`
    Status,
    /// `B`: response body bytes.
    Bytes,
    /// `b`: the same (gunicorn prints 0 as `0` too).
    BytesClf,
    /// `f`: the Referer header.
    Referer,
    /// `a`: the User-Agent header.
    UserAgent,
    /// `T`: whole seconds the request took.
    Seconds,
    /// `M`: milliseconds.
    Millis,
    /// `D`: microseconds.
    Micros,
    /// `L`: seconds with six decimals.
    DecimalSeconds,
    /// `p`: `<pid>`.
    Pid,
    /// `{name}i`: a request header (lower-cased name).
    RequestHeader(String),
    /// `{name}o`: a response header (lower-cased name).
    ResponseHeader(String),
    /// `{name}e`: an environ variable (matched without regard to case).
    Environ(String),
    /// An atom gunicorn does not know: printed `-`, as gunicorn does.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Atom(Atom),
}

/// gunicorn's default `--access-logformat`.
pub const GUNICORN_DEFAULT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessFormat {
    Atoms(Vec<Piece>),
    /// One JSON object per request (`--access-logformat json`).
    Json,
}

impl AccessFormat {
    /// Parses a format; `json` selects JSON lines.
    pub fn parse(format: &str) -> Result<AccessFormat, String> {
        if format.trim().eq_ignore_ascii_case("json") {
            return Ok(AccessFormat::Json);
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = format;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                literal.push('%');
                rest = after;
                continue;
            }
            let Some(inner) = rest.strip_prefix('(') else {
                return Err(format!(
                    "a '%' that starts no %(atom)s at {:?}: write %% for a '%'",
                    truncate(&format[format.len() - rest.len() - 1..])
                ));
            };
            let Some(close) = inner.find(')') else {
                return Err(format!("unterminated %( at {:?}", truncate(inner)));
            };
            let name = &inner[..close];
            let conversion = inner[close + 1..].chars().next();
            if !matches!(conversion, Some('s' | 'd' | 'i' | 'r' | 'a')) {
                return Err(format!(
                    "%({name}) must be followed by a conversion such as s: %({name})s"
                ));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Atom(Atom::named(name)));
            rest = &inner[close + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(AccessFormat::Atoms(pieces))
    }

    fn atoms(&self) -> impl Iterator<Item = &Atom> {
        let pieces: &[Piece] = match self {
            AccessFormat::Atoms(pieces) => pieces,
            AccessFormat::Json => &[],
        };
        pieces.iter().filter_map(|p| match p {
            Piece::Atom(atom) => Some(atom),
            Piece::Literal(_) => None,
        })
    }

    /// A `{name}o` atom is used: the response's headers must be kept for the log.
    pub fn needs_response_headers(&self) -> bool {
        self.atoms().any(|a| matches!(a, Atom::ResponseHeader(_)))
    }
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(20) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

impl Atom {
    fn named(name: &str) -> Atom {
        let braced = |suffix: char| {
            name.strip_prefix('{')
                .and_then(|n| n.strip_suffix(suffix))
                .and_then(|n| n.strip_suffix('}'))
                .map(|n| n.to_ascii_lowercase())
        };
        if let Some(header) = braced('i') {
            return Atom::RequestHeader(header);
        }
        if let Some(header) = braced('o') {
            return Atom::ResponseHeader(header);
        }
        if let Some(var) = braced('e') {
            return Atom::Environ(var);
        }
        match name {
            "h" => Atom::RemoteAddr,
            "l" => Atom::Ident,
            "u" => Atom::User,
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "B" => Atom::Bytes,
            "b" => Atom::BytesClf,
            "f" => Atom::Referer,
            "a" => Atom::UserAgent,
            "T" => Atom::Seconds,
            "M" => Atom::Millis,
            "D" => Atom::Micros,
            "L" => Atom::DecimalSeconds,
            "p" => Atom::Pid,
            _ => Atom::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunicorns_default_parses() {
        let AccessFormat::Atoms(pieces) = AccessFormat::parse(GUNICORN_DEFAULT).unwrap() else {
            panic!("not atoms")
        };
        assert_eq!(pieces[0], Piece::Atom(Atom::RemoteAddr));
        assert_eq!(pieces[1], Piece::Literal(" ".into()));
        assert_eq!(pieces[7], Piece::Literal(" \"".into()));
        assert_eq!(pieces[8], Piece::Atom(Atom::RequestLine));
        assert_eq!(pieces.last(), Some(&Piece::Literal("\"".into())));
    }

    #[test]
    fn braced_atoms_percent_and_errors() {
        let f = AccessFormat::parse(
            "%({X-Req-Id}i)s %({Content-Type}o)s %({wsgi.url_scheme}e)s 100%% %(zz)s",
        )
        .unwrap();
        assert!(f.needs_response_headers());
        let AccessFormat::Atoms(pieces) = f else {
            panic!()
        };
        assert_eq!(
            pieces[0],
            Piece::Atom(Atom::RequestHeader("x-req-id".into()))
        );
        assert_eq!(
            pieces[2],
            Piece::Atom(Atom::ResponseHeader("content-type".into()))
        );
        assert_eq!(
            pieces[4],
            Piece::Atom(Atom::Environ("wsgi.url_scheme".into()))
        );
        assert_eq!(pieces[5], Piece::Literal(" 100% ".into()));
        assert_eq!(pieces[6], Piece::Atom(Atom::Unknown));
        assert_eq!(AccessFormat::parse("json").unwrap(), AccessFormat::Json);
        assert!(AccessFormat::parse("%(h)").is_err());
        assert!(AccessFormat::parse("%(h").is_err());
        assert!(AccessFormat::parse("50% off").is_err());
        assert!(!AccessFormat::parse(GUNICORN_DEFAULT)
            .unwrap()
            .needs_response_headers());
    }
}
