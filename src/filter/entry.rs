//! The SDK's entry point and one raw host import, alone: `proxy_wasm::main!` exports a `#[no_mangle]`
//! function, which the `unsafe_code` lint counts as unsafe, and calling an import is unsafe. This is
//! the only place the crate allows it; every other module forbids unsafe code.

#![allow(unsafe_code)]

proxy_wasm::main! {{
    crate::filter::start();
}}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

/// The host's level for this plugin's log lines, in the ABI's numbering (0 trace to 5 critical;
/// Envoy passes spdlog's level, where 6 is `off`); `None` if the host refuses. Read into a plain
/// integer: the SDK's `get_log_level` reads it into its `LogLevel` enum, which has no value for `off`.
pub(crate) fn host_log_level() -> Option<u32> {
    let mut level = 0u32;
    // SAFETY: the host writes one u32 through the pointer, which points to a live local.
    let status = unsafe { proxy_get_log_level(&mut level) };
    (status == 0).then_some(level)
}
