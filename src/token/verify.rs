//! The verification pipeline: a bearer token to a [`VerifiedToken`], checks before any signature work.

use super::*;

/// A token whose signature and claims have been verified.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// The configured name of the issuer that signed it.
    pub issuer_name: String,
    /// The issuer's profile (`oidc`, `jwt-svid`, `kubernetes`, `access-token`).
    pub profile: &'static str,
    /// `iss`.
    pub issuer: String,
    /// `sub`: the workload identity.
    pub subject: String,
    /// `jti`, if present.
    pub token_id: Option<String>,
    /// `exp`, unix seconds (absent only for an issuer that does not require it).
    pub expires_at: Option<u64>,
    /// `iat`, unix seconds, if present.
    pub issued_at: Option<u64>,
    /// Every other claim of the token (`aud`, `nbf`, `nonce`, ...), as the token states it, with
    /// its JSON type; `exp` and `iat` only when they are not the whole seconds of `expires_at` and
    /// `issued_at` ([`VerifiedToken::claim`] reads them from there).
    pub claims: claims::Claims,
}

/// A hex SHA-256 digest (as Envoy reports certificate digests) as unpadded base64url.
pub(super) fn hex_to_base64url(hex: &str) -> Option<String> {
    if hex.len() != 64 {
        return None;
    }
    let bytes = (0..32)
        .map(|i| hex.get(2 * i..2 * i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The bearer token of a request, given every value of its `Authorization` header.
///
/// A scheme other than `Bearer` or an empty token counts as no token; a repeated header or a
/// comma-joined value counts as two tokens; anything after the token makes it malformed.
pub fn bearer_token<'a>(authorization: &[&'a str]) -> Result<&'a str, Reason> {
    scheme_token(authorization, Some("bearer"))
}

/// The token in the values of one header: after `scheme` (case-insensitive) when given, else the
/// whole value. Same rules as [`bearer_token`].
pub fn scheme_token<'a>(values: &[&'a str], scheme: Option<&str>) -> Result<&'a str, Reason> {
    let value = match values {
        [] => return Err(Reason::TokenMissing),
        [one] => *one,
        _ => return Err(Reason::TokenMultiple),
    };
    // Every character looked for here is ASCII, so searching the UTF-8 bytes finds exactly what a
    // search of the characters would; byte scans cost a fraction of character-pattern searches on
    // this per-request path (the README's cost table, "token finding"). A comma anywhere in the
    // value means two tokens, whatever else is wrong with it: each refusal below asks for one, and
    // an accepted token has none (a comma outside the token could only be in the scheme, which
    // then matched `scheme` and has none).
    let two_tokens = || value.as_bytes().contains(&b',');
    let refuse = |otherwise: Reason| Err(if two_tokens() { Reason::TokenMultiple } else { otherwise });
    let value = value.trim_matches([' ', '\t']);
    let rest = match scheme {
        None => value,
        Some(scheme) => {
            let (given, rest) = match value.bytes().position(is_blank) {
                Some(at) => (&value[..at], &value[at + 1..]),
                None => (value, ""),
            };
            if !given.eq_ignore_ascii_case(scheme) {
                return refuse(Reason::TokenMissing);
            }
            rest
        }
    };
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return refuse(Reason::TokenMissing);
    }
    // Blanks and commas are all below `-` (0x2D), and a base64url token holds no byte below it: one
    // cheap pass finds that nothing is there; only a token with such a byte is searched exactly.
    let bytes = token.as_bytes();
    if crate::scan::contains_any(bytes, [], b'-') && crate::scan::contains_any(bytes, *b" \t,", 0) {
        return refuse(Reason::TokenMalformed);
    }
    Ok(token)
}

/// A space or a tab: what separates an authentication scheme from its credentials.
fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The configured issuers, and the checks shared by all of them.
pub struct Issuers {
    pub(super) issuers: Vec<Issuer>,
    pub(super) max_token_bytes: usize,
    /// Checks RSA PKCS#1 v1.5 and ECDSA signatures in the host when set (the filter, when Envoy
    /// has `verify_signature`); the pure-Rust path otherwise.
    pub(super) signature_host: Option<Box<dyn SignatureHost>>,
    /// Tokens whose signature was checked (against one key or more), since the last take.
    pub(super) signature_checks: std::cell::Cell<u64>,
}

impl Issuers {
    /// Groups the issuers; `max_token_bytes` bounds what is decoded at all.
    pub fn new(issuers: Vec<Issuer>, max_token_bytes: usize) -> Self {
        Issuers { issuers, max_token_bytes, signature_host: None, signature_checks: std::cell::Cell::new(0) }
    }

    /// Has `host` check the signatures it can (RSA PKCS#1 v1.5, ECDSA); every other check stays here.
    pub fn set_signature_host(&mut self, host: Box<dyn SignatureHost>) {
        self.signature_host = Some(host);
    }

    /// How many tokens had their signature checked since the last call.
    pub fn take_signature_checks(&self) -> u64 {
        self.signature_checks.take()
    }

    /// The issuers, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Issuer> {
        self.issuers.iter()
    }

    /// The remote key fetches that are due now (each marked in flight).
    pub fn due_fetches(&self, now: u64) -> Vec<Fetch> {
        self.issuers.iter().filter_map(|i| i.due_fetch(now)).collect()
    }

    /// Whether requests should wait for some issuer's first remote key set.
    pub fn waiting_for_first_keys(&self, now_ms: u64) -> bool {
        self.issuers.iter().any(|i| i.waiting_for_first_keys(now_ms))
    }

    /// The issuer with this configured name.
    pub fn get(&self, name: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.name == name)
    }

    /// Verifies a compact JWS as of `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, Reason> {
        if token.len() > self.max_token_bytes {
            return Err(Reason::TokenTooLarge);
        }
        // Each part decoded once: the checks here and the signature checks below read the same.
        let jws = Jws::decode(token)?;
        let header = &jws.header;
        let payload = &jws.payload;

        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg,
            _ => return Err(Reason::TokenMalformed),
        };
        // A non-empty `crit` names extensions we do not implement (RFC 7515 4.1.11).
        if let Some(crit) = header.get("crit") {
            if crit.as_array().is_none_or(|c| !c.is_empty()) {
                return Err(Reason::TokenMalformed);
            }
        }
        // Nested tokens (RFC 7519 5.2) are not verified recursively: refuse them.
        if let Some(cty) = header.get("cty") {
            if cty.as_str().is_none_or(|c| c.eq_ignore_ascii_case("jwt")) {
                return Err(Reason::TokenMalformed);
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(Reason::TokenMalformed),
        };

        let issuer = match payload.get("iss") {
            Some(Value::String(iss)) => {
                self.issuers.iter().find(|i| i.issuer == *iss).ok_or(Reason::TokenIssuerUnknown)?
            }
            None => return Err(Reason::TokenIssuerUnknown),
            Some(_) => return Err(Reason::TokenClaimInvalid),
        };
        let alg = Algorithm::from_name(alg)
            .filter(|a| issuer.algorithms.contains(a))
            .ok_or(Reason::TokenAlgorithmNotAllowed)?;
        let required_type = issuer.profile.check_type(header.get("typ"))?;
        check_claim_types(payload)?;

        let expected = Expected {
            now,
            time_tolerance: issuer.clock_skew_seconds,
            max_token_length: Some(self.max_token_bytes),
            signature_type: required_type.as_deref(),
            issuer: Some(&issuer.issuer),
            audiences: Some(&issuer.audiences),
        };
        // Only keys of the token's algorithm. A token naming a `kid` is checked with the key of that
        // kid first, then with keys published without a kid (RFC 7517 4.5 makes `kid` optional;
        // jwt_verify_lib and Envoy do the same); a key with a kid never serves a token naming another.
        let remote = match &issuer.remote {
            Some(cell) => Some(cell.try_borrow().map_err(|_| Reason::InternalError)?),
            None => None,
        };
        let remote_keys: &[VerifyKey] = match &remote {
            Some(r) if r.0.usable(now) => &r.1,
            _ => &[],
        };
        if issuer.keys.is_empty() && remote_keys.is_empty() {
            return Err(Reason::KeysUnavailable);
        }
        let of_alg = || issuer.keys.iter().chain(remote_keys).filter(|k| k.alg == alg);
        let named = of_alg().filter(|k| kid.is_none() || k.kid.as_deref() == kid);
        let unnamed = of_alg().filter(|k| kid.is_some() && k.kid.is_none());
        // Whether a key of exactly this kid (or, for a token without kid, any key) was tried.
        let mut named_tried = false;
        // Whether any key was tried at all: a signature check counted by `take_signature_checks`.
        let mut tried = false;
        let mut times = None;
        for (is_named, key) in named.map(|k| (true, k)).chain(unnamed.map(|k| (false, k))) {
            named_tried |= is_named;
            tried = true;
            // The host and Ed25519 checks mirror jwt-simple on the parts decoded above; every other
            // key goes through jwt-simple itself, which decodes the token again.
            let verified = match (&self.signature_host, &key.host) {
                (Some(host), Some(host_key)) => {
                    hostcrypto::verify_token(host.as_ref(), host_key, alg.name(), &jws, &expected)
                }
                _ => key.key.verify(token, &jws, &expected),
            };
            match verified {
                Ok(t) => {
                    times = Some(t);
                    break;
                }
                Err(e) if is_bad_signature(&e) => continue,
                // The host could not tell: deny, never fall through to another key or to valid.
                Err(e) if e.is::<HostCryptoError>() => return Err(Reason::InternalError),
                Err(e) => return Err(reason_for(&e)),
            }
        }
        drop(remote);
        if tried {
            self.signature_checks.set(self.signature_checks.get() + 1);
        }
        let times = match times {
            Some(t) => t,
            None if named_tried => return Err(Reason::TokenSignatureInvalid),
            None => {
                // No key of this kid (kid-less keys, if any, did not verify it): perhaps the issuer
                // rotated keys, so fetch again soon (rate-limited).
                if let Some(cell) = &issuer.remote {
                    if let Ok(mut r) = cell.try_borrow_mut() {
                        r.0.unknown_kid(now);
                    }
                }
                return Err(Reason::TokenKeyUnknown);
            }
        };
        check_fractional_times(payload, now, issuer.clock_skew_seconds)?;

        // Whole seconds: jwt-simple truncates a fractional NumericDate, which rounds `exp` down (exact
        // for a clock in whole seconds) and makes `iat` older (stricter for age limits).
        let Times { expires_at, issued_at } = times;
        if expires_at.is_none() && issuer.require_expiry {
            return Err(Reason::TokenExpiryMissing);
        }
        if let Some(max) = issuer.max_lifetime_seconds {
            // On the token's own values, fractions included, so rounding never hides a second.
            let (Some(iat), Some(exp)) = (time_claim(payload, "iat"), time_claim(payload, "exp")) else {
                return Err(Reason::TokenClaimInvalid);
            };
            if exp - iat > max as f64 {
                return Err(Reason::TokenLifetimeTooLong);
            }
        }
        // Each claim is kept once: `sub`, `iss` and `jti` as typed fields (taken out of the map here;
        // the profile's checks read neither from it), every other claim (`aud`, `exp`, `nbf`, `iat`,
        // `nonce`, ...) in the map with its JSON type. `check_claim_types` made them strings if present.
        let mut payload = jws.payload;
        let subject = match payload.remove("sub") {
            Some(Value::String(subject)) if !subject.is_empty() => subject,
            _ => return Err(Reason::TokenClaimInvalid),
        };
        let token_id = match payload.remove("jti") {
            None => None,
            Some(Value::String(jti)) => Some(jti),
            Some(_) => return Err(Reason::TokenClaimInvalid),
        };
        payload.remove("iss");
        issuer.profile.check_claims(&subject, &payload, issued_at, token_id.as_deref())?;
        // Nor `exp` and `iat` twice when the typed fields hold them exactly (an integer claim
        // reads back the same from them); a cache holds thousands of tokens.
        for (name, typed) in [("exp", expires_at), ("iat", issued_at)] {
            if typed.is_some() && payload.get(name).and_then(Value::as_u64) == typed {
                payload.remove(name);
            }
        }
        let token = VerifiedToken {
            issuer_name: issuer.name.clone(),
            profile: issuer.profile.name(),
            issuer: issuer.issuer.clone(),
            subject,
            token_id,
            expires_at,
            issued_at,
            claims: payload.into(),
        };
        issuer.check_age(&token, now)?;
        Ok(token)
    }
}

/// A NumericDate claim as the token states it (type-checked before: a non-negative number).
pub(super) fn time_claim(payload: &Map<String, Value>, name: &str) -> Option<f64> {
    payload.get(name).and_then(Value::as_f64)
}

/// `nbf` and `iat` with a fraction: jwt-simple compares them truncated, which would let a token in
/// up to a second early. Rounded up here, so a token is never valid before the instant it names.
pub(super) fn check_fractional_times(
    payload: &Map<String, Value>,
    now: u64,
    skew: u64,
) -> Result<(), Reason> {
    let latest = now.saturating_add(skew) as f64;
    for name in ["nbf", "iat"] {
        if time_claim(payload, name).is_some_and(|t| t.ceil() > latest) {
            return Err(Reason::TokenNotYetValid);
        }
    }
    Ok(())
}

pub(super) fn is_bad_signature(e: &jwt_simple::Error) -> bool {
    matches!(
        e.downcast_ref::<JWTError>(),
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag)
    )
}

pub(super) fn reason_for(e: &jwt_simple::Error) -> Reason {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
            Reason::TokenSignatureInvalid
        }
        Some(JWTError::TokenHasExpired) => Reason::TokenExpired,
        Some(JWTError::TokenNotValidYet | JWTError::ClockDrift) => Reason::TokenNotYetValid,
        Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => {
            Reason::TokenAudienceInvalid
        }
        Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
            Reason::TokenIssuerUnknown
        }
        Some(JWTError::TokenTooLong) => Reason::TokenTooLarge,
        // Registered claims were type-checked before; what jwt-simple still fails to parse is
        // header material (such as a `jwk` object): malformed.
        Some(_) | None => Reason::TokenMalformed,
    }
}

/// Registered claims must have their registered types; `jwt-simple` would otherwise coerce or
/// ignore some of them.
pub(super) fn check_claim_types(payload: &Map<String, Value>) -> Result<(), Reason> {
    for name in ["iss", "sub", "jti", "nonce"] {
        match payload.get(name) {
            None => {}
            // Control characters in an identity could forge log lines or upstream headers.
            Some(Value::String(s)) if !s.chars().any(char::is_control) => {}
            Some(_) => return Err(Reason::TokenClaimInvalid),
        }
    }
    // Times: non-negative numbers below year 10000 (RFC 7519 NumericDate, fractions allowed, without
    // absurd values; every accepted value is exact in an f64).
    for name in ["exp", "nbf", "iat"] {
        if let Some(v) = payload.get(name) {
            match v.as_f64() {
                Some(t) if (0.0..253_402_300_800.0).contains(&t) => {}
                _ => return Err(Reason::TokenClaimInvalid),
            }
        }
    }
    match payload.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(Reason::TokenClaimInvalid),
    }
}
