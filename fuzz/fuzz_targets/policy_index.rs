//! The rule index against a full scan, over generated bundles.
//!
//! Input: bytes that pick rules (host pattern, methods, path pattern, effect, subjects) and then
//! requests (host, port, method, path) from small alphabets chosen to collide: literal prefixes,
//! anchors after `**`, ports, wildcard hosts, percent-encodings.
//!
//! Property: `Policy::evaluate` (which looks only at the rules the index hands out) decides every
//! request as checking every rule in bundle order with `Policy::explain` does: a matching deny
//! wins, else the first matching allow, else no match.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::policy::{Effect, PolicyInput};
use meshward::request::RequestTarget;
use meshward::token::Algorithm;
use meshward::{BundleConfig, Reason, VerifiedToken};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

const HOSTS: &[&str] = &["a.test", "*.test", "*.b.test:443", "a.test:8443", "*", "b.test", "*.a.test"];
const METHODS: &[&[&str]] = &[&["GET"], &["PUT", "POST"], &["*"], &["DELETE"]];
const PATHS: &[(&str, &str)] = &[
    ("prefix", "/"), ("prefix", "/v2"), ("prefix", "/v2/a"), ("exact", "/v2/"), ("exact", "/v2/a:b"),
    ("exact", "/v2/a%3Ab"), ("template", "/v2/{repo:**}/manifests/{ref}"), ("template", "/**/x/**"),
    ("template", "/**/manifests"), ("template", "/v2/*/x"), ("template", "/{a}/x/{b}"),
    ("template", "/v2/{r:**}/tags/list"), ("template", "/**"), ("template", "/x/**/y/{z}"),
];
const SUBJECTS: &[&str] = &["svc", "s*", "**", "other"];
const REQUEST_HOSTS: &[&str] = &["a.test", "b.test", "x.b.test", "c.a.test", "test", "z.test"];
const PORTS: &[&str] = &["", ":443", ":8443"];
const REQUEST_METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE"];
const SEGMENTS: &[&str] = &["v2", "a", "x", "y", "manifests", "tags", "list", "a:b", "a%3ab", "1", ""];

struct Fixture {
    key: SigningKey,
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::generate(Algorithm::EdDSA, "k").expect("key");
        let token = key.sign(&TokenSpec::new("https://mesh.test", "svc", "api", NOW - 10, 300)).expect("sign");
        Fixture { key, token }
    })
}

/// Hands out the input's bytes as choices; zero when they run out.
struct Choices<'a>(std::slice::Iter<'a, u8>);

impl Choices<'_> {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let b = usize::from(self.0.next().copied().unwrap_or(0));
        items[b % items.len()]
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut c = Choices(data.iter());
    let count = 1 + c.pick(&[0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let rules: Vec<_> = (0..count)
        .map(|i| {
            let (kind, path) = c.pick(PATHS);
            json!({
                "id": format!("r{i}"),
                "effect": if c.pick(&[0, 1, 2, 3]) == 0 { "deny" } else { "allow" },
                "hosts": [c.pick(HOSTS)],
                "methods": c.pick(METHODS),
                "paths": [{kind: path}],
                "subjects": [c.pick(SUBJECTS)],
            })
        })
        .collect();
    let bundle = json!({
        "name": "fuzz",
        "issuers": [{"name": "mesh", "issuer": "https://mesh.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[&f.key])}],
        "rules": rules,
    });
    let Ok((engine, _)) = BundleConfig::from_json(bundle.to_string().as_bytes()).and_then(BundleConfig::compile)
    else {
        return;
    };
    let identity: VerifiedToken = engine.issuers().verify(&f.token, NOW).expect("token verifies");
    for _ in 0..8 {
        let authority = format!("{}{}", c.pick(REQUEST_HOSTS), c.pick(PORTS));
        let depth = 1 + c.pick(&[0usize, 1, 2, 3, 4, 5]);
        let path: String = (0..depth).map(|_| format!("/{}", c.pick(SEGMENTS))).collect();
        let method = c.pick(REQUEST_METHODS);
        let Ok(target) = RequestTarget::new(Some(method), Some(&authority), Some(&path)) else { continue };
        let input = PolicyInput { target: &target, headers: &[], token: Some(&identity), peer: None, now: NOW };
        let indexed = engine.policy().evaluate(&input).decision;
        let traces = engine.policy().explain(&input);
        let matched: Vec<_> =
            engine.policy().rules().iter().zip(&traces).filter(|(_, t)| t.mismatch.is_none()).collect();
        let expected = match matched.iter().find(|(r, _)| r.effect == Effect::Deny) {
            Some((r, _)) => (Reason::PolicyDenied, r.id.as_str()),
            None => match matched.first() {
                Some((r, _)) => (Reason::Allowed, r.id.as_str()),
                None => (Reason::PolicyNoMatch, "default-deny"),
            },
        };
        assert_eq!((indexed.reason, indexed.rule_label()), expected, "{method} {authority}{path} in {bundle}");
    }
});
