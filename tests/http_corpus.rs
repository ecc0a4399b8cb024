//! Replays the request corpus in `tests/corpus/{valid,invalid}` against the
//! HTTP/1.1 core (`spindle::http`), whole and split at every byte, because a
//! socket read can end anywhere.
//!
//! Each case is `NAME.http` (the exact bytes a client sent) and `NAME.json`
//! (the expected outcome). Valid cases give every parsed field, the decoded
//! body and the bytes left for the next request (`rest`); invalid cases give
//! the `HttpError` variant (from `parse_head` or from the `BodyDecoder`) and
//! its status. Optional `max_body` sets the decoder's body limit. Like the
//! code under test, this harness does no network I/O and knows no Python.
//!
//! What is checked, per case:
//! - whole buffer: `parse_head`, then `BodyDecoder` over the rest;
//! - every prefix `buf[..k]` of the head: "need more" or the final error, and
//!   never a different head;
//! - the body fed in two pieces split at every position, and one byte at a
//!   time: the same body, the same end of message, or the same error;
//! - properties: every prefix under tight limits and every single-byte
//!   mutation of the case answer consistently (a prefix never reports an
//!   error the whole input does not) and never panic.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spindle::http::{parse_head, BodyDecoder, BodyFraming, HttpError, Limits, ParsedHead, Version};

#[derive(Debug, Deserialize)]
struct ValidCase {
    method: String,
    target: String,
    path: String,
    query: String,
    version: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    expect_continue: bool,
    framing: String,
    body: String,
    #[serde(default)]
    rest: String,
    #[serde(default)]
    max_body: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct InvalidCase {
    error: String,
    status: u16,
    #[serde(default)]
    max_body: Option<u64>,
}

/// The outcome of reading one message from a buffer.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The head or the body needs more bytes than the buffer has.
    Incomplete,
    /// `parse_head` refused the head.
    HeadError(HttpError),
    /// The head parsed; the body decoder refused the body.
    BodyError(ParsedHead, HttpError),
    /// A whole message: head, decoded body, and where it ended in the buffer.
    Message(ParsedHead, Vec<u8>, usize),
}

impl Outcome {
    fn error(&self) -> Option<HttpError> {
        match self {
            Outcome::HeadError(e) | Outcome::BodyError(_, e) => Some(*e),
            _ => None,
        }
    }
}

fn read_message(buf: &[u8], limits: &Limits, max_body: Option<u64>) -> Outcome {
    let head = match parse_head(buf, limits) {
        Ok(Some(head)) => head,
        Ok(None) => return Outcome::Incomplete,
        Err(e) => return Outcome::HeadError(e),
    };
    let mut decoder = match BodyDecoder::new(head.framing, max_body) {
        Ok(decoder) => decoder,
        Err(e) => return Outcome::BodyError(head, e),
    };
    let mut body = Vec::new();
    match decoder.decode(&buf[head.head_len..], &mut body) {
        Err(e) => Outcome::BodyError(head, e),
        Ok(_) if !decoder.is_done() => Outcome::Incomplete,
        Ok(consumed) => {
            assert_eq!(decoder.decoded_len(), body.len() as u64, "decoded_len");
            let end = head.head_len + consumed;
            Outcome::Message(head, body, end)
        }
    }
}

/// Corpus strings hold bytes as Latin-1 code points (0x80-0xFF as
/// U+0080-U+00FF).
fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("corpus strings are Latin-1"))
        .collect()
}

fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| char::from(b))
        .collect::<String>()
        .escape_debug()
        .to_string()
}

fn cases(dir: &str) -> Vec<(String, Vec<u8>, String)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "http") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let raw = fs::read(&path).unwrap();
            let json = fs::read_to_string(path.with_extension("json"))
                .unwrap_or_else(|e| panic!("{name}: missing .json: {e}"));
            found.push((name, raw, json));
        }
    }
    found.sort();
    found
}

/// Checks one parsed head against the expectation; returns the mismatches.
fn compare_head(buf: &[u8], head: &ParsedHead, case: &ValidCase) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |what: &str, got: &[u8], want: &str| {
        if got != latin1(want).as_slice() {
            wrong.push(format!("{what}: got {:?}, want {want:?}", show(got)));
        }
    };
    check("method", head.method.get(buf), &case.method);
    check("target", head.target.get(buf), &case.target);
    check("path", head.path.get(buf), &case.path);
    check("query", head.query.get(buf), &case.query);
    let version = match head.version {
        Version::Http10 => "1.0",
        Version::Http11 => "1.1",
    };
    if version != case.version {
        wrong.push(format!("version: got {version}, want {}", case.version));
    }
    let got_headers: Vec<(Vec<u8>, Vec<u8>)> = head
        .headers
        .iter()
        .map(|h| (h.name.get(buf).to_vec(), h.value.get(buf).to_vec()))
        .collect();
    let want_headers: Vec<(Vec<u8>, Vec<u8>)> = case
        .headers
        .iter()
        .map(|(n, v)| (latin1(n), latin1(v)))
        .collect();
    if got_headers != want_headers {
        wrong.push(format!(
            "headers: got {:?}, want {:?}",
            got_headers
                .iter()
                .map(|(n, v)| (show(n), show(v)))
                .collect::<Vec<_>>(),
            case.headers
        ));
    }
    if head.keep_alive != case.keep_alive {
        wrong.push(format!("keep_alive: got {}", head.keep_alive));
    }
    if head.expect_continue != case.expect_continue {
        wrong.push(format!("expect_continue: got {}", head.expect_continue));
    }
    if head.is_head != (case.method == "HEAD") {
        wrong.push(format!("is_head: got {}", head.is_head));
    }
    let framing = match head.framing {
        BodyFraming::None => "none",
        BodyFraming::Length(_) => "length",
        BodyFraming::Chunked => "chunked",
    };
    if framing != case.framing {
        wrong.push(format!(
            "framing: got {:?}, want {}",
            head.framing, case.framing
        ));
    }
    if let BodyFraming::Length(n) = head.framing {
        if n != latin1(&case.body).len() as u64 {
            wrong.push(format!("framing length {n} is not the body length"));
        }
    }
    wrong
}

/// Every prefix of `buf` must parse to "need more", or to exactly what the
/// whole buffer parses to once the prefix holds the whole head.
fn check_head_prefixes(name: &str, buf: &[u8], limits: &Limits, failures: &mut Vec<String>) {
    let whole = parse_head(buf, limits);
    let head_len = match &whole {
        Ok(Some(head)) => Some(head.head_len),
        _ => None,
    };
    for k in 0..=buf.len() {
        let prefix = parse_head(&buf[..k], limits);
        let consistent = match (&prefix, head_len) {
            (Ok(None), Some(len)) => k < len,
            (Ok(None), None) => true,
            (Ok(Some(_)), Some(len)) => k >= len && prefix == whole,
            (Ok(Some(_)), None) => false,
            (Err(_), _) => prefix == whole,
        };
        if !consistent {
            failures.push(format!(
                "{name}: prefix of {k} bytes gave {prefix:?}, the whole buffer {whole:?}"
            ));
            return;
        }
    }
}

/// The body, fed in two pieces split at every position and one byte at a time,
/// must give what feeding it at once gives.
fn check_body_splits(
    name: &str,
    framing: BodyFraming,
    body: &[u8],
    max_body: Option<u64>,
    failures: &mut Vec<String>,
) {
    let Ok(mut whole_decoder) = BodyDecoder::new(framing, max_body) else {
        return; // refused before reading: no split to test
    };
    let mut whole_out = Vec::new();
    let whole = whole_decoder
        .decode(body, &mut whole_out)
        .map(|consumed| (whole_out.clone(), consumed, whole_decoder.is_done()));

    for j in 0..=body.len() {
        let mut decoder = BodyDecoder::new(framing, max_body).unwrap();
        let mut out = Vec::new();
        let result = decoder.decode(&body[..j], &mut out).and_then(|first| {
            if decoder.is_done() {
                // Finished inside the first piece: nothing more is consumed.
                let again = decoder.decode(&body[first..], &mut out)?;
                Ok((out.clone(), first + again, decoder.is_done()))
            } else {
                if first != j {
                    return Ok((out.clone(), usize::MAX, false));
                }
                let second = decoder.decode(&body[j..], &mut out)?;
                Ok((out.clone(), first + second, decoder.is_done()))
            }
        });
        if result != whole {
            failures.push(format!(
                "{name}: body split at {j} gave {:?}, at once {:?}",
                result.as_ref().map(|(o, c, d)| (show(o), *c, *d)),
                whole.as_ref().map(|(o, c, d)| (show(o), *c, *d)),
            ));
            return;
        }
    }

    let mut decoder = BodyDecoder::new(framing, max_body).unwrap();
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut result = Ok(());
    for i in 0..body.len() {
        if decoder.is_done() {
            break;
        }
        match decoder.decode(&body[i..i + 1], &mut out) {
            Ok(n) => consumed += n,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let bytewise = result.map(|()| (out, consumed, decoder.is_done()));
    if bytewise != whole {
        failures.push(format!(
            "{name}: body fed one byte at a time gave {bytewise:?}, at once {whole:?}"
        ));
    }
}

fn run_valid(name: &str, buf: &[u8], json: &str, failures: &mut Vec<String>) {
    let case: ValidCase = match serde_json::from_str(json) {
        Ok(case) => case,
        Err(e) => return failures.push(format!("{name}: bad json: {e}")),
    };
    let limits = Limits::default();
    let (head, body, end) = match read_message(buf, &limits, case.max_body) {
        Outcome::Message(head, body, end) => (head, body, end),
        other => return failures.push(format!("{name}: expected a message, got {other:?}")),
    };
    for wrong in compare_head(buf, &head, &case) {
        failures.push(format!("{name}: {wrong}"));
    }
    if body != latin1(&case.body) {
        failures.push(format!(
            "{name}: body {:?}, want {:?}",
            show(&body),
            case.body
        ));
    }
    if buf[end..] != latin1(&case.rest)[..] {
        failures.push(format!(
            "{name}: rest {:?}, want {:?}",
            show(&buf[end..]),
            case.rest
        ));
    }
    check_head_prefixes(name, buf, &limits, failures);
    check_body_splits(
        name,
        head.framing,
        &buf[head.head_len..],
        case.max_body,
        failures,
    );
}

fn run_invalid(name: &str, buf: &[u8], json: &str, failures: &mut Vec<String>) {
    let case: InvalidCase = match serde_json::from_str(json) {
        Ok(case) => case,
        Err(e) => return failures.push(format!("{name}: bad json: {e}")),
    };
    let limits = Limits::default();
    let outcome = read_message(buf, &limits, case.max_body);
    match outcome.error() {
        Some(error) => {
            if format!("{error:?}") != case.error {
                failures.push(format!("{name}: error {error:?}, want {}", case.error));
            }
            if error.status() != case.status {
                failures.push(format!(
                    "{name}: status {}, want {}",
                    error.status(),
                    case.status
                ));
            }
        }
        None => failures.push(format!("{name}: expected {}, got {outcome:?}", case.error)),
    }
    check_head_prefixes(name, buf, &limits, failures);
    if let Outcome::BodyError(head, _) = &outcome {
        check_body_splits(
            name,
            head.framing,
            &buf[head.head_len..],
            case.max_body,
            failures,
        );
    }
}

/// Runs `f` for every case in `dir`, turning a panic into a failure that
/// names the case.
fn replay(dir: &str, f: fn(&str, &[u8], &str, &mut Vec<String>)) -> usize {
    let cases = cases(dir);
    let mut failures = Vec::new();
    for (name, buf, json) in &cases {
        let mut case_failures = Vec::new();
        let run = catch_unwind(AssertUnwindSafe(|| f(name, buf, json, &mut case_failures)));
        if run.is_err() {
            case_failures.push(format!("{name}: panicked"));
        }
        failures.extend(case_failures);
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) in tests/corpus/{dir}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn valid_corpus() {
    let n = replay("valid", run_valid);
    assert!(n >= 40, "only {n} valid cases");
}

#[test]
fn invalid_corpus() {
    let n = replay("invalid", run_invalid);
    assert!(n >= 30, "only {n} invalid cases");
}

#[test]
fn every_error_variant_is_in_the_corpus() {
    let seen: Vec<String> = cases("invalid")
        .iter()
        .map(|(_, _, json)| serde_json::from_str::<InvalidCase>(json).unwrap().error)
        .collect();
    let all = [
        HttpError::MalformedRequestLine,
        HttpError::InvalidMethod,
        HttpError::InvalidTarget,
        HttpError::UriTooLong,
        HttpError::UnsupportedVersion,
        HttpError::BareLf,
        HttpError::ObsFold,
        HttpError::InvalidHeaderName,
        HttpError::InvalidHeaderValue,
        HttpError::TooManyHeaders,
        HttpError::HeaderTooLarge,
        HttpError::HeadTooLarge,
        HttpError::MissingHost,
        HttpError::DuplicateHost,
        HttpError::ContentLengthWithTransferEncoding,
        HttpError::InvalidContentLength,
        HttpError::ConflictingContentLength,
        HttpError::TransferEncodingNotChunkedLast,
        HttpError::UnknownTransferCoding,
        HttpError::TransferEncodingOnHttp10,
        HttpError::InvalidChunkSize,
        HttpError::ChunkSizeOverflow,
        HttpError::InvalidChunkTerminator,
        HttpError::TrailerTooLarge,
        HttpError::BodyTooLarge,
    ];
    let missing: Vec<String> = all
        .iter()
        .map(|e| format!("{e:?}"))
        .filter(|e| !seen.contains(e))
        .collect();
    assert!(missing.is_empty(), "no invalid case for {missing:?}");
}

/// Tight limits make every limit fire inside small requests; every prefix of
/// every case must still agree with its whole buffer.
#[test]
fn prefixes_agree_under_tight_limits() {
    let tight = [
        Limits {
            max_request_line: 20,
            max_headers: 3,
            max_field_size: 24,
            max_head_size: 96,
        },
        Limits {
            max_request_line: 64,
            max_headers: 8,
            max_field_size: 12,
            max_head_size: 40,
        },
        Limits {
            max_request_line: 0,
            max_headers: 0,
            max_field_size: 0,
            max_head_size: 0,
        },
    ];
    let mut failures = Vec::new();
    for dir in ["valid", "invalid"] {
        for (name, buf, _) in cases(dir) {
            for limits in &tight {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    check_head_prefixes(&name, &buf, limits, &mut failures)
                }));
                if run.is_err() {
                    failures.push(format!("{name}: panicked under {limits:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every case with one byte replaced by a byte that matters to the grammar:
/// no panic, and prefixes around the change agree with the whole buffer.
#[test]
fn single_byte_mutations_are_consistent() {
    const REPLACEMENTS: [u8; 10] = [b'\n', b'\r', b' ', b'\t', 0, b':', b';', 0x7f, 0xff, b'0'];
    let limits = Limits::default();
    let mut failures = Vec::new();
    for dir in ["valid", "invalid"] {
        for (name, buf, _) in cases(dir) {
            if buf.len() > 1024 {
                continue; // the big limit cases add time, not coverage
            }
            for i in 0..buf.len() {
                for &replacement in &REPLACEMENTS {
                    let mut mutated = buf.clone();
                    mutated[i] = replacement;
                    let label = format!("{name} with byte {i} = {replacement:#04x}");
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        let whole = read_message(&mutated, &limits, Some(1 << 20));
                        let end = (i + 3).min(mutated.len());
                        for k in i.saturating_sub(2)..=end {
                            let prefix = parse_head(&mutated[..k], &limits);
                            let ok = match (&prefix, &whole) {
                                (Ok(None), _) => true,
                                (Err(e), Outcome::HeadError(w)) => e == w,
                                (
                                    Ok(Some(p)),
                                    Outcome::Message(h, ..) | Outcome::BodyError(h, _),
                                ) => p == h,
                                (Ok(Some(p)), Outcome::Incomplete) => {
                                    parse_head(&mutated, &limits) == Ok(Some(p.clone()))
                                }
                                _ => false,
                            };
                            if !ok {
                                failures.push(format!(
                                    "{label}: prefix {k} gave {prefix:?}, whole {whole:?}"
                                ));
                                break;
                            }
                        }
                        if let Outcome::Message(head, ..) | Outcome::BodyError(head, _) = &whole {
                            let body = &mutated[head.head_len..];
                            for j in [0, body.len() / 2, body.len().saturating_sub(1)] {
                                let Ok(mut a) = BodyDecoder::new(head.framing, Some(1 << 20))
                                else {
                                    break; // refused before reading
                                };
                                let mut out = Vec::new();
                                let split = a.decode(&body[..j], &mut out).and_then(|first| {
                                    let rest = if a.is_done() { first } else { j };
                                    Ok(first + a.decode(&body[rest..], &mut out)?)
                                });
                                let mut b = BodyDecoder::new(head.framing, Some(1 << 20)).unwrap();
                                let mut out_whole = Vec::new();
                                let at_once = b.decode(body, &mut out_whole);
                                if split != at_once || (split.is_ok() && out != out_whole) {
                                    failures.push(format!(
                                        "{label}: body split at {j} gave {split:?}, at once {at_once:?}"
                                    ));
                                }
                            }
                        }
                    }));
                    if run.is_err() {
                        failures.push(format!("{label}: panicked"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Random requests built from grammar fragments (deterministic xorshift): the
/// answer for every prefix agrees with the answer for the whole buffer.
#[test]
fn random_fragment_requests_are_consistent() {
    const FRAGMENTS: [&[u8]; 24] = [
        b"GET ",
        b"POST ",
        b"/",
        b"/a?b",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: x",
        b"Content-Length: 3",
        b"Transfer-Encoding: chunked",
        b": ",
        b" ",
        b"\t",
        b"3\r\nabc",
        b"0\r\n",
        b";e=1",
        b"X-A: v",
        b"\x00",
        b"Connection: close",
        b"abc",
        b"*",
        b"\r\n\r\n",
    ];
    let limits = Limits {
        max_request_line: 40,
        max_headers: 4,
        max_field_size: 30,
        max_head_size: 120,
    };
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut failures = Vec::new();
    for round in 0..3000 {
        let mut buf = Vec::new();
        let n = 2 + next() % 14;
        for _ in 0..n {
            buf.extend_from_slice(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
        }
        let name = format!("random #{round} {:?}", show(&buf));
        check_head_prefixes(&name, &buf, &limits, &mut failures);
        if let Ok(Some(head)) = parse_head(&buf, &limits) {
            check_body_splits(
                &name,
                head.framing,
                &buf[head.head_len..],
                Some(64),
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
