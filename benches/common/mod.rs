//! The benchmarks' bundle generator and keys, shared by `decision.rs` (timings) and `memory.rs`
//! (heap use): both measure the same policy. `benches/envoy/load.py` ports it: change them together.

#![allow(dead_code)] // each bench uses part of it

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::{json, Value};

/// The fixed "current time" of every verification (2025-06-15), so tokens never expire mid-run.
pub const NOW: u64 = 1_750_000_000;
pub const AUDIENCE: &str = "orders.prod.svc.cluster.local";
pub const SUBJECT: &str = "spiffe://prod.example/ns/checkout/sa/frontend";
pub const METHOD: &str = "GET";
pub const AUTHORITY: &str = "orders.prod.svc.cluster.local:8080";
pub const PATH: &str = "/api/v1/orders/12345?expand=items";
pub const MATCHING_RULE: &str = "allow-checkout-read-orders";

pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// One signing key per benchmarked algorithm, each the only key of its own issuer.
pub struct Keys {
    keys: Vec<SigningKey>,
}

impl Keys {
    pub fn generate() -> Self {
        let keys = ALGORITHMS
            .iter()
            .map(|&alg| SigningKey::generate(alg, &format!("bench-{alg}")).expect("generate key"))
            .collect();
        Keys { keys }
    }

    pub fn get(&self, alg: Algorithm) -> &SigningKey {
        self.keys.iter().find(|k| k.algorithm() == alg).expect("key for algorithm")
    }

    pub fn issuer_url(alg: Algorithm) -> String {
        format!("https://issuer-{}.prod.example", alg.name().to_ascii_lowercase())
    }

    pub fn issuers_json(&self) -> Vec<Value> {
        self.keys
            .iter()
            .map(|key| {
                let alg = key.algorithm();
                json!({
                    "name": format!("issuer-{}", alg.name().to_ascii_lowercase()),
                    "issuer": Self::issuer_url(alg),
                    "audiences": [AUDIENCE],
                    "algorithms": [alg.name()],
                    "jwks": jwks(&[key]),
                })
            })
            .collect()
    }

    pub fn token(&self, alg: Algorithm) -> String {
        self.token_with_id(alg, &format!("bench-{alg}-0001"))
    }

    /// The benchmarked caller's token with this `jti` (distinct ids make distinct tokens).
    pub fn token_with_id(&self, alg: Algorithm, jti: &str) -> String {
        let mut spec = TokenSpec::new(&Self::issuer_url(alg), SUBJECT, AUDIENCE, NOW - 60, 600);
        spec.token_id = Some(jti.to_owned());
        spec.claims.insert("tenant".into(), "acme".into());
        spec.claims.insert("scope".into(), "orders:read orders:list".into());
        self.get(alg).sign(&spec).expect("sign token")
    }
}

/// The host of the `service`-th service; service 0 is the benchmarked request's.
pub fn service_host(service: usize) -> String {
    match service {
        0 => AUDIENCE.to_string(),
        s => format!("svc-{s}.prod.svc.cluster.local"),
    }
}

/// The `i`-th rule that does not match the benchmarked request. Rule `i` belongs to service
/// `i / 10`; in service 0, the kinds marked "candidate" are filed under the request's host, method
/// and path prefix, so evaluation has to check them: they fail on the caller, a claim, a scope or
/// the path. Rule 4 applies to any host (a candidate for every request).
pub fn other_rule(i: usize) -> Value {
    let id = format!("rule-{i}");
    let host = service_host(i / 10);
    match i % 10 {
        // Candidate: same endpoint, other callers.
        0 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET", "HEAD"],
            "paths": [{"prefix": "/api/v1/orders"}],
            "subjects": [
                format!("spiffe://prod.example/ns/team-{}/sa/*", i % 97),
                format!("spiffe://prod.example/ns/team-{i}/sa/worker"),
            ],
        }),
        // Other resources of the service.
        1 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET", "POST", "PUT"],
            "paths": [
                {"prefix": format!("/api/v1/resource-{i}")},
                {"exact": format!("/api/v2/resource-{i}/status")},
            ],
            "subjects": [SUBJECT],
        }),
        // Candidate: a longer template under the same prefix.
        2 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET"],
            "paths": [{"template": "/api/v1/orders/{id}/items"}],
            "subjects": [SUBJECT],
        }),
        // Candidate (any method): a deny rule for quarantined workloads.
        3 => json!({
            "id": id,
            "effect": "deny",
            "hosts": [host],
            "methods": ["*"],
            "paths": [{"prefix": "/admin"}, {"prefix": "/api/v1/orders"}],
            "subjects": [format!("spiffe://prod.example/ns/quarantine-{i}/**")],
        }),
        // Candidate for every request: monitoring may read any host.
        4 if i == 4 => json!({
            "id": id,
            "hosts": ["*"],
            "methods": ["GET"],
            "paths": [{"prefix": "/"}],
            "subjects": ["spiffe://prod.example/ns/monitoring/sa/*"],
        }),
        // Wildcard hosts of a staging environment.
        4 => json!({
            "id": id,
            "hosts": [format!("*.s-{}.staging.svc.cluster.local", i / 10)],
            "methods": ["*"],
            "paths": [{"prefix": "/"}],
            "subjects": ["**"],
        }),
        // Same path, write methods only.
        5 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["POST", "DELETE"],
            "paths": [{"prefix": "/api/v1/orders"}],
            "subjects": [SUBJECT],
        }),
        // Candidate: this exact path, an auditor.
        6 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET"],
            "paths": [{"exact": "/api/v1/orders/12345"}],
            "subjects": [format!("spiffe://prod.example/ns/team-{i}/sa/auditor")],
        }),
        // Candidate: the right caller, another tenant.
        7 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET"],
            "paths": [{"prefix": "/api/v1/orders"}],
            "subjects": [SUBJECT],
            "claims": [{"claim": "tenant", "equals": format!("tenant-{i}")}],
        }),
        // Candidate: the right caller, a scope it lacks.
        8 => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET", "HEAD"],
            "paths": [{"prefix": "/api/v1"}],
            "subjects": ["spiffe://prod.example/ns/checkout/sa/*"],
            "scopes": ["orders:admin"],
        }),
        // Another API version.
        _ => json!({
            "id": id,
            "hosts": [host],
            "methods": ["GET"],
            "paths": [{"template": "/api/v2/{name}/status"}],
            "subjects": ["**"],
        }),
    }
}

/// A bundle with `rules` rules, exactly one of which allows the benchmarked request.
pub fn bundle_json(keys: &Keys, rules: usize) -> Vec<u8> {
    bundle_json_with(keys, rules, json!({}))
}

/// Like [`bundle_json`], with the given `settings`.
pub fn bundle_json_with(keys: &Keys, rules: usize, settings: Value) -> Vec<u8> {
    assert!(rules >= 1);
    let matching = json!({
        "id": MATCHING_RULE,
        "description": "checkout reads orders",
        "owner": "team-orders",
        "hosts": [AUDIENCE],
        "methods": ["GET", "HEAD"],
        "paths": [{"prefix": "/api/v1/orders"}],
        "subjects": ["spiffe://prod.example/ns/checkout/sa/*"],
        "claims": [{"claim": "tenant", "equals": "acme"}],
        "scopes": ["orders:read"],
    });
    // In service 0, with the other rules for the same host.
    let mut list: Vec<Value> = (0..rules - 1).map(other_rule).collect();
    list.insert(list.len().min(5), matching);
    let bundle = json!({
        "name": format!("bench-{rules}"),
        "version": "bench",
        "issuers": keys.issuers_json(),
        "rules": list,
        "settings": settings,
    });
    serde_json::to_vec(&bundle).expect("serialize bundle")
}
