//! `meshward access --format html`: the effective access as one self-contained page. Identities
//! down, (host, action) across; each cell names the rules that grant (or deny) it, with their
//! conditions and expiry. With recordings, grants no recorded request used are marked.
//!
//! The page loads nothing: styles and the small script that writes the summary are inline, and a
//! Content-Security-Policy forbids every other source.

use std::collections::BTreeMap;
use std::io::Write;

use super::bundle::Bundle;
use super::progress::Progress;
use super::records::{self, Input};
use super::{rfc3339, Failure};
use std::path::PathBuf;

/// One grant as a cell shows it.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The column: host.
    pub host: String,
    /// The column: the action (`registry pull`, or `GET,HEAD /v1/orders/**`).
    pub action: String,
    /// The rule id.
    pub rule: String,
    /// `allow` or `deny`.
    pub effect: &'static str,
    /// Repositories (registry rules), empty otherwise.
    pub scope: String,
    /// Conditions, as `access` prints them.
    pub conditions: Vec<String>,
    /// `until ...`, `no end date`, `EXPIRED ...`.
    pub window: String,
    /// Flags: `dry-run`, `break-glass`.
    pub flags: Vec<&'static str>,
}

/// One identity (pattern or seen subject) and its grants.
#[derive(Clone, Debug)]
pub struct Row {
    pub identity: String,
    pub cells: Vec<Cell>,
}

/// Allowed requests per rule in the recordings (the rule that decided each).
pub fn rule_usage(bundle: &mut Bundle, files: &[PathBuf]) -> Result<BTreeMap<String, u64>, Failure> {
    let mut used = BTreeMap::new();
    let inputs = Input::open_all(files)?;
    records::for_each_record(inputs, false, &Progress::hidden(), |source, record| {
        let r = records::decide(bundle, source, &record)?;
        if let (true, Some(id)) = (r.decision.allowed, r.decision.rule_id.as_deref()) {
            *used.entry(id.to_owned()).or_insert(0u64) += 1;
        }
        Ok(())
    })?;
    Ok(used)
}

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:4px 6px;vertical-align:top}\
th{background:#eef;text-align:left}th.identity{white-space:nowrap}\
.grant{margin:2px 0;padding:2px 4px;border-radius:3px;background:#e6f4e6}\
.grant.deny{background:#f8dede}.grant.unused{background:#fff2cc;outline:2px dashed #c90}\
.grant .mark{font-weight:bold;color:#a60}.cond{color:#555;font-size:12px}\
.expired{color:#b00;font-weight:bold}";

/// Counts the rows and unused grants once the page is shown (the browser test reads it).
const SCRIPT: &str = "document.addEventListener('DOMContentLoaded',function(){\
var rows=document.querySelectorAll('tr.identity').length;\
var unused=document.querySelectorAll('div.grant.unused').length;\
document.getElementById('summary').textContent=rows+' identities, '+unused+' grants unused in the recordings';});";

/// Writes the page. `usage`: allowed requests per rule, when recordings were given.
pub fn page(
    out: &mut dyn Write,
    bundle: &Bundle,
    now: u64,
    rows: &[Row],
    usage: Option<&BTreeMap<String, u64>>,
) -> Result<(), Failure> {
    // Columns in the order rules name them.
    let mut columns: Vec<(String, String)> = Vec::new();
    for row in rows {
        for c in &row.cells {
            let key = (c.host.clone(), c.action.clone());
            if !columns.contains(&key) {
                columns.push(key);
            }
        }
    }
    columns.sort_by(|a, b| a.0.cmp(&b.0));
    let title = format!("meshward access: {} version {}", bundle.engine.name, bundle.engine.version);
    writeln!(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")?;
    writeln!(
        out,
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
    )?;
    writeln!(
        out,
        "<title>{}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        esc(&title)
    )?;
    writeln!(out, "<h1>{}</h1>", esc(&title))?;
    writeln!(
        out,
        "<p>As of {}. A matching deny rule overrides every allow rule; anything no rule allows is denied.{}</p>",
        rfc3339(now),
        if usage.is_some() { " Grants marked <b>unused</b> allowed no request in the recordings." } else { "" }
    )?;
    writeln!(out, "<p id=\"summary\"></p>")?;
    writeln!(out, "<table><thead><tr><th>identity</th>")?;
    for (host, action) in &columns {
        writeln!(out, "<th class=\"column\">{}<br>{}</th>", esc(host), esc(action))?;
    }
    writeln!(out, "</tr></thead><tbody>")?;
    for row in rows {
        write!(out, "<tr class=\"identity\"><th class=\"identity\">{}</th>", esc(&row.identity))?;
        for (host, action) in &columns {
            write!(out, "<td>")?;
            for c in row.cells.iter().filter(|c| &c.host == host && &c.action == action) {
                let unused = c.effect == "allow" && usage.is_some_and(|u| !u.contains_key(&c.rule));
                let class = match (c.effect, unused) {
                    ("deny", _) => "grant deny",
                    (_, true) => "grant unused",
                    _ => "grant",
                };
                write!(out, "<div class=\"{class}\"><b>{}</b> {}", c.effect, esc(&c.rule))?;
                if unused {
                    write!(out, " <span class=\"mark\">unused</span>")?;
                }
                if !c.scope.is_empty() {
                    write!(out, "<div class=\"cond\">on {}</div>", esc(&c.scope))?;
                }
                for cond in &c.conditions {
                    write!(out, "<div class=\"cond\">when {}</div>", esc(cond))?;
                }
                let window_class = if c.window.starts_with("EXPIRED") { "cond expired" } else { "cond" };
                write!(out, "<div class=\"{window_class}\">{}</div>", esc(&c.window))?;
                for f in &c.flags {
                    write!(out, "<div class=\"cond\">[{f}]</div>")?;
                }
                write!(out, "</div>")?;
            }
            write!(out, "</td>")?;
        }
        writeln!(out, "</tr>")?;
    }
    writeln!(out, "</tbody></table></body></html>")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
