//! The shipped examples stay true: the example bundle compiles, its demo key is the one `make run`
//! signs with, it decides the demo requests as the README says, and `envoy/envoy.yaml` is its
//! rendering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use meshward::cli::dev::{SigningKey, TokenSpec};
use meshward::cli::render::{envoy_bootstrap, EnvoyOptions};
use meshward::{BundleConfig, HttpRequest, Reason};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn the_json_schema_is_generated_from_the_bundle_types() {
    assert_eq!(
        repo_file("policies/meshward.schema.json"),
        meshward::config::json_schema(),
        "policies/meshward.schema.json is stale: run `make schema`"
    );
}

#[test]
fn envoy_yaml_is_the_rendering_of_the_registry_bundle() {
    let bundle = repo_file("policies/registry.json");
    assert_eq!(
        repo_file("envoy/envoy.yaml"),
        envoy_bootstrap(&bundle, &EnvoyOptions::default()),
        "envoy/envoy.yaml is stale: run `make envoy-config`"
    );
}

fn load(rel: &str) -> meshward::Engine {
    let (engine, warnings) =
        BundleConfig::from_json(repo_file(rel).as_bytes()).and_then(BundleConfig::compile).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    engine
}

/// Signs demo tokens: subject, extra claims, and how long ago the token was issued.
fn demo_token(sub: &str, claims: serde_json::Value, age: u64, now: u64) -> String {
    let issuer = if sub.starts_with("spiffe://partners.") {
        "https://partners.example.internal"
    } else {
        "https://issuer.example.internal"
    };
    let mut spec = TokenSpec::new(issuer, sub, "registry.example.internal", now - age, age + 300);
    spec.claims = claims.as_object().unwrap().clone();
    format!("Bearer {}", SigningKey::demo("demo-2026-1").sign(&spec).unwrap())
}

fn registry_decision(
    engine: &meshward::Engine,
    method: &str,
    path: &str,
    auth: &str,
    now: u64,
) -> (Reason, String) {
    let request = HttpRequest {
        method: Some(method),
        authority: Some("registry.example.internal"),
        path: Some(path),
        authorization: vec![auth],
        ..Default::default()
    };
    let d = engine.authorize(&request, now).decision;
    (d.reason, d.rule_label().to_string())
}

fn allowed(rule: &str) -> (Reason, String) {
    (Reason::Allowed, rule.to_string())
}

fn no_rule() -> (Reason, String) {
    (Reason::PolicyNoMatch, "default-deny".to_string())
}

#[test]
fn registry_bundle_keeps_read_write_and_promote_apart() {
    let engine = load("policies/registry.json");
    let decide = |method: &str, path: &str, auth: &str| registry_decision(&engine, method, path, auth, NOW);
    let builder = demo_token("spiffe://example.internal/ci/builder/web", json!({}), 0, NOW);
    let reader = demo_token("spiffe://example.internal/apps/web", json!({}), 0, NOW);
    let bot = demo_token("spiffe://example.internal/ci/release-bot", json!({}), 60, NOW);
    let stale_bot = demo_token("spiffe://example.internal/ci/release-bot", json!({}), 600, NOW);

    // Everyone pulls, including the version check every client starts with.
    assert_eq!(decide("GET", "/v2/", &reader), allowed("pull-workloads"));
    assert_eq!(decide("GET", "/v2/prod/web/manifests/1.0", &reader), allowed("pull-workloads"));
    assert_eq!(decide("HEAD", "/v2/prod/web/blobs/sha256:ab", &reader), allowed("pull-workloads"));
    assert_eq!(decide("GET", "/v2/team/a/b/tags/list", &reader), allowed("pull-workloads"));
    // Builders push to dev/ (blob upload session, chunks, manifest) and nowhere else.
    assert_eq!(decide("POST", "/v2/dev/web/blobs/uploads/", &builder), allowed("push-dev-builders"));
    assert_eq!(decide("PATCH", "/v2/dev/web/blobs/uploads/5f2c", &builder), allowed("push-dev-builders"));
    assert_eq!(decide("PUT", "/v2/dev/web/manifests/1.0", &builder), allowed("push-dev-builders"));
    assert_eq!(decide("PUT", "/v2/prod/web/manifests/1.0", &builder), no_rule());
    assert_eq!(decide("PUT", "/v2/dev/web/manifests/1.0", &reader), no_rule());
    // A repository literally named like a route segment does not confuse the match.
    assert_eq!(decide("PUT", "/v2/dev/manifests/manifests/1.0", &builder), allowed("push-dev-builders"));
    // Promotion: only the release bot, only into prod/, only with a fresh token.
    assert_eq!(decide("PUT", "/v2/prod/web/manifests/1.0", &bot), allowed("promote-release-bot"));
    assert_eq!(decide("PUT", "/v2/prod/web/manifests/1.0", &stale_bot), no_rule());
    assert_eq!(decide("PUT", "/v2/dev/web/manifests/1.0", &bot), no_rule());
    // Methods outside the presets are not granted by them.
    assert_eq!(decide("DELETE", "/v2/dev/web/manifests/1.0", &builder), no_rule());
    assert_eq!(decide("POST", "/v2/dev/web/manifests/1.0", &builder), no_rule());
}

#[test]
fn registry_bundle_time_bound_partner_and_break_glass() {
    let engine = load("policies/registry.json");
    let acme = demo_token("spiffe://partners.example.internal/acme/ci", json!({}), 0, NOW);
    // The contract runs through 2026: allowed inside, denied before and after.
    let during = 1_790_000_000; // 2026-09
    let acme_during = demo_token("spiffe://partners.example.internal/acme/ci", json!({}), 0, during);
    assert_eq!(
        registry_decision(&engine, "GET", "/v2/partners/acme/sdk/manifests/2", &acme_during, during),
        allowed("partner-acme-pull")
    );
    assert_eq!(
        registry_decision(&engine, "GET", "/v2/partners/other/sdk/manifests/2", &acme_during, during),
        no_rule()
    );
    assert_eq!(
        registry_decision(&engine, "GET", "/v2/prod/web/manifests/2", &acme_during, during),
        no_rule()
    );
    assert_eq!(registry_decision(&engine, "GET", "/v2/partners/acme/sdk/manifests/2", &acme, NOW), no_rule());
    let before = 1_760_000_000; // 2025-10
    let acme_before = demo_token("spiffe://partners.example.internal/acme/ci", json!({}), 0, before);
    assert_eq!(
        registry_decision(&engine, "GET", "/v2/partners/acme/sdk/manifests/2", &acme_before, before),
        no_rule()
    );

    // Break-glass deletes need an incident ticket, are flagged, and never touch prod/.
    let oncall = demo_token("spiffe://example.internal/oncall/ann", json!({"ticket": "INC-4711"}), 0, NOW);
    let no_ticket = demo_token("spiffe://example.internal/oncall/ann", json!({}), 0, NOW);
    let request = |path: &'static str, auth: &str| {
        let r = HttpRequest {
            method: Some("DELETE"),
            authority: Some("registry.example.internal"),
            path: Some(path),
            authorization: vec![auth],
            ..Default::default()
        };
        engine.authorize(&r, NOW).decision
    };
    let d = request("/v2/dev/web/manifests/sha256:ab", &oncall);
    assert!(d.allowed && d.break_glass && d.rule_label() == "break-glass-delete", "{d:?}");
    assert_eq!(request("/v2/dev/web/manifests/sha256:ab", &no_ticket).reason, Reason::PolicyNoMatch);
    let d = request("/v2/prod/web/manifests/sha256:ab", &oncall);
    assert_eq!((d.reason, d.rule_label()), (Reason::PolicyDenied, "prod-is-immutable"));
    // Issue 11 item 7: `prod/**` covers the repository `prod` itself, as the rule's name says.
    for path in ["/v2/prod/manifests/sha256:ab", "/v2/prod/blobs/sha256:ab", "/v2/prod/blobs/uploads/5f2c"] {
        let d = request(path, &oncall);
        assert_eq!((d.reason, d.rule_label()), (Reason::PolicyDenied, "prod-is-immutable"), "{path}");
    }
    // ... but not a repository that merely starts with the same letters.
    assert!(request("/v2/production/manifests/sha256:ab", &oncall).allowed);
}

/// Tokens for the payments example: workload JWT-SVIDs and human access tokens, all signed with the
/// public demo key the example trusts.
fn payments_token(issuer: &str, sub: &str, claims: serde_json::Value, typ: Option<&str>, age: u64) -> String {
    let mut spec = TokenSpec::new(issuer, sub, "payments.example.internal", NOW - age, age + 300);
    spec.claims = claims.as_object().unwrap().clone();
    spec.typ = typ.map(String::from);
    spec.token_id = Some(format!("jti-{sub}-{age}"));
    format!("Bearer {}", SigningKey::demo("demo-2026-1").sign(&spec).unwrap())
}

#[test]
fn payments_bundle_separates_services_from_humans() {
    let engine = load("policies/payments-api.json");
    let decide = |method: &str, path: &str, auth: Option<&str>, peer: Option<&str>| {
        let request = HttpRequest {
            method: Some(method),
            authority: Some("payments.example.internal"),
            path: Some(path),
            authorization: auth.into_iter().collect(),
            peer,
            ..Default::default()
        };
        let outcome = engine.authorize(&request, NOW);
        (outcome.decision.reason, outcome.decision.rule_label().to_string(), outcome.dry_run)
    };
    let svid = |sub: &str| payments_token("https://spire.example.internal", sub, json!({}), None, 0);
    let human = |claims: serde_json::Value, age: u64| {
        let mut claims = claims;
        claims["client_id"] = json!("support-console");
        payments_token("https://sso.example.internal", "ann@example.com", claims, Some("at+jwt"), age)
    };
    let checkout = svid("spiffe://example.internal/ns/shop/sa/checkout");
    let cart = svid("spiffe://example.internal/ns/shop/sa/cart");
    let outsider = svid("spiffe://example.internal/ns/ads/sa/tracker");

    let rule = |d: (Reason, String, Option<meshward::Decision>)| (d.0, d.1);
    assert_eq!(rule(decide("GET", "/v1/orders/42", Some(&cart), None)), allowed("shop-reads-orders"));
    assert_eq!(rule(decide("GET", "/v1/orders", Some(&cart), None)), allowed("shop-reads-orders"));
    assert_eq!(rule(decide("GET", "/v1/orders/42", Some(&outsider), None)), no_rule());
    assert_eq!(
        rule(decide("POST", "/v1/payments", Some(&checkout), None)),
        allowed("checkout-creates-payments")
    );
    assert_eq!(
        rule(decide("POST", "/v1/payments", Some(&cart), None)),
        no_rule(),
        "method-level: only checkout creates"
    );
    assert_eq!(rule(decide("DELETE", "/v1/orders/42", Some(&cart), None)), no_rule());

    // Humans: refunds need the scope and the group; admin needs MFA and a fresh login.
    let support = human(json!({"groups": ["payments-support"], "scope": "refunds:write"}), 0);
    let no_scope = human(json!({"groups": ["payments-support"], "scope": "orders:read"}), 0);
    assert_eq!(
        rule(decide("POST", "/v1/payments/p-7/refunds", Some(&support), None)),
        allowed("support-refunds")
    );
    assert_eq!(rule(decide("POST", "/v1/payments/p-7/refunds", Some(&no_scope), None)), no_rule());
    let admin = human(json!({"groups": ["payments-admins"], "amr": ["pwd", "mfa"]}), 60);
    let admin_no_mfa = human(json!({"groups": ["payments-admins"], "amr": ["pwd"]}), 60);
    let admin_stale = human(json!({"groups": ["payments-admins"], "amr": ["pwd", "mfa"]}), 1200);
    assert_eq!(rule(decide("PATCH", "/admin/limits", Some(&admin), None)), allowed("admins-with-mfa"));
    assert_eq!(rule(decide("PATCH", "/admin/limits", Some(&admin_no_mfa), None)), no_rule());
    assert_eq!(rule(decide("PATCH", "/admin/limits", Some(&admin_stale), None)), no_rule());
    // Workloads never reach the admin API, whatever else would allow it.
    assert_eq!(
        rule(decide("GET", "/admin/limits", Some(&checkout), None)),
        (Reason::PolicyDenied, "services-never-admin".into())
    );

    // A human token is refused as a workload identity, and the other way round.
    let svid_as_human =
        payments_token("https://sso.example.internal", "ann", json!({"client_id": "x"}), None, 0);
    assert_eq!(decide("GET", "/v1/orders", Some(&svid_as_human), None).0, Reason::TokenTypeInvalid);
    let bad_svid = svid("spiffe://elsewhere.internal/ns/shop/sa/cart");
    assert_eq!(decide("GET", "/v1/orders", Some(&bad_svid), None).0, Reason::TokenSubjectInvalid);

    // mTLS-only health checks from the monitoring namespace.
    let prom = Some("spiffe://example.internal/ns/monitoring/sa/prometheus");
    assert_eq!(rule(decide("GET", "/healthz", None, prom)), allowed("mesh-health"));
    assert_eq!(
        decide("GET", "/healthz", None, Some("spiffe://example.internal/ns/shop/sa/cart")).0,
        Reason::TokenMissing
    );

    // The v2 preview rule is dry-run: reported, not enforced.
    let (reason, _, shadow) = decide("GET", "/v2/orders/42", Some(&cart), None);
    assert_eq!(reason, Reason::PolicyNoMatch);
    assert_eq!(shadow.map(|d| d.rule_label().to_string()), Some("orders-v2-preview".into()));
}
