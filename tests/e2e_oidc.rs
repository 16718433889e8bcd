//! End-to-end with a real OpenID provider: oidc-provider (tests/oidc/, installed by `make
//! oidc-provider`) issues RFC 9068 JWT access tokens by client credentials; meshward, in a real
//! Envoy, discovers the provider's keys through an Envoy cluster (OIDC discovery, then `jwks_uri`),
//! accepts its tokens under the `access-token` profile, and follows a key rotation (new key
//! published, old key withdrawn) through the unknown-`kid` refetch. Loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use support::{eventually, Envoy};

/// The provider's Node process; stopped when dropped, whatever the test's outcome.
struct Provider {
    child: Child,
    port: u16,
    secret: String,
}

impl Provider {
    /// Starts the provider on `port`, signing with a fresh ES256 key named `kid`.
    fn start(port: u16, kid: &str, secret: &str) -> Provider {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `make oidc-provider`"
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg(port.to_string())
            .arg(kid)
            .current_dir(&dir)
            .env("MESHWARD_E2E_CLIENT_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (Node.js) must be on PATH");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "the provider did not start: {line:?}");
        Provider { child, port, secret: secret.to_owned() }
    }

    /// An access token by client credentials for the resource https://api.test.
    fn token(&self) -> String {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("meshward-e2e:{}", self.secret));
        let body = "grant_type=client_credentials&scope=read&resource=https%3A%2F%2Fapi.test";
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            conn,
            "POST /token HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        let (_, json) = response.split_once("\r\n\r\n").unwrap();
        let json: Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {response}"));
        assert_eq!(json["token_type"], "Bearer", "{json}");
        json["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The decoded JOSE header and claims of a JWT (no verification: meshward does that).
fn decode(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |i: usize| -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    (part(0), part(1))
}

#[test]
fn tokens_of_a_real_openid_provider_verify_and_its_key_rotation_is_followed() {
    let port = support::free_port();
    let secret = format!("e2e-{}-{}", std::process::id(), port);
    let issuer = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(port, "k1", &secret);

    let bundle = json!({
        "name": "oidc-provider",
        "issuers": [{
            "name": "idp", "issuer": issuer, "audiences": ["https://api.test"], "algorithms": ["ES256"],
            "profile": "access-token",
            // No jwks_path: OIDC discovery finds the JWK Set.
            "remote_jwks": {"cluster": "idp", "refresh_seconds": 3600, "unknown_kid_refetch_seconds": 1,
                             "wait_for_keys_ms": 4000},
        }],
        "rules": [{"id": "client", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
                   "subjects": ["meshward-e2e"]}],
    });
    let envoy = Envoy::start_with_clusters(&bundle.to_string(), vec![("idp".into(), port)]);
    let get = |token: &str| envoy.request("GET", "/items", &[("Authorization", &format!("Bearer {token}"))]);

    // The provider's token is an RFC 9068 access token, and meshward accepts it.
    let t1 = provider.token();
    let (header, claims) = decode(&t1);
    assert_eq!((header["typ"].as_str(), header["kid"].as_str()), (Some("at+jwt"), Some("k1")), "{header}");
    assert_eq!(claims["client_id"], "meshward-e2e", "{claims}");
    assert_eq!(claims["aud"], "https://api.test", "{claims}");
    let r = get(&t1);
    assert_eq!(r.status, 200, "{r:?}\n{}", envoy.log());
    let decision = envoy.audit_records().into_iter().last().unwrap();
    assert_eq!(decision["subject"], "meshward-e2e", "{decision}");
    assert_eq!(
        (decision["issuer"].as_str(), decision["profile"].as_str(), decision["token_id"].as_str()),
        (Some("idp"), Some("access-token"), claims["jti"].as_str()),
        "{decision}"
    );

    // The token with its signature broken is refused.
    let mut tampered = t1.clone();
    tampered.pop();
    assert_eq!(get(&tampered).status, 401);

    // Rotation: the provider restarts with a new key k2; k1 is withdrawn.
    drop(provider);
    let provider = Provider::start(port, "k2", &secret);
    let t2 = provider.token();
    assert_eq!(decode(&t2).0["kid"], "k2");
    assert!(eventually(10, || get(&t2).status == 200), "the new key was fetched\n{}", envoy.log());
    // The old key is gone from the set meshward now holds.
    let r = get(&t1);
    assert_eq!((r.status, r.json()["reason"].as_str()), (401, Some("token_key_unknown")), "{r:?}");

    // The audit trail shows the fetches: discovery, then the key set, before and after rotation.
    let fetches = envoy.log_records("key_fetch");
    let outcomes: Vec<&str> = fetches.iter().filter_map(|r| r["outcome"].as_str()).collect();
    assert!(outcomes.iter().filter(|o| **o == "discovered").count() >= 1, "{fetches:?}");
    assert!(outcomes.iter().filter(|o| **o == "installed").count() >= 2, "{fetches:?}");
    assert!(fetches.iter().any(|r| r["path"] == "/.well-known/openid-configuration"), "{fetches:?}");
    assert!(fetches.iter().any(|r| r["path"] == "/jwks" && r["outcome"] == "installed"), "{fetches:?}");
}
