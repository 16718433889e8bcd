//! Signature algorithms and verification keys: JWKs to keys bound to one algorithm each.

use super::*;

/// The signature algorithms meshward accepts. There is deliberately no `none` and no HMAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    /// P-521 with SHA-512 (verified with RustCrypto's `p521`; jwt-simple has no ES512).
    ES512,
    EdDSA,
    /// HMAC algorithms: only for an issuer that opts in with its shared secret.
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 13] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// Parses a JOSE algorithm name, exactly (case-sensitive, as RFC 7518 registers them).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    /// Whether this is an HMAC (shared secret) algorithm.
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    pub(super) fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A public key bound to exactly one algorithm.
pub(super) enum PublicKey {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    ES512(Es512Key),
    /// Checked with ed25519-dalek: its 32-bit arithmetic is faster in wasm than jwt-simple's.
    EdDSA(hostcrypto::Ed25519Key),
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
}

/// jwt-simple parses only the registered claims it validates; every claim is kept once, from our own
/// strict parse of the payload (`VerifiedToken::claims`). Named for [`verify_es512`], native only.
#[cfg(not(target_arch = "wasm32"))]
pub(super) type Claims = JWTClaims<NoCustomClaims>;

impl PublicKey {
    pub(super) fn from_rsa(alg: Algorithm, n: &[u8], e: &[u8]) -> Result<Self, String> {
        let err = |e: jwt_simple::Error| format!("invalid RSA key: {e}");
        Ok(match alg {
            Algorithm::RS256 => PublicKey::RS256(RS256PublicKey::from_components(n, e).map_err(err)?),
            Algorithm::RS384 => PublicKey::RS384(RS384PublicKey::from_components(n, e).map_err(err)?),
            Algorithm::RS512 => PublicKey::RS512(RS512PublicKey::from_components(n, e).map_err(err)?),
            Algorithm::PS256 => PublicKey::PS256(PS256PublicKey::from_components(n, e).map_err(err)?),
            Algorithm::PS384 => PublicKey::PS384(PS384PublicKey::from_components(n, e).map_err(err)?),
            Algorithm::PS512 => PublicKey::PS512(PS512PublicKey::from_components(n, e).map_err(err)?),
            _ => return Err(format!("an RSA key cannot be used with {alg}")),
        })
    }

    /// Verifies `token` (decoded once as `jws`) with this key, as jwt-simple's `verify_token` does:
    /// through jwt-simple itself, but Ed25519 (ed25519-dalek, on `jws`; see [`hostcrypto`]).
    pub(super) fn verify(
        &self,
        token: &str,
        jws: &Jws<'_>,
        expected: &Expected<'_>,
    ) -> Result<Times, jwt_simple::Error> {
        let options = Some(expected.options());
        let claims = match self {
            PublicKey::RS256(k) => k.verify_token(token, options),
            PublicKey::RS384(k) => k.verify_token(token, options),
            PublicKey::RS512(k) => k.verify_token(token, options),
            PublicKey::PS256(k) => k.verify_token(token, options),
            PublicKey::PS384(k) => k.verify_token(token, options),
            PublicKey::PS512(k) => k.verify_token(token, options),
            PublicKey::ES256(k) => k.verify_token(token, options),
            PublicKey::ES384(k) => k.verify_token(token, options),
            #[cfg(not(target_arch = "wasm32"))]
            PublicKey::ES512(k) => verify_es512(k, token, options),
            // In the plugin only the host checks ES512 (see `Es512Key`): without it, refuse.
            #[cfg(target_arch = "wasm32")]
            PublicKey::ES512(_) => Err(JWTError::InvalidSignature.into()),
            PublicKey::EdDSA(k) => return hostcrypto::verify_ed25519(k, jws, expected),
            PublicKey::HS256(k) => k.verify_token(token, options),
            PublicKey::HS384(k) => k.verify_token(token, options),
            PublicKey::HS512(k) => k.verify_token(token, options),
        };
        claims.map(|claims| Times::from(&claims))
    }

    /// What a host signature check needs, for the algorithms the host does (PKCS#1 v1.5, ECDSA).
    /// ES512 (P-521) too: in the plugin the host is its only verifier (see [`Es512Key`]).
    pub(super) fn host_key(&self) -> Option<HostKey> {
        let rsa = |hash, der: Result<Vec<u8>, jwt_simple::Error>| der.ok().map(|der| HostKey::rsa(hash, der));
        let ec = |hash, der: Result<Vec<u8>, jwt_simple::Error>, len| {
            der.ok().map(|d| HostKey::ecdsa(hash, d, len))
        };
        match self {
            PublicKey::RS256(k) => rsa(HashFunction::Sha256, k.to_der()),
            PublicKey::RS384(k) => rsa(HashFunction::Sha384, k.to_der()),
            PublicKey::RS512(k) => rsa(HashFunction::Sha512, k.to_der()),
            PublicKey::ES256(k) => ec(HashFunction::Sha256, k.to_der(), 32),
            PublicKey::ES384(k) => ec(HashFunction::Sha384, k.to_der(), 48),
            PublicKey::ES512(k) => Some(HostKey::ecdsa(HashFunction::Sha512, p521_spki_der(&k.point), 66)),
            _ => None,
        }
    }
}

/// An ES512 (P-521) key. Natively (the CLI, tests) it is checked with RustCrypto's `p521`; in the
/// plugin only by the host (Envoy's `verify_signature`, BoringSSL), which every supported Envoy has:
/// `p521` would take the module over 1 MiB. Without the host an ES512 token is refused
/// (`token_signature_invalid`), never accepted.
pub(super) struct Es512Key {
    /// The SEC1 uncompressed point (`04 || x || y`, 133 bytes).
    pub(super) point: Vec<u8>,
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) key: Box<p521::ecdsa::VerifyingKey>,
}

impl Es512Key {
    pub(super) fn new(point: Vec<u8>) -> Result<Self, String> {
        #[cfg(not(target_arch = "wasm32"))]
        let key = Box::new(
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .map_err(|_| "invalid EC point: not on P-521".to_string())?,
        );
        Ok(Es512Key {
            point,
            #[cfg(not(target_arch = "wasm32"))]
            key,
        })
    }
}

/// The DER SubjectPublicKeyInfo of a P-521 point (RFC 5480: id-ecPublicKey, secp521r1), as the host
/// reads public keys.
pub(super) fn p521_spki_der(point: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 24] = [
        0x30, 0x81, 0x9b, // SEQUENCE, 155 bytes
        0x30, 0x10, // AlgorithmIdentifier
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
        0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23, // secp521r1
        0x03, 0x81, 0x86, // BIT STRING, 134 bytes
    ];
    let mut der = Vec::with_capacity(PREFIX.len() + 1 + point.len());
    der.extend_from_slice(&PREFIX);
    der.push(0x00); // no unused bits
    der.extend_from_slice(point);
    der
}

/// The fixed key of the HS512 re-wrap in [`verify_es512`]. It guards nothing, so it is no secret.
#[cfg(not(target_arch = "wasm32"))]
pub(super) const ES512_REWRAP_KEY: &[u8] = b"meshward ES512 claims re-wrap (not a secret)";

/// ES512 (P-521), which jwt-simple lacks. The signature is checked here with `p521`; then jwt-simple
/// checks header and claims exactly as for every other algorithm, on the same header (`alg` renamed)
/// and the same payload segment under an HS512 MAC with a fixed key. That MAC is a formality: the
/// token was authenticated just before, and the re-wrapped token never leaves this function.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn verify_es512(
    key: &Es512Key,
    token: &str,
    options: Option<VerificationOptions>,
) -> Result<Claims, jwt_simple::Error> {
    use p521::ecdsa::signature::Verifier as _;
    let key = &key.key;
    let bad_signature = || jwt_simple::Error::from(JWTError::InvalidSignature);
    let (signed, signature) = token.rsplit_once('.').ok_or_else(bad_signature)?;
    let (header_b64, payload_b64) = signed.split_once('.').ok_or_else(bad_signature)?;
    // Fixed-size r || s (RFC 7518 3.4); `from_slice` also refuses r = 0 or s = 0.
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad_signature())?;
    let signature = p521::ecdsa::Signature::from_slice(&signature).map_err(|_| bad_signature())?;
    key.verify(signed.as_bytes(), &signature).map_err(|_| bad_signature())?;
    let mut header = decode_object(header_b64).map_err(|_| JWTError::InvalidSignature)?;
    header.insert("alg".into(), Value::from("HS512"));
    let rewrapped = format!("{}.{payload_b64}", URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()));
    let rewrap = HS512Key::from_bytes(ES512_REWRAP_KEY);
    let mac = rewrap.authentication_tag(rewrapped.as_bytes());
    rewrap.verify_token(&format!("{rewrapped}.{}", URL_SAFE_NO_PAD.encode(mac)), options)
}

/// One usable verification key of an issuer.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: PublicKey,
    /// The same key for a host signature check, when the host can check this algorithm.
    pub(super) host: Option<HostKey>,
}

impl VerifyKey {
    pub(super) fn new(kid: Option<String>, alg: Algorithm, key: PublicKey) -> Self {
        let host = key.host_key();
        VerifyKey { kid, alg, key, host }
    }
}

/// The members of a JWK that matter for verification keys (RFC 7517, 7518, 8037).
#[derive(serde::Deserialize)]
pub(super) struct Jwk {
    pub(super) kty: String,
    pub(super) kid: Option<String>,
    pub(super) alg: Option<String>,
    #[serde(rename = "use")]
    pub(super) key_use: Option<String>,
    pub(super) crv: Option<String>,
    pub(super) x: Option<String>,
    pub(super) y: Option<String>,
    pub(super) n: Option<String>,
    pub(super) e: Option<String>,
    pub(super) d: Option<Value>,
}

pub(super) fn b64(field: &str, value: &Option<String>) -> Result<Vec<u8>, String> {
    let value = value.as_deref().ok_or_else(|| format!("missing `{field}`"))?;
    URL_SAFE_NO_PAD.decode(value).map_err(|_| format!("`{field}` is not base64url"))
}

/// The uncompressed SEC1 point of JWK coordinates for a curve of `size`-byte coordinates. Shorter
/// coordinates are left-padded with zeros: some JWK generators drop leading zero bytes (RFC 7518
/// 6.2.1.2 says not to; jwt_verify_lib's own P-521 test key has a 64-byte `y`). Padding is
/// unambiguous, and the point is still checked to be on the curve.
pub(super) fn ec_point(x: Vec<u8>, y: Vec<u8>, size: usize) -> Result<Vec<u8>, String> {
    if x.len() > size || y.len() > size {
        return Err(format!("EC coordinate longer than {size} bytes"));
    }
    let padded = |c: &[u8]| std::iter::repeat_n(0u8, size.saturating_sub(c.len())).chain(c.to_vec());
    Ok(std::iter::once(0x04).chain(padded(&x)).chain(padded(&y)).collect())
}

/// Turns one JWK into the keys it provides for the allowed algorithms. A key with an `alg` serves
/// only that algorithm; an RSA key without one serves each allowed RSA algorithm.
pub(super) fn keys_from_jwk(
    jwk: &Value,
    allowed: &[Algorithm],
    uses: &[&str],
) -> Result<Vec<VerifyKey>, String> {
    let jwk: Jwk = serde_json::from_value(jwk.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.d.is_some() {
        return Err("contains private key material (`d`); publish only public keys".into());
    }
    if let Some(key_use) = &jwk.key_use {
        if !uses.contains(&key_use.as_str()) {
            return Err(format!("`use` is {key_use:?}, not {uses:?}"));
        }
    }
    let declared = match &jwk.alg {
        Some(name) => Some(Algorithm::from_name(name).ok_or_else(|| format!("unsupported `alg` {name:?}"))?),
        None => None,
    };
    let fits = |alg: Algorithm| allowed.contains(&alg) && declared.is_none_or(|d| d == alg);
    let mut keys = Vec::new();
    let mut push = |alg: Algorithm, key: PublicKey| keys.push(VerifyKey::new(jwk.kid.clone(), alg, key));
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (b64("n", &jwk.n)?, b64("e", &jwk.e)?);
            if n.len() < 256 {
                return Err(format!("RSA modulus of {} bits is below the 2048-bit minimum", n.len() * 8));
            }
            for alg in Algorithm::ALL.into_iter().filter(|a| a.is_rsa() && fits(*a)) {
                push(alg, PublicKey::from_rsa(alg, &n, &e)?);
            }
        }
        ("EC", Some(crv @ ("P-256" | "P-384" | "P-521"))) => {
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => 66,
            };
            let point = ec_point(b64("x", &jwk.x)?, b64("y", &jwk.y)?, size)?;
            let err = |e: jwt_simple::Error| format!("invalid EC point: {e}");
            if crv == "P-256" && fits(Algorithm::ES256) {
                push(Algorithm::ES256, PublicKey::ES256(ES256PublicKey::from_bytes(&point).map_err(err)?));
            } else if crv == "P-384" && fits(Algorithm::ES384) {
                push(Algorithm::ES384, PublicKey::ES384(ES384PublicKey::from_bytes(&point).map_err(err)?));
            } else if crv == "P-521" && fits(Algorithm::ES512) {
                push(Algorithm::ES512, PublicKey::ES512(Es512Key::new(point)?));
            }
        }
        ("OKP", Some("Ed25519")) => {
            let x = b64("x", &jwk.x)?;
            if fits(Algorithm::EdDSA) {
                let key = hostcrypto::Ed25519Key::from_bytes(&x)
                    .map_err(|e| format!("invalid Ed25519 key: {e}"))?;
                push(Algorithm::EdDSA, PublicKey::EdDSA(key));
            }
        }
        (kty, crv) => return Err(format!("unsupported key type {kty:?} (curve {crv:?})")),
    }
    Ok(keys)
}
