//! Criterion benchmarks of the native core (the "Method" of the performance spec, `performance.md`):
//!
//! - `verify_and_decide/<alg>`: one full `Engine::authorize` (request checks, token verification,
//!   a 100-rule policy) per algorithm, for a request that is allowed. The verified-token cache is
//!   disabled (`token_cache_entries: 0`), so every iteration checks the signature: the cold path.
//! - `verify_and_decide/cached-EdDSA`: the same with the default cache, the token already cached:
//!   the hot path.
//! - `decide_only/<N>`: policy evaluation alone for an already verified identity, at 10 / 1,000 /
//!   10,000 rules (target: under 1 us at 10,000 rules, within 1.5x of the 10-rule case).
//! - `compile/<N>`: `BundleConfig::from_json` + `compile` at 10 / 1,000 / 10,000 rules (target: a
//!   10,000-rule bundle configures in under 100 ms).
//!
//! Keys are generated at start-up and rules deterministically. Rules come in "services" of ten
//! (one host each, the benchmarked request's service first), plus one any-host rule, so the request
//! meets the same few candidate rules (same host, method and path prefix, but another caller, a
//! missing claim or scope, a longer template, a quarantine deny) at every bundle size, as in a real
//! mesh where a bundle grows by adding services. In every policy exactly one rule matches the
//! request (checked before timing, with `Policy::explain`), so the benches measure a real allow.
//! The Envoy load benchmark (`benches/envoy/load.py`) ports this generator: change both together.
//!
//! - `pathological/<kind>/<caller>`: the worst cases of issue 11 item 10 (1,000 rules that look
//!   for a segment anywhere in a 256-segment path, or 1,000 registry rules and a 250-segment
//!   repository), without a token and with one (target: under 100 us).
//!
//! `cargo bench --bench decision -- --test` runs each benchmark once (the CI smoke test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, SamplingMode};
use meshward::audit::AuditRecord;
use meshward::policy::PolicyInput;
use meshward::request::{serialize_header_map, OwnedRequest, RequestTarget};
use meshward::token::Algorithm;
use meshward::{BundleConfig, Engine, HttpRequest, Reason, VerifiedToken};
use serde_json::{json, Value};

mod common;
use common::*;

fn compile(json: &[u8]) -> Engine {
    let (engine, warnings) = BundleConfig::from_json(json).expect("parse bundle").compile().expect("compile");
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
    engine
}

fn target() -> RequestTarget {
    RequestTarget::new(Some(METHOD), Some(AUTHORITY), Some(PATH)).expect("request target")
}

/// What policy sees of the benchmarked request.
fn policy_input<'a>(target: &'a RequestTarget, identity: &'a VerifiedToken) -> PolicyInput<'a> {
    PolicyInput { target, headers: &[], token: Some(identity), peer: None, now: NOW }
}

/// Checks, before timing, that exactly one rule matches and that the policy allows by it.
fn check_policy(engine: &Engine, input: &PolicyInput<'_>, rules: usize) {
    let policy = engine.policy();
    assert_eq!(policy.rules().len(), rules);
    let matching: Vec<_> =
        policy.explain(input).into_iter().filter(|t| t.mismatch.is_none()).map(|t| t.rule_id).collect();
    assert_eq!(matching, [MATCHING_RULE], "exactly one rule must match");
    let evaluation = policy.evaluate(input);
    let decision = &evaluation.decision;
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(decision.reason, Reason::Allowed);
    assert_eq!(decision.rule_id.as_deref(), Some(MATCHING_RULE));
    assert_eq!(evaluation.dry_run, None);
}

fn verify_and_decide(c: &mut Criterion, keys: &Keys) {
    const RULES: usize = 100;
    let uncached = compile(&bundle_json_with(keys, RULES, json!({"token_cache_entries": 0})));
    let cached = compile(&bundle_json(keys, RULES));
    let authorizations: Vec<(Algorithm, String)> =
        ALGORITHMS.iter().map(|&alg| (alg, format!("Bearer {}", keys.token(alg)))).collect();
    let mut group = c.benchmark_group("verify_and_decide");
    for (alg, authorization) in &authorizations {
        let request = http_request(authorization);
        for _ in 0..2 {
            let outcome = check_allowed(&uncached, &request, RULES);
            assert_eq!(outcome, Some(false), "{alg}: the cache must be off");
        }
        group.bench_function(BenchmarkId::from_parameter(alg.name()), |b| {
            b.iter(|| uncached.authorize(black_box(&request), black_box(NOW)))
        });
    }
    let (_, authorization) = authorizations.iter().find(|(alg, _)| *alg == Algorithm::EdDSA).unwrap();
    let request = http_request(authorization);
    assert_eq!(check_allowed(&cached, &request, RULES), Some(false), "first use: a miss");
    assert_eq!(check_allowed(&cached, &request, RULES), Some(true), "second use: a hit");
    group.bench_function(BenchmarkId::from_parameter("cached-EdDSA"), |b| {
        b.iter(|| cached.authorize(black_box(&request), black_box(NOW)))
    });
    group.finish();
}

fn http_request(authorization: &str) -> HttpRequest<'_> {
    HttpRequest {
        method: Some(METHOD),
        authority: Some(AUTHORITY),
        path: Some(PATH),
        authorization: vec![authorization],
        headers: vec![
            ("authorization", authorization),
            ("accept", "application/json"),
            ("user-agent", "checkout/1.42"),
            ("x-request-id", "6f1c2b0e-9a7d-4c1b-8e55-0d3f2a9b7c41"),
        ],
        // No mTLS peer; and whatever fields later versions add, at their defaults.
        ..Default::default()
    }
}

/// Authorizes once, checks the request is allowed by the one matching rule, and returns whether
/// the token came from the cache.
fn check_allowed(engine: &Engine, request: &HttpRequest<'_>, rules: usize) -> Option<bool> {
    let outcome = engine.authorize(request, NOW);
    assert!(outcome.decision.allowed, "{:?}", outcome.decision);
    assert_eq!(outcome.decision.rule_id.as_deref(), Some(MATCHING_RULE));
    assert!(outcome.lets_through());
    let identity = outcome.identity.expect("identity");
    assert_eq!(identity.subject, SUBJECT);
    check_policy(engine, &policy_input(&outcome.target.expect("target"), &identity), rules);
    outcome.cache_hit
}

fn decide_only(c: &mut Criterion, keys: &Keys) {
    let token = keys.token(Algorithm::EdDSA);
    let target = target();
    let mut group = c.benchmark_group("decide_only");
    for rules in [10, 1_000, 10_000] {
        let engine = compile(&bundle_json(keys, rules));
        let identity = engine.issuers().verify(&token, NOW).expect("verify token");
        let input = policy_input(&target, &identity);
        check_policy(&engine, &input, rules);

        group.bench_function(BenchmarkId::from_parameter(rules), |b| {
            b.iter(|| engine.policy().evaluate(black_box(&input)))
        });
    }
    group.finish();
}

fn compile_bundle(c: &mut Criterion, keys: &Keys) {
    let mut group = c.benchmark_group("compile");
    // Milliseconds per iteration at 10,000 rules: few, equally sized samples keep this group short.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for rules in [10, 1_000, 10_000] {
        let json = bundle_json(keys, rules);
        assert_eq!(compile(&json).policy().rules().len(), rules);

        group.bench_function(BenchmarkId::from_parameter(rules), |b| {
            // The engine is returned, so that dropping it happens outside the timed routine.
            b.iter_batched(
                || json.as_slice(),
                |bytes| BundleConfig::from_json(black_box(bytes)).expect("parse").compile().expect("compile"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The bundles of issue 11 item 10, each with 1,000 rules a deep path makes expensive: rules that
/// look for a segment anywhere (`/**/x<i>/**`, host `*`), and registry rules (all under `/v2`).
fn pathological_bundle(keys: &Keys, kind: &str) -> Vec<u8> {
    let rules: Vec<Value> = (0..1_000)
        .map(|i| match kind {
            "contains" => json!({
                "id": format!("contains-{i}"), "hosts": ["*"], "methods": ["GET"],
                "paths": [{"template": format!("/**/x{i}/**")}], "subjects": ["**"],
            }),
            _ => json!({
                "id": format!("registry-{i}"), "hosts": ["*"],
                "registry": {"actions": ["pull", "push"], "repositories": [format!("team{i}/**")]},
                "subjects": ["**"],
            }),
        })
        .collect();
    let bundle =
        json!({"name": format!("pathological-{kind}"), "issuers": keys.issuers_json(), "rules": rules});
    serde_json::to_vec(&bundle).expect("serialize bundle")
}

/// `pathological/<kind>/<caller>`: one `Engine::authorize` (no token) or one policy evaluation (a
/// verified token every rule's `subjects` accept) of a request with the deepest path a request
/// may have (256 segments), which no rule allows (`contains-every-segment`: 256 rules do). Target:
/// under 100 us each.
fn pathological(c: &mut Criterion, keys: &Keys) {
    let token = keys.token(Algorithm::EdDSA);
    let mut group = c.benchmark_group("pathological");
    let contains_path = "/a".repeat(256);
    // Every segment names a rule: 256 of the 1,000 are candidates, each with a deep path to match.
    let contains_all: String = (0..256).map(|i| format!("/x{i}")).collect();
    let registry_path = format!("/v2{}/manifests/1", "/a".repeat(250));
    for (kind, bundle, path) in [
        ("contains", "contains", contains_path.as_str()),
        ("contains-every-segment", "contains", contains_all.as_str()),
        ("registry", "registry", registry_path.as_str()),
    ] {
        let engine = compile(&pathological_bundle(keys, bundle));
        let request = HttpRequest {
            method: Some("GET"),
            authority: Some("api.example"),
            path: Some(path),
            ..Default::default()
        };
        assert_eq!(engine.authorize(&request, NOW).decision.reason, Reason::TokenMissing, "{kind}");
        group.bench_function(BenchmarkId::new(kind, "no-token"), |b| {
            b.iter(|| engine.authorize(black_box(&request), black_box(NOW)))
        });
        let identity = engine.issuers().verify(&token, NOW).expect("verify token");
        let target = RequestTarget::new(Some("GET"), Some("api.example"), Some(path)).expect("target");
        let input = policy_input(&target, &identity);
        let expected = if kind == "contains-every-segment" { Reason::Allowed } else { Reason::PolicyNoMatch };
        assert_eq!(engine.policy().evaluate(&input).decision.reason, expected, "{kind}");
        group.bench_function(BenchmarkId::new(kind, "token"), |b| {
            b.iter(|| engine.policy().evaluate(black_box(&input)))
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let keys = Keys::generate();
    verify_and_decide(c, &keys);
    decide_only(c, &keys);
    compile_bundle(c, &keys);
    pathological(c, &keys);
}

criterion_group! {
    name = decision;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
/// `MESHWARD_HOT_ITERATIONS=N` skips Criterion and runs `hot_iteration` (the `cached-EdDSA`
/// request) N times, for the README's instruction-count breakdown under
/// `valgrind --tool=callgrind --toggle-collect='*hot_iteration*'`.
///
/// `MESHWARD_COLD_ITERATIONS=N` runs `cold_iteration` N times: an RS256 token verified on every
/// request (cache off) with a stand-in for Envoy's `verify_signature` that accepts without checking,
/// so the count is everything meshward does on the cold path except the host's RSA check.
fn main() {
    if let Ok(iterations) = std::env::var("MESHWARD_HOT_ITERATIONS") {
        hot_only(iterations.parse().expect("MESHWARD_HOT_ITERATIONS is a count"));
        return;
    }
    if let Ok(iterations) = std::env::var("MESHWARD_COLD_ITERATIONS") {
        cold_only(iterations.parse().expect("MESHWARD_COLD_ITERATIONS is a count"));
        return;
    }
    decision();
    Criterion::default().configure_from_args().final_summary();
}

/// Accepts every signature: the host's work is left out of the cold path's count.
struct AcceptingHost;

impl meshward::token::hostcrypto::SignatureHost for AcceptingHost {
    fn verify(
        &self,
        _hash: meshward::token::hostcrypto::HashFunction,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Result<bool, meshward::token::hostcrypto::HostCryptoError> {
        // What Envoy receives is built as it is for Envoy.
        let arguments = meshward::token::hostcrypto::encode_arguments(
            meshward::token::hostcrypto::HashFunction::Sha256,
            spki_der,
            signature,
            message,
        );
        Ok(!black_box(arguments).is_empty())
    }
}

fn cold_only(iterations: usize) {
    const RULES: usize = 100;
    let keys = Keys::generate();
    let mut engine = compile(&bundle_json_with(&keys, RULES, json!({"token_cache_entries": 0})));
    engine.set_signature_host(Box::new(AcceptingHost));
    let authorization = format!("Bearer {}", keys.token(Algorithm::RS256));
    let request = http_request(&authorization);
    assert_eq!(check_allowed(&engine, &request, RULES), Some(false), "the cache is off");
    for _ in 0..iterations {
        cold_iteration(&engine, &request);
    }
}

/// One cold request: verification (but the host's signature check) and decision.
#[inline(never)]
fn cold_iteration(engine: &Engine, request: &HttpRequest<'_>) {
    let outcome = engine.authorize(black_box(request), black_box(NOW));
    assert!(outcome.decision.allowed && outcome.cache_hit == Some(false), "{:?}", outcome.decision);
}

fn hot_only(iterations: usize) {
    const RULES: usize = 100;
    let keys = Keys::generate();
    let cached = compile(&bundle_json(&keys, RULES));
    let authorization = format!("Bearer {}", keys.token(Algorithm::EdDSA));
    let request = http_request(&authorization);
    assert_eq!(check_allowed(&cached, &request, RULES), Some(false), "first use: a miss");
    assert_eq!(check_allowed(&cached, &request, RULES), Some(true), "second use: a hit");
    // The request as Envoy hands it to the filter: the pseudo-headers, then the others.
    let pseudo = [(":method", METHOD), (":authority", AUTHORITY), (":path", PATH)];
    let headers: Vec<(&[u8], &[u8])> =
        pseudo.iter().chain(&request.headers).map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
    let pairs = serialize_header_map(&headers);
    for _ in 0..iterations {
        hot_iteration(&cached, &pairs);
    }
}

/// One cached request as the filter handles it natively (src/filter/mod.rs
/// `on_http_request_headers` and `act`): read the host's header map, decide, audit (the default
/// samples every allowed read), then the upstream identity headers. Each step is a separate
/// non-inlined function so callgrind's inclusive costs split them.
#[inline(never)]
fn hot_iteration(engine: &Engine, pairs: &[u8]) {
    let owned = hot_read_request(pairs);
    let request = hot_view(&owned);
    let outcome = hot_authorize(engine, &request);
    assert!(outcome.decision.allowed && outcome.cache_hit == Some(true), "{:?}", outcome.decision);
    black_box(hot_audit(engine, &request, &outcome));
    black_box(hot_upstream_headers(engine, &outcome));
}

/// The host's buffer (a fresh allocation per request, as the host makes one), read in place.
#[inline(never)]
fn hot_read_request(pairs: &[u8]) -> OwnedRequest {
    OwnedRequest::from_pairs(black_box(pairs.to_vec()), None, None).expect("a well-formed map")
}

#[inline(never)]
fn hot_view(owned: &OwnedRequest) -> HttpRequest<'_> {
    owned.as_request()
}

#[inline(never)]
fn hot_authorize(engine: &Engine, request: &HttpRequest<'_>) -> meshward::Outcome {
    engine.authorize(black_box(request), black_box(NOW))
}

#[inline(never)]
fn hot_audit(engine: &Engine, request: &HttpRequest<'_>, outcome: &meshward::Outcome) -> Option<String> {
    engine
        .should_audit(outcome)
        .then(|| AuditRecord::new(&engine.name, request, outcome, NOW, Some("request-id")).to_json())
}

#[inline(never)]
fn hot_upstream_headers(engine: &Engine, outcome: &meshward::Outcome) -> usize {
    engine.upstream_headers(outcome.identity.as_deref()).len()
}
