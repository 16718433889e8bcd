//! `meshward check BUNDLE...`: validate (schema, references, keys, compiles, exactly as the plugin
//! does) and lint.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use super::bundle::{self, Syntax};
use super::lint::{self, Finding, Lint, LintOptions};
use super::{json_document, now, parse_time, Failure, Format};
use crate::config::CompileWarning;

/// `meshward check` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Lints: shadowed, unreachable, broad-write, external-without-expiry, \
issuer-without-lifetime, rule-without-owner, skipped-key. Findings are warnings: they fail the check \
only with --strict.")]
pub struct CheckArgs {
    /// Bundle files: JSON, or YAML when named .yaml or .yml.
    #[arg(required = true, value_name = "BUNDLE")]
    pub bundles: Vec<PathBuf>,
    /// Fail (exit 1) on any lint finding, not only on invalid bundles.
    #[arg(long)]
    pub strict: bool,
    /// Do not run this lint; repeatable.
    #[arg(long, value_enum, value_name = "LINT")]
    pub allow: Vec<Lint>,
    /// A SPIFFE trust domain of your own (rules for other domains are external); repeatable.
    /// The trust domains of jwt-svid issuers and the protected hosts' domains count already.
    #[arg(long, value_name = "DOMAIN")]
    pub internal_domain: Vec<String>,
    /// Judge rule expiry as of this time (unix seconds or RFC 3339; default now).
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// The result for one bundle.
enum Checked {
    Unreadable(String),
    Invalid(String),
    Valid {
        name: String,
        version: String,
        issuers: usize,
        rules: usize,
        sha256: String,
        findings: Vec<Finding>,
    },
}

/// Runs `meshward check`.
pub fn run(args: &CheckArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let now = match &args.now {
        Some(t) => parse_time(t).map_err(|e| Failure::usage(format!("--now: {e}")))?,
        None => now(),
    };
    let options = LintOptions { now, internal_domains: &args.internal_domain };
    let results: Vec<(&PathBuf, Checked)> =
        args.bundles.iter().map(|p| (p, check_one(p, &options, &args.allow))).collect();
    let (mut unreadable, mut invalid, mut findings) = (0, 0, 0);
    for (_, r) in &results {
        match r {
            Checked::Unreadable(_) => unreadable += 1,
            Checked::Invalid(_) => invalid += 1,
            Checked::Valid { findings: f, .. } => findings += f.len(),
        }
    }
    match args.format {
        Format::Text => {
            for (path, r) in &results {
                let path = path.display();
                match r {
                    Checked::Unreadable(e) => writeln!(out, "error: {e}")?,
                    Checked::Invalid(e) => writeln!(out, "error: {path}: {e}")?,
                    Checked::Valid { name, version, issuers, rules, sha256, findings } => {
                        writeln!(out, "ok: {path}: bundle {name:?} version {version:?}: {issuers} issuers, {rules} rules, policy digest {sha256}")?;
                        for f in findings {
                            writeln!(out, "warning[{}]: {path}: {}: {}", f.lint.name(), f.at, f.message)?;
                        }
                    }
                }
            }
            let valid = results.len() - unreadable - invalid;
            writeln!(
                out,
                "{} of {} bundles valid, {findings} lint findings{}",
                valid,
                results.len(),
                if args.strict { " (--strict: findings fail the check)" } else { "" }
            )?;
        }
        Format::Json => {
            let bundles: Vec<_> = results
                .iter()
                .map(|(path, r)| {
                    let path = path.display().to_string();
                    match r {
                        Checked::Unreadable(e) => {
                            json!({"path": path, "valid": false, "readable": false, "error": e})
                        }
                        Checked::Invalid(e) => {
                            json!({"path": path, "valid": false, "readable": true, "error": e})
                        }
                        Checked::Valid { name, version, issuers, rules, sha256, findings } => json!({
                            "path": path, "valid": true, "readable": true, "name": name, "version": version,
                            "issuers": issuers, "rules": rules, "sha256": sha256, "findings": findings,
                        }),
                    }
                })
                .collect();
            json_document(out, &json!({"bundles": bundles, "strict": args.strict}))?;
        }
    }
    out.flush()?;
    if unreadable > 0 {
        return Err(Failure::usage(format!("{unreadable} of {} bundles could not be read", results.len())));
    }
    if invalid > 0 {
        return Err(Failure::failed(format!("{invalid} of {} bundles failed the check", results.len())));
    }
    if args.strict && findings > 0 {
        return Err(Failure::failed(format!("{findings} lint findings (--strict)")));
    }
    Ok(())
}

fn check_one(path: &std::path::Path, options: &LintOptions<'_>, allowed: &[Lint]) -> Checked {
    let text = match bundle::read_text(path) {
        Ok(t) => t,
        Err(e) => return Checked::Unreadable(e.message),
    };
    let config = match bundle::parse(&text, Syntax::of(path)) {
        Ok(c) => c,
        Err(e) => return Checked::Invalid(e.to_string()),
    };
    let (engine, warnings) = match config.clone().compile() {
        Ok(compiled) => compiled,
        Err(e) => return Checked::Invalid(e.to_string()),
    };
    let mut findings: Vec<Finding> = warnings
        .iter()
        .map(|w| match w {
            CompileWarning::SkippedKey { .. } => {
                Finding { lint: Lint::SkippedKey, at: w.field(), message: w.message() }
            }
        })
        .collect();
    findings.extend(lint::lint(&config, engine.policy(), options));
    findings.retain(|f| !allowed.contains(&f.lint));
    // The digest the plugin's policy_load record names for this bundle (a YAML file as JSON).
    let sha256 = match bundle::plugin_json(path) {
        Ok(json) => crate::audit::policy_digest(json.as_bytes()),
        Err(e) => return Checked::Invalid(e.message),
    };
    Checked::Valid {
        sha256,
        name: engine.name.clone(),
        version: engine.version.clone(),
        issuers: engine.issuers().iter().count(),
        rules: engine.policy().rules().len(),
        findings,
    }
}
