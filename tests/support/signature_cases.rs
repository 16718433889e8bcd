//! The token corpus of the host-signature differential tests (tests/hostcrypto.rs natively,
//! tests/e2e_hostcrypto.rs in Envoy): for every algorithm Envoy's `verify_signature` can check (RS256,
//! RS384, RS512, ES256, ES384) and the two it cannot (PS256, EdDSA), valid tokens and every way
//! of breaking the signature, the header or the claims we know of. Keys are generated here.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{ES256KeyPair, ES384KeyPair, PS256KeyPair};
use meshward::cli::dev::{SigningKey, TokenSpec};
use meshward::token::Algorithm;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

pub const ISS: &str = "https://issuer.hostcrypto.example";
pub const AUD: &str = "meshward";
pub const SUB: &str = "spiffe://prod.example/ns/app/sa/web";
pub const HOST: &str = "api.example.com";

/// One token of the corpus.
pub struct Case {
    pub name: String,
    pub token: String,
}

/// A key that signs any header and payload text as given.
enum RawKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl RawKey {
    /// The JWS signature of `signed` for `alg` (PKCS#1 v1.5 for RSA; `r || s` for ECDSA).
    fn sign(&self, alg: &str, signed: &[u8]) -> Vec<u8> {
        match (self, alg) {
            (RawKey::Rsa(k), "RS256") => {
                rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new((**k).clone()).sign(signed).to_vec()
            }
            (RawKey::Rsa(k), "RS384") => {
                rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha384>::new((**k).clone()).sign(signed).to_vec()
            }
            (RawKey::Rsa(k), "RS512") => {
                rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha512>::new((**k).clone()).sign(signed).to_vec()
            }
            (RawKey::P256(k), _) => {
                let s: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(k, signed);
                s.to_bytes().to_vec()
            }
            (RawKey::P384(k), _) => {
                let s: p384::ecdsa::Signature = p384::ecdsa::signature::Signer::sign(k, signed);
                s.to_bytes().to_vec()
            }
            (RawKey::Rsa(_), other) => panic!("no RSA PKCS#1 v1.5 signing for {other}"),
        }
    }

    /// The signature as ASN.1 DER (ECDSA only), as some signers wrongly put it in a JWS.
    fn sign_der(&self, signed: &[u8]) -> Vec<u8> {
        match self {
            RawKey::P256(k) => {
                let s: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(k, signed);
                s.to_der().as_bytes().to_vec()
            }
            RawKey::P384(k) => {
                let s: p384::ecdsa::Signature = p384::ecdsa::signature::Signer::sign(k, signed);
                s.to_der().as_bytes().to_vec()
            }
            RawKey::Rsa(_) => panic!("DER signatures are ECDSA only"),
        }
    }

    /// The same (valid) ECDSA signature with `s` replaced by `n - s`: the high-S twin.
    fn sign_high_s(&self, signed: &[u8]) -> Vec<u8> {
        match self {
            RawKey::P256(k) => {
                let s: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(k, signed);
                let low = s.normalize_s();
                let high = p256::ecdsa::Signature::from_scalars(low.r(), -low.s()).unwrap();
                high.to_bytes().to_vec()
            }
            RawKey::P384(k) => {
                let s: p384::ecdsa::Signature = p384::ecdsa::signature::Signer::sign(k, signed);
                let low = s.normalize_s();
                let high = p384::ecdsa::Signature::from_scalars(low.r(), -low.s()).unwrap();
                high.to_bytes().to_vec()
            }
            RawKey::Rsa(_) => panic!("high S is ECDSA only"),
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match self {
            RawKey::Rsa(k) => {
                json!({"kty": "RSA", "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be())})
            }
            RawKey::P256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let p = point.as_bytes();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            RawKey::P384(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let p = point.as_bytes();
                json!({"kty": "EC", "crv": "P-384", "x": b64(&p[1..49]), "y": b64(&p[49..97])})
            }
        };
        jwk["kid"] = kid.into();
        jwk
    }
}

struct Keys {
    rsa: RawKey,
    p256: RawKey,
    p384: RawKey,
    ps256: PS256KeyPair,
    ed: SigningKey,
    /// Untrusted keys carrying the kids of trusted ones.
    attacker_rsa: RawKey,
    attacker_p256: RawKey,
    attacker_p384: RawKey,
}

fn rsa_key() -> RawKey {
    RawKey::Rsa(Box::new(rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap()))
}

fn p256_key() -> RawKey {
    RawKey::P256(p256::ecdsa::SigningKey::from_slice(&ES256KeyPair::generate().to_bytes()).unwrap())
}

fn p384_key() -> RawKey {
    RawKey::P384(p384::ecdsa::SigningKey::from_slice(&ES384KeyPair::generate().to_bytes()).unwrap())
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa_key(),
        p256: p256_key(),
        p384: p384_key(),
        ps256: PS256KeyPair::generate(2048).unwrap().with_key_id("ps"),
        ed: SigningKey::generate(Algorithm::EdDSA, "ed").unwrap(),
        attacker_rsa: rsa_key(),
        attacker_p256: p256_key(),
        attacker_p384: p384_key(),
    })
}

/// One issuer with every algorithm of the corpus, and one rule letting its subjects in.
pub fn bundle() -> Value {
    let k = keys();
    let ps = k.ps256.public_key().to_components();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    json!({
        "name": "hostcrypto-test",
        "version": "1",
        "issuers": [{
            "name": "prod",
            "issuer": ISS,
            "audiences": [AUD],
            "algorithms": ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"],
            "jwks": {"keys": [
                // No `alg`: the RSA key serves RS256, RS384 and RS512.
                k.rsa.jwk("rsa"), k.p256.jwk("p256"), k.p384.jwk("p384"),
                {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": b64(&ps.n), "e": b64(&ps.e)},
                k.ed.public_jwk(),
            ]},
            "clock_skew_seconds": 30
        }],
        "rules": [{
            "id": "all",
            "hosts": [HOST],
            "methods": ["GET"],
            "paths": [{"prefix": "/"}],
            "subjects": ["spiffe://prod.example/**"]
        }]
    })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn payload_with(now: u64, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut claims = json!({"iss": ISS, "sub": SUB, "aud": AUD, "iat": now, "exp": now + 300});
    if let Value::Object(map) = &mut claims {
        edit(map);
    }
    claims.to_string()
}

fn payload(now: u64) -> String {
    payload_with(now, |_| {})
}

/// `header.payload` (both JSON text) signed into a compact JWS by `sign`.
fn token(header: &str, payload: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let signed = format!("{}.{}", b64(header), b64(payload));
    let signature = sign(signed.as_bytes());
    format!("{signed}.{}", b64(signature))
}

fn flip_bit(mut bytes: Vec<u8>, index: usize) -> Vec<u8> {
    let i = index.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    bytes
}

/// Every token of the corpus, named, issued at `now` (unix seconds).
pub fn cases(now: u64) -> Vec<Case> {
    let k = keys();
    let mut cases = Vec::new();
    let mut add = |name: String, token: String| cases.push(Case { name, token });
    let host_algs: [(&str, &str, &RawKey, &RawKey); 5] = [
        ("RS256", "rsa", &k.rsa, &k.attacker_rsa),
        ("RS384", "rsa", &k.rsa, &k.attacker_rsa),
        ("RS512", "rsa", &k.rsa, &k.attacker_rsa),
        ("ES256", "p256", &k.p256, &k.attacker_p256),
        ("ES384", "p384", &k.p384, &k.attacker_p384),
    ];
    for (alg, kid, key, attacker) in host_algs {
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#);
        let signed = |header: &str, payload: &str| token(header, payload, |m| key.sign(alg, m));
        let valid = signed(&header, &payload(now));
        let (head, sig) = valid.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let with_sig = |s: &[u8]| format!("{head}.{}", b64(s));
        let ecdsa = alg.starts_with("ES");
        add(format!("{alg} valid"), valid.clone());
        for i in [0, sig.len() / 2, sig.len() - 1] {
            add(format!("{alg} signature bit {i} flipped"), with_sig(&flip_bit(sig.clone(), i)));
        }
        add(format!("{alg} signature truncated"), with_sig(&sig[..sig.len() - 1]));
        add(format!("{alg} signature with a zero byte in front"), with_sig(&[&[0u8][..], &sig].concat()));
        add(format!("{alg} signature with a zero byte appended"), with_sig(&[&sig[..], &[0u8]].concat()));
        add(format!("{alg} signature all zero"), with_sig(&vec![0u8; sig.len()]));
        add(format!("{alg} signature all ones"), with_sig(&vec![0xffu8; sig.len()]));
        add(format!("{alg} signature of another payload"), {
            let other = signed(
                &header,
                &payload_with(now, |c| _ = c.insert("sub".into(), "spiffe://prod.example/x".into())),
            );
            with_sig(&URL_SAFE_NO_PAD.decode(other.rsplit_once('.').unwrap().1).unwrap())
        });
        add(
            format!("{alg} signed by an untrusted key with a trusted kid"),
            token(&header, &payload(now), |m| attacker.sign(alg, m)),
        );
        add(format!("{alg} no kid"), signed(&format!(r#"{{"alg":"{alg}"}}"#), &payload(now)));
        add(
            format!("{alg} unknown kid"),
            signed(&format!(r#"{{"alg":"{alg}","kid":"nope"}}"#), &payload(now)),
        );
        if ecdsa {
            let n = sig.len() / 2;
            add(format!("{alg} r = s = 0"), with_sig(&vec![0u8; 2 * n]));
            add(format!("{alg} r = 0"), with_sig(&[&vec![0u8; n][..], &sig[n..]].concat()));
            add(format!("{alg} s = 0"), with_sig(&[&sig[..n], &vec![0u8; n][..]].concat()));
            add(format!("{alg} s out of range"), with_sig(&[&sig[..n], &vec![0xffu8; n][..]].concat()));
            add(format!("{alg} r and s swapped"), with_sig(&[&sig[n..], &sig[..n]].concat()));
            add(format!("{alg} DER-encoded signature"), token(&header, &payload(now), |m| key.sign_der(m)));
            add(format!("{alg} high-S signature"), token(&header, &payload(now), |m| key.sign_high_s(m)));
        }
        // Header rules (they stay in Rust on both paths).
        for (what, extra) in [
            ("typ JWT", r#","typ":"JWT""#),
            ("typ at+jwt", r#","typ":"at+jwt""#),
            ("typ not a JWT", r#","typ":"text/plain""#),
            ("empty crit", r#","crit":[]"#),
            ("unknown crit", r#","crit":["exp"]"#),
            ("cty JWT", r#","cty":"JWT""#),
            ("jwk object in header", r#","jwk":{"kty":"EC"}"#),
            ("salt not base64url", r#","salt":"!!""#),
            ("salt base64url", r#","salt":"AAAA""#),
        ] {
            let header = format!(r#"{{"alg":"{alg}","kid":"{kid}"{extra}}}"#);
            add(format!("{alg} header {what}"), signed(&header, &payload(now)));
        }
        // Claims (checked after the signature on both paths).
        let claim_cases: [(&str, String); 9] = [
            ("expired", payload_with(now, |c| _ = c.insert("exp".into(), json!(now - 3600)))),
            ("expired within skew", payload_with(now, |c| _ = c.insert("exp".into(), json!(now - 10)))),
            ("nbf in the future", payload_with(now, |c| _ = c.insert("nbf".into(), json!(now + 3600)))),
            ("issued in the future", payload_with(now, |c| _ = c.insert("iat".into(), json!(now + 3600)))),
            ("wrong audience", payload_with(now, |c| _ = c.insert("aud".into(), json!("other")))),
            ("audience list", payload_with(now, |c| _ = c.insert("aud".into(), json!(["other", AUD])))),
            ("no audience", payload_with(now, |c| _ = c.remove("aud"))),
            ("no expiry", payload_with(now, |c| _ = c.remove("exp"))),
            ("no subject", payload_with(now, |c| _ = c.remove("sub"))),
        ];
        for (what, payload) in claim_cases {
            add(format!("{alg} claims {what}"), signed(&header, &payload));
        }
    }
    // The other key's algorithm in the header: the key decides, the token cannot switch.
    add(
        "ES384 header on an ES256 signature".into(),
        token(r#"{"alg":"ES384","kid":"p256"}"#, &payload(now), |m| k.p256.sign("ES256", m)),
    );
    add(
        "RS256 header on an RS512 signature".into(),
        token(r#"{"alg":"RS256","kid":"rsa"}"#, &payload(now), |m| k.rsa.sign("RS512", m)),
    );
    // Algorithms the host does not check: the pure-Rust path, in both setups.
    let spec = TokenSpec::new(ISS, SUB, AUD, now, 300);
    let ed = k.ed.sign(&spec).unwrap();
    add("EdDSA valid".into(), ed.clone());
    add("EdDSA signature bit flipped".into(), {
        let (head, sig) = ed.rsplit_once('.').unwrap();
        format!("{head}.{}", b64(flip_bit(URL_SAFE_NO_PAD.decode(sig).unwrap(), 7)))
    });
    let ps = jwt_simple::prelude::RSAKeyPairLike::sign(
        &k.ps256,
        jwt_simple::prelude::JWTClaims {
            issued_at: Some(jwt_simple::prelude::UnixTimeStamp::from_secs(now)),
            expires_at: Some(jwt_simple::prelude::UnixTimeStamp::from_secs(now + 300)),
            invalid_before: None,
            issuer: Some(ISS.into()),
            subject: Some(SUB.into()),
            audiences: Some(jwt_simple::prelude::Audiences::AsString(AUD.into())),
            jwt_id: None,
            nonce: None,
            custom: jwt_simple::prelude::NoCustomClaims {},
        },
    )
    .unwrap();
    add("PS256 valid".into(), ps.clone());
    add("PS256 signature bit flipped".into(), {
        let (head, sig) = ps.rsplit_once('.').unwrap();
        format!("{head}.{}", b64(flip_bit(URL_SAFE_NO_PAD.decode(sig).unwrap(), 100)))
    });
    cases
}

/// Header members of every type jwt-simple's header parse meets, and claims at the edges of its
/// claim parse and checks, for one PKCS#1 v1.5 and one ECDSA algorithm (host-checked) and for EdDSA
/// (ed25519-dalek): tests/hostcrypto.rs holds every path to jwt-simple's answer. Not in [`cases`]:
/// these test meshward's Rust, not the host's signature check, so Envoy need not run them.
#[allow(dead_code, reason = "tests/hostcrypto.rs uses it, tests/e2e_hostcrypto.rs does not")]
pub fn edge_cases(now: u64) -> Vec<Case> {
    let k = keys();
    let mut cases = Vec::new();
    let pad = |n: usize| format!(r#","pad":"{}""#, "x".repeat(n));
    let header_members: Vec<(String, String)> = [
        ("x5c number", r#","x5c":5"#),
        ("x5c strings", r#","x5c":["MIIB","MIIC"]"#),
        ("x5c empty", r#","x5c":[]"#),
        ("x5c list of numbers", r#","x5c":[1]"#),
        ("x5c null", r#","x5c":null"#),
        ("x5c string", r#","x5c":"MIIB""#),
        ("jwk string", r#","jwk":"x""#),
        ("jwk null", r#","jwk":null"#),
        ("jku number", r#","jku":5"#),
        ("jku string", r#","jku":"https://keys.example""#),
        ("x5u object", r#","x5u":{}"#),
        ("x5t true", r#","x5t":true"#),
        ("x5t string", r#","x5t":"abc""#),
        ("x5t#S256 list", r#","x5t#S256":[]"#),
        ("x5t#S256 null", r#","x5t#S256":null"#),
        ("salt number", r#","salt":3"#),
        ("salt null", r#","salt":null"#),
        ("salt empty", r#","salt":"""#),
        ("salt stray bits", r#","salt":"AB""#),
        ("salt one character", r#","salt":"AAAAA""#),
        ("salt padded", r#","salt":"AA==""#),
        ("salt standard alphabet", r#","salt":"a+/b""#),
        ("typ number", r#","typ":5"#),
        ("typ null", r#","typ":null"#),
        ("typ lower-case jwt", r#","typ":"jwt""#),
        ("typ application/example+jwt", r#","typ":"application/example+jwt""#),
        ("typ JOSE", r#","typ":"JOSE""#),
        ("crit null", r#","crit":null"#),
        ("crit list of numbers", r#","crit":[5]"#),
        ("cty null", r#","cty":null"#),
        ("cty text", r#","cty":"text/plain""#),
        ("unknown member object", r#","ext":{"a":[1,null]}"#),
        ("unknown member null", r#","ext":null"#),
        ("kid twice", r#","kid":"other""#),
    ]
    .into_iter()
    .map(|(what, extra)| (what.to_string(), extra.to_string()))
    .chain([("2 KB".to_string(), pad(2100)), ("7 KB".to_string(), pad(7000))])
    .collect();
    let raw = |edit: &str| {
        // The standard payload with `edit` spliced in as JSON text (numbers as written).
        let base = payload(now);
        format!("{},{edit}}}", base.strip_suffix('}').unwrap())
    };
    let without = |name: &str, edit: &str| {
        let mut claims: serde_json::Map<String, Value> = serde_json::from_str(&payload(now)).unwrap();
        claims.remove(name);
        let text = Value::Object(claims).to_string();
        if edit.is_empty() {
            text
        } else {
            format!("{},{edit}}}", text.strip_suffix('}').unwrap())
        }
    };
    let skew = 30;
    let claims: Vec<(String, String)> = vec![
        ("exp fractional".into(), without("exp", &format!(r#""exp":{}.5"#, now + 300))),
        ("exp with an exponent".into(), without("exp", &format!(r#""exp":{}e0"#, now + 300))),
        ("exp at now - skew".into(), without("exp", &format!(r#""exp":{}"#, now - skew))),
        ("exp at now - skew - 1".into(), without("exp", &format!(r#""exp":{}"#, now - skew - 1))),
        ("exp at now - skew - 0.5".into(), without("exp", &format!(r#""exp":{}.5"#, now - skew - 1))),
        ("exp at now - skew + 0.5".into(), without("exp", &format!(r#""exp":{}.5"#, now - skew))),
        ("exp zero".into(), without("exp", r#""exp":0"#)),
        ("exp after 2106".into(), without("exp", r#""exp":5000000000"#)),
        ("exp after 2106 fractional".into(), without("exp", r#""exp":5000000000.25"#)),
        ("exp negative".into(), without("exp", r#""exp":-1"#)),
        ("exp negative fractional".into(), without("exp", r#""exp":-0.5"#)),
        ("exp minus zero".into(), without("exp", r#""exp":-0"#)),
        ("exp string".into(), without("exp", &format!(r#""exp":"{}""#, now + 300))),
        ("exp null".into(), without("exp", r#""exp":null"#)),
        ("iat fractional".into(), without("iat", &format!(r#""iat":{}.5"#, now))),
        ("iat at now + skew".into(), without("iat", &format!(r#""iat":{}"#, now + skew))),
        ("iat at now + skew + 1".into(), without("iat", &format!(r#""iat":{}"#, now + skew + 1))),
        ("iat at now + skew + 0.5".into(), without("iat", &format!(r#""iat":{}.5"#, now + skew))),
        ("iat absent".into(), without("iat", "")),
        ("nbf at now + skew".into(), raw(&format!(r#""nbf":{}"#, now + skew))),
        ("nbf at now + skew + 1".into(), raw(&format!(r#""nbf":{}"#, now + skew + 1))),
        ("nbf at now + skew + 0.5".into(), raw(&format!(r#""nbf":{}.5"#, now + skew))),
        ("nbf fractional past".into(), raw(&format!(r#""nbf":{}.25"#, now - 100))),
        ("nbf object".into(), raw(r#""nbf":{}"#)),
        ("aud list".into(), without("aud", &format!(r#""aud":["{AUD}"]"#))),
        ("aud list twice".into(), without("aud", &format!(r#""aud":["{AUD}","{AUD}"]"#))),
        ("aud list of others".into(), without("aud", r#""aud":["a","b"]"#)),
        ("aud empty list".into(), without("aud", r#""aud":[]"#)),
        ("aud list with a number".into(), without("aud", &format!(r#""aud":["{AUD}",5]"#))),
        ("aud number".into(), without("aud", r#""aud":5"#)),
        ("aud null".into(), without("aud", r#""aud":null"#)),
        ("aud object".into(), without("aud", r#""aud":{}"#)),
        ("aud empty string".into(), without("aud", r#""aud":"""#)),
        ("sub null".into(), without("sub", r#""sub":null"#)),
        ("sub number".into(), without("sub", r#""sub":5"#)),
        ("sub empty".into(), without("sub", r#""sub":"""#)),
        ("jti string".into(), raw(r#""jti":"id-1""#)),
        ("jti number".into(), raw(r#""jti":5"#)),
        ("nonce string".into(), raw(r#""nonce":"n""#)),
        ("nonce number".into(), raw(r#""nonce":[]"#)),
        ("iss null".into(), without("iss", r#""iss":null"#)),
        ("unknown claims".into(), raw(r#""x":{"y":[1.5,null,true]},"z":-3"#)),
    ];
    let algs: [(&str, &str, Option<&RawKey>); 3] =
        [("RS256", "rsa", Some(&k.rsa)), ("ES256", "p256", Some(&k.p256)), ("EdDSA", "ed", None)];
    for (alg, kid, key) in algs {
        let sign = |header: &str, payload: &str| match key {
            Some(key) => token(header, payload, |m| key.sign(alg, m)),
            None => k.ed.sign_raw(header, payload).unwrap(),
        };
        for (what, extra) in &header_members {
            let header = format!(r#"{{"alg":"{alg}","kid":"{kid}"{extra}}}"#);
            cases.push(Case { name: format!("{alg} header {what}"), token: sign(&header, &payload(now)) });
        }
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#);
        for (what, payload) in &claims {
            cases.push(Case { name: format!("{alg} claims {what}"), token: sign(&header, payload) });
        }
    }
    cases
}
