//! The shipped examples stay true: the example bundle compiles, its demo key is the one `make run`
//! signs with, it decides the demo requests as the README says, and `envoy/envoy.yaml` is its
//! rendering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use meshward::dev::{SigningKey, TokenSpec};
use meshward::render::{envoy_bootstrap, EnvoyOptions};
use meshward::{BundleConfig, HttpRequest, Reason};

const NOW: u64 = 1_800_000_000;

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
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

#[test]
fn registry_bundle_decides_the_demo_requests() {
    let (engine, warnings) = BundleConfig::from_json(repo_file("policies/registry.json").as_bytes())
        .and_then(BundleConfig::compile)
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let key = SigningKey::demo("demo-2026-1");
    let token = |sub: &str| {
        key.sign(&TokenSpec::new(
            "https://issuer.example.internal",
            sub,
            "registry.example.internal",
            NOW,
            300,
        ))
        .unwrap()
    };
    let builder = format!("Bearer {}", token("spiffe://example.internal/ci/builder/web"));
    let reader = format!("Bearer {}", token("spiffe://example.internal/apps/web"));
    let decide = |method: &str, path: &str, auth: &str| {
        let request = HttpRequest {
            method: Some(method),
            authority: Some("registry.example.internal"),
            path: Some(path),
            authorization: vec![auth],
        };
        let d = engine.authorize(&request, NOW).decision;
        (d.reason, d.rule_label().to_string())
    };
    let allowed = |rule: &str| (Reason::Allowed, rule.to_string());
    assert_eq!(decide("GET", "/v2/prod/web/manifests/1.0", &reader), allowed("pull-any-workload"));
    assert_eq!(decide("HEAD", "/v2/prod/web/blobs/sha256:ab", &reader), allowed("pull-any-workload"));
    assert_eq!(decide("PUT", "/v2/dev/web/manifests/1.0", &builder), allowed("push-dev-builders"));
    assert_eq!(decide("POST", "/v2/dev/web/blobs/uploads/", &builder), allowed("push-dev-builders"));
    let no_rule = (Reason::PolicyNoMatch, "default-deny".to_string());
    assert_eq!(decide("PUT", "/v2/dev/web/manifests/1.0", &reader), no_rule);
    assert_eq!(decide("PUT", "/v2/prod/web/manifests/1.0", &builder), no_rule);
    assert_eq!(
        decide("DELETE", "/v2/dev/web/manifests/1.0", &builder),
        (Reason::PolicyDenied, "no-delete-through-mesh".to_string())
    );
}
