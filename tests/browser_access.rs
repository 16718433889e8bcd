//! `meshward access --format html` in a real headless browser (Debian's `chromium`; `make deps`
//! installs it): the page is rendered (scripts run), screenshotted, and the rendered DOM is checked
//! for the identity rows and the grants marked unused, counted independently from
//! `meshward access --format json` and the recordings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const NOW: &str = "2027-01-15T08:00:00Z";
const CORPUS: &str = "tests/corpus/registry.jsonl";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn meshward(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshward")).args(args).current_dir(repo()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHWARD_CHROMIUM") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("chromium");
        if p.is_file() {
            return p;
        }
    }
    panic!("chromium not found: `make deps` installs it (or set MESHWARD_CHROMIUM)");
}

/// Runs headless chromium on a local file with no network features and a fresh profile.
fn browse(dir: &Path, name: &str, extra: &[&str], page: &Path) -> Vec<u8> {
    let profile = dir.join(format!("profile-{name}"));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn the_access_page_renders_every_identity_and_marks_unused_grants() {
    let dir = std::env::temp_dir().join(format!("meshward-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The registry bundle plus a grant nothing in the corpus uses.
    let mut bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("policies/registry.json")).unwrap())
            .unwrap();
    bundle["rules"].as_array_mut().unwrap().push(json!({"id": "pull-legacy", "owner": "platform-team",
        "hosts": ["registry.example.internal"], "registry": {"actions": ["pull", "push"], "repositories": ["legacy/**"]},
        "subjects": ["spiffe://example.internal/legacy/*"], "issuers": ["workloads"]}));
    let bundle_path = dir.join("bundle.json");
    std::fs::write(&bundle_path, bundle.to_string()).unwrap();
    let b = bundle_path.to_str().unwrap();

    let html = meshward(&["access", "--format", "html", "--now", NOW, b, "--recordings", CORPUS]);
    // Self-contained: nothing to fetch.
    assert!(!html.contains("src=") && !html.contains("href="), "{html}");
    assert!(html.contains("default-src 'none'"));
    let page = dir.join("access.html");
    std::fs::write(&page, &html).unwrap();

    // What the page must show, from the JSON view: one row per identity pattern and per identity
    // seen; one marked cell per (host, action) of each grant of the unused rule.
    let view: Value = serde_json::from_str(&meshward(&[
        "access",
        "--format",
        "json",
        "--now",
        NOW,
        b,
        "--recordings",
        CORPUS,
    ]))
    .unwrap();
    let rows = view["patterns"].as_array().unwrap().len() + view["identities"].as_array().unwrap().len();
    let grants = view["patterns"].as_array().unwrap().iter().chain(view["identities"].as_array().unwrap());
    let legacy_cells: usize = grants
        .flat_map(|g| g["grants"].as_array().unwrap())
        .filter(|g| g["rule"] == "pull-legacy")
        .map(|g| g["hosts"].as_array().unwrap().len() * g["registry"]["actions"].as_array().unwrap().len())
        .sum();
    assert!(legacy_cells >= 2, "{view}");

    let shot = dir.join("access.png");
    browse(&dir, "shot", &[&format!("--screenshot={}", shot.display()), "--window-size=1600,1000"], &page);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot of {} bytes", png.len());

    let dom = String::from_utf8(browse(&dir, "dom", &["--dump-dom"], &page)).unwrap();
    assert_eq!(dom.matches("<tr class=\"identity\">").count(), rows, "{dom}");
    assert_eq!(dom.matches("<div class=\"grant unused\">").count(), legacy_cells, "{dom}");
    assert_eq!(dom.matches(">unused</span>").count(), legacy_cells);
    // The inline script ran in the browser and counted the same.
    let summary =
        format!("<p id=\"summary\">{rows} identities, {legacy_cells} grants unused in the recordings</p>");
    assert!(dom.contains(&summary), "{summary} not in {dom}");
    // Rules the corpus used are not marked.
    assert!(!dom.contains("pull-workloads <span class=\"mark\">"), "{dom}");
    if std::env::var_os("MESHWARD_KEEP_SCREENSHOT").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("screenshot: {}", shot.display());
    }
}
