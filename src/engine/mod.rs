//! One request from headers to decision: request checks, token verification (with the verified-token
//! cache and revocation lists), policy.

#![forbid(unsafe_code)]

mod compile;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

use crate::config::{Revoked, Settings};
use crate::decision::{Decision, Reason};
use crate::policy::{Evaluation, Mode, Policy, PolicyInput};
use crate::request::{HttpRequest, RequestTarget};
use crate::token::cache::{CacheStats, TokenCache};
use crate::token::shared::{CacheKeyer, SharedTokens};
use crate::token::source::{find_token, TokenSource};
use crate::token::{Issuers, VerifiedToken};

/// An identity verified when the request was made, as the plugin's audit record carries it: no
/// token to verify again, and neither claims nor the token's issue time.
#[derive(Clone, Copy, Debug)]
pub struct RecordedIdentity<'a> {
    /// The issuer's configured name.
    pub issuer: &'a str,
    /// The token's subject.
    pub subject: &'a str,
    /// The token's `jti`, if it had one.
    pub token_id: Option<&'a str>,
    /// The token's `exp`, if it had one.
    pub expires_at: Option<u64>,
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
    /// The decision dry-run rules would have made, when it differs from `decision`.
    pub dry_run: Option<Decision>,
    /// Whether `decision` is acted on (`enforce`), or only reported (`dry-run` bundle).
    pub mode: Mode,
}

impl Outcome {
    fn rejected(reason: Reason, target: Option<RequestTarget>, mode: Mode) -> Self {
        Outcome {
            decision: Decision::deny(reason),
            target,
            identity: None,
            cache_hit: None,
            dry_run: None,
            mode,
        }
    }

    /// Whether the request goes upstream: allowed, or any decision in a dry-run bundle.
    pub fn lets_through(&self) -> bool {
        self.decision.allowed || self.mode == Mode::DryRun
    }
}

/// A compiled bundle, ready to authorize requests. Built once per configuration.
pub struct Engine {
    /// Bundle name.
    pub name: String,
    /// Bundle version label.
    pub version: String,
    /// Enforce decisions, or only report them.
    pub mode: Mode,
    token_sources: Vec<TokenSource>,
    issuers: Issuers,
    policy: Policy,
    revoked_token_ids: HashSet<String>,
    revoked_subjects: HashSet<String>,
    settings: Settings,
    cache: RefCell<TokenCache>,
    /// The token cache's keyed hash; `None` (no random source for its secret key) disables caching
    /// rather than fall back to a predictable key.
    keyer: Option<CacheKeyer>,
    /// Verified tokens shared with the other VMs of the process (the plugin only).
    shared: Option<SharedTokens>,
    sampler: AuditSampler,
}

impl Engine {
    pub(crate) fn new(
        (name, version, mode): (String, String, Mode),
        token_sources: Vec<TokenSource>,
        issuers: Issuers,
        policy: Policy,
        revoked: Revoked,
        settings: Settings,
    ) -> Self {
        Engine {
            name,
            version,
            mode,
            token_sources,
            issuers,
            policy,
            revoked_token_ids: revoked.token_ids.into_iter().collect(),
            revoked_subjects: revoked.subjects.into_iter().collect(),
            cache: RefCell::new(TokenCache::new(settings.token_cache_entries)),
            keyer: CacheKeyer::random().ok(),
            shared: None,
            sampler: AuditSampler::new(settings.audit_allow_sample_rate),
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

    /// Has `host` check the RSA PKCS#1 v1.5 and ECDSA signatures (see [`crate::token::hostcrypto`]).
    pub fn set_signature_host(&mut self, host: Box<dyn crate::token::hostcrypto::SignatureHost>) {
        self.issuers.set_signature_host(host);
    }

    /// Whether the audit record of this outcome is to be written (see [`AuditSampler`]).
    pub fn should_audit(&self, outcome: &Outcome) -> bool {
        self.sampler.keep(outcome)
    }

    /// Whether audit records also go to filter state, for access logs (`settings.audit_filter_state`).
    pub fn audit_filter_state(&self) -> bool {
        self.settings.audit_filter_state
    }

    /// Whether any issuer checks certificate binding (so the filter reads the peer certificate's
    /// digest only then).
    pub fn uses_certificate_binding(&self) -> bool {
        self.issuers.iter().any(|i| i.certificate_binding != crate::token::CertificateBinding::Off)
    }

    /// The remote key fetches due now (see [`crate::token::remote`]); each is marked in flight.
    pub fn due_key_fetches(&self, now: u64) -> Vec<crate::token::remote::Fetch> {
        self.issuers.due_fetches(now)
    }

    /// Reports the result of a key fetch for the named issuer.
    pub fn key_fetch_completed(
        &self,
        issuer: &str,
        path: &str,
        status: Option<u32>,
        body: Option<&[u8]>,
        now: u64,
    ) -> crate::token::remote::FetchOutcome {
        match self.issuers.get(issuer) {
            Some(i) => i.fetch_completed(path, status, body, now),
            None => crate::token::remote::FetchOutcome::Failed(format!("no issuer named {issuer:?}")),
        }
    }

    /// Whether a request refused for `keys_unavailable` should rather wait for the first keys.
    pub fn waiting_for_first_keys(&self, now_ms: u64) -> bool {
        self.issuers.waiting_for_first_keys(now_ms)
    }

    /// Shares verified tokens with the other VMs of the process (see [`crate::token::shared`]): the cache
    /// key's secret becomes the one the VMs share, and cache misses look in `shared` before
    /// verifying. Not with the cache disabled (`token_cache_entries` 0), nor without a random source.
    pub fn share_tokens(&mut self, shared: SharedTokens) {
        if self.settings.token_cache_entries == 0 {
            return;
        }
        if let Some(keyer) = self.keyer {
            self.keyer = Some(shared.keyer(keyer));
            self.shared = Some(shared);
        }
    }

    /// How many tokens had their signature checked since the last call (cache misses that got as
    /// far as a key: not a token refused before, nor one waiting for keys).
    pub fn take_verifications(&self) -> u64 {
        self.issuers.take_signature_checks()
    }

    /// Verified-token cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.borrow().stats()
    }

    /// Decides a request as of `now` (unix seconds; the host's clock, or a recording's time).
    ///
    /// A presented token must verify (401 otherwise). Without a token, only rules on the mTLS
    /// peer can allow; if none does, the answer is 401 `token_missing` so the caller learns
    /// what to send.
    pub fn authorize(&self, request: &HttpRequest<'_>, now: u64) -> Outcome {
        let target = match self.request_checks(request) {
            Ok(t) => t,
            Err(rejected) => return *rejected,
        };
        let (identity, cache_hit) = match find_token(&self.token_sources, request) {
            Ok(Some(token)) => match self.identity(token, now) {
                Ok((identity, hit)) => (Some(identity), Some(hit)),
                Err(reason) => {
                    let rejected = Outcome::rejected(reason, Some(target), self.mode);
                    return Outcome { cache_hit: Some(false), ..rejected };
                }
            },
            Ok(None) => (None, None),
            Err(reason) => return Outcome::rejected(reason, Some(target), self.mode),
        };
        let presented = identity.as_deref().map(|token| self.check_presentation(token, request));
        self.decide(request, target, (identity, cache_hit), presented, now)
    }

    /// Decides a request whose token was verified when it was made (an audit record's), as of
    /// `now`: the same steps as [`Engine::authorize`], with the recorded identity in place of token
    /// verification. The identity's issuer must still be trusted and the identity not revoked;
    /// certificate binding was checked when the request was made.
    pub fn authorize_identity(
        &self,
        request: &HttpRequest<'_>,
        identity: Option<RecordedIdentity<'_>>,
        now: u64,
    ) -> Outcome {
        let identity = identity.map(|recorded| self.recorded_identity(recorded)).transpose();
        self.authorize_established(request, identity, now)
    }

    /// Decides a request for an identity established elsewhere (`diff --synthesize` makes one up
    /// for each probe): the same steps as [`Engine::authorize_identity`] (request checks,
    /// revocation, policy, the final decision), with the identity's claims.
    pub fn authorize_verified(
        &self,
        request: &HttpRequest<'_>,
        identity: Option<VerifiedToken>,
        now: u64,
    ) -> Outcome {
        self.authorize_established(request, Ok(identity.map(Rc::new)), now)
    }

    /// The steps after authentication for an identity not verified here: request checks first
    /// (so a malformed request is refused as such), then the identity's own refusal if any,
    /// revocation, policy and the final decision.
    fn authorize_established(
        &self,
        request: &HttpRequest<'_>,
        identity: Result<Option<Rc<VerifiedToken>>, Reason>,
        now: u64,
    ) -> Outcome {
        let target = match self.request_checks(request) {
            Ok(t) => t,
            Err(rejected) => return *rejected,
        };
        let identity = match identity {
            Ok(identity) => identity,
            Err(reason) => return Outcome::rejected(reason, Some(target), self.mode),
        };
        let presented = identity.as_deref().map(|token| self.check_revocation(token));
        self.decide(request, target, (identity, None), presented, now)
    }

    /// The request's method, authority and path, checked and normalized.
    pub fn check_request(&self, request: &HttpRequest<'_>) -> Result<RequestTarget, Reason> {
        RequestTarget::new(request.method, request.authority, request.path)
    }

    /// The first step of every decision: the request target, and the headers policy conditions
    /// read (each at most once).
    #[cfg_attr(feature = "measure", inline(never))]
    fn request_checks(&self, request: &HttpRequest<'_>) -> Result<RequestTarget, Box<Outcome>> {
        let target = self
            .check_request(request)
            .map_err(|reason| Box::new(Outcome::rejected(reason, None, self.mode)))?;
        match self.policy.repeated_condition_header(&request.headers) {
            Some(reason) => Err(Box::new(Outcome::rejected(reason, Some(target), self.mode))),
            None => Ok(target),
        }
    }

    /// The last steps of every decision: policy on the authenticated request, unless the
    /// presentation checks refused the token, then the final answer.
    #[cfg_attr(feature = "measure", inline(never))]
    fn decide(
        &self,
        request: &HttpRequest<'_>,
        target: RequestTarget,
        (identity, cache_hit): (Option<Rc<VerifiedToken>>, Option<bool>),
        presented: Option<Result<(), Reason>>,
        now: u64,
    ) -> Outcome {
        let Evaluation { mut decision, dry_run } = match presented {
            Some(Err(reason)) => Evaluation { decision: Decision::deny(reason), dry_run: None },
            _ => self.policy.evaluate(&PolicyInput {
                target: &target,
                headers: &request.headers,
                token: identity.as_deref(),
                peer: request.peer,
                now,
            }),
        };
        // Without a token, "no rule" is answered with "send a token": the caller learns what to send.
        if identity.is_none() && decision.reason == Reason::PolicyNoMatch {
            decision = Decision::deny(Reason::TokenMissing);
        }
        Outcome { decision, target: Some(target), identity, cache_hit, dry_run, mode: self.mode }
    }

    /// A recorded identity as a verified token of a trusted issuer (refused when the bundle no
    /// longer trusts the issuer: its tokens would not verify).
    fn recorded_identity(&self, recorded: RecordedIdentity<'_>) -> Result<Rc<VerifiedToken>, Reason> {
        let issuer = self.issuers.get(recorded.issuer).ok_or(Reason::TokenIssuerUnknown)?;
        Ok(Rc::new(VerifiedToken {
            issuer_name: recorded.issuer.to_owned(),
            profile: issuer.profile.name(),
            issuer: issuer.issuer.clone(),
            subject: recorded.subject.to_owned(),
            token_id: recorded.token_id.map(str::to_owned),
            expires_at: recorded.expires_at,
            issued_at: None,
            claims: Default::default(),
        }))
    }

    /// The verified identity of a token, and whether it came from the cache; a token verified now
    /// is cached until its `exp`.
    #[cfg_attr(feature = "measure", inline(never))]
    fn identity(&self, token: &str, now: u64) -> Result<(Rc<VerifiedToken>, bool), Reason> {
        if token.len() > self.settings.max_token_bytes {
            return Err(Reason::TokenTooLarge);
        }
        let Some(key) = self.keyer.map(|k| k.key(token)) else {
            return Ok((Rc::new(self.issuers.verify(token, now)?), false));
        };
        // A failed borrow cannot happen (no re-entrancy); if it did, verify without the cache.
        if let Some((hit, generation)) = self.cache.try_borrow_mut().ok().and_then(|mut c| c.get(&key, now)) {
            let issuer = self.issuers.get(&hit.issuer_name).ok_or(Reason::InternalError)?;
            // A cached verification is only as good as the keys behind it: none when they went
            // stale, and redone when the issuer published a different key set.
            if !issuer.keys_usable(now) {
                return Err(Reason::KeysUnavailable);
            }
            if generation == issuer.key_generation() {
                // Age limits move with the clock: checked on every hit.
                issuer.check_age(&hit, now)?;
                return Ok((hit, true));
            }
        }
        // Another VM may have verified it: its entry passes the checks of a local hit
        // (SharedTokens::get), then the age limits, as a local hit does.
        if let Some((token, until)) = self.shared.as_ref().and_then(|s| s.get(&key, &self.issuers, now)) {
            let issuer = self.issuers.get(&token.issuer_name).ok_or(Reason::InternalError)?;
            issuer.check_age(&token, now)?;
            let token = Rc::new(token);
            if let Ok(mut cache) = self.cache.try_borrow_mut() {
                cache.insert(key, token.clone(), issuer.key_generation(), until, now);
            }
            return Ok((token, true));
        }
        let verified = Rc::new(self.issuers.verify(token, now)?);
        let Some(issuer) = self.issuers.get(&verified.issuer_name) else { return Ok((verified, false)) };
        // A token without `exp` (allowed only by explicit opt-out) is re-verified each minute.
        let until = verified.expires_at.unwrap_or(now + 60);
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.insert(key, verified.clone(), issuer.key_generation(), until, now);
        }
        if let Some(shared) = &self.shared {
            shared.put(&key, &verified, &issuer.key_set_fingerprint(), until);
        }
        Ok((verified, false))
    }

    /// What is checked on every request, cached token or not: revocation and certificate binding.
    #[cfg_attr(feature = "measure", inline(never))]
    fn check_presentation(&self, token: &VerifiedToken, request: &HttpRequest<'_>) -> Result<(), Reason> {
        self.check_revocation(token)?;
        let issuer = self.issuers.get(&token.issuer_name).ok_or(Reason::InternalError)?;
        issuer.check_binding(token, request.peer_certificate_sha256)
    }

    /// Whether the token's `jti` or subject is on the bundle's revocation list.
    fn check_revocation(&self, token: &VerifiedToken) -> Result<(), Reason> {
        let revoked = token.token_id.as_ref().is_some_and(|id| self.revoked_token_ids.contains(id))
            || self.revoked_subjects.contains(&token.subject);
        if revoked {
            Err(Reason::TokenRevoked)
        } else {
            Ok(())
        }
    }

    /// The upstream headers of an allowed request: each identity header meshward manages, with its
    /// value, or `None` to remove any client-supplied copy. `authorization` is listed (as `None`)
    /// when the token is to be removed.
    pub fn upstream_headers<'s>(
        &'s self,
        identity: Option<&'s VerifiedToken>,
    ) -> Vec<(&'s str, Option<Cow<'s, str>>)> {
        let s = &self.settings;
        let mut headers = Vec::with_capacity(3 + s.claim_headers.len());
        // Borrowed, not copied: these are written on every allowed request.
        headers.push((s.identity_header.as_str(), identity.map(|i| Cow::Borrowed(i.subject.as_str()))));
        headers.push((s.issuer_header.as_str(), identity.map(|i| Cow::Borrowed(i.issuer_name.as_str()))));
        for (header, claim) in &s.claim_headers {
            // A claim value that is not a safe header value is not forwarded (the header is removed).
            let value =
                identity.and_then(|i| i.claim_text(claim)).filter(|v| !v.chars().any(char::is_control));
            headers.push((header.as_str(), value.map(Cow::Owned)));
        }
        if s.remove_token {
            headers.push(("authorization", None));
        }
        headers
    }

    /// The local reply for a denial: status, headers and a small JSON body.
    pub fn deny_response(&self, reason: Reason, request_id: Option<&str>) -> DenyResponse {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let hide = self.settings.hide_deny_reason;
        if reason.is_token_problem() {
            let realm = &self.settings.realm;
            // RFC 6750 3.1: no error code when the request carried no credentials at all.
            let challenge = match (reason, hide) {
                (Reason::TokenMissing, _) => format!("Bearer realm=\"{realm}\""),
                (_, true) => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                (_, false) => format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                    reason.code()
                ),
            };
            headers.push(("www-authenticate".to_string(), challenge));
        }
        let shown = if hide { "denied" } else { reason.code() };
        let body = serde_json::json!({ "reason": shown, "request_id": request_id });
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

/// Decides which decisions are written. Denials, dry-run disagreements, break-glass decisions and
/// write-like methods always are; plain reads that were allowed are sampled at `allow_sample_rate`
/// (deterministically: exactly that share of them, spread evenly).
#[derive(Debug)]
pub struct AuditSampler {
    rate: f64,
    credit: Cell<f64>,
}

impl AuditSampler {
    /// A sampler keeping `rate` (0.0 to 1.0) of plain allows.
    pub fn new(rate: f64) -> Self {
        AuditSampler { rate: rate.clamp(0.0, 1.0), credit: Cell::new(0.0) }
    }

    /// Whether to write the record of this outcome.
    pub fn keep(&self, outcome: &Outcome) -> bool {
        let d = &outcome.decision;
        let read =
            outcome.target.as_ref().is_some_and(|t| matches!(t.method.as_str(), "GET" | "HEAD" | "OPTIONS"));
        if !d.allowed || d.break_glass || outcome.dry_run.is_some() || outcome.mode == Mode::DryRun || !read {
            return true;
        }
        let credit = self.credit.get() + self.rate;
        if credit >= 1.0 {
            self.credit.set(credit - 1.0);
            true
        } else {
            self.credit.set(credit);
            false
        }
    }
}
