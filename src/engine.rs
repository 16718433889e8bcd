//! One request from headers to decision: request checks, token verification, policy.

use crate::config::Settings;
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
    pub identity: Option<VerifiedToken>,
}

/// A compiled bundle, ready to authorize requests. Built once per configuration.
pub struct Engine {
    /// Bundle name.
    pub name: String,
    /// Bundle version label.
    pub version: String,
    issuers: Issuers,
    policy: Policy,
    settings: Settings,
}

impl Engine {
    pub(crate) fn new(
        name: String,
        version: String,
        issuers: Issuers,
        policy: Policy,
        settings: Settings,
    ) -> Self {
        Engine { name, version, issuers, policy, settings }
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

    /// Decides a request as of `now` (unix seconds; the host's clock, or a recording's time).
    pub fn authorize(&self, request: &HttpRequest<'_>, now: u64) -> Outcome {
        let target = match RequestTarget::new(request.method, request.authority, request.path) {
            Ok(t) => t,
            Err(reason) => return Outcome { decision: Decision::deny(reason), target: None, identity: None },
        };
        let identity = match bearer_token(&request.authorization).and_then(|t| self.issuers.verify(t, now)) {
            Ok(identity) => identity,
            Err(reason) => {
                return Outcome { decision: Decision::deny(reason), target: Some(target), identity: None }
            }
        };
        let decision = self.policy.evaluate(&target, &identity);
        Outcome { decision, target: Some(target), identity: Some(identity) }
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
