//! Envoy stats through proxy-wasm's metric API. Envoy shows them under `wasmcustom.`; the rendered
//! bootstrap's `stats_tags` turn the `outcome`/`reason` name segments into Prometheus labels.

use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::decision::Reason;
use crate::engine::Outcome;

/// Metric ids, defined once per VM.
pub struct Metrics {
    decisions: HashMap<(bool, Reason), u32>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    dry_run_disagreements: Option<u32>,
    break_glass: Option<u32>,
    key_fetches: HashMap<&'static str, u32>,
    key_set_ages: std::cell::RefCell<HashMap<String, u32>>,
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
        let mut decisions = HashMap::new();
        for reason in Reason::ALL {
            let outcomes: &[bool] = if reason == Reason::Allowed { &[true] } else { &[false] };
            for &allowed in outcomes {
                let outcome = if allowed { "allow" } else { "deny" };
                if let Some(id) =
                    counter(&format!("meshward.decisions_total.outcome.{outcome}.reason.{}", reason.code()))
                {
                    decisions.insert((allowed, reason), id);
                }
            }
        }
        Metrics {
            decisions,
            cache_hits: counter("meshward.token_cache_hits_total"),
            cache_misses: counter("meshward.token_cache_misses_total"),
            dry_run_disagreements: counter("meshward.dry_run_disagreements_total"),
            break_glass: counter("meshward.break_glass_total"),
            key_fetches: ["installed", "discovered", "failed"]
                .into_iter()
                .filter_map(|o| Some((o, counter(&format!("meshward.key_fetches_total.outcome.{o}"))?)))
                .collect(),
            key_set_ages: Default::default(),
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
        let key = (outcome.decision.allowed, outcome.decision.reason);
        add(self.decisions.get(&key).copied(), 1);
        if outcome.dry_run.is_some() {
            add(self.dry_run_disagreements, 1);
        }
        if outcome.decision.break_glass {
            add(self.break_glass, 1);
        }
        match outcome.cache_hit {
            Some(true) => add(self.cache_hits, 1),
            Some(false) => add(self.cache_misses, 1),
            None => {}
        }
    }
}
