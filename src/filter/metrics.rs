//! Envoy stats through proxy-wasm's metric API. Envoy shows them under `wasmcustom.`; the rendered
//! bootstrap's `stats_tags` turn the `outcome`/`reason` name segments into Prometheus labels.
//!
//! Per-request counters are added up in the VM and handed to the host at most once a second (the
//! first request a second after the last hand-over, or the root context's timer, which runs every
//! second): two host calls per request were a measurable part of the hot path (README, "Per-request
//! cost of the hot path"). So a counter may show up to about a second late, never wrong; Envoy's
//! own stats sinks flush every 5 s by default.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::decision::{Decision, Reason, Verdict};
use crate::engine::Outcome;

/// Metric ids, defined once per VM.
pub struct Metrics {
    decisions: Vec<Option<u32>>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    verifications: Option<u32>,
    dry_run_disagreements: Option<u32>,
    break_glass: Option<u32>,
    key_fetches: HashMap<&'static str, u32>,
    key_set_ages: std::cell::RefCell<HashMap<String, u32>>,
    vm_memory: Option<u32>,
    /// The memory size this VM last reported.
    vm_memory_seen: Cell<u64>,
    /// Per-request counts not yet handed to the host: (metric id, count), a handful of ids.
    pending: RefCell<Vec<(u32, i64)>>,
    /// When the pending counts were last handed over (unix ms).
    flushed_ms: Cell<u64>,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

fn add(id: Option<u32>, n: i64) {
    if let Some(id) = id {
        // Metrics are best effort: a failed increment must not affect the request.
        let _ = hostcalls::increment_metric(id, n);
    }
}

impl Metrics {
    /// Defines every counter up front, so dashboards see zeros rather than missing series.
    pub fn define() -> Self {
        // Indexed by the reason (the enum's variants are in `Reason::ALL`'s order): a lookup on
        // every request without hashing.
        let decisions = Reason::ALL.iter().map(|reason| counter(&reason.metric_name())).collect();
        Metrics {
            decisions,
            cache_hits: counter("meshward.token_cache_hits_total"),
            cache_misses: counter("meshward.token_cache_misses_total"),
            verifications: counter("meshward.token_verifications_total"),
            dry_run_disagreements: counter("meshward.dry_run_disagreements_total"),
            break_glass: counter("meshward.break_glass_total"),
            key_fetches: ["installed", "discovered", "failed"]
                .into_iter()
                .filter_map(|o| Some((o, counter(&format!("meshward.key_fetches_total.outcome.{o}"))?)))
                .collect(),
            key_set_ages: Default::default(),
            vm_memory: hostcalls::define_metric(MetricType::Gauge, "meshward.vm_memory_bytes").ok(),
            vm_memory_seen: Cell::new(0),
            pending: RefCell::new(Vec::new()),
            flushed_ms: Cell::new(0),
        }
    }

    /// Reports this VM's linear memory. Envoy runs one VM per worker (and one on the main thread)
    /// and they share the gauge: it shows the largest, the figure to watch against a memory limit.
    pub fn memory(&self, bytes: u64) {
        let Some(id) = self.vm_memory else { return };
        if bytes <= self.vm_memory_seen.get() {
            return; // wasm memory never shrinks: nothing new to report
        }
        self.vm_memory_seen.set(bytes);
        match hostcalls::get_metric(id) {
            Ok(shown) if shown >= bytes => {} // another VM is larger
            _ => {
                let _ = hostcalls::record_metric(id, bytes);
            }
        }
    }

    /// Counts full token verifications (none on a cache hit).
    pub fn verifications(&self, count: u64) {
        if count > 0 {
            self.count(self.verifications, i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Adds to a per-request counter, handed to the host by [`Metrics::flush`].
    fn count(&self, id: Option<u32>, n: i64) {
        let (Some(id), Ok(mut pending)) = (id, self.pending.try_borrow_mut()) else { return };
        match pending.iter_mut().find(|(pending_id, _)| *pending_id == id) {
            Some((_, total)) => *total = total.saturating_add(n),
            None => pending.push((id, n)),
        }
    }

    /// Hands the pending counts to the host if the last hand-over is a second old.
    pub fn flush_if_due(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.flushed_ms.get()) >= 1000 {
            self.flush(now_ms);
        }
    }

    /// Hands the pending counts to the host.
    pub fn flush(&self, now_ms: u64) {
        self.flushed_ms.set(now_ms);
        let Ok(mut pending) = self.pending.try_borrow_mut() else { return };
        for (id, n) in pending.drain(..) {
            add(Some(id), n);
        }
    }

    /// Counts one key fetch by outcome (`installed`, `discovered`, `failed`).
    pub fn key_fetch(&self, outcome: &str) {
        add(self.key_fetches.get(outcome).copied(), 1);
    }

    /// Sets the age of an issuer's key set.
    pub fn key_set_age(&self, issuer: &str, age: u64) {
        let Ok(mut ages) = self.key_set_ages.try_borrow_mut() else { return };
        let id = match ages.get(issuer) {
            Some(id) => Some(*id),
            None => {
                // Issuer names become a label; keep them to characters stats names allow.
                let label: String = issuer
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                    .collect();
                let id = hostcalls::define_metric(
                    MetricType::Gauge,
                    &format!("meshward.key_set_age_seconds.issuer.{label}"),
                )
                .ok();
                if let Some(id) = id {
                    ages.insert(issuer.to_owned(), id);
                }
                id
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, age);
        }
    }

    /// Counts one decision.
    pub fn record(&self, outcome: &Outcome) {
        let Decision { allowed, reason, .. } = outcome.decision;
        // Each reason has one verdict, so one counter; a decision whose `allowed` disagrees with
        // its reason's verdict has none.
        if allowed == (reason.verdict() == Verdict::Allow) {
            self.count(self.decisions.get(reason as usize).copied().flatten(), 1);
        }
        if outcome.dry_run.is_some() {
            self.count(self.dry_run_disagreements, 1);
        }
        if outcome.decision.break_glass {
            self.count(self.break_glass, 1);
        }
        match outcome.cache_hit {
            Some(true) => self.count(self.cache_hits, 1),
            Some(false) => self.count(self.cache_misses, 1),
            None => {}
        }
    }
}
