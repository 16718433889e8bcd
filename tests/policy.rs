//! The policy language: matching, conditions, modes, and the index agreeing with a full scan.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::policy::{Mismatch, PolicyInput};
use meshward::request::RequestTarget;
use meshward::token::Algorithm;
use meshward::{BundleConfig, Engine, HttpRequest, Reason};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

fn key() -> SigningKey {
    SigningKey::generate(Algorithm::EdDSA, "k").unwrap()
}

fn compile(key: &SigningKey, rules: Value, extra: Value) -> Result<Engine, meshward::ConfigError> {
    let mut bundle = json!({
        "name": "t",
        "issuers": [
            {"name": "mesh", "issuer": "https://mesh.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[key])},
            {"name": "sso", "issuer": "https://sso.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[key])},
        ],
        "rules": rules,
    });
    for (k, v) in extra.as_object().unwrap() {
        bundle[k] = v.clone();
    }
    BundleConfig::from_json(bundle.to_string().as_bytes())?.compile().map(|(e, _)| e)
}

fn token(key: &SigningKey, iss: &str, sub: &str, claims: Value) -> String {
    let mut spec = TokenSpec::new(iss, sub, "api", NOW - 60, 360);
    spec.claims = claims.as_object().unwrap().clone();
    format!("Bearer {}", key.sign(&spec).unwrap())
}

struct Req<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    auth: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    peer: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn new(method: &'a str, path: &'a str, auth: Option<&'a str>) -> Self {
        Req { method, host: "api.test", path, auth, headers: vec![], peer: None }
    }
    fn run(&self, engine: &Engine) -> meshward::Outcome {
        let request = HttpRequest {
            method: Some(self.method),
            authority: Some(self.host),
            path: Some(self.path),
            authorization: self.auth.into_iter().collect(),
            headers: self.headers.clone(),
            peer: self.peer,
            peer_certificate_sha256: None,
        };
        engine.authorize(&request, NOW)
    }
    fn decide(&self, engine: &Engine) -> (Reason, String) {
        let d = self.run(engine).decision;
        (d.reason, d.rule_label().to_string())
    }
}

fn allowed(rule: &str) -> (Reason, String) {
    (Reason::Allowed, rule.into())
}

fn denied(reason: Reason) -> (Reason, String) {
    (reason, if reason == Reason::PolicyNoMatch { "default-deny" } else { "-" }.into())
}

#[test]
fn templates_tie_captures_to_claims() {
    let k = key();
    let rules = json!([{
        "id": "own-namespace", "hosts": ["api.test"], "methods": ["PUT"],
        "paths": [{"template": "/v2/{repo:**}/manifests/{ref}"}],
        "issuers": ["mesh"], "subjects": ["system:serviceaccount:*:*"],
        "conditions": [{"capture": "repo", "starts_with": "${claim.kubernetes.io.namespace}/"}],
    }]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let ci = token(
        &k,
        "https://mesh.test",
        "system:serviceaccount:ci:builder",
        json!({"kubernetes.io": {"namespace": "ci"}}),
    );
    let no_ns = token(&k, "https://mesh.test", "system:serviceaccount:ci:builder", json!({}));
    assert_eq!(
        Req::new("PUT", "/v2/ci/app/manifests/1", Some(&ci)).decide(&engine),
        allowed("own-namespace")
    );
    assert_eq!(
        Req::new("PUT", "/v2/ci/manifests/1", Some(&ci)).decide(&engine),
        denied(Reason::PolicyNoMatch),
        "ci is not under ci/"
    );
    assert_eq!(
        Req::new("PUT", "/v2/cix/app/manifests/1", Some(&ci)).decide(&engine),
        denied(Reason::PolicyNoMatch)
    );
    assert_eq!(
        Req::new("PUT", "/v2/other/app/manifests/1", Some(&ci)).decide(&engine),
        denied(Reason::PolicyNoMatch)
    );
    assert_eq!(
        Req::new("PUT", "/v2/ci/app/manifests/1", Some(&no_ns)).decide(&engine),
        denied(Reason::PolicyNoMatch)
    );
}

#[test]
fn claim_conditions_scopes_and_issuers() {
    let k = key();
    let rules = json!([
        {"id": "admins", "hosts": ["api.test"], "methods": ["*"], "paths": [{"prefix": "/admin"}], "issuers": ["sso"],
         "subjects": ["**"],
         "claims": [{"claim": "groups", "contains": "payments-admins"}, {"claim": "email", "glob": "*@example.com"},
                    {"claim": "mfa", "equals": true}, {"claim": "region", "one_of": ["eu", "us"]},
                    {"claim": "suspended", "exists": false}]},
        {"id": "scoped", "hosts": ["api.test"], "methods": ["POST"], "paths": [{"exact": "/refunds"}],
         "subjects": ["**"], "scopes": ["refunds:write", "payments"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let good = json!({"groups": ["staff", "payments-admins"], "email": "ann@example.com", "mfa": true, "region": "eu"});
    let admin = token(&k, "https://sso.test", "ann", good.clone());
    assert_eq!(Req::new("DELETE", "/admin/users/7", Some(&admin)).decide(&engine), allowed("admins"));
    for (field, value) in [
        ("groups", json!(["staff"])),
        ("email", json!("ann@evil.com")),
        ("mfa", json!(false)),
        ("region", json!("apac")),
        ("suspended", json!(true)),
    ] {
        let mut claims = good.clone();
        claims[field] = value;
        let t = token(&k, "https://sso.test", "ann", claims);
        assert_eq!(
            Req::new("GET", "/admin", Some(&t)).decide(&engine),
            denied(Reason::PolicyNoMatch),
            "{field}"
        );
    }
    // The same claims from another issuer do not count.
    let wrong_issuer = token(&k, "https://mesh.test", "ann", good);
    assert_eq!(Req::new("GET", "/admin", Some(&wrong_issuer)).decide(&engine), denied(Reason::PolicyNoMatch));

    let both = token(&k, "https://mesh.test", "svc", json!({"scope": "payments refunds:write"}));
    let scp = token(&k, "https://mesh.test", "svc", json!({"scp": ["refunds:write", "payments"]}));
    let one = token(&k, "https://mesh.test", "svc", json!({"scope": "refunds:write"}));
    assert_eq!(Req::new("POST", "/refunds", Some(&both)).decide(&engine), allowed("scoped"));
    assert_eq!(Req::new("POST", "/refunds", Some(&scp)).decide(&engine), allowed("scoped"));
    assert_eq!(Req::new("POST", "/refunds", Some(&one)).decide(&engine), denied(Reason::PolicyNoMatch));
}

#[test]
fn header_conditions_and_repeated_headers() {
    let k = key();
    let rules = json!([{"id": "canary", "hosts": ["api.test"], "methods": ["GET"], "paths": [{"prefix": "/"}],
        "subjects": ["**"], "headers": [{"header": "x-env", "one_of": ["canary", "stage"]}]}]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    let mut r = Req::new("GET", "/x", Some(&t));
    assert_eq!(r.decide(&engine), denied(Reason::PolicyNoMatch));
    r.headers = vec![("x-env", "canary")];
    assert_eq!(r.decide(&engine), allowed("canary"));
    r.headers = vec![("x-env", "prod")];
    assert_eq!(r.decide(&engine), denied(Reason::PolicyNoMatch));
    r.headers = vec![("x-env", "canary"), ("x-env", "prod")];
    assert_eq!(r.decide(&engine), denied(Reason::RequestHeaderRepeated));
    assert_eq!(Reason::RequestHeaderRepeated.http_status(), 400);
    // A request check: it comes before the token is looked at, and needs no token.
    let mut unverified = Req::new("GET", "/x", Some("Bearer not.a.token"));
    unverified.headers = vec![("x-env", "canary"), ("x-env", "prod")];
    assert_eq!(unverified.decide(&engine), denied(Reason::RequestHeaderRepeated));
    unverified.auth = None;
    assert_eq!(unverified.decide(&engine), denied(Reason::RequestHeaderRepeated));
    // Headers no condition reads may repeat.
    r.headers = vec![("x-env", "canary"), ("accept", "a"), ("accept", "b")];
    assert_eq!(r.decide(&engine), allowed("canary"));
}

#[test]
fn method_override_headers_change_nothing() {
    let k = key();
    let rules = json!([{"id": "read", "hosts": ["api.test"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    let mut r = Req::new("DELETE", "/x", Some(&t));
    r.headers = vec![("x-http-method-override", "GET"), ("x-method-override", "GET")];
    assert_eq!(r.decide(&engine), denied(Reason::PolicyNoMatch));
    assert_eq!(Req::new("DELETE", "/x?_method=GET", Some(&t)).decide(&engine), denied(Reason::PolicyNoMatch));
    assert_eq!(Req::new("get", "/x", Some(&t)).decide(&engine), denied(Reason::PolicyNoMatch));
}

#[test]
fn peer_identity_alone_or_with_a_token() {
    let k = key();
    let rules = json!([
        {"id": "mesh-health", "hosts": ["*"], "methods": ["GET"], "paths": [{"exact": "/health"}],
         "peers": ["spiffe://cluster.local/ns/monitoring/**"]},
        {"id": "both", "hosts": ["*"], "methods": ["POST"], "paths": [{"exact": "/jobs"}],
         "peers": ["spiffe://cluster.local/ns/ci/sa/runner"], "subjects": ["spiffe://cluster.local/ns/ci/sa/runner"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let mut health = Req::new("GET", "/health", None);
    assert_eq!(health.decide(&engine), denied(Reason::TokenMissing), "no peer, no token: ask for a token");
    health.peer = Some("spiffe://cluster.local/ns/monitoring/sa/prom");
    assert_eq!(health.decide(&engine), allowed("mesh-health"));
    health.peer = Some("spiffe://cluster.local/ns/web/sa/x");
    assert_eq!(health.decide(&engine), denied(Reason::TokenMissing));

    let t = token(&k, "https://mesh.test", "spiffe://cluster.local/ns/ci/sa/runner", json!({}));
    let mut jobs = Req::new("POST", "/jobs", Some(&t));
    assert_eq!(jobs.decide(&engine), denied(Reason::PolicyNoMatch), "token without the peer");
    jobs.peer = Some("spiffe://cluster.local/ns/ci/sa/runner");
    assert_eq!(jobs.decide(&engine), allowed("both"));
    jobs.auth = None;
    assert_eq!(jobs.decide(&engine), denied(Reason::TokenMissing), "peer without the token");
}

#[test]
fn deny_overrides_allow_and_dry_run_rules_only_report() {
    let k = key();
    let rules = json!([
        {"id": "read-all", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "no-secrets", "effect": "deny", "hosts": ["*"], "methods": ["*"], "paths": [{"prefix": "/secrets"}], "subjects": ["**"]},
        {"id": "new-deny", "effect": "deny", "mode": "dry-run", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/internal"}], "subjects": ["**"]},
        {"id": "new-allow", "mode": "dry-run", "hosts": ["*"], "methods": ["PUT"], "paths": [{"prefix": "/drafts"}], "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    assert_eq!(
        Req::new("GET", "/secrets/k", Some(&t)).decide(&engine),
        (Reason::PolicyDenied, "no-secrets".into())
    );
    let o = Req::new("GET", "/internal/x", Some(&t)).run(&engine);
    assert!(o.decision.allowed, "dry-run deny does not block");
    let shadow = o.dry_run.expect("the dry-run rule would deny");
    assert_eq!((shadow.reason, shadow.rule_label()), (Reason::PolicyDenied, "new-deny"));
    let o = Req::new("PUT", "/drafts/1", Some(&t)).run(&engine);
    assert_eq!(o.decision.reason, Reason::PolicyNoMatch, "dry-run allow does not allow");
    assert_eq!(o.dry_run.map(|d| d.rule_label().to_string()), Some("new-allow".into()));
    let o = Req::new("GET", "/public", Some(&t)).run(&engine);
    assert!(o.decision.allowed && o.dry_run.is_none(), "no disagreement, nothing to report");
}

#[test]
fn a_dry_run_bundle_lets_everything_through_but_reports_it() {
    let k = key();
    let rules = json!([{"id": "read", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}]);
    let engine = compile(&k, rules, json!({"mode": "dry-run"})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    let o = Req::new("PUT", "/x", Some(&t)).run(&engine);
    assert_eq!(o.decision.reason, Reason::PolicyNoMatch);
    assert!(o.lets_through());
    let o = Req::new("GET", "/x", Some("Bearer not.a.token")).run(&engine);
    assert_eq!(o.decision.reason, Reason::TokenMalformed);
    assert!(o.lets_through(), "token problems too are only reported in a dry-run bundle");
}

#[test]
fn hosts_ports_and_case() {
    let k = key();
    let rules = json!([
        {"id": "exact", "hosts": ["API.Example.com"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "wild", "hosts": ["*.svc.test"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "port", "hosts": ["registry.test:5000"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    for host in ["api.example.com", "API.EXAMPLE.COM:8443", "api.example.com."] {
        let mut r = Req::new("GET", "/Case", Some(&t));
        r.host = host;
        assert_eq!(r.decide(&engine), allowed("exact"), "{host}");
    }
    for (host, expect) in [
        ("a.svc.test", allowed("wild")),
        ("a.b.svc.test", allowed("wild")),
        ("svc.test", denied(Reason::PolicyNoMatch)),
        ("registry.test:5000", allowed("port")),
        ("REGISTRY.test.:5000", allowed("port")),
        ("registry.test:443", denied(Reason::PolicyNoMatch)),
        ("registry.test", denied(Reason::PolicyNoMatch)),
    ] {
        let mut r = Req::new("GET", "/", Some(&t));
        r.host = host;
        assert_eq!(r.decide(&engine), expect, "{host}");
    }
}

#[test]
fn bad_rules_are_refused_with_their_field() {
    let k = key();
    let base = json!({"id": "r", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]});
    let cases = [
        (json!({"subjects": []}), "rules[0].subjects"),
        (json!({"methods": ["get"]}), "rules[0].methods[0]"),
        (json!({"paths": [{"template": "/a/{x}/{x}"}]}), "rules[0].paths[0]"),
        (json!({"paths": [{"prefix": "/a/../b"}]}), "rules[0].paths[0]"),
        (json!({"conditions": [{"capture": "nope", "equals": "x"}]}), "rules[0].conditions[0]"),
        (json!({"claims": [{"claim": "a", "equals": 1, "glob": "x"}]}), "rules[0].claims[0]"),
        (json!({"claims": [{"header": "a", "equals": 1}]}), "rules[0].claims[0]"),
        (json!({"headers": [{"header": "X-Env", "equals": "a"}]}), "rules[0].headers[0]"),
        (json!({"issuers": ["nobody"]}), "rules[0].issuers[0]"),
        (
            json!({"not_before": "2027-01-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"}),
            "rules[0].expires_at",
        ),
        (json!({"expires_at": "next tuesday"}), "rules[0].expires_at"),
        (json!({"registry": {"actions": ["pull"], "repositories": ["**"]}}), "rules[0].registry"),
        // Issue 11 item 10: pattern sizes are bounded.
        (json!({"paths": [{"template": "/**/a/**/b/**"}]}), "rules[0].paths[0]"),
        (json!({"paths": [{"prefix": "/v1"}, {"template": "/{x:**}/a/{y:**}/b/**"}]}), "rules[0].paths[1]"),
        (json!({"paths": [{"exact": "/a".repeat(33)}]}), "rules[0].paths[0]"),
        (json!({"paths": [{"template": "/*".repeat(33)}]}), "rules[0].paths[0]"),
        // Issue 11 item 6: a deny rule's conditions cannot test a capture whose split is ambiguous.
        (
            json!({"effect": "deny", "paths": [{"template": "/{a:**}/{b:**}"}], "conditions": [{"capture": "a", "equals": "x"}]}),
            "rules[0].conditions[0]",
        ),
        (
            json!({"effect": "deny", "paths": [{"template": "/**/{b}/**"}], "conditions": [{"capture": "b", "equals": "x"}]}),
            "rules[0].conditions[0]",
        ),
    ];
    for (patch, field) in cases {
        let mut rule = base.clone();
        for (k2, v) in patch.as_object().unwrap() {
            rule[k2] = v.clone();
        }
        let err = compile(&k, json!([rule]), json!({})).err().unwrap_or_else(|| panic!("accepted {patch}"));
        assert_eq!(err.field, field, "{patch}: {err}");
    }
    let dup = compile(&k, json!([base.clone(), base.clone()]), json!({})).err().unwrap();
    assert_eq!(dup.field, "rules[1].id");
    assert!(dup.message.ends_with("is used twice"), "{dup}");
    // Errors come in rule order: a rule that does not compile before a later reused id, and a
    // reused id before a later rule that does not compile.
    let mut bad = base.clone();
    bad["id"] = json!("another");
    bad["hosts"] = json!([]);
    let first = compile(&k, json!([base.clone(), bad.clone(), base.clone()]), json!({})).err().unwrap();
    assert_eq!(first.field, "rules[1].hosts", "{first}");
    let first = compile(&k, json!([base.clone(), base, bad]), json!({})).err().unwrap();
    assert_eq!(first.field, "rules[1].id", "{first}");
}

/// The index must never change a decision: compare it with checking every rule in order.
#[test]
fn the_index_agrees_with_a_full_scan() {
    let k = key();
    let hosts = ["a.test", "b.test", "*.c.test", "*", "a.test:8443", "x.c.test:80"];
    let methods = [json!(["GET"]), json!(["PUT", "POST"]), json!(["*"])];
    let paths = [
        json!({"prefix": "/v2/"}),
        json!({"exact": "/v2/"}),
        json!({"template": "/v2/{repo:**}/manifests/{ref}"}),
        json!({"template": "/api/*/items/**"}),
        json!({"prefix": "/"}),
        json!({"prefix": "/api/x"}),
        json!({"prefix": "/v2/dev"}),
        json!({"exact": "/api/x/y"}),
        json!({"template": "/v2/**"}),
        json!({"template": "/api/{id}"}),
        // Anchored by a literal after the last `**`, or between two.
        json!({"template": "/**/x/**"}),
        json!({"template": "/{a:**}/items/{b}"}),
        json!({"template": "/api/**/items/{id}"}),
        json!({"template": "/v2/{repo:**}/tags/list"}),
        json!({"template": "/**/y"}),
        json!({"template": "/{a}/x/{b}"}),
    ];
    let subjects = ["svc-a", "svc-*", "**"];
    let mut rules = Vec::new();
    let mut n = 0usize;
    // A deterministic pseudo-random mix of rules.
    let mut seed = 0x2545_f491_u64;
    let mut next = |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % m as u64).unwrap()
    };
    for _ in 0..300 {
        n += 1;
        rules.push(json!({
            "id": format!("r{n}"),
            "effect": if next(25) == 0 { "deny" } else { "allow" },
            "hosts": [hosts[next(hosts.len())]],
            "methods": methods[next(methods.len())],
            "paths": [paths[next(paths.len())]],
            "subjects": [subjects[next(subjects.len())]],
        }));
    }
    let engine = compile(&k, json!(rules), json!({})).unwrap();
    let identities: Vec<_> = ["svc-a", "svc-b", "other"]
        .iter()
        .map(|s| {
            let spec = TokenSpec::new("https://mesh.test", s, "api", NOW, 300);
            engine.issuers().verify(&k.sign(&spec).unwrap(), NOW).unwrap()
        })
        .collect();
    let request_hosts = ["a.test", "b.test", "x.c.test", "c.test", "z.test", "a.test:8443", "x.c.test:80"];
    let request_paths = [
        "/v2/",
        "/v2/app/manifests/1",
        "/api/7/items/a/b",
        "/api/x/y",
        "/api/x",
        "/other",
        "/v2",
        "/v2/dev/app/blobs/1",
        "/v2/devil",
        "/api/x/items/x",
        "/x/items/y",
        "/x",
        "/v2/tags/list",
        "/v2/a/tags/list",
        "/v2/x/y",
        "/a/x/y",
    ];
    let request_methods = ["GET", "PUT", "POST", "DELETE"];
    let mut checked = 0;
    let mut outcomes = std::collections::HashMap::new();
    for host in request_hosts {
        for path in request_paths {
            for method in request_methods {
                for identity in &identities {
                    let target = RequestTarget::new(Some(method), Some(host), Some(path)).unwrap();
                    let input = PolicyInput {
                        target: &target,
                        headers: &[],
                        token: Some(identity),
                        peer: None,
                        now: NOW,
                    };
                    let indexed = engine.policy().evaluate(&input).decision;
                    let traces = engine.policy().explain(&input);
                    let matched: Vec<_> = engine
                        .policy()
                        .rules()
                        .iter()
                        .zip(&traces)
                        .filter(|(_, t)| t.mismatch.is_none())
                        .collect();
                    let expected =
                        match matched.iter().find(|(r, _)| r.effect == meshward::policy::Effect::Deny) {
                            Some((r, _)) => (Reason::PolicyDenied, r.id.clone()),
                            None => match matched.first() {
                                Some((r, _)) => (Reason::Allowed, r.id.clone()),
                                None => (Reason::PolicyNoMatch, "default-deny".into()),
                            },
                        };
                    assert_eq!(
                        (indexed.reason, indexed.rule_label().to_string()),
                        expected,
                        "{method} {host}{path} {}",
                        identity.subject
                    );
                    checked += 1;
                    *outcomes.entry(indexed.reason).or_insert(0) += 1;
                }
            }
        }
    }
    assert_eq!(checked, 7 * 16 * 4 * 3);
    // Every kind of decision is well represented, so agreement means something.
    for reason in [Reason::Allowed, Reason::PolicyDenied, Reason::PolicyNoMatch] {
        assert!(outcomes.get(&reason).is_some_and(|&n| n >= 10), "{outcomes:?}");
    }
}

#[test]
fn explain_says_why_each_rule_did_not_match() {
    let k = key();
    let rules = json!([
        {"id": "wrong-host", "hosts": ["other.test"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "wrong-method", "hosts": ["*"], "methods": ["PUT"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "wrong-subject", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["svc-b"]},
        {"id": "expired", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"], "expires_at": NOW - 1},
        {"id": "match", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let spec = TokenSpec::new("https://mesh.test", "svc-a", "api", NOW, 300);
    let identity = engine.issuers().verify(&k.sign(&spec).unwrap(), NOW).unwrap();
    let target = RequestTarget::new(Some("GET"), Some("api.test"), Some("/x")).unwrap();
    let input = PolicyInput { target: &target, headers: &[], token: Some(&identity), peer: None, now: NOW };
    let traces = engine.policy().explain(&input);
    assert_eq!(
        traces.first().and_then(|t| t.mismatch.clone()),
        Some(Mismatch::Host { host: "api.test".into() })
    );
    let why: Vec<_> =
        traces.into_iter().map(|t| t.mismatch.map(|m| m.to_string()).unwrap_or_default()).collect();
    assert_eq!(
        why,
        [
            "host \"api.test\" is not covered".to_string(),
            "method GET is not covered".into(),
            "subject \"svc-a\" is not covered".into(),
            "expired (expires_at)".into(),
            String::new(),
        ]
    );
}

#[test]
fn every_registry_rule_allows_the_version_check() {
    let k = key();
    let rules = json!([
        {"id": "push-dev", "hosts": ["*"], "registry": {"actions": ["push"], "repositories": ["dev/**"]}, "subjects": ["**"]},
        {"id": "no-prod-deletes", "effect": "deny", "hosts": ["*"], "registry": {"actions": ["delete"], "repositories": ["prod/**"]},
         "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "builder", json!({}));
    assert_eq!(Req::new("GET", "/v2/", Some(&t)).decide(&engine), allowed("push-dev"));
    assert_eq!(Req::new("PUT", "/v2/dev/app/manifests/1", Some(&t)).decide(&engine), allowed("push-dev"));
    assert_eq!(
        Req::new("PUT", "/v2/prod/app/manifests/1", Some(&t)).decide(&engine),
        denied(Reason::PolicyNoMatch)
    );
    // A deny registry rule covers its actions only, not the version check.
    assert_eq!(
        Req::new("DELETE", "/v2/prod/app/manifests/1", Some(&t)).decide(&engine),
        (Reason::PolicyDenied, "no-prod-deletes".into())
    );
}

/// Issue 11 item 6: with two `**`, an allow rule's conditions hold on the split it binds (so it
/// never allows more than written), and a deny rule tests only captures with one reading.
#[test]
fn templates_with_two_double_stars() {
    let k = key();
    let rules = json!([
        {"id": "shop", "hosts": ["*"], "methods": ["GET"], "paths": [{"template": "/{a:**}/{b:**}"}], "subjects": ["**"],
         "conditions": [{"capture": "a", "equals": "x"}]},
        {"id": "no-admin", "effect": "deny", "hosts": ["*"], "methods": ["GET"], "paths": [{"template": "/**/{seg}/admin/**"}],
         "subjects": ["**"]},
        {"id": "no-tail", "effect": "deny", "hosts": ["*"], "methods": ["GET"], "paths": [{"template": "/{head}/{rest:**}/secret"}],
         "subjects": ["**"], "conditions": [{"capture": "head", "equals": "x"}]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    assert_eq!(Req::new("GET", "/x/shop/y", Some(&t)).decide(&engine), allowed("shop"));
    // `a` binds `y` (leftmost split); no split gives `a` = `x`.
    assert_eq!(Req::new("GET", "/y/x/shop", Some(&t)).decide(&engine), denied(Reason::PolicyNoMatch));
    let admin = (Reason::PolicyDenied, "no-admin".to_string());
    assert_eq!(Req::new("GET", "/x/shop/admin/y", Some(&t)).decide(&engine), admin);
    assert_eq!(Req::new("GET", "/x/q/admin/admin/y", Some(&t)).decide(&engine), admin);
    let tail = (Reason::PolicyDenied, "no-tail".to_string());
    assert_eq!(Req::new("GET", "/x/a/b/secret", Some(&t)).decide(&engine), tail);
    assert_eq!(Req::new("GET", "/x/secret/secret", Some(&t)).decide(&engine), tail);
}

/// Issue 11 item 8: capture conditions apply to the repository routes, never to the version
/// check, which every registry allow rule grants.
#[test]
fn a_registry_rule_with_conditions_still_allows_the_version_check() {
    let k = key();
    let rules = json!([
        {"id": "own-namespace", "hosts": ["*"], "registry": {"actions": ["pull"], "repositories": ["**"]},
         "subjects": ["**"], "conditions": [{"capture": "repo", "starts_with": "${claim.ns}/"}]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "builder", json!({"ns": "team"}));
    assert_eq!(Req::new("GET", "/v2/", Some(&t)).decide(&engine), allowed("own-namespace"));
    assert_eq!(Req::new("HEAD", "/v2/", Some(&t)).decide(&engine), allowed("own-namespace"));
    assert_eq!(
        Req::new("GET", "/v2/team/app/manifests/1", Some(&t)).decide(&engine),
        allowed("own-namespace")
    );
    assert_eq!(
        Req::new("GET", "/v2/other/app/manifests/1", Some(&t)).decide(&engine),
        denied(Reason::PolicyNoMatch)
    );
    assert_eq!(Req::new("PUT", "/v2/", Some(&t)).decide(&engine), denied(Reason::PolicyNoMatch));
}

/// Issue 11 item 7: `name/**` covers the repository `name` too, in allow and deny rules alike.
#[test]
fn repository_globs_cover_their_parent() {
    let k = key();
    let rules = json!([
        {"id": "pull-all", "hosts": ["*"], "registry": {"actions": ["pull", "delete"], "repositories": ["**"]}, "subjects": ["**"]},
        {"id": "prod-is-immutable", "effect": "deny", "hosts": ["*"], "registry": {"actions": ["delete"], "repositories": ["prod/**"]},
         "subjects": ["**"]},
        {"id": "push-dev", "hosts": ["*"], "registry": {"actions": ["push"], "repositories": ["dev/**"]}, "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "builder", json!({}));
    let immutable = (Reason::PolicyDenied, "prod-is-immutable".to_string());
    assert_eq!(Req::new("DELETE", "/v2/prod/manifests/sha256:ab", Some(&t)).decide(&engine), immutable);
    assert_eq!(Req::new("DELETE", "/v2/prod/a/manifests/sha256:ab", Some(&t)).decide(&engine), immutable);
    assert_eq!(
        Req::new("DELETE", "/v2/production/manifests/sha256:ab", Some(&t)).decide(&engine),
        allowed("pull-all")
    );
    assert_eq!(Req::new("PUT", "/v2/dev/manifests/1", Some(&t)).decide(&engine), allowed("push-dev"));
    assert_eq!(
        Req::new("PUT", "/v2/devil/manifests/1", Some(&t)).decide(&engine),
        denied(Reason::PolicyNoMatch)
    );
}

/// Issue 11 item 1: a rule's 65,537th route is not filed as its first (a prefix) and allowed
/// through the prefix's literal segments without its own template being checked.
#[test]
fn a_rule_with_more_than_65536_routes_keeps_every_route_apart() {
    let k = key();
    let mut paths = vec![json!({"prefix": "/pub"})];
    paths.extend((0..65_535).map(|i| json!({"exact": format!("/e/{i}")})));
    paths.push(json!({"template": "/admin/{id}/read"}));
    let rules =
        json!([{"id": "big", "hosts": ["*"], "methods": ["GET"], "paths": paths, "subjects": ["**"]}]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    assert_eq!(Req::new("GET", "/admin/1/delete", Some(&t)).decide(&engine), denied(Reason::PolicyNoMatch));
    assert_eq!(Req::new("GET", "/admin/1/read", Some(&t)).decide(&engine), allowed("big"));
    assert_eq!(Req::new("GET", "/pub/x", Some(&t)).decide(&engine), allowed("big"));
    assert_eq!(Req::new("GET", "/e/65534", Some(&t)).decide(&engine), allowed("big"));
}

/// Issue 11 items 2 and 3: `*.domain:port` matches that port of names below the domain, and an
/// authority with several colons (or an unbracketed IPv6 address) is malformed.
#[test]
fn wildcard_hosts_with_a_port_and_authorities_with_several_colons() {
    let k = key();
    let rules = json!([
        {"id": "deny-other", "effect": "deny", "hosts": ["*.other.org:443"], "methods": ["*"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "wild-port", "hosts": ["*.svc.test:8443"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/open"}], "subjects": ["**"]},
        {"id": "deny-internal", "effect": "deny", "hosts": ["api.internal"], "methods": ["*"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    for (host, path, expect) in [
        ("a.other.org:443", "/open", (Reason::PolicyDenied, "deny-other".into())),
        ("a.b.other.org:443", "/open", (Reason::PolicyDenied, "deny-other".into())),
        ("a.other.org:444", "/open", allowed("any")),
        ("other.org:443", "/open", allowed("any")),
        ("a.svc.test:8443", "/x", allowed("wild-port")),
        ("A.B.SVC.test.:8443", "/x", allowed("wild-port")),
        ("a.svc.test:443", "/x", denied(Reason::PolicyNoMatch)),
        ("a.svc.test", "/x", denied(Reason::PolicyNoMatch)),
        ("svc.test:8443", "/x", denied(Reason::PolicyNoMatch)),
        ("api.internal:1:443", "/open", denied(Reason::RequestMalformed)),
        ("::1", "/open", denied(Reason::RequestMalformed)),
        ("::1:443", "/open", denied(Reason::RequestMalformed)),
        ("fe80::1", "/open", denied(Reason::RequestMalformed)),
        ("[::1]:443", "/open", allowed("any")),
        ("[::1]", "/open", allowed("any")),
        ("api.internal:443", "/open", (Reason::PolicyDenied, "deny-internal".into())),
    ] {
        let mut r = Req::new("GET", path, Some(&t));
        r.host = host;
        assert_eq!(r.decide(&engine), expect, "{host}{path}");
    }
}

/// A property test written from docs/configuration.md (Rules), not from the code: a small
/// reference model of hosts, methods, paths and deny-overrides decides random bundles and
/// requests, and the engine must agree on every one.
mod documented_semantics {
    use super::*;

    /// Deterministic xorshift: the same cases on every run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % n as u64).unwrap()
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// "`{name}` or `*` one segment, `{name:**}` one or more, `**` zero or more"; literals exact.
    fn template_matches(template: &[&str], path: &[&str]) -> bool {
        match template.split_first() {
            None => path.is_empty(),
            Some((&"**", rest)) => (0..=path.len()).any(|k| template_matches(rest, &path[k..])),
            Some((t, rest)) if t.ends_with(":**}") => {
                (1..=path.len()).any(|k| template_matches(rest, &path[k..]))
            }
            Some((t, rest)) => match path.split_first() {
                Some((p, path_rest)) => {
                    let one = *t == "*" || t.starts_with('{');
                    (if one { !p.is_empty() } else { t == p }) && template_matches(rest, path_rest)
                }
                None => false,
            },
        }
    }

    /// `{"exact"}`: equal; `{"prefix"}`: segment-aware; `{"template"}`: as above.
    fn path_matches(kind: &str, pattern: &str, path: &str) -> bool {
        let segments = |p: &str| p.split('/').skip(1).map(str::to_owned).collect::<Vec<_>>();
        match kind {
            "exact" => pattern == path,
            "prefix" => {
                let prefix = pattern.trim_end_matches('/');
                path == prefix || path.starts_with(&format!("{prefix}/")) || prefix.is_empty()
            }
            _ => {
                let (t, p) = (segments(pattern), segments(path));
                let t: Vec<&str> = t.iter().map(String::as_str).collect();
                let p: Vec<&str> = p.iter().map(String::as_str).collect();
                template_matches(&t, &p)
            }
        }
    }

    /// "exact names, `name:port` (then only that port), `*.domain` (one or more labels),
    /// `*.domain:port` ... or `*`; case-insensitive, trailing dot ignored".
    fn host_matches(pattern: &str, host: &str, port: Option<&str>) -> bool {
        let (pattern, want_port) = match pattern.rsplit_once(':') {
            Some((p, port)) => (p, Some(port)),
            None => (pattern, None),
        };
        if want_port.is_some_and(|w| Some(w) != port) {
            return false;
        }
        let pattern = pattern.to_ascii_lowercase();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            _ if pattern == "*" => true,
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => pattern == host,
        }
    }

    #[test]
    fn the_engine_decides_as_the_documentation_says() {
        let k = key();
        let t = token(&k, "https://mesh.test", "svc", json!({}));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let host_patterns = ["a.test", "A.Test:8443", "*.test", "*.b.test:443", "*", "b.test"];
        let templates = [
            ("exact", "/v1/p:set"),
            ("exact", "/v1/x"),
            ("prefix", "/v1"),
            ("prefix", "/v1/x/"),
            ("prefix", "/"),
            ("template", "/v1/*/x"),
            ("template", "/**/x"),
            ("template", "/**/x/**"),
            ("template", "/v1/{a:**}/x/{b}"),
            ("template", "/{a:**}/{b}"),
            ("template", "/v1/**"),
            ("template", "/*/*"),
            ("template", "/x/{r:**}"),
        ];
        let segments = ["v1", "x", "y", "p:set"];
        let request_hosts = ["a.test", "A.TEST.", "c.a.test", "b.test", "x.b.test", "test", "other"];
        let ports = [None, Some("443"), Some("8443")];
        let (mut cases, mut allowed_n, mut denied_n) = (0, 0, 0);
        for bundle in 0..40 {
            let mut rules = Vec::new();
            let mut model = Vec::new();
            for i in 0..(3 + rng.below(10)) {
                let host = rng.pick(&host_patterns);
                let (kind, pattern) = templates[rng.below(templates.len())];
                let method = rng.pick(&["GET", "PUT", "*"]);
                let deny = rng.below(4) == 0;
                let id = format!("b{bundle}r{i}");
                rules.push(json!({"id": id, "effect": if deny { "deny" } else { "allow" }, "hosts": [host],
                    "methods": [method], "paths": [{kind: pattern}], "subjects": ["**"]}));
                model.push((id, deny, host, method, kind, pattern));
            }
            let engine = compile(&k, json!(rules), json!({})).unwrap();
            for _ in 0..60 {
                let depth = 1 + rng.below(5);
                let path: String = (0..depth).map(|_| format!("/{}", rng.pick(&segments))).collect();
                let host = rng.pick(&request_hosts);
                let port = ports[rng.below(ports.len())];
                let method = rng.pick(&["GET", "PUT", "POST"]);
                let authority = port.map_or(host.to_string(), |p| format!("{host}:{p}"));
                let matching: Vec<_> = model
                    .iter()
                    .filter(|(_, _, h, m, kind, pattern)| {
                        host_matches(h, host, port)
                            && (*m == "*" || *m == method)
                            && path_matches(kind, pattern, &path)
                    })
                    .collect();
                let expected = match matching.iter().find(|r| r.1) {
                    Some(r) => (Reason::PolicyDenied, r.0.clone()),
                    None => match matching.first() {
                        Some(r) => (Reason::Allowed, r.0.clone()),
                        None => denied(Reason::PolicyNoMatch),
                    },
                };
                let mut req = Req::new(method, &path, Some(&t));
                req.host = &authority;
                assert_eq!(req.decide(&engine), expected, "{method} {authority}{path} in {rules:?}");
                cases += 1;
                allowed_n += usize::from(expected.0 == Reason::Allowed);
                denied_n += usize::from(expected.0 == Reason::PolicyDenied);
            }
        }
        assert!(cases == 2400 && allowed_n > 200 && denied_n > 100, "{cases} {allowed_n} {denied_n}");
    }
}

#[test]
fn later_rules_keep_deny_precedence_bundle_order_and_dry_run_reports() {
    let k = key();
    // Evaluation stops looking at rules that can no longer change the decision: a deny listed
    // after any number of allows, and dry-run rules before enforced ones, must still count.
    let rules = json!([
        {"id": "dry-allow", "mode": "dry-run", "hosts": ["api.test"], "methods": ["GET"], "paths": [{"prefix": "/a"}], "subjects": ["**"]},
        {"id": "allow-any", "hosts": ["*"], "methods": ["*"], "paths": [{"prefix": "/"}], "subjects": ["svc"]},
        {"id": "allow-a", "hosts": ["api.test"], "methods": ["GET"], "paths": [{"prefix": "/a"}], "subjects": ["**"]},
        {"id": "allow-a-later", "hosts": ["*.test"], "methods": ["GET"], "paths": [{"exact": "/a/b"}], "subjects": ["**"]},
        {"id": "deny-dry", "effect": "deny", "mode": "dry-run", "hosts": ["*"], "methods": ["GET"], "paths": [{"template": "/a/{x}/secret"}], "subjects": ["**"]},
        {"id": "deny-secret", "effect": "deny", "hosts": ["*.test"], "methods": ["*"], "paths": [{"template": "/a/**/secret"}], "subjects": ["**"]},
        {"id": "deny-secret-later", "effect": "deny", "hosts": ["api.test"], "methods": ["GET"], "paths": [{"prefix": "/a/x"}], "subjects": ["other"]},
        {"id": "deny-purge", "effect": "deny", "hosts": ["api.test"], "methods": ["PURGE"], "paths": [{"prefix": "/"}], "subjects": ["**"]},
        {"id": "dry-deny-only", "effect": "deny", "mode": "dry-run", "hosts": ["api.test"], "methods": ["PUT"], "paths": [{"prefix": "/a"}], "subjects": ["**"]},
    ]);
    let engine = compile(&k, rules, json!({})).unwrap();
    let svc = token(&k, "https://mesh.test", "svc", json!({}));
    let other = token(&k, "https://mesh.test", "other", json!({}));
    let decide = |method: &str, path: &str, t: &str| {
        let o = Req::new(method, path, Some(t)).run(&engine);
        let label = |d: &meshward::Decision| (d.reason, d.rule_label().to_string());
        (label(&o.decision), o.dry_run.as_ref().map(label))
    };
    // The first allow in bundle order; the dry-run allow before it is reported.
    assert_eq!(decide("GET", "/a/b", &svc), (allowed("allow-any"), Some(allowed("dry-allow"))),);
    assert_eq!(decide("GET", "/a/b", &other), (allowed("allow-a"), Some(allowed("dry-allow"))));
    // A deny after every allow still wins; the earlier dry-run deny is what dry-run reports.
    assert_eq!(
        decide("GET", "/a/1/secret", &svc),
        ((Reason::PolicyDenied, "deny-secret".into()), Some((Reason::PolicyDenied, "deny-dry".into()))),
    );
    // Without the dry-run deny's shape (two segments between), the enforced deny is reported alone.
    assert_eq!(decide("POST", "/a/1/2/secret", &svc), ((Reason::PolicyDenied, "deny-secret".into()), None));
    // The first of two matching denies decides.
    assert_eq!(decide("GET", "/a/x", &other), ((Reason::PolicyDenied, "deny-secret-later".into()), None));
    assert_eq!(
        decide("GET", "/a/x/secret", &other),
        ((Reason::PolicyDenied, "deny-secret".into()), Some((Reason::PolicyDenied, "deny-dry".into()))),
    );
    // An unusual method: its deny, listed after the allow for every method.
    assert_eq!(decide("PURGE", "/z", &svc), ((Reason::PolicyDenied, "deny-purge".into()), None));
    // A dry-run deny after an enforced allow is still reported.
    assert_eq!(
        decide("PUT", "/a/b", &svc),
        (allowed("allow-any"), Some((Reason::PolicyDenied, "dry-deny-only".into()))),
    );
}

#[test]
fn the_index_finds_keys_of_every_length() {
    let k = key();
    // Sibling path segments, methods and wildcard host suffixes of many lengths (the index skips
    // suffix lengths it has no key of): each request must find exactly its own rule.
    let segments = ["b", "a", "ab", "ba", "abc", "z", "zz", "aaaa", "b-long-segment", "c"];
    let methods = ["GET", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "PURGE", "M", "PROPFIND", "HEAD"];
    let suffixes = [
        "x.test",
        "y.test",
        "xy.test",
        "a.x.test",
        "long-name.test",
        "q.test",
        "b.y.test",
        "z.test",
        "zz.test",
        "c.test",
    ];
    let mut rules = Vec::new();
    for (i, ((segment, method), suffix)) in segments.iter().zip(methods).zip(suffixes).enumerate() {
        rules.push(json!({
            "id": format!("r{i}"), "hosts": [format!("*.{suffix}")], "methods": [method],
            "paths": [{"prefix": format!("/p/{segment}")}], "subjects": ["**"],
        }));
        rules.push(json!({
            "id": format!("inner{i}"), "hosts": ["*"], "methods": ["*"],
            "paths": [{"template": format!("/q/**/{segment}/**")}], "subjects": ["**"],
        }));
    }
    let engine = compile(&k, json!(rules), json!({})).unwrap();
    let t = token(&k, "https://mesh.test", "svc", json!({}));
    for (i, ((segment, method), suffix)) in segments.iter().zip(methods).zip(suffixes).enumerate() {
        let host = format!("h.{suffix}");
        let path = format!("/p/{segment}/x");
        let mut req = Req::new(method, &path, Some(&t));
        req.host = &host;
        assert_eq!(req.decide(&engine), allowed(&format!("r{i}")), "{method} {host}{path}");
        // Every other method, host suffix and segment misses.
        let other = (i + 1) % segments.len();
        let mut wrong_method = Req::new(methods[other], &path, Some(&t));
        wrong_method.host = &host;
        assert_eq!(wrong_method.decide(&engine), denied(Reason::PolicyNoMatch), "{}", methods[other]);
        let inner = format!("/q/1/{segment}/2");
        assert_eq!(
            Req::new("GET", &inner, Some(&t)).decide(&engine),
            allowed(&format!("inner{i}")),
            "{inner}"
        );
    }
    let mut req = Req::new("GET", "/p/b/x", Some(&t));
    req.host = "x.test";
    assert_eq!(req.decide(&engine), denied(Reason::PolicyNoMatch), "a suffix does not cover itself");
}
