//! Signature checks done by the host: Envoy's `verify_signature` foreign function runs BoringSSL,
//! several times faster than the same math compiled to wasm.
//!
//! Only the signature math moves to the host. Which key, which algorithm (from the key, never the
//! token), the header rules and every claim check stay here, in Rust, and mirror what `jwt-simple`
//! does on the pure-Rust path, so both paths give the same answer for every token (the differential
//! tests hold them to it). RSA-PSS and EdDSA stay in wasm: Envoy's function only does PKCS#1 v1.5
//! and ECDSA. EdDSA goes through the same mirror of jwt-simple with ed25519-dalek ([`Ed25519Key`]).
//!
//! The mirror ([`verify_with`]) decodes nothing: it reads the header and claims objects, the
//! signature bytes and the signed text that meshward's strict parse decoded once (`Jws`), where
//! jwt-simple decodes the token again (base64url, then serde into its `JWTHeader` and `JWTClaims`).
//! What those serde types would refuse (a member of another type), it refuses by hand.
//!
//! This module has no proxy-wasm dependency: the filter implements [`SignatureHost`] with the host
//! call, tests implement it with native crates.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde_json::{Map, Value};

use super::jose::Jws;

/// The digest a host signature check uses, named as Envoy's `verify_signature` expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashFunction {
    Sha256,
    Sha384,
    Sha512,
}

impl HashFunction {
    /// The name in `VerifySignatureArguments.hash_function`.
    pub fn name(self) -> &'static str {
        match self {
            HashFunction::Sha256 => "sha256",
            HashFunction::Sha384 => "sha384",
            HashFunction::Sha512 => "sha512",
        }
    }
}

/// Why the host could not answer a signature check. Any of these denies the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostCryptoError {
    /// The host call failed (for instance `BadArgument` for a key BoringSSL refuses).
    #[error("host signature check failed: {0}")]
    Call(String),
    /// The host answered something that is not a `VerifySignatureResult`.
    #[error("host signature check returned an unreadable result")]
    Unparsable,
}

/// Verifies one signature in the host. `Ok(false)` is a signature that does not verify; an error is
/// a host that could not tell.
pub trait SignatureHost {
    /// Checks `signature` (RSA PKCS#1 v1.5, or DER-encoded ECDSA) over `message` with the key given
    /// as DER SubjectPublicKeyInfo.
    fn verify(
        &self,
        hash: HashFunction,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Result<bool, HostCryptoError>;
}

/// What a verification key needs for a host check: its digest, its DER SubjectPublicKeyInfo, and
/// for ECDSA the coordinate size of the JWS `r || s` signature.
pub(crate) struct HostKey {
    hash: HashFunction,
    spki_der: Vec<u8>,
    ecdsa_scalar_len: Option<usize>,
}

impl HostKey {
    /// An RSA PKCS#1 v1.5 key.
    pub(crate) fn rsa(hash: HashFunction, spki_der: Vec<u8>) -> Self {
        HostKey { hash, spki_der, ecdsa_scalar_len: None }
    }

    /// An ECDSA key whose scalars are `scalar_len` bytes (32 for P-256, 48 for P-384).
    pub(crate) fn ecdsa(hash: HashFunction, spki_der: Vec<u8>, scalar_len: usize) -> Self {
        HostKey { hash, spki_der, ecdsa_scalar_len: Some(scalar_len) }
    }
}

/// The protobuf encoding of Envoy's `VerifySignatureArguments { hash_function = 1; public_key = 2;
/// signature = 3; text = 4 }` (public_key is DER SubjectPublicKeyInfo).
pub fn encode_arguments(hash: HashFunction, spki_der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let fields: [(u8, &[u8]); 4] = [(1, hash.name().as_bytes()), (2, spki_der), (3, signature), (4, text)];
    let mut out = Vec::with_capacity(fields.iter().map(|(_, v)| v.len() + 6).sum());
    for (number, value) in fields {
        // Wire type 2 (length-delimited); proto3 leaves empty fields out.
        if !value.is_empty() {
            out.push(number << 3 | 2);
            push_varint(&mut out, value.len() as u64);
            out.extend_from_slice(value);
        }
    }
    out
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    // Below 0x80 here: the mask changes nothing and shows the cast cannot truncate.
    out.push((value & 0x7f) as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Decodes Envoy's `VerifySignatureResult { bool result = 1; string error = 2; }`. Proto3 leaves a
/// false `result` out, so an empty message is a signature that does not verify. Unknown fields are
/// skipped; anything that is not well-formed protobuf is an error, never "valid".
pub fn decode_result(mut bytes: &[u8]) -> Result<bool, HostCryptoError> {
    let mut result = false;
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes).ok_or(HostCryptoError::Unparsable)?;
        match (key >> 3, key & 7) {
            (0, _) => return Err(HostCryptoError::Unparsable),
            (1, 0) => result = read_varint(&mut bytes).ok_or(HostCryptoError::Unparsable)? != 0,
            (1, _) => return Err(HostCryptoError::Unparsable),
            (_, 0) => {
                read_varint(&mut bytes).ok_or(HostCryptoError::Unparsable)?;
            }
            (_, 1 | 5) => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                bytes = bytes.get(width..).ok_or(HostCryptoError::Unparsable)?;
            }
            (_, 2) => {
                let len = read_varint(&mut bytes).ok_or(HostCryptoError::Unparsable)?;
                let len = usize::try_from(len).map_err(|_| HostCryptoError::Unparsable)?;
                bytes = bytes.get(len..).ok_or(HostCryptoError::Unparsable)?;
            }
            _ => return Err(HostCryptoError::Unparsable),
        }
    }
    Ok(result)
}

/// A JWS ECDSA signature (`r || s`, each `scalar_len` bytes) as the DER `ECDSA-Sig-Value` BoringSSL
/// reads. `None` when the length is not exactly `2 * scalar_len` (jwt-simple refuses those too).
pub fn ecdsa_signature_der(signature: &[u8], scalar_len: usize) -> Option<Vec<u8>> {
    // Up to 66-byte scalars (P-521): each INTEGER stays under 128 bytes (short length form).
    if signature.len() != 2 * scalar_len || scalar_len > 66 {
        return None;
    }
    let (r, s) = signature.split_at(scalar_len);
    let mut body = Vec::with_capacity(2 * scalar_len + 6);
    for scalar in [r, s] {
        // Minimal DER INTEGER: no leading zero bytes (but at least one byte), and a zero byte in
        // front when the high bit is set, so the value stays positive.
        let first = scalar.iter().position(|&b| b != 0).unwrap_or(scalar_len.saturating_sub(1));
        let digits = scalar.get(first..)?;
        let pad = digits.first().is_some_and(|&b| b & 0x80 != 0);
        body.push(0x02);
        body.push(u8::try_from(digits.len() + usize::from(pad)).ok()?);
        if pad {
            body.push(0);
        }
        body.extend_from_slice(digits);
    }
    // The SEQUENCE: short length form up to 127 bytes, else one length byte (P-521: up to 138).
    let len = u8::try_from(body.len()).ok()?;
    let mut der = Vec::with_capacity(body.len() + 3);
    der.push(0x30);
    if len >= 0x80 {
        der.push(0x81);
    }
    der.push(len);
    der.extend_from_slice(&body);
    Some(der)
}

/// An Ed25519 public key, checked with ed25519-dalek. In wasm32 its 32-bit field arithmetic beats
/// jwt-simple's ed25519-compact (64-bit limbs become slow 128-bit products in wasm): in Envoy, CPU per
/// cold EdDSA request went from about 367 to 218 us. Its `fast` feature (precomputed tables) measured
/// no gain beyond the noise there (205 us) for 10 KB more module: off.
pub(crate) struct Ed25519Key(ed25519_dalek::VerifyingKey);

impl Ed25519Key {
    /// The key from its 32-byte encoding; refuses what is not a point of the curve.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let bytes: &[u8; 32] = bytes.try_into().map_err(|_| format!("{} bytes, not 32", bytes.len()))?;
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map(Ed25519Key).map_err(|_| "not a curve point".into())
    }
}

/// What meshward asks of a token besides its signature: the `VerificationOptions` of jwt-simple
/// that `Issuers::verify` sets. Every other option stays at jwt-simple's default there (no
/// `reject_before`, `max_validity`, `max_header_length`, `required_content_type`, `required_key_id`,
/// `required_subject` or `required_nonce`; `accept_future` false), so the mirror below has no
/// code for them. Borrowed, so a verification allocates no option sets.
pub(crate) struct Expected<'a> {
    /// The verification time, unix seconds.
    pub(crate) now: u64,
    /// The clock skew allowed, seconds.
    pub(crate) time_tolerance: u64,
    pub(crate) max_token_length: Option<usize>,
    /// The `typ` required (case-insensitively); without one, a `typ` must be `JWT` or `*+JWT`.
    pub(crate) signature_type: Option<&'a str>,
    /// The one `iss` accepted.
    pub(crate) issuer: Option<&'a str>,
    /// The audiences accepted (one of them in `aud`).
    pub(crate) audiences: Option<&'a HashSet<String>>,
}

impl Expected<'_> {
    /// The same expectations as jwt-simple's options, for the pure-Rust path.
    pub(crate) fn options(&self) -> VerificationOptions {
        VerificationOptions {
            required_signature_type: self.signature_type.map(str::to_owned),
            artificial_time: Some(UnixTimeStamp::from_secs(self.now)),
            time_tolerance: Some(Duration::from_secs(self.time_tolerance)),
            allowed_issuers: self.issuer.map(|issuer| HashSet::from([issuer.to_owned()])),
            allowed_audiences: self.audiences.cloned(),
            max_token_length: self.max_token_length,
            ..Default::default()
        }
    }
}

/// The registered times of a verified token, in whole seconds as jwt-simple reads them (a fraction
/// truncated; from 2^32 on, saturated at 2^32 - 1 by its `UnixTimeStamp`, a 32.32 fixed-point number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Times {
    pub(crate) expires_at: Option<u64>,
    pub(crate) issued_at: Option<u64>,
}

impl From<&JWTClaims<NoCustomClaims>> for Times {
    fn from(claims: &JWTClaims<NoCustomClaims>) -> Self {
        Times {
            expires_at: claims.expires_at.map(|t| t.as_secs()),
            issued_at: claims.issued_at.map(|t| t.as_secs()),
        }
    }
}

/// Verifies an EdDSA JWS as jwt-simple does, the signature checked strictly (RFC 8032: `S` reduced;
/// small-order keys and `R` refused) by ed25519-dalek.
pub(crate) fn verify_ed25519(
    key: &Ed25519Key,
    jws: &Jws<'_>,
    expected: &Expected<'_>,
) -> Result<Times, jwt_simple::Error> {
    let check = |signature: &[u8], signed: &[u8]| {
        // jwt-simple fails a signature of another length as malformed, not as a wrong signature.
        let signature =
            ed25519_dalek::Signature::from_slice(signature).map_err(|_| JWTError::CompactEncodingError)?;
        Ok(key.0.verify_strict(signed, &signature).is_ok())
    };
    verify_with(check, "EdDSA", jws, expected)
}

/// Verifies a JWS the way `jwt-simple`'s `verify_token` does, with the signature checked by `host`.
/// Returns the same `jwt_simple` errors for the same tokens (or at least errors meshward turns into
/// the same [`crate::Reason`]); a host failure is returned as a [`HostCryptoError`] inside the error.
pub(crate) fn verify_token(
    host: &dyn SignatureHost,
    key: &HostKey,
    alg_name: &str,
    jws: &Jws<'_>,
    expected: &Expected<'_>,
) -> Result<Times, jwt_simple::Error> {
    let check = |signature: &[u8], signed: &[u8]| {
        let der;
        let signature = match key.ecdsa_scalar_len {
            Some(len) => match ecdsa_signature_der(signature, len) {
                Some(d) => {
                    der = d;
                    &der[..]
                }
                None => return Ok(false),
            },
            None => signature,
        };
        Ok(host.verify(key.hash, &key.spki_der, signature, signed)?)
    };
    verify_with(check, alg_name, jws, expected)
}

/// jwt-simple's failure to deserialize its header or claims types (a serde error there): meshward
/// turns both into `TokenMalformed`.
fn undecodable() -> jwt_simple::Error {
    JWTError::CompactEncodingError.into()
}

/// An optional string member as serde reads an `Option<String>`: `null` is `None`, any other type
/// than a string fails.
fn optional_string(value: &Value) -> Result<Option<&str>, jwt_simple::Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(undecodable()),
    }
}

/// An optional list of strings as serde reads an `Option<Vec<String>>`.
fn optional_strings(value: &Value) -> Result<Option<&[Value]>, jwt_simple::Error> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(Some(items)),
        _ => Err(undecodable()),
    }
}

/// A NumericDate as jwt-simple's `unix_timestamp` deserializer reads it (`deserialize_i64`, so
/// serde_json hands it the number as parsed): a non-negative integer as is, a negative one fails, a
/// float truncated toward zero (`as u64`: a negative float is 0); `null` and other types fail.
/// `check_claim_types` refused all but non-negative numbers before the signature check already;
/// the failures stay here, closed, for callers without it (the probe).
fn timestamp(value: &Value) -> Result<UnixTimeStamp, jwt_simple::Error> {
    // Our parse keeps serde_json's number kinds (u64, i64 for a negative integer, f64), the ones
    // jwt-simple's visitor receives from the same text.
    let Value::Number(number) = value else { return Err(undecodable()) };
    let secs = match (number.as_u64(), number.is_i64(), number.as_f64()) {
        (Some(secs), _, _) => secs,
        (None, true, _) => return Err(undecodable()),
        (None, false, Some(secs)) => float_secs(secs),
        (None, false, None) => return Err(undecodable()),
    };
    Ok(UnixTimeStamp::from_secs(secs))
}

/// A float NumericDate in whole seconds exactly as jwt-simple converts it (`value as _`): truncated
/// toward zero, saturating (a negative value is 0).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "jwt-simple's own conversion, reproduced exactly"
)]
fn float_secs(value: f64) -> u64 {
    value as u64
}

/// `aud` as jwt-simple's `audiences` deserializer reads it (`deserialize_any`): one string, or a
/// list of strings (a set: order and repeats do not matter, an empty list matches nothing). `null`
/// fails (its visitor has no unit case), as does any other type. `check_claim_types` refused null,
/// other types and the empty list already.
enum Audiences<'a> {
    One(&'a str),
    Set(&'a [Value]),
}

impl Audiences<'_> {
    /// `Audiences::contains`: whether one of them is allowed.
    fn contains(&self, allowed: &HashSet<String>) -> bool {
        match self {
            Audiences::One(audience) => allowed.contains(*audience),
            Audiences::Set(audiences) => {
                audiences.iter().filter_map(Value::as_str).any(|a| allowed.contains(a))
            }
        }
    }
}

/// The registered claims jwt-simple's `JWTClaims<NoCustomClaims>` holds, read from the payload as
/// its deserialization does (members of other names are ignored there: `NoCustomClaims` takes none).
struct Registered<'a> {
    issued_at: Option<UnixTimeStamp>,
    expires_at: Option<UnixTimeStamp>,
    invalid_before: Option<UnixTimeStamp>,
    issuer: Option<&'a str>,
    audiences: Option<Audiences<'a>>,
}

impl<'a> Registered<'a> {
    /// One pass over the payload's members (no lookups by name): each registered one as its serde
    /// type reads it; the others are ignored, as `NoCustomClaims` ignores them.
    fn read(payload: &'a Map<String, Value>) -> Result<Self, jwt_simple::Error> {
        let mut claims = Registered {
            issued_at: None,
            expires_at: None,
            invalid_before: None,
            issuer: None,
            audiences: None,
        };
        for (name, value) in payload {
            match name.as_str() {
                "iat" => claims.issued_at = Some(timestamp(value)?),
                "exp" => claims.expires_at = Some(timestamp(value)?),
                "nbf" => claims.invalid_before = Some(timestamp(value)?),
                "iss" => claims.issuer = optional_string(value)?,
                // Read for their types only: meshward requires no subject or nonce here (see
                // `Expected`) and reads `sub` and `jti` from the payload itself.
                "sub" | "jti" | "nonce" => _ = optional_string(value)?,
                "aud" => {
                    claims.audiences = Some(match value {
                        Value::String(audience) => Audiences::One(audience),
                        Value::Array(items) if items.iter().all(Value::is_string) => Audiences::Set(items),
                        _ => return Err(undecodable()),
                    })
                }
                _ => {}
            }
        }
        Ok(claims)
    }

    /// The checks of jwt-simple's `JWTClaims::validate` (crate-private there) that meshward's options
    /// make, in the same order with the same errors, on the same 32.32 fixed-point times. The time
    /// is always passed in: the core never reads the clock.
    fn validate(&self, expected: &Expected<'_>) -> Result<(), JWTError> {
        let now = UnixTimeStamp::from_secs(expected.now);
        let tolerance = Duration::from_secs(expected.time_tolerance);
        if self.issued_at.is_some_and(|iat| iat > now + tolerance) {
            return Err(JWTError::ClockDrift);
        }
        if self.invalid_before.is_some_and(|nbf| now + tolerance < nbf) {
            return Err(JWTError::TokenNotValidYet);
        }
        if let Some(exp) = self.expires_at {
            if !(now >= tolerance && now - tolerance <= exp) {
                return Err(JWTError::TokenHasExpired);
            }
        }
        if let Some(allowed) = expected.issuer {
            if self.issuer.ok_or(JWTError::RequiredIssuerMissing)? != allowed {
                return Err(JWTError::RequiredIssuerMismatch);
            }
        }
        if let Some(allowed) = expected.audiences {
            if !self.audiences.as_ref().ok_or(JWTError::RequiredAudienceMissing)?.contains(allowed) {
                return Err(JWTError::RequiredAudienceMismatch);
            }
        }
        Ok(())
    }
}

/// [`verify_token`] with the signature checked by `check(signature, signed bytes)`: jwt-simple's
/// `Token::verify` step by step, in its order, on the parts [`Jws::decode`] decoded once.
///
/// jwt-simple decodes the header into its `JWTHeader` first: `alg` a string; `cty`, `kid`, `typ`,
/// `jku`, `jwk`, `x5u`, `x5t`, `x5t#S256`, `salt` strings or null; `crit`, `x5c` lists of strings
/// or null; other members ignored. A member of another type fails the whole token there, so here.
/// Duplicate members, invalid UTF-8 and a header that is not an object were refused by the strict
/// parse already (meshward's `TokenMalformed`, as jwt-simple's failure becomes).
pub(crate) fn verify_with(
    check: impl FnOnce(&[u8], &[u8]) -> Result<bool, jwt_simple::Error>,
    alg_name: &str,
    jws: &Jws<'_>,
    expected: &Expected<'_>,
) -> Result<Times, jwt_simple::Error> {
    if expected.max_token_length.is_some_and(|max| jws.token_len > max) {
        return Err(JWTError::TokenTooLong.into());
    }
    if jws.header_b64_len > MAX_HEADER_LENGTH {
        return Err(JWTError::HeaderTooLarge.into());
    }
    // One pass over the header's members (no lookups by name), each known one read as its serde
    // type in `JWTHeader` reads it.
    let (mut alg, mut typ, mut salt, mut crit) = (None, None, None, None);
    for (name, value) in &jws.header {
        match name.as_str() {
            "alg" => alg = Some(value.as_str().ok_or_else(undecodable)?),
            "typ" => typ = optional_string(value)?,
            "salt" => salt = optional_string(value)?,
            "cty" | "kid" | "jku" | "jwk" | "x5u" | "x5t" | "x5t#S256" => _ = optional_string(value)?,
            "crit" => crit = optional_strings(value)?,
            "x5c" => _ = optional_strings(value)?,
            _ => {}
        }
    }
    let alg = alg.ok_or_else(undecodable)?;
    if crit.is_some_and(|crit| !crit.is_empty()) {
        return Err(JWTError::UnknownCriticalExtension.into());
    }
    match (expected.signature_type, typ) {
        (Some(required), Some(typ)) if required.to_uppercase() == typ.to_uppercase() => {}
        (Some(_), _) => return Err(JWTError::RequiredSignatureTypeMismatch.into()),
        (None, Some(typ)) => {
            let typ = typ.to_uppercase();
            if typ != "JWT" && !typ.ends_with("+JWT") {
                return Err(JWTError::NotJWT.into());
            }
        }
        (None, None) => {}
    }
    if alg != alg_name {
        return Err(JWTError::AlgorithmMismatch.into());
    }
    // jwt-simple decodes a salt (and fails on one that is not base64url, by the same strict rules as
    // this decoder's: no padding, no stray bits) even for algorithms that ignore it.
    if let Some(salt) = salt {
        URL_SAFE_NO_PAD.decode(salt)?;
    }
    // The signature was decoded with the other parts (jwt-simple fails an undecodable one here,
    // meshward before: `TokenMalformed` either way).
    if !check(&jws.signature, jws.signed.as_bytes())? {
        return Err(JWTError::InvalidSignature.into());
    }
    let claims = Registered::read(&jws.payload)?;
    claims.validate(expected)?;
    Ok(Times {
        expires_at: claims.expires_at.map(|t| t.as_secs()),
        issued_at: claims.issued_at.map(|t| t.as_secs()),
    })
}

/// The ES256 example of RFC 7515 (appendix A.3): its public key (`x`, `y`) and signed JWS. A
/// published vector: the probe needs no signing code in the module.
const PROBE_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const PROBE_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const PROBE_JWS: &str = "eyJhbGciOiJFUzI1NiJ9.\
    eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
    DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

/// Checks once (at configure time) that the host's signature check works: the RFC 7515 example
/// must verify through [`verify_token`], and the same token with one signature bit flipped must not.
/// An error says why the host cannot be used; the caller then keeps the pure-Rust path.
pub fn probe(host: &dyn SignatureHost) -> Result<(), String> {
    let mut point = vec![0x04];
    for coordinate in [PROBE_X, PROBE_Y] {
        point.extend(URL_SAFE_NO_PAD.decode(coordinate).map_err(|e| format!("probe key: {e}"))?);
    }
    let spki =
        ES256PublicKey::from_bytes(&point).and_then(|k| k.to_der()).map_err(|e| format!("probe key: {e}"))?;
    let key = HostKey::ecdsa(HashFunction::Sha256, spki, 32);
    // Before the example's `exp` (2011), so that only the signature decides.
    let expected = Expected {
        now: 1_300_000_000,
        time_tolerance: 0,
        max_token_length: None,
        signature_type: None,
        issuer: None,
        audiences: None,
    };
    // Decoded as every token is (`Jws::decode`), so the probe runs the very path tokens take.
    let verify = |token: &str| {
        let jws =
            Jws::decode(token).map_err(|reason| format!("the probe token does not decode: {reason:?}"))?;
        Ok::<_, String>(verify_token(host, &key, "ES256", &jws, &expected))
    };
    verify(PROBE_JWS)?.map_err(|e| format!("a valid signature was refused: {e}"))?;
    // The last character carries signature bits only ('Q' to 'A' flips one bit of `s`).
    let forged = format!("{}A", PROBE_JWS.strip_suffix('Q').unwrap_or(PROBE_JWS));
    match verify(&forged)? {
        Err(e) if matches!(e.downcast_ref::<JWTError>(), Some(JWTError::InvalidSignature)) => Ok(()),
        Err(e) => Err(format!("a wrong signature failed oddly: {e}")),
        Ok(_) => Err("a wrong signature was accepted".into()),
    }
}
