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
pub fn check_path(raw: &str) -> Result<&str, Reason> {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    if !path.starts_with('/') {
        return Err(Reason::RequestMalformed);
    }
    if path.bytes().filter(|&b| b == b'/').count() > MAX_SEGMENTS {
        return Err(Reason::RequestPathRejected);
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
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
    }
    for segment in path.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err(Reason::RequestPathRejected);
        }
    }
    // `//` (an empty segment other than a trailing slash) is merged by some upstreams.
    if path.contains("//") {
        return Err(Reason::RequestPathRejected);
    }
    Ok(path)
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

/// Splits an authority into the host (lower-cased, without a trailing dot; IPv6 literals keep
/// their brackets) and the port. An empty or malformed authority is refused.
pub fn split_authority(authority: &str) -> Result<(String, Option<u16>), Reason> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(Reason::RequestMalformed)?;
        let host = authority.get(..=end).ok_or(Reason::RequestMalformed)?;
        match authority.get(end + 1..) {
            Some("") | None => (host, None),
            Some(rest) => (host, Some(rest.strip_prefix(':').ok_or(Reason::RequestMalformed)?)),
        }
    } else {
        // A name has no colon, and an IPv6 literal must be bracketed: anything else
        // (`api.internal:1:443`, `::1`) has no single reading of host and port.
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => return Err(Reason::RequestMalformed),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| Reason::RequestMalformed)?)
        }
        Some(_) => return Err(Reason::RequestMalformed),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/' || b == b'@') {
        return Err(Reason::RequestMalformed);
    }
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
    fn hosts_are_normalized() {
        assert_eq!(split_authority("[::1]:8080").unwrap(), ("[::1]".to_string(), Some(8080)));
        assert_eq!(split_authority("[::1]").unwrap(), ("[::1]".to_string(), None));
        assert_eq!(split_authority("API.x:443").unwrap(), ("api.x".to_string(), Some(443)));
        assert_eq!(split_authority("api.x").unwrap(), ("api.x".to_string(), None));
        assert_eq!(normalize_host("API.example.com").unwrap(), "api.example.com");
        assert_eq!(normalize_host("api.example.com.").unwrap(), "api.example.com");
    }
}
