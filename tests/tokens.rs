#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Hostile tokens and requests against the public API, one group per item of
//! `shared/spec/security-checklist.md` (the number is in each test's doc comment).
//!
//! Every key and token is generated here; `NOW` is fixed, never the wall clock. Each test asserts the
//! exact `Reason` a caller would see, so a regression that changes how something is refused (or
//! starts accepting it) fails.

use std::collections::HashSet;
use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jwt_simple::prelude::{
    Audiences, ES256KeyPair, HS256Key, JWTClaims, MACLike, NoCustomClaims, PS256KeyPair, RSAKeyPairLike,
    UnixTimeStamp,
};
use meshward::cli::dev::{SigningKey, TokenSpec};
use meshward::token::{bearer_token, Algorithm};
use meshward::{BundleConfig, Decision, Engine, HttpRequest, Reason, VerifiedToken};
use serde_json::{json, Map, Value};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.prod.example";
const OTHER_ISS: &str = "https://issuer.other.example";
const AUD: &str = "meshward";
const SUB: &str = "spiffe://prod.example/ns/app/sa/web";
const OPS_SUB: &str = "spiffe://prod.example/ns/ops/sa/admin";
const HOST: &str = "api.example.com";
const SKEW: u64 = 30;
const ED_HEADER: &str = r#"{"alg":"EdDSA","kid":"ed-1"}"#;

// ---------------------------------------------------------------------------------------------
// Keys, engines and token helpers
// ---------------------------------------------------------------------------------------------

struct Keys {
    /// Trusted keys of the `prod` issuer.
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
    ed2: SigningKey,
    /// A trusted ES256 key published without `kid`.
    ec_nokid: SigningKey,
    /// The key of the `other` issuer.
    other_ed: SigningKey,
    /// Keys nobody trusts, carrying the kids of trusted keys.
    attacker_rsa: SigningKey,
    attacker_ec: SigningKey,
    attacker_ed: SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: SigningKey::generate(Algorithm::RS256, "rsa-1").unwrap(),
        ec: SigningKey::generate(Algorithm::ES256, "ec-1").unwrap(),
        ed: SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap(),
        ed2: SigningKey::generate(Algorithm::EdDSA, "ed-2").unwrap(),
        ec_nokid: SigningKey::ES256(ES256KeyPair::generate()),
        other_ed: SigningKey::generate(Algorithm::EdDSA, "other-1").unwrap(),
        attacker_rsa: SigningKey::generate(Algorithm::RS256, "rsa-1").unwrap(),
        attacker_ec: SigningKey::generate(Algorithm::ES256, "ec-1").unwrap(),
        attacker_ed: SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap(),
    })
}

/// The bundle every test starts from: a `prod` issuer with RS256, ES256 and EdDSA keys, an `other`
/// issuer with one EdDSA key, and two GET rules (`/public` prefix for anyone in the trust domain,
/// `/admin` exactly for ops).
fn bundle() -> Value {
    let k = keys();
    json!({
        "name": "tokens-test",
        "version": "1",
        "issuers": [
            {
                "name": "prod",
                "issuer": ISS,
                "audiences": [AUD, "registry"],
                "algorithms": ["RS256", "ES256", "EdDSA"],
                "jwks": {"keys": [
                    k.rsa.public_jwk(), k.ec.public_jwk(), k.ed.public_jwk(), k.ed2.public_jwk(),
                    k.ec_nokid.public_jwk(),
                ]},
                "clock_skew_seconds": SKEW
            },
            {
                "name": "other",
                "issuer": OTHER_ISS,
                "audiences": [AUD],
                "algorithms": ["EdDSA"],
                "jwks": {"keys": [k.other_ed.public_jwk()]}
            }
        ],
        "rules": [
            {
                "id": "public-read",
                "hosts": [HOST],
                "methods": ["GET"],
                "paths": [{"prefix": "/public"}],
                "subjects": ["spiffe://prod.example/**"]
            },
            {
                "id": "admin-read",
                "hosts": [HOST],
                "methods": ["GET"],
                "paths": [{"exact": "/admin"}],
                "subjects": ["spiffe://prod.example/ns/ops/**"]
            }
        ]
    })
}

fn compile(bundle: &Value) -> (Engine, Vec<meshward::CompileWarning>) {
    BundleConfig::from_json(&serde_json::to_vec(bundle).unwrap()).unwrap().compile().unwrap()
}

/// The engine of the standard bundle. An engine is not `Sync` (it owns the token cache), so each test
/// thread compiles its own, once, and keeps it for the life of the test binary.
fn engine() -> &'static Engine {
    thread_local! {
        static ENGINE: &'static Engine = {
            let (engine, warnings) = compile(&bundle());
            assert!(warnings.is_empty(), "{warnings:?}");
            Box::leak(Box::new(engine))
        };
    }
    ENGINE.with(|engine| *engine)
}

/// A fresh engine from the standard bundle after `edit`.
fn engine_with(edit: impl FnOnce(&mut Value)) -> Engine {
    let mut b = bundle();
    edit(&mut b);
    compile(&b).0
}

fn spec() -> TokenSpec {
    TokenSpec::new(ISS, SUB, AUD, NOW, 300)
}

fn sign(key: &SigningKey, spec: &TokenSpec) -> String {
    key.sign(spec).unwrap()
}

fn verify(token: &str) -> Result<VerifiedToken, Reason> {
    engine().issuers().verify(token, NOW)
}

/// The reason `token` is refused; fails the test if it is accepted.
#[track_caller]
fn rejected(token: &str) -> Reason {
    match verify(token) {
        Ok(v) => panic!("token was accepted ({}): {token}", v.subject),
        Err(reason) => reason,
    }
}

#[track_caller]
fn accepted(token: &str) -> VerifiedToken {
    match verify(token) {
        Ok(v) => v,
        Err(reason) => panic!("token was refused with {reason:?}: {token}"),
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).unwrap()
}

fn parts(token: &str) -> (String, String, String) {
    let v: Vec<&str> = token.split('.').collect();
    assert_eq!(v.len(), 3, "{token}");
    (v[0].to_owned(), v[1].to_owned(), v[2].to_owned())
}

fn with_signature(token: &str, signature: &[u8]) -> String {
    let (h, p, _) = parts(token);
    format!("{h}.{p}.{}", b64(signature))
}

/// The default valid claims as a JSON object.
fn claims() -> Map<String, Value> {
    let Value::Object(map) = json!({"iss": ISS, "sub": SUB, "aud": AUD, "iat": NOW, "exp": NOW + 300}) else {
        unreachable!()
    };
    map
}

/// The default claims with `name` set to `value` (`Value::Null` here means "remove it").
fn payload_set(name: &str, value: Value) -> String {
    let mut map = claims();
    if value.is_null() {
        map.remove(name);
    } else {
        map.insert(name.into(), value);
    }
    Value::Object(map).to_string()
}

/// The default claims with `name` present as an explicit JSON `null`.
fn payload_null(name: &str) -> String {
    payload_set(name, Value::Null).replacen('{', &format!(r#"{{"{name}":null,"#), 1)
}

fn payload() -> String {
    Value::Object(claims()).to_string()
}

/// Signs header and payload text exactly as given with the trusted `ed-1` key.
fn raw(header: &str, payload: &str) -> String {
    keys().ed.sign_raw(header, payload).unwrap()
}

/// A request to `HOST` with the given method, path and bearer token.
fn decide(method: &str, path: &str, token: &str) -> Decision {
    let auth = format!("Bearer {token}");
    let request = HttpRequest {
        method: Some(method),
        authority: Some(HOST),
        path: Some(path),
        authorization: vec![auth.as_str()],
        ..HttpRequest::default()
    };
    engine().authorize(&request, NOW).decision
}

fn ed_token() -> String {
    sign(&keys().ed, &spec())
}

fn ops_token() -> String {
    sign(&keys().ed, &TokenSpec { subject: Some(OPS_SUB.into()), ..spec() })
}

#[track_caller]
fn assert_allowed(decision: &Decision, rule: &str) {
    assert_eq!(decision, &Decision::allow(rule));
}

#[track_caller]
fn assert_denied(decision: &Decision, reason: Reason) {
    assert!(!decision.allowed, "{decision:?}");
    assert_eq!(decision.reason, reason, "{decision:?}");
}

// ---------------------------------------------------------------------------------------------
// Baselines: the crafted tokens below differ from these in one respect only
// ---------------------------------------------------------------------------------------------

#[test]
fn baseline_tokens_of_every_algorithm_verify() {
    let k = keys();
    for key in [&k.rsa, &k.ec, &k.ed, &k.ed2, &k.ec_nokid] {
        let v = accepted(&sign(key, &spec()));
        assert_eq!(v.issuer_name, "prod");
        assert_eq!(v.issuer, ISS);
        assert_eq!(v.subject, SUB);
        assert_eq!(v.expires_at, Some(NOW + 300));
        assert_eq!(v.issued_at, Some(NOW));
    }
    let spec = TokenSpec::new(OTHER_ISS, SUB, AUD, NOW, 300);
    assert_eq!(accepted(&sign(&k.other_ed, &spec)).issuer_name, "other");
    // The hand-built header/payload used by the crafted tokens is valid as such.
    assert_eq!(accepted(&raw(ED_HEADER, &payload())).subject, SUB);
    assert_allowed(&decide("GET", "/public/x", &ed_token()), "public-read");
    assert_allowed(&decide("GET", "/admin", &ops_token()), "admin-read");
}

// ---------------------------------------------------------------------------------------------
// 1-7: token structure and encoding
// ---------------------------------------------------------------------------------------------

/// Checklist 1: Empty token, no dots, 2 segments, 4 or more segments.
#[test]
fn wrong_segment_counts_are_malformed() {
    let (h, p, s) = parts(&ed_token());
    for token in [
        String::new(),
        "abc".into(),
        h.clone(),
        format!("{h}{p}{s}"),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}.{p}.{s}.x"),
        format!("{h}.{h}.{p}.{s}"),
        format!("{h}.{p}.{s}.{p}.{s}"),
        ".".into(),
        "..".into(),
        "...".into(),
        "....".into(),
    ] {
        assert_eq!(rejected(&token), Reason::TokenMalformed, "{token:?}");
    }
}

/// Checklist 1, 20: A 5-segment JWE (and a JWE header on a 3-segment token) is refused.
#[test]
fn jwe_is_malformed() {
    let header = b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"rsa-1"}"#);
    let jwe =
        format!("{header}.{}.{}.{}.{}", b64([1u8; 256]), b64([2u8; 12]), b64([3u8; 40]), b64([4u8; 16]));
    assert_eq!(rejected(&jwe), Reason::TokenMalformed);
    // Compact JWE with the (legal) empty encrypted key of `dir`.
    let dir = format!(
        "{}..{}.{}.{}",
        b64(r#"{"alg":"dir","enc":"A256GCM"}"#),
        b64([2u8; 12]),
        b64([3u8; 40]),
        b64([4u8; 16])
    );
    assert_eq!(rejected(&dir), Reason::TokenMalformed);
    // A JWE header squeezed into three segments names no signature algorithm we accept.
    let three = raw(r#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"ed-1"}"#, &payload());
    assert_eq!(rejected(&three), Reason::TokenAlgorithmNotAllowed);
}

/// Checklist 2: Empty segments.
#[test]
fn empty_segments_are_malformed() {
    let (h, p, s) = parts(&ed_token());
    for token in [
        format!("{h}.{p}.{s}."),
        format!("{h}..{p}.{s}"),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{h}.{p}."),
        format!("{h}.."),
        format!("..{s}"),
    ] {
        assert_eq!(rejected(&token), Reason::TokenMalformed, "{token:?}");
    }
}

/// A token whose three segments all have a length that is not a multiple of 4 (so padding and
/// trailing bits exist), and whose segments use `-` or `_` (so the alphabets differ).
fn awkward_token() -> String {
    // `???` and `>>>` encode to `Pz8_` and `Pj4-` in base64url, `Pz8/` and `Pj4+` in base64.
    for n in 0..1000u32 {
        let header =
            format!(r#"{{"alg":"EdDSA","kid":"ed-1","x":"???>>>{}"}}"#, "a".repeat((n % 3) as usize));
        let payload = payload_set("x", json!(format!("???>>>{n}")));
        let token = raw(&header, &payload);
        let (h, p, s) = parts(&token);
        let awkward = |seg: &str| !seg.len().is_multiple_of(4) && seg.contains(['-', '_']);
        if awkward(&h) && awkward(&p) && awkward(&s) {
            accepted(&token);
            return token;
        }
    }
    panic!("no awkward token found");
}

/// Re-encodes one segment (0, 1 or 2) of `token` with `f`.
fn replace_segment(token: &str, index: usize, f: impl FnOnce(&str) -> String) -> String {
    let mut v: Vec<String> = token.split('.').map(str::to_owned).collect();
    v[index] = f(&v[index]);
    v.join(".")
}

/// Checklist 3: `=` padding.
#[test]
fn padded_base64_is_malformed() {
    let token = awkward_token();
    for i in 0..3 {
        let padded = replace_segment(&token, i, |s| {
            let pad = (4 - s.len() % 4) % 4;
            assert!(pad > 0);
            format!("{s}{}", "=".repeat(pad))
        });
        assert_eq!(rejected(&padded), Reason::TokenMalformed, "segment {i}");
        // A single stray `=` too.
        let one = replace_segment(&token, i, |s| format!("{s}="));
        assert_eq!(rejected(&one), Reason::TokenMalformed, "segment {i}");
    }
}

/// Checklist 3: The standard alphabet (`+`, `/`) instead of base64url.
#[test]
fn standard_alphabet_is_malformed() {
    let token = awkward_token();
    for i in 0..3 {
        let standard = replace_segment(&token, i, |s| STANDARD_NO_PAD.encode(unb64(s)));
        assert_ne!(standard, token);
        assert!(standard.contains(['+', '/']));
        assert_eq!(rejected(&standard), Reason::TokenMalformed, "segment {i}");
    }
}

/// Checklist 3: Whitespace inside or around a segment.
#[test]
fn whitespace_in_segments_is_malformed() {
    let token = awkward_token();
    for ws in [" ", "\t", "\n", "\r\n", "\u{b}", "\u{c}", "\u{a0}"] {
        for i in 0..3 {
            let middle = replace_segment(&token, i, |s| {
                let mid = s.len() / 2 / 4 * 4;
                format!("{}{ws}{}", &s[..mid], &s[mid..])
            });
            assert_eq!(rejected(&middle), Reason::TokenMalformed, "{ws:?} in segment {i}");
            let end = replace_segment(&token, i, |s| format!("{s}{ws}"));
            assert_eq!(rejected(&end), Reason::TokenMalformed, "{ws:?} after segment {i}");
            let start = replace_segment(&token, i, |s| format!("{ws}{s}"));
            assert_eq!(rejected(&start), Reason::TokenMalformed, "{ws:?} before segment {i}");
        }
    }
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Checklist 3: Non-zero trailing bits: the last character of a segment whose length is 2 or 3 mod 4 carries
/// unused bits; a lenient decoder yields the same bytes when they are set.
#[test]
fn non_zero_trailing_bits_are_malformed() {
    let token = awkward_token();
    for i in 0..3 {
        let (seg_len, unused_bits) = {
            let seg = token.split('.').nth(i).unwrap();
            (seg.len(), if seg.len() % 4 == 2 { 4 } else { 2 })
        };
        for bit in 0..unused_bits {
            let changed = replace_segment(&token, i, |s| {
                let last = s.as_bytes()[seg_len - 1];
                let value = B64URL.iter().position(|&c| c == last).unwrap();
                let other = B64URL[value ^ (1 << bit)] as char;
                format!("{}{other}", &s[..seg_len - 1])
            });
            assert_eq!(rejected(&changed), Reason::TokenMalformed, "segment {i}, bit {bit}");
        }
    }
}

/// Checklist 3: A segment whose length is 1 mod 4 cannot be base64 at all.
#[test]
fn length_one_mod_four_is_malformed() {
    let token = ed_token();
    for i in 0..3 {
        let bad = replace_segment(&token, i, |s| {
            let cut = s.len() - s.len() % 4; // a multiple of 4, plus one character
            format!("{}A", &s[..cut])
        });
        assert_eq!(rejected(&bad), Reason::TokenMalformed, "segment {i}");
    }
}

/// Checklist 4: Header or payload valid JSON but not an object.
#[test]
fn header_or_payload_not_an_object_is_malformed() {
    for not_object in ["[]", r#"["alg","EdDSA"]"#, "\"EdDSA\"", "1", "null", "true", r#"[{"alg":"EdDSA"}]"#] {
        assert_eq!(rejected(&raw(not_object, &payload())), Reason::TokenMalformed, "header {not_object}");
        assert_eq!(rejected(&raw(ED_HEADER, not_object)), Reason::TokenMalformed, "payload {not_object}");
    }
}

/// Checklist 4: Not JSON: trailing data, two objects, comments, a BOM, single quotes, lone surrogates.
#[test]
fn header_or_payload_not_json_is_malformed() {
    let p = payload();
    for bad in [
        format!("{ED_HEADER} x"),
        format!("{ED_HEADER}{{}}"),
        format!("{ED_HEADER},"),
        format!("\u{feff}{ED_HEADER}"),
        r#"{'alg':'EdDSA','kid':'ed-1'}"#.into(),
        r#"{"alg":"EdDSA","kid":"ed-1",}"#.into(),
        r#"{"alg":"EdDSA",/*c*/"kid":"ed-1"}"#.into(),
        r#"{"alg":"EdDSA","kid":"ed-1\ud800"}"#.into(),
        r#"{"alg":"EdDSA","kid":"ed-1"#.into(),
        String::new(),
    ] {
        assert_eq!(rejected(&raw(&bad, &p)), Reason::TokenMalformed, "header {bad:?}");
    }
    for bad in [format!("{p} x"), format!("{p}{{}}"), format!("\u{feff}{p}"), p.replacen('}', ",}", 1)] {
        assert_eq!(rejected(&raw(ED_HEADER, &bad)), Reason::TokenMalformed, "payload {bad:?}");
    }
}

/// Checklist 4: Not UTF-8 (invalid bytes, overlong encodings, UTF-16, Latin-1 text).
#[test]
fn header_or_payload_not_utf8_is_malformed() {
    let (h, p, s) = parts(&ed_token());
    let header = ED_HEADER.as_bytes();
    let payload = payload().into_bytes();
    let utf16 = |text: &[u8]| -> Vec<u8> { text.iter().flat_map(|&b| [b, 0]).collect() };
    let mut invalid_header: Vec<u8> = br#"{"alg":"EdDSA","kid":"ed-1","x":""#.to_vec();
    invalid_header.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    let mut overlong = br#"{"alg":"EdDSA","kid":"ed-1","x":""#.to_vec();
    overlong.extend_from_slice(&[0xc0, 0xaf, b'"', b'}']);
    let mut latin1 = payload.clone();
    latin1.splice(1..1, br#""n":"caf"#.iter().copied().chain([0xe9, b'"', b',']));
    for bad in [invalid_header, overlong, utf16(header)] {
        assert_eq!(rejected(&format!("{}.{p}.{s}", b64(&bad))), Reason::TokenMalformed);
    }
    for bad in [latin1, utf16(&payload), [&payload[..], &[0x80]].concat()] {
        assert_eq!(rejected(&format!("{h}.{}.{s}", b64(&bad))), Reason::TokenMalformed);
    }
}

/// Checklist 4: Nesting far beyond any sane depth is refused without exhausting the stack.
#[test]
fn deeply_nested_json_is_malformed() {
    for depth in [200, 2000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let header = format!(r#"{{"alg":"EdDSA","kid":"ed-1","x":{nested}}}"#);
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenMalformed, "header depth {depth}");
        let payload = payload_set("x", Value::Null).replacen('{', &format!(r#"{{"x":{nested},"#), 1);
        assert_eq!(rejected(&raw(ED_HEADER, &payload)), Reason::TokenMalformed, "payload depth {depth}");
    }
    // Moderate nesting in a custom claim is fine.
    let payload = payload().replacen('{', r#"{"x":[[[[{"a":[1]}]]]],"#, 1);
    accepted(&raw(ED_HEADER, &payload));
}

/// Checklist 5: Duplicate member names in the header: whichever one a parser keeps, the token is refused.
/// `{"alg":"none","alg":"EdDSA"}` would verify under "last one wins".
#[test]
fn duplicate_header_members_are_malformed() {
    for header in [
        r#"{"alg":"none","alg":"EdDSA","kid":"ed-1"}"#,
        r#"{"alg":"EdDSA","alg":"none","kid":"ed-1"}"#,
        r#"{"alg":"EdDSA","alg":"EdDSA","kid":"ed-1"}"#,
        r#"{"alg":"EdDSA","kid":"nope","kid":"ed-1"}"#,
        r#"{"alg":"EdDSA","kid":"ed-1","kid":"ed-1"}"#,
        r#"{"alg":"EdDSA","kid":"ed-1","crit":["x"],"crit":[]}"#,
        r#"{"alg":"EdDSA","kid":"ed-1","cty":"JWT","cty":"json"}"#,
        // The same name, spelled with an escape.
        r#"{"alg":"none","\u0061lg":"EdDSA","kid":"ed-1"}"#,
        r#"{"alg":"EdDSA","kid":"ed-1","x":{"a":1,"a":2}}"#,
    ] {
        assert_eq!(rejected(&raw(header, &payload())), Reason::TokenMalformed, "{header}");
    }
}

/// Checklist 5: Duplicate member names in the payload, at the top level and nested.
#[test]
fn duplicate_payload_members_are_malformed() {
    let p = payload();
    let dup = |member: &str| p.replacen('{', &format!("{{{member},"), 1);
    for payload in [
        dup(&format!(r#""sub":"{OPS_SUB}""#)),
        dup(r#""iss":"https://evil.example""#),
        dup(&format!(r#""iss":"{ISS}""#)),
        dup(r#""aud":"someone-else""#),
        dup(&format!(r#""exp":{}"#, NOW + 999_999)),
        dup(r#""s\u0075b":"spiffe://evil/x""#),
        dup(r#""role":"user","role":"admin""#),
        dup(r#""x":{"y":{"a":1,"a":1}}"#),
        dup(r#""x":[{"a":1,"a":1}]"#),
    ] {
        assert_eq!(rejected(&raw(ED_HEADER, &payload)), Reason::TokenMalformed, "{payload}");
    }
}

/// Checklist 6: `iss`, `sub`, `jti` that are not strings.
#[test]
fn string_claims_of_the_wrong_type_are_refused() {
    for name in ["iss", "sub", "jti"] {
        for value in [json!(1), json!(true), json!([SUB]), json!({"v": SUB}), json!(1.5)] {
            let token = raw(ED_HEADER, &payload_set(name, value.clone()));
            assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "{name}: {value}");
        }
        // An explicit null is not a string either (payload_set would remove the claim instead).
        let token = raw(ED_HEADER, &payload_null(name));
        assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "{name}: null");
    }
    // A `jti` that is a string is carried through.
    let v = accepted(&raw(ED_HEADER, &payload_set("jti", json!("t-1"))));
    assert_eq!(v.token_id.as_deref(), Some("t-1"));
}

/// Checklist 6: `exp`, `nbf`, `iat` that are not non-negative numbers of sane size (fractions are
/// valid NumericDates: `numeric_dates_with_a_fraction` below).
#[test]
fn time_claims_of_the_wrong_type_are_refused() {
    for name in ["exp", "nbf", "iat"] {
        for value in [
            json!((NOW + 300).to_string()),
            json!(-1),
            json!(-(NOW as i64)),
            json!(1e300),
            json!(u64::MAX),
            json!(253_402_300_800u64), // year 10000
            json!(true),
            json!([NOW + 300]),
            json!({"t": NOW + 300}),
        ] {
            let token = raw(ED_HEADER, &payload_set(name, value.clone()));
            assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "{name}: {value}");
        }
        let token = raw(ED_HEADER, &payload_null(name));
        let token_without = raw(ED_HEADER, &payload_set(name, Value::Null));
        assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "{name}: null");
        if name != "exp" {
            accepted(&token_without);
        }
    }
    // A 400-digit number is beyond what the JSON parser represents at all: malformed.
    let huge = payload().replacen('{', &format!(r#"{{"nbf":{},"#, "9".repeat(400)), 1);
    assert_eq!(rejected(&raw(ED_HEADER, &huge)), Reason::TokenMalformed);
}

/// Checklist 6: `aud` that is neither a string nor a non-empty array of strings.
#[test]
fn audience_of_the_wrong_type_is_refused() {
    for value in [
        json!(1),
        json!(true),
        json!([]),
        json!([1]),
        json!([AUD, 1]),
        json!([AUD, null]),
        json!([[AUD]]),
        json!({"aud": AUD}),
    ] {
        let token = raw(ED_HEADER, &payload_set("aud", value.clone()));
        assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "aud: {value}");
    }
    let token = raw(ED_HEADER, &payload_null("aud"));
    assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "aud: null");
}

/// Checklist 6: Registered claims that `jwt-simple` also types (`nonce`) are refused, not coerced.
#[test]
fn library_typed_claims_of_the_wrong_type_are_refused() {
    let token = raw(ED_HEADER, &payload_set("nonce", json!(5)));
    assert_eq!(rejected(&token), Reason::TokenClaimInvalid);
}

/// Checklist 6: `sub` missing or empty.
#[test]
fn missing_or_empty_subject_is_refused() {
    assert_eq!(rejected(&raw(ED_HEADER, &payload_set("sub", Value::Null))), Reason::TokenClaimInvalid);
    assert_eq!(rejected(&raw(ED_HEADER, &payload_set("sub", json!("")))), Reason::TokenClaimInvalid);
    assert_eq!(
        rejected(&sign(&keys().ec, &TokenSpec { subject: None, ..spec() })),
        Reason::TokenClaimInvalid
    );
}

/// The length of unpadded base64 for `n` bytes.
fn b64_len(n: usize) -> usize {
    (4 * n).div_ceil(3)
}

/// A valid token of exactly `len` bytes, padded with a header member and a claim.
fn token_of_length(len: usize) -> String {
    for header_pad in 0..4 {
        let header = format!(r#"{{"alg":"EdDSA","kid":"ed-1","x":"{}"}}"#, "h".repeat(header_pad));
        let base = payload_set("pad", json!("")).len();
        let fixed = b64_len(header.len()) + 2 + 86;
        for payload_pad in 0..len {
            let total = fixed + b64_len(base + payload_pad);
            if total == len {
                let token = raw(&header, &payload_set("pad", json!("p".repeat(payload_pad))));
                assert_eq!(token.len(), len);
                return token;
            }
            if total > len {
                break;
            }
        }
    }
    panic!("no token of length {len}");
}

/// Checklist 7: Larger than the configured maximum (default 8192 bytes): refused before any decoding.
#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let max = engine().settings().max_token_bytes;
    assert_eq!(max, 8192);
    let at_limit = token_of_length(max);
    accepted(&at_limit);
    let over = token_of_length(max + 1);
    assert_eq!(rejected(&over), Reason::TokenTooLarge);
    // Garbage that would be malformed is refused for its size first.
    for garbage in ["%".repeat(max + 1), ".".repeat(max + 1), "A".repeat(1 << 20)] {
        assert_eq!(rejected(&garbage), Reason::TokenTooLarge);
    }
    // Through the engine: a huge Authorization header.
    let decision = decide("GET", "/public/x", &"x".repeat(100_000));
    assert_denied(&decision, Reason::TokenTooLarge);
}

/// Checklist 7: A smaller configured maximum applies to otherwise valid tokens.
#[test]
fn configured_token_limit_is_enforced() {
    let engine = engine_with(|b| b["settings"] = json!({"max_token_bytes": 256}));
    let token = ed_token();
    assert!(token.len() > 256);
    assert_eq!(engine.issuers().verify(&token, NOW), Err(Reason::TokenTooLarge));
    let small =
        raw(r#"{"alg":"EdDSA"}"#, &format!(r#"{{"iss":"{ISS}","sub":"s","aud":"{AUD}","exp":{NOW}}}"#));
    assert!(small.len() <= 256, "{}", small.len());
    assert_eq!(engine.issuers().verify(&small, NOW).unwrap().subject, "s");
}

// ---------------------------------------------------------------------------------------------
// 8-14: algorithms and keys
// ---------------------------------------------------------------------------------------------

/// Checklist 8: `alg: none` in any letter case, with a real signature, or with a garbage one.
#[test]
fn alg_none_is_refused_in_any_case() {
    for alg in ["none", "NONE", "None", "nOnE", "none ", " none"] {
        let header = format!(r#"{{"alg":"{alg}","kid":"ed-1"}}"#);
        // Signed with a trusted key over exactly this header.
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenAlgorithmNotAllowed, "{alg:?}");
        // With some bytes as the "signature".
        let (h, p, _) = parts(&raw(&header, &payload()));
        let token = format!("{h}.{p}.{}", b64(b"x"));
        assert_eq!(rejected(&token), Reason::TokenAlgorithmNotAllowed, "{alg:?}");
        // Unsecured JWS proper: empty signature.
        assert_eq!(rejected(&format!("{h}.{p}.")), Reason::TokenMalformed, "{alg:?}");
        // Through the engine.
        assert_denied(
            &decide("GET", "/public/x", &raw(&header, &payload())),
            Reason::TokenAlgorithmNotAllowed,
        );
    }
    // Without a kid, too.
    let token = raw(r#"{"alg":"none"}"#, &payload());
    assert_eq!(rejected(&token), Reason::TokenAlgorithmNotAllowed);
}

/// Checklist 9: `alg` missing or not a string.
#[test]
fn alg_missing_or_not_a_string_is_malformed() {
    for header in [
        r#"{"kid":"ed-1"}"#,
        r#"{}"#,
        r#"{"alg":null,"kid":"ed-1"}"#,
        r#"{"alg":1,"kid":"ed-1"}"#,
        r#"{"alg":["EdDSA"],"kid":"ed-1"}"#,
        r#"{"alg":{"name":"EdDSA"},"kid":"ed-1"}"#,
        r#"{"alg":true,"kid":"ed-1"}"#,
        r#"{"ALG":"EdDSA","kid":"ed-1"}"#,
    ] {
        assert_eq!(rejected(&raw(header, &payload())), Reason::TokenMalformed, "{header}");
    }
}

/// Checklist 9: Algorithm names are exact; aliases, other cases and empty names are not allowed.
#[test]
fn alg_names_are_exact() {
    for alg in ["", "eddsa", "EDDSA", "Ed25519", "EdDSA ", "EdDSA\u{0}", "ed25519", "ES256K", "rs256"] {
        let header = json!({"alg": alg, "kid": "ed-1"}).to_string();
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenAlgorithmNotAllowed, "{alg:?}");
    }
}

/// Checklist 9, 11: An algorithm the library supports but the issuer does not allow.
#[test]
fn algorithm_outside_the_issuers_allow_list_is_refused() {
    // `other` allows EdDSA only: an ES256 or RS256 token claiming to be from it is refused early.
    let spec = TokenSpec::new(OTHER_ISS, SUB, AUD, NOW, 300);
    assert_eq!(rejected(&sign(&keys().ec, &spec)), Reason::TokenAlgorithmNotAllowed);
    assert_eq!(rejected(&sign(&keys().rsa, &spec)), Reason::TokenAlgorithmNotAllowed);
    // `prod` does not allow PS256, although its RSA key could verify one.
    assert_eq!(rejected(&ps256_token("rsa-1")), Reason::TokenAlgorithmNotAllowed);
}

/// Checklist 8, 10: A configuration cannot allow `none` or HMAC.
#[test]
fn configuration_refuses_none_and_hmac() {
    for alg in ["none", "HS256", "HS384", "HS512", "es256", "Ed25519"] {
        let mut b = bundle();
        b["issuers"][0]["algorithms"] = json!(["EdDSA", alg]);
        let err = BundleConfig::from_json(&serde_json::to_vec(&b).unwrap()).unwrap().compile().err().unwrap();
        assert_eq!(err.field, "issuers[0].algorithms[1]", "{alg}");
    }
}

/// The RSA public key in the encodings an attacker would try as an HMAC secret.
fn rsa_public_key_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let SigningKey::RS256(rsa) = &keys().rsa else { unreachable!() };
    let public = rsa.public_key();
    let pem = public.to_pem().unwrap();
    let jwk = keys().rsa.public_jwk();
    vec![
        ("PEM", pem.clone().into_bytes()),
        ("PEM without final newline", pem.trim_end().as_bytes().to_vec()),
        ("DER", public.to_der().unwrap()),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("JWK n", unb64(jwk["n"].as_str().unwrap())),
        ("JWK n base64", jwk["n"].as_str().unwrap().as_bytes().to_vec()),
    ]
}

/// Checklist 10: RS256 token re-signed as HS256 with the RSA public key as the HMAC secret.
#[test]
fn rs256_resigned_as_hs256_with_the_public_key_is_refused() {
    for (encoding, secret) in rsa_public_key_encodings() {
        // The library's own HS256 token, with the RSA key's kid.
        let hs = HS256Key::from_bytes(&secret).with_key_id("rsa-1");
        let claims = library_claims();
        let token = hs.authenticate(claims).unwrap();
        assert_eq!(rejected(&token), Reason::TokenAlgorithmNotAllowed, "{encoding}");
        assert_denied(&decide("GET", "/public/x", &token), Reason::TokenAlgorithmNotAllowed);
        // Re-signing the RS256 token's own header and payload, with alg changed to HS256 / HS512.
        for alg in ["HS256", "HS384", "HS512", "hs256"] {
            let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"}).to_string();
            let input = format!("{}.{}", b64(&header), b64(payload()));
            let tag = HS256Key::from_bytes(&secret).authentication_tag(input.as_bytes());
            let token = format!("{input}.{}", b64(tag));
            assert_eq!(rejected(&token), Reason::TokenAlgorithmNotAllowed, "{encoding} {alg}");
        }
    }
}

/// Checklist 10: An HMAC over the token made with the public key, but `alg` left at RS256: the RSA key verifies
/// it as an RSA signature, and it does not verify.
#[test]
fn hmac_signature_under_an_rs256_header_is_refused() {
    let rs = sign(&keys().rsa, &spec());
    let (h, p, _) = parts(&rs);
    for (encoding, secret) in rsa_public_key_encodings() {
        let tag = HS256Key::from_bytes(&secret).authentication_tag(format!("{h}.{p}").as_bytes());
        assert_eq!(rejected(&format!("{h}.{p}.{}", b64(tag))), Reason::TokenSignatureInvalid, "{encoding}");
    }
    // Same for the EC and Ed25519 keys.
    for key in [&keys().ec, &keys().ed] {
        let (h, p, _) = parts(&sign(key, &spec()));
        let jwk = key.public_jwk();
        for secret in [jwk.to_string().into_bytes(), unb64(jwk["x"].as_str().unwrap())] {
            let tag = HS256Key::from_bytes(&secret).authentication_tag(format!("{h}.{p}").as_bytes());
            let token = format!("{h}.{p}.{}", b64(&tag));
            let reason = rejected(&token);
            match key.algorithm() {
                Algorithm::ES256 => assert_eq!(reason, Reason::TokenSignatureInvalid),
                // 32 bytes are not an Ed25519 signature at all.
                _ => assert_eq!(reason, Reason::TokenMalformed),
            }
        }
    }
}

/// Checklist 10, 11: A symmetric (`oct`) JWK in the set is skipped with a warning, never used.
#[test]
fn symmetric_jwk_is_skipped() {
    let SigningKey::RS256(rsa) = &keys().rsa else { unreachable!() };
    let pem = rsa.public_key().to_pem().unwrap();
    let mut b = bundle();
    b["issuers"][0]["jwks"]["keys"] = json!([
        {"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": b64(pem.as_bytes())},
        keys().ed.public_jwk(),
    ]);
    let (engine, warnings) = compile(&b);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].to_string().starts_with("issuers[0].jwks.keys[0] skipped"), "{warnings:?}");
    let hs = HS256Key::from_bytes(pem.as_bytes()).with_key_id("hmac-1");
    let input = format!("{}.{}", b64(r#"{"alg":"HS256","kid":"hmac-1"}"#), b64(payload()));
    let token = format!("{input}.{}", b64(hs.authentication_tag(input.as_bytes())));
    assert_eq!(engine.issuers().verify(&token, NOW), Err(Reason::TokenAlgorithmNotAllowed));
    // With only the oct key the issuer has no usable key: the bundle is refused.
    b["issuers"][0]["jwks"]["keys"] = json!([{"kty": "oct", "kid": "hmac-1", "k": b64(pem.as_bytes())}]);
    let err = BundleConfig::from_json(&serde_json::to_vec(&b).unwrap()).unwrap().compile().err().unwrap();
    assert_eq!(err.field, "issuers[0].jwks");
}

/// The default claims, for tokens made by jwt-simple itself.
fn library_claims() -> JWTClaims<NoCustomClaims> {
    JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(NOW)),
        expires_at: Some(UnixTimeStamp::from_secs(NOW + 300)),
        invalid_before: None,
        issuer: Some(ISS.into()),
        subject: Some(SUB.into()),
        audiences: Some(Audiences::AsString(AUD.into())),
        jwt_id: None,
        nonce: None,
        custom: NoCustomClaims {},
    }
}

/// A PS256 token signed with the RSA key of `rsa`.
fn ps256_token(kid: &str) -> String {
    let SigningKey::RS256(rsa) = &keys().rsa else { unreachable!() };
    let ps = PS256KeyPair::from_der(&rsa.to_der().unwrap()).unwrap().with_key_id(kid);
    let claims = library_claims();
    ps.sign(claims).unwrap()
}

/// Checklist 11: The key for a token is one whose type and `alg` fit the token's `alg`; a kid pointing at a key
/// of another type, or a JWK `alg` other than the token's, finds no key.
#[test]
fn jwk_type_and_alg_must_fit_the_tokens_alg() {
    let engine = engine_with(|b| b["issuers"][0]["algorithms"] = json!(["RS256", "PS256", "ES256", "EdDSA"]));
    let verify = |t: &str| engine.issuers().verify(t, NOW);
    // The RSA JWK says `alg: RS256`: a PS256 token with its kid finds no key, though the same RSA key
    // produced it.
    assert_eq!(verify(&ps256_token("rsa-1")), Err(Reason::TokenKeyUnknown));
    // Without the JWK `alg`, the RSA key serves the allowed RSA algorithms (documented).
    let engine_no_alg = engine_with(|b| {
        b["issuers"][0]["algorithms"] = json!(["RS256", "PS256"]);
        let mut jwk = keys().rsa.public_jwk();
        jwk.as_object_mut().unwrap().remove("alg");
        b["issuers"][0]["jwks"]["keys"] = json!([jwk]);
    });
    assert_eq!(engine_no_alg.issuers().verify(&ps256_token("rsa-1"), NOW).unwrap().subject, SUB);
    // Tokens naming a key of another type.
    let k = keys();
    for (key, kid) in [(&k.rsa, "ec-1"), (&k.rsa, "ed-1"), (&k.ec, "rsa-1"), (&k.ec, "ed-1"), (&k.ed, "ec-1")]
    {
        let relabelled = match key {
            SigningKey::RS256(_) => sign_with_kid_rs256(kid),
            SigningKey::ES256(_) => sign_with_kid_es256(kid),
            SigningKey::EdDSA(_) => raw(&json!({"alg": "EdDSA", "kid": kid}).to_string(), &payload()),
            SigningKey::PS256(_) | SigningKey::ES384(_) => unreachable!("not in the list above"),
        };
        assert_eq!(verify(&relabelled), Err(Reason::TokenKeyUnknown), "{:?} as {kid}", key.algorithm());
    }
}

fn sign_with_kid_rs256(kid: &str) -> String {
    let SigningKey::RS256(rsa) = &keys().rsa else { unreachable!() };
    sign(&SigningKey::RS256(rsa.clone().with_key_id(kid)), &spec())
}

fn sign_with_kid_es256(kid: &str) -> String {
    let SigningKey::ES256(ec) = &keys().ec else { unreachable!() };
    sign(&SigningKey::ES256(ES256KeyPair::from_bytes(&ec.to_bytes()).unwrap().with_key_id(kid)), &spec())
}

/// Checklist 11: A JWK whose `alg` contradicts its key type gives no key at all.
#[test]
fn jwk_whose_alg_contradicts_its_type_is_unusable() {
    let k = keys();
    for (key, alg) in
        [(&k.ec, "EdDSA"), (&k.ec, "RS256"), (&k.ed, "ES256"), (&k.rsa, "ES256"), (&k.rsa, "EdDSA")]
    {
        let mut jwk = key.public_jwk();
        jwk["alg"] = json!(alg);
        let mut b = bundle();
        b["issuers"][0]["jwks"]["keys"] = json!([jwk]);
        let result = BundleConfig::from_json(&serde_json::to_vec(&b).unwrap()).unwrap().compile();
        assert_eq!(
            result.err().unwrap().field,
            "issuers[0].jwks",
            "{:?} JWK with alg {alg}",
            key.algorithm()
        );
    }
    // A P-256 point labelled P-384 is not a P-384 key: skipped with a warning, and the P-256 token
    // naming it finds no key.
    let mut jwk = k.ec.public_jwk();
    jwk["crv"] = json!("P-384");
    jwk.as_object_mut().unwrap().remove("alg");
    let mut b = bundle();
    b["issuers"][0]["algorithms"] = json!(["ES256", "ES384", "EdDSA"]);
    b["issuers"][0]["jwks"]["keys"] = json!([jwk, k.ed.public_jwk()]);
    let (engine, warnings) = compile(&b);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].to_string().starts_with("issuers[0].jwks.keys[0] skipped: invalid EC point"),
        "{warnings:?}"
    );
    assert_eq!(engine.issuers().verify(&sign(&k.ec, &spec()), NOW), Err(Reason::TokenKeyUnknown));
    // An Ed25519 JWK labelled as another curve is refused as a key type.
    let mut jwk = k.ed.public_jwk();
    jwk["crv"] = json!("X25519");
    let mut b = bundle();
    b["issuers"][0]["jwks"]["keys"] = json!([jwk, k.ec.public_jwk()]);
    let (engine, warnings) = compile(&b);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(engine.issuers().verify(&ed_token(), NOW), Err(Reason::TokenKeyUnknown));
}

/// The P-256 group order, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc,
    0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Checklist 12: CVE-2022-21449: r = s = 0 (and other out-of-range scalars) never verify.
#[test]
fn es256_zero_and_out_of_range_signatures_are_refused() {
    let token = sign(&keys().ec, &spec());
    let (_, _, s) = parts(&token);
    let valid = unb64(&s);
    let order_twice = [P256_ORDER, P256_ORDER].concat();
    let mut zero_r = valid.clone();
    zero_r[..32].fill(0);
    let mut zero_s = valid.clone();
    zero_s[32..].fill(0);
    let mut r_is_n = valid.clone();
    r_is_n[..32].copy_from_slice(&P256_ORDER);
    for (what, signature) in [
        ("r = s = 0", vec![0u8; 64]),
        ("r = 0", zero_r),
        ("s = 0", zero_s),
        ("r = s = n", order_twice),
        ("r = n", r_is_n),
        ("all ones", vec![0xff; 64]),
    ] {
        let forged = with_signature(&token, &signature);
        assert_eq!(rejected(&forged), Reason::TokenSignatureInvalid, "{what}");
        assert_denied(&decide("GET", "/public/x", &forged), Reason::TokenSignatureInvalid);
    }
    // The "psychic signature" on a token the attacker wrote from scratch, for the ops subject.
    let header = b64(r#"{"alg":"ES256","typ":"JWT","kid":"ec-1"}"#);
    let forged = format!("{header}.{}.{}", b64(payload_set("sub", json!(OPS_SUB))), b64([0u8; 64]));
    assert_eq!(rejected(&forged), Reason::TokenSignatureInvalid);
    assert_denied(&decide("GET", "/admin", &forged), Reason::TokenSignatureInvalid);
}

/// DER encoding of a big-endian unsigned integer.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    if v.first().is_none_or(|&b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    [vec![0x02, u8::try_from(v.len()).unwrap()], v].concat()
}

/// Checklist 13: An ES256 signature that is DER-encoded, or not 64 bytes.
#[test]
fn es256_der_or_wrong_length_signatures_are_refused() {
    let token = sign(&keys().ec, &spec());
    let raw_sig = unb64(&parts(&token).2);
    assert_eq!(raw_sig.len(), 64);
    let body = [der_integer(&raw_sig[..32]), der_integer(&raw_sig[32..])].concat();
    let der = [vec![0x30, u8::try_from(body.len()).unwrap()], body].concat();
    assert_eq!(rejected(&with_signature(&token, &der)), Reason::TokenSignatureInvalid, "DER");
    for (what, signature) in [
        ("63 bytes", raw_sig[..63].to_vec()),
        ("65 bytes, extra zero", [&raw_sig[..], &[0]].concat()),
        ("65 bytes, leading zero", [&[0], &raw_sig[..]].concat()),
        ("32 bytes", raw_sig[..32].to_vec()),
        ("128 bytes", [&raw_sig[..], &raw_sig[..]].concat()),
        ("1 byte", vec![1]),
    ] {
        assert_eq!(rejected(&with_signature(&token, &signature)), Reason::TokenSignatureInvalid, "{what}");
    }
}

/// Checklist 13: An Ed25519 signature that is not 64 bytes, or whose S is not reduced (malleability).
#[test]
fn ed25519_bad_signatures_are_refused() {
    let token = ed_token();
    let sig = unb64(&parts(&token).2);
    for (what, signature) in [
        ("63 bytes", sig[..63].to_vec()),
        ("65 bytes", [&sig[..], &[0]].concat()),
        ("32 bytes", sig[..32].to_vec()),
        ("128 bytes", [&sig[..], &sig[..]].concat()),
    ] {
        assert_eq!(rejected(&with_signature(&token, &signature)), Reason::TokenMalformed, "{what}");
    }
    assert_eq!(rejected(&with_signature(&token, &[0u8; 64])), Reason::TokenSignatureInvalid, "zeros");
    // S + L verifies under a non-strict verifier; it must not here.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut malleated = sig.clone();
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(malleated[32 + i]) + u16::from(L[i]) + carry;
        malleated[32 + i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    let reason = rejected(&with_signature(&token, &malleated));
    assert!(matches!(reason, Reason::TokenSignatureInvalid | Reason::TokenMalformed), "{reason:?}");
}

/// Checklist 13: An RS256 signature of the wrong length or value.
#[test]
fn rs256_bad_signatures_are_refused() {
    let token = sign(&keys().rsa, &spec());
    let sig = unb64(&parts(&token).2);
    assert_eq!(sig.len(), 256);
    for (what, signature) in [
        ("255 bytes", sig[..255].to_vec()),
        ("257 bytes", [&[0], &sig[..]].concat()),
        ("zeros", vec![0; 256]),
        ("one", [vec![0; 255], vec![1]].concat()),
        ("all ones", vec![0xff; 256]),
        ("1 byte", vec![1]),
    ] {
        assert_eq!(rejected(&with_signature(&token, &signature)), Reason::TokenSignatureInvalid, "{what}");
    }
    // A valid signature of another token.
    let other = sign(&keys().rsa, &TokenSpec { subject: Some(OPS_SUB.into()), ..spec() });
    assert_eq!(rejected(&with_signature(&token, &unb64(&parts(&other).2))), Reason::TokenSignatureInvalid);
}

/// Flips bits of the decoded header, payload and signature (every `step`-th bit) and checks that no
/// variant is accepted. Returns the reasons seen.
fn flip_decoded_bits(token: &str, step: usize) -> HashSet<Reason> {
    let (h, p, s) = parts(token);
    let decoded = [unb64(&h), unb64(&p), unb64(&s)];
    let mut reasons = HashSet::new();
    let mut count = 0;
    for (segment, bytes) in decoded.iter().enumerate() {
        for bit in (0..bytes.len() * 8).step_by(step) {
            let mut flipped = decoded.clone();
            flipped[segment][bit / 8] ^= 1 << (bit % 8);
            let t = format!("{}.{}.{}", b64(&flipped[0]), b64(&flipped[1]), b64(&flipped[2]));
            match verify(&t) {
                Ok(_) => panic!("accepted with segment {segment} bit {bit} flipped: {t}"),
                Err(reason) => reasons.insert(reason),
            };
            count += 1;
        }
    }
    assert!(count > 100);
    reasons
}

/// The reasons a one-bit change can legitimately produce.
fn assert_flip_reasons(reasons: &HashSet<Reason>) {
    for reason in reasons {
        assert!(
            matches!(
                reason,
                Reason::TokenMalformed
                    | Reason::TokenSignatureInvalid
                    | Reason::TokenKeyUnknown
                    | Reason::TokenAlgorithmNotAllowed
                    | Reason::TokenIssuerUnknown
                    | Reason::TokenClaimInvalid
            ),
            "{reason:?}"
        );
    }
    assert!(reasons.contains(&Reason::TokenMalformed), "{reasons:?}");
    assert!(reasons.contains(&Reason::TokenSignatureInvalid), "{reasons:?}");
}

/// Checklist 14: Any single bit flipped in the decoded header, payload or signature of an EdDSA token.
#[test]
fn every_decoded_bit_flip_of_an_eddsa_token_is_refused() {
    let reasons = flip_decoded_bits(&ed_token(), 1);
    assert_flip_reasons(&reasons);
}

/// Checklist 14: The same for ES256 (every bit) and RS256 (every 3rd bit).
#[test]
fn decoded_bit_flips_of_es256_and_rs256_tokens_are_refused() {
    assert_flip_reasons(&flip_decoded_bits(&sign(&keys().ec, &spec()), 1));
    assert_flip_reasons(&flip_decoded_bits(&sign(&keys().rsa, &spec()), 3));
}

/// Checklist 14: Any single bit flipped in the characters of the compact token (which may turn a character
/// into a dot, a non-alphabet character or another valid one).
#[test]
fn every_character_bit_flip_is_refused() {
    for token in [ed_token(), sign(&keys().ec, &spec())] {
        let mut reasons = HashSet::new();
        for i in 0..token.len() {
            for bit in 0..7 {
                let mut bytes = token.clone().into_bytes();
                bytes[i] ^= 1 << bit;
                let t = String::from_utf8(bytes).unwrap();
                match verify(&t) {
                    Ok(_) => panic!("accepted with char {i} bit {bit} flipped: {t}"),
                    Err(reason) => reasons.insert(reason),
                };
            }
        }
        assert_flip_reasons(&reasons);
    }
}

// ---------------------------------------------------------------------------------------------
// 15-21: kid and header parameters
// ---------------------------------------------------------------------------------------------

/// Checklist 15: An unknown `kid` (static keys: no refetch exists yet).
#[test]
fn unknown_kid_is_refused() {
    for kid in ["rsa-2", "ed-3", "", "ED-1", "ed-1 ", " ed-1", "ed-1\u{0}", "ed"] {
        let header = json!({"alg": "EdDSA", "kid": kid}).to_string();
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenKeyUnknown, "{kid:?}");
    }
    assert_eq!(rejected(&sign_with_kid_rs256("rsa-2")), Reason::TokenKeyUnknown);
    assert_eq!(rejected(&sign_with_kid_es256("ec-2")), Reason::TokenKeyUnknown);
    assert_denied(&decide("GET", "/public/x", &sign_with_kid_es256("ec-2")), Reason::TokenKeyUnknown);
}

/// Checklist 16: Huge, path-like or SQL-like kids are only looked up, never interpreted.
#[test]
fn weird_kids_are_opaque() {
    for kid in [
        "k".repeat(5000),
        "../../../../etc/passwd".into(),
        "/dev/null".into(),
        "file:///etc/passwd".into(),
        "https://attacker.example/jwks.json".into(),
        "' OR '1'='1".into(),
        "ed-1' --".into(),
        "ed-1\"; DROP TABLE keys; --".into(),
        "${jndi:ldap://x}".into(),
        "ed-1\r\nx: y".into(),
        "%2e%2e%2f".into(),
        "\u{202e}1-de".into(),
        "*".into(),
        "ed-*".into(),
    ] {
        let header = json!({"alg": "EdDSA", "kid": kid}).to_string();
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenKeyUnknown, "{kid:?}");
    }
    // A kid too large for the token limit never gets as far as a lookup.
    let header = json!({"alg": "EdDSA", "kid": "k".repeat(9000)}).to_string();
    assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenTooLarge);
}

/// Checklist 16: A `kid` that is not a string.
#[test]
fn kid_not_a_string_is_malformed() {
    for kid in [json!(1), json!(null), json!(["ed-1"]), json!({"kid": "ed-1"}), json!(true)] {
        let header = json!({"alg": "EdDSA", "kid": kid}).to_string();
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenMalformed, "{kid}");
    }
}

/// Checklist 17: No `kid` while several keys are configured: the keys of the token's algorithm are tried.
#[test]
fn token_without_kid_tries_the_keys_of_its_algorithm() {
    let k = keys();
    // Both EdDSA keys (ed-1, ed-2) are candidates.
    assert_eq!(accepted(&raw(r#"{"alg":"EdDSA"}"#, &payload())).subject, SUB);
    assert_eq!(accepted(&k.ed2.sign_raw(r#"{"alg":"EdDSA"}"#, &payload()).unwrap()).subject, SUB);
    // ES256 without kid: ec-1 and the kid-less key.
    assert_eq!(accepted(&sign(&k.ec_nokid, &spec())).subject, SUB);
    // An unknown key without kid: every candidate fails.
    assert_eq!(
        rejected(&k.attacker_ed.sign_raw(r#"{"alg":"EdDSA"}"#, &payload()).unwrap()),
        Reason::TokenSignatureInvalid
    );
    let SigningKey::ES256(attacker_ec) = &k.attacker_ec else { unreachable!() };
    let no_kid = SigningKey::ES256(ES256KeyPair::from_bytes(&attacker_ec.to_bytes()).unwrap());
    assert_eq!(rejected(&sign(&no_kid, &spec())), Reason::TokenSignatureInvalid);
}

/// Checklist 17: The token's `alg` picks the candidates; a signature made with a key of another type is never
/// tried under that key's algorithm.
#[test]
fn token_without_kid_never_switches_algorithm() {
    // Signed by the trusted Ed25519 key, but the header says ES256 (or RS256): only ES256 (RS256)
    // keys are tried, and the Ed25519 signature does not verify under them.
    assert_eq!(rejected(&raw(r#"{"alg":"ES256"}"#, &payload())), Reason::TokenSignatureInvalid);
    assert_eq!(rejected(&raw(r#"{"alg":"RS256"}"#, &payload())), Reason::TokenSignatureInvalid);
    assert_eq!(rejected(&raw(r#"{"alg":"ES256","kid":"ed-1"}"#, &payload())), Reason::TokenKeyUnknown);
    // Issuer `other` has only an EdDSA key: an ES256 token without kid is refused by the allow-list.
    let header = r#"{"alg":"ES256"}"#;
    let p = payload_set("iss", json!(OTHER_ISS));
    assert_eq!(rejected(&keys().other_ed.sign_raw(header, &p).unwrap()), Reason::TokenAlgorithmNotAllowed);
}

/// Checklist 11, 26: A token claiming one issuer but signed with another issuer's key.
#[test]
fn key_of_another_issuer_is_not_used() {
    let k = keys();
    // `other`'s key, claiming `prod`: prod has no key `other-1`.
    assert_eq!(rejected(&sign(&k.other_ed, &spec())), Reason::TokenKeyUnknown);
    // `prod`'s key ed-1, claiming `other`.
    let spec_other = TokenSpec::new(OTHER_ISS, SUB, AUD, NOW, 300);
    assert_eq!(rejected(&sign(&k.ed, &spec_other)), Reason::TokenKeyUnknown);
    // ... and without kid it is tried against `other`'s key only.
    let p = payload_set("iss", json!(OTHER_ISS));
    assert_eq!(rejected(&raw(r#"{"alg":"EdDSA"}"#, &p)), Reason::TokenSignatureInvalid);
}

/// Checklist 18: `jku`, `x5u`, `x5c`, `jwk` headers are ignored: a token signed by a trusted key still verifies
/// with them, and nothing in them is used to find a key.
#[test]
fn key_location_headers_are_ignored_on_trusted_tokens() {
    let attacker_jwk = keys().attacker_ed.public_jwk();
    for extra in [
        json!({"jku": "https://attacker.example/jwks.json"}),
        json!({"x5u": "https://attacker.example/cert.pem"}),
        json!({"x5c": ["MIIBszCCAVmgAwIBAgIUQ"]}),
        json!({"x5t": "abc", "x5t#S256": "def"}),
        json!({"jwk": attacker_jwk.to_string()}),
    ] {
        let mut header = json!({"alg": "EdDSA", "kid": "ed-1"});
        header.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        assert_eq!(accepted(&raw(&header.to_string(), &payload())).subject, SUB, "{extra}");
    }
    // A `jwk` header in its RFC 7515 form (an object) is refused as malformed even on a trusted token
    // (`jwt-simple` types it as a string): refusing is the safe side, and the reason says so.
    let header = json!({"alg": "EdDSA", "kid": "ed-1", "jwk": attacker_jwk}).to_string();
    assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenMalformed);
}

/// Checklist 18: A token signed by an attacker's key that carries its own key or key location is refused, with
/// and without the trusted kid.
#[test]
fn attacker_key_in_the_header_is_not_trusted() {
    let attacker = &keys().attacker_ed;
    let jwk = attacker.public_jwk();
    for (extra, expected) in [
        // A JWK object (the RFC 7515 form) fails `jwt-simple`'s header parsing (it types `jwk` as a
        // string) once a key has been selected: malformed.
        (json!({"jwk": jwk}), Reason::TokenMalformed),
        (json!({"jwk": jwk.to_string()}), Reason::TokenSignatureInvalid),
        (json!({"jku": "https://attacker.example/jwks.json"}), Reason::TokenSignatureInvalid),
        (json!({"x5u": "https://attacker.example/cert.pem"}), Reason::TokenSignatureInvalid),
        (json!({"x5c": ["MIIBszCCAVmgAwIBAgIUQ"]}), Reason::TokenSignatureInvalid),
    ] {
        for kid in [Some("ed-1"), None, Some("attacker")] {
            let mut header = json!({"alg": "EdDSA"});
            header.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let token = attacker.sign_raw(&header.to_string(), &payload()).unwrap();
            let expected = if kid == Some("attacker") { Reason::TokenKeyUnknown } else { expected };
            assert_eq!(rejected(&token), expected, "{header}");
        }
    }
    // The library's own headers of an attacker's RS256/ES256 tokens with trusted kids.
    assert_eq!(rejected(&sign(&keys().attacker_rsa, &spec())), Reason::TokenSignatureInvalid);
    assert_eq!(rejected(&sign(&keys().attacker_ec, &spec())), Reason::TokenSignatureInvalid);
}

/// Checklist 19: A non-empty `crit` (or one that is not an array) is refused.
#[test]
fn critical_header_extensions_are_refused() {
    for crit in [
        json!(["exp"]),
        json!(["b64"]),
        json!(["kid"]),
        json!([""]),
        json!("b64"),
        json!(1),
        json!(null),
        json!({}),
    ] {
        let header = json!({"alg": "EdDSA", "kid": "ed-1", "crit": crit, "b64": false, "exp": 1}).to_string();
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenMalformed, "crit: {crit}");
    }
}

/// Checklist 20: Nested JWTs (`cty: JWT` in any case), and a `cty` that is not a string.
#[test]
fn nested_tokens_are_refused() {
    let inner = ed_token();
    for cty in [json!("JWT"), json!("jwt"), json!("Jwt"), json!(1), json!(null), json!(["JWT"])] {
        let header = json!({"alg": "EdDSA", "kid": "ed-1", "cty": cty}).to_string();
        assert_eq!(rejected(&raw(&header, &payload())), Reason::TokenMalformed, "cty: {cty}");
        // The inner token as the (non-JSON) payload.
        assert_eq!(rejected(&raw(&header, &inner)), Reason::TokenMalformed, "cty: {cty}");
    }
}

// ---------------------------------------------------------------------------------------------
// 22-28: claims
// ---------------------------------------------------------------------------------------------

/// Checklist 22: Expiry: accepted up to `exp + skew`, refused one second later.
#[test]
fn expiry_respects_the_clock_skew() {
    let k = keys();
    for key in [&k.rsa, &k.ec, &k.ed] {
        let token =
            sign(key, &TokenSpec { issued_at: Some(NOW - 600), expires_at: Some(NOW - 300), ..spec() });
        assert_eq!(engine().issuers().verify(&token, NOW - 300).unwrap().subject, SUB);
        assert_eq!(engine().issuers().verify(&token, NOW - 300 + SKEW).unwrap().subject, SUB);
        assert_eq!(engine().issuers().verify(&token, NOW - 300 + SKEW + 1), Err(Reason::TokenExpired));
        assert_eq!(engine().issuers().verify(&token, NOW), Err(Reason::TokenExpired));
    }
    // Through the engine, with `NOW` fixed.
    let just_in =
        sign(&k.ed, &TokenSpec { issued_at: Some(NOW - 100), expires_at: Some(NOW - SKEW), ..spec() });
    assert_allowed(&decide("GET", "/public/x", &just_in), "public-read");
    let just_out =
        sign(&k.ed, &TokenSpec { issued_at: Some(NOW - 100), expires_at: Some(NOW - SKEW - 1), ..spec() });
    assert_denied(&decide("GET", "/public/x", &just_out), Reason::TokenExpired);
    // With no skew configured, exp = now is still valid, now + 1 is not.
    let strict = engine_with(|b| b["issuers"][0]["clock_skew_seconds"] = json!(0));
    let token = sign(&k.ed, &TokenSpec { expires_at: Some(NOW), issued_at: Some(NOW - 10), ..spec() });
    assert_eq!(strict.issuers().verify(&token, NOW).unwrap().expires_at, Some(NOW));
    assert_eq!(strict.issuers().verify(&token, NOW + 1), Err(Reason::TokenExpired));
}

/// Checklist 23: `nbf` or `iat` in the future beyond the skew.
#[test]
fn future_nbf_and_iat_are_refused_beyond_the_skew() {
    let k = keys();
    let nbf = |t: u64| TokenSpec { not_before: Some(t), ..spec() };
    let iat = |t: u64| TokenSpec { issued_at: Some(t), expires_at: Some(t + 300), ..spec() };
    for key in [&k.ec, &k.ed] {
        assert_eq!(accepted(&sign(key, &nbf(NOW + SKEW))).subject, SUB);
        assert_eq!(rejected(&sign(key, &nbf(NOW + SKEW + 1))), Reason::TokenNotYetValid);
        assert_eq!(rejected(&sign(key, &nbf(NOW + 86_400))), Reason::TokenNotYetValid);
        assert_eq!(accepted(&sign(key, &iat(NOW + SKEW))).subject, SUB);
        assert_eq!(rejected(&sign(key, &iat(NOW + SKEW + 1))), Reason::TokenNotYetValid);
        assert_eq!(rejected(&sign(key, &iat(NOW + 86_400))), Reason::TokenNotYetValid);
    }
    assert_denied(&decide("GET", "/public/x", &sign(&k.ed, &nbf(NOW + 3600))), Reason::TokenNotYetValid);
}

/// Checklist 24: No `exp`.
#[test]
fn missing_expiry_is_refused() {
    let k = keys();
    for key in [&k.rsa, &k.ec, &k.ed] {
        let token = sign(key, &TokenSpec { expires_at: None, ..spec() });
        assert_eq!(rejected(&token), Reason::TokenExpiryMissing, "{:?}", key.algorithm());
    }
    assert_eq!(rejected(&raw(ED_HEADER, &payload_set("exp", Value::Null))), Reason::TokenExpiryMissing);
    let token = sign(&k.ed, &TokenSpec { expires_at: None, ..spec() });
    assert_denied(&decide("GET", "/public/x", &token), Reason::TokenExpiryMissing);
}

/// Checklist 26: Wrong or missing `iss`.
#[test]
fn wrong_or_missing_issuer_is_refused() {
    let k = keys();
    for iss in [
        "https://issuer.evil.example",
        "https://issuer.prod.example/",
        "HTTPS://ISSUER.PROD.EXAMPLE",
        "https://issuer.prod.example ",
        "",
        "prod",
    ] {
        let token = sign(&k.ed, &TokenSpec { issuer: Some(iss.into()), ..spec() });
        assert_eq!(rejected(&token), Reason::TokenIssuerUnknown, "{iss:?}");
    }
    for key in [&k.rsa, &k.ec, &k.ed] {
        let token = sign(key, &TokenSpec { issuer: None, ..spec() });
        assert_eq!(rejected(&token), Reason::TokenIssuerUnknown);
        assert_denied(&decide("GET", "/public/x", &token), Reason::TokenIssuerUnknown);
    }
}

/// Checklist 27: Wrong or missing `aud`; one matching audience among several is enough.
#[test]
fn wrong_or_missing_audience_is_refused() {
    let k = keys();
    let with_aud =
        |aud: &[&str]| TokenSpec { audiences: aud.iter().map(|a| a.to_string()).collect(), ..spec() };
    for aud in [&["someone-else"][..], &["MESHWARD"], &["meshward "], &[""], &["other", "x"]] {
        assert_eq!(rejected(&sign(&k.ed, &with_aud(aud))), Reason::TokenAudienceInvalid, "{aud:?}");
    }
    for key in [&k.rsa, &k.ec, &k.ed] {
        assert_eq!(rejected(&sign(key, &with_aud(&[]))), Reason::TokenAudienceInvalid);
    }
    assert_eq!(accepted(&sign(&k.ed, &with_aud(&["other", AUD]))).subject, SUB);
    assert_eq!(accepted(&sign(&k.ed, &with_aud(&["registry"]))).subject, SUB);
    assert_denied(&decide("GET", "/public/x", &sign(&k.ed, &with_aud(&["x"]))), Reason::TokenAudienceInvalid);
}

/// Checklist 28 (policy level only: issuers have no subject pattern yet). A subject outside the trust domain
/// the rules name is not allowed.
#[test]
fn subject_outside_the_rules_is_denied() {
    for sub in [
        "spiffe://evil.example/ns/app/sa/web",
        "spiffe://prod.example.evil/ns/app",
        "spiffe://PROD.EXAMPLE/ns/app",
        "prod.example/ns/app",
        "x spiffe://prod.example/ns/app",
    ] {
        let token = sign(&keys().ed, &TokenSpec { subject: Some(sub.into()), ..spec() });
        assert_eq!(accepted(&token).subject, sub);
        assert_denied(&decide("GET", "/public/x", &token), Reason::PolicyNoMatch);
    }
    // A subject in the trust domain but outside ops cannot reach /admin.
    assert_denied(&decide("GET", "/admin", &ed_token()), Reason::PolicyNoMatch);
}

// ---------------------------------------------------------------------------------------------
// 30-33: how the token arrives
// ---------------------------------------------------------------------------------------------

/// Checklist 30: No token: 401 with a bare Bearer challenge.
#[test]
fn missing_token_gets_a_bearer_challenge() {
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some(HOST),
        path: Some("/public/x"),
        authorization: vec![],
        ..HttpRequest::default()
    };
    let outcome = engine().authorize(&request, NOW);
    assert_eq!(outcome.decision, Decision::deny(Reason::TokenMissing));
    assert!(outcome.identity.is_none());
    let response = engine().deny_response(outcome.decision.reason, Some("req-1"));
    assert_eq!(response.status, 401);
    let challenge: Vec<&str> =
        response.headers.iter().filter(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str()).collect();
    assert_eq!(challenge, ["Bearer realm=\"meshward\""]);
    // A bad token gets the error form of the challenge.
    let response = engine().deny_response(Reason::TokenExpired, None);
    assert_eq!(response.status, 401);
    assert!(response.headers.iter().any(|(n, v)| n == "www-authenticate"
        && v == "Bearer realm=\"meshward\", error=\"invalid_token\", error_description=\"token_expired\""));
}

/// Checklist 31: Other schemes, or `Bearer` without a token, count as no token.
#[test]
fn non_bearer_or_empty_authorization_is_missing() {
    for value in [
        "",
        " ",
        "Bearer",
        "Bearer ",
        "Bearer \t ",
        "Bearer-x",
        "Bearer-eyJhbGciOi.x.y",
        "Bearerx",
        "Bearer:x",
        "Basic dXNlcjpwYXNz",
        "Digest username=\"x\"",
        "Token abc",
        "JWT abc",
        "DPoP abc",
        "abc.def.ghi",
        // A scheme that merely starts with "Bearer", followed by a token.
        "Bearer-x t.o.k",
        "Bearerx t.o.k",
        "Bearer: t.o.k",
        "Bearer; t.o.k",
        "XBearer t.o.k",
        "Basic t.o.k",
    ] {
        assert_eq!(bearer_token(&[value]), Err(Reason::TokenMissing), "{value:?}");
    }
    assert_eq!(bearer_token(&[]), Err(Reason::TokenMissing));
}

/// Checklist 31: What does parse: the scheme is case-insensitive and surrounding blanks are dropped.
#[test]
fn bearer_scheme_parsing() {
    for value in
        ["Bearer t.o.k", "bearer t.o.k", "BEARER t.o.k", "Bearer  t.o.k", "Bearer\tt.o.k", " Bearer t.o.k "]
    {
        assert_eq!(bearer_token(&[value]), Ok("t.o.k"), "{value:?}");
    }
}

/// Checklist 32: Anything after the token.
#[test]
fn trailing_junk_after_the_token_is_malformed() {
    for value in ["Bearer t junk", "Bearer t\tjunk", "Bearer a.b.c a.b.c", "Bearer t =", "Bearer t  junk"] {
        assert_eq!(bearer_token(&[value]), Err(Reason::TokenMalformed), "{value:?}");
    }
    let token = ed_token();
    let auth = format!("Bearer {token} junk");
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some(HOST),
        path: Some("/public/x"),
        authorization: vec![auth.as_str()],
        ..HttpRequest::default()
    };
    assert_denied(&engine().authorize(&request, NOW).decision, Reason::TokenMalformed);
}

/// Checklist 33: Two Authorization headers, or comma-joined values, even when each token is valid.
#[test]
fn multiple_tokens_are_refused() {
    assert_eq!(bearer_token(&["Bearer a", "Bearer b"]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Bearer a", "Bearer a"]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Basic x", "Bearer a"]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Bearer a", ""]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Bearer a, Bearer b"]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Bearer a,b"]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Bearer a,"]), Err(Reason::TokenMultiple));
    assert_eq!(bearer_token(&["Basic x, Bearer a"]), Err(Reason::TokenMultiple));
    // A comma wins over every other fault of the value, wherever it is: in the scheme, in an
    // otherwise empty value, after a blank inside the token, or deep in a long token.
    for value in ["Bear,er a", ",", "Bearer ,", "Bearer a b,c", "Bearer a\t,", "Bearer a+b,c"] {
        assert_eq!(bearer_token(&[value]), Err(Reason::TokenMultiple), "{value:?}");
    }
    let long = "abcdefgh".repeat(40);
    for at in [0, 7, 8, 150, long.len() - 1] {
        let mut value = format!("Bearer {long}");
        value.replace_range(7 + at..8 + at, ",");
        assert_eq!(bearer_token(&[&value]), Err(Reason::TokenMultiple), "comma at {at}");
        // A blank there instead: inside the token it is malformed; at either end it is trimmed.
        value.replace_range(7 + at..8 + at, " ");
        let expected = match at {
            0 => Ok(&long[1..]),
            at if at == long.len() - 1 => Ok(&long[..at]),
            _ => Err(Reason::TokenMalformed),
        };
        assert_eq!(bearer_token(&[&value]), expected, "blank at {at}");
    }

    let (valid, ops) = (ed_token(), ops_token());
    let one = format!("Bearer {valid}");
    let two = format!("Bearer {ops}");
    let joined = format!("Bearer {valid}, Bearer {ops}");
    for authorization in
        [vec![one.as_str(), two.as_str()], vec![one.as_str(), one.as_str()], vec![joined.as_str()]]
    {
        let request = HttpRequest {
            method: Some("GET"),
            authority: Some(HOST),
            path: Some("/admin"),
            authorization,
            ..HttpRequest::default()
        };
        assert_denied(&engine().authorize(&request, NOW).decision, Reason::TokenMultiple);
    }
}

// ---------------------------------------------------------------------------------------------
// 36-45: path and method
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_path_rejected(paths: &[&str]) {
    let token = ops_token();
    for path in paths {
        let decision = decide("GET", path, &token);
        assert_denied(&decision, Reason::RequestPathRejected);
        assert_eq!(Reason::RequestPathRejected.http_status(), 400);
    }
}

/// Checklist 36: Dot segments, plain and in every position.
#[test]
fn dot_segments_are_rejected() {
    assert_path_rejected(&[
        "/public/../admin",
        "/./admin",
        "/public/./x",
        "/public/..",
        "/public/.",
        "/..",
        "/.",
        "/public/x/../../admin",
        "/public/../admin?x=1",
        "/public/..?x",
    ]);
    // Not dot segments: allowed by the prefix rule.
    let token = ed_token();
    for path in ["/public/...", "/public/.x", "/public/x..", "/public/..x/y"] {
        assert_allowed(&decide("GET", path, &token), "public-read");
    }
}

/// Checklist 37: Empty segments, encoded slashes and backslashes, literal backslashes.
#[test]
fn encoded_separators_and_empty_segments_are_rejected() {
    assert_path_rejected(&[
        "//admin",
        "/public//x",
        "/public/x//",
        "/public%2F..%2Fadmin",
        "/public%2f..%2fadmin",
        "/public/%2Fadmin",
        "/public/%5Cadmin",
        "/public/%5cadmin",
        "/public\\..\\admin",
        "/public/\\admin",
        "/\\admin",
    ]);
    // Not even starting with `/`.
    assert_denied(&decide("GET", "\\admin", &ops_token()), Reason::RequestMalformed);
}

/// Checklist 38: Encoded unreserved characters and double encoding: never decoded, refused.
#[test]
fn encoded_unreserved_and_double_encoding_are_rejected() {
    assert_path_rejected(&[
        "/%61dmin",
        "/%41dmin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%2e./admin",
        "/%2e/admin",
        "/public/%252F..%252Fadmin",
        "/public/%252e%252e/admin",
        "/public/%25",
        "/public/%7e",
        "/public/%5F",
        "/public/%2D",
        "/public/%",
        "/public/%2",
        "/public/%g0",
        "/public/%0g",
    ]);
    // Reserved or unsafe characters stay encoded and pass through, never decoded.
    let token = ed_token();
    for path in ["/public/a%20b", "/public/%3F", "/public/%40x", "/public/%3D", "/public/%2B"] {
        assert_allowed(&decide("GET", path, &token), "public-read");
    }
}

/// Checklist 39: NUL and control characters, raw or encoded.
#[test]
fn nul_and_control_characters_are_rejected() {
    assert_path_rejected(&[
        "/admin%00",
        "/public/%00/../admin",
        "/public/%0a",
        "/public/%0D%0A",
        "/public/%1f",
        "/public/%7f",
        "/public/%7F",
        "/public/\u{0}",
        "/public/\u{1}",
        "/public/\n",
        "/public/\r\nx: y",
        "/public/\t",
        "/public/\u{7f}",
    ]);
}

/// Checklist 40, 42: Fragments and path parameters.
#[test]
fn fragments_and_path_parameters_are_rejected() {
    assert_path_rejected(&[
        "/admin#x",
        "/public#/../admin",
        "/public/%23",
        "/admin;x=y",
        "/public/..;/admin",
        "/public;/../admin",
        "/admin;",
        "/public/%3B",
        "/public/%3b",
    ]);
}

/// Checklist 41: The query is not part of the matched path, whatever it contains.
#[test]
fn query_is_stripped_before_matching() {
    let (user, ops) = (ed_token(), ops_token());
    assert_allowed(&decide("GET", "/admin?x=1", &ops), "admin-read");
    assert_allowed(&decide("GET", "/admin?", &ops), "admin-read");
    assert_allowed(&decide("GET", "/public?x=/../admin", &user), "public-read");
    assert_allowed(&decide("GET", "/public/x?next=//admin%2F", &user), "public-read");
    // The query does not help an unauthorized subject.
    assert_denied(&decide("GET", "/admin?x=/public", &user), Reason::PolicyNoMatch);
    assert_denied(&decide("GET", "/adminx?x=1", &ops), Reason::PolicyNoMatch);
    assert_denied(&decide("GET", "?/public", &user), Reason::RequestMalformed);
}

/// Checklist 43: Paths are case-sensitive and exact paths do not absorb a trailing slash; hosts are compared
/// case-insensitively, without port or trailing dot.
#[test]
fn paths_and_hosts_match_as_documented() {
    let (user, ops) = (ed_token(), ops_token());
    assert_denied(&decide("GET", "/ADMIN", &ops), Reason::PolicyNoMatch);
    assert_denied(&decide("GET", "/Admin", &ops), Reason::PolicyNoMatch);
    assert_denied(&decide("GET", "/admin/", &ops), Reason::PolicyNoMatch);
    assert_denied(&decide("GET", "/PUBLIC/x", &user), Reason::PolicyNoMatch);
    assert_denied(&decide("GET", "/publicity", &user), Reason::PolicyNoMatch);
    assert_allowed(&decide("GET", "/public/", &user), "public-read");
    assert_allowed(&decide("GET", "/public", &user), "public-read");

    let at = |authority: Option<&str>| {
        let auth = format!("Bearer {ops}");
        let request = HttpRequest {
            method: Some("GET"),
            authority,
            path: Some("/admin"),
            authorization: vec![auth.as_str()],
            ..HttpRequest::default()
        };
        engine().authorize(&request, NOW).decision
    };
    for host in [
        "api.example.com",
        "API.EXAMPLE.COM",
        "Api.Example.Com",
        "api.example.com.",
        "api.example.com:8443",
        "api.example.com:443",
        "API.example.com.:80",
    ] {
        assert_allowed(&at(Some(host)), "admin-read");
    }
    for host in
        ["api.example.com.evil", "evil.api.example.com", "api-example.com", "api.example.co", "example.com"]
    {
        assert_denied(&at(Some(host)), Reason::PolicyNoMatch);
    }
    // No host at all is a malformed request, not an empty host that `*` rules would match.
    assert_denied(&at(None), Reason::RequestMalformed);
    for host in ["", "api.example.com:http", "user@api.example.com", "api.example.com/x", "api example.com"] {
        assert_denied(&at(Some(host)), Reason::RequestMalformed);
    }
}

/// Checklist 44: CONNECT, a missing `:path` or method, and non-origin-form targets.
#[test]
fn connect_and_missing_path_are_malformed() {
    let token = ops_token();
    let auth = format!("Bearer {token}");
    let run = |method: Option<&str>, path: Option<&str>| {
        let request = HttpRequest {
            method,
            authority: Some(HOST),
            path,
            authorization: vec![auth.as_str()],
            ..HttpRequest::default()
        };
        engine().authorize(&request, NOW)
    };
    for (method, path) in [
        (Some("CONNECT"), Some("/admin")),
        (Some("CONNECT"), None),
        (Some("connect"), Some("/admin")),
        (Some("Connect"), Some("/admin")),
        (Some("GET"), None),
        (None, Some("/admin")),
        (None, None),
        (Some(""), Some("/admin")),
        (Some("GET /admin"), Some("/admin")),
        (Some("GET\r\n"), Some("/admin")),
        (Some("GET"), Some("")),
        (Some("GET"), Some("*")),
        (Some("OPTIONS"), Some("*")),
        (Some("GET"), Some("admin")),
        (Some("GET"), Some("http://api.example.com/admin")),
        (Some("GET"), Some("?x=1")),
    ] {
        let outcome = run(method, path);
        assert_eq!(outcome.decision, Decision::deny(Reason::RequestMalformed), "{method:?} {path:?}");
        assert!(outcome.target.is_none());
    }
}

/// Checklist 45: Method overrides never change the method, and method names are case-sensitive.
#[test]
fn method_overrides_and_case_do_not_change_the_method() {
    let ops = ops_token();
    for method in ["get", "Get", "gET", "POST", "HEAD", "FOO", "DELETE"] {
        assert_denied(&decide(method, "/admin", &ops), Reason::PolicyNoMatch);
    }
    // `_method` in the query is just query.
    for path in ["/admin?_method=GET", "/admin?X-HTTP-Method-Override=GET"] {
        assert_denied(&decide("POST", path, &ops), Reason::PolicyNoMatch);
        assert_allowed(&decide("GET", path, &ops), "admin-read");
    }
    // Override headers are just headers: with every known override asking for GET, a POST stays a
    // POST (denied), and with overrides asking for POST/DELETE, a GET stays a GET (allowed).
    let auth = format!("Bearer {ops}");
    let overrides = |method: &'static str| -> Vec<(&'static str, &'static str)> {
        ["x-http-method-override", "x-method-override", "x-http-method", "_method"]
            .into_iter()
            .map(|name| (name, method))
            .collect()
    };
    let request = |method: &'static str, headers| HttpRequest {
        method: Some(method),
        authority: Some(HOST),
        path: Some("/admin"),
        authorization: vec![auth.as_str()],
        headers,
        peer: None,
        peer_certificate_sha256: None,
    };
    assert_denied(
        &engine().authorize(&request("POST", overrides("GET")), NOW).decision,
        Reason::PolicyNoMatch,
    );
    assert_denied(
        &engine().authorize(&request("get", overrides("GET")), NOW).decision,
        Reason::PolicyNoMatch,
    );
    let get = engine().authorize(&request("GET", overrides("POST")), NOW);
    assert_allowed(&get.decision, "admin-read");
    assert_eq!(get.target.unwrap().method, "GET");
    let get = engine().authorize(&request("GET", overrides("CONNECT")), NOW);
    assert_allowed(&get.decision, "admin-read");
}

/// Request checks come before the token: a rejected path is a 400 whatever the token.
#[test]
fn request_problems_take_precedence_over_token_problems() {
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some(HOST),
        path: Some("/public/../admin"),
        authorization: vec![],
        ..HttpRequest::default()
    };
    let outcome = engine().authorize(&request, NOW);
    assert_eq!(outcome.decision, Decision::deny(Reason::RequestPathRejected));
    assert!(outcome.identity.is_none());
    let response = engine().deny_response(outcome.decision.reason, None);
    assert_eq!(response.status, 400);
    assert!(response.headers.iter().all(|(n, _)| n != "www-authenticate"));
}

/// Identities with control characters could forge audit lines or upstream headers: refused.
#[test]
fn identities_with_control_characters_are_refused() {
    for sub in ["svc\r\nx-admin: 1", "svc\u{0}", "svc\u{7f}", "svc\u{85}"] {
        let token = raw(ED_HEADER, &payload_set("sub", json!(sub)));
        assert_eq!(rejected(&token), Reason::TokenClaimInvalid, "{sub:?}");
    }
    let token = raw(ED_HEADER, &payload_set("jti", json!("id\nforged")));
    assert_eq!(rejected(&token), Reason::TokenClaimInvalid);
}

// ---------------------------------------------------------------------------------------------
// Issue 11: every claim reachable; interop with what real issuers send
// ---------------------------------------------------------------------------------------------

/// A token signed by the trusted `ed-1` key with the default claims plus `extra`.
fn ed_token_with(extra: Value) -> String {
    let mut map = claims();
    map.extend(extra.as_object().cloned().unwrap_or_default());
    raw(ED_HEADER, &Value::Object(map).to_string())
}

/// Every claim of a verified token is reachable by its name with its JSON type, the registered ones
/// (`aud`, `nbf`, `nonce`, `iat`, `exp`) included.
#[test]
fn every_claim_is_reachable_with_its_json_type() {
    let token = ed_token_with(json!({
        "aud": [AUD, "legacy"], "nbf": NOW - 10, "nonce": "n-1", "jti": "j-1",
        "groups": ["a"], "kubernetes.io": {"namespace": "ci"}
    }));
    let v = accepted(&token);
    assert_eq!(v.claim("aud"), Some(json!([AUD, "legacy"])));
    assert_eq!(v.claim("nbf"), Some(json!(NOW - 10)));
    assert_eq!(v.claim("nonce"), Some(json!("n-1")));
    assert_eq!(v.claim("iat"), Some(json!(NOW)));
    assert_eq!(v.claim("exp"), Some(json!(NOW + 300)));
    assert_eq!(v.claim("sub"), Some(json!(SUB)));
    assert_eq!(v.claim("iss"), Some(json!(ISS)));
    assert_eq!(v.claim("jti"), Some(json!("j-1")));
    assert_eq!(v.claim("groups"), Some(json!(["a"])));
    assert_eq!(v.claim("kubernetes.io.namespace"), Some(json!("ci")));
    assert_eq!(v.claim_text("aud").as_deref(), Some("meshward,legacy"));
    assert_eq!(v.claim_text("nbf"), Some((NOW - 10).to_string()));
    // A single-string `aud` stays a string.
    assert_eq!(accepted(&ed_token()).claim("aud"), Some(json!(AUD)));
    // Each claim is kept once: the typed identity fields are not repeated in the claims map.
    for name in ["sub", "iss", "jti"] {
        assert!(!v.claims.contains_key(name), "{name} kept twice");
    }
}

/// A deny rule on `aud` fires, a rule requiring `nbf` matches, and `${claim.nonce}` renders.
#[test]
fn policy_sees_aud_nbf_and_nonce() {
    let engine = engine_with(|b| {
        let rules = b["rules"].as_array_mut().unwrap();
        rules.insert(
            0,
            json!({"id": "no-legacy", "effect": "deny", "hosts": [HOST], "methods": ["GET"],
                   "paths": [{"prefix": "/public"}], "claims": [{"claim": "aud", "contains": "legacy"}]}),
        );
        rules.push(json!({"id": "nbf-required", "hosts": [HOST], "methods": ["GET"],
                          "paths": [{"template": "/nbf/{n}"}], "claims": [{"claim": "nbf", "exists": true}],
                          "conditions": [{"capture": "n", "equals": "${claim.nonce}"}]}));
    });
    let decide = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        let request = HttpRequest {
            method: Some("GET"),
            authority: Some(HOST),
            path: Some(path),
            authorization: vec![auth.as_str()],
            ..HttpRequest::default()
        };
        engine.authorize(&request, NOW).decision
    };
    let legacy = ed_token_with(json!({"aud": [AUD, "legacy"]}));
    assert_denied(&decide("/public/x", &legacy), Reason::PolicyDenied);
    assert_allowed(&decide("/public/x", &ed_token()), "public-read");
    let with_nbf = ed_token_with(json!({"nbf": NOW - 5, "nonce": "abc"}));
    assert_allowed(&decide("/nbf/abc", &with_nbf), "nbf-required");
    assert_denied(&decide("/nbf/abd", &with_nbf), Reason::PolicyNoMatch);
    let without_nbf = ed_token_with(json!({"nonce": "abc"}));
    assert_denied(&decide("/nbf/abc", &without_nbf), Reason::PolicyNoMatch);
    // The same through the token cache (second decision of the same token).
    assert_denied(&decide("/public/x", &legacy), Reason::PolicyDenied);
    assert_allowed(&decide("/nbf/abc", &with_nbf), "nbf-required");
}

/// RFC 7519 2: a NumericDate may have a fraction. `exp` counts until the instant it names (rounded
/// down to the second, exact for a clock in whole seconds); `nbf` and `iat` count from the instant
/// they name (rounded up), so rounding never makes a token valid earlier or longer.
#[test]
fn numeric_dates_with_a_fraction() {
    let at = |token: &str, now: u64| engine().issuers().verify(token, now).map(|v| v.subject);
    let exp = ed_token_with(json!({"exp": NOW as f64 + 0.5}));
    assert_eq!(at(&exp, NOW + SKEW), Ok(SUB.into()));
    assert_eq!(at(&exp, NOW + SKEW + 1), Err(Reason::TokenExpired));
    assert_eq!(accepted(&exp).expires_at, Some(NOW));
    assert_eq!(accepted(&exp).claim("exp"), Some(json!(NOW as f64 + 0.5)));
    let big = ed_token_with(json!({"exp": 1.8e9 + 300.0}));
    assert_eq!(accepted(&big).expires_at, Some(NOW + 300));

    let nbf = ed_token_with(json!({"nbf": (NOW + SKEW) as f64 + 0.5}));
    assert_eq!(at(&nbf, NOW), Err(Reason::TokenNotYetValid));
    assert_eq!(at(&nbf, NOW + 1), Ok(SUB.into()));
    let iat = ed_token_with(json!({"iat": (NOW + SKEW) as f64 + 0.25}));
    assert_eq!(at(&iat, NOW), Err(Reason::TokenNotYetValid));
    assert_eq!(at(&iat, NOW + 1), Ok(SUB.into()));
    // Age limits see `iat` rounded down: the token is never younger than it says.
    assert_eq!(accepted(&ed_token_with(json!({"iat": NOW as f64 - 0.5}))).issued_at, Some(NOW - 1));

    // A lifetime limit is checked on the exact values: 300.5 s is more than 300 s.
    let engine = engine_with(|b| b["issuers"][0]["max_lifetime_seconds"] = json!(300));
    let verify = |extra: Value| engine.issuers().verify(&ed_token_with(extra), NOW);
    assert_eq!(verify(json!({"exp": (NOW + 300) as f64 + 0.5})), Err(Reason::TokenLifetimeTooLong));
    assert_eq!(verify(json!({"iat": NOW as f64 - 0.5})), Err(Reason::TokenLifetimeTooLong));
    assert_eq!(verify(json!({"exp": (NOW + 299) as f64 + 0.5})).map(|v| v.subject), Ok(SUB.into()));
}

/// A JWK without `kid` serves a token naming any kid, if its type and algorithm fit; a key with a kid
/// still serves only that kid, and a token whose kid names no key is still `token_key_unknown`.
#[test]
fn jwk_without_kid_serves_tokens_naming_a_kid() {
    let k = keys();
    let payload = payload();
    let es256 = |key: &SigningKey, kid: &str| {
        let SigningKey::ES256(ec) = key else { unreachable!() };
        sign(&SigningKey::ES256(ES256KeyPair::from_bytes(&ec.to_bytes()).unwrap().with_key_id(kid)), &spec())
    };
    // Signed by the kid-less ES256 key, naming kids it does not have (even `ec-1`, whose key fails
    // first): accepted, as jwt_verify_lib and Envoy accept them.
    for kid in ["anything", "ec-1", "rsa-1"] {
        assert_eq!(accepted(&es256(&k.ec_nokid, kid)).subject, SUB, "{kid}");
    }
    // The `ec-1` key does not serve a token naming `ec-2`, and the kid-less key does not verify it.
    assert_eq!(rejected(&sign_with_kid_es256("ec-2")), Reason::TokenKeyUnknown);
    // A token naming `ec-1` that neither `ec-1` nor the kid-less key verifies: a bad signature.
    assert_eq!(rejected(&sign(&k.attacker_ec, &spec())), Reason::TokenSignatureInvalid);
    // An untrusted key naming an unknown kid: no key.
    assert_eq!(rejected(&es256(&k.attacker_ec, "ec-9")), Reason::TokenKeyUnknown);
    // No kid-less key of the token's algorithm (EdDSA): a named kid must exist.
    let ed = k.ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-9"}"#, &payload).unwrap();
    assert_eq!(rejected(&ed), Reason::TokenKeyUnknown);

    // Type and algorithm must fit: a kid-less RSA JWK marked RS256 does not serve PS256.
    let engine = engine_with(|b| {
        b["issuers"][0]["algorithms"] = json!(["RS256", "PS256", "ES256"]);
        let mut jwk = keys().rsa.public_jwk();
        jwk.as_object_mut().unwrap().remove("kid");
        b["issuers"][0]["jwks"]["keys"] = json!([jwk]);
    });
    let verify = |t: &str| engine.issuers().verify(t, NOW).map(|v| v.subject);
    assert_eq!(verify(&sign_with_kid_rs256("whatever")), Ok(SUB.into()));
    assert_eq!(verify(&ps256_token("whatever")), Err(Reason::TokenKeyUnknown));
    assert_eq!(verify(&sign_with_kid_es256("whatever")), Err(Reason::TokenKeyUnknown));
}

/// A fixed P-521 key (tests only) and an engine trusting it for ES512 under kid `es512-1`.
fn es512_key() -> p521::ecdsa::SigningKey {
    let mut secret = [0x5a_u8; 66];
    secret[0] = 0;
    p521::ecdsa::SigningKey::from_slice(&secret).unwrap()
}

fn es512_engine() -> Engine {
    let point = es512_key().verifying_key().to_sec1_bytes();
    let jwk = json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "es512-1",
                     "x": b64(&point[1..67]), "y": b64(&point[67..])});
    engine_with(|b| {
        b["issuers"][0]["algorithms"] = json!(["ES512", "EdDSA"]);
        b["issuers"][0]["jwks"]["keys"] = json!([jwk, keys().ed.public_jwk()]);
    })
}

/// Signs header and payload text with the P-521 key: r || s, 66 bytes each (RFC 7518 3.4).
fn es512_sign(header: &str, payload: &str) -> String {
    use p521::ecdsa::signature::Signer as _;
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature: p521::ecdsa::Signature = es512_key().sign(input.as_bytes());
    format!("{input}.{}", b64(signature.to_bytes()))
}

const ES512_HEADER: &str = r#"{"alg":"ES512","kid":"es512-1"}"#;

/// ES512 (P-521) tokens verify, with the same claim checks as every other algorithm.
#[test]
fn es512_tokens_verify_with_every_claim_check() {
    let engine = es512_engine();
    let verify = |t: &str| engine.issuers().verify(t, NOW);
    let good = es512_sign(ES512_HEADER, &payload());
    assert_eq!(verify(&good).unwrap().subject, SUB);
    assert_eq!(verify(&es512_sign(r#"{"alg":"ES512"}"#, &payload())).unwrap().subject, SUB);
    // Claims: expiry, audience, not-before, issuer (all checked by the same code as other algorithms).
    assert_eq!(
        verify(&es512_sign(ES512_HEADER, &payload_set("exp", json!(NOW - SKEW - 1)))),
        Err(Reason::TokenExpired)
    );
    assert_eq!(
        verify(&es512_sign(ES512_HEADER, &payload_set("aud", json!("other")))),
        Err(Reason::TokenAudienceInvalid)
    );
    assert_eq!(
        verify(&es512_sign(ES512_HEADER, &payload_set("nbf", json!(NOW + SKEW + 1)))),
        Err(Reason::TokenNotYetValid)
    );
    assert_eq!(
        verify(&es512_sign(ES512_HEADER, &payload_set("exp", Value::Null))),
        Err(Reason::TokenExpiryMissing)
    );
    // Header checks still apply: a non-empty `crit`, a nested token.
    assert_eq!(
        verify(&es512_sign(r#"{"alg":"ES512","crit":["x"]}"#, &payload())),
        Err(Reason::TokenMalformed)
    );
    assert_eq!(
        verify(&es512_sign(r#"{"alg":"ES512","cty":"JWT"}"#, &payload())),
        Err(Reason::TokenMalformed)
    );
    // Signatures: flipped bits, zero r and s, DER or wrong lengths, another key's.
    for flipped in (0..132 * 8).step_by(13).map(|bit| {
        let (h, p, s) = parts(&good);
        let mut sig = unb64(&s);
        sig[bit / 8] ^= 1 << (bit % 8);
        format!("{h}.{p}.{}", b64(sig))
    }) {
        assert_eq!(verify(&flipped), Err(Reason::TokenSignatureInvalid));
    }
    let sig = unb64(&parts(&good).2);
    for bad in [vec![0u8; 132], sig[..131].to_vec(), [sig.clone(), vec![0]].concat(), vec![0u8; 64]] {
        assert_eq!(
            verify(&with_signature(&good, &bad)),
            Err(Reason::TokenSignatureInvalid),
            "{} bytes",
            bad.len()
        );
    }
    assert_eq!(verify(&with_signature(&good, &[])), Err(Reason::TokenMalformed));
    let der = p521::ecdsa::Signature::from_slice(&sig).unwrap().to_der();
    assert_eq!(verify(&with_signature(&good, der.as_bytes())), Err(Reason::TokenSignatureInvalid));
    // An Ed25519 signature under an ES512 header; an ES512 signature under an EdDSA header is not
    // even 64 bytes (as for any wrong-length Ed25519 signature: malformed).
    assert_eq!(verify(&raw(ES512_HEADER, &payload())), Err(Reason::TokenSignatureInvalid));
    assert_eq!(verify(&es512_sign(ED_HEADER, &payload())), Err(Reason::TokenMalformed));
}

/// The P-521 key serves only ES512, and ES512 only where the issuer allows it; the HS512 re-wrap the
/// ES512 path uses inside is no way in: an HS512 token under that (public) re-wrap key is refused.
#[test]
fn es512_only_where_allowed() {
    let token = es512_sign(ES512_HEADER, &payload());
    assert_eq!(rejected(&token), Reason::TokenAlgorithmNotAllowed);
    let engine = es512_engine();
    let rewrap = jwt_simple::prelude::HS512Key::from_bytes(b"meshward ES512 claims re-wrap (not a secret)");
    let claims = library_claims();
    let forged = rewrap.authenticate(claims).unwrap();
    assert_eq!(engine.issuers().verify(&forged, NOW), Err(Reason::TokenAlgorithmNotAllowed));
    // Even where HS512 is allowed with a real secret, the re-wrap key is not that secret.
    let hmac = engine_with(|b| {
        b["issuers"][0]["algorithms"] = json!(["HS512"]);
        b["issuers"][0]["hmac_secret"] = json!(b64([7u8; 32]));
        b["issuers"][0]["jwks"] = json!({"keys": []});
    });
    assert_eq!(hmac.issuers().verify(&forged, NOW), Err(Reason::TokenSignatureInvalid));
}
