//! End-to-end: one verification per token per Envoy process. With `--concurrency 2` each worker has
//! its own VM; verified tokens are shared through the host's shared data (src/shared.rs), so K
//! distinct tokens sent over many connections (spread by the kernel over both workers) cost
//! exactly K signature verifications, summed over the VMs by Envoy's stats; and a remote key set
//! is fetched once for the process, not once per VM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
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
    let issuer = json!({"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                        "algorithms": ["ES256"], "jwks": jwks(&[&key])});
    let envoy = start(issuer, Vec::new());
    k_tokens_k_verifications(&envoy, &key);
}

/// A key server that answers OIDC discovery and the JWK Set, and records every path it served.
fn key_server(set: String) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let served = paths.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = if path == "/.well-known/openid-configuration" {
                json!({"issuer": "https://idp.test", "jwks_uri": "https://idp.test/keys/jwks.json"})
                    .to_string()
            } else {
                set.clone()
            };
            served.lock().unwrap().push(path);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes());
        }
    });
    (port, paths)
}

#[test]
fn a_remote_key_set_is_fetched_once_per_process() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let (port, paths) = key_server(jwks(&[&key]).to_string());
    let issuer = json!({"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                        "algorithms": ["ES256"],
                        "remote_jwks": {"cluster": "keys", "refresh_seconds": 600, "wait_for_keys_ms": 5000}});
    let envoy = start(issuer, vec![("keys".into(), port)]);
    k_tokens_k_verifications(&envoy, &key);
    // Three VMs (the main thread's and two workers'), one discovery and one key-set fetch.
    let served = paths.lock().unwrap().clone();
    let count = |p: &str| served.iter().filter(|s| *s == p).count();
    assert_eq!(count("/.well-known/openid-configuration"), 1, "{served:?}\n{}", envoy.log());
    assert_eq!(count("/keys/jwks.json"), 1, "{served:?}\n{}", envoy.log());
    assert_eq!(
        envoy.prometheus_value("meshward_key_fetches_total{outcome=\"failed\"}"),
        0,
        "no VM gave up waiting for another's fetch"
    );
}

/// Envoy with two workers and a bundle of this one issuer.
fn start(issuer: serde_json::Value, clusters: Vec<(String, u16)>) -> Envoy {
    let bundle = json!({
        "name": "shared",
        "issuers": [issuer],
        "rules": [{"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
                   "subjects": ["spiffe://t/*"]}],
    });
    match Envoy::try_start_with_workers(&bundle.to_string(), clusters, 2) {
        Started::Ready(envoy) => envoy,
        Started::Exited(code, log) => panic!("Envoy exited ({code:?}):\n{log}"),
    }
}

/// K distinct tokens, each sent first alone, then many times over many connections at once:
/// exactly K verifications for the process.
fn k_tokens_k_verifications(envoy: &Envoy, key: &SigningKey) {
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
    envoy.settle_counters(requests);
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
