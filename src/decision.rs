//! The outcome of authorizing one request: allow or deny, the deciding rule and a stable reason code.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Declares [`Reason`] from one table: each variant with its stable code and the HTTP status of a
/// denial with it. `ALL`, `code()`, `http_status()` and `from_code()` all come from the table, so a
/// new reason cannot miss a code, a status, a metric or replay's parser.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = ($code:literal, $status:literal),)*) => {
        /// Why a request was allowed or denied. The `code()` strings are a stable, documented
        /// interface: they appear in deny bodies, audit records and metrics, so never rename one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(into = "&'static str", try_from = "String")]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in table order, for documentation, metrics and tests.
            pub const ALL: [Reason; [$($code,)*].len()] = [$(Reason::$variant,)*];

            /// The stable, machine-readable code.
            pub fn code(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The HTTP status a decision with this reason is answered with.
            pub fn http_status(self) -> u32 {
                match self {
                    $(Reason::$variant => $status,)*
                }
            }

            /// The reason with this code, if any.
            pub fn from_code(code: &str) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// A rule allowed the request.
    Allowed = ("allowed", 200),
    /// No token was presented.
    TokenMissing = ("token_missing", 401),
    /// More than one token was presented (repeated or comma-joined `Authorization`).
    TokenMultiple = ("token_multiple", 401),
    /// The token is larger than the configured maximum.
    TokenTooLarge = ("token_too_large", 401),
    /// The token is not a well-formed compact JWS.
    TokenMalformed = ("token_malformed", 401),
    /// The token's `iss` is missing or names no configured issuer.
    TokenIssuerUnknown = ("token_issuer_unknown", 401),
    /// The token's `alg` is not in the issuer's allow-list.
    TokenAlgorithmNotAllowed = ("token_algorithm_not_allowed", 401),
    /// No configured key of the issuer fits the token's `kid` and `alg`.
    TokenKeyUnknown = ("token_key_unknown", 401),
    /// The signature does not verify.
    TokenSignatureInvalid = ("token_signature_invalid", 401),
    /// `exp` is in the past, beyond the clock skew.
    TokenExpired = ("token_expired", 401),
    /// `nbf` or `iat` is in the future, beyond the clock skew.
    TokenNotYetValid = ("token_not_yet_valid", 401),
    /// The token has no `exp` and the issuer requires one.
    TokenExpiryMissing = ("token_expiry_missing", 401),
    /// `aud` is missing or names none of the issuer's audiences.
    TokenAudienceInvalid = ("token_audience_invalid", 401),
    /// A claim the issuer relies on is missing or has the wrong type.
    TokenClaimInvalid = ("token_claim_invalid", 401),
    /// The token's `jti` or subject is on the bundle's revocation list.
    TokenRevoked = ("token_revoked", 401),
    /// The header's `typ` is not one the issuer's profile allows (e.g. not `at+jwt`).
    TokenTypeInvalid = ("token_type_invalid", 401),
    /// `sub` does not have the form the issuer's profile requires (SPIFFE ID in the trust domain,
    /// Kubernetes service account).
    TokenSubjectInvalid = ("token_subject_invalid", 401),
    /// `exp - iat` exceeds the issuer's maximum lifetime.
    TokenLifetimeTooLong = ("token_lifetime_too_long", 401),
    /// The token was issued longer ago than the issuer's maximum age.
    TokenTooOld = ("token_too_old", 401),
    /// The token is bound to a client certificate (`cnf.x5t#S256`) that the connection did not
    /// present, or the issuer requires binding and the token is not bound.
    TokenCertificateMismatch = ("token_certificate_mismatch", 401),
    /// The issuer's keys are not available (remote key set never fetched, or too stale): the
    /// request is refused rather than allowed without checking (503).
    KeysUnavailable = ("keys_unavailable", 503),
    /// The token is valid but no rule allows this request (default deny).
    PolicyNoMatch = ("policy_no_matching_rule", 403),
    /// A deny rule matched the request.
    PolicyDenied = ("policy_denied", 403),
    /// The request path is ambiguous (dot segments, encoded slashes, control characters ...).
    RequestPathRejected = ("request_path_rejected", 400),
    /// The request lacks a method, path or host, or uses a method that cannot be authorized.
    RequestMalformed = ("request_malformed", 400),
    /// A header that a policy condition reads arrived more than once.
    RequestHeaderRepeated = ("request_header_repeated", 400),
    /// Something went wrong inside the plugin; the request is denied (fail closed).
    InternalError = ("internal_error", 500),
}

impl Reason {
    /// True for the reasons that concern the token, answered with 401 and `WWW-Authenticate`.
    pub fn is_token_problem(self) -> bool {
        self.http_status() == 401
    }

    /// The verdict a decision with this reason carries: only `allowed` allows.
    pub fn verdict(self) -> Verdict {
        if self == Reason::Allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// The name of the counter of decisions with this reason (the bootstrap's `stats_tags` turn
    /// the `outcome` and `reason` segments into Prometheus labels).
    pub fn metric_name(self) -> String {
        format!("meshward.decisions_total.outcome.{}.reason.{}", self.verdict().word(), self.code())
    }
}

/// allow or deny: the words audit records, metrics, replay expectations and `explain` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The request may go upstream.
    Allow,
    /// The request is refused.
    Deny,
}

impl Verdict {
    /// Both verdicts.
    pub const ALL: [Verdict; 2] = [Verdict::Allow, Verdict::Deny];

    /// The verdict of a decision.
    pub fn of(decision: &Decision) -> Self {
        if decision.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// `allow` or `deny`.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }

    /// The verdict spelled by `word` (`allow` or `deny`).
    pub fn from_word(word: &str) -> Option<Self> {
        Verdict::ALL.into_iter().find(|v| v.word() == word)
    }
}

impl From<Reason> for &'static str {
    fn from(reason: Reason) -> Self {
        reason.code()
    }
}

/// A reason code that names no [`Reason`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code {0:?}")]
pub struct UnknownReason(pub String);

impl TryFrom<String> for Reason {
    type Error = UnknownReason;

    fn try_from(code: String) -> Result<Self, Self::Error> {
        Reason::from_code(&code).ok_or(UnknownReason(code))
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The verdict on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go upstream.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The id of the rule that decided, or `None` when no rule did (token problems, default deny).
    pub rule_id: Option<String>,
    /// The deciding rule is a break-glass rule: audit at high severity.
    pub break_glass: bool,
}

impl Decision {
    /// An allow by the given rule.
    pub fn allow(rule_id: &str) -> Self {
        Decision {
            allowed: true,
            reason: Reason::Allowed,
            rule_id: Some(rule_id.to_owned()),
            break_glass: false,
        }
    }

    /// A denial that no rule decided.
    pub fn deny(reason: Reason) -> Self {
        Decision { allowed: false, reason, rule_id: None, break_glass: false }
    }

    /// A denial by the given rule.
    pub fn deny_by(reason: Reason, rule_id: &str) -> Self {
        Decision { allowed: false, reason, rule_id: Some(rule_id.to_owned()), break_glass: false }
    }

    /// Marks the decision as made by a break-glass rule (or not).
    pub fn with_break_glass(mut self, break_glass: bool) -> Self {
        self.break_glass = break_glass;
        self
    }

    /// `allow` or `deny`.
    pub fn verdict(&self) -> Verdict {
        Verdict::of(self)
    }

    /// The rule id for display: the deciding rule, or `default-deny` / `-`.
    pub fn rule_label(&self) -> &str {
        match (&self.rule_id, self.reason) {
            (Some(id), _) => id,
            (None, Reason::PolicyNoMatch) => "default-deny",
            (None, _) => "-",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason, spelled out once more on purpose: the match has no wildcard, so a new variant
    /// fails to compile here until it is given its code, and a renamed code (a stable interface)
    /// fails the test.
    fn documented_code(reason: Reason) -> &'static str {
        match reason {
            Reason::Allowed => "allowed",
            Reason::TokenMissing => "token_missing",
            Reason::TokenMultiple => "token_multiple",
            Reason::TokenTooLarge => "token_too_large",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenIssuerUnknown => "token_issuer_unknown",
            Reason::TokenAlgorithmNotAllowed => "token_algorithm_not_allowed",
            Reason::TokenKeyUnknown => "token_key_unknown",
            Reason::TokenSignatureInvalid => "token_signature_invalid",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenExpiryMissing => "token_expiry_missing",
            Reason::TokenAudienceInvalid => "token_audience_invalid",
            Reason::TokenClaimInvalid => "token_claim_invalid",
            Reason::TokenRevoked => "token_revoked",
            Reason::TokenTypeInvalid => "token_type_invalid",
            Reason::TokenSubjectInvalid => "token_subject_invalid",
            Reason::TokenLifetimeTooLong => "token_lifetime_too_long",
            Reason::TokenTooOld => "token_too_old",
            Reason::TokenCertificateMismatch => "token_certificate_mismatch",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::PolicyNoMatch => "policy_no_matching_rule",
            Reason::PolicyDenied => "policy_denied",
            Reason::RequestPathRejected => "request_path_rejected",
            Reason::RequestMalformed => "request_malformed",
            Reason::RequestHeaderRepeated => "request_header_repeated",
            Reason::InternalError => "internal_error",
        }
    }

    const DOCUMENTED: usize = 27;

    #[test]
    fn every_reason_is_listed_once_with_its_documented_code() {
        assert_eq!(Reason::ALL.len(), DOCUMENTED);
        let mut seen = std::collections::HashSet::new();
        for (at, reason) in Reason::ALL.into_iter().enumerate() {
            // The filter's per-reason counters are indexed by `reason as usize`.
            assert_eq!(reason as usize, at, "{reason:?}");
            let code = reason.code();
            assert_eq!(code, documented_code(reason));
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
            assert_eq!(Reason::from_code(code), Some(reason), "{code} does not round-trip");
            assert_eq!(serde_json::to_value(reason).ok(), Some(serde_json::Value::from(code)));
        }
        assert_eq!(Reason::from_code("allow"), None);
        let typo = serde_json::from_str::<Reason>("\"alowed\"").map_err(|e| e.to_string());
        assert_eq!(typo, Err("unknown reason code \"alowed\"".to_string()));
        assert_eq!(Reason::from_code(""), None);
    }

    #[test]
    fn every_reason_has_a_status_and_a_metric() {
        let mut metrics = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let status = reason.http_status();
            match reason.verdict() {
                Verdict::Allow => assert_eq!((reason, status), (Reason::Allowed, 200)),
                Verdict::Deny => assert!([400, 401, 403, 500, 503].contains(&status), "{reason}: {status}"),
            }
            let metric = reason.metric_name();
            assert_eq!(
                metric,
                format!(
                    "meshward.decisions_total.outcome.{}.reason.{}",
                    reason.verdict().word(),
                    reason.code()
                )
            );
            assert!(metric.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'), "{metric}");
            assert!(metrics.insert(metric));
        }
        assert_eq!(Reason::Allowed.metric_name(), "meshward.decisions_total.outcome.allow.reason.allowed");
    }

    #[test]
    fn statuses_follow_the_kind_of_problem() {
        assert_eq!(Reason::TokenExpired.http_status(), 401);
        assert_eq!(Reason::TokenMissing.http_status(), 401);
        assert_eq!(Reason::PolicyNoMatch.http_status(), 403);
        assert_eq!(Reason::PolicyDenied.http_status(), 403);
        assert_eq!(Reason::RequestPathRejected.http_status(), 400);
        assert_eq!(Reason::KeysUnavailable.http_status(), 503);
        assert_eq!(Reason::InternalError.http_status(), 500);
        assert!(Reason::TokenMissing.is_token_problem());
        assert!(!Reason::PolicyDenied.is_token_problem());
        assert!(!Reason::KeysUnavailable.is_token_problem());
    }

    #[test]
    fn verdict_words_round_trip() {
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_word(verdict.word()), Some(verdict));
            assert_eq!(serde_json::to_value(verdict).ok(), Some(serde_json::Value::from(verdict.word())));
        }
        assert_eq!(Verdict::Allow.word(), "allow");
        assert_eq!(Verdict::Deny.word(), "deny");
        assert_eq!(Verdict::from_word("Allow"), None);
        assert_eq!(Verdict::of(&Decision::allow("r")), Verdict::Allow);
        assert_eq!(Verdict::of(&Decision::deny(Reason::PolicyNoMatch)), Verdict::Deny);
    }
}
