//! `meshward diff OLD NEW FILE...`: replay recorded requests under two bundles and list every request
//! whose decision or deciding rule changes, grouped by (old rule -> new rule), with counts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde_json::json;

use super::bundle::Bundle;
use super::progress::Progress;
use super::records::{self, decision_json, Input};
use super::{json_line, Failure, Format};
use crate::decision::Decision;
use crate::decision::Verdict;

/// `meshward diff` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example: the builders may now also push to staging/, which no recording touches:
  meshward diff old.json new.json tests/corpus/registry.jsonl   # 0 changed
  meshward diff --synthesize old.json new.json
  deny (policy_no_matching_rule) -> allow by push-dev-builders: 1 request
    e.g. PUT registry.example.internal/v2/staging/x/y/manifests/1.0 as spiffe://example.internal/ci/builder/x ...")]
pub struct DiffArgs {
    /// The current bundle.
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The proposed bundle.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// Record files (request records and/or audit records, JSON lines); `-` reads standard input.
    #[arg(required_unless_present = "synthesize", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Instead of recordings, synthesize requests from both bundles' rules (each rule's matching
    /// requests and those just outside each bound) and report every difference, with an example.
    #[arg(long, conflicts_with = "files")]
    pub synthesize: bool,
    /// `text`: changes grouped by rule; `json`: one line per changed request, then a summary line.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// In text, list at most this many requests per group (0: all). JSON always lists all.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// Exit with 1 when any decision or deciding rule changes (like `git diff --exit-code`).
    #[arg(long)]
    pub exit_code: bool,
    /// Skip and count lines that are not valid records, instead of stopping at the first one.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Never show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// One side of a change: decision, reason, deciding rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Side {
    verdict: Verdict,
    reason: &'static str,
    rule: String,
}

impl Side {
    fn of(d: &Decision) -> Self {
        Side { verdict: d.verdict(), reason: d.reason.code(), rule: d.rule_label().to_owned() }
    }

    fn text(&self) -> String {
        match self.verdict {
            Verdict::Allow => format!("allow by {}", self.rule),
            Verdict::Deny => format!("deny {} by {}", self.reason, self.rule),
        }
    }
}

#[derive(Default)]
struct Group {
    count: u64,
    /// Up to `limit` requests: source and request line.
    listed: Vec<String>,
}

/// Runs `meshward diff`.
pub fn run(args: &DiffArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if args.synthesize {
        return super::synthesize::run(args, out);
    }
    let mut old = Bundle::load(&args.old)?;
    let mut new = Bundle::load(&args.new)?;
    let inputs = Input::open_all(&args.files)?;
    let total = inputs.iter().map(|i| i.size).sum::<Option<u64>>();
    let json_rows = args.format == Format::Json && std::io::stdout().is_terminal();
    let progress = Progress::new(total, !args.no_progress, json_rows);
    let mut groups: BTreeMap<(Side, Side), Group> = BTreeMap::new();
    let (mut changed, mut to_deny, mut to_allow, mut rule_only) = (0u64, 0u64, 0u64, 0u64);
    let stats = records::for_each_record(inputs, args.skip_invalid, &progress, |source, record| {
        let before = records::decide(&mut old, source, &record)?;
        let after = records::decide(&mut new, source, &record)?;
        let (a, b) = (Side::of(&before.decision), Side::of(&after.decision));
        if a == b {
            return Ok(());
        }
        changed += 1;
        match (before.decision.allowed, after.decision.allowed) {
            (true, false) => to_deny += 1,
            (false, true) => to_allow += 1,
            _ => rule_only += 1,
        }
        let request = format!("{} as {}", after.request_line(&record), after.who());
        if args.format == Format::Json {
            json_line(
                out,
                &json!({
                    "type": "change",
                    "source": source.to_string(),
                    "kind": record.kind(),
                    "name": record.name(),
                    "time": after.time,
                    "request": request,
                    "old": decision_json(&before.decision),
                    "new": decision_json(&after.decision),
                    "unrecorded": after.unrecorded,
                }),
            )?;
        }
        let group = groups.entry((a, b)).or_default();
        group.count += 1;
        if args.format == Format::Text && (args.limit == 0 || group.listed.len() < args.limit) {
            let mut line = format!("{source}  {request}");
            if let Some(name) = record.name() {
                line.push_str(&format!("  ({name})"));
            }
            group.listed.push(line);
        }
        Ok(())
    })?;
    if stats.records == 0 {
        return Err(Failure::usage("no request or audit records in the input"));
    }
    let mut ordered: Vec<_> = groups.into_iter().collect();
    ordered.sort_by(|x, y| y.1.count.cmp(&x.1.count).then_with(|| x.0.cmp(&y.0)));
    match args.format {
        Format::Text => {
            writeln!(out, "old: {}", old.label())?;
            writeln!(out, "new: {}", new.label())?;
            writeln!(
                out,
                "replayed {} records: {changed} changed ({to_deny} allow -> deny, {to_allow} deny -> allow, {rule_only} deciding rule only)",
                stats.records
            )?;
            for note in stats.underivable_notes() {
                writeln!(out, "{note}")?;
            }
            for ((a, b), group) in &ordered {
                writeln!(out)?;
                let s = if group.count == 1 { "" } else { "s" };
                writeln!(out, "{} -> {}: {} request{s}", a.text(), b.text(), group.count)?;
                for line in &group.listed {
                    writeln!(out, "  {line}")?;
                }
                let unlisted = group.count.saturating_sub(group.listed.len() as u64);
                if unlisted > 0 {
                    writeln!(out, "  ... and {unlisted} more (--limit 0 lists all)")?;
                }
            }
        }
        Format::Json => {
            let groups: Vec<_> = ordered
                .iter()
                .map(|((a, b), g)| {
                    json!({
                        "old": {"decision": a.verdict.word(), "reason": a.reason, "rule": a.rule},
                        "new": {"decision": b.verdict.word(), "reason": b.reason, "rule": b.rule},
                        "count": g.count,
                    })
                })
                .collect();
            json_line(
                out,
                &json!({
                    "type": "summary",
                    "old": {"path": old.path.display().to_string(), "bundle": old.engine.name, "version": old.engine.version},
                    "new": {"path": new.path.display().to_string(), "bundle": new.engine.name, "version": new.engine.version},
                    "records": stats.records,
                    "skipped_lines": stats.skipped_lines,
                    "invalid_lines": stats.invalid_lines,
                    "not_rederived": {"access_log_without_decision": stats.access_log_without_decision, "istio_text_lines": stats.istio_text_lines},
                    "changed": changed,
                    "allow_to_deny": to_deny,
                    "deny_to_allow": to_allow,
                    "rule_only": rule_only,
                    "groups": groups,
                }),
            )?;
        }
    }
    out.flush()?;
    if args.exit_code && changed > 0 {
        return Err(Failure::failed(format!("{changed} of {} decisions change", stats.records)));
    }
    Ok(())
}
