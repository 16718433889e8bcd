//! End-to-end: remote keys through a real Envoy. OIDC discovery, then the JWK Set, from a key server
//! this test controls; requests wait for the first keys; rotation through an unknown `kid`; 5xx,
//! timeouts, bad and oversized bodies keep the last good keys; too stale keys are refused (503);
//! recovery.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::json;
use support::{eventually, Envoy};

/// How the key server answers JWK Set requests (discovery is always answered).
#[derive(Clone)]
enum Mode {
    Keys(String),
    Status(u16),
    Hang,
    Body(String),
}

struct KeyServer {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KeyServer {
    fn start(mode: Mode) -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, p, s) = (mode.clone(), paths.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // One thread per connection, so a hanging answer never delays the next fetch.
                let (m, p) = (m.clone(), p.clone());
                std::thread::spawn(move || serve(conn, &m, &p));
            }
        });
        KeyServer { port, mode, paths, stop, thread: Some(thread) }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn jwks_fetches(&self) -> usize {
        self.paths.lock().unwrap().iter().filter(|p| *p == "/keys/jwks.json").count()
    }
}

/// Answers one fetch according to the current mode.
fn serve(mut conn: std::net::TcpStream, mode: &Mutex<Mode>, paths: &Mutex<Vec<String>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    // The answer is fixed before the fetch is counted, so a test that waits for the count and then
    // switches modes never changes this fetch's answer.
    let mode = mode.lock().unwrap().clone();
    paths.lock().unwrap().push(path.clone());
    let (status, body) = if path == "/.well-known/openid-configuration" {
        (
            200,
            json!({"issuer": "https://idp.test", "jwks_uri": "https://idp.test/keys/jwks.json"}).to_string(),
        )
    } else {
        match mode {
            Mode::Keys(body) | Mode::Body(body) => (200, body),
            Mode::Status(code) => (code, "{}".to_string()),
            Mode::Hang => {
                // Longer than meshward's fetch timeout; then close without answering.
                std::thread::sleep(Duration::from_millis(1200));
                return;
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn remote_keys_discovery_rotation_failures_staleness_and_recovery() {
    let k1 = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let k2 = SigningKey::generate(Algorithm::ES256, "k2").unwrap();
    let set1 = jwks(&[&k1]).to_string();
    let set12 = jwks(&[&k1, &k2]).to_string();
    let server = KeyServer::start(Mode::Status(503));
    let bundle = json!({
        "name": "remote-keys",
        "issuers": [{
            "name": "idp", "issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["ES256"],
            "remote_jwks": {"cluster": "keys", "refresh_seconds": 2, "max_stale_seconds": 20, "timeout_ms": 500,
                             "max_body_bytes": 4096, "unknown_kid_refetch_seconds": 1, "wait_for_keys_ms": 4000},
        }],
        "rules": [{"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
    });
    let envoy = Envoy::start_with_clusters(&bundle.to_string(), vec![("keys".into(), server.port)]);
    let token = |key: &SigningKey| {
        format!("Bearer {}", key.sign(&TokenSpec::new("https://idp.test", "svc", "api", now(), 600)).unwrap())
    };
    let (t1, t2) = (token(&k1), token(&k2));
    let get = |auth: &str| envoy.request("GET", "/x", &[("Authorization", auth)]);

    // 1. The key server is down at start: a request waits for the first keys, and is answered
    //    once they arrive.
    //    Many requests wait on the one fetch, and one client gives up (resets) while waiting.
    let port = envoy.listen_port;
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let waiting_token = t1.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let r =
                    support::http(port, "GET", "/x", &[("Authorization", waiting_token.as_str())]).unwrap();
                (r.status, started.elapsed())
            })
        })
        .collect();
    {
        let mut quitter = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = format!("GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: {t1}\r\n\r\n");
        quitter.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Dropped here: the stream is reset while it waits for keys.
    }
    std::thread::sleep(Duration::from_millis(1200));
    server.set(Mode::Keys(set1.clone()));
    for waiter in waiters {
        let (status, waited) = waiter.join().unwrap();
        assert_eq!(status, 200, "each parked request is decided when keys arrive\n{}", envoy.log());
        assert!(waited >= Duration::from_millis(1000), "it did wait: {waited:?}");
    }
    assert_eq!(get(&t1).status, 200);

    // 2. Rotation: a token with a new kid is refused once, triggers a refetch, then verifies.
    assert_eq!(get(&t2).json()["reason"], "token_key_unknown");
    server.set(Mode::Keys(set12.clone()));
    assert!(eventually(5, || get(&t2).status == 200), "rotated key picked up\n{}", envoy.log());

    // 3. Failures keep the last good keys: 5xx, timeout, a bad body, an oversized body.
    let failed_before = envoy.prometheus_value("meshward_key_fetches_total{outcome=\"failed\"}");
    for mode in [
        Mode::Status(500),
        Mode::Hang,
        Mode::Body("not json".into()),
        Mode::Body(json!({"keys": [], "pad": "x".repeat(5000)}).to_string()),
    ] {
        server.set(mode);
        let fetches = server.jwks_fetches();
        assert!(eventually(5, || server.jwks_fetches() > fetches), "a refresh was attempted");
        assert_eq!(get(&t1).status, 200, "last good keys still in use");
    }
    assert!(eventually(3, || envoy.prometheus_value("meshward_key_fetches_total{outcome=\"failed\"}")
        >= failed_before + 4));
    let fetch_records = envoy.log_records("key_fetch");
    assert!(fetch_records
        .iter()
        .any(|r| r["outcome"] == "failed" && r["detail"].as_str().unwrap().contains("status 500")));
    assert!(fetch_records
        .iter()
        .any(|r| r["outcome"] == "failed" && r["detail"].as_str().unwrap().contains("not JSON")));
    assert!(fetch_records.iter().any(|r| r["outcome"] == "discovered"));

    // 4. Past max_stale_seconds without a good refresh, the keys are dropped: fail closed (503).
    server.set(Mode::Status(503));
    assert!(
        eventually(30, || get(&t1).status == 503),
        "stale keys must not be used forever\n{}",
        envoy.log()
    );
    let r = get(&t1);
    assert_eq!(r.json()["reason"], "keys_unavailable");

    // 5. Recovery.
    server.set(Mode::Keys(set12));
    assert!(eventually(8, || get(&t1).status == 200), "recovered\n{}", envoy.log());
    assert!(envoy.prometheus_value("meshward_key_fetches_total{outcome=\"installed\"}") >= 3);
    assert!(envoy.admin("/stats/prometheus").contains("meshward_key_set_age_seconds{issuer=\"idp\"}"));
}
