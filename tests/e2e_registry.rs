//! End-to-end: a real OCI registry behind Envoy and meshward, driven by a real registry client.
//!
//! Debian's `docker-registry` (the CNCF distribution registry) stores images on the filesystem of a
//! scratch directory; Envoy runs the release module with the example registry bundle
//! (`policies/registry.json`, its hosts pointed at the loopback authority the client uses) in front
//! of it; `skopeo` sends workload tokens signed with the public demo key the bundle trusts. The image
//! it moves is the plugin's own OCI image, built by `meshward image`.
//!
//! `make test` installs docker-registry and skopeo (apt) before it runs this test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshward::cli::dev::{SigningKey, TokenSpec};
use meshward::cli::render::{envoy_bootstrap, EnvoyOptions};
use serde_json::Value;
use support::{free_port, http, scratch_dir, wasm_module, Envoy};

const ISSUER: &str = "https://issuer.example.internal";
const AUDIENCE: &str = "registry.example.internal";
const DEMO_KID: &str = "demo-2026-1";
const BUILDER: &str = "spiffe://example.internal/ci/builder/web";
const RELEASE_BOT: &str = "spiffe://example.internal/ci/release-bot";
const READER: &str = "spiffe://example.internal/apps/web";
const TAG: &str = "1.0";

/// A tool the Makefile installs with apt; missing means the test was not run through `make test`.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run `make test`, which installs docker-registry and skopeo \
             (apt-get install -y docker-registry skopeo)"
        )
    })
}

/// A workload token from the demo issuer, issued `age` seconds ago, valid for 5 more minutes.
fn token(subject: &str, age: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut spec = TokenSpec::new(ISSUER, subject, AUDIENCE, now, 300);
    spec.issued_at = Some(now - age);
    SigningKey::demo(DEMO_KID).sign(&spec).unwrap()
}

/// docker-registry on a free loopback port, storing in a scratch directory; stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl Registry {
    fn start(binary: &Path) -> Registry {
        let dir = scratch_dir();
        let port = free_port();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage = dir.join("storage").display(),
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry { child, port, log_path };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}) before it was ready:\n{}", registry.log());
            }
            if http(port, "GET", "/v2/", &[]).is_ok_and(|r| r.status == 200) {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry not ready after 20 s:\n{}", registry.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy with meshward on `listen`, routing everything to the registry. No access log: the audit
/// trail is meshward's own log lines (an access log on stdout would share the log file with them).
fn bootstrap(bundle_json: &str, listen: u16, admin: u16, registry: u16) -> String {
    let options = EnvoyOptions {
        listen_port: listen,
        admin_port: admin,
        wasm_path: wasm_module().display().to_string(),
        upstream: Some(("127.0.0.1".into(), registry)),
        access_log: false,
        ..EnvoyOptions::default()
    };
    envoy_bootstrap(bundle_json, &options)
}

/// The example registry bundle, its rules limited to the authority the client uses.
fn example_bundle(authority: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/registry.json");
    let mut bundle: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for rule in bundle["rules"].as_array_mut().unwrap() {
        rule["hosts"] = serde_json::json!([authority]);
    }
    serde_json::to_string_pretty(&bundle).unwrap()
}

/// skopeo with its own (permissive) signature policy, no stored credentials, bounded in time.
struct Skopeo {
    binary: PathBuf,
    dir: PathBuf,
}

impl Skopeo {
    fn new(binary: PathBuf) -> Skopeo {
        let dir = scratch_dir();
        std::fs::write(dir.join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)
            .unwrap();
        std::fs::write(dir.join("registries.conf"), "").unwrap();
        std::fs::write(dir.join("auth.json"), "{}").unwrap();
        Skopeo { binary, dir }
    }

    fn run(&self, args: &[String]) -> Output {
        Command::new(&self.binary)
            .arg("--policy")
            .arg(self.dir.join("policy.json"))
            .args(["--command-timeout", "60s"])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", self.dir.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.dir.join("auth.json"))
            .env("TMPDIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, what: &str, args: &[String], envoy: &Envoy) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{what}: skopeo {args:?} failed:\n{}\nEnvoy log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            envoy.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn refused(&self, what: &str, args: &[String]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{what}: skopeo {args:?} succeeded but must be refused");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn digest_of_layout(skopeo: &Skopeo, layout: &str, envoy: &Envoy) -> String {
    let inspect: Value =
        serde_json::from_str(&skopeo.ok("inspect layout", &["inspect".into(), layout.into()], envoy))
            .unwrap();
    inspect["Digest"].as_str().unwrap().to_string()
}

/// The `plugin.wasm` inside the single layer of the image in an OCI layout directory.
fn module_in_layout(dir: &Path) -> Vec<u8> {
    let blob = |digest: &str| {
        std::fs::read(dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap()
    };
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer = blob(layers[0]["digest"].as_str().unwrap());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    let mut entries = archive.entries().unwrap();
    let mut entry = entries.next().expect("one file in the layer").unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("plugin.wasm"));
    let mut module = Vec::new();
    entry.read_to_end(&mut module).unwrap();
    assert!(entries.next().is_none(), "the layer holds only plugin.wasm");
    module
}

/// The decision records with this method and path.
fn decisions<'a>(records: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["method"] == method && r["path"] == path).collect()
}

#[test]
fn skopeo_pushes_promotes_and_pulls_through_meshward() {
    let skopeo = Skopeo::new(tool("skopeo"));
    let registry_binary = tool("docker-registry");
    let work = scratch_dir();

    // The plugin's image, built by the CLI as `make image` does.
    let image_dir = work.join("image");
    let built = Command::new(env!("CARGO_BIN_EXE_meshward"))
        .args(["image", "--tag", TAG, "--wasm"])
        .arg(wasm_module())
        .arg("--out")
        .arg(&image_dir)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let summary = String::from_utf8(built.stdout).unwrap();
    let digest = summary.lines().find_map(|l| l.strip_prefix("digest: ")).expect("digest line").to_string();
    let layout = format!("oci:{}:{TAG}", image_dir.display());

    let registry = Registry::start(&registry_binary);
    let (listen, admin) = (free_port(), free_port());
    let authority = format!("127.0.0.1:{listen}");
    let envoy = Envoy::start_yaml(
        &bootstrap(&example_bundle(&authority), listen, admin, registry.port),
        listen,
        admin,
    );

    // skopeo sees the layout as one image with the digest `meshward image` printed.
    assert_eq!(digest_of_layout(&skopeo, &layout, &envoy), digest);

    let builder = token(BUILDER, 0);
    let reader = token(READER, 0);
    let dev = format!("docker://{authority}/dev/meshward:{TAG}");
    let prod = format!("docker://{authority}/prod/meshward:{TAG}");
    // Plain HTTP on loopback: skopeo needs --*-tls-verify=false for that.
    let push = |token: &str, src: &str, dest: &str| {
        vec![
            "copy".to_string(),
            "--preserve-digests".into(),
            "--src-tls-verify=false".into(),
            format!("--src-registry-token={token}"),
            "--dest-tls-verify=false".into(),
            format!("--dest-registry-token={token}"),
            src.into(),
            dest.into(),
        ]
    };
    let inspect = |token: &str, reference: &str| {
        vec![
            "inspect".to_string(),
            "--tls-verify=false".into(),
            format!("--registry-token={token}"),
            reference.into(),
        ]
    };

    // A CI builder pushes to dev/.
    skopeo.ok("builder pushes to dev/", &push(&builder, &layout, &dev), &envoy);

    // ... but not to prod/: meshward answers 403 before anything is written.
    let refused = skopeo.refused("builder pushes to prod/", &push(&builder, &layout, &prod));
    assert!(refused.contains("403") || refused.contains("denied"), "{refused}");
    let missing = skopeo.refused("reader inspects prod/ before promotion", &inspect(&reader, &prod));
    assert!(missing.contains("manifest unknown"), "prod/ must still be empty: {missing}");

    // The release bot promotes dev/ to prod/, but only with a token minted in the last 5 minutes.
    let stale_bot = token(RELEASE_BOT, 600);
    let refused = skopeo.refused("release bot with a 10-minute-old token", &push(&stale_bot, &dev, &prod));
    assert!(refused.contains("403") || refused.contains("denied") || refused.contains("401"), "{refused}");
    let bot = token(RELEASE_BOT, 0);
    skopeo.ok("release bot promotes", &push(&bot, &dev, &prod), &envoy);

    // A reader pulls the promoted image: the same digest, and the layer holds the module Envoy runs.
    let inspected: Value =
        serde_json::from_str(&skopeo.ok("reader inspects prod/", &inspect(&reader, &prod), &envoy)).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str(), "the registry serves the digest a WasmPlugin pins");
    let pulled = work.join("pulled");
    let pull_to = format!("oci:{}:{TAG}", pulled.display());
    let pull = ["copy", "--src-tls-verify=false", &format!("--src-registry-token={reader}"), &prod, &pull_to]
        .map(String::from);
    skopeo.ok("reader pulls prod/", &pull, &envoy);
    assert_eq!(module_in_layout(&pulled), std::fs::read(wasm_module()).unwrap());

    // The audit trail names who pushed and who promoted, and the refusals.
    let log =
        envoy.wait_for_log(|log| log.matches(r#""path":"/v2/prod/meshward/manifests/1.0""#).count() >= 3);
    let records = envoy.audit_records();
    let manifest_puts = |path: &str| {
        decisions(&records, "PUT", path).into_iter().filter(|r| r["decision"] == "allow").collect::<Vec<_>>()
    };
    let pushed = manifest_puts("/v2/dev/meshward/manifests/1.0");
    assert_eq!(pushed.len(), 1, "one manifest push to dev/: {pushed:#?}\n{log}");
    assert_eq!(pushed[0]["subject"], BUILDER);
    assert_eq!(pushed[0]["rule"], "push-dev-builders");
    let promoted = manifest_puts("/v2/prod/meshward/manifests/1.0");
    assert_eq!(promoted.len(), 1, "one promotion to prod/: {promoted:#?}");
    assert_eq!(promoted[0]["subject"], RELEASE_BOT);
    assert_eq!(promoted[0]["rule"], "promote-release-bot");
    let builder_refusals: Vec<_> = records
        .iter()
        .filter(|r| r["subject"] == BUILDER && r["decision"] == "deny")
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v2/prod/")))
        .collect();
    assert!(!builder_refusals.is_empty(), "the builder's refused push is audited: {records:#?}");
    assert!(
        builder_refusals.iter().all(|r| r["reason"] == "policy_no_matching_rule"),
        "{builder_refusals:#?}"
    );
    assert!(
        records.iter().any(|r| r["subject"] == RELEASE_BOT
            && r["decision"] == "deny"
            && r["path"].as_str().is_some_and(|p| p.starts_with("/v2/prod/"))),
        "the stale release-bot token's refusal is audited: {records:#?}"
    );
    let pulls = decisions(&records, "GET", "/v2/prod/meshward/manifests/1.0");
    assert!(pulls
        .iter()
        .any(|r| r["subject"] == READER && r["rule"] == "pull-workloads" && r["decision"] == "allow"));
}
