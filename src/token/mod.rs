//! Workload tokens: finding the bearer token in a request, and verifying it against the configured
//! issuers into a [`VerifiedToken`].
//!
//! Structure, encoding and header checks happen here, before any signature work, so that malformed
//! or hostile tokens are turned away cheaply and with a precise reason. The signature and the time
//! claims are then checked by `jwt-simple`, with a key whose algorithm comes from configuration, never
//! from the token.

#![forbid(unsafe_code)]

pub mod cache;
pub mod claims;
pub mod hostcrypto;
pub mod profile;
pub mod remote;
pub mod shared;
pub mod source;

use std::collections::HashSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use std::cell::RefCell;

use crate::decision::Reason;
use hostcrypto::{HashFunction, HostCryptoError, HostKey, SignatureHost};
use profile::Profile;
use remote::{Fetch, FetchOutcome, RemoteJwksConfig, RemoteKeys};

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

    fn is_rsa(self) -> bool {
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
enum PublicKey {
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
/// strict parse of the payload (`VerifiedToken::claims`).
type Claims = JWTClaims<NoCustomClaims>;

impl PublicKey {
    fn from_rsa(alg: Algorithm, n: &[u8], e: &[u8]) -> Result<Self, String> {
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

    fn verify(&self, token: &str, options: VerificationOptions) -> Result<Claims, jwt_simple::Error> {
        let options = Some(options);
        match self {
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
            PublicKey::EdDSA(k) => {
                hostcrypto::verify_ed25519(k, token, options.as_ref().unwrap_or(&Default::default()))
            }
            PublicKey::HS256(k) => k.verify_token(token, options),
            PublicKey::HS384(k) => k.verify_token(token, options),
            PublicKey::HS512(k) => k.verify_token(token, options),
        }
    }

    /// What a host signature check needs, for the algorithms the host does (PKCS#1 v1.5, ECDSA).
    /// ES512 (P-521) too: in the plugin the host is its only verifier (see [`Es512Key`]).
    fn host_key(&self) -> Option<HostKey> {
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
struct Es512Key {
    /// The SEC1 uncompressed point (`04 || x || y`, 133 bytes).
    point: Vec<u8>,
    #[cfg(not(target_arch = "wasm32"))]
    key: Box<p521::ecdsa::VerifyingKey>,
}

impl Es512Key {
    fn new(point: Vec<u8>) -> Result<Self, String> {
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
fn p521_spki_der(point: &[u8]) -> Vec<u8> {
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
const ES512_REWRAP_KEY: &[u8] = b"meshward ES512 claims re-wrap (not a secret)";

/// ES512 (P-521), which jwt-simple lacks. The signature is checked here with `p521`; then jwt-simple
/// checks header and claims exactly as for every other algorithm, on the same header (`alg` renamed)
/// and the same payload segment under an HS512 MAC with a fixed key. That MAC is a formality: the
/// token was authenticated just before, and the re-wrapped token never leaves this function.
#[cfg(not(target_arch = "wasm32"))]
fn verify_es512(
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
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: PublicKey,
    /// The same key for a host signature check, when the host can check this algorithm.
    host: Option<HostKey>,
}

impl VerifyKey {
    fn new(kid: Option<String>, alg: Algorithm, key: PublicKey) -> Self {
        let host = key.host_key();
        VerifyKey { kid, alg, key, host }
    }
}

/// The members of a JWK that matter for verification keys (RFC 7517, 7518, 8037).
#[derive(serde::Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<Value>,
}

fn b64(field: &str, value: &Option<String>) -> Result<Vec<u8>, String> {
    let value = value.as_deref().ok_or_else(|| format!("missing `{field}`"))?;
    URL_SAFE_NO_PAD.decode(value).map_err(|_| format!("`{field}` is not base64url"))
}

/// The uncompressed SEC1 point of JWK coordinates for a curve of `size`-byte coordinates. Shorter
/// coordinates are left-padded with zeros: some JWK generators drop leading zero bytes (RFC 7518
/// 6.2.1.2 says not to; jwt_verify_lib's own P-521 test key has a 64-byte `y`). Padding is
/// unambiguous, and the point is still checked to be on the curve.
fn ec_point(x: Vec<u8>, y: Vec<u8>, size: usize) -> Result<Vec<u8>, String> {
    if x.len() > size || y.len() > size {
        return Err(format!("EC coordinate longer than {size} bytes"));
    }
    let padded = |c: &[u8]| std::iter::repeat_n(0u8, size.saturating_sub(c.len())).chain(c.to_vec());
    Ok(std::iter::once(0x04).chain(padded(&x)).chain(padded(&y)).collect())
}

/// Turns one JWK into the keys it provides for the allowed algorithms. A key with an `alg` serves
/// only that algorithm; an RSA key without one serves each allowed RSA algorithm.
fn keys_from_jwk(jwk: &Value, allowed: &[Algorithm], uses: &[&str]) -> Result<Vec<VerifyKey>, String> {
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

/// Whether an issuer's tokens are bound to the client certificate of the connection (RFC 8705
/// `cnf.x5t#S256`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CertificateBinding {
    /// Not checked.
    #[default]
    Off,
    /// A bound token must come over a connection with that certificate; unbound tokens are fine.
    IfPresent,
    /// Every token must be bound, and come over a connection with that certificate.
    Required,
}

/// How an issuer is configured (see `config::IssuerConfig` for the documented fields).
pub struct IssuerSpec {
    pub name: String,
    pub issuer: String,
    pub profile: Profile,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub jwks: Vec<Value>,
    pub hmac_secret: Option<Vec<u8>>,
    pub clock_skew_seconds: u64,
    pub require_expiry: bool,
    pub max_lifetime_seconds: Option<u64>,
    pub max_age_seconds: Option<u64>,
    pub certificate_binding: CertificateBinding,
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// The `iss` URL again, for OIDC discovery.
    pub issuer_url: String,
}

/// A trusted token issuer, compiled from configuration.
pub struct Issuer {
    /// Short name used by rules and audit records.
    pub name: String,
    /// The exact `iss` value.
    pub issuer: String,
    /// The rules its tokens follow.
    pub profile: Profile,
    audiences: HashSet<String>,
    algorithms: Vec<Algorithm>,
    keys: Vec<VerifyKey>,
    clock_skew_seconds: u64,
    require_expiry: bool,
    max_lifetime_seconds: Option<u64>,
    max_age_seconds: Option<u64>,
    /// Whether tokens must match the connection's client certificate.
    pub certificate_binding: CertificateBinding,
    /// Keys fetched from the issuer's JWKS URI, and the fetch state.
    remote: Option<RefCell<(RemoteKeys, Vec<VerifyKey>)>>,
    /// Bumped whenever a different remote key set is installed: cached verifications made with an
    /// older set are redone.
    generation: std::cell::Cell<u64>,
    /// The installed remote key set, as fetched, to tell a changed set from a refresh.
    installed_jwks: RefCell<Vec<Value>>,
    /// SHA-256 of the installed remote key set (zero before any): unlike `generation`, the same in
    /// every VM that installed the same set, so tokens shared between VMs can name their key set.
    key_set_fingerprint: std::cell::Cell<[u8; 32]>,
}

impl Issuer {
    /// Builds an issuer. Returns it and, per skipped key, its index in `jwks` and why it is
    /// skipped; fails when no key is usable.
    pub fn new(spec: IssuerSpec) -> Result<(Self, Vec<(usize, String)>), String> {
        let mut keys = Vec::new();
        let mut warnings = Vec::new();
        let asymmetric: Vec<Algorithm> = spec.algorithms.iter().copied().filter(|a| !a.is_hmac()).collect();
        for (i, jwk) in spec.jwks.iter().enumerate() {
            match keys_from_jwk(jwk, &asymmetric, spec.profile.key_uses()) {
                Ok(found) => keys.extend(found),
                Err(e) => warnings.push((i, e)),
            }
        }
        if let Some(secret) = &spec.hmac_secret {
            for alg in spec.algorithms.iter().copied().filter(|a| a.is_hmac()) {
                let key = match alg {
                    Algorithm::HS256 => PublicKey::HS256(HS256Key::from_bytes(secret)),
                    Algorithm::HS384 => PublicKey::HS384(HS384Key::from_bytes(secret)),
                    _ => PublicKey::HS512(HS512Key::from_bytes(secret)),
                };
                keys.push(VerifyKey::new(None, alg, key));
            }
        }
        if keys.is_empty() && spec.remote_jwks.is_none() {
            let mut msg = "no usable key for the allowed algorithms".to_string();
            if let Some((i, e)) = warnings.first() {
                msg = format!("{msg} (jwks.keys[{i}] skipped: {e})");
            }
            return Err(msg);
        }
        let issuer = Issuer {
            name: spec.name,
            issuer: spec.issuer,
            profile: spec.profile,
            audiences: spec.audiences.into_iter().collect(),
            algorithms: spec.algorithms,
            keys,
            clock_skew_seconds: spec.clock_skew_seconds,
            require_expiry: spec.require_expiry,
            max_lifetime_seconds: spec.max_lifetime_seconds,
            max_age_seconds: spec.max_age_seconds,
            certificate_binding: spec.certificate_binding,
            remote: spec
                .remote_jwks
                .map(|config| RefCell::new((RemoteKeys::new(config, &spec.issuer_url), Vec::new()))),
            generation: std::cell::Cell::new(0),
            installed_jwks: RefCell::new(Vec::new()),
            key_set_fingerprint: std::cell::Cell::new([0; 32]),
        };
        Ok((issuer, warnings))
    }

    /// How many verification keys (key x algorithm) the issuer holds, inline and remote.
    pub fn key_count(&self) -> usize {
        self.keys.len() + self.remote.as_ref().map_or(0, |r| r.borrow().1.len())
    }

    /// Whether the issuer's keys come (also) from a remote key set.
    pub fn has_remote_keys(&self) -> bool {
        self.remote.is_some()
    }

    /// The fetch of the remote key set that is due now, if any.
    pub fn due_fetch(&self, now: u64) -> Option<Fetch> {
        let mut remote = self.remote.as_ref()?.try_borrow_mut().ok()?;
        remote.0.due(&self.name, now)
    }

    /// The largest response body the remote key server may send.
    pub fn max_body_bytes(&self) -> usize {
        self.remote.as_ref().map_or(0, |r| r.borrow().0.config().max_body_bytes)
    }

    /// Handles the response to a fetch of `path` (`status` `None`: no response at all).
    pub fn fetch_completed(
        &self,
        path: &str,
        status: Option<u32>,
        body: Option<&[u8]>,
        now: u64,
    ) -> FetchOutcome {
        let Some(cell) = &self.remote else {
            return FetchOutcome::Failed("issuer has no remote keys".into());
        };
        let Ok(mut remote) = cell.try_borrow_mut() else {
            return FetchOutcome::Failed("busy".into());
        };
        let jwks = match remote.0.response(path, status, body) {
            Ok(Some(jwks)) => jwks,
            Ok(None) => return remote.0.failed("no keys".into()),
            Err(outcome) => return outcome,
        };
        let asymmetric: Vec<Algorithm> = self.algorithms.iter().copied().filter(|a| !a.is_hmac()).collect();
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in jwks.iter().enumerate() {
            match keys_from_jwk(jwk, &asymmetric, self.profile.key_uses()) {
                Ok(found) => keys.extend(found),
                Err(e) => skipped.push(format!("keys[{i}] skipped: {e}")),
            }
        }
        if keys.is_empty() {
            // Keep the last good set rather than install one that verifies nothing.
            return remote.0.failed(format!("no usable key in the key set ({})", skipped.join("; ")));
        }
        let count = keys.len();
        remote.1 = keys;
        remote.0.installed(now);
        if let Ok(mut installed) = self.installed_jwks.try_borrow_mut() {
            if *installed != jwks {
                let bytes = serde_json::to_vec(&jwks).unwrap_or_default();
                self.key_set_fingerprint.set(hmac_sha256::Hash::hash(&bytes));
                *installed = jwks;
                self.generation.set(self.generation.get() + 1);
            }
        }
        FetchOutcome::Installed { keys: count, skipped }
    }

    /// The generation of the key set (changes when a different remote set is installed).
    pub fn key_generation(&self) -> u64 {
        self.generation.get()
    }

    /// The fingerprint of the remote key set in use (zero for inline keys only, which the bundle's
    /// digest already pins).
    pub fn key_set_fingerprint(&self) -> [u8; 32] {
        self.key_set_fingerprint.get()
    }

    /// Whether the issuer has keys usable at `now` (inline keys, or a remote set not too stale).
    pub fn keys_usable(&self, now: u64) -> bool {
        !self.keys.is_empty() || self.remote.as_ref().is_some_and(|r| r.borrow().0.usable(now))
    }

    /// Age of the remote key set in use, if one was ever installed.
    pub fn key_set_age(&self, now: u64) -> Option<u64> {
        self.remote.as_ref().and_then(|r| r.borrow().0.age(now))
    }

    /// The refresh period of the issuer's remote key set, if it has one.
    pub fn refresh_seconds(&self) -> Option<u64> {
        self.remote.as_ref().map(|r| r.borrow().0.config().refresh_seconds)
    }

    /// How long requests may wait for this issuer's first remote key set, if it has one.
    pub fn wait_for_keys_ms(&self) -> Option<u64> {
        self.remote.as_ref().map(|r| r.borrow().0.config().wait_for_keys_ms)
    }

    /// Whether requests should wait for this issuer's first remote key set.
    pub fn waiting_for_first_keys(&self, now_ms: u64) -> bool {
        self.remote.as_ref().is_some_and(|r| r.borrow().0.still_waiting_for_first_keys(now_ms))
    }

    /// Checks the token's certificate binding against the connection's client certificate, given as
    /// the hex SHA-256 of its DER (what Envoy reports); on every request, cached or not.
    pub fn check_binding(&self, token: &VerifiedToken, peer_sha256_hex: Option<&str>) -> Result<(), Reason> {
        if self.certificate_binding == CertificateBinding::Off {
            return Ok(());
        }
        let bound = token.claims.get("cnf").and_then(|c| c.get("x5t#S256"));
        let thumbprint = match bound {
            None if self.certificate_binding == CertificateBinding::Required => {
                return Err(Reason::TokenCertificateMismatch)
            }
            None => return Ok(()),
            Some(Value::String(t)) => t,
            Some(_) => return Err(Reason::TokenClaimInvalid),
        };
        let presented = peer_sha256_hex.and_then(hex_to_base64url).ok_or(Reason::TokenCertificateMismatch)?;
        if presented == *thumbprint {
            Ok(())
        } else {
            Err(Reason::TokenCertificateMismatch)
        }
    }

    /// Checks what depends on the current time and must hold on every request, cached or not.
    pub fn check_age(&self, token: &VerifiedToken, now: u64) -> Result<(), Reason> {
        if let Some(max_age) = self.max_age_seconds {
            let iat = token.issued_at.ok_or(Reason::TokenClaimInvalid)?;
            if now.saturating_sub(iat) > max_age {
                return Err(Reason::TokenTooOld);
            }
        }
        Ok(())
    }
}

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
    /// Every other claim of the token (`aud`, `exp`, `nbf`, `iat`, `nonce`, ...), as the token
    /// states it, with its JSON type.
    pub claims: Map<String, Value>,
}

/// A hex SHA-256 digest (as Envoy reports certificate digests) as unpadded base64url.
fn hex_to_base64url(hex: &str) -> Option<String> {
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
    if value.contains(',') {
        return Err(Reason::TokenMultiple);
    }
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let rest = match scheme {
        None => value,
        Some(scheme) => {
            let (given, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
            if !given.eq_ignore_ascii_case(scheme) {
                return Err(Reason::TokenMissing);
            }
            rest
        }
    };
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(Reason::TokenMissing);
    }
    if token.contains([' ', '\t']) {
        return Err(Reason::TokenMalformed);
    }
    Ok(token)
}

/// The configured issuers, and the checks shared by all of them.
pub struct Issuers {
    issuers: Vec<Issuer>,
    max_token_bytes: usize,
    /// Checks RSA PKCS#1 v1.5 and ECDSA signatures in the host when set (the filter, when Envoy
    /// has `verify_signature`); the pure-Rust path otherwise.
    signature_host: Option<Box<dyn SignatureHost>>,
    /// Tokens whose signature was checked (against one key or more), since the last take.
    signature_checks: std::cell::Cell<u64>,
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
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::TokenMalformed);
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(Reason::TokenMalformed);
        }
        let header = decode_object(header_b64)?;
        let payload = decode_object(payload_b64)?;
        if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(Reason::TokenMalformed);
        }

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
        check_claim_types(&payload)?;

        let options = VerificationOptions {
            required_signature_type: required_type,
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            time_tolerance: Some(Duration::from_secs(issuer.clock_skew_seconds)),
            allowed_issuers: Some(HashSet::from([issuer.issuer.clone()])),
            allowed_audiences: Some(issuer.audiences.clone()),
            max_token_length: Some(self.max_token_bytes),
            ..Default::default()
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
        let mut claims = None;
        for (is_named, key) in named.map(|k| (true, k)).chain(unnamed.map(|k| (false, k))) {
            named_tried |= is_named;
            tried = true;
            let verified = match (&self.signature_host, &key.host) {
                (Some(host), Some(host_key)) => {
                    hostcrypto::verify_token(host.as_ref(), host_key, alg.name(), token, &options)
                }
                _ => key.key.verify(token, options.clone()),
            };
            match verified {
                Ok(c) => {
                    claims = Some(c);
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
        let claims = match claims {
            Some(c) => c,
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
        check_fractional_times(&payload, now, issuer.clock_skew_seconds)?;

        // Whole seconds: jwt-simple truncates a fractional NumericDate, which rounds `exp` down (exact
        // for a clock in whole seconds) and makes `iat` older (stricter for age limits).
        let expires_at = claims.expires_at.map(|t| t.as_secs());
        if expires_at.is_none() && issuer.require_expiry {
            return Err(Reason::TokenExpiryMissing);
        }
        let issued_at = claims.issued_at.map(|t| t.as_secs());
        if let Some(max) = issuer.max_lifetime_seconds {
            // On the token's own values, fractions included, so rounding never hides a second.
            let (Some(iat), Some(exp)) = (time_claim(&payload, "iat"), time_claim(&payload, "exp")) else {
                return Err(Reason::TokenClaimInvalid);
            };
            if exp - iat > max as f64 {
                return Err(Reason::TokenLifetimeTooLong);
            }
        }
        let subject = claims.subject.filter(|s| !s.is_empty()).ok_or(Reason::TokenClaimInvalid)?;
        issuer.profile.check_claims(&subject, &payload, issued_at, claims.jwt_id.as_deref())?;
        // Each claim is kept once: `sub`, `iss` and `jti` as typed fields, every other claim (`aud`,
        // `exp`, `nbf`, `iat`, `nonce`, ...) in the map with its JSON type.
        let mut payload = payload;
        for name in ["sub", "iss", "jti"] {
            payload.remove(name);
        }
        let token = VerifiedToken {
            issuer_name: issuer.name.clone(),
            profile: issuer.profile.name(),
            issuer: issuer.issuer.clone(),
            subject,
            token_id: claims.jwt_id,
            expires_at,
            issued_at,
            claims: payload,
        };
        issuer.check_age(&token, now)?;
        Ok(token)
    }
}

/// A NumericDate claim as the token states it (type-checked before: a non-negative number).
fn time_claim(payload: &Map<String, Value>, name: &str) -> Option<f64> {
    payload.get(name).and_then(Value::as_f64)
}

/// `nbf` and `iat` with a fraction: jwt-simple compares them truncated, which would let a token in
/// up to a second early. Rounded up here, so a token is never valid before the instant it names.
fn check_fractional_times(payload: &Map<String, Value>, now: u64, skew: u64) -> Result<(), Reason> {
    let latest = now.saturating_add(skew) as f64;
    for name in ["nbf", "iat"] {
        if time_claim(payload, name).is_some_and(|t| t.ceil() > latest) {
            return Err(Reason::TokenNotYetValid);
        }
    }
    Ok(())
}

fn is_bad_signature(e: &jwt_simple::Error) -> bool {
    matches!(
        e.downcast_ref::<JWTError>(),
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag)
    )
}

fn reason_for(e: &jwt_simple::Error) -> Reason {
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
fn check_claim_types(payload: &Map<String, Value>) -> Result<(), Reason> {
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

/// Decodes one base64url segment into a JSON object, strictly: no padding, no stray bits, UTF-8,
/// and no duplicate member names at any depth (RFC 7515 5.2 / RFC 8725 3.x).
fn decode_object(segment: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| Reason::TokenMalformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Reason::TokenMalformed)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let UniqueValue(value) = de::Deserialize::deserialize(&mut de).map_err(|_| Reason::TokenMalformed)?;
    de.end().map_err(|_| Reason::TokenMalformed)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Reason::TokenMalformed),
    }
}

/// A JSON value that refuses duplicate object member names.
struct UniqueValue(Value);

impl<'de> de::Deserialize<'de> for UniqueValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(UniqueValue)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueValue(value) = map.next_value()?;
            if out.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}
