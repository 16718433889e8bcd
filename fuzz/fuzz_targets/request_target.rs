//! Request pseudo-headers and patterns: `RequestTarget::new`, `check_path`, `split_authority`,
//! `PathTemplate` and `Glob`.
//!
//! Input: `method 0x00 authority 0x00 path 0x00 pattern 0x00 text` (each part lossily UTF-8; a
//! missing part is an absent header).
//!
//! Properties: a path `check_path` accepts is a prefix of its input that starts with `/` and holds no
//! query, dot segment, `//`, encoded slash or control character; `RequestTarget::new` agrees with
//! `check_path` and `split_authority`; a template's captures are pieces of the path; an exact or
//! prefix template matches its own path; a glob matches its own text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshward::policy::pattern::{Glob, HostPattern, PathTemplate};
use meshward::request::{check_path, normalize_path, split_authority, RequestTarget};

fn checked_path_properties(raw: &str) {
    let Ok(path) = check_path(raw) else { return };
    assert!(raw.starts_with(path), "{path:?} is not a prefix of {raw:?}");
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains('?'), "{path:?} keeps a query");
    assert!(!path.contains("//"), "{path:?} has //");
    assert!(
        !path.contains("/../") && !path.ends_with("/..") && !path.contains("/./") && !path.ends_with("/.")
    );
    let lower = path.to_ascii_lowercase();
    for encoded in ["%2f", "%5c", "%25", "%00", "%2e"] {
        assert!(!lower.contains(encoded), "{path:?} has {encoded}");
    }
    assert!(!path.bytes().any(|b| b < 0x20 || b == 0x7f), "{path:?} has an ASCII control character");
    assert!(!path.contains(['#', ';', '\\']), "{path:?}");
    // Idempotent: the checked path checks to itself.
    assert_eq!(check_path(path), Ok(path));
}

fn authority_properties(authority: &str) {
    let Ok((host, port)) = split_authority(authority) else { return };
    assert!(!host.is_empty());
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?} is not lower case");
    assert!(!host.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/' || b == b'@'), "{host:?}");
    if port.is_some() {
        assert!(authority.contains(':'), "{authority:?} has no port");
    }
    // A host pattern written like the authority matches it. (Skipped for `..`: a pattern drops every
    // trailing dot, a request host only one, so `h..` fails closed.)
    if !authority.contains('*') && !authority.contains("..") {
        if let Ok(pattern) = HostPattern::parse(authority) {
            assert!(pattern.matches(&host, port), "{authority:?} does not match itself");
        }
    }
}

fn template_properties(pattern: &str, text: &str) {
    if let Ok(template) = PathTemplate::template(pattern) {
        if let Some(captures) = template.matches(text) {
            let names: Vec<&str> = template.capture_names().collect();
            for (name, value) in &captures {
                assert!(names.contains(name), "capture {name:?} not in {pattern:?}");
                assert!(text.contains(value), "capture {value:?} is not part of {text:?}");
            }
        }
    }
    // Rule literals are compared in the paths' normal form (`%2c` is `,`, hex upper-case): a pattern
    // matches the normal form of a request path written like it.
    let normal = normalize_path(pattern);
    if let Ok(exact) = PathTemplate::exact(pattern) {
        assert!(exact.matches(&normal).is_some(), "exact {pattern:?} does not match {normal:?}");
    }
    if let Ok(prefix) = PathTemplate::prefix(pattern) {
        assert!(prefix.matches(&normal).is_some(), "prefix {pattern:?} does not match {normal:?}");
    }
    if let Ok(glob) = Glob::new(pattern) {
        let _ = glob.matches(text);
        assert!(glob.matches(pattern), "glob {pattern:?} does not match itself");
        if !pattern.contains('*') {
            assert_eq!(glob.matches(text), pattern == text, "literal glob {pattern:?} vs {text:?}");
        }
        let _ = glob.literal_prefix();
    }
}

fuzz_target!(|data: &[u8]| {
    let parts: Vec<String> =
        data.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let part = |i: usize| parts.get(i).map(String::as_str);
    let (method, authority, path) = (part(0), part(1), part(2));

    if let Ok(target) = RequestTarget::new(method, authority, path) {
        let (path, authority) = (path.unwrap_or_default(), authority.unwrap_or_default());
        assert_eq!(check_path(path).map(normalize_path), Ok(target.path.clone()));
        // The normal form is a fixed point, and still a path `check_path` accepts.
        assert_eq!(check_path(&target.path).map(normalize_path).as_ref(), Ok(&target.path));
        assert_eq!(split_authority(authority), Ok((target.host.clone(), target.port)));
        assert!(!target.method.is_empty() && !target.method.eq_ignore_ascii_case("CONNECT"));
    }
    for raw in parts.iter().take(3) {
        checked_path_properties(raw);
        authority_properties(raw);
    }
    if let Some(path) = path {
        template_properties(path, path);
    }
    if let (Some(pattern), Some(text)) = (part(3), part(4)) {
        template_properties(pattern, text);
        // A template only ever sees checked paths in the engine: try that too.
        if let Ok(checked) = check_path(text) {
            template_properties(pattern, checked);
        }
    }
});
