//! Verified tokens shared between the VMs of one Envoy (src/shared.rs), with two engines standing
//! for two VMs over one in-memory shared data: one verification per token per process, and a
//! shared entry never trusted more than a local cache hit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::shared::{SharedStore, SharedTokens};
use meshward::token::Algorithm;
use meshward::{BundleConfig, Engine, HttpRequest, Reason};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

/// The host's shared data, in memory: every clone sees the same map, as VMs do.
#[derive(Clone, Default)]
struct MemoryStore(Rc<RefCell<HashMap<String, Vec<u8>>>>);

impl SharedStore for MemoryStore {
    fn get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (self.0.borrow().get(key).cloned(), None)
    }
    fn set_versioned(&self, key: &str, value: &[u8], _version: Option<u32>) -> bool {
        self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
        true
    }
}

impl MemoryStore {
    /// Rewrites every shared token entry (not the cache key) with `change`.
    fn tamper(&self, change: impl Fn(&mut Value)) {
        for (name, bytes) in self.0.borrow_mut().iter_mut() {
            if name.contains("/token/") {
                let mut entry: Value = serde_json::from_slice(bytes).unwrap();
                change(&mut entry);
                *bytes = serde_json::to_vec(&entry).unwrap();
            }
        }
    }
}

/// One VM: an engine of the bundle (with `extra` top-level fields) sharing `store`.
fn vm(key: &SigningKey, store: &MemoryStore, slots: usize, extra: Value) -> Engine {
    let mut bundle = json!({
        "name": "t",
        "issuers": [{"name": "i", "issuer": "https://i.test", "audiences": ["api"],
                     "algorithms": ["EdDSA"], "jwks": jwks(&[key]), "max_age_seconds": 600}],
        "rules": [{"id": "r", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
                   "subjects": ["spiffe://t/*"]}],
    });
    for (k, v) in extra.as_object().unwrap() {
        bundle[k] = v.clone();
    }
    let mut engine = BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().unwrap().0;
    // One namespace for all, as for VMs of the same bundle.
    engine.share_tokens(SharedTokens::new(Box::new(store.clone()), "digest", slots));
    engine
}

fn token(key: &SigningKey, sub: &str, ttl: u64) -> String {
    let spec = TokenSpec::new("https://i.test", sub, "api", NOW, ttl);
    format!("Bearer {}", key.sign(&spec).unwrap())
}

fn decide(engine: &Engine, auth: &str, now: u64) -> Reason {
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/x"),
        authorization: vec![auth],
        ..Default::default()
    };
    engine.authorize(&request, now).decision.reason
}

#[test]
fn k_distinct_tokens_cost_k_verifications_across_vms() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let vms = [vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({}))];
    let tokens: Vec<String> = (0..5).map(|i| token(&key, &format!("spiffe://t/w{i}"), 300)).collect();
    for round in 0..3 {
        for (i, auth) in tokens.iter().enumerate() {
            // Alternate the VM that sees a token first.
            let order = if (i + round) % 2 == 0 { [0, 1] } else { [1, 0] };
            for n in order {
                assert_eq!(decide(&vms[n], auth, NOW), Reason::Allowed);
            }
        }
    }
    let verified: u64 = vms.iter().map(Engine::take_verifications).sum();
    assert_eq!(verified, 5, "one verification per token for the whole process");
    // Every request of the second VM to see a token was a cache hit (shared, then local).
    let hits: u64 = vms.iter().map(|e| e.cache_stats().hits).sum();
    assert_eq!(hits, 5 * 2 * 3 - 5 - 5, "the first sight in each VM is a local miss");
}

#[test]
fn a_shared_hit_still_checks_revocation_and_age() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let a = vm(&key, &store, 100, json!({}));
    let b = vm(&key, &store, 100, json!({"revoked": {"subjects": ["spiffe://t/gone"]}}));
    let gone = token(&key, "spiffe://t/gone", 3600);
    let fine = token(&key, "spiffe://t/fine", 3600);
    assert_eq!(decide(&a, &gone, NOW), Reason::Allowed);
    assert_eq!(decide(&a, &fine, NOW), Reason::Allowed);
    assert_eq!(decide(&b, &gone, NOW), Reason::TokenRevoked, "revocation is checked on a shared hit");
    // max_age_seconds 600: the token issued at NOW is too old at NOW + 601, shared or not.
    assert_eq!(decide(&b, &fine, NOW + 601), Reason::TokenTooOld);
    assert_eq!(b.take_verifications(), 0, "both answers came from the shared entries");
}

#[test]
fn a_shared_entry_is_not_used_after_the_token_expires() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let (a, b) = (vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({})));
    let auth = token(&key, "spiffe://t/a", 60);
    assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
    // Past exp (NOW + 60) but within the 30 s clock skew: verified again, not taken from the entry.
    assert_eq!(decide(&b, &auth, NOW + 61), Reason::Allowed);
    assert_eq!(b.take_verifications(), 1);
    assert_eq!(decide(&b, &auth, NOW + 91), Reason::TokenExpired);
}

#[test]
fn a_slot_taken_by_another_token_is_a_miss() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    // One slot: every token overwrites the previous one's entry.
    let (a, b) = (vm(&key, &store, 1, json!({})), vm(&key, &store, 1, json!({})));
    let first = token(&key, "spiffe://t/first", 300);
    let second = token(&key, "spiffe://t/second", 300);
    assert_eq!(decide(&a, &first, NOW), Reason::Allowed);
    assert_eq!(decide(&a, &second, NOW), Reason::Allowed);
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/x"),
        authorization: vec![&first],
        ..Default::default()
    };
    let outcome = b.authorize(&request, NOW);
    assert_eq!(outcome.identity.unwrap().subject, "spiffe://t/first", "never the slot's other token");
    assert_eq!(b.take_verifications(), 1);
    assert_eq!(store.0.borrow().keys().filter(|k| k.contains("/token/")).count(), 1, "bounded by the slots");
}

#[test]
fn a_tampered_or_foreign_entry_is_verified_again() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    type Change = fn(&mut Value);
    let changes: [(&str, Change); 5] = [
        ("another key set", |e| e["keys"] = json!("00".repeat(31) + "01")),
        ("another issuer name", |e| e["issuer_name"] = json!("other")),
        ("another iss", |e| e["issuer"] = json!("https://evil.test")),
        ("usable past exp", |e| e["until"] = json!(e["expires_at"].as_u64().unwrap() + 1)),
        ("another cache key", |e| e["key"] = json!("00".repeat(16))),
    ];
    for (what, change) in changes {
        let store = MemoryStore::default();
        let (a, b) = (vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({})));
        let auth = token(&key, "spiffe://t/a", 300);
        assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
        store.tamper(change);
        assert_eq!(decide(&b, &auth, NOW), Reason::Allowed, "{what}");
        assert_eq!(b.take_verifications(), 1, "{what}: the entry is not used");
    }
    // Untampered, the same entry is used: the checks above are what refused it.
    let store = MemoryStore::default();
    let (a, b) = (vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({})));
    let auth = token(&key, "spiffe://t/a", 300);
    assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
    assert_eq!(decide(&b, &auth, NOW), Reason::Allowed);
    assert_eq!(b.take_verifications(), 0);
}

#[test]
fn without_the_cache_nothing_is_shared() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let off = json!({"settings": {"token_cache_entries": 0}});
    let (a, b) = (vm(&key, &store, 100, off.clone()), vm(&key, &store, 100, off));
    let auth = token(&key, "spiffe://t/a", 300);
    assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
    assert_eq!(decide(&b, &auth, NOW), Reason::Allowed);
    assert_eq!(a.take_verifications() + b.take_verifications(), 2);
    assert!(store.0.borrow().is_empty());
}
