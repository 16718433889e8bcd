//! Token profiles: the rules a kind of workload token must follow beyond plain JWT validity.
//!
//! - `oidc`: a generic OIDC / JWT issuer; only the configured checks.
//! - `jwt-svid`: SPIFFE JWT-SVID (spiffe/spiffe standards, JWT-SVID.md): `sub` is a SPIFFE ID in
//!   the configured trust domain, `typ` is absent, `JWT` or `JOSE`, only RS/PS/ES algorithms, keys
//!   marked `use: jwt-svid` when the bundle marks use, `aud` and `exp` always required.
//! - `kubernetes`: projected service-account tokens: `sub` is
//!   `system:serviceaccount:<namespace>:<name>` and agrees with the `kubernetes.io` claim.
//! - `access-token`: OAuth 2.0 access tokens in JWT form (RFC 9068): `typ` is `at+jwt`, and
//!   `client_id`, `iat` and `jti` are present; scopes come from `scope`.

use serde_json::{Map, Value};

use crate::decision::Reason;
use crate::token::Algorithm;

/// The profile of an issuer's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    Oidc,
    JwtSvid { trust_domain: String },
    Kubernetes,
    AccessToken,
}

impl Profile {
    /// The name used in configuration, rules and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Oidc => "oidc",
            Profile::JwtSvid { .. } => "jwt-svid",
            Profile::Kubernetes => "kubernetes",
            Profile::AccessToken => "access-token",
        }
    }

    /// Every profile name.
    pub const NAMES: [&'static str; 4] = ["oidc", "jwt-svid", "kubernetes", "access-token"];

    /// Whether tokens of this profile may use `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        match self {
            // The JWT-SVID spec lists RS*, ES* and PS* only.
            Profile::JwtSvid { .. } => {
                !matches!(alg, Algorithm::EdDSA | Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
            }
            _ => true,
        }
    }

    /// The JWK `use` values whose keys this profile accepts.
    pub fn key_uses(&self) -> &'static [&'static str] {
        match self {
            Profile::JwtSvid { .. } => &["jwt-svid"],
            _ => &["sig"],
        }
    }

    /// Checks the header's `typ`. Returns the value jwt-simple must then accept, if it is not one
    /// jwt-simple accepts anyway (`JWT`, `*+JWT`).
    pub fn check_type(&self, typ: Option<&Value>) -> Result<Option<String>, Reason> {
        let typ = match typ {
            None => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(Reason::TokenTypeInvalid),
        };
        match (self, typ) {
            (Profile::AccessToken, Some(t))
                if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") =>
            {
                Ok(None)
            }
            (Profile::AccessToken, _) => Err(Reason::TokenTypeInvalid),
            (Profile::JwtSvid { .. }, Some(t)) if t.eq_ignore_ascii_case("jose") => Ok(Some(t.to_owned())),
            (Profile::JwtSvid { .. }, Some(t)) if !t.eq_ignore_ascii_case("jwt") => {
                Err(Reason::TokenTypeInvalid)
            }
            _ => Ok(None),
        }
    }

    /// Checks the verified claims against the profile.
    pub fn check_claims(
        &self,
        subject: &str,
        claims: &Map<String, Value>,
        issued_at: Option<u64>,
        token_id: Option<&str>,
    ) -> Result<(), Reason> {
        match self {
            Profile::Oidc => Ok(()),
            Profile::JwtSvid { trust_domain } => match parse_spiffe_id(subject) {
                Some((td, _)) if td == trust_domain => Ok(()),
                _ => Err(Reason::TokenSubjectInvalid),
            },
            Profile::Kubernetes => {
                let (namespace, account) =
                    parse_service_account(subject).ok_or(Reason::TokenSubjectInvalid)?;
                // When the token also carries the structured claim, both must agree.
                if let Some(Value::Object(k8s)) = claims.get("kubernetes.io") {
                    let ns = k8s.get("namespace").and_then(Value::as_str);
                    let sa = k8s.get("serviceaccount").and_then(|s| s.get("name")).and_then(Value::as_str);
                    if ns.is_some_and(|n| n != namespace) || sa.is_some_and(|s| s != account) {
                        return Err(Reason::TokenSubjectInvalid);
                    }
                }
                Ok(())
            }
            Profile::AccessToken => {
                let client_id = claims.get("client_id").and_then(Value::as_str).filter(|c| !c.is_empty());
                if client_id.is_none() || issued_at.is_none() || token_id.is_none() {
                    return Err(Reason::TokenClaimInvalid);
                }
                Ok(())
            }
        }
    }
}

/// Splits a SPIFFE ID into trust domain and path, if it is a valid one (SPIFFE-ID.md): scheme
/// `spiffe://`, a lower-case trust domain of `[a-z0-9.-_]`, a non-empty path of segments of
/// `[a-zA-Z0-9.-_]` that are neither empty, `.` nor `..`; no port, user info, query or fragment.
pub fn parse_spiffe_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    let path_ok = path.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    });
    (domain_ok && path_ok).then_some((domain, path))
}

/// Validates a trust domain name as configured.
pub fn valid_trust_domain(domain: &str) -> bool {
    parse_spiffe_id(&format!("spiffe://{domain}/x")).is_some_and(|(d, _)| d == domain)
}

/// `system:serviceaccount:<namespace>:<name>` -> (namespace, name).
pub fn parse_service_account(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    let label = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    };
    (label(namespace) && label(name)).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            parse_spiffe_id("spiffe://example.org/ns/ci/sa/builder"),
            Some(("example.org", "ns/ci/sa/builder"))
        );
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/x",
            "spiffe://example.org:443/x",
            "spiffe://user@example.org/x",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a#b",
            "https://example.org/x",
            "spiffe:///x",
        ] {
            assert_eq!(parse_spiffe_id(bad), None, "{bad}");
        }
        assert!(valid_trust_domain("prod.example.org"));
        assert!(!valid_trust_domain("Prod.example.org"));
        assert!(!valid_trust_domain("a/b"));
    }

    #[test]
    fn service_accounts() {
        assert_eq!(parse_service_account("system:serviceaccount:ci:builder"), Some(("ci", "builder")));
        assert_eq!(parse_service_account("system:serviceaccount:ci"), None);
        assert_eq!(parse_service_account("system:serviceaccount::x"), None);
        assert_eq!(parse_service_account("system:serviceaccount:ci:a:b"), None);
        assert_eq!(parse_service_account("user:ann"), None);
    }

    #[test]
    fn types_per_profile() {
        let at = Profile::AccessToken;
        assert_eq!(at.check_type(Some(&Value::from("at+jwt"))), Ok(None));
        assert_eq!(at.check_type(Some(&Value::from("application/AT+JWT"))), Ok(None));
        assert_eq!(at.check_type(Some(&Value::from("JWT"))), Err(Reason::TokenTypeInvalid));
        assert_eq!(at.check_type(None), Err(Reason::TokenTypeInvalid));
        let svid = Profile::JwtSvid { trust_domain: "d".into() };
        assert_eq!(svid.check_type(None), Ok(None));
        assert_eq!(svid.check_type(Some(&Value::from("JOSE"))), Ok(Some("JOSE".into())));
        assert_eq!(svid.check_type(Some(&Value::from("at+jwt"))), Err(Reason::TokenTypeInvalid));
        assert_eq!(Profile::Oidc.check_type(Some(&Value::from(5))), Err(Reason::TokenTypeInvalid));
    }
}
