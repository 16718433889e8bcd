//! `meshward dev corpus`: turns test cases into request records with real tokens, minted by code
//! with a development key (NOT FOR PRODUCTION). A case is a request record whose `token` member
//! describes the token to mint instead of carrying one:
//!
//! ```json
//! {"name": "builder pushes to dev/", "time": 1800000000, "method": "PUT",
//!  "authority": "registry.example.internal", "path": "/v2/dev/web/manifests/1.0",
//!  "token": {"iss": "https://issuer.example.internal", "sub": "spiffe://example.internal/ci/builder/web",
//!            "aud": "registry.example.internal", "age": 0, "ttl": 300},
//!  "expect": "allow", "expect_rule": "push-dev-builders"}
//! ```
//!
//! `age`: the token was issued this many seconds before `time` (negative: after); `ttl`: it expires
//! this many seconds after `time` (negative: already expired); `untrusted: true` signs with a
//! freshly generated key under the same `kid`, so the signature does not verify. Lines starting
//! with `#` or `//` are comments.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::records::{HeaderValue, RequestRecord};
use super::{parse_time, Failure};
use crate::cli::dev::{SigningKey, TokenSpec};
use crate::policy::Timestamp;

/// `meshward dev corpus` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "NOT FOR PRODUCTION: the tokens are signed with a development key.\n\
A case is a request record whose `token` describes the token to mint:\n  \
\"token\": {\"iss\": \"https://issuer.example.internal\", \"sub\": \"spiffe://example.internal/ci/builder/web\",\n   \
\"aud\": \"registry.example.internal\", \"age\": 0, \"ttl\": 300, \"jti\": \"...\", \"claims\": {...}, \"typ\": \"at+jwt\", \"untrusted\": false}\n\
age: issued this many seconds before `time`; ttl: expires this many seconds after it; untrusted: signed by a \
fresh key under the same kid. Lines starting with # or // are comments.")]
pub struct CorpusArgs {
    /// Case files (JSON lines); `-` reads standard input.
    #[arg(required = true, value_name = "CASES")]
    pub cases: Vec<PathBuf>,
    /// Key file written by `dev keygen`.
    #[arg(long, conflicts_with = "demo", required_unless_present = "demo")]
    pub key: Option<PathBuf>,
    /// Sign with the well-known public demo key with this kid (anyone can mint such tokens).
    #[arg(long, value_name = "KID")]
    pub demo: Option<String>,
    /// Move every case to this time (unix seconds, RFC 3339, or `now`); tokens are minted relative to it.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Leave the expectations out (for cases moved in time with --at, where they may not hold).
    #[arg(long)]
    pub no_expect: bool,
}

/// The token a case asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenCase {
    iss: String,
    sub: String,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    age: i64,
    #[serde(default = "default_ttl")]
    ttl: i64,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    claims: Map<String, Value>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    untrusted: bool,
}

fn default_ttl() -> i64 {
    300
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// Runs `meshward dev corpus`.
pub fn run(args: &CorpusArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let key = match (&args.key, &args.demo) {
        (Some(path), _) => SigningKey::from_file(&super::bundle::read_text(path)?)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
        (None, Some(kid)) => SigningKey::demo(kid),
        (None, None) => return Err(Failure::usage("give --key FILE or --demo KID")),
    };
    let at = match args.at.as_deref() {
        None => None,
        Some("now") => Some(super::now()),
        Some(t) => Some(parse_time(t).map_err(|e| Failure::usage(format!("--at: {e}")))?),
    };
    let mut untrusted: Option<SigningKey> = None;
    for path in &args.cases {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
            Box::new(std::io::BufReader::new(file))
        };
        for (i, line) in reader.lines().enumerate() {
            let at_line = || format!("{}:{}", path.display(), i + 1);
            let line = line.map_err(|e| Failure::usage(format!("{}: {e}", at_line())))?;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("//") {
                continue;
            }
            let record = case_to_record(trimmed, &key, &mut untrusted, at, args.no_expect)
                .map_err(|e| Failure::usage(format!("{}: {e}", at_line())))?;
            writeln!(out, "{record}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn case_to_record(
    text: &str,
    key: &SigningKey,
    untrusted: &mut Option<SigningKey>,
    at: Option<u64>,
    no_expect: bool,
) -> Result<String, String> {
    let mut value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = &mut value else { return Err("a case is a JSON object".into()) };
    let token = map.remove("token");
    if let Some(t) = at {
        map.insert("time".into(), t.into());
    }
    if no_expect {
        for k in ["expect", "expect_reason", "expect_rule"] {
            map.remove(k);
        }
    }
    let mut record: RequestRecord = serde_json::from_value(value).map_err(|e| format!("not a case: {e}"))?;
    let time = record.time.to_unix().map_err(|e| format!("time: {e}"))?;
    record.time = Timestamp::Unix(time);
    if let Some(token) = token {
        let case: TokenCase = serde_json::from_value(token).map_err(|e| format!("token: {e}"))?;
        let signer = if case.untrusted {
            if untrusted.is_none() {
                let kid = key.public_jwk().get("kid").and_then(Value::as_str).unwrap_or("k").to_owned();
                *untrusted = Some(SigningKey::generate(key.algorithm(), &kid).map_err(|e| e.to_string())?);
            }
            untrusted.as_ref().unwrap_or(key)
        } else {
            key
        };
        let mut spec = TokenSpec::new(&case.iss, &case.sub, "", 0, 0);
        spec.audiences = match case.aud {
            Audience::None => Vec::new(),
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        };
        spec.issued_at = Some(time.saturating_add_signed(-case.age));
        spec.expires_at = Some(time.saturating_add_signed(case.ttl));
        spec.token_id = case.jti;
        spec.claims = case.claims;
        spec.typ = case.typ;
        let jwt = signer.sign(&spec).map_err(|e| e.to_string())?;
        let bearer = format!("Bearer {jwt}");
        let header = match record.headers.remove("authorization") {
            // A case may add a second value (a repeated header) next to the minted token.
            Some(HeaderValue::One(other)) => HeaderValue::Many(vec![bearer, other]),
            Some(HeaderValue::Many(mut others)) => {
                others.insert(0, bearer);
                HeaderValue::Many(others)
            }
            None => HeaderValue::One(bearer),
        };
        record.headers.insert("authorization".into(), header);
    }
    serde_json::to_string(&record).map_err(|e| e.to_string())
}
