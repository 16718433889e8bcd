//! The parts of an HTTP request that policy looks at, checked and normalized once.
//!
//! meshward cannot know whether Envoy normalized the path (`normalize_path` is off by default), and
//! an upstream may decode what Envoy passed through. So instead of guessing, any path whose meaning
//! could differ between meshward and the upstream is rejected.

#![forbid(unsafe_code)]

use crate::decision::Reason;

/// What the plugin reads from a request. Borrowed from the host's header map.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest<'a> {
    /// `:method`.
    pub method: Option<&'a str>,
    /// `:authority` (or `Host`).
    pub authority: Option<&'a str>,
    /// `:path`, with query.
    pub path: Option<&'a str>,
    /// Every `Authorization` header value, in order.
    pub authorization: Vec<&'a str>,
    /// All request headers (lower-case names), for header conditions.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The mTLS peer's identity (URI SAN of its certificate), if any.
    pub peer: Option<&'a str>,
    /// The hex SHA-256 of the mTLS peer's certificate, if any (for certificate-bound tokens).
    pub peer_certificate_sha256: Option<&'a str>,
}

impl<'a> HttpRequest<'a> {
    /// A request from recorded parts (replay's records, audit records, the wasm corpus test), built
    /// as the filter builds one from the host's header map: `headers` have lower-case names, a
    /// header sent several times appears once per value, and the `authorization` values are taken
    /// from them.
    pub fn recorded(
        method: Option<&'a str>,
        authority: Option<&'a str>,
        path: Option<&'a str>,
        headers: &'a [(String, String)],
        peer: Option<&'a str>,
    ) -> Self {
        HttpRequest {
            method,
            authority,
            path,
            authorization: headers
                .iter()
                .filter(|(name, _)| name == "authorization")
                .map(|(_, value)| value.as_str())
                .collect(),
            headers: headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect(),
            peer,
            peer_certificate_sha256: None,
        }
    }
}

/// A request's headers as the host hands them over: proxy-wasm's serialized header map (a little-
/// endian `u32` count, then a `u32` name length and a `u32` value length per header, then each name
/// and value followed by a NUL byte), kept whole with where each name and value lies. Reading the
/// map this way costs one allocation (the host's buffer) and one list, where the SDK's
/// `get_map_bytes` makes two owned copies per header and panics on a name that is not UTF-8.
#[derive(Clone, Debug)]
pub struct OwnedRequest {
    /// The host's buffer made text: the lengths and any value that is not UTF-8 zeroed in place.
    text: String,
    headers: Vec<HeaderSpan>,
    peer: Option<String>,
    peer_certificate_sha256: Option<String>,
}

/// Where one header lies in [`OwnedRequest::text`]; `utf8` says whether its value was UTF-8.
#[derive(Clone, Debug)]
struct HeaderSpan {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    utf8: bool,
}

impl OwnedRequest {
    /// From the host's serialized header map and the connection's peer properties. `None` when the
    /// map is not well formed (lengths past its end, a missing NUL, a name that is not UTF-8):
    /// the request is then refused, never read differently from how Envoy holds it.
    pub fn from_pairs(
        mut pairs: Vec<u8>,
        peer: Option<String>,
        peer_certificate_sha256: Option<String>,
    ) -> Option<Self> {
        let (table, mut headers) = header_spans(&pairs)?;
        // The binary lengths are read: zeroed, the buffer is UTF-8 when every name and value is,
        // so one check covers the whole map and the views below are slices without a second check.
        pairs.get_mut(..table)?.fill(0);
        let text = match String::from_utf8(pairs) {
            Ok(text) => text,
            Err(e) => {
                let mut bytes = e.into_bytes();
                for span in &mut headers {
                    std::str::from_utf8(bytes.get(span.name.clone())?).ok()?;
                    let value = bytes.get_mut(span.value.clone())?;
                    if std::str::from_utf8(value).is_err() {
                        value.fill(0);
                        span.utf8 = false;
                    }
                }
                String::from_utf8(bytes).ok()?
            }
        };
        Some(OwnedRequest { text, headers, peer, peer_certificate_sha256 })
    }

    /// `x-request-id`, if present.
    pub fn request_id(&self) -> Option<&str> {
        self.iter().find(|(name, _)| *name == "x-request-id").and_then(|(_, value)| value)
    }

    /// Each header's name and its value (`None` if the value is not UTF-8), in the host's order.
    fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.headers.iter().map(|span| {
            // Both ranges lie in `text` and end before a NUL (checked by `header_spans`), so they
            // are character boundaries: the fallback cannot be reached.
            let name = self.text.get(span.name.clone()).unwrap_or("");
            (name, if span.utf8 { self.text.get(span.value.clone()) } else { None })
        })
    }

    /// The borrowed view the engine decides on.
    pub fn as_request(&self) -> HttpRequest<'_> {
        let mut request = HttpRequest {
            peer: self.peer.as_deref(),
            peer_certificate_sha256: self.peer_certificate_sha256.as_deref(),
            headers: Vec::with_capacity(self.headers.len()),
            ..HttpRequest::default()
        };
        // The first of each pseudo-header counts (Envoy never repeats them).
        let (mut method, mut authority, mut path) = (None, None, None);
        for (name, value) in self.iter() {
            match name {
                ":method" => _ = method.get_or_insert(value),
                ":authority" => _ = authority.get_or_insert(value),
                ":path" => _ = path.get_or_insert(value),
                // A non-UTF-8 Authorization value still counts (and fails as malformed).
                "authorization" => request.authorization.push(value.unwrap_or("\u{0}")),
                _ => {}
            }
            // Non-UTF-8 values count as present (a repeated header still denies) but never equal.
            request.headers.push((name, value.unwrap_or("\u{fffd}")));
        }
        (request.method, request.authority, request.path) =
            (method.flatten(), authority.flatten(), path.flatten());
        request
    }
}

/// A header map serialized as the host hands it over (the format [`OwnedRequest::from_pairs`] reads),
/// from raw names and values: what tests and benchmarks feed the filter's request reading.
pub fn serialize_header_map(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let lengths = std::iter::once(headers.len()).chain(headers.iter().flat_map(|(k, v)| [k.len(), v.len()]));
    for len in lengths {
        out.extend(u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    }
    for part in headers.iter().flat_map(|(name, value)| [name, value]) {
        out.extend_from_slice(part);
        out.push(0);
    }
    out
}

/// Where each header of a serialized header map lies (after the table of lengths, whose size is
/// returned first), or `None` if the map is not well formed.
fn header_spans(pairs: &[u8]) -> Option<(usize, Vec<HeaderSpan>)> {
    if pairs.is_empty() {
        return Some((0, Vec::new()));
    }
    let word = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = pairs.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    let count = word(0)?;
    // Every header takes at least 8 bytes of lengths and 2 NULs: a count the buffer cannot hold
    // is refused before anything is sized by it.
    let table = count.checked_mul(8)?.checked_add(4)?;
    let mut data = table;
    if count.checked_mul(10)? > pairs.len() {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    let mut field = |len: usize| -> Option<std::ops::Range<usize>> {
        let range = data..data.checked_add(len)?;
        (*pairs.get(range.end)? == 0).then_some(())?;
        data = range.end + 1;
        Some(range)
    };
    for n in 0..count {
        let name = field(word(4 + 8 * n)?)?;
        let value = field(word(8 + 8 * n)?)?;
        headers.push(HeaderSpan { name, value, utf8: true });
    }
    (data == pairs.len()).then_some((table, headers))
}

/// A request ready for policy: method as sent, host lower-cased without port or trailing dot (the
/// port kept apart), path without the query string and in normal form ([`normalize_path`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    /// The HTTP method exactly as sent (case-sensitive, per RFC 9110).
    pub method: String,
    /// The host, lower-cased, without port and trailing dot.
    pub host: String,
    /// The port of the authority, if it named one.
    pub port: Option<u16>,
    /// The path without query, normalized; never empty, always starting with `/`.
    pub path: String,
}

impl RequestTarget {
    /// Checks and normalizes the pseudo-headers of a request.
    pub fn new(method: Option<&str>, authority: Option<&str>, path: Option<&str>) -> Result<Self, Reason> {
        let method = method.filter(|m| !m.is_empty()).ok_or(Reason::RequestMalformed)?;
        // CONNECT carries an authority, not a path: there is nothing for a path policy to match.
        if method.eq_ignore_ascii_case("CONNECT") || !method.bytes().all(is_token_char) {
            return Err(Reason::RequestMalformed);
        }
        let raw_path = path.ok_or(Reason::RequestMalformed)?;
        let path = normalize_path(check_path(raw_path)?);
        let (host, port) = split_authority(authority.unwrap_or(""))?;
        Ok(RequestTarget { method: method.to_owned(), host, port, path })
    }
}

/// RFC 9110 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Paths with more segments are refused: no real API needs them, and they only make matching
/// cost more.
pub const MAX_SEGMENTS: usize = 256;

/// Returns the path without its query, or the reason it is rejected.
///
/// One pass over the bytes (this runs on every request): each `/` closes a segment, which must not
/// be empty (`//`), `.` or `..`; the last segment may be empty (a trailing slash).
pub fn check_path(raw: &str) -> Result<&str, Reason> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Reason::RequestMalformed);
    }
    let mut slashes = 0usize;
    let mut segment_start = 1;
    let mut i = 0;
    let end = loop {
        let b = match bytes.get(i) {
            None | Some(b'?') => break i,
            Some(&b) => b,
        };
        match b {
            b'/' => {
                slashes += 1;
                // `segment_start` is at most `i`: `get` cannot fail (a failure would refuse).
                if i > 0 && bytes.get(segment_start..i).is_none_or(is_dot_or_empty_segment) {
                    return Err(Reason::RequestPathRejected);
                }
                segment_start = i + 1;
            }
            // Fragments never reach a server legitimately; `\` is a separator to some upstreams;
            // `;` starts path parameters that some upstreams strip (`/admin;x=y` -> `/admin`).
            b'#' | b'\\' | b';' => return Err(Reason::RequestPathRejected),
            b if b < 0x20 || b == 0x7f => return Err(Reason::RequestPathRejected),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Reason::RequestPathRejected);
                };
                let decoded = hi * 16 + lo;
                // Encoded separators, NUL and controls, `%` itself (double encoding) and encoded
                // unreserved characters (which normalizers decode) all change meaning downstream.
                if !(0x20..0x7f).contains(&decoded)
                    || matches!(decoded, b'/' | b'\\' | b'%' | b';' | b'#')
                    || decoded.is_ascii_alphanumeric()
                    || matches!(decoded, b'-' | b'.' | b'_' | b'~')
                {
                    return Err(Reason::RequestPathRejected);
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    };
    let last = bytes.get(segment_start..end).ok_or(Reason::RequestPathRejected)?;
    if slashes > MAX_SEGMENTS || (!last.is_empty() && is_dot_or_empty_segment(last)) {
        return Err(Reason::RequestPathRejected);
    }
    // `end` is at a `?` or the end: a character boundary.
    raw.get(..end).ok_or(Reason::RequestMalformed)
}

/// A segment some upstream would merge or resolve: empty (from `//`), `.` or `..`.
fn is_dot_or_empty_segment(segment: &[u8]) -> bool {
    matches!(segment, b"" | b"." | b"..")
}

/// Characters a path segment may hold both as they are and percent-encoded (RFC 3986 `pchar`
/// minus the unreserved ones, which [`check_path`] refuses encoded, and `;`, refused either way).
const DECODED_IN_PATHS: &[u8] = b"!$&'()*+,=:@";

/// The normal form of a checked path, the one rules are compared with: `%XX` of a character that
/// may also appear unencoded in a segment (`:`, `@`, `!`, `$`, `&`, `'`, `(`, `)`, `*`, `+`, `,`,
/// `=`) is decoded, and every other `%XX` is written with upper-case hex digits. So
/// `/p%3asetIamPolicy` and `/p:setIamPolicy` are the same path to every rule, as they are to an
/// upstream that decodes paths; an upstream that does not decode sees a path no more encoded
/// than the rule's. Rule literals are normalized the same way when compiled.
pub fn normalize_path(path: &str) -> String {
    if !path.contains('%') {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = (b == b'%').then(|| (bytes.get(i + 1).copied(), bytes.get(i + 2).copied()));
        if let Some((Some(h), Some(l))) = hex {
            if let (Some(hi), Some(lo)) = (hex_value(h), hex_value(l)) {
                let decoded = hi * 16 + lo;
                if DECODED_IN_PATHS.contains(&decoded) {
                    out.push(decoded);
                } else {
                    out.extend_from_slice(&[b'%', h.to_ascii_uppercase(), l.to_ascii_uppercase()]);
                }
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    // Only ASCII sequences were replaced by ASCII, so the text stays UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| path.to_owned())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes a host never holds: controls, space, DEL, `/` and `@` (a lookup per byte; the host of every
/// request is scanned).
#[allow(clippy::indexing_slicing, reason = "b < 256, the table's length")]
const NOT_IN_HOSTS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b <= b' ' as usize || b == 0x7f || b == b'/' as usize || b == b'@' as usize;
        b += 1;
    }
    table
};

/// Splits an authority into the host (lower-cased, without a trailing dot; IPv6 literals keep
/// their brackets) and the port. An empty or malformed authority is refused.
pub fn split_authority(authority: &str) -> Result<(String, Option<u16>), Reason> {
    let bytes = authority.as_bytes();
    // Where the host ends: at the `]` of an IPv6 literal, else at the first colon. A name has no
    // colon, and an IPv6 literal must be bracketed: anything else (`api.internal:1:443`, `::1`)
    // has no single reading of host and port.
    let host_end = if bytes.first() == Some(&b'[') {
        bytes.iter().position(|&b| b == b']').ok_or(Reason::RequestMalformed)? + 1
    } else {
        bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len())
    };
    let port = match bytes.get(host_end..) {
        None | Some([]) => None,
        Some([b':', digits @ ..]) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            // At most 5 digits fit a u16; more (or a larger value) is refused.
            let value = digits.iter().try_fold(0u32, |n, &d| {
                let n = n * 10 + u32::from(d - b'0');
                (n <= u32::from(u16::MAX)).then_some(n)
            });
            Some(value.and_then(|n| u16::try_from(n).ok()).ok_or(Reason::RequestMalformed)?)
        }
        Some(_) => return Err(Reason::RequestMalformed),
    };
    let host = bytes.get(..host_end).ok_or(Reason::RequestMalformed)?;
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.iter().any(|&b| NOT_IN_HOSTS.get(usize::from(b)) != Some(&false)) {
        return Err(Reason::RequestMalformed);
    }
    // The host ends before an ASCII byte (`:`, `.`) or at the end: a character boundary.
    let host = authority.get(..host.len()).ok_or(Reason::RequestMalformed)?;
    Ok((host.to_ascii_lowercase(), port))
}

/// The normalized host alone (see [`split_authority`]).
pub fn normalize_host(authority: &str) -> Result<String, Reason> {
    split_authority(authority).map(|(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, host: &str, path: &str) -> Result<RequestTarget, Reason> {
        RequestTarget::new(Some(method), Some(host), Some(path))
    }

    #[test]
    fn plain_paths_pass_and_lose_their_query() {
        let t = target("GET", "Registry.Internal.:8443", "/v2/dev/app/manifests/1.0?n=1").unwrap();
        assert_eq!(t.host, "registry.internal");
        assert_eq!(t.path, "/v2/dev/app/manifests/1.0");
        assert_eq!(target("GET", "h", "/a%20b/").unwrap().path, "/a%20b/");
    }

    /// Issue 11 item 5: an encoded character a rule literal could contain compares as itself.
    #[test]
    fn paths_are_compared_in_normal_form() {
        for (raw, normal) in [
            ("/v1/projects/p%3AsetIamPolicy", "/v1/projects/p:setIamPolicy"),
            ("/v1/projects/p%3asetIamPolicy", "/v1/projects/p:setIamPolicy"),
            ("/u/a%40b%2Bc%21%24%26%27%28%29%2A%2C%3D", "/u/a@b+c!$&'()*,="),
            ("/a%20b%3f", "/a%20b%3F"),
            ("/a%5b%5D%7b%7C", "/a%5B%5D%7B%7C"),
            ("/plain:path@x", "/plain:path@x"),
        ] {
            assert_eq!(target("GET", "h", raw).map(|t| t.path), Ok(normal.to_string()), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_rejected() {
        for path in [
            "/public/../admin",
            "/./admin",
            "/admin/.",
            "/a/..",
            "//admin",
            "/a//b",
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/%61dmin",
            "/%2e%2e/admin",
            "/a%252Fb",
            "/a%00",
            "/a\u{1}b",
            "/admin#x",
            "/admin;x=y",
            "/a%zz",
            "/a%2",
            &"/a".repeat(MAX_SEGMENTS + 1),
        ] {
            assert_eq!(target("GET", "h", path), Err(Reason::RequestPathRejected), "{path}");
        }
    }

    #[test]
    fn malformed_requests_are_rejected() {
        assert_eq!(RequestTarget::new(Some("GET"), Some("h"), None), Err(Reason::RequestMalformed));
        assert_eq!(RequestTarget::new(None, Some("h"), Some("/")), Err(Reason::RequestMalformed));
        assert_eq!(target("CONNECT", "h:443", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", "h", "*"), Err(Reason::RequestMalformed));
        assert_eq!(target("GE T", "h", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", "h:port", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", "", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", ":80", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", "h:", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", "h:99999", "/"), Err(Reason::RequestMalformed));
        assert_eq!(target("GET", "[::1]junk", "/"), Err(Reason::RequestMalformed));
        for several_colons in ["api.internal:1:443", "::1", "::1:443", "fe80::1", "a::", "[::1]:1:2"] {
            assert_eq!(target("GET", several_colons, "/"), Err(Reason::RequestMalformed), "{several_colons}");
        }
        assert_eq!(RequestTarget::new(Some("GET"), None, Some("/")), Err(Reason::RequestMalformed));
    }

    #[test]
    fn the_hosts_header_map_reads_as_a_recorded_request() {
        let headers: Vec<(String, String)> = [
            (":method", "GET"),
            (":path", "/v2/x?n=1"),
            (":authority", "api.internal"),
            ("authorization", "Bearer a.b.c"),
            ("x-request-id", "r-1"),
            ("x-empty", ""),
            ("authorization", "Bearer d.e.f"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let raw: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        let owned =
            OwnedRequest::from_pairs(serialize_header_map(&raw), Some("spiffe://p".into()), None).unwrap();
        let view = owned.as_request();
        let recorded = HttpRequest::recorded(
            Some("GET"),
            Some("api.internal"),
            Some("/v2/x?n=1"),
            &headers,
            Some("spiffe://p"),
        );
        assert_eq!(format!("{view:?}"), format!("{recorded:?}"));
        assert_eq!(owned.request_id(), Some("r-1"));
        // No map at all (the host returns nothing) is a request without headers.
        let empty = OwnedRequest::from_pairs(Vec::new(), None, None).unwrap();
        assert!(empty.as_request().headers.is_empty() && empty.request_id().is_none());
    }

    #[test]
    fn non_utf8_header_values_count_but_never_match() {
        let raw: [(&[u8], &[u8]); 3] =
            [(b":method", b"GET"), (b"authorization", b"Bearer \xff"), (b"x-tenant", b"\xfe")];
        let owned = OwnedRequest::from_pairs(serialize_header_map(&raw), None, None).unwrap();
        let view = owned.as_request();
        assert_eq!(view.method, Some("GET"));
        assert_eq!(view.authorization, ["\u{0}"]);
        assert_eq!(view.headers[2], ("x-tenant", "\u{fffd}"));
        // The first of a pseudo-header counts, even when its value cannot be read.
        let raw: [(&[u8], &[u8]); 2] = [(b":path", b"\xff"), (b":path", b"/ok")];
        assert_eq!(
            OwnedRequest::from_pairs(serialize_header_map(&raw), None, None).unwrap().as_request().path,
            None
        );
    }

    #[test]
    fn malformed_header_maps_are_refused_without_panic() {
        let good =
            serialize_header_map(&[(b":method", b"GET"), (b":path", b"/a"), (b"authorization", b"Bearer x")]);
        assert!(OwnedRequest::from_pairs(good.clone(), None, None).is_some());
        // Every truncation, and every extension, of a good map is refused.
        for end in 1..good.len() {
            assert!(OwnedRequest::from_pairs(good[..end].to_vec(), None, None).is_none(), "{end}");
        }
        assert!(OwnedRequest::from_pairs([good.as_slice(), b"x"].concat(), None, None).is_none());
        // A missing NUL, a name that is not UTF-8, lengths and counts past the end.
        let mut no_nul = good.clone();
        let first_nul = 4 + 3 * 8 + ":method".len();
        no_nul[first_nul] = b'x';
        assert!(OwnedRequest::from_pairs(no_nul, None, None).is_none());
        assert!(OwnedRequest::from_pairs(serialize_header_map(&[(b"\xff", b"v")]), None, None).is_none());
        let mut long = good.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(OwnedRequest::from_pairs(long, None, None).is_none());
        let mut many = good;
        many[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(OwnedRequest::from_pairs(many, None, None).is_none());
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(split_authority("[::1]:8080").unwrap(), ("[::1]".to_string(), Some(8080)));
        assert_eq!(split_authority("[::1]").unwrap(), ("[::1]".to_string(), None));
        assert_eq!(split_authority("API.x:443").unwrap(), ("api.x".to_string(), Some(443)));
        assert_eq!(split_authority("api.x").unwrap(), ("api.x".to_string(), None));
        assert_eq!(normalize_host("API.example.com").unwrap(), "api.example.com");
        assert_eq!(normalize_host("api.example.com.").unwrap(), "api.example.com");
    }
}
