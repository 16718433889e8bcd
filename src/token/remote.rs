//! Remote key sets: a JWKS URI or OIDC discovery, fetched through an Envoy cluster.
//!
//! This module is the state machine only; it never does I/O. The filter asks which fetches are
//! due ([`RemoteKeys::due`]), performs them with `dispatch_http_call`, and reports each result
//! ([`RemoteKeys::complete`]). Time is passed in. The last good key set is kept through failures
//! up to `max_stale_seconds`; after that the issuer has no keys and its tokens are refused
//! (`keys_unavailable`): never allow without keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where and how often to fetch an issuer's keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The Envoy cluster the key server is reached through.
    pub cluster: String,
    /// `:authority` of the requests (default: the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Path of the JWK Set, e.g. `/.well-known/jwks.json`. Without it, OIDC discovery is used:
    /// `<issuer path>/.well-known/openid-configuration`, then its `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_path: Option<String>,
    /// Refresh period (default 300 s).
    #[serde(default = "defaults::refresh")]
    pub refresh_seconds: u64,
    /// How long the last good key set stays usable when refreshes fail (default 86400 s).
    #[serde(default = "defaults::max_stale")]
    pub max_stale_seconds: u64,
    /// Timeout of one fetch (default 2000 ms).
    #[serde(default = "defaults::timeout")]
    pub timeout_ms: u64,
    /// Larger responses are refused (default 65536 bytes).
    #[serde(default = "defaults::max_body")]
    pub max_body_bytes: usize,
    /// At most one extra fetch per this many seconds when a token names an unknown `kid`
    /// (default 30 s).
    #[serde(default = "defaults::unknown_kid")]
    pub unknown_kid_refetch_seconds: u64,
    /// Requests that arrive before the first key set wait for it this long (0: refuse at once).
    #[serde(default)]
    pub wait_for_keys_ms: u64,
}

mod defaults {
    pub fn refresh() -> u64 {
        300
    }
    pub fn max_stale() -> u64 {
        86_400
    }
    pub fn timeout() -> u64 {
        2_000
    }
    pub fn max_body() -> usize {
        65_536
    }
    pub fn unknown_kid() -> u64 {
        30
    }
}

impl RemoteJwksConfig {
    /// Checks the settings; `issuer` is the issuer's `iss` URL (for discovery).
    pub fn validate(&self, issuer: &str) -> Result<(), (String, String)> {
        let e = |f: &str, m: &str| Err((f.to_owned(), m.to_owned()));
        if self.cluster.is_empty() {
            return e("cluster", "must name an Envoy cluster");
        }
        if let Some(p) = &self.jwks_path {
            if !p.starts_with('/') {
                return e("jwks_path", "must start with `/`");
            }
        } else if discovery_path(issuer).is_none() {
            return e("jwks_path", "is required when the issuer is not an https URL (no OIDC discovery)");
        }
        if self.refresh_seconds == 0 || self.refresh_seconds > 86_400 {
            return e("refresh_seconds", "must be between 1 and 86400");
        }
        if self.max_stale_seconds < self.refresh_seconds {
            return e("max_stale_seconds", "must be at least refresh_seconds");
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return e("timeout_ms", "must be between 1 and 60000");
        }
        if !(1024..=4 * 1024 * 1024).contains(&self.max_body_bytes) {
            return e("max_body_bytes", "must be between 1024 and 4194304");
        }
        if self.wait_for_keys_ms > 60_000 {
            return e("wait_for_keys_ms", "must be at most 60000");
        }
        Ok(())
    }
}

/// The discovery document's path for an issuer URL (OpenID Connect Discovery 1.0 section 4).
pub fn discovery_path(issuer: &str) -> Option<String> {
    let rest = issuer.strip_prefix("https://").or_else(|| issuer.strip_prefix("http://"))?;
    let path = rest.find('/').and_then(|at| rest.get(at..)).unwrap_or("");
    Some(format!("{}/.well-known/openid-configuration", path.trim_end_matches('/')))
}

/// One HTTP GET the filter is to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The issuer's configured name.
    pub issuer: String,
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
    /// Timeout.
    pub timeout_ms: u64,
}

/// What a completed fetch did, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new key set is in use, with this many usable keys (and these skipped with a warning).
    Installed { keys: usize, skipped: Vec<String> },
    /// The discovery document named the JWK Set; fetch it next.
    Discovered { jwks_path: String },
    /// The fetch failed; the previous keys (if any, and not too stale) stay in use.
    Failed(String),
}

impl FetchOutcome {
    /// A short label for metrics: `installed`, `discovered` or `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            FetchOutcome::Installed { .. } => "installed",
            FetchOutcome::Discovered { .. } => "discovered",
            FetchOutcome::Failed(_) => "failed",
        }
    }
}

/// The fetch state of one issuer's remote keys. Keys themselves live with the issuer; this tracks
/// when they were fetched and what to do next.
#[derive(Debug)]
pub struct RemoteKeys {
    config: RemoteJwksConfig,
    discovery: Option<String>,
    /// The JWK Set path: configured, or learnt from discovery.
    jwks_path: Option<String>,
    jwks_authority: Option<String>,
    /// When the current key set was installed.
    installed_at: Option<u64>,
    in_flight_since: Option<u64>,
    last_attempt: Option<u64>,
    failures: u32,
    refetch_wanted: bool,
    last_unknown_kid_fetch: Option<u64>,
    /// When the first fetch was due (the start of waiting for the first keys).
    created_at: Option<u64>,
}

impl RemoteKeys {
    /// Fresh state: nothing fetched yet.
    pub fn new(config: RemoteJwksConfig, issuer: &str) -> Self {
        let discovery = if config.jwks_path.is_none() { discovery_path(issuer) } else { None };
        RemoteKeys {
            jwks_path: config.jwks_path.clone(),
            jwks_authority: None,
            discovery,
            config,
            installed_at: None,
            in_flight_since: None,
            last_attempt: None,
            failures: 0,
            refetch_wanted: false,
            last_unknown_kid_fetch: None,
            created_at: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RemoteJwksConfig {
        &self.config
    }

    /// Whether the installed keys may be used at `now` (installed, and not older than the
    /// maximum staleness).
    pub fn usable(&self, now: u64) -> bool {
        self.installed_at.is_some_and(|at| now.saturating_sub(at) <= self.config.max_stale_seconds)
    }

    /// Whether a first key set has ever been installed.
    pub fn ever_installed(&self) -> bool {
        self.installed_at.is_some()
    }

    /// Age of the installed key set, in seconds.
    pub fn age(&self, now: u64) -> Option<u64> {
        self.installed_at.map(|at| now.saturating_sub(at))
    }

    /// Whether requests should still wait for the first keys (rather than be refused).
    pub fn still_waiting_for_first_keys(&self, now_ms: u64) -> bool {
        let started_ms = self.created_at.map_or(now_ms, |s| s.saturating_mul(1000));
        !self.ever_installed()
            && self.config.wait_for_keys_ms > 0
            && now_ms < started_ms + self.config.wait_for_keys_ms
    }

    /// Notes a token with a `kid` the keys do not have: one extra fetch, rate-limited.
    pub fn unknown_kid(&mut self, now: u64) {
        let allowed = self
            .last_unknown_kid_fetch
            .is_none_or(|at| now.saturating_sub(at) >= self.config.unknown_kid_refetch_seconds);
        if allowed {
            self.refetch_wanted = true;
        }
    }

    /// The fetch to make now, if one is due; marks it in flight.
    pub fn due(&mut self, issuer: &str, now: u64) -> Option<Fetch> {
        self.created_at.get_or_insert(now);
        let timeout_s = self.config.timeout_ms.div_ceil(1000) + 1;
        if let Some(since) = self.in_flight_since {
            // A call whose answer never came (the host lost it) does not block refreshes forever.
            if now.saturating_sub(since) <= timeout_s * 2 {
                return None;
            }
        }
        // Failed fetches are retried with backoff (1, 2, 4 ... s), never slower than the refresh.
        let backoff = (1u64 << self.failures.min(16)).min(self.config.refresh_seconds);
        let since_attempt = self.last_attempt.map(|at| now.saturating_sub(at));
        let due = match (self.installed_at, since_attempt) {
            (_, None) => true,
            _ if self.refetch_wanted => true,
            (None, Some(elapsed)) => elapsed >= backoff,
            (Some(at), Some(elapsed)) => {
                let refresh_due = now.saturating_sub(at) >= self.config.refresh_seconds;
                refresh_due && (self.failures == 0 || elapsed >= backoff)
            }
        };
        if !due {
            return None;
        }
        if self.refetch_wanted {
            self.refetch_wanted = false;
            self.last_unknown_kid_fetch = Some(now);
        }
        self.in_flight_since = Some(now);
        self.last_attempt = Some(now);
        let (path, authority) = match (&self.jwks_path, &self.discovery) {
            (Some(p), _) => (p.clone(), self.jwks_authority.clone()),
            (None, Some(d)) => (d.clone(), None),
            (None, None) => return None,
        };
        Some(Fetch {
            issuer: issuer.to_owned(),
            cluster: self.config.cluster.clone(),
            authority: authority
                .or_else(|| self.config.authority.clone())
                .unwrap_or_else(|| self.config.cluster.clone()),
            path,
            timeout_ms: self.config.timeout_ms,
        })
    }

    /// Records a failed fetch.
    pub fn failed(&mut self, why: String) -> FetchOutcome {
        self.in_flight_since = None;
        self.failures = self.failures.saturating_add(1);
        FetchOutcome::Failed(why)
    }

    /// Handles a response to the fetch of `path`. Returns the JWK Set's keys to install when the
    /// response was a key set (the caller parses them and then calls [`RemoteKeys::installed`]).
    pub fn response(
        &mut self,
        path: &str,
        status: Option<u32>,
        body: Option<&[u8]>,
    ) -> Result<Option<Vec<Value>>, FetchOutcome> {
        let body = match (status, body) {
            (Some(200), Some(body)) => body,
            (Some(200), None) => return Err(self.failed("empty body".into())),
            (Some(status), _) => return Err(self.failed(format!("status {status}"))),
            (None, _) => return Err(self.failed("no response (timeout or connection failure)".into())),
        };
        if body.len() > self.config.max_body_bytes {
            return Err(self.failed(format!("body of {} bytes is over max_body_bytes", body.len())));
        }
        let doc: Value = match serde_json::from_slice(body) {
            Ok(doc) => doc,
            Err(e) => return Err(self.failed(format!("body is not JSON: {e}"))),
        };
        let fetching_discovery = self.jwks_path.is_none() || self.discovery.as_deref() == Some(path);
        if fetching_discovery && self.config.jwks_path.is_none() {
            let Some(uri) = doc.get("jwks_uri").and_then(Value::as_str) else {
                return Err(self.failed("discovery document has no jwks_uri".into()));
            };
            let Some((authority, jwks_path)) = split_url(uri) else {
                return Err(self.failed(format!("jwks_uri {uri:?} is not an http(s) URL")));
            };
            self.jwks_path = Some(jwks_path.clone());
            self.jwks_authority = Some(authority);
            self.in_flight_since = None;
            // Fetch the key set right away.
            self.last_attempt = None;
            self.refetch_wanted = true;
            return Err(FetchOutcome::Discovered { jwks_path });
        }
        match doc.get("keys") {
            Some(Value::Array(keys)) if !keys.is_empty() => Ok(Some(keys.clone())),
            _ => Err(self.failed("not a JWK Set with keys".into())),
        }
    }

    /// Records that a key set with at least one usable key was installed at `now`.
    pub fn installed(&mut self, now: u64) {
        self.installed_at = Some(now);
        self.in_flight_since = None;
        self.failures = 0;
    }
}

/// `https://host[:port]/path` -> (authority, path).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (rest.get(..at)?, rest.get(at..)?),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    Some((authority.to_owned(), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jwks_path: Option<&str>) -> RemoteJwksConfig {
        RemoteJwksConfig {
            cluster: "idp".into(),
            authority: Some("idp.test".into()),
            jwks_path: jwks_path.map(String::from),
            refresh_seconds: 300,
            max_stale_seconds: 3600,
            timeout_ms: 2000,
            max_body_bytes: 65536,
            unknown_kid_refetch_seconds: 30,
            wait_for_keys_ms: 0,
        }
    }

    const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"abc"}]}"#;

    #[test]
    fn discovery_paths() {
        assert_eq!(discovery_path("https://idp.test").as_deref(), Some("/.well-known/openid-configuration"));
        assert_eq!(
            discovery_path("https://idp.test/realms/x/").as_deref(),
            Some("/realms/x/.well-known/openid-configuration")
        );
        assert_eq!(discovery_path("spiffe://td"), None);
        assert_eq!(split_url("https://idp.test:8443/keys"), Some(("idp.test:8443".into(), "/keys".into())));
    }

    #[test]
    fn first_fetch_refresh_and_backoff() {
        let mut r = RemoteKeys::new(config(Some("/jwks")), "https://idp.test");
        let f = r.due("i", 1000).expect("first fetch is due at once");
        assert_eq!((f.cluster.as_str(), f.authority.as_str(), f.path.as_str()), ("idp", "idp.test", "/jwks"));
        assert!(r.due("i", 1000).is_none(), "one fetch in flight at a time");
        // Failure: retried after 2 s (backoff), not before.
        assert!(matches!(r.response("/jwks", Some(503), None), Err(FetchOutcome::Failed(_))));
        assert!(r.due("i", 1001).is_none());
        assert!(r.due("i", 1002).is_some());
        let keys = r.response("/jwks", Some(200), Some(JWKS)).unwrap().unwrap();
        assert_eq!(keys.len(), 1);
        r.installed(1002);
        assert!(r.usable(1002));
        assert!(r.due("i", 1200).is_none(), "refresh only after refresh_seconds");
        assert!(r.due("i", 1302).is_some());
        // A failing refresh keeps the keys usable until max_stale, then not.
        let _ = r.response("/jwks", None, None);
        assert!(r.usable(1002 + 3600));
        assert!(!r.usable(1002 + 3601));
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let mut r = RemoteKeys::new(config(Some("/jwks")), "https://idp.test");
        r.due("i", 0);
        let _ = r.response("/jwks", Some(200), Some(JWKS));
        r.installed(0);
        r.unknown_kid(10);
        assert!(r.due("i", 10).is_some(), "an unknown kid triggers a fetch");
        let _ = r.response("/jwks", Some(200), Some(JWKS));
        r.installed(10);
        r.unknown_kid(20);
        assert!(r.due("i", 20).is_none(), "but at most one per unknown_kid_refetch_seconds");
        r.unknown_kid(41);
        assert!(r.due("i", 41).is_some());
    }

    #[test]
    fn discovery_then_jwks() {
        let mut r = RemoteKeys::new(config(None), "https://idp.test/realm");
        let f = r.due("i", 0).unwrap();
        assert_eq!(f.path, "/realm/.well-known/openid-configuration");
        let doc = br#"{"issuer":"https://idp.test/realm","jwks_uri":"https://keys.idp.test/realm/certs"}"#;
        assert_eq!(
            r.response(&f.path, Some(200), Some(doc)),
            Err(FetchOutcome::Discovered { jwks_path: "/realm/certs".into() })
        );
        let f = r.due("i", 0).expect("the key set is fetched right after discovery");
        assert_eq!((f.path.as_str(), f.authority.as_str()), ("/realm/certs", "keys.idp.test"));
        assert!(r.response(&f.path, Some(200), Some(JWKS)).unwrap().is_some());
    }

    #[test]
    fn bad_bodies_fail() {
        let mut r = RemoteKeys::new(config(Some("/jwks")), "https://idp.test");
        for body in [&b"not json"[..], b"{}", br#"{"keys":[]}"#, br#"{"keys":"x"}"#] {
            r.due("i", 0);
            assert!(
                matches!(r.response("/jwks", Some(200), Some(body)), Err(FetchOutcome::Failed(_))),
                "{body:?}"
            );
            r.failures = 0;
            r.last_attempt = None;
        }
        let huge = vec![b' '; 70_000];
        assert!(matches!(r.response("/jwks", Some(200), Some(&huge)), Err(FetchOutcome::Failed(_))));
    }
}
