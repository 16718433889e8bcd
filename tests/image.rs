//! `meshward image`: the plugin as an OCI image layout in the form Istio's WasmPlugin pulls (the
//! "compat" variant of the Wasm image specification). Run through the CLI, as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::scratch_dir;

/// A small but valid core WebAssembly module: the header and an empty custom section.
fn module() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0, 9, 8]);
    m.extend_from_slice(b"meshward");
    m
}

fn meshward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshward")).args(args).output().unwrap()
}

fn build(wasm: &Path, out: &Path, tag: &str) -> Output {
    meshward(&["image", "--wasm", wasm.to_str().unwrap(), "--out", out.to_str().unwrap(), "--tag", tag])
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", meshward::audit::sha256_hex(bytes))
}

/// Reads a blob, checking that its name is its digest.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let bytes =
        std::fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap();
    assert_eq!(sha256(&bytes), digest, "blob content matches its digest");
    bytes
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn the_image_is_one_tar_gzip_layer_holding_plugin_wasm() {
    let dir = scratch_dir();
    let wasm = dir.join("meshward.wasm");
    std::fs::write(&wasm, module()).unwrap();
    let layout = dir.join("image");
    let out = build(&wasm, &layout, "1.2.3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8(out.stdout).unwrap();

    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], "1.2.3");
    let digest = manifests[0]["digest"].as_str().unwrap();
    assert!(summary.ends_with(&format!("digest: {digest}\n")), "the CLI prints the digest to pin: {summary}");

    let manifest_bytes = blob(&layout, digest);
    assert_eq!(manifests[0]["size"], manifest_bytes.len());
    let manifest = json(&manifest_bytes);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["annotations"]["module.wasm.image/variant"], "compat");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "a single layer: {manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"], layer.len());

    // The layer holds exactly plugin.wasm, byte for byte, as a plain file at the top level.
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(layer.as_slice()).read_to_end(&mut tar_bytes).unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let header = entry.header();
        files.push((
            entry.path().unwrap().display().to_string(),
            header.entry_type(),
            header.mode().unwrap(),
            content,
        ));
    }
    assert_eq!(files, vec![("plugin.wasm".to_string(), tar::EntryType::Regular, 0o644, module())]);

    // The config names the uncompressed layer and the platform of a wasm32-wasip1 module.
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&tar_bytes).as_str());
    assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("wasm"), Some("wasip1")));
}

#[test]
fn the_same_module_gives_the_same_digest() {
    let dir = scratch_dir();
    let wasm = dir.join("meshward.wasm");
    std::fs::write(&wasm, module()).unwrap();
    let digest =
        |out: &Output| String::from_utf8(out.stdout.clone()).unwrap().lines().last().unwrap().to_string();

    let first = build(&wasm, &dir.join("a"), "1.0");
    // Built again into the same directory (replaced) and into another one: one digest.
    let again = build(&wasm, &dir.join("a"), "1.0");
    let elsewhere = build(&wasm, &dir.join("b"), "1.0");
    assert!(digest(&first).starts_with("digest: sha256:"), "{first:?}");
    assert_eq!(digest(&first), digest(&again));
    assert_eq!(digest(&first), digest(&elsewhere));
    assert_eq!(std::fs::read_dir(dir.join("a/blobs/sha256")).unwrap().count(), 3, "no stale blobs are left");

    let mut changed = module();
    changed.push(0);
    std::fs::write(&wasm, changed).unwrap();
    assert_ne!(
        digest(&build(&wasm, &dir.join("c"), "1.0")),
        digest(&first),
        "another module, another digest"
    );
}

#[test]
fn the_cli_refuses_what_is_not_a_module_and_will_not_clobber_a_directory() {
    let dir = scratch_dir();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not wasm").unwrap();
    let out = build(&text, &dir.join("image"), "1.0");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("notes.txt is not a WebAssembly module"), "{stderr}");
    assert!(!dir.join("image").exists(), "nothing is written for a refused module");

    let wasm = dir.join("meshward.wasm");
    std::fs::write(&wasm, module()).unwrap();
    let precious = dir.join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("keep.txt"), "mine").unwrap();
    let out = build(&wasm, &precious, "1.0");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an OCI image layout"), "{out:?}");
    assert_eq!(std::fs::read_to_string(precious.join("keep.txt")).unwrap(), "mine");

    let out = build(&wasm, &dir.join("image"), "no/slashes");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid tag \"no/slashes\""), "{out:?}");
}
