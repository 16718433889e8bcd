//! The SDK's entry point and two raw host imports, alone: `proxy_wasm::main!` exports a `#[no_mangle]`
//! function, which the `unsafe_code` lint counts as unsafe, and calling an import is unsafe. This is
//! the only place the crate allows it; every other module forbids unsafe code.

#![allow(unsafe_code)]

proxy_wasm::main! {{
    crate::filter::start();
}}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
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

/// The request's header map as the host serializes it (see [`crate::request::OwnedRequest`]);
/// `None` if the host refuses. Read raw: the SDK's `get_map_bytes` copies every name and value
/// into owned strings (two allocations per header, on every request) and panics on a status
/// other than Ok or a name that is not UTF-8.
pub(crate) fn request_header_pairs() -> Option<Vec<u8>> {
    const HTTP_REQUEST_HEADERS: u32 = 0;
    let mut data: *mut u8 = core::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes one pointer and one length through pointers to live locals.
    let status = unsafe { proxy_get_header_map_pairs(HTTP_REQUEST_HEADERS, &mut data, &mut size) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: the host allocated `size` bytes through the SDK's `proxy_on_memory_allocate` (a boxed
    // slice of exactly `size` bytes from this module's global allocator) and hands them over; the
    // SDK's own `get_map_bytes` takes them the same way.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}
