//! End-to-end: policy updates as Istio delivers them. Envoy receives the meshward filter through
//! extension config discovery (ECDS) from a watched file; the test replaces that file atomically
//! while traffic flows and checks, in the same Envoy process, that a new policy takes effect, that a
//! bad one is refused while the previous one keeps enforcing, and that a bad first policy denies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::{json, Value};
use support::{free_port, scratch_dir, wasm_module, Envoy, Started};

/// The filter's name in the listener, which is also the ECDS resource name.
const FILTER: &str = "meshward";
/// Envoy's counters for the filter's extension config discovery.
const ECDS_STATS: &str = "extension_config_discovery.http_filter.meshward";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const ISSUER: &str = "https://mesh.test";

/// A bundle whose `read` rule lets any workload GET /data/; with `frozen`, a deny rule overrides it.
fn bundle(key: &SigningKey, version: &str, frozen: bool) -> Value {
    let mut rules = vec![json!({"id": "read", "hosts": ["*"], "methods": ["GET"],
        "paths": [{"prefix": "/data/"}], "subjects": ["spiffe://t/**"]})];
    if frozen {
        rules.push(json!({"id": "freeze", "effect": "deny", "hosts": ["*"], "methods": ["*"],
            "paths": [{"prefix": "/data/"}], "subjects": ["**"]}));
    }
    json!({
        "name": "ecds-e2e",
        "version": version,
        "issuers": [{"name": "mesh", "issuer": ISSUER, "audiences": ["api"], "algorithms": ["EdDSA"],
            "jwks": jwks(&[key])}],
        "rules": rules,
    })
}

/// The watched directory and the ECDS resource file in it, as a control plane (or Istio's agent)
/// would keep them.
struct EcdsFile {
    dir: PathBuf,
}

impl EcdsFile {
    fn new() -> Self {
        let dir = scratch_dir().join("ecds");
        std::fs::create_dir_all(&dir).unwrap();
        EcdsFile { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("meshward.json")
    }

    /// Publishes `bundle` as resource version `version`: written to a temporary file in the same
    /// directory, then renamed over the watched file, so Envoy never reads a half-written one.
    fn publish(&self, bundle: &str, version: &str) {
        let resource = json!({
            "version_info": version,
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": FILTER,
                "typed_config": {
                    "@type": WASM_TYPE,
                    "config": {
                        "name": "meshward",
                        "root_id": "meshward",
                        "failure_policy": "FAIL_CLOSED",
                        "vm_config": {
                            "vm_id": "meshward",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": wasm_module().display().to_string()}},
                        },
                        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": bundle},
                    },
                },
            }],
        });
        let temporary = self.dir.join(".meshward.json.tmp");
        std::fs::write(&temporary, resource.to_string()).unwrap();
        std::fs::rename(&temporary, self.path()).unwrap();
    }
}

/// An Envoy whose meshward filter comes from `ecds` (no inline configuration), in front of a direct
/// response standing in for the backend.
fn bootstrap(ecds: &EcdsFile, listen: u16, admin: u16) -> String {
    format!(
        r#"node: {{ id: meshward-ecds-test, cluster: meshward-ecds-test }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          # Close at once after a `Connection: close` response (the test client reads to EOF;
          # the default waits 1 s for the client to close first).
          delayed_close_timeout: 0s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "backend: request accepted\n" }} }}
          http_filters:
          - name: {FILTER}
            config_discovery:
              config_source:
                path_config_source:
                  path: {path}
                  watched_directory: {{ path: {dir} }}
              type_urls: ["{WASM_TYPE}"]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        path = ecds.path().display(),
        dir = ecds.dir.display(),
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Polls `done` every 50 ms for at most `limit`; whether it became true.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One ECDS counter (0 when absent).
fn ecds_counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("{ECDS_STATS}.{name}")).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The `version_info` of the extension configuration Envoy applied last.
fn applied_version(envoy: &Envoy) -> String {
    envoy.stat(&format!("{ECDS_STATS}.version_text")).unwrap_or_default().trim_matches('"').to_string()
}

/// What one request of the traffic loop got: status and deny reason, or the transport error.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Status(u16, Option<String>),
    Failed(String),
}

/// The same request, sent again and again from a thread until stopped (and at most `MAX` times or
/// for `LIMIT`), each on a new connection, recording what the client saw.
struct Traffic {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    const MAX: usize = 5000;
    const LIMIT: Duration = Duration::from_secs(120);

    fn start(port: u16, path: &'static str, authorization: String) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen_by_thread, stop_thread) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Self::LIMIT;
            for _ in 0..Self::MAX {
                if stop_thread.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let seen =
                    match support::http(port, "GET", path, &[("Authorization", authorization.as_str())]) {
                        Ok(r) => {
                            let reason = serde_json::from_str::<Value>(&r.body)
                                .ok()
                                .and_then(|b| b["reason"].as_str().map(String::from));
                            Seen::Status(r.status, reason)
                        }
                        Err(e) => Seen::Failed(e.to_string()),
                    };
                seen_by_thread.lock().unwrap().push(seen);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Traffic { seen, stop, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits (bounded) until `more` further requests were answered after the first `from`.
    fn wait_for(&self, from: usize, more: usize) -> bool {
        wait_until(Duration::from_secs(20), || self.count() >= from + more)
    }

    /// Waits (bounded) until a request after the first `from` saw `what`; its index.
    fn wait_for_seen(&self, from: usize, what: &Seen) -> Option<usize> {
        let mut at = None;
        wait_until(Duration::from_secs(30), || {
            at = self.seen().iter().skip(from).position(|s| s == what).map(|i| i + from);
            at.is_some()
        });
        at
    }

    fn stop(&mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.seen()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start(ecds: &EcdsFile) -> Started {
    let (listen, admin) = (free_port(), free_port());
    Envoy::try_start_yaml(&bootstrap(ecds, listen, admin), listen, admin)
}

fn ready(started: Started) -> Envoy {
    match started {
        Started::Ready(envoy) => envoy,
        Started::Exited(code, log) => panic!("Envoy exited ({code:?}) before it was ready:\n{log}"),
    }
}

#[test]
fn policy_updates_apply_live_and_a_bad_update_is_refused() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap();
    let reader = {
        let spec = TokenSpec::new(ISSUER, "spiffe://t/reader", "api", now(), 600);
        format!("Bearer {}", key.sign(&spec).unwrap())
    };
    let ecds = EcdsFile::new();
    ecds.publish(&bundle(&key, "1", false).to_string(), "1");
    let mut envoy = ready(start(&ecds));
    let pid = envoy.pid();
    assert_eq!(applied_version(&envoy), "1", "{}", envoy.admin("/stats"));
    assert_eq!(ecds_counter(&envoy, "update_success"), 1);

    let allowed = Seen::Status(200, None);
    let denied = Seen::Status(403, Some("policy_denied".into()));
    let t0 = Instant::now();
    let mut traffic = Traffic::start(envoy.listen_port, "/data/items", reader.clone());

    // Policy 1 allows the reader.
    assert!(traffic.wait_for(0, 20), "no traffic got through: {:?}", traffic.seen());
    assert!(traffic.seen().iter().all(|s| *s == allowed), "{:?}", traffic.seen());

    // Policy 2 freezes /data/: the decision changes without a restart.
    let published_2 = traffic.count();
    ecds.publish(&bundle(&key, "2", true).to_string(), "2");
    let switched = traffic.wait_for_seen(published_2, &denied);
    let switched = switched.unwrap_or_else(|| panic!("policy 2 never took effect:\n{}", envoy.log()));
    assert!(traffic.wait_for(switched, 20));
    assert_eq!(applied_version(&envoy), "2");
    assert_eq!(ecds_counter(&envoy, "update_success"), 2);

    // An invalid policy: meshward refuses it, Envoy rejects the update, policy 2 keeps enforcing.
    ecds.publish(&bundle(&key, "3", true).to_string().replace("\"GET\"", "\"get\""), "3");
    let refused = "configuration refused: rules[0].methods[0]: \"get\" is not an upper-case method name";
    let rejected = wait_until(Duration::from_secs(20), || ecds_counter(&envoy, "config_fail") == 1);
    assert!(rejected, "the bad update was not rejected:\n{}", envoy.admin("/stats"));
    assert!(envoy.log().contains(refused), "{}", envoy.log());
    assert_eq!(ecds_counter(&envoy, "update_rejected"), 1);
    assert_eq!(ecds_counter(&envoy, "update_success"), 2);
    assert_eq!(applied_version(&envoy), "2", "the rejected version is not applied");
    let refused_at = traffic.count();
    assert!(traffic.wait_for(refused_at, 20), "traffic stopped after the rejected update");

    // A valid policy after the rejected one still applies: the updates were not wedged.
    let published_4 = traffic.count();
    ecds.publish(&bundle(&key, "4", false).to_string(), "4");
    let back = traffic.wait_for_seen(published_4, &allowed);
    let back = back.unwrap_or_else(|| panic!("policy 4 never took effect:\n{}", envoy.log()));
    assert!(traffic.wait_for(back, 20));
    let seen = traffic.stop();
    let elapsed = t0.elapsed();
    assert_eq!(applied_version(&envoy), "4");
    assert_eq!(
        (ecds_counter(&envoy, "update_success"), ecds_counter(&envoy, "config_fail")),
        (3, 1),
        "{}",
        envoy.admin("/stats")
    );

    // What the client saw, in order: allowed, then denied from one request on (through the
    // rejected update), then allowed again. No failed request and no other status at any point.
    // (One worker thread, `--concurrency 1`: each update reaches every new stream at once.)
    assert!(seen.iter().all(|s| *s == allowed || *s == denied), "{seen:?}");
    let first_denied = seen.iter().position(|s| *s == denied).unwrap();
    let first_allowed_again =
        seen.iter().skip(first_denied).position(|s| *s == allowed).unwrap() + first_denied;
    assert!(seen[..first_denied].iter().all(|s| *s == allowed), "{seen:?}");
    assert!(seen[first_denied..first_allowed_again].iter().all(|s| *s == denied), "{seen:?}");
    assert!(seen[first_allowed_again..].iter().all(|s| *s == allowed), "{seen:?}");
    assert!(first_denied >= published_2 && first_allowed_again >= published_4, "switched before publishing");
    assert!(published_4 - refused_at >= 20, "the refused update was exercised by traffic");
    assert!(seen.len() < Traffic::MAX, "the loop must have been stopped by the test");
    eprintln!(
        "{} requests in {elapsed:?}: {} allowed under 1, {} denied under 2 ({} after the refused update 3), \
         {} allowed under 4",
        seen.len(),
        first_denied,
        first_allowed_again - first_denied,
        published_4 - refused_at,
        seen.len() - first_allowed_again
    );

    // Same process throughout; its log has a load record per accepted version, a refusal for 3,
    // and a decision record for every request.
    assert_eq!(envoy.pid(), pid);
    assert!(envoy.is_running(), "Envoy exited:\n{}", envoy.log());
    let loads: Vec<String> =
        envoy.log_records("policy_load").iter().map(|r| r["version"].as_str().unwrap().to_string()).collect();
    for version in ["1", "2", "4"] {
        assert!(loads.iter().any(|v| v == version), "no load of version {version}: {loads:?}");
    }
    assert!(!loads.iter().any(|v| v == "3"), "{loads:?}");
    let refusals = envoy.log_records("policy_refused");
    assert!(
        refusals
            .iter()
            .any(|r| r["error"] == "rules[0].methods[0]: \"get\" is not an upper-case method name"),
        "{refusals:?}"
    );
    envoy.wait_for_log(|log| log.matches("\"type\":\"decision\"").count() >= seen.len());
    let decisions = envoy.audit_records();
    let count = |reason: &str| decisions.iter().filter(|r| r["reason"] == reason).count();
    let count_seen = |what: &Seen| seen.iter().filter(|s| *s == what).count();
    assert_eq!(
        (count("allowed"), count("policy_denied")),
        (count_seen(&allowed), count_seen(&denied)),
        "one decision record per request"
    );
    assert!(decisions.iter().filter(|r| r["reason"] == "policy_denied").all(|r| r["rule"] == "freeze"));
}

#[test]
fn a_bad_first_policy_denies_every_request_until_a_good_one_arrives() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap();
    let reader = {
        let spec = TokenSpec::new(ISSUER, "spiffe://t/reader", "api", now(), 600);
        format!("Bearer {}", key.sign(&spec).unwrap())
    };
    let ecds = EcdsFile::new();
    ecds.publish(&bundle(&key, "1", false).to_string().replace("\"GET\"", "\"get\""), "1");
    // Envoy starts (ECDS does not block it), but without a filter configuration the filter is
    // missing, not skipped: every request is refused.
    let envoy = ready(start(&ecds));
    assert!(wait_until(Duration::from_secs(20), || ecds_counter(&envoy, "config_fail") == 1));
    assert!(envoy.log().contains("configuration refused: rules[0].methods[0]"), "{}", envoy.log());
    for _ in 0..3 {
        let r = envoy.request("GET", "/data/items", &[("Authorization", &reader)]);
        assert_eq!(r.status, 500, "a request went through without meshward: {r:?}");
        assert!(!r.body.contains("backend"), "{r:?}");
    }
    assert!(envoy.audit_records().is_empty(), "meshward decided nothing");

    ecds.publish(&bundle(&key, "2", false).to_string(), "2");
    let applied = wait_until(Duration::from_secs(30), || {
        envoy.request("GET", "/data/items", &[("Authorization", &reader)]).status == 200
    });
    assert!(applied, "the good policy never took effect:\n{}", envoy.log());
    assert_eq!(applied_version(&envoy), "2");
    let r = envoy.request("GET", "/data/items", &[]);
    assert_eq!((r.status, r.json()["reason"].as_str()), (401, Some("token_missing")), "{r:?}");
}
