//! One request from headers to decision: request checks, token verification (with the verified-token
//! cache and revocation lists), policy.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use crate::cache::{digest, CacheStats, TokenCache};
use crate::config::{Revoked, Settings};
use crate::decision::{Decision, Reason};
use crate::policy::Policy;
use crate::request::RequestTarget;
use crate::token::{bearer_token, Issuers, VerifiedToken};

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
}

/// The result of authorizing a request, with what is known about it for audit and forwarding.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The verdict.
    pub decision: Decision,
    /// The checked request, unless the request itself was rejected.
    pub target: Option<RequestTarget>,
    /// The verified identity, if the token verified.
    pub identity: Option<Rc<VerifiedToken>>,
    /// Whether the token came from the verified-token cache (`None`: no token was looked up).
    pub cache_hit: Option<bool>,
}

impl Outcome {
    fn rejected(reason: Reason, target: Option<RequestTarget>) -> Self {
        Outcome { decision: Decision::deny(reason), target, identity: None, cache_hit: None }
    }
}

/// A compiled bundle, ready to authorize requests. Built once per configuration.
pub struct Engine {
    /// Bundle name.
    pub name: String,
    /// Bundle version label.
    pub version: String,
    issuers: Issuers,
    policy: Policy,
    revoked_token_ids: HashSet<String>,
    revoked_subjects: HashSet<String>,
    settings: Settings,
    cache: RefCell<TokenCache>,
}

impl Engine {
    pub(crate) fn new(
        name: String,
        version: String,
        issuers: Issuers,
        policy: Policy,
        revoked: Revoked,
        settings: Settings,
    ) -> Self {
        Engine {
            name,
            version,
            issuers,
            policy,
            revoked_token_ids: revoked.token_ids.into_iter().collect(),
            revoked_subjects: revoked.subjects.into_iter().collect(),
            cache: RefCell::new(TokenCache::new(settings.token_cache_entries)),
            settings,
        }
    }

    /// Plugin settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The compiled policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> &Issuers {
        &self.issuers
    }

    /// Verified-token cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.borrow().stats()
    }

    /// Decides a request as of `now` (unix seconds; the host's clock, or a recording's time).
    pub fn authorize(&self, request: &HttpRequest<'_>, now: u64) -> Outcome {
        let target = match RequestTarget::new(request.method, request.authority, request.path) {
            Ok(t) => t,
            Err(reason) => return Outcome::rejected(reason, None),
        };
        let token = match bearer_token(&request.authorization) {
            Ok(token) => token,
            Err(reason) => return Outcome::rejected(reason, Some(target)),
        };
        let (identity, cache_hit) = match self.identity(token, now) {
            Ok(found) => found,
            Err(reason) => {
                return Outcome { cache_hit: Some(false), ..Outcome::rejected(reason, Some(target)) }
            }
        };
        let decision = if self.is_revoked(&identity) {
            Decision::deny(Reason::TokenRevoked)
        } else {
            self.policy.evaluate(&target, &identity)
        };
        Outcome { decision, target: Some(target), identity: Some(identity), cache_hit: Some(cache_hit) }
    }

    /// The verified identity of a token, and whether it came from the cache; a token verified now
    /// is cached until its `exp`.
    fn identity(&self, token: &str, now: u64) -> Result<(Rc<VerifiedToken>, bool), Reason> {
        if token.len() > self.settings.max_token_bytes {
            return Err(Reason::TokenTooLarge);
        }
        let key = digest(token);
        // A failed borrow cannot happen (no re-entrancy); if it did, verify without the cache.
        if let Some(hit) = self.cache.try_borrow_mut().ok().and_then(|mut c| c.get(&key, now)) {
            return Ok((hit, true));
        }
        let verified = Rc::new(self.issuers.verify(token, now)?);
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.insert(key, verified.clone(), verified.expires_at, now);
        }
        Ok((verified, false))
    }

    fn is_revoked(&self, identity: &VerifiedToken) -> bool {
        identity.token_id.as_ref().is_some_and(|id| self.revoked_token_ids.contains(id))
            || self.revoked_subjects.contains(&identity.subject)
    }

    /// The upstream headers of an allowed request: each identity header meshward manages, with its
    /// value, or `None` to remove any client-supplied copy. `authorization` is listed (as `None`)
    /// when the token is to be removed.
    pub fn upstream_headers<'s>(
        &'s self,
        identity: Option<&VerifiedToken>,
    ) -> Vec<(&'s str, Option<String>)> {
        let s = &self.settings;
        let mut headers = Vec::with_capacity(2 + s.claim_headers.len());
        headers.push((s.identity_header.as_str(), identity.map(|i| i.subject.clone())));
        headers.push((s.issuer_header.as_str(), identity.map(|i| i.issuer_name.clone())));
        for (header, claim) in &s.claim_headers {
            headers.push((header.as_str(), identity.and_then(|i| i.claim_text(claim))));
        }
        if s.remove_token {
            headers.push(("authorization", None));
        }
        headers
    }

    /// The local reply for a denial: status, headers and a small JSON body.
    pub fn deny_response(&self, reason: Reason, request_id: Option<&str>) -> DenyResponse {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if reason.is_token_problem() {
            let realm = &self.settings.realm;
            // RFC 6750 3.1: no error code when the request carried no credentials at all.
            let challenge = if reason == Reason::TokenMissing {
                format!("Bearer realm=\"{realm}\"")
            } else {
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                    reason.code()
                )
            };
            headers.push(("www-authenticate".to_string(), challenge));
        }
        let body = serde_json::json!({ "reason": reason.code(), "request_id": request_id });
        DenyResponse { status: reason.http_status(), headers, body: body.to_string() }
    }
}

/// A local reply that denies a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyResponse {
    /// HTTP status.
    pub status: u32,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: String,
}
