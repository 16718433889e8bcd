//! A request's headers copied out of the host, so a request can be decided later (after waiting
//! for keys) as well as now.

use crate::request::HttpRequest;

/// The parts of a request meshward reads, owned.
pub struct OwnedRequest {
    headers: Vec<(String, Option<String>)>,
    peer: Option<String>,
    peer_certificate_sha256: Option<String>,
}

impl OwnedRequest {
    /// From the host's header map (values as bytes) and the connection's peer properties.
    pub fn from_headers(
        headers: Vec<(String, Vec<u8>)>,
        peer: Option<String>,
        peer_certificate_sha256: Option<String>,
    ) -> Self {
        // A header value that is not UTF-8 cannot be a valid value for anything meshward reads.
        let headers = headers.into_iter().map(|(k, v)| (k, String::from_utf8(v).ok())).collect();
        OwnedRequest { headers, peer, peer_certificate_sha256 }
    }

    /// `x-request-id`, if present.
    pub fn request_id(&self) -> Option<&str> {
        self.value("x-request-id")
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }

    /// The borrowed view the engine decides on.
    pub fn as_request(&self) -> HttpRequest<'_> {
        let mut request = HttpRequest {
            method: self.value(":method"),
            authority: self.value(":authority"),
            path: self.value(":path"),
            peer: self.peer.as_deref(),
            peer_certificate_sha256: self.peer_certificate_sha256.as_deref(),
            ..HttpRequest::default()
        };
        for (name, value) in &self.headers {
            if name == "authorization" {
                // A non-UTF-8 Authorization value still counts (and fails as malformed).
                request.authorization.push(value.as_deref().unwrap_or("\u{0}"));
            }
            // Non-UTF-8 values count as present (a repeated header still denies) but never equal.
            request.headers.push((name.as_str(), value.as_deref().unwrap_or("\u{fffd}")));
        }
        request
    }
}
