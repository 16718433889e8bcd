//! End-to-end: one verification per token per Envoy process. With `--concurrency 2` each worker has
//! its own VM; verified tokens are shared through the host's shared data (src/shared.rs), so K
//! distinct tokens sent over many connections (spread by the kernel over both workers) cost
//! exactly K signature verifications, summed over the VMs by Envoy's stats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use meshward::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::json;
use support::{Envoy, Started};

const TOKENS: usize = 6;
const REQUESTS_PER_TOKEN: usize = 24;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn k_distinct_tokens_cost_k_verifications_with_two_workers() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let bundle = json!({
        "name": "shared",
        "issuers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                     "algorithms": ["ES256"], "jwks": jwks(&[&key])}],
        "rules": [{"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
                   "subjects": ["spiffe://t/*"]}],
    });
    let envoy = match Envoy::try_start_with_workers(&bundle.to_string(), Vec::new(), 2) {
        Started::Ready(envoy) => envoy,
        Started::Exited(code, log) => panic!("Envoy exited ({code:?}):\n{log}"),
    };
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| {
            let spec = TokenSpec::new("https://idp.test", &format!("spiffe://t/w{i}"), "api", now(), 600);
            format!("Bearer {}", key.sign(&spec).unwrap())
        })
        .collect();
    // Each token's first request, one at a time: its verification is shared before it is answered,
    // so no two workers can race to verify it (concurrent first requests may each verify; that is
    // bounded by the worker count and not what this test measures).
    for token in &tokens {
        let response = envoy.request("GET", "/x", &[("Authorization", token)]);
        assert_eq!(response.status, 200, "{}", envoy.log());
    }
    // Then many requests, each on its own connection, from several threads at once.
    let port = envoy.listen_port;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let tokens = tokens.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for n in 0..REQUESTS_PER_TOKEN * TOKENS / 4 {
                    let token = &tokens[(n + t) % TOKENS];
                    statuses
                        .push(support::http(port, "GET", "/x", &[("Authorization", token)]).unwrap().status);
                }
                statuses
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap().iter().all(|&s| s == 200));
    }
    let requests = (TOKENS + REQUESTS_PER_TOKEN * TOKENS) as u64;
    assert_eq!(
        envoy.prometheus_value("meshward_decisions_total{outcome=\"allow\",reason=\"allowed\"}"),
        requests
    );
    assert_eq!(
        envoy.prometheus_value("meshward_token_verifications_total{}"),
        TOKENS as u64,
        "one verification per distinct token for the whole process\n{}",
        envoy.admin("/stats?filter=meshward")
    );
    assert_eq!(envoy.prometheus_value("meshward_token_cache_hits_total{}"), requests - TOKENS as u64);
    // Both workers served requests (the kernel spreads connections), so both VMs saw every token.
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            envoy
                .admin("/stats?filter=^listener\\.")
                .lines()
                .find(|l| l.contains(&format!("worker_{w}.downstream_cx_total")))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(per_worker.iter().all(|&n| n > 0), "connections per worker: {per_worker:?}");
}
