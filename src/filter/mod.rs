//! The proxy-wasm glue: Envoy callbacks in, decisions out. All host calls live here.
//!
//! The root context parses and compiles the configuration once (`on_configure`), fetches remote key
//! sets on a timer (`on_tick`, `on_http_call_response`), and hands each HTTP context the compiled
//! [`Engine`]. An HTTP context authorizes its request in `on_http_request_headers`. Host results
//! are never unwrapped: a failing host call denies the request (fail closed).

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::audit::{AuditRecord, KeyFetchRecord, LoadRecord};
use crate::config::BundleConfig;
use crate::decision::Reason;
use crate::engine::{Engine, Outcome};
use crate::request::{HttpRequest, OwnedRequest};
use crate::token::remote::FetchOutcome;
use crate::token::shared::{SharedFetches, SharedStore, SharedTokens};

mod metrics;
mod signature;
use metrics::Metrics;
use signature::EnvoySignatures;

/// What the SDK's entry point (`entry.rs`) installs: the log level and the root context.
pub(crate) fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}

fn log(level: LogLevel, message: &str) {
    // Logging is best effort; there is nothing better to do if the host refuses it.
    let _ = hostcalls::log(level, message);
}

/// The host's shared data: one store for every VM of this Envoy with the same `vm_id`.
struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set_versioned(&self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        // A refused write only means another VM verifies (or fetches) for itself.
        hostcalls::set_shared_data(key, Some(value), version).is_ok()
    }
}

/// Whether the host writes this plugin's info lines (decision audit records), asked at most once a
/// second. Envoy logs the plugin under its `wasm` logger, at `warning` unless told otherwise (also
/// Istio's default): then an audit record would be built only to be dropped, which was about a
/// quarter of the instructions of an allowed request (README, "Per-request cost of the hot path").
/// A level lowered to info (`/logging?wasm=info`) shows records within a second.
#[derive(Default)]
struct InfoLogged {
    writes: Cell<bool>,
    /// When the host was last asked (unix ms; 0: never).
    asked_ms: Cell<u64>,
}

impl InfoLogged {
    /// Whether an info line written now would reach the log.
    fn at(&self, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.asked_ms.get()) >= 1000 {
            // Unknown (the host refused to say): write, as before this check existed.
            let level = crate::entry::host_log_level().unwrap_or(0);
            self.writes.set(level <= LogLevel::Info as u32);
            self.asked_ms.set(now_ms);
        }
        self.writes.get()
    }
}

/// A key fetch another VM claimed: this VM waits for its published response until `until_ms`.
struct Deferred {
    issuer: String,
    path: String,
    until_ms: u64,
}

/// A request parked until the first remote key set arrives.
struct Waiter {
    context_id: u32,
    request: OwnedRequest,
    deadline_ms: u64,
}

/// What the root context and the HTTP contexts of one VM share.
#[derive(Default)]
struct Shared {
    waiting: Vec<Waiter>,
}

/// The plugin instance: owns the compiled configuration and the key fetches.
#[derive(Default)]
struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Option<Rc<Metrics>>,
    shared: Rc<RefCell<Shared>>,
    info_logged: Rc<InfoLogged>,
    /// Key fetches in flight: call token -> (issuer, path).
    fetches: HashMap<u32, (String, String)>,
    /// Whether Envoy's `verify_signature` passed the probe (`Err`: why not); probed once per VM.
    host_signatures: Option<Result<(), String>>,
    /// Key fetches shared with the other VMs of the process (remote key sets only).
    shared_fetches: Option<SharedFetches>,
    /// Fetches another VM is making for this one.
    deferred: Vec<Deferred>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // The plugin is going away (a new configuration, or Envoy stopping): hand over the counts.
        if let Some(metrics) = &self.metrics {
            metrics.flush(now_millis().unwrap_or(0));
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((issuer, path)) = self.fetches.remove(&token_id) else { return };
        let Some(engine) = self.engine.clone() else { return };
        let now = now_secs().unwrap_or(0);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        // Read at most one byte more than allowed, so an oversized body is recognised, not read.
        let cap = engine.issuers().get(&issuer).map_or(0, |i| i.max_body_bytes());
        let body = if status.is_some() && body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(cap + 1)).ok().flatten()
        } else {
            None
        };
        let outcome = engine.key_fetch_completed(&issuer, &path, status, body.as_deref(), now);
        if let (Some(shared), Some(body), false) =
            (&self.shared_fetches, &body, matches!(outcome, FetchOutcome::Failed(_)))
        {
            // A response this VM accepted: the other VMs install it rather than fetch it again.
            shared.publish(&issuer, &path, now, body);
        }
        self.fetch_done(&engine, &issuer, &path, outcome, now);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                log(LogLevel::Error, &format!("configuration refused: cannot read it ({status:?})"));
                return false;
            }
        };
        // The digest first, so the configuration (2 MB at 10,000 rules) is dropped once parsed
        // rather than held while the rules compile. It names the bundle in the load record and
        // namespaces the data shared with other VMs (the same digest `meshward check` prints).
        let digest = crate::audit::policy_digest(&bytes);
        let started = now_millis();
        let compiled = BundleConfig::from_json(&bytes).and_then(|bundle| {
            drop(bytes);
            bundle.compile()
        });
        let configure_ms = now_millis().zip(started).map(|(end, start)| end.saturating_sub(start));
        let now = now_secs().unwrap_or(0);
        match compiled {
            Ok((mut engine, warnings)) => {
                let host_signatures = self
                    .host_signatures
                    .get_or_insert_with(|| crate::token::hostcrypto::probe(&EnvoySignatures));
                let backend = match host_signatures {
                    Ok(()) => {
                        engine.set_signature_host(Box::new(EnvoySignatures));
                        "host"
                    }
                    Err(why) => {
                        log(
                            LogLevel::Warn,
                            &format!("signatures checked in wasm: verify_signature unusable ({why})"),
                        );
                        "wasm"
                    }
                };
                let slots = engine.settings().token_cache_entries;
                engine.share_tokens(SharedTokens::new(Box::new(HostSharedData), &digest, slots));
                let record = LoadRecord::with_digest(digest.clone(), Ok(&engine), now)
                    .with_cost(configure_ms, Some(memory_bytes()))
                    .with_signature_backend(backend);
                log(LogLevel::Info, &record.to_json());
                for warning in &warnings {
                    log(LogLevel::Warn, &warning.to_string());
                }
                log(
                    LogLevel::Info,
                    &format!(
                        "configuration loaded: bundle {:?} version {:?}, {} issuers, {} rules",
                        engine.name,
                        engine.version,
                        engine.issuers().iter().count(),
                        engine.policy().rules().len()
                    ),
                );
                let remote = engine.issuers().iter().any(|i| i.has_remote_keys());
                self.shared_fetches = remote.then(|| SharedFetches::new(Box::new(HostSharedData), &digest));
                self.deferred.clear();
                self.engine = Some(Rc::new(engine));
                let metrics = self.metrics.get_or_insert_with(|| Rc::new(Metrics::define()));
                metrics.memory(memory_bytes());
                // The timer dispatches key fetches (the first tick comes at once) and hands counters
                // over on idle VMs (see metrics.rs).
                let period = if remote { 250 } else { 1000 };
                let _ = hostcalls::set_tick_period(Duration::from_millis(period));
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject this configuration (and keep a previous one).
                log(LogLevel::Error, &format!("configuration refused: {e}"));
                log(LogLevel::Error, &LoadRecord::with_digest(digest, Err(&e), now).to_json());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let (Some(metrics), Some(now_ms)) = (&self.metrics, now_millis()) {
            metrics.flush(now_ms);
        }
        let Some(engine) = self.engine.clone() else { return };
        let now = now_secs().unwrap_or(0);
        self.adopt_deferred(&engine, now);
        self.dispatch_due(&engine, now);
        self.expire_waiters(&engine);
        if let Some(metrics) = &self.metrics {
            for issuer in engine.issuers().iter() {
                if let Some(age) = issuer.key_set_age(now) {
                    metrics.key_set_age(&issuer.name, age);
                }
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            shared: self.shared.clone(),
            info_logged: self.info_logged.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Logs and counts a completed fetch (own or adopted), then acts on it.
    fn fetch_done(&mut self, engine: &Engine, issuer: &str, path: &str, outcome: FetchOutcome, now: u64) {
        self.report_fetch(engine, issuer, path, &outcome);
        match outcome {
            FetchOutcome::Installed { .. } => self.resume_waiters(engine),
            FetchOutcome::Discovered { .. } => self.dispatch_due(engine, now),
            FetchOutcome::Failed(_) => {}
        }
    }

    /// Installs the response another VM published for this fetch, if there is a usable one
    /// (see `SharedFetches::adoptable`); whether it did. The response is checked as our own.
    fn adopt(&mut self, engine: &Engine, issuer: &str, path: &str, now: u64) -> bool {
        let (Some(shared), Some(found)) = (&self.shared_fetches, engine.issuers().get(issuer)) else {
            return false;
        };
        let installed_at = found.key_set_age(now).map(|age| now.saturating_sub(age));
        let refresh = found.refresh_seconds().unwrap_or(0);
        let Some((at, body)) = shared.adoptable(issuer, path, installed_at, refresh, now) else {
            return false;
        };
        // Installed as of the fetch's time, so the key set's age is the same in every VM.
        let outcome = engine.key_fetch_completed(issuer, path, Some(200), Some(&body), at);
        self.fetch_done(engine, issuer, path, outcome, now);
        true
    }

    /// Installs what other VMs fetched for this one; a fetch whose claim ran out unanswered counts
    /// as failed here (it is retried, with backoff, and claimed again).
    fn adopt_deferred(&mut self, engine: &Engine, now: u64) {
        let now_ms = now_millis().unwrap_or(now.saturating_mul(1000));
        for waiting in std::mem::take(&mut self.deferred) {
            if self.adopt(engine, &waiting.issuer, &waiting.path, now) {
                continue;
            }
            if now_ms > waiting.until_ms {
                let outcome = engine.key_fetch_completed(&waiting.issuer, &waiting.path, None, None, now);
                self.fetch_done(engine, &waiting.issuer, &waiting.path, outcome, now);
            } else {
                self.deferred.push(waiting);
            }
        }
    }

    fn dispatch_due(&mut self, engine: &Engine, now: u64) {
        for fetch in engine.due_key_fetches(now) {
            if self.adopt(engine, &fetch.issuer, &fetch.path, now) {
                continue;
            }
            if let Some(shared) = &self.shared_fetches {
                // One VM of the process fetches; the others wait for its response.
                let now_ms = now_millis().unwrap_or(now.saturating_mul(1000));
                let until_ms = now_ms + fetch.timeout_ms + 1000;
                if !shared.claim(&fetch.issuer, &fetch.path, now_ms, until_ms) {
                    self.deferred.push(Deferred { issuer: fetch.issuer, path: fetch.path, until_ms });
                    continue;
                }
            }
            let headers = vec![
                (":method", "GET"),
                (":path", fetch.path.as_str()),
                (":authority", fetch.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = Duration::from_millis(fetch.timeout_ms);
            match hostcalls::dispatch_http_call(&fetch.cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.fetches.insert(token, (fetch.issuer, fetch.path));
                }
                Err(status) => {
                    let outcome = engine.key_fetch_completed(&fetch.issuer, &fetch.path, None, None, now);
                    log(
                        LogLevel::Warn,
                        &format!("key fetch for issuer {:?} not dispatched: {status:?}", fetch.issuer),
                    );
                    self.report_fetch(engine, &fetch.issuer, &fetch.path, &outcome);
                }
            }
        }
    }

    fn report_fetch(&self, engine: &Engine, issuer: &str, path: &str, outcome: &FetchOutcome) {
        if let Some(metrics) = &self.metrics {
            metrics.key_fetch(outcome.label());
        }
        let record =
            KeyFetchRecord::new(&engine.name, issuer, path, outcome, now_secs().unwrap_or(0)).to_json();
        let level = if matches!(outcome, FetchOutcome::Failed(_)) { LogLevel::Warn } else { LogLevel::Info };
        log(level, &record.to_string());
    }

    /// Decides every parked request now that keys are here, and lets it go on or answers it.
    fn resume_waiters(&mut self, engine: &Engine) {
        let waiting = std::mem::take(&mut self.shared.borrow_mut().waiting);
        let now_ms = now_millis().unwrap_or(0);
        for waiter in waiting {
            self.decide_parked(engine, &waiter, now_ms);
        }
    }

    /// Refuses parked requests whose wait is over.
    fn expire_waiters(&mut self, engine: &Engine) {
        let now_ms = now_millis().unwrap_or(0);
        let expired: Vec<Waiter> = {
            let mut shared = self.shared.borrow_mut();
            let (expired, keep) =
                std::mem::take(&mut shared.waiting).into_iter().partition(|w| w.deadline_ms <= now_ms);
            shared.waiting = keep;
            expired
        };
        for waiter in expired {
            // Decided again: the answer is `keys_unavailable` unless keys came meanwhile.
            self.decide_parked(engine, &waiter, now_ms);
        }
    }

    /// Decides a parked request on its own stream, and lets it go on or answers it.
    fn decide_parked(&self, engine: &Engine, waiter: &Waiter, now_ms: u64) {
        if hostcalls::set_effective_context(waiter.context_id).is_err() {
            return; // the stream is gone
        }
        let request = waiter.request.as_request();
        let metrics = self.metrics.as_deref();
        if decide(engine, metrics, &self.info_logged, &request, waiter.request.request_id(), now_ms)
            == Action::Continue
        {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// One HTTP stream.
struct Stream {
    context_id: u32,
    engine: Option<Rc<Engine>>,
    metrics: Option<Rc<Metrics>>,
    shared: Rc<RefCell<Shared>>,
    info_logged: Rc<InfoLogged>,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        // A stream reset while parked must not be resumed later.
        let id = self.context_id;
        self.shared.borrow_mut().waiting.retain(|w| w.context_id != id);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            // No configuration: Envoy should not have created us, but fail closed if it did.
            return send_deny(None, Reason::InternalError, None);
        };
        let (Some(pairs), Some(now_ms)) = (crate::entry::request_header_pairs(), now_millis()) else {
            return send_deny(Some(&engine), Reason::InternalError, None);
        };
        let request = OwnedRequest::from_pairs(
            pairs,
            if engine.policy().uses_peers() {
                property(&["connection", "uri_san_peer_certificate"])
            } else {
                None
            },
            if engine.uses_certificate_binding() {
                property(&["connection", "sha256_peer_certificate_digest"])
            } else {
                None
            },
        );
        let Some(request) = request else {
            return send_deny(Some(&engine), Reason::InternalError, None);
        };
        let now = now_ms / 1000;
        let view = request.as_request();
        // Before the first remote key set, a request may wait for it instead of being refused.
        let outcome = engine.authorize(&view, now);
        if outcome.decision.reason == Reason::KeysUnavailable && engine.waiting_for_first_keys(now_ms) {
            let wait_ms = engine.issuers().iter().filter_map(|i| i.wait_for_keys_ms()).max().unwrap_or(0);
            self.shared.borrow_mut().waiting.push(Waiter {
                context_id: self.context_id,
                request,
                deadline_ms: now_ms + wait_ms,
            });
            return Action::Pause;
        }
        let metrics = self.metrics.as_deref();
        act(&engine, metrics, &self.info_logged, &view, &outcome, request.request_id(), now_ms)
    }
}

/// Authorizes a request, audits and counts the decision, and either forwards the verified
/// identity (`Continue`) or answers the request itself (`Pause`). Acts on the effective context.
fn decide(
    engine: &Engine,
    metrics: Option<&Metrics>,
    info_logged: &InfoLogged,
    request: &HttpRequest<'_>,
    request_id: Option<&str>,
    now_ms: u64,
) -> Action {
    let outcome = engine.authorize(request, now_ms / 1000);
    act(engine, metrics, info_logged, request, &outcome, request_id, now_ms)
}

/// Audits and counts a decision already made, then forwards the identity or answers the request.
fn act(
    engine: &Engine,
    metrics: Option<&Metrics>,
    info_logged: &InfoLogged,
    request: &HttpRequest<'_>,
    outcome: &Outcome,
    request_id: Option<&str>,
    now_ms: u64,
) -> Action {
    if engine.should_audit(outcome) {
        // Built only for a reader: Envoy's log at info, or the filter state for access logs.
        let logged = info_logged.at(now_ms);
        if logged || engine.audit_filter_state() {
            let record =
                AuditRecord::new(&engine.name, request, outcome, now_ms / 1000, request_id).to_json();
            if logged {
                log(LogLevel::Info, &record);
            }
            if engine.audit_filter_state() {
                // Also as filter state (`wasm.meshward_audit`), for access-log formats.
                let _ = hostcalls::set_property(vec!["meshward_audit"], Some(record.as_bytes()));
            }
        }
    }
    if let Some(metrics) = metrics {
        metrics.record(outcome);
        metrics.verifications(engine.take_verifications());
        metrics.flush_if_due(now_ms);
        // Caches grow with traffic: keep the memory gauge current (a host call only on growth).
        metrics.memory(memory_bytes());
    }
    if !outcome.lets_through() {
        return send_deny(Some(engine), outcome.decision.reason, request_id);
    }
    match forward_identity(engine, outcome) {
        Ok(()) => Action::Continue,
        Err(_) => send_deny(Some(engine), Reason::InternalError, request_id),
    }
}

/// Replaces any client-supplied identity headers with the verified identity (and removes the token
/// if configured).
fn forward_identity(engine: &Engine, outcome: &Outcome) -> Result<(), proxy_wasm::types::Status> {
    for (name, value) in engine.upstream_headers(outcome.identity.as_deref()) {
        // set_map_value replaces every copy; None removes them all.
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value.as_deref())?;
    }
    Ok(())
}

fn send_deny(engine: Option<&Engine>, reason: Reason, request_id: Option<&str>) -> Action {
    let (status, headers, body) = match engine {
        Some(engine) => {
            let r = engine.deny_response(reason, request_id);
            (r.status, r.headers, r.body)
        }
        None => (500, Vec::new(), format!("{{\"reason\":\"{}\"}}", reason.code())),
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if hostcalls::send_http_response(status, headers, Some(body.as_bytes())).is_err() {
        // The local reply failed: reset the stream rather than let the request through.
        let _ = hostcalls::reset_http_request();
    }
    Action::Pause
}

/// A non-empty string property of the stream or connection.
fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// The VM's linear memory, in bytes (it only ever grows).
fn memory_bytes() -> u64 {
    (core::arch::wasm32::memory_size::<0>() as u64).saturating_mul(65_536)
}

/// The host's clock, in unix milliseconds.
fn now_millis() -> Option<u64> {
    let since = hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// The host's clock, in unix seconds.
fn now_secs() -> Option<u64> {
    now_millis().map(|ms| ms / 1000)
}
