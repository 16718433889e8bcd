//! Signature checks done by the host: Envoy's `verify_signature` foreign function runs BoringSSL,
//! several times faster than the same math compiled to wasm.
//!
//! Only the signature math moves to the host. Which key, which algorithm (from the key, never the
//! token), the header rules and every claim check stay here, in Rust, and mirror what `jwt-simple`
//! does on the pure-Rust path, so both paths give the same answer for every token (the differential
//! tests hold them to it). RSA-PSS and EdDSA stay in wasm: Envoy's function only does PKCS#1 v1.5
//! and ECDSA. EdDSA goes through the same mirror of jwt-simple with ed25519-dalek ([`Ed25519Key`]).
//!
//! This module has no proxy-wasm dependency: the filter implements [`SignatureHost`] with the host
//! call, tests implement it with native crates.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use jwt_simple::JWTError;

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

type Claims = JWTClaims<NoCustomClaims>;

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

/// Verifies an EdDSA compact JWS as jwt-simple does, the signature checked strictly (RFC 8032: `S`
/// reduced; small-order keys and `R` refused) by ed25519-dalek.
pub(crate) fn verify_ed25519(
    key: &Ed25519Key,
    token: &str,
    options: &VerificationOptions,
) -> Result<Claims, jwt_simple::Error> {
    let check = |signature: Vec<u8>, signed: &[u8]| {
        // jwt-simple fails a signature of another length as malformed, not as a wrong signature.
        let signature =
            ed25519_dalek::Signature::from_slice(&signature).map_err(|_| JWTError::CompactEncodingError)?;
        Ok(key.0.verify_strict(signed, &signature).is_ok())
    };
    verify_with(check, "EdDSA", token, options)
}

/// Verifies a compact JWS the way `jwt-simple`'s `verify_token` does, with the signature checked by
/// `host`. Returns the same `jwt_simple` errors for the same tokens; a host failure is returned as a
/// [`HostCryptoError`] inside the error.
pub(crate) fn verify_token(
    host: &dyn SignatureHost,
    key: &HostKey,
    alg_name: &str,
    token: &str,
    options: &VerificationOptions,
) -> Result<Claims, jwt_simple::Error> {
    let check = |signature: Vec<u8>, signed: &[u8]| {
        let signature = match key.ecdsa_scalar_len {
            Some(len) => match ecdsa_signature_der(&signature, len) {
                Some(der) => der,
                None => return Ok(false),
            },
            None => signature,
        };
        Ok(host.verify(key.hash, &key.spki_der, &signature, signed)?)
    };
    verify_with(check, alg_name, token, options)
}

/// [`verify_token`] with the signature checked by `check(signature, signed bytes)`.
pub(crate) fn verify_with(
    check: impl FnOnce(Vec<u8>, &[u8]) -> Result<bool, jwt_simple::Error>,
    alg_name: &str,
    token: &str,
    options: &VerificationOptions,
) -> Result<Claims, jwt_simple::Error> {
    if let Some(max) = options.max_token_length {
        if token.len() > max {
            return Err(JWTError::TokenTooLong.into());
        }
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JWTError::CompactEncodingError.into());
    };
    if header_b64.len() > options.max_header_length.unwrap_or(MAX_HEADER_LENGTH) {
        return Err(JWTError::HeaderTooLarge.into());
    }
    // The same header parser as jwt-simple's, so the same headers fail to parse.
    let metadata = Token::decode_metadata(token)?;
    if metadata.critical().is_some_and(|crit| !crit.is_empty()) {
        return Err(JWTError::UnknownCriticalExtension.into());
    }
    match (&options.required_signature_type, metadata.signature_type()) {
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
    if let Some(required) = &options.required_content_type {
        if metadata.content_type().map(str::to_uppercase) != Some(required.to_uppercase()) {
            return Err(JWTError::RequiredContentTypeMismatch.into());
        }
    }
    if metadata.algorithm() != alg_name {
        return Err(JWTError::AlgorithmMismatch.into());
    }
    if let Some(required) = &options.required_key_id {
        match metadata.key_id() {
            Some(kid) if kid == required => {}
            Some(_) => return Err(JWTError::KeyIdentifierMismatch.into()),
            None => return Err(JWTError::MissingJWTKeyIdentifier.into()),
        }
    }
    check_salt(header_b64)?;

    let signature = URL_SAFE_NO_PAD.decode(signature_b64)?;
    let signed =
        token.get(..header_b64.len() + 1 + claims_b64.len()).ok_or(JWTError::CompactEncodingError)?;
    if !check(signature, signed.as_bytes())? {
        return Err(JWTError::InvalidSignature.into());
    }
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64)?)?;
    validate(&claims, options)?;
    Ok(claims)
}

/// jwt-simple decodes a `salt` header member (and fails on one that is not base64url) even for
/// algorithms that ignore it; so does this path.
fn check_salt(header_b64: &str) -> Result<(), jwt_simple::Error> {
    #[derive(serde::Deserialize)]
    struct Salt {
        salt: Option<String>,
    }
    let header = URL_SAFE_NO_PAD.decode(header_b64)?;
    if !header.windows(6).any(|w| w == b"\"salt\"") {
        return Ok(());
    }
    let Salt { salt } = serde_json::from_slice(&header)?;
    if let Some(salt) = salt {
        URL_SAFE_NO_PAD.decode(salt)?;
    }
    Ok(())
}

/// The claim checks of `jwt-simple`'s `JWTClaims::validate` (crate-private there), in the same order
/// with the same errors. The time is always passed in: the core never reads the clock.
fn validate(claims: &Claims, options: &VerificationOptions) -> Result<(), JWTError> {
    let now =
        options.artificial_time.ok_or_else(|| JWTError::InternalError("no verification time".into()))?;
    let tolerance = options.time_tolerance.unwrap_or_default();
    if let Some(reject_before) = options.reject_before {
        if claims.issued_at.is_none_or(|iat| iat < reject_before) {
            return Err(JWTError::OldTokenReused);
        }
    }
    if !options.accept_future && claims.issued_at.is_some_and(|iat| iat > now + tolerance) {
        return Err(JWTError::ClockDrift);
    }
    if let Some(max_validity) = options.max_validity {
        let iat = claims.issued_at.ok_or(JWTError::TokenIsTooOld)?;
        if !(now <= iat || now - iat <= max_validity) {
            return Err(JWTError::TokenIsTooOld);
        }
    }
    if !options.accept_future && claims.invalid_before.is_some_and(|nbf| now + tolerance < nbf) {
        return Err(JWTError::TokenNotValidYet);
    }
    if let Some(exp) = claims.expires_at {
        if !(now >= tolerance && now - tolerance <= exp) {
            return Err(JWTError::TokenHasExpired);
        }
    }
    if let Some(allowed) = &options.allowed_issuers {
        let issuer = claims.issuer.as_ref().ok_or(JWTError::RequiredIssuerMissing)?;
        if !allowed.contains(issuer) {
            return Err(JWTError::RequiredIssuerMismatch);
        }
    }
    if let Some(required) = &options.required_subject {
        if claims.subject.as_ref().ok_or(JWTError::RequiredSubjectMissing)? != required {
            return Err(JWTError::RequiredSubjectMismatch);
        }
    }
    if let Some(required) = &options.required_nonce {
        if claims.nonce.as_ref().ok_or(JWTError::RequiredNonceMissing)? != required {
            return Err(JWTError::RequiredNonceMismatch);
        }
    }
    if let Some(allowed) = &options.allowed_audiences {
        if !claims.audiences.as_ref().ok_or(JWTError::RequiredAudienceMissing)?.contains(allowed) {
            return Err(JWTError::RequiredAudienceMismatch);
        }
    }
    Ok(())
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
    let options = VerificationOptions {
        artificial_time: Some(UnixTimeStamp::from_secs(1_300_000_000)),
        ..Default::default()
    };
    verify_token(host, &key, "ES256", PROBE_JWS, &options)
        .map_err(|e| format!("a valid signature was refused: {e}"))?;
    // The last character carries signature bits only ('Q' to 'A' flips one bit of `s`).
    let forged = format!("{}A", PROBE_JWS.strip_suffix('Q').unwrap_or(PROBE_JWS));
    match verify_token(host, &key, "ES256", &forged, &options) {
        Err(e) if matches!(e.downcast_ref::<JWTError>(), Some(JWTError::InvalidSignature)) => Ok(()),
        Err(e) => Err(format!("a wrong signature failed oddly: {e}")),
        Ok(_) => Err("a wrong signature was accepted".into()),
    }
}
