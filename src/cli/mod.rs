//! The `meshward` command line (native only): `check`, `replay`, `explain`, `diff`, `access` and the
//! `dev corpus` generator. `src/bin/meshward.rs` is only the clap front end.
//!
//! Every decision printed here is made by the core the plugin runs: request records go through
//! [`Engine::authorize`](crate::Engine::authorize) as of their recorded time, and the plugin's own
//! audit records through [`Policy::evaluate`](crate::policy::Policy::evaluate) on the recorded
//! identity (see [`records`]).
//!
//! Exit codes: 0 success, 1 a check or expectation failed, 2 bad usage or unreadable input.

#![forbid(unsafe_code)]

pub mod access;
pub mod accesslog;
pub mod bundle;
pub mod check;
pub mod corpus;
pub mod dev;
pub mod diff;
pub mod explain;
pub mod html;
pub mod image;
pub mod istio;
pub mod lint;
mod progress;
pub mod records;
pub mod render;
pub mod replay;
pub mod synthesize;
pub mod tighten;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::policy::Timestamp;

/// Why a command did not succeed, and the exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1: a check or expectation failed; 2: bad usage or unreadable input. 0 with an empty message
    /// means the reader of our output went away (a closed pipe): stop quietly.
    pub code: u8,
    /// What to tell the user (on stderr).
    pub message: String,
}

impl Failure {
    /// A check or expectation failed (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Failure { code: 1, message: message.into() }
    }

    /// Bad usage or unreadable input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure { code: 2, message: message.into() }
    }
}

impl From<std::io::Error> for Failure {
    /// Errors writing our output: a closed pipe (`| head`) ends the command quietly.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure { code: 0, message: String::new() }
        } else {
            Failure::usage(format!("cannot write output: {e}"))
        }
    }
}

/// How a command prints its results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Text,
    /// JSON for programs (JSON lines for streams of results).
    Json,
}

/// The current time in unix seconds: the CLI reads the clock and passes it in, the core never does.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses a time argument: unix seconds, or RFC 3339 (`2026-12-31T23:59:59Z`).
pub fn parse_time(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large a unix time"));
    }
    Timestamp::Rfc3339(text.to_owned()).to_unix().map_err(|e| e.to_string())
}

/// Unix seconds as RFC 3339 UTC (`2026-12-31T23:59:59Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Writes one JSON value as a line.
fn json_line(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), Failure> {
    writeln!(out, "{value}")?;
    Ok(())
}

/// Pretty-prints one JSON document.
fn json_document(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::usage(e.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for t in [0, 1_798_761_599, 1_800_000_000, 951_827_400, 4_102_444_800] {
            assert_eq!(parse_time(&rfc3339(t)), Ok(t), "{}", rfc3339(t));
        }
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(parse_time("1800000000"), Ok(1_800_000_000));
        assert!(parse_time("tomorrow").is_err());
    }
}
