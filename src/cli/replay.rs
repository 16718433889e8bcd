//! `meshward replay`: decide recorded requests with a bundle, check their expectations, summarize.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::bundle::Bundle;
use super::progress::Progress;
use super::records::{self, decision_json, Check, Input, Record, Replayed, Source};
use super::{json_line, Failure, Format};

/// `meshward replay` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "A request record (one JSON object per line):\n  \
{\"time\": 1800000000, \"method\": \"PUT\", \"authority\": \"registry.example.internal\", \"path\": \"/v2/dev/web/manifests/1.0\",\n   \
\"headers\": {\"authorization\": \"Bearer eyJ...\"}, \"peer\": \"spiffe://...\",\n   \
\"expect\": \"allow\", \"expect_reason\": \"allowed\", \"expect_rule\": \"push-dev-builders\"}\n\
Tokens are verified as of `time` (unix seconds or RFC 3339). `peer`, `expect*` and `name` are optional.\n\
The plugin's audit records (\"type\": \"decision\") are decided on their recorded identity; audit records carry no \
claims, headers or token age, so decisions that depend on them are flagged.\n\
Exit codes: 0 all expectations held, 1 some failed, 2 bad usage or unreadable input.")]
pub struct ReplayArgs {
    /// The bundle to decide with (JSON; YAML when named .yaml or .yml).
    #[arg(long, short = 'p', value_name = "BUNDLE")]
    pub policy: PathBuf,
    /// JSON-lines files of request records and/or the plugin's audit records (an Envoy log works
    /// too: its audit lines are read, other lines skipped). `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// `text`: a table and a summary; `json`: one JSON line per request, then a summary line.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Print only failed expectations and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Expect each audit record's recorded decision, reason and rule (fail when the bundle
    /// decides differently).
    #[arg(long)]
    pub expect_recorded: bool,
    /// Skip and count lines that are not valid records, instead of stopping at the first one.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Never show the progress bar (it is shown only on a terminal, for large inputs).
    #[arg(long)]
    pub no_progress: bool,
}

/// Column widths of the text table that do not depend on the input.
const W_RESULT: usize = 6;
const W_DECISION: usize = 8;
const W_REASON: usize = 24;

/// Widths of the columns that depend on the inputs and the bundle: fixed up front, since the
/// table is streamed.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    source: usize,
    rule: usize,
}

impl Columns {
    /// Wide enough for `file:line` of files with up to a million lines, and every rule id.
    pub fn new(inputs: &[Input], bundle: &Bundle) -> Self {
        let source = inputs.iter().map(|i| i.label.len() + 8).max().unwrap_or(8);
        let rule =
            bundle.config.rules.iter().map(|r| r.id.len()).max().unwrap_or(0).max("default-deny".len());
        Columns { source, rule }
    }
}

/// The table heading.
pub fn heading(out: &mut dyn Write, w: Columns) -> Result<(), Failure> {
    writeln!(
        out,
        "{:<ws$} {:<W_RESULT$} {:<W_DECISION$} {:<W_REASON$} {:<wr$} REQUEST",
        "SOURCE",
        "RESULT",
        "DECISION",
        "REASON",
        "RULE",
        ws = w.source,
        wr = w.rule
    )?;
    Ok(())
}

/// One table row: where, result, decision, reason, rule, and the request.
pub fn row(
    out: &mut dyn Write,
    w: Columns,
    source: &Source,
    result: &str,
    record: &Record,
    r: &Replayed,
) -> Result<(), Failure> {
    let d = &r.decision;
    let mut line = format!(
        "{:<ws$} {:<W_RESULT$} {:<W_DECISION$} {:<W_REASON$} {:<wr$} {} as {}",
        source.to_string(),
        result,
        d.verdict().word(),
        d.reason.code(),
        d.rule_label(),
        r.request_line(record),
        r.who(),
        ws = w.source,
        wr = w.rule
    );
    if let Some(name) = record.name().filter(|_| matches!(record, Record::Request(_))) {
        line.push_str(&format!("  ({name})"));
    }
    if let Some(dry) = &r.dry_run {
        line.push_str(&format!(
            "  [dry-run: {} {} by {}]",
            dry.verdict().word(),
            dry.reason.code(),
            dry.rule_label()
        ));
    }
    if let Some(rec) = record.recorded().filter(|rec| rec != d) {
        line.push_str(&format!(
            "  [recorded: {} {} by {}]",
            rec.verdict().word(),
            rec.reason.code(),
            rec.rule_label()
        ));
    }
    writeln!(out, "{}", line.trim_end())?;
    Ok(())
}

/// A replayed record as a JSON object.
pub fn result_json(source: &Source, record: &Record, r: &Replayed) -> Value {
    let (method, host, path) = match (&r.target, record) {
        (Some(t), _) => (Some(t.method.clone()), Some(t.host.clone()), Some(t.path.clone())),
        (None, Record::Request(q)) => {
            (Some(q.method.clone()), Some(q.authority.clone()), Some(q.path.clone()))
        }
        (None, Record::Audit(a)) => (a.method.clone(), a.host.clone(), a.path.clone()),
    };
    let mut v = json!({
        "type": "result",
        "source": source.to_string(),
        "kind": record.kind(),
        "name": record.name(),
        "time": r.time,
        "method": method,
        "host": host,
        "path": path,
        "subject": r.identity.as_ref().map(|i| i.subject.clone()),
        "issuer": r.identity.as_ref().map(|i| i.issuer_name.clone()),
        "peer": r.peer,
        "dry_run": r.dry_run.as_ref().map(decision_json),
        "recorded": record.recorded().as_ref().map(decision_json),
        "unrecorded": r.unrecorded,
    });
    if let (Value::Object(map), Value::Object(d)) = (&mut v, decision_json(&r.decision)) {
        map.extend(d);
    }
    v
}

#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    checked: u64,
    passed: u64,
    failed: u64,
    unknown: u64,
    recorded_same: u64,
    recorded_changed: u64,
    depends_on_unrecorded: u64,
    by_reason: BTreeMap<&'static str, u64>,
    by_rule: BTreeMap<String, u64>,
}

/// Runs `meshward replay`.
pub fn run(args: &ReplayArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let mut bundle = Bundle::load(&args.policy)?;
    let inputs = Input::open_all(&args.files)?;
    let columns = Columns::new(&inputs, &bundle);
    let total = inputs.iter().map(|i| i.size).sum::<Option<u64>>();
    let rows_on_terminal = !args.quiet && std::io::stdout().is_terminal();
    let progress = Progress::new(total, !args.no_progress, rows_on_terminal);
    let text = args.format == Format::Text;
    if text && !args.quiet {
        heading(out, columns)?;
    }
    let mut t = Tally::default();
    let stats = records::for_each_record(inputs, args.skip_invalid, &progress, |source, record| {
        let r = records::decide(&mut bundle, source, &record)?;
        let check = record.expectation(args.expect_recorded).map_or(Check::None, |e| e.check(&r));
        tally(&mut t, &record, &r, &check);
        let (label, note) = match &check {
            Check::None => ("-", None),
            Check::Pass => ("ok", None),
            Check::Fail(m) => ("FAIL", Some(m.as_str())),
            Check::Unknown(m) => ("?", Some(m.as_str())),
        };
        if text {
            if !args.quiet || note.is_some() {
                row(out, columns, source, label, &record, &r)?;
                if let Some(note) = note {
                    writeln!(out, "{:w$} {label}: {note}", "", w = columns.source)?;
                }
            }
        } else if !args.quiet || note.is_some() {
            let mut v = result_json(source, &record, &r);
            if let Value::Object(map) = &mut v {
                let name = match check {
                    Check::None => "none",
                    Check::Pass => "pass",
                    Check::Fail(_) => "fail",
                    Check::Unknown(_) => "unknown",
                };
                map.insert("check".into(), name.into());
                map.insert("check_message".into(), note.into());
                if let Some(e) = record.expectation(args.expect_recorded) {
                    map.insert("expect".into(), serde_json::to_value(e).unwrap_or(Value::Null));
                }
            }
            json_line(out, &v)?;
        }
        Ok(())
    })?;
    if stats.records == 0 {
        return Err(Failure::usage(format!(
            "no request or audit records in {} ({} lines skipped)",
            args.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
            stats.skipped_lines + stats.invalid_lines
        )));
    }
    if text {
        summary_text(out, &bundle, &stats, &t, args.files.len())?;
    } else {
        json_line(
            out,
            &json!({
                "type": "summary",
                "policy": bundle.path.display().to_string(),
                "bundle": bundle.engine.name,
                "version": bundle.engine.version,
                "records": stats.records,
                "request_records": stats.request_records,
                "audit_records": stats.audit_records,
                "skipped_lines": stats.skipped_lines,
                "invalid_lines": stats.invalid_lines,
                "access_log_records": stats.access_log_records,
                "not_rederived": {"access_log_without_decision": stats.access_log_without_decision, "istio_text_lines": stats.istio_text_lines},
                "allowed": t.allowed,
                "denied": t.denied,
                "expectations": {"checked": t.checked, "passed": t.passed, "failed": t.failed, "unknown": t.unknown},
                "recorded": {"same": t.recorded_same, "changed": t.recorded_changed},
                "depends_on_unrecorded": t.depends_on_unrecorded,
                "by_reason": t.by_reason,
                "by_rule": t.by_rule,
            }),
        )?;
    }
    out.flush()?;
    if t.failed > 0 {
        return Err(Failure::failed(format!("{} of {} expectations failed", t.failed, t.checked)));
    }
    Ok(())
}

fn tally(t: &mut Tally, record: &Record, r: &Replayed, check: &Check) {
    if r.decision.allowed {
        t.allowed += 1;
    } else {
        t.denied += 1;
    }
    *t.by_reason.entry(r.decision.reason.code()).or_default() += 1;
    *t.by_rule.entry(r.decision.rule_label().to_owned()).or_default() += 1;
    match check {
        Check::None => {}
        Check::Pass => {
            t.checked += 1;
            t.passed += 1;
        }
        Check::Fail(_) => {
            t.checked += 1;
            t.failed += 1;
        }
        Check::Unknown(_) => {
            t.checked += 1;
            t.unknown += 1;
        }
    }
    if let Some(rec) = record.recorded() {
        if rec == r.decision {
            t.recorded_same += 1;
        } else {
            t.recorded_changed += 1;
        }
    }
    if !r.unrecorded.is_empty() {
        t.depends_on_unrecorded += 1;
    }
}

fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let mut items: Vec<_> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.to_string().cmp(&b.0.to_string())));
    items.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

fn summary_text(
    out: &mut dyn Write,
    bundle: &Bundle,
    stats: &records::ReadStats,
    t: &Tally,
    files: usize,
) -> Result<(), Failure> {
    writeln!(out)?;
    writeln!(
        out,
        "replayed {} records ({} request records, {} audit records) from {} file{} with {}: {} allowed, {} denied",
        stats.records,
        stats.request_records,
        stats.audit_records,
        files,
        if files == 1 { "" } else { "s" },
        bundle.label(),
        t.allowed,
        t.denied
    )?;
    if t.checked > 0 {
        let unknown = if t.unknown > 0 { format!(", {} unknown", t.unknown) } else { String::new() };
        writeln!(
            out,
            "expectations: {} checked, {} passed, {} failed{unknown}",
            t.checked, t.passed, t.failed
        )?;
    } else {
        writeln!(out, "expectations: none in the input")?;
    }
    if stats.audit_records > 0 {
        writeln!(
            out,
            "audit records: {} decided as recorded, {} differently",
            t.recorded_same, t.recorded_changed
        )?;
        if t.depends_on_unrecorded > 0 {
            writeln!(
                out,
                "  {} decisions depend on claims, headers or token age, which audit records do not carry",
                t.depends_on_unrecorded
            )?;
        }
    }
    if stats.skipped_lines + stats.invalid_lines > 0 {
        writeln!(out, "skipped lines: {} not records, {} invalid", stats.skipped_lines, stats.invalid_lines)?;
    }
    if stats.access_log_records > 0 {
        writeln!(out, "access-log lines: {} decided from their audit record", stats.access_log_records)?;
    }
    for note in stats.underivable_notes() {
        writeln!(out, "{note}")?;
    }
    writeln!(out, "by reason: {}", counts(&t.by_reason))?;
    writeln!(out, "by rule: {}", counts(&t.by_rule))?;
    Ok(())
}
