//! The outcome of authorizing one request: allow or deny, the deciding rule and a stable reason code.

use serde::Serialize;

/// Why a request was allowed or denied. The `code()` strings are a stable, documented interface:
/// they appear in deny bodies, audit records and metrics, so never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Reason {
    /// A rule allowed the request.
    Allowed,
    /// No token was presented.
    TokenMissing,
    /// More than one token was presented (repeated or comma-joined `Authorization`).
    TokenMultiple,
    /// The token is larger than the configured maximum.
    TokenTooLarge,
    /// The token is not a well-formed compact JWS.
    TokenMalformed,
    /// The token's `iss` is missing or names no configured issuer.
    TokenIssuerUnknown,
    /// The token's `alg` is not in the issuer's allow-list.
    TokenAlgorithmNotAllowed,
    /// No configured key of the issuer fits the token's `kid` and `alg`.
    TokenKeyUnknown,
    /// The signature does not verify.
    TokenSignatureInvalid,
    /// `exp` is in the past, beyond the clock skew.
    TokenExpired,
    /// `nbf` or `iat` is in the future, beyond the clock skew.
    TokenNotYetValid,
    /// The token has no `exp` and the issuer requires one.
    TokenExpiryMissing,
    /// `aud` is missing or names none of the issuer's audiences.
    TokenAudienceInvalid,
    /// A claim the issuer relies on is missing or has the wrong type.
    TokenClaimInvalid,
    /// The token's `jti` or subject is on the bundle's revocation list.
    TokenRevoked,
    /// The header's `typ` is not one the issuer's profile allows (e.g. not `at+jwt`).
    TokenTypeInvalid,
    /// `sub` does not have the form the issuer's profile requires (SPIFFE ID in the trust domain,
    /// Kubernetes service account).
    TokenSubjectInvalid,
    /// `exp - iat` exceeds the issuer's maximum lifetime.
    TokenLifetimeTooLong,
    /// The token was issued longer ago than the issuer's maximum age.
    TokenTooOld,
    /// The token is bound to a client certificate (`cnf.x5t#S256`) that the connection did not
    /// present, or the issuer requires binding and the token is not bound.
    TokenCertificateMismatch,
    /// The issuer's keys are not available (remote key set never fetched, or too stale): the
    /// request is refused rather than allowed without checking (503).
    KeysUnavailable,
    /// The token is valid but no rule allows this request (default deny).
    PolicyNoMatch,
    /// A deny rule matched the request.
    PolicyDenied,
    /// The request path is ambiguous (dot segments, encoded slashes, control characters ...).
    RequestPathRejected,
    /// The request lacks a method, path or host, or uses a method that cannot be authorized.
    RequestMalformed,
    /// A header that a policy condition reads arrived more than once.
    RequestHeaderRepeated,
    /// Something went wrong inside the plugin; the request is denied (fail closed).
    InternalError,
}

impl Reason {
    /// The stable, machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
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

    /// The HTTP status a denial with this reason is answered with.
    pub fn http_status(self) -> u32 {
        match self {
            Reason::Allowed => 200,
            Reason::PolicyNoMatch | Reason::PolicyDenied => 403,
            Reason::RequestPathRejected | Reason::RequestMalformed | Reason::RequestHeaderRepeated => 400,
            Reason::InternalError => 500,
            Reason::KeysUnavailable => 503,
            _ => 401,
        }
    }

    /// True for the reasons that concern the token, answered with 401 and `WWW-Authenticate`.
    pub fn is_token_problem(self) -> bool {
        self.http_status() == 401
    }

    /// Every reason, for documentation, metrics and tests.
    pub const ALL: [Reason; 27] = [
        Reason::Allowed,
        Reason::TokenMissing,
        Reason::TokenMultiple,
        Reason::TokenTooLarge,
        Reason::TokenMalformed,
        Reason::TokenIssuerUnknown,
        Reason::TokenAlgorithmNotAllowed,
        Reason::TokenKeyUnknown,
        Reason::TokenSignatureInvalid,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenExpiryMissing,
        Reason::TokenAudienceInvalid,
        Reason::TokenClaimInvalid,
        Reason::TokenRevoked,
        Reason::TokenTypeInvalid,
        Reason::TokenSubjectInvalid,
        Reason::TokenLifetimeTooLong,
        Reason::TokenTooOld,
        Reason::TokenCertificateMismatch,
        Reason::KeysUnavailable,
        Reason::PolicyNoMatch,
        Reason::PolicyDenied,
        Reason::RequestPathRejected,
        Reason::RequestMalformed,
        Reason::RequestHeaderRepeated,
        Reason::InternalError,
    ];
}

impl From<Reason> for &'static str {
    fn from(reason: Reason) -> Self {
        reason.code()
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

    #[test]
    fn reason_codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let code = reason.code();
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
        }
    }

    #[test]
    fn statuses_follow_the_kind_of_problem() {
        assert_eq!(Reason::TokenExpired.http_status(), 401);
        assert_eq!(Reason::PolicyNoMatch.http_status(), 403);
        assert_eq!(Reason::RequestPathRejected.http_status(), 400);
        assert!(Reason::TokenMissing.is_token_problem());
        assert!(!Reason::PolicyDenied.is_token_problem());
    }
}
