//! Development helpers: signing keys, JWKS and test tokens. NOT FOR PRODUCTION: keys are kept in
//! plain files, and the demo key is derived from a public constant so anyone can mint demo tokens.
//!
//! Used by `meshward dev`, the tests, the benches and `make run`.

use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

use std::path::{Path, PathBuf};

use super::Failure;
use crate::token::Algorithm;

/// The demo signing key's scalar. Public on purpose: it only ever signs demo tokens.
const DEMO_ES256_SCALAR: &[u8; 32] = b"meshward demo key: never trust!!";

/// A private signing key for one algorithm, with its key id.
#[allow(clippy::large_enum_variant)] // a handful exist at a time
pub enum SigningKey {
    RS256(RS256KeyPair),
    ES256(ES256KeyPair),
    EdDSA(Ed25519KeyPair),
    /// RSA-PSS and P-384: for the benchmarks' cold-path setups.
    PS256(PS256KeyPair),
    ES384(ES384KeyPair),
}

/// An error of the development helpers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DevError(String);

fn dev_err(e: impl std::fmt::Display) -> DevError {
    DevError(e.to_string())
}

/// What goes into a test token. Times are unix seconds; `None` leaves the claim out.
#[derive(Clone, Debug, Default)]
pub struct TokenSpec {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audiences: Vec<String>,
    pub issued_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub not_before: Option<u64>,
    pub token_id: Option<String>,
    /// Further claims, merged into the payload.
    pub claims: Map<String, Value>,
    /// The header's `typ` (default `JWT`), e.g. `at+jwt` for access tokens.
    pub typ: Option<String>,
}

impl TokenSpec {
    /// A typical short-lived workload token: issued `now`, valid for `ttl` seconds.
    pub fn new(issuer: &str, subject: &str, audience: &str, now: u64, ttl: u64) -> Self {
        TokenSpec {
            issuer: Some(issuer.into()),
            subject: Some(subject.into()),
            audiences: vec![audience.into()],
            issued_at: Some(now),
            expires_at: Some(now + ttl),
            ..Default::default()
        }
    }
}

impl SigningKey {
    /// Generates a fresh key (RS256 uses a 2048-bit modulus).
    pub fn generate(alg: Algorithm, kid: &str) -> Result<Self, DevError> {
        Ok(match alg {
            Algorithm::RS256 => {
                SigningKey::RS256(RS256KeyPair::generate(2048).map_err(dev_err)?.with_key_id(kid))
            }
            Algorithm::ES256 => SigningKey::ES256(ES256KeyPair::generate().with_key_id(kid)),
            Algorithm::EdDSA => SigningKey::EdDSA(Ed25519KeyPair::generate().with_key_id(kid)),
            Algorithm::PS256 => {
                SigningKey::PS256(PS256KeyPair::generate(2048).map_err(dev_err)?.with_key_id(kid))
            }
            Algorithm::ES384 => SigningKey::ES384(ES384KeyPair::generate().with_key_id(kid)),
            other => {
                return Err(DevError(format!(
                    "dev keys support RS256, PS256, ES256, ES384 and EdDSA, not {other}"
                )))
            }
        })
    }

    /// The well-known demo key (ES256). Anyone can mint tokens with it: demos only.
    pub fn demo(kid: &str) -> Self {
        // A fixed in-range scalar: construction cannot fail, but fall back to a fresh key if it did.
        match ES256KeyPair::from_bytes(DEMO_ES256_SCALAR) {
            Ok(k) => SigningKey::ES256(k.with_key_id(kid)),
            Err(_) => SigningKey::ES256(ES256KeyPair::generate().with_key_id(kid)),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::RS256(_) => Algorithm::RS256,
            SigningKey::ES256(_) => Algorithm::ES256,
            SigningKey::EdDSA(_) => Algorithm::EdDSA,
            SigningKey::PS256(_) => Algorithm::PS256,
            SigningKey::ES384(_) => Algorithm::ES384,
        }
    }

    fn kid(&self) -> Option<&str> {
        match self {
            SigningKey::RS256(k) => k.key_id().as_deref(),
            SigningKey::ES256(k) => k.key_id().as_deref(),
            SigningKey::EdDSA(k) => k.key_id().as_deref(),
            SigningKey::PS256(k) => k.key_id().as_deref(),
            SigningKey::ES384(k) => k.key_id().as_deref(),
        }
    }

    /// The public half as a JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match self {
            SigningKey::RS256(k) => {
                let c = k.public_key().to_components();
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            SigningKey::PS256(k) => {
                let c = k.public_key().to_components();
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            SigningKey::ES384(k) => {
                let point = k.public_key().public_key().to_bytes_uncompressed();
                let (x, y) = (point.get(1..49).unwrap_or_default(), point.get(49..97).unwrap_or_default());
                json!({"kty": "EC", "crv": "P-384", "x": b64(x), "y": b64(y)})
            }
            SigningKey::ES256(k) => {
                let point = k.public_key().public_key().to_bytes_uncompressed();
                let (x, y) = (point.get(1..33).unwrap_or_default(), point.get(33..65).unwrap_or_default());
                json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)})
            }
            SigningKey::EdDSA(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&k.public_key().to_bytes())})
            }
        };
        if let Value::Object(map) = &mut jwk {
            if let Some(kid) = self.kid() {
                map.insert("kid".into(), kid.into());
            }
            map.insert("alg".into(), self.algorithm().name().into());
            map.insert("use".into(), "sig".into());
        }
        jwk
    }

    /// Signs a token for the spec.
    pub fn sign(&self, spec: &TokenSpec) -> Result<String, DevError> {
        let audiences = match spec.audiences.as_slice() {
            [] => None,
            [one] => Some(Audiences::AsString(one.clone())),
            many => Some(Audiences::AsSet(many.iter().cloned().collect())),
        };
        let claims = JWTClaims {
            issued_at: spec.issued_at.map(UnixTimeStamp::from_secs),
            expires_at: spec.expires_at.map(UnixTimeStamp::from_secs),
            invalid_before: spec.not_before.map(UnixTimeStamp::from_secs),
            issuer: spec.issuer.clone(),
            subject: spec.subject.clone(),
            audiences,
            jwt_id: spec.token_id.clone(),
            nonce: None,
            custom: spec.claims.clone(),
        };
        let options = HeaderOptions { signature_type: spec.typ.clone(), ..Default::default() };
        match self {
            SigningKey::RS256(k) => k.sign_with_options(claims, &options),
            SigningKey::ES256(k) => k.sign_with_options(claims, &options),
            SigningKey::EdDSA(k) => k.sign_with_options(claims, &options),
            SigningKey::PS256(k) => k.sign_with_options(claims, &options),
            SigningKey::ES384(k) => k.sign_with_options(claims, &options),
        }
        .map_err(dev_err)
    }

    /// Signs arbitrary header and payload JSON text as given (EdDSA keys only), to craft the hostile
    /// tokens tests need: duplicate members, odd types, `crit`, `alg` values a verifier must refuse.
    pub fn sign_raw(&self, header: &str, payload: &str) -> Result<String, DevError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let SigningKey::EdDSA(k) = self else {
            return Err(DevError("sign_raw needs an EdDSA key".into()));
        };
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
        let signature = k.key_pair().as_ref().sk.sign(signing_input.as_bytes(), None);
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// The key as a small JSON document (algorithm, kid, PKCS#8 PEM) for `meshward dev`.
    pub fn to_file(&self) -> Result<String, DevError> {
        let pem = match self {
            SigningKey::RS256(k) => k.to_pem().map_err(dev_err)?,
            SigningKey::ES256(k) => k.to_pem().map_err(dev_err)?,
            SigningKey::EdDSA(k) => k.to_pem(),
            SigningKey::PS256(k) => k.to_pem().map_err(dev_err)?,
            SigningKey::ES384(k) => k.to_pem().map_err(dev_err)?,
        };
        let doc = json!({
            "warning": "development key made by `meshward dev keygen`; not for production",
            "alg": self.algorithm().name(),
            "kid": self.kid(),
            "pem": pem,
        });
        serde_json::to_string_pretty(&doc).map_err(dev_err)
    }

    /// Reads a key written by [`SigningKey::to_file`].
    pub fn from_file(text: &str) -> Result<Self, DevError> {
        let doc: Value = serde_json::from_str(text).map_err(dev_err)?;
        let field = |name: &str| {
            doc.get(name).and_then(Value::as_str).ok_or_else(|| DevError(format!("key file has no `{name}`")))
        };
        let (alg, pem) = (field("alg")?, field("pem")?);
        let kid = doc.get("kid").and_then(Value::as_str);
        let key = match alg {
            "RS256" => SigningKey::RS256(RS256KeyPair::from_pem(pem).map_err(dev_err)?),
            "ES256" => SigningKey::ES256(ES256KeyPair::from_pem(pem).map_err(dev_err)?),
            "EdDSA" => SigningKey::EdDSA(Ed25519KeyPair::from_pem(pem).map_err(dev_err)?),
            "PS256" => SigningKey::PS256(PS256KeyPair::from_pem(pem).map_err(dev_err)?),
            "ES384" => SigningKey::ES384(ES384KeyPair::from_pem(pem).map_err(dev_err)?),
            other => return Err(DevError(format!("unsupported key algorithm {other:?}"))),
        };
        Ok(match (key, kid) {
            (SigningKey::RS256(k), Some(kid)) => SigningKey::RS256(k.with_key_id(kid)),
            (SigningKey::ES256(k), Some(kid)) => SigningKey::ES256(k.with_key_id(kid)),
            (SigningKey::EdDSA(k), Some(kid)) => SigningKey::EdDSA(k.with_key_id(kid)),
            (SigningKey::PS256(k), Some(kid)) => SigningKey::PS256(k.with_key_id(kid)),
            (SigningKey::ES384(k), Some(kid)) => SigningKey::ES384(k.with_key_id(kid)),
            (key, None) => key,
        })
    }
}

/// A JWK Set holding the public halves of the given keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() })
}

// The `meshward dev` command.

/// The algorithms `dev keygen` makes keys for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KeyAlg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "PS256")]
    Ps256,
    #[value(name = "ES384")]
    Es384,
}

/// `meshward dev`: development helpers.
#[derive(clap::Subcommand)]
pub enum DevCommand {
    /// Turn test cases into request records with freshly minted tokens (JSON lines on stdout).
    Corpus(super::corpus::CorpusArgs),
    /// Generate a signing key (private; written as a JSON key file).
    Keygen {
        #[arg(long, value_enum, default_value = "ES256")]
        alg: KeyAlg,
        #[arg(long)]
        kid: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the JWK Set (public keys) of key files, or of the public demo key.
    Jwks {
        /// Key files written by `dev keygen`.
        keys: Vec<PathBuf>,
        /// Include the well-known demo key with this kid.
        #[arg(long)]
        demo: Option<String>,
    },
    /// Mint a signed test token on stdout.
    Token {
        /// Key file written by `dev keygen`.
        #[arg(long, conflicts_with = "demo", required_unless_present = "demo")]
        key: Option<PathBuf>,
        /// Sign with the well-known demo key with this kid.
        #[arg(long)]
        demo: Option<String>,
        #[arg(long)]
        iss: String,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        aud: Vec<String>,
        /// Lifetime in seconds (negative: already expired).
        #[arg(long, default_value_t = 300, allow_hyphen_values = true)]
        ttl: i64,
        #[arg(long)]
        jti: Option<String>,
        /// Issue time (unix seconds); default now.
        #[arg(long)]
        now: Option<u64>,
        /// Backdate the token: issued this many seconds before now (the lifetime still counts from now).
        #[arg(long, default_value_t = 0)]
        age: u64,
        /// Extra claim NAME=VALUE; VALUE is JSON if it parses as JSON, else a string. Repeatable.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// Mint this many tokens, one a line, the n-th (from 1) with `jti` `JTI-n` (`token-n`
        /// without --jti), so that they are distinct (load tests, cache sizing).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::usage(format!("cannot read {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| unreadable(path, e))
}

fn load_key(path: &Path) -> Result<SigningKey, Failure> {
    SigningKey::from_file(&read(path)?).map_err(|e| unreadable(path, e))
}

/// Runs `meshward dev COMMAND`.
pub fn run(command: DevCommand, out: &mut dyn std::io::Write) -> Result<(), Failure> {
    let fail = |e: DevError| Failure::usage(e.to_string());
    match command {
        DevCommand::Corpus(args) => super::corpus::run(&args, out)?,
        DevCommand::Keygen { alg, kid, out: file_path } => {
            let alg = match alg {
                KeyAlg::Rs256 => Algorithm::RS256,
                KeyAlg::Es256 => Algorithm::ES256,
                KeyAlg::EdDsa => Algorithm::EdDSA,
                KeyAlg::Ps256 => Algorithm::PS256,
                KeyAlg::Es384 => Algorithm::ES384,
            };
            let file = SigningKey::generate(alg, &kid).and_then(|k| k.to_file()).map_err(fail)?;
            match file_path {
                Some(path) => std::fs::write(&path, file + "\n")
                    .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?,
                None => writeln!(out, "{file}")?,
            }
        }
        DevCommand::Jwks { keys, demo } => {
            let mut loaded = keys.iter().map(|p| load_key(p)).collect::<Result<Vec<_>, _>>()?;
            loaded.extend(demo.map(|kid| SigningKey::demo(&kid)));
            let refs: Vec<&SigningKey> = loaded.iter().collect();
            writeln!(out, "{}", jwks(&refs))?;
        }
        DevCommand::Token { key, demo, iss, sub, aud, ttl, jti, now, age, claims, count } => {
            let key = match (key, demo) {
                (Some(path), _) => load_key(&path)?,
                (None, Some(kid)) => SigningKey::demo(&kid),
                (None, None) => return Err(Failure::usage("give --key FILE or --demo KID")),
            };
            let now = now.unwrap_or_else(crate::cli::now);
            let mut spec = TokenSpec::new(&iss, &sub, "", now, 0);
            spec.audiences = aud;
            spec.expires_at = Some(now.saturating_add_signed(ttl));
            spec.token_id = jti;
            spec.issued_at = Some(now.saturating_sub(age));
            for claim in claims {
                let (name, value) = claim
                    .split_once('=')
                    .ok_or_else(|| Failure::usage(format!("--claim {claim:?}: expected NAME=VALUE")))?;
                let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::from(value));
                spec.claims.insert(name.to_owned(), value);
            }
            if count == 1 {
                writeln!(out, "{}", key.sign(&spec).map_err(fail)?)?;
            } else {
                let base = spec.token_id.take().unwrap_or_else(|| "token".to_owned());
                for n in 1..=count {
                    spec.token_id = Some(format!("{base}-{n}"));
                    writeln!(out, "{}", key.sign(&spec).map_err(fail)?)?;
                }
            }
        }
    }
    Ok(())
}
