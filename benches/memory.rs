//! Where the plugin's memory goes (target 5 of `performance.md`: VM memory under 16 MiB with
//! 10,000 rules and 10,000 cached tokens): the heap a 10,000-rule bundle takes while it is parsed
//! and compiled as `on_configure` does it (`src/filter/mod.rs`), what stays once it is configured,
//! and what each cached token adds. A counting allocator measures live and peak bytes.
//!
//! `cargo bench --bench memory` prints the figures. They are native (64-bit pointers and `String`s
//! of 24 bytes where wasm32 has 12), so they are larger than the plugin's: use them for where the
//! bytes go, and the Envoy benchmark (`benches/envoy/load.py --config-only`) for the VM's figure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use meshward::policy::{Policy, RouteParts, Rule};
use meshward::token::Algorithm;
use meshward::{BundleConfig, HttpRequest};

mod common;
use common::*;

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// The one `unsafe` here: a global allocator is an unsafe trait; each method only forwards to the
// system allocator with the caller's own arguments, and counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RULES: usize = 10_000;
const TOKENS: usize = 10_000;

fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Starts a new peak at the current live bytes.
fn reset_peak() {
    PEAK.store(live(), Relaxed);
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / 1_048_576.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: no benchmarks to list
    }
    let keys = Keys::generate();
    let json = bundle_json(&keys, RULES);
    let tokens: Vec<String> = (0..TOKENS)
        .map(|n| format!("Bearer {}", keys.token_with_id(Algorithm::EdDSA, &format!("m-{n}"))))
        .collect();
    println!("{RULES}-rule bundle: {} bytes of JSON; native heap figures", json.len());

    // As on_configure: the configuration bytes digested, parsed, dropped, the bundle compiled.
    let base = live();
    reset_peak();
    let bytes = json.clone();
    let digest = meshward::audit::sha256_hex(&bytes);
    let policy_digest = meshward::audit::policy_digest(&bytes);
    let digest_peak = PEAK.load(Relaxed) - base;
    reset_peak();
    let (engine, _) = BundleConfig::from_json(&bytes)
        .and_then(|bundle| {
            drop(bytes);
            bundle.compile()
        })
        .expect("compile");
    let record = meshward::audit::LoadRecord::with_digest(policy_digest, Ok(&engine), NOW).to_json();
    let compile_peak = PEAK.load(Relaxed) - base;
    drop((record, digest));
    let configured = live() - base;
    println!("  configure (digests of the bytes):        peak {}", mib(digest_peak));
    println!("  configure (parse, compile):              peak {}", mib(compile_peak));
    println!("  engine once configured:                  {}", mib(configured));

    // The same steps apart: the parsed bundle, the compiled rules, the policy index.
    drop(engine);
    let base = live();
    let bundle = BundleConfig::from_json(&json).expect("parse");
    let parsed = live() - base;
    let names: HashSet<String> = bundle.issuers.iter().map(|i| i.name.clone()).collect();
    let mode = bundle.mode;
    let base = live();
    let mut parts = RouteParts::default();
    let rules: Vec<Rule> = bundle
        .rules
        .iter()
        .cloned()
        .map(|cfg| Rule::compile_sharing(cfg, &names, mode, &mut parts).expect("rule"))
        .collect();
    drop(parts);
    let compiled = live() - base;
    drop(bundle);
    let base = live();
    let policy = Policy::new(rules);
    let index = live() - base;
    println!("  parsed BundleConfig:                     {}", mib(parsed));
    println!("  compiled rules:                          {}", mib(compiled));
    println!("  policy index:                            {}", mib(index));
    drop(policy);

    // Cached tokens: one request per distinct token, each verified once and cached.
    let (engine, _) = BundleConfig::from_json(&json).and_then(BundleConfig::compile).expect("compile");
    let base = live();
    reset_peak();
    for token in &tokens {
        let headers = [("authorization".to_owned(), token.clone())];
        let request = HttpRequest::recorded(Some(METHOD), Some(AUTHORITY), Some(PATH), &headers, None);
        let outcome = engine.authorize(&request, NOW);
        assert!(outcome.decision.allowed, "{:?}", outcome.decision);
    }
    assert_eq!(engine.cache_stats().misses, TOKENS as u64, "every token verified once");
    let cached = live() - base;
    println!(
        "  {TOKENS} cached tokens:                    {} ({} bytes a token; peak {})",
        mib(cached),
        cached / TOKENS,
        mib(PEAK.load(Relaxed) - base)
    );
}
